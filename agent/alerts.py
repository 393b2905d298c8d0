"""Alert lifecycle on ``P/S/alerts``: raised -> (acknowledged) -> escalated -> cleared.

Alerts are kept in the journal, so open ones survive a restart. Order exceptions use codes named
after the event type (``order.rider_unassigned``); printer and agent faults use ``printer.*``,
``audio.*``, ``agent.*``. The book does no I/O but the journal and the ``publish`` callback.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, Optional

from .journal import Journal, JournalError

log = logging.getLogger(__name__)

DEVICE_PREFIXES = ("printer.", "audio.", "agent.")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Alert:
    id: str
    code: str
    severity: str
    message: str
    since: float
    at: float
    state: str = "raised"  # raised | acknowledged | escalated | cleared
    audience: str = "store"  # store | infodept
    printer: Optional[str] = None
    order_id: Optional[str] = None
    needs_ack: bool = True
    sound: str = "exception"
    repeat_s: int = 0
    escalate_after_s: int = 0
    acknowledged: bool = False
    details: dict = field(default_factory=dict)

    @property
    def device_fault(self) -> bool:
        return self.code.startswith(DEVICE_PREFIXES)

    @property
    def open(self) -> bool:
        return self.state != "cleared"

    def payload(self) -> bytes:
        body = {
            "v": 1, "id": self.id, "code": self.code, "state": self.state, "severity": self.severity,
            "audience": self.audience, "since": iso(self.since), "at": iso(self.at), "message": self.message,
            "printer": self.printer, "order_id": self.order_id,
        }
        if self.details:
            body["details"] = self.details
        return json.dumps(body, ensure_ascii=False).encode()


class AlertBook:
    def __init__(self, journal: Journal, publish: Callable[[Alert], None], clock: Callable[[], float] = time.time,
                 *, details_for: Callable[[Alert], dict] = lambda a: {}, renotify_s: int = 1800) -> None:
        self.details_for = details_for  # what the info department needs, added when an alert is escalated
        self.renotify_s = renotify_s
        self.journal = journal
        self.publish = publish
        self.clock = clock
        self._lock = threading.RLock()
        self._open: dict[str, Alert] = {}
        self.listeners: list[Callable[[Alert], None]] = []
        try:
            for body in journal.open_alerts():
                a = Alert(**json.loads(body))
                self._open[a.id] = a
        except (JournalError, TypeError, ValueError) as e:
            log.error("cannot restore open alerts: %s", e)

    def _store(self, a: Alert) -> None:
        try:
            self.journal.save_alert(a.id, json.dumps(asdict(a), ensure_ascii=False), a.open, now=a.at)
        except JournalError as e:
            log.error("cannot store alert %s: %s", a.id, e)  # it is still published and kept in memory
        if a.open:
            self._open[a.id] = a
        else:
            self._open.pop(a.id, None)
        log.log(logging.WARNING if a.open else logging.INFO, "alert %s %s: %s", a.id, a.state, a.message)
        try:
            self.publish(a)
        except Exception:  # noqa: BLE001
            log.exception("cannot publish alert %s", a.id)
        for fn in self.listeners:
            try:
                fn(a)
            except Exception:  # noqa: BLE001
                log.exception("alert listener failed")

    def raise_(self, alert_id: str, code: str, message: str, *, severity: str = "warning", printer: Optional[str] = None,
               order_id: Optional[str] = None, needs_ack: bool = True, sound: str = "exception", repeat_s: int = 0,
               escalate_after_s: int = 0, details: Optional[dict] = None) -> Alert:
        """Raise (or refresh the message of) an alert; an alert already open keeps its ``since``."""
        now = self.clock()
        with self._lock:
            old = self._open.get(alert_id)
            if old is not None:
                if old.message == message and (details or {}) == old.details:
                    return old
                a = replace(old, message=message, at=now, details=details or {})
            else:
                a = Alert(alert_id, code, severity, message, since=now, at=now, printer=printer, order_id=order_id,
                          needs_ack=needs_ack, sound=sound, repeat_s=repeat_s, escalate_after_s=escalate_after_s,
                          details=details or {})
            self._store(a)
            return a

    def acknowledge(self, alert_id: Optional[str] = None) -> list[Alert]:
        """Acknowledge one alert, or every open store alert; returns what changed."""
        now = self.clock()
        changed = []
        with self._lock:
            targets = [self._open[alert_id]] if alert_id in self._open else [] if alert_id else list(self._open.values())
            for a in targets:
                if a.acknowledged:
                    continue
                b = replace(a, acknowledged=True, at=now, state="acknowledged" if a.state == "raised" else a.state)
                if not a.needs_ack and not a.device_fault:
                    b = replace(b, state="cleared")  # informational: acknowledging closes it
                self._store(b)
                changed.append(b)
        return changed

    def clear(self, alert_id: str, message: Optional[str] = None) -> Optional[Alert]:
        with self._lock:
            a = self._open.get(alert_id)
            if a is None:
                return None
            b = replace(a, state="cleared", at=self.clock(), message=message or a.message)
            self._store(b)
            return b

    def clear_order(self, order_id: str, keep: Optional[str] = None) -> list[Alert]:
        """Clear an order's open exception alerts (it shipped, completed, was cancelled or moved)."""
        with self._lock:
            ids = [a.id for a in self._open.values() if a.order_id == order_id and a.id != keep]
        return [c for c in (self.clear(i, "order closed") for i in ids) if c]

    def escalate(self, alert_id: str, details: Optional[dict] = None) -> Optional[Alert]:
        with self._lock:
            a = self._open.get(alert_id)
            if a is None or a.state == "escalated":
                return None
            b = replace(a, state="escalated", audience="infodept", at=self.clock(), details={**a.details, **(details or {})})
            self._store(b)
            return b

    def tick(self) -> list[Alert]:
        """Escalate every alert whose ``escalate_after_s`` has passed (acknowledged order alerts excepted)."""
        now = self.clock()
        due = [a for a in self.open_alerts()
               if a.escalate_after_s and a.state != "escalated" and now - a.since >= a.escalate_after_s
               and not (a.acknowledged and not a.device_fault)]
        out = [e for e in (self.escalate(a.id, self.details_for(a)) for a in due) if e]
        with self._lock:  # re-notify escalated alerts until they clear
            again = [a for a in self._open.values() if a.state == "escalated" and now - a.at >= self.renotify_s]
            for a in again:
                b = replace(a, at=now, details={**a.details, **self.details_for(a)})
                self._store(b)
                out.append(b)
        return out

    def open_alerts(self) -> list[Alert]:
        with self._lock:
            return list(self._open.values())

    def get(self, alert_id: str) -> Optional[Alert]:
        with self._lock:
            return self._open.get(alert_id)
