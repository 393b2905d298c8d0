"""The daemon's loop: one Agent at a time, restarted in-process when a remote change needs it."""

from __future__ import annotations

import logging
import threading
from typing import Optional

from .app import Agent
from .config import Config
from .remote import RemoteConfig

log = logging.getLogger(__name__)


def run_supervised(base: Config, stop: threading.Event, poll_s: float = 2.0) -> None:
    """The daemon: one Agent at a time, restarted in-process when a remote change needs it.

    A restart keeps everything that matters: queued jobs are in the journal, orders wait in the
    MQTT session. If the agent cannot even be built with a change on probation, the change reverts.
    A stop (``stop`` set by the signal handler) ends the wait at once; a restart asked for by a remote
    change is seen within ``poll_s`` (the main thread wakes every 2 s, not 2 times a second: idle CPU).
    """
    while not stop.is_set():
        agent: Optional[Agent] = None
        try:
            agent = Agent(base)
            agent.start()
        except Exception as e:
            remote = RemoteConfig(base)
            if not remote.probation:
                raise
            log.exception("the agent cannot start with config version %d", remote.version)
            if agent is not None:
                try:
                    agent.stop()
                except Exception:  # noqa: BLE001 - half-started: release what can be released
                    log.exception("stopping the half-started agent failed")
            remote.revert(f"the agent could not start with config version {remote.version}: {e}")
            continue
        while not stop.wait(poll_s) and agent.restart_requested is None:
            pass
        if not stop.is_set():
            log.warning("restarting the agent in-process: %s", agent.restart_requested)
        agent.stop(final=stop.is_set())
