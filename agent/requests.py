"""MQTT requests (``P/S/request/<command>``) and remote config (``P/S/config/set``), served off paho's thread.

paho's thread only acknowledges and queues (``offer``); one thread (``serve``) answers requests in
order, because some (``diagnose``) wait for printers. Requests are not journaled: a lost one is
simply asked again. A ``config/set`` is not acknowledged while the agent is restarting, so the
broker hands it to the restarted agent (same session).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from .commands import reply
from .mqtt import Inbound

if TYPE_CHECKING:
    from .app import Agent

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 65536
QUEUE_SIZE = 100


class RequestDesk:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self._queue: "queue.Queue[Inbound]" = queue.Queue(maxsize=QUEUE_SIZE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="requests", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def offer(self, msg: Inbound) -> None:
        """paho's thread: acknowledge and queue a request or a config/set."""
        a = self.agent
        if a.restart_requested:
            return  # not acked: the broker hands it to the restarted agent (same session)
        a.link.ack(msg)
        try:
            self._queue.put_nowait(msg)
        except queue.Full:
            log.warning("request queue full: %s dropped", msg.topic)

    def _serve(self) -> None:
        topics = self.agent.topics
        while not self._stop.is_set():
            try:
                msg = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if msg.topic == topics.config_set:
                try:
                    self.config_set(msg.payload)
                except Exception:  # noqa: BLE001 - this thread serves every request
                    log.exception("config/set failed")
                continue
            command = msg.topic[len(topics.request("")):]
            out = self.answer(command, msg.payload)
            try:
                self.agent.link.publish(topics.response(command or "unknown"),
                                        json.dumps(out, ensure_ascii=False, default=str).encode())
            except Exception:  # noqa: BLE001
                log.exception("cannot answer request %s", command)

    def answer(self, command: str, payload: bytes) -> dict:
        """A ``P/S/request/<command>`` payload -> the response body; never raises."""
        transaction = None
        try:
            if len(payload) > MAX_REQUEST_BYTES:
                raise ValueError(f"payload too large ({len(payload)} bytes, limit {MAX_REQUEST_BYTES})")
            body = json.loads(payload.decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError("the request must be a JSON object")
            transaction = body.get("transaction")
            if transaction is not None and not isinstance(transaction, (str, int)):
                transaction = None
                raise ValueError("transaction must be a string")
            return self.agent.commands.run(command, body.get("args"), transaction)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            return reply(transaction, error=f"bad request: {str(e)[:300]}")
        except Exception as e:  # noqa: BLE001 - a request must never take the agent down
            log.exception("request %s failed", command)
            return reply(transaction, error=f"agent error: {type(e).__name__}")

    # -- remote configuration
    def publish_config_state(self) -> None:
        a = self.agent
        a.link.publish(a.topics.config_state, a.remote.state(a.cfg), retain=True)

    def config_set(self, payload: bytes) -> None:
        a = self.agent
        if a.restart_requested:
            a.remote.refuse(None, f"not applied: the agent is restarting for {a.restart_requested}; send it again")
            return
        d = a.remote.propose(payload, a.cfg)
        if d.kind == "refused":
            log.warning("config/set refused: %s", d.message)
            a.remote.refuse(d.version, d.message)
        elif d.kind == "apply":
            try:
                a.remote.commit(d)
            except OSError as e:
                log.error("config version %s not applied: cannot store it: %s", d.version, e)
                a.remote.refuse(d.version, f"not applied: cannot store it in state_dir: {e}")
            else:
                if d.restart:
                    log.warning("config version %s changes %s: restarting the agent", d.version, ", ".join(d.restart))
                    a.restart_requested = f"config version {d.version} changes {', '.join(d.restart)}"
                    return  # the restarted agent publishes config/state once it is connected
                log.info("config version %s applied", d.version)
                a.apply_live(d.cfg)
        self.publish_config_state()

    def check_probation(self) -> None:
        """After a restart for a remote change: keep it once subscribed, revert it if that does not happen."""
        a = self.agent
        if not a.remote.probation or a.restart_requested:
            return
        limit = a.remote.probation_s
        try:
            if a.link.subscribed:
                log.info("config version %d is connected and subscribed: kept", a.remote.version)
                a.remote.confirm()
                self.publish_config_state()
            elif time.monotonic() - a.started_mono > limit:
                failed = a.remote.version
                a.remote.revert(f"not connected and subscribed within {limit} s with config version {failed}: reverted")
                log.error("config version %d did not reconnect within %d s: reverting to version %d",
                          failed, limit, a.remote.version)
                a.restart_requested = f"revert config version {failed}"
        except OSError as e:  # not stored: still on probation, tried again next second
            log.error("cannot store the probation outcome: %s", e)
