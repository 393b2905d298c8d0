"""Order results out (``P/S/orders/result``): published, their PUBACKs written back lazily as
"reported", and the final results the broker never confirmed re-sent after a restart (at least once)."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from .journal import EventDone
from .messages import OrderResult

if TYPE_CHECKING:
    from .app import Agent

log = logging.getLogger(__name__)

INTERNAL_PREFIX = "agent-"  # test pages and timer slips travel through the journal like orders, without results


class Outbox:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self._reported: list[str] = []
        self._lock = threading.Lock()
        self._resent = False

    def publish(self, result: OrderResult, fresh: bool = True) -> None:
        """Send a result; ``fresh``: a new one (counted in the day's figures), not one re-sent after a restart."""
        a = self.agent
        if result.status in ("queued", "rejected", "duplicate", "expired") or result.redelivered:  # intake stored it
            a.journal_ok()
            if fresh:
                a.stats.on_result(result)
        confirm = None
        if result.event_id and result.status in ("printed", "failed", "duplicate", "expired"):
            confirm = lambda: self._mark_reported(result.event_id)  # noqa: E731
        a.link.publish(a.topics.result, result.to_json(), on_delivered=confirm)

    def on_done(self, done: EventDone, log_it: bool = True) -> None:
        """An event's last job finished (the journal's writer, after the outcome's commit)."""
        if done.event_id.startswith(INTERNAL_PREFIX):
            log.info("%s %s on %s", done.event_id, done.status, done.printer)
            self._mark_reported(done.event_id)
            return
        if log_it:
            log.info("event %s (order %s) %s: %s", done.event_id, done.order_id, done.status, ", ".join(done.documents))
            self.agent.stats.on_done(done)
        self.publish(OrderResult(
            event_id=done.event_id, order_id=done.order_id, status=done.status,
            at=datetime.fromtimestamp(self.agent.clock(), timezone.utc), printer=done.printer,
            documents=done.documents, error=done.error, reprint=done.reprint,
        ), fresh=log_it)

    def _mark_reported(self, event_id: str) -> None:
        with self._lock:  # written in batches by housekeeping
            self._reported.append(event_id)

    def flush_reported(self) -> None:
        a = self.agent
        a.link.poll_delivered()
        with self._lock:
            ids, self._reported = self._reported, []
        try:
            a.journal.mark_reported(ids)
        except Exception as e:  # noqa: BLE001 - at worst those results are sent again after a restart
            log.warning("cannot mark %d result(s) as delivered: %s", len(ids), e)

    def on_connection(self) -> None:
        """Connected: once per agent, re-send the final results the broker never confirmed before the last stop."""
        if not self._resent:
            self._resent = True
            threading.Thread(target=self._resend, name="outbox", daemon=True).start()

    def _resend(self) -> None:
        try:
            pending = self.agent.journal.unreported(limit=100_000)
        except Exception:  # noqa: BLE001
            log.exception("cannot read unreported results")
            return
        if pending:
            log.info("re-sending %d result(s) not confirmed before the last stop", len(pending))
        for done in pending:
            self.on_done(done, log_it=False)
