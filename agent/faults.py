"""Printer status -> alerts: the store first (chime, LED), then the info department (escalation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.escpos_proto import PrinterStatus

from .alerts import Alert, iso

if TYPE_CHECKING:
    from .app import Agent


# the printer's own faults (one open at a time, cleared by a stable good status); other printer alerts
# (paper_low, paper_left, uncertain) have their own lives
FAULT_CODES = frozenset(f"printer.{s}" for s in ("paper_out", "cover_open", "offline", "unreachable", "unknown", "error"))


class PrinterFaults:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self._ok_since: dict[str, float] = {}  # printer -> since when it has been fine again

    def on_status(self, name: str, st: PrinterStatus) -> None:
        """A print worker's status check (its thread): one open fault per printer, cleared once stable."""
        a = self.agent
        alerts = a.alerts
        now = a.clock()
        faulted = (st.error or st.state not in ("ready", "paper_low", "unknown")
                   or (st.state == "unknown" and a.printers[name].queryable))
        kind = "error" if st.error else st.state
        low_id = f"printer:{name}:paper_low"
        if st.state == "paper_low":
            alerts.raise_(low_id, "printer.paper_low", f"打印机 {name} 纸将用完,请备纸", severity="warning",
                          printer=name, needs_ack=False, sound="none")
        elif st.state == "ready" and alerts.get(low_id):
            alerts.clear(low_id, f"打印机 {name} 已换纸")
        open_faults = [x for x in alerts.open_alerts() if x.printer == name and x.code in FAULT_CODES]
        if faulted:
            self._ok_since.pop(name, None)
            aid = f"printer:{name}:{kind}"
            if alerts.get(aid) is None:
                for x in open_faults:  # the cause changed (cover closed, now paper out): one open fault per printer
                    alerts.clear(x.id, f"打印机 {name}: {kind}")
                a.annunciator.request("device_fault")
                a.speak(a.voice.settings.phrases.get(f"printer.{kind}", ""), {"printer": name})
                alerts.raise_(aid, f"printer.{kind}", f"打印机 {name}: {kind} {st.detail}".strip(),
                              severity="critical", printer=name, needs_ack=False, sound="device_fault",
                              escalate_after_s=max(a.cfg.escalation.printer_fault_after_s, 1))
        elif open_faults:
            first_ok = self._ok_since.setdefault(name, now)
            if now - first_ok >= a.cfg.health.clear_after_s:  # stable again: a loose cable gives one alert
                for x in open_faults:
                    alerts.clear(x.id, f"打印机 {name} 已恢复")
                self._ok_since.pop(name, None)

    def escalation_details(self, alert: Alert) -> dict:
        """What the info department needs, added when an alert is escalated."""
        a = self.agent
        d: dict = {"store": a.cfg.store.name, "store_phone": a.cfg.store.phone, "escalated": True}
        w = a.workers.get(alert.printer or "")
        if w is not None:
            p = next(p for p in a.cfg.printers if p.name == alert.printer)
            d.update({
                "printer": p.name, "connection": describe(p), "cause": f"{w.status.state} {w.status.detail}".strip(),
                "since": iso(alert.since), "last_good_print": iso(w.last_print_at) if w.last_print_at else None,
                "jobs_waiting": a.journal.open_job_counts().get(p.name, 0),
            })
        return d


def describe(p) -> str:  # noqa: ANN001 - any printer config
    if p.connection == "network":
        return f"network {p.host}:{p.port}"
    if p.connection == "usb":
        return f"usb {p.vendor_id:04x}:{p.product_id:04x}"
    if p.connection == "serial":
        return f"serial {p.device} {p.baudrate}"
    if p.connection == "file":
        return f"file {p.path}"
    return "virtual"
