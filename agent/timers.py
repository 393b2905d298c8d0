"""Local timers that keep working while HQ is unreachable, and survive a restart (state in the journal).

* Prep reminder: ``prep_before_s`` before a scheduled delivery window starts, print a reminder
  listing the orders to prepare (each order once).
* Unshipped summary: every ``summary_every_s``, list the orders created more than
  ``unshipped_after_s`` ago that have no dispatched / completed / cancelled / reassigned event;
  print it and raise an ``order.unshipped`` store alert.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from .journal import Journal
from .messages import parse_stored

log = logging.getLogger(__name__)

CLOSED_BY = ("order.dispatched", "order.completed", "order.cancelled", "order.reassigned")
LOOKBACK_S = 2 * 86400


@dataclass(frozen=True)
class TimerSettings:
    prep_before_s: int = 1800
    unshipped_after_s: int = 3600
    summary_every_s: int = 1800


class LocalTimers:
    def __init__(
        self,
        journal: Journal,
        settings: TimerSettings,
        *,
        print_internal: Callable[[str, str, dict], None],
        on_unshipped: Callable[[list[dict]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.settings = settings
        self.print_internal = print_internal  # (key, template, context) -> queued once per key
        self.on_unshipped = on_unshipped
        self.clock = clock

    def _open_orders(self, now: float) -> list[tuple[float, dict]]:
        closed = self.journal.orders_with(CLOSED_BY, now - LOOKBACK_S)
        out = []
        for received_at, payload, order_id in self.journal.recent_created(now - LOOKBACK_S):
            if order_id in closed:
                continue
            try:
                ev = parse_stored(payload)
            except ValueError:
                continue
            o = ev.order
            window = o.delivery.window.start if o.delivery and o.delivery.window else None
            placed = o.placed_at.timestamp() if o.placed_at else received_at
            out.append((placed, {
                "id": o.id, "platform": o.platform, "seq": o.seq,
                "window_start": window.isoformat() if window else None,
                "window_ts": window.timestamp() if window else None,
            }))
        return out

    def tick(self) -> None:
        now = self.clock()
        s = self.settings
        summary_due = s.summary_every_s and now - self.journal.timer_fired("summary", default=0.0) >= s.summary_every_s
        if not s.prep_before_s and not summary_due:
            return  # nothing to look at: no journal scan
        orders = self._open_orders(now)
        if s.prep_before_s:
            due = [o for _, o in orders if o["window_ts"] and now < o["window_ts"] <= now + s.prep_before_s]
            fresh = [o for o in due if not self.journal.timer_fired(f"prep:{o['id']}")]
            if fresh:
                for o in fresh:
                    self.journal.mark_timer(f"prep:{o['id']}", now)
                self.print_internal(f"prep-{int(now)}", "prep_reminder", {"orders": fresh})
        if summary_due:
            late = [dict(o, age_min=int((now - placed) // 60)) for placed, o in orders if now - placed >= s.unshipped_after_s]
            self.journal.mark_timer("summary", now)
            if late:
                self.print_internal(f"unshipped-{int(now)}", "unshipped_summary",
                                    {"orders": late, "minutes": s.unshipped_after_s // 60})
                self.on_unshipped(late)


def context_json(context: dict) -> bytes:
    return json.dumps(context, ensure_ascii=False, default=str).encode()


def context_from(payload: bytes) -> dict:
    ctx = json.loads(payload)
    for o in ctx.get("orders", []):
        if o.get("window_start"):
            o["window_start"] = datetime.fromisoformat(o["window_start"])
    return ctx
