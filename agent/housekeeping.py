"""The housekeeping thread, once a second: the systemd watchdog (withheld while a worker is stuck),
delivered-result marks, remote-config probation, alert repeats and escalation, the retained health
snapshot, the local timers and journal pruning."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Optional

from . import __version__
from .messages import Health, PrinterHealth, Report

if TYPE_CHECKING:
    from .app import Agent

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600


class Housekeeper:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self.final = True  # a final stop tells systemd STOPPING=1 (not an in-process restart)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._health_signature: tuple = ()
        self._health_sent = 0.0
        self._last_timers = 0.0
        self._last_prune = time.monotonic()
        self._stats_sent = float("-inf")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self, final: bool) -> None:
        self.final = final
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        notifier = systemd_notifier()
        notifier("READY=1")
        self._last_prune = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                self.tick(notifier)
            except Exception:  # noqa: BLE001 - this thread feeds the watchdog: it must not die
                log.exception("housekeeping failed")
        if self.final:
            notifier("STOPPING=1")

    def tick(self, notifier: Callable[[str], None] = lambda msg: None) -> None:
        a = self.agent
        limit = a.cfg.health.stuck_after_s
        beats = {w.name: w.heartbeat for w in a.workers.values()}
        beats["annunciator"] = a.annunciator.heartbeat
        stale = [name for name, beat in beats.items() if time.monotonic() - beat > limit]
        if stale:
            log.error("print worker(s) stuck: %s; withholding the watchdog ping", ", ".join(stale))
        else:
            notifier("WATCHDOG=1")
        a.outbox.flush_reported()
        a.desk.check_probation()
        a.alerts.tick()
        self.publish_health()
        if time.monotonic() - self._last_timers >= a.cfg.timers.check_s:
            self._last_timers = time.monotonic()
            a.timers.tick()
            a.report_schedule().tick()
            a.followup_schedule().tick()
            a.adopt_orphans()  # an order planned for a printer that a live config change removed
        self.publish_stats()
        if time.monotonic() - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = time.monotonic()
            self.prune()

    def publish_stats(self, force: bool = False) -> None:
        """Retained ``P/S/stats``: today's figures, at most every ``report.publish_s`` (and when forced)."""
        a = self.agent
        if not a.link.connected or not (force or time.monotonic() - self._stats_sent >= a.cfg.report.publish_s):
            return
        self._stats_sent = time.monotonic()
        try:
            body = a.report("day")
        except Exception as e:  # noqa: BLE001
            log.warning("cannot read today's figures: %s", e)
            return
        a.link.publish(a.topics.stats, Report.model_validate({**body, "store_id": a.cfg.store_id}).model_dump_json().encode(),
                       retain=True)

    def prune(self) -> None:
        a = self.agent
        try:
            a.stats.prune(a.cfg.report.keep_days)
        except Exception:  # noqa: BLE001
            log.exception("pruning the figures failed")
        try:
            n = a.journal.prune(a.cfg.journal.keep_days, a.cfg.journal.max_mb * 1024 * 1024, now=a.clock())
            if n:
                log.info("journal: pruned %d old event(s)", n)
        except Exception:  # noqa: BLE001
            log.exception("journal pruning failed")

    def health(self) -> Health:
        a = self.agent
        now = a.clock()
        utc = lambda ts: datetime.fromtimestamp(ts, timezone.utc) if ts else None  # noqa: E731
        waiting = a.journal.open_job_counts()
        printers = []
        workers = a.workers
        for p in a.cfg.printers:
            w = workers.get(p.name)
            if w is None:  # printers being reopened
                continue
            facts = a.printer_facts.view(p.name)
            printers.append(PrinterHealth(
                name=p.name, role=p.role, state=w.status.state, since=utc(w.status_since), detail=w.status.detail,
                last_print_at=utc(w.last_print_at), queue=waiting.get(p.name, 0),
                capabilities={k: facts[k] for k in ("confirm", "status_answers", "cutter", "model", "profile",
                                                    "profile_source", "columns", "qr", "cut")},
                paper=facts["paper"], print_s=facts["print_s"]))
        try:
            free_mb = shutil.disk_usage(a.cfg.state_dir).free // 2**20
        except OSError:
            free_mb = -1
        oldest = a.journal.oldest_open_age(now)
        return Health(
            store_id=a.cfg.store_id, at=utc(now),
            agent={"version": __version__, "uptime_s": int(now - a.started_at)},
            mqtt={"connected": a.link.connected, "last_error": a.link.error_info()},
            printers=printers,
            audio={"state": a.annunciator.audio_state, **({"error": a.annunciator.audio_error} if a.annunciator.audio_error else {})},
            queue={"pending": sum(waiting.values()), "oldest_s": round(oldest, 1) if oldest is not None else None},
            alerts_open=len(a.alerts.open_alerts()),
            disk={"free_mb": free_mb},
        )

    def publish_health(self, force: bool = False) -> None:
        """Retained health: whenever something a person would care about changes, and every publish_s."""
        a = self.agent
        signature = (
            tuple((w.name, w.status.state, w.status.error, w.output) for w in a.workers.values()),
            a.annunciator.audio_state, a.annunciator.audio_error, a.link.connected, len(a.alerts.open_alerts()),
        )
        due = time.monotonic() - self._health_sent >= a.cfg.health.publish_s
        if not (force or due or signature != self._health_signature) or not a.link.connected:
            return
        self._health_signature = signature
        self._health_sent = time.monotonic()
        a.link.publish(a.topics.health, self.health().model_dump_json().encode(), retain=True)


def systemd_notifier() -> Callable[[str], None]:
    if not os.environ.get("NOTIFY_SOCKET"):
        return lambda msg: None
    import sdnotify  # noqa: PLC0415 - only under systemd

    n = sdnotify.SystemdNotifier()
    return lambda msg: n.notify(msg)
