"""The follow-up call list: step 8 of the pharmacy's eight steps, "call every customer back within 24–48 h
of delivery" (按公司规定24-48小时内回访顾客).

* **Due**: an order delivered ``followup.after_h`` to ``followup.before_h`` hours ago. Delivered = the time
  (``at``) of its ``order.completed`` event, else of its ``order.dispatched`` one. Cancelled orders are left
  out; an order with an after-sale request is listed, flagged (the call is about that).
* **Done**: ``store-agent followup done ORDER_ID --outcome reached|no_answer|declined``, the MQTT request
  ``followup_done``. The outcome is kept in the journal (a later call may change it) and counted in the
  day's figures (回访率 in the report). A recorded order leaves the list.
* **The slip**: at ``followup.print_at`` each day (once, across restarts) the list prints, with boxes for
  已回访 / 未接通 / 不需要.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Optional

from .messages import parse_stored

if TYPE_CHECKING:
    from .config import FollowupConfig
    from .journal import Journal
    from .stats import Stats

log = logging.getLogger(__name__)

OUTCOMES = ("reached", "no_answer", "declined")
DELIVERED = ("order.completed", "order.dispatched")
LOOKED_AT = DELIVERED + ("order.cancelled", "aftersale.requested", "aftersale.revoked")
SCAN_SLACK_S = 86400  # events can arrive up to this long after their own time and still count


class FollowupError(Exception):
    pass


class Followups:
    def __init__(self, journal: "Journal", settings: "FollowupConfig", stats: "Stats",
                 clock: Callable[[], float] = time.time) -> None:
        self.journal, self.settings, self.stats, self.clock = journal, settings, stats, clock

    def due(self, *, include_done: bool = False) -> list[dict[str, Any]]:
        """The orders due for a call now, oldest delivery first (plain data: the slip's and the CLI's)."""
        s = self.settings
        now = self.clock()
        since = now - s.before_h * 3600 - SCAN_SLACK_S
        delivered: dict[str, tuple[float, str, Any]] = {}
        cancelled, aftersale = set(), set()
        for received_at, order_id, etype, payload in self.journal.recent_events(since, LOOKED_AT):
            try:
                ev = parse_stored(payload)
            except ValueError:
                continue
            at = ev.at.timestamp() if ev.at else received_at
            if etype == "order.cancelled":
                cancelled.add(order_id)
            elif etype == "aftersale.requested":
                aftersale.add(order_id)
            elif etype == "aftersale.revoked":
                aftersale.discard(order_id)
            elif etype == "order.completed" or (etype == "order.dispatched" and
                                                delivered.get(order_id, (0, "", None))[1] != "order.completed"):
                delivered[order_id] = (at, etype, ev)
        window = [(oid, v) for oid, v in delivered.items()
                  if oid not in cancelled and s.after_h * 3600 <= now - v[0] <= s.before_h * 3600]
        done = self.journal.followups_done(oid for oid, _ in window)
        out = []
        for oid, (at, etype, ev) in sorted(window, key=lambda x: x[1][0]):
            if oid in done and not include_done:
                continue
            order = ev.order
            created = self.journal.order_payload(oid)
            if created is not None:
                try:
                    order = parse_stored(created).order
                except ValueError:
                    pass
            items = [f"{i.name} x{i.qty}" for i in (order.items or [])]
            out.append({
                "order_id": oid, "platform": order.platform, "seq": order.seq,
                "delivered_at": datetime.fromtimestamp(at).astimezone().isoformat(timespec="minutes"),
                "delivered_by": "completed" if etype == "order.completed" else "dispatched",
                "hours_ago": round((now - at) / 3600, 1),
                "items": items[: s.max_items] + ([f"… +{len(items) - s.max_items}"] if len(items) > s.max_items else []),
                "customer": (order.customer.name if order.customer else None),
                "phone": (order.customer.phone if order.customer else None),
                "aftersale": oid in aftersale,
                "done": done.get(oid, (None,))[0],
            })
        return out

    def record(self, order_id: str, outcome: str) -> dict[str, Any]:
        if outcome not in OUTCOMES:
            raise FollowupError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        if not self.journal.has_order(order_id) and not self.journal.followups_done([order_id]):
            raise FollowupError(f"no order {order_id!r} in the journal")
        before = self.journal.record_followup(order_id, outcome, self.clock())
        was, was_at = before if before else (None, None)
        self.stats.on_followup(outcome, was, was_at)  # a later call that changes it: the figures follow
        log.info("follow-up of order %s: %s%s", order_id, outcome, f" (was {was})" if was else "")
        return {"order_id": order_id, "outcome": outcome, "was": was}


class FollowupSchedule:
    """The list slip once a day at ``print_at`` (a key in the journal's timers table: once across restarts)."""

    def __init__(self, journal: "Journal", print_at: str, print_list: Callable[[list[dict]], None],
                 followups: Followups, clock: Callable[[], float] = time.time) -> None:
        self.journal, self.print_at, self.print_list, self.followups, self.clock = journal, print_at, print_list, followups, clock

    def tick(self) -> Optional[str]:
        if not self.print_at:
            return None
        now = datetime.fromtimestamp(self.clock())
        hh, mm = (int(x) for x in self.print_at.split(":"))
        if (now.hour, now.minute) < (hh, mm):
            return None
        key = f"followup:slip:{now.date()}"
        if self.journal.timer_fired(key) is not None:
            return None
        self.journal.mark_timer(key, self.clock())
        due = self.followups.due()
        if due:
            self.print_list(due)
        log.info("follow-up list: %d order(s) due%s", len(due), "" if due else " (no slip)")
        return key
