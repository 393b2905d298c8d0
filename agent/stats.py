"""The store's day in figures: per-day counters kept in the journal, and the reports made from them.

Recording (every hook is a lazy journal write; a crash loses at most the last seconds of figures):

* a new event (``on_accepted``): ``events:<type>``; an ``order.created`` also ``orders:<platform>`` and
  ``paid:<platform>`` (fen);
* a result at intake (``on_result``): ``results:<status>`` for ``rejected``, ``duplicate``, ``expired`` (a
  redelivered event's repeated answer is not counted again);
* an event whose jobs all ended (``on_done``, never for a result re-sent after a restart): ``results:failed``,
  or the sample ``to_paper_s`` (arrival to the last ticket out);
* a ticket printed (``on_printed``): ``tickets:<document>``; a reprint also ``reprints:person`` (asked for)
  or ``reprints:uncertain`` (the first copy may have come out: after a crash or a cut-off send);
* an alert (``on_alert``): a printer fault raised ``faults:<kind>``, cleared ``fault_s:<kind>`` (seconds in
  fault), ``escalations``, an acknowledgement the sample ``ack_s`` (raised to acknowledged);
* a follow-up call recorded (``on_followup``): ``followups:<outcome>``.

Days are local dates (the store's clock). Figures are kept ``report.keep_days`` (400), long after the order
rows themselves are pruned. ``report(first, last)`` sums a period; ``Report`` in agent/messages.py is its
shape (``P/S/stats``, the ``report`` request, ``store-agent report --json``, the report slip).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

if TYPE_CHECKING:
    from .alerts import Alert
    from .journal import EventDone, Job, Journal
    from .messages import OrderEvent, OrderResult

log = logging.getLogger(__name__)

COUNTED_RESULTS = ("rejected", "duplicate", "expired")  # at intake; "failed" when the event's jobs end
NOT_FAULTS = ("printer.paper_low", "printer.paper_left", "printer.uncertain")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def local_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(ts))


def _pct(values: list[float], q: float) -> Optional[float]:
    """The q-quantile (nearest rank) of sorted ``values``."""
    if not values:
        return None
    return round(values[max(0, math.ceil(q * len(values)) - 1)], 3)


def split_by_day(start: float, end: float) -> list[tuple[str, float]]:
    """[start, end) as (local day, seconds) pieces."""
    out: list[tuple[str, float]] = []
    t = start
    while t < end:
        d = datetime.fromtimestamp(t).date()
        midnight = datetime.combine(d + timedelta(days=1), datetime.min.time()).timestamp()
        nxt = min(end, midnight)
        out.append((d.isoformat(), nxt - t))
        t = nxt
    return out


def period(kind: str, day: Optional[date] = None, *, today: Optional[date] = None) -> tuple[date, date]:
    """``day``: that day; ``week``: the 7 days ending with ``day``; ``month``: ``day``'s calendar month."""
    d = day or today or date.today()
    if kind == "day":
        return d, d
    if kind == "week":
        return d - timedelta(days=6), d
    if kind == "month":
        first = d.replace(day=1)
        nxt = (first + timedelta(days=32)).replace(day=1)
        return first, nxt - timedelta(days=1)
    raise ValueError(f"period must be day, week or month, not {kind!r}")


class Stats:
    def __init__(self, journal: "Journal", clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.clock = clock
        self._escalated: set[str] = set()  # open alerts already counted as escalated (re-notifications are not)
        self._acked: set[str] = set()  # open alerts whose acknowledgement was counted (a refresh is not another)

    def already_counted(self, alerts: "Iterable[Alert]") -> None:
        """The open alerts at start: an escalation or acknowledgement from before it is not counted again."""
        for a in alerts:
            if a.state == "escalated":
                self._escalated.add(a.id)
            if a.acknowledged:
                self._acked.add(a.id)

    def _add(self, counts: dict[str, float], samples: tuple[tuple[str, float], ...] = (), at: Optional[float] = None) -> None:
        try:
            self.journal.stats_add(local_day(self.clock() if at is None else at), counts, samples)
        except Exception as e:  # noqa: BLE001 - figures must never break printing
            log.warning("cannot record figures: %s", e)

    # -- hooks
    def on_accepted(self, ev: "OrderEvent") -> None:
        counts: dict[str, float] = {f"events:{ev.type}": 1}
        if ev.type == "order.created":
            platform = ev.order.platform or "other"
            counts[f"orders:{platform}"] = 1
            amounts = getattr(ev.order, "amounts", None)
            if amounts is not None:
                counts[f"paid:{platform}"] = amounts.paid
        self._add(counts)

    def on_result(self, result: "OrderResult") -> None:
        if result.status in COUNTED_RESULTS and not getattr(result, "redelivered", False):
            self._add({f"results:{result.status}": 1})

    def on_done(self, done: "EventDone") -> None:
        """An HQ event's jobs all ended (not the re-sending of an old result after a restart)."""
        if done.status == "failed":
            self._add({"results:failed": 1})
        elif done.status == "printed" and done.waited_s is not None:
            self._add({}, (("to_paper_s", done.waited_s),))

    def on_printed(self, job: "Job") -> None:
        counts: dict[str, float] = {f"tickets:{job.document}": 1}
        if job.reprint:
            counts["reprints:person" if job.type == "agent.reprint" else "reprints:uncertain"] = 1
        self._add(counts)

    def on_alert(self, alert: "Alert") -> None:
        code = alert.code
        fault = code.startswith("printer.") and code not in NOT_FAULTS
        kind = code.split(".", 1)[-1]
        if alert.state == "raised" and fault and alert.at == alert.since:  # new (a refreshed message has a later at)
            self._add({f"faults:{kind}": 1}, at=alert.since)
        if alert.state == "cleared":
            self._escalated.discard(alert.id)
            self._acked.discard(alert.id)
            if fault:
                for day, seconds in split_by_day(alert.since, alert.at):  # minutes on the days the printer was down
                    self.journal.stats_add(day, {f"fault_s:{kind}": seconds})
            return
        if alert.state == "escalated" and alert.id not in self._escalated:  # once, not at every re-notification
            self._escalated.add(alert.id)
            self._add({"escalations": 1}, at=alert.at)
        if alert.acknowledged and alert.id not in self._acked:  # the first acknowledgement, escalated or not
            self._acked.add(alert.id)
            self._add({}, (("ack_s", max(alert.at - alert.since, 0.0)),), at=alert.at)

    def on_followup(self, outcome: str, was: Optional[str] = None, was_at: Optional[float] = None) -> None:
        """A follow-up call recorded (``was``: the outcome recorded before, at ``was_at``, which it replaces:
        taken off the day it was counted on, so no day's figures go negative)."""
        if was == outcome:
            return
        if was:
            self._add({f"followups:{was}": -1}, at=was_at)  # (was_at None: today, as before)
        self._add({f"followups:{outcome}": 1})

    # -- reading
    def report(self, first: date, last: date, *, due_followups: Optional[int] = None,
               open_faults: "Iterable[tuple[str, float]]" = ()) -> dict[str, Any]:
        """The figures of the days ``first..last``; ``open_faults`` (kind, since) count their minutes up to now."""
        counts, samples = self.journal.stats_between(first.isoformat(), last.isoformat())
        for kind, since in open_faults:  # a printer still down: its minutes so far, on their days
            for day, seconds in split_by_day(since, self.clock()):
                if first.isoformat() <= day <= last.isoformat():
                    counts[f"fault_s:{kind}"] = counts.get(f"fault_s:{kind}", 0.0) + seconds

        def group(prefix: str) -> dict[str, float]:
            return {k[len(prefix):]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}

        orders, paid = group("orders:"), group("paid:")
        platforms = sorted(set(orders) | set(paid))
        faults = {k: {"count": int(n), "minutes": round(group("fault_s:").get(k, 0.0) / 60, 1)} for k, n in group("faults:").items()}
        for k, s in group("fault_s:").items():  # a fault raised before the period, cleared in it
            faults.setdefault(k, {"count": 0, "minutes": round(s / 60, 1)})
        to_paper, ack = samples.get("to_paper_s", []), samples.get("ack_s", [])
        follow = {k: int(v) for k, v in group("followups:").items()}
        done = sum(follow.values())
        return {
            "v": 1,
            "from_day": first.isoformat(), "to_day": last.isoformat(), "days": (last - first).days + 1,
            "orders": {"total": int(sum(orders.values())),
                       "paid_fen": int(sum(paid.values())),
                       "by_platform": {p: {"orders": int(orders.get(p, 0)), "paid_fen": int(paid.get(p, 0))} for p in platforms}},
            "events": {k: int(v) for k, v in group("events:").items()},
            "tickets": {k: int(v) for k, v in group("tickets:").items()},
            "reprints": {k: int(v) for k, v in group("reprints:").items()},
            "results": {k: int(v) for k, v in group("results:").items()},
            "to_paper_s": {"n": len(to_paper), "p50": _pct(to_paper, 0.5), "p95": _pct(to_paper, 0.95),
                           "max": round(to_paper[-1], 3) if to_paper else None},
            "faults": faults,
            "escalations": int(counts.get("escalations", 0)),
            "alert_response_s": {"n": len(ack), "median": _pct(ack, 0.5), "max": round(ack[-1], 1) if ack else None},
            "followups": {"done": done, "reached": follow.get("reached", 0), "no_answer": follow.get("no_answer", 0),
                          "declined": follow.get("declined", 0), "due": due_followups,
                          "rate": round(follow.get("reached", 0) / done, 3) if done else None},
        }

    def prune(self, keep_days: int) -> None:
        self.journal.prune_stats(local_day(self.clock() - keep_days * 86400))


class ReportSchedule:
    """The report slips: daily at ``daily_at`` (local "HH:MM", "" = off) for that day, weekly on ``weekly_on``
    (at the same time) for the 7 days ending that day, and on the 1st of a month for the month before. Each
    once (a key in the journal's timers table), also across restarts; a slip whose time passed while the
    agent was off prints when it starts: the same day for the daily one, any later day for the latest weekly
    and monthly ones (when the agent has figures for that period)."""

    def __init__(self, journal: "Journal", *, daily_at: str, weekly_on: str, monthly: bool,
                 print_report: Callable[[str, date, date], None], clock: Callable[[], float] = time.time) -> None:
        self.journal, self.daily_at, self.weekly_on, self.monthly = journal, daily_at, weekly_on, monthly
        self.print_report = print_report
        self.clock = clock

    def tick(self) -> list[str]:
        if not self.daily_at:
            return []
        now = datetime.fromtimestamp(self.clock())
        hh, mm = (int(x) for x in self.daily_at.split(":"))
        passed = (now.hour, now.minute) >= (hh, mm)  # today's slip time
        today = now.date()
        due: list[tuple[str, str, date, date, bool]] = []
        if passed:
            due.append((f"report:day:{today}", "day", today, today, False))
        if self.weekly_on:  # the latest weekly day whose time has passed (caught up when the agent was off then)
            back = (today.weekday() - WEEKDAYS.index(self.weekly_on)) % 7
            if back or passed:
                end = today - timedelta(days=back)
                due.append((f"report:week:{end}", "week", end - timedelta(days=6), end, back > 0))
        if self.monthly and (today.day > 1 or passed):  # the month before, from its 1st on
            last = today.replace(day=1) - timedelta(days=1)
            due.append((f"report:month:{last:%Y-%m}", "month", last.replace(day=1), last, today.day > 1))
        printed = []
        for key, kind, first, last, late in due:
            if self.journal.timer_fired(key) is not None:
                continue
            self.journal.mark_timer(key, self.clock())
            if late and not self._had_figures(first, last):
                continue  # the agent was not running then (a new install): no empty slip to catch up on
            self.print_report(kind, first, last)
            printed.append(key)
        return printed

    def _had_figures(self, first: date, last: date) -> bool:
        try:
            return bool(self.journal.stats_between(first.isoformat(), last.isoformat())[0])
        except AttributeError:  # a journal stand-in without figures
            return True
