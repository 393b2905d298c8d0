"""What the agent knows of each printer beyond its state: what it can do (probe), how it lays tickets
out (profile), the paper left on its roll, how fast it prints; and the one alert for a ticket nobody
can be sure came out.

* **Probe** (drivers/printers.py ``probe_transport``): for a printer nothing is known of, at the first idle
  moment of the run or before its first job, whichever comes first; after a restart what the journal kept
  is used once the printer is found to be the same one (its ``GS I 1..3`` ids), else it is probed anew;
  and on ``printers probe``. The result is kept in the journal (``printers`` table), logged
  once when it differs from what was known, and turns into the layout (agent/profiles.py ``choose``).
  With ``confirm = "auto"`` a printer that does not answer ``GS r 1`` prints unconfirmed: one warning.
* **Paper**: every printed ticket adds the paper it used (agent/render.py lines -> mm). The count starts
  again when a roll is loaded: ``paper_out`` -> printable, ``paper_low`` -> ``ready`` (the near-end
  sensor cleared), ``store-agent paper loaded``. When the near-end sensor trips, the paper used so far is
  learnt as the roll's usable length. Left = roll (learnt, else ``paper_roll_m``) - used; tickets left =
  left / the mean ticket length. Below ``LOW_TICKETS`` tickets: a low-priority store alert "纸卷约剩 N 单".
* **Uncertain tickets**: a job whose copies may all have reached paper unconfirmed (the first and one
  automatic 补打) is not sent again by itself: the store is asked "请查看打印机是否已出单" and a person
  reprints it (``store-agent reprint``, the MQTT ``reprint`` request) or acknowledges the alert.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Optional

from drivers.escpos_proto import PrinterStatus

from .journal import Job
from .profiles import choose

if TYPE_CHECKING:
    from .app import Agent
    from .printing import PrintWorker

log = logging.getLogger(__name__)

LOW_TICKETS = 40  # the paper-left alert: about this many tickets left on the roll
MEAN_TICKET_MM = 120.0  # until this printer has printed a few: a typical receipt
LOW_HOLD_S = 30.0  # a near-end spell shorter than this (and no cover opened) is a flapping sensor, not a new roll
MIN_LEARNT_MM = 1000.0  # a near-end count shorter than this is not learnt as a roll's length


def confirm_word(printer: Any, caps: Optional[dict]) -> str:
    """``gs_r`` (jobs confirmed), ``unsupported`` (auto, the printer does not answer GS r), ``undecided``
    (auto, GS r not answered yet: asked again while idle), ``off``, or ``unprobed``."""
    mode = getattr(printer, "confirm_mode", "none")
    if not getattr(printer, "queryable", False) or mode == "none":
        return "off"
    if mode == "gs_r":
        return "gs_r"
    if caps is None:
        return "unprobed"
    gs_r = caps.get("gs_r")
    return "undecided" if gs_r is None else ("gs_r" if gs_r else "unsupported")


class PrinterFacts:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self._lock = threading.Lock()
        try:
            self._known = agent.journal.printer_facts()
        except Exception as e:  # noqa: BLE001 - a read failure must not stop the agent: facts start empty
            log.warning("cannot read what is known of the printers: %s", e)
            self._known = {}
        self._mean_mm: dict[str, float] = {}
        self._last_state: dict[str, str] = {}
        self._roll_out: dict[str, bool] = {}  # the paper ran out: the next printable state is a new roll
        self._low_since: dict[str, float] = {}  # the near-end sensor has said so since (clock)
        self._opened: dict[str, bool] = {}  # the cover was opened during that near-end spell

    # -- wiring (called when a worker is made)
    def attach(self, p: Any, worker: "PrintWorker") -> None:
        known = self._known.get(p.name, {})
        before = getattr(self.agent, "workers", {}).get(p.name)  # a live config change replaces a worker
        worker.paper_mm = before.paper_mm if before is not None else float(known.get("paper_mm") or 0.0)
        if before is not None and before.print_s is not None:
            worker.print_s = before.print_s
        caps = self.caps(p.name) if before is not None else known.get("caps")
        worker.apply(choose(p, caps))
        drv = worker.printer
        if hasattr(drv, "on_probe"):
            drv.on_probe = lambda caps, name=p.name: self.on_probe(name, caps)
        if hasattr(drv, "remember"):  # what an earlier run found: a restart's first job waits for no probe
            drv.remember(known.get("caps"))

    def caps(self, name: str) -> Optional[dict]:
        drv = self.agent.printers.get(name)
        live = getattr(drv, "caps", None)
        return live if live is not None else self._known.get(name, {}).get("caps")

    # -- probe
    def on_probe(self, name: str, caps: dict) -> None:
        """A probe finished (the worker's thread, inside the driver)."""
        a = self.agent
        p = next((p for p in a.cfg.printers if p.name == name), None)
        if p is None or not caps.get("reachable", True):
            return
        old = self._known.setdefault(name, {}).get("caps")
        self._known[name]["caps"] = caps
        out = choose(p, caps)
        w = a.workers.get(name)
        if w is not None:
            w.apply(out)
        strip = lambda c: {k: v for k, v in (c or {}).items() if k != "probed_at"}  # noqa: E731
        if strip(old) != strip(caps):
            ident = caps.get("ident") or {}
            log.info("printer %s: answers DLE EOT: %s, GS r 1: %s, cutter: %s, model: %s %s; layout: profile %s (%s), "
                     "%d columns, QR %s, %s", name, yes_no(caps.get("dle_eot")), yes_no(caps.get("gs_r")), yes_no(caps.get("cutter")),
                     ident.get("maker", "?"), ident.get("model", "?"), out.profile, out.source, out.columns, out.qr,
                     "cut" if out.cut else "feed to tear")
            if confirm_word(a.printers.get(name), caps) == "unsupported":
                log.warning("printer %s does not answer GS r 1: its tickets print unconfirmed (a ticket cut off by a "
                            "dropped connection is reprinted once, marked 补打, then the store is asked)", name)
            try:
                a.journal.save_caps(name, caps, now=a.clock())
            except Exception as e:  # noqa: BLE001
                log.warning("printer %s: cannot keep the probe's result: %s", name, e)

    # -- paper
    def on_printed(self, name: str, mm: float) -> None:
        with self._lock:
            m = self._mean_mm.get(name)
            self._mean_mm[name] = mm if m is None else 0.9 * m + 0.1 * mm
        self._check_low(name)

    def on_status(self, name: str, st: PrinterStatus) -> None:
        """Roll changes seen in the printer's status (the worker's thread). A new roll: printable again after
        the paper ran out (whatever came between: the cover opened, the printer switched off), or ``ready``
        after a near-end spell that lasted ``LOW_HOLD_S`` or saw the cover open (a flapping near-end sensor
        is not a new roll)."""
        now = self.agent.clock()
        with self._lock:
            prev = self._last_state.get(name)
            self._last_state[name] = st.state
            if prev == st.state or st.error:
                return
            new_roll = learn = ""
            if st.state == "paper_out":
                self._roll_out[name] = True
            elif st.state == "cover_open" and name in self._low_since:
                self._opened[name] = True
            elif st.state == "paper_low" and name not in self._low_since and not self._roll_out.get(name):
                self._low_since[name] = now
                learn = "near-end sensor tripped"
            if st.printable and self._roll_out.pop(name, False):
                new_roll = f"the paper ran out, then {st.state}"
            elif st.state == "ready" and name in self._low_since:
                held = now - self._low_since.pop(name)
                if self._opened.pop(name, False) or held >= LOW_HOLD_S:
                    new_roll = "the near-end sensor cleared"
            if new_roll:
                self._low_since.pop(name, None)
                self._opened.pop(name, None)
        if learn:
            self._learn(name)
        if new_roll:
            self.loaded(name, why=new_roll)

    def _learn(self, name: str) -> None:
        a = self.agent
        try:
            learnt = a.journal.learn_roll(name, MIN_LEARNT_MM, now=a.clock())
        except Exception as e:  # noqa: BLE001
            log.warning("printer %s: cannot learn the roll length: %s", name, e)
            return
        if learnt is not None:  # counted from a known roll start, and long enough to be a roll
            self._known.setdefault(name, {})["mm_per_roll"] = learnt
            log.info("printer %s: near-end sensor tripped after %.1f m of paper: the forecast uses that from now on",
                     name, learnt / 1000)

    def loaded(self, name: str, why: str = "store-agent paper loaded") -> float:
        """A new roll in printer ``name``: the count starts again. Returns the metres the last roll gave."""
        a = self.agent
        used = a.journal.paper_loaded(name, now=a.clock())
        w = a.workers.get(name)
        if w is not None:
            w.paper_mm = 0.0
        self._known.setdefault(name, {})["paper_mm"] = 0.0
        a.alerts.clear(f"printer:{name}:paper_left", "换了新纸卷")
        log.info("printer %s: new paper roll (%s); the last one gave %.1f m", name, why, used / 1000)
        return used / 1000

    def forecast(self, name: str) -> Optional[dict]:
        a = self.agent
        p = next((p for p in a.cfg.printers if p.name == name), None)
        w = a.workers.get(name)
        if p is None or w is None:
            return None
        learnt = self._known.get(name, {}).get("mm_per_roll")
        roll_mm = learnt or p.roll_m * 1000
        left = max(roll_mm - w.paper_mm, 0.0)
        mean = self._mean_mm.get(name) or MEAN_TICKET_MM
        return {"used_m": round(w.paper_mm / 1000, 2), "left_m": round(left / 1000, 2),
                "tickets_left": int(left // mean), "roll_m": round(roll_mm / 1000, 2), "learnt": bool(learnt)}

    def _check_low(self, name: str) -> None:
        f = self.forecast(name)
        aid = f"printer:{name}:paper_left"
        if f is None or self.agent.alerts.get(aid) is not None:  # raised once; it stays until a new roll
            return
        if f["tickets_left"] <= LOW_TICKETS:
            self.agent.alerts.raise_(aid, "printer.paper_left", f"打印机 {name} 纸卷约剩 {f['tickets_left']} 单,请备纸",
                                     severity="info", printer=name, needs_ack=False, sound="none")

    # -- the view (health, status, doctor)
    def view(self, name: str) -> dict:
        a = self.agent
        caps = self.caps(name)
        w = a.workers.get(name)
        ident = (caps or {}).get("ident") or {}
        out = w.output if w is not None else None
        return {
            "confirm": confirm_word(a.printers.get(name), caps),
            "status_answers": None if caps is None else bool(caps.get("dle_eot")),
            "cutter": None if caps is None else caps.get("cutter"),
            "model": " ".join(str(ident[k]) for k in ("maker", "model") if ident.get(k)) or None,
            "profile": out.profile if out else None,
            "profile_source": out.source if out else None,
            "columns": out.columns if out else None,
            "qr": out.qr if out else None,
            "cut": out.cut if out else None,
            "paper": self.forecast(name),
            "print_s": round(w.print_s, 3) if w is not None and w.print_s is not None else None,
        }

    # -- tickets nobody can be sure of
    def on_uncertain(self, job: Job) -> None:
        """``job`` was sent twice without the printer's word that it printed: ask a person."""
        who = job.order_id or job.event_id
        self.agent.annunciator.request("exception")
        self.agent.speak(self.agent.voice.settings.phrases.get("printer.uncertain", ""), {"printer": job.printer})
        self.agent.alerts.raise_(
            f"print:{job.event_id}:{job.document}", "printer.uncertain",
            f"请查看打印机是否已出单: {who} {job.document} (已发送 {job.attempts} 次,未收到打印机确认;未出单请补打)",
            severity="warning", printer=job.printer, order_id=job.order_id, needs_ack=True, sound="exception")


def yes_no(v: Any) -> str:
    return "?" if v is None else ("yes" if v else "no")
