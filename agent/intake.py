"""Order intake: validate -> journal (commit) -> ack -> result -> wake the printers.

Runs on the MQTT network thread and does nothing slow: no printing here.
A payload that cannot be stored is not acknowledged, so the broker keeps it.

Batching: while more bytes are already waiting on the connection (a burst), an accepted event is
written into the open transaction and *staged*; the next durable commit (the last message of the
burst, at most ``batch_max`` events later, or ``flush_staged()``) makes all of them durable, and
only then are they acknowledged, answered and printed. One fsync for a burst instead of one each.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Optional

from .journal import Job, Journal, JournalError
from .messages import OrderEvent, OrderResult, Rejection, parse_event, sha256_hex

log = logging.getLogger(__name__)

STAGE_MAX_S = 0.02  # a staged event waits at most about this long for the rest of its burst


class OrderIntake:
    def __init__(
        self,
        journal: Journal,
        *,
        max_payload_bytes: int,
        plan: Callable[[str], list[tuple[str, str]]],
        publish_result: Callable[[OrderResult], None],
        wake: Callable[[], None],
        on_store_failure: Callable[[str], None],
        on_accepted: Callable[[OrderEvent], None] = lambda ev: None,
        ready: Callable[[str], bool] = lambda printer: False,
        arm: Callable[[tuple[int, ...], str], None] = lambda job_ids, printer: None,
        prerender: Callable[[str, str, str, OrderEvent], None] = lambda printer, event_id, document, ev: None,
        settle: Callable[[str], None] = lambda printer: None,
        handoff: Callable[[str, Job], None] = lambda printer, job: None,
        more: Callable[[], bool] = lambda: False,
        batch_max: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ready = ready  # is this printer idle and ready (a new order's jobs may be armed for it)?
        self.arm = arm  # register armed job ids with the print workers
        self.prerender = prerender
        self.settle = settle
        self.handoff = handoff
        self.journal = journal
        self.max_payload_bytes = max_payload_bytes
        self.plan = plan  # event_type -> [(document, printer name), ...] (copies repeat)
        self.on_accepted = on_accepted
        self.publish_result = publish_result
        self.wake = wake
        self.on_store_failure = on_store_failure
        self.clock = clock
        self.more = more  # are more messages already waiting on the connection?
        self.batch_max = batch_max
        self._staged: list[tuple[OrderEvent, Callable[[], None], object, list[tuple[str, str]], int]] = []
        self._staged_at = 0.0
        self._stage_lock = threading.RLock()
        self._flush_evt = threading.Event()
        self._flusher: Optional[threading.Thread] = None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def handle(self, payload: bytes, ack: Callable[[], None]) -> Optional[str]:
        """Process one order message; returns the status, or None when it was not stored (not acked)."""
        with self._stage_lock:
            return self._handle(payload, ack)

    def _handle(self, payload: bytes, ack: Callable[[], None]) -> Optional[str]:
        parsed = parse_event(payload, self.max_payload_bytes)
        if isinstance(parsed, Rejection):
            return self._reject(parsed, payload, ack)
        acked = []
        try:
            return self._accept(parsed, payload, lambda: (ack(), acked.append(True)))
        except Exception as e:  # noqa: BLE001 - a bug must not leave the message bouncing forever
            log.exception("event %s could not be handled", parsed.id)
            if acked:
                return None
            rej = Rejection(f"agent error while accepting: {type(e).__name__}: {e}", sha256_hex(payload), parsed.id, parsed.order.id)
            return self._reject(rej, payload, ack)

    def _reject(self, rej: Rejection, payload: bytes, ack: Callable[[], None]) -> Optional[str]:
        self.flush_staged()
        log.warning("rejected order payload %s (%d bytes, event %s): %s", rej.payload_sha256[:12], len(payload), rej.event_id, rej.reason)
        try:
            self.journal.record_rejected(rej.payload_sha256, rej.reason, payload, now=self.clock())
        except JournalError as e:
            log.error("cannot store rejected payload %s: %s; not acknowledged", rej.payload_sha256[:12], e)
            self.on_store_failure(str(e))
            return None
        ack()
        self.publish_result(
            OrderResult(
                event_id=rej.event_id,
                order_id=rej.order_id,
                status="rejected",
                at=self._now(),
                error=rej.reason,
                payload_sha256=rej.payload_sha256,
            )
        )
        return "rejected"

    def _accept(self, ev: OrderEvent, payload: bytes, ack: Callable[[], None]) -> Optional[str]:
        now = self.clock()
        expired = ev.order.expires_at is not None and ev.order.expires_at.timestamp() < now
        docs = self.plan(ev.type)
        printers = {p for _, p in docs}
        # the printer is idle and ready: store the jobs as an attempt already begun, so the receipt
        # goes out with no second commit (a crash before it is sent reprints it marked 补打)
        printer = printers.pop() if len(printers) == 1 else None
        arm = printer is not None and not expired and self.ready(printer)
        stage = not arm and len(self._staged) < self.batch_max - 1 and self.more()
        try:
            with self.journal.lock:  # a worker must never see these jobs before they are registered as armed
                rollbacks = self.journal.rollbacks
                intake = self.journal.record_event(
                    ev.id, ev.order.id, ev.type, payload, docs, expired=expired, arm=arm, durable=not stage, now=now,
                    # the receipt is rendered (and the printer asked) while the commit writes and syncs
                    before_commit=(lambda: self.prerender(printer, ev.id, docs[0][0], ev)) if arm else (lambda: None))
                if intake.armed:
                    self.arm(intake.armed, printer)
                    self.handoff(printer, Job(intake.armed[0], intake.seq, ev.id, ev.order.id, ev.type, docs[0][0],
                                              printer, "printing", 1, False, payload))
        except JournalError as e:
            log.error("cannot commit event %s to the journal: %s; not acknowledged", ev.id, e)
            self.on_store_failure(str(e))
            self._release_staged(committed=False)
            return None
        if stage:
            if not self._staged:
                self._staged_at = time.monotonic()
                self._start_flusher()
            self._staged.append((ev, ack, intake, docs, rollbacks))
            return intake.status
        self._release_staged(committed=True)
        return self._accepted(ev, ack, intake, docs, printer)

    def flush_staged(self) -> None:
        """Commit and answer the staged events now (any other message, or from housekeeping)."""
        with self._stage_lock:
            if not self._staged:
                return
            try:
                self.journal.commit()
            except JournalError as e:
                log.error("cannot commit %d batched event(s): %s; not acknowledged", len(self._staged), e)
                self.on_store_failure(str(e))
                self._release_staged(committed=False)
                return
            self._release_staged(committed=True)

    def _start_flusher(self) -> None:
        """A backstop: the burst may end in something that is not an order (a PUBACK, a ping)."""
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="intake-flush", daemon=True)
            self._flusher.start()
        self._flush_evt.set()

    def _flush_loop(self) -> None:
        while True:
            self._flush_evt.wait()
            self._flush_evt.clear()
            time.sleep(STAGE_MAX_S)
            try:
                self.flush_staged()
            except Exception:  # noqa: BLE001 - the next message or the next burst commits them
                log.exception("flushing batched events failed")

    def staged_for(self) -> float:
        """Seconds the oldest staged event has waited (0 when none)."""
        return time.monotonic() - self._staged_at if self._staged else 0.0

    def _release_staged(self, committed: bool) -> None:
        staged, self._staged = self._staged, []
        for ev, ack, intake, docs, rollbacks in staged:
            # a rollback since staging may have thrown the event away: acknowledge only what is stored
            if committed and (self.journal.rollbacks == rollbacks or self.journal.event_status(ev.id) is not None):
                self._accepted(ev, ack, intake, docs, None)
            else:
                log.warning("event %s was not stored; not acknowledged (the broker sends it again)", ev.id)

    def _accepted(self, ev: OrderEvent, ack: Callable[[], None], intake, docs: list[tuple[str, str]],  # noqa: ANN001
                  printer: Optional[str]) -> Optional[str]:
        if intake.status == "queued":
            self.wake()
        if intake.armed:  # the receipt goes out first; the PUBACK, the result and the chime a moment later
            self.settle(printer)
        ack()
        if intake.status == "duplicate":
            log.info("duplicate event %s (order %s): %s", ev.id, ev.order.id, intake.reason)
        elif intake.status == "expired":
            log.warning("expired event %s (order %s) kept for reprint, not printed", ev.id, ev.order.id)
        self.publish_result(
            OrderResult(
                event_id=ev.id,
                order_id=ev.order.id,
                status=intake.status,
                at=self._now(),
                printer=docs[0][1] if docs and intake.status == "queued" else None,
                documents=[d for d, _ in docs] if intake.status == "queued" else [],
                error=intake.reason if intake.status != "queued" else None,
            )
        )
        if intake.status in ("queued", "printed"):  # new and accepted: chimes and alerts (never for duplicates)
            try:
                self.on_accepted(ev)
            except Exception:  # noqa: BLE001 - the order is safe in the journal; alerts must not undo that
                log.exception("actions for event %s failed", ev.id)
        return intake.status
