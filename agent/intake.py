"""Order intake: validate -> journal (commit) -> ack -> result -> wake the printers.

``handle`` runs on the MQTT network thread and only validates and hands the event to the journal's
writer; it never waits for the disk. ``_stored`` is the completion of the commit that holds the
event (it runs on the writer thread): only there is the event acknowledged (PUBACK), answered
and chimed. A commit that fails is never acknowledged: the broker keeps the event, redelivery is
asked for (``on_store_failure``) and the store and IT hear of it. A burst shares one commit
because the writer takes whatever is queued (group commit, see agent/journal.py).

The same event id again (the broker redelivers after a lost PUBACK, or HQ re-sends) is answered
with that event's current status and ``redelivered: true``; ``duplicate`` is only for a different
event id that repeats an ``order.created``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable, Optional

from .journal import Intake, Journal, JournalError
from .messages import OrderEvent, OrderResult, ParsedEvents, Rejection, parse_event, sha256_hex

log = logging.getLogger(__name__)


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
        clock: Callable[[], float] = time.time,
        parsed: Optional[ParsedEvents] = None,
    ) -> None:
        self.journal = journal
        self.parsed = parsed  # what intake parsed, for the print worker (keyed by the payload's bytes)
        self.max_payload_bytes = max_payload_bytes
        self.plan = plan  # event_type -> [(document, printer name), ...] (copies repeat)
        self.publish_result = publish_result
        self.wake = wake
        self.on_store_failure = on_store_failure  # not stored: ask the broker to redeliver, raise the alert
        self.on_accepted = on_accepted  # chimes and alerts of a new event
        self.ready = ready  # is this printer idle and ready (a new order's jobs may be armed for it)?
        self.clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def handle(self, payload: bytes, ack: Callable[[], None]) -> None:
        """One order message (paho's thread). Acknowledged later, by the completion of its commit."""
        parsed = parse_event(payload, self.max_payload_bytes)
        if isinstance(parsed, Rejection):
            self._reject(parsed, payload, ack)
            return
        try:
            docs = self.plan(parsed.type)
            printers = {p for _, p in docs}
            now = self.clock()
            expired = parsed.order.expires_at is not None and parsed.order.expires_at.timestamp() < now
            # one printer, idle and ready: store the jobs as an attempt already begun, so the receipt
            # goes out without a second commit (a crash before it is sent reprints it marked 补打)
            arm_for = printers.pop() if len(printers) == 1 else None
            if arm_for is not None and (expired or not self.ready(arm_for)):
                arm_for = None
        except Exception as e:  # noqa: BLE001 - a bug must not leave the message bouncing forever
            log.exception("event %s could not be handled", parsed.id)
            self._reject(Rejection(f"agent error while accepting: {type(e).__name__}: {e}", sha256_hex(payload),
                                   parsed.id, parsed.order.id), payload, ack)
            return
        if self.parsed is not None:  # for the print worker, before its jobs can be seen (keyed by the bytes, a hit
            self.parsed.put(payload, parsed)  # is what parse_stored makes of them, whatever becomes of this event)
        try:
            self.journal.record_event(
                parsed.id, parsed.order.id, parsed.type, payload, docs, expired=expired, arm_for=arm_for, now=now,
                done=lambda intake, error: self._stored(parsed, ack, docs, intake, error))
        except JournalError as e:  # the journal is closed (stopping): not acknowledged, the broker keeps it
            log.warning("event %s not stored: %s; not acknowledged", parsed.id, e)

    def _stored(self, ev: OrderEvent, ack: Callable[[], None], docs: list[tuple[str, str]],
                intake: Optional[Intake], error: Optional[BaseException]) -> None:
        """The completion of the commit that holds ``ev`` (writer thread; must not wait for the journal)."""
        if error is not None or intake is None:
            log.error("cannot commit event %s to the journal: %s; not acknowledged (the broker sends it again)", ev.id, error)
            self.on_store_failure(str(error))
            return
        _ack(ack, ev.id)
        if intake.redelivered:
            log.info("event %s received again: answered with its status %s", ev.id, intake.status)
        elif intake.status == "duplicate":
            log.info("duplicate event %s (order %s): %s", ev.id, ev.order.id, intake.reason)
        elif intake.status == "expired":
            log.warning("expired event %s (order %s) kept for reprint, not printed", ev.id, ev.order.id)
        queued = intake.status == "queued" and not intake.redelivered
        try:
            self.publish_result(OrderResult(
                event_id=ev.id, order_id=ev.order.id, status=intake.status, at=self._now(),
                printer=docs[0][1] if docs and queued else None,
                documents=[d for d, _ in docs] if queued else [],
                error=intake.reason if intake.status not in ("queued", "printed") else None,
                redelivered=intake.redelivered,
            ))
        except Exception:  # noqa: BLE001 - the order is stored and acknowledged; the result is best effort
            log.exception("cannot publish the result of event %s", ev.id)
        if intake.status in ("queued", "printed") and not intake.redelivered:  # new: chimes and alerts
            try:
                self.on_accepted(ev)
            except Exception:  # noqa: BLE001 - the order is safe in the journal; alerts must not undo that
                log.exception("actions for event %s failed", ev.id)
        if queued:  # last: the print thread starts once this thread is done, not competing with it for the GIL
            self.wake()

    def _reject(self, rej: Rejection, payload: bytes, ack: Callable[[], None]) -> None:
        log.warning("rejected order payload %s (%d bytes, event %s): %s", rej.payload_sha256[:12], len(payload), rej.event_id, rej.reason)

        def stored(_: object, error: Optional[BaseException]) -> None:
            if error is not None:
                log.error("cannot store rejected payload %s: %s; not acknowledged", rej.payload_sha256[:12], error)
                self.on_store_failure(str(error))
                return
            _ack(ack, rej.event_id)
            try:
                self.publish_result(OrderResult(event_id=rej.event_id, order_id=rej.order_id, status="rejected",
                                                at=self._now(), error=rej.reason, payload_sha256=rej.payload_sha256))
            except Exception:  # noqa: BLE001
                log.exception("cannot publish a rejection")

        try:
            self.journal.record_rejected(rej.payload_sha256, rej.reason, payload, now=self.clock(), done=stored)
        except JournalError as e:
            log.warning("rejected payload %s not stored: %s; not acknowledged", rej.payload_sha256[:12], e)


def _ack(ack: Callable[[], None], event_id: Optional[str]) -> None:
    try:
        ack()
    except Exception:  # noqa: BLE001 - one failing PUBACK never touches another event; the broker resends this one
        log.exception("cannot acknowledge event %s (it will be redelivered and answered again)", event_id)
