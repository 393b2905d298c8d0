"""One print worker per printer: FIFO from the journal, never on paho's thread.

A job counts as printed only when the printer was printable before *and* after it (in a burst the check
after one job, when printable, stands for the check before the next if that starts within
``BACK_TO_BACK_S``). Before any byte
of a job leaves, its ``printing`` mark is committed (``Journal.begin_attempt``, or the job was
armed for it by an earlier commit and ``Journal.take_armed`` hands it over); a job whose attempt
may have reached paper prints again marked 补打, at most once automatically (see agent/journal.py).
What was armed but not sent goes back to ``queued`` when the printer is not ready, when a send
fails before any byte left, and at a clean stop, so no first copy is ever marked 补打.

Nothing slow happens between a job's ``printing`` mark and its first byte. The printer's probe (which can
wait a second per unanswered question) and the check that a remembered printer is still the same one
(``Printer.settled``) run on this thread before a job is marked: at the first idle moment of a run, or in
the check before a job if one comes first; never inside ``send()``. Until the printer is settled,
``ready()`` is false, so intake arms no job for it. (docs/RELIABILITY.md: the SIGKILL drill and the probe.)
The printer's status is asked three ways (``Printer.status(maintain=...)``): the checks around a job ask
nothing more (``"no"``) once the printer is settled, and settle it first otherwise (``"first"``); the idle
poll also re-asks an undecided ``GS r`` (``"idle"``). The run's first status asks only ``DLE EOT``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from drivers.escpos_proto import PrinterStatus
from drivers.printers import Printer, PrinterError, PrinterIOError, make_printer

from .config import Config
from .journal import MAX_UNCERTAIN, EventDone, Job, Journal, JournalError
from .messages import OrderEvent, ParsedEvents, parse_stored
from .preview import encode
from .profiles import Output
from .render import paper_mm
from .timers import context_from
from .tickets import TicketRenderer

log = logging.getLogger(__name__)

# With a queue (a burst, or the end of a paper-out spell), one durable commit also arms this many
# jobs queued behind the current event. Bytes written per order fall; the price: after a crash in
# such a spell, up to this many tickets that never printed come out marked 补打.
ARM_AHEAD = 8

# The check after a job (printable) counts as the check before the next one when the next starts within
# this many seconds of it (a burst): nothing was sent between them, so the later look at the printer is
# skipped, not the look itself (an unconfirmed printer may still be printing the last ticket at either
# look). One DLE EOT round trip fewer per ticket in a burst.
BACK_TO_BACK_S = 0.05


class Inflight:
    """Jobs a worker is attempting right now, shared by all workers: a job is never on two printers at once."""

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self._lock = threading.Lock()

    def claim(self, job_id: int) -> bool:
        with self._lock:
            if job_id in self._ids:
                return False
            self._ids.add(job_id)
            return True

    def release(self, job_id: int) -> None:
        with self._lock:
            self._ids.discard(job_id)

    def ids(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(self._ids)


class PrintWorker:
    def __init__(
        self,
        printer: Printer,
        *,
        columns: int,
        describe: Optional[dict] = None,
        render_mode: str = "text",
        qr_mode: str = "native",
        cut: bool = True,
        charset: str = "gb18030",
        journal: Journal,
        renderer: TicketRenderer,
        on_done: Callable[[EventDone], None],
        on_status: Callable[[str, PrinterStatus], None] = lambda name, st: None,
        on_printed: Callable[[str, float, Job], None] = lambda name, mm, job: None,
        on_uncertain: Callable[[Job], None] = lambda job: None,
        retry_s: float = 2.0,
        poll_s: float = 5.0,
        max_attempts: int = 0,
        clock: Callable[[], float] = time.time,
        takeover: Callable[[], tuple[str, ...]] = lambda: (),
        inflight: Optional[Inflight] = None,
        parsed: Optional[ParsedEvents] = None,
    ) -> None:
        self.parsed = parsed  # events as intake parsed them (a miss parses the stored payload)
        self.takeover = takeover  # a backup printer: the primaries whose jobs it may print now
        self.inflight = inflight or Inflight()
        self.printer = printer
        self.name = printer.name
        self.columns = columns
        self.render_mode = render_mode
        self.describe = describe or {"name": printer.name, "connection": "", "paper_width_mm": 80}
        self.qr_mode = qr_mode
        self.cut, self.charset = cut, charset
        self._fault_logged = ""  # the last unexpected error whose traceback was logged
        self._parsed: tuple[int, Optional[OrderEvent]] = (-1, None)  # the last job's event, parsed
        self.output: Optional[Output] = None  # the profile-driven layout in use (set by apply())
        self.paper_mm = 0.0  # paper used since the roll was loaded (kept in the journal)
        self.print_s: Optional[float] = None  # seconds per ticket, send to confirmation (confirming printers)
        self.journal = journal
        self.renderer = renderer
        self.on_done = on_done  # runs on the journal's writer thread, after the outcome's commit
        self.on_status = on_status
        self.on_printed = on_printed  # (printer, mm of paper, job) after each printed ticket
        self.on_uncertain = on_uncertain  # a job sent twice unconfirmed: a person must look
        self.retry_s = retry_s
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self.clock = clock
        self.status: PrinterStatus = PrinterStatus("unknown", "not checked yet")
        self.status_since = clock()
        self._full_at = float("-inf")  # time.monotonic() of the last full status query
        self._ok_after_at = float("-inf")  # time.monotonic() when the check after the last job found it printable
        self.last_print_at: Optional[float] = None
        self.heartbeat = time.monotonic()
        self.idle = False  # nothing to print at the last look (intake may then arm a new order's jobs)
        self._probe_tried = False  # the idle loop has had its chance to probe a printer nothing is known of
        self.current: Optional[Job] = None  # the job whose bytes are being sent (tests, diagnostics)
        self._finished: set[int] = set()  # events (seq) whose jobs this worker finished since it was last idle
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"print-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the job under way; what is armed for this printer goes back to ``queued``."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._unarm()
        self.printer.close()

    def wake(self) -> None:
        self._wake.set()

    def apply(self, out: Output) -> None:
        """Lay tickets out as ``out`` says from the next job on (a probe can change it; the print thread
        reads ``output`` once per job, so a job never mixes two layouts)."""
        self.columns, self.render_mode, self.qr_mode = out.columns, out.render, out.qr
        self.cut, self.charset = out.cut, out.charset
        self.output = out

    # -- loop
    def _run(self) -> None:
        try:  # connect and learn the printer's state before the first order needs it (no probe: quick)
            self._check("no")
        except Exception as e:  # noqa: BLE001
            self._fault(e)
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                if not self.step():
                    self._sleep(self.retry_s)
            except JournalError as e:
                log.error("printer %s: journal error: %s", self.name, e)
                self._sleep(self.retry_s)
            except Exception as e:  # noqa: BLE001 - a print thread must not die
                self._fault(e)
                self._sleep(self.retry_s)

    def _fault(self, e: Exception) -> None:
        """An unexpected error in this worker is a device fault like any other: health shows the printer
        ``unknown`` with the error, the store is alerted and IT escalated; a later good status clears it."""
        detail = f"agent error: {type(e).__name__}: {e}".replace("\n", " ")[:300]
        if detail != self._fault_logged:  # the traceback once per distinct error, not at every retry
            self._fault_logged = detail
            log.exception("printer %s: unexpected error", self.name)
        else:
            log.debug("printer %s: %s (again)", self.name, detail)
        if detail != self.status.detail:
            self.status_since = self.clock()
        self.status = PrinterStatus("unknown", detail, error=True)
        try:
            self.on_status(self.name, self.status)
        except Exception:  # noqa: BLE001
            log.exception("printer %s: status handler failed", self.name)

    def step(self) -> bool:
        """Print the next job, or wait for one; False means 'wait before the next attempt'."""
        job = self.journal.next_job(self.name, self.takeover(), skip=self.inflight.ids())
        self.idle = job is None
        if job is None:
            self._idle()
            return True
        if not self.inflight.claim(job.id):
            return True
        try:
            return self._attempt(job)
        finally:
            self.inflight.release(job.id)

    def _sleep(self, seconds: float) -> None:
        self.heartbeat = time.monotonic()  # waiting for paper is not being stuck
        self._stop.wait(seconds)

    def _idle(self) -> None:
        """Nothing to print: poll the printer's status every ``poll_s`` until woken."""
        self.heartbeat = time.monotonic()
        if len(self._finished) >= 2:
            # the end of a burst: commit its outcomes now, so a crash in the next seconds does not
            # reprint them (a single order's outcome rides on the next commit instead)
            self.journal.commit_soon()
        self._finished.clear()
        unsettled = not getattr(self.printer, "settled", True) and not self._probe_tried
        self._probe_tried = True  # settled at the first idle moment of the run, not poll_s later
        if self._wake.wait(0 if unsettled else self.poll_s):
            self._wake.clear()
            return
        if not self._stop.is_set():
            self._check("idle")  # nothing waits: the run's probe, if not made yet, goes here

    def _quick_check(self, before: bool = False) -> PrinterStatus:
        """Before and after a job: one ``DLE EOT 1`` round trip while the last full status is fresh
        (under ``poll_s`` old) and printable; the full status otherwise, and whenever the printer
        does not say it is online (cover open, paper end and errors all put it offline). A printer not
        settled yet (``Printer.settled``: probed, or checked to be the remembered one) is settled first,
        before any job is marked printing (``before``); while it cannot be (busy, silent: at most
        ``SETTLE_TRIES`` looks), no job goes. The check after a job never settles anything."""
        if before and not getattr(self.printer, "settled", True):
            st = self._check("first")
            if st.printable and not getattr(self.printer, "settled", True):  # busy or silent: no job goes yet
                return PrinterStatus("unknown", "the printer is being identified (no answer to GS I yet)")
            return st
        online = getattr(self.printer, "online", None)
        if online is not None and self.status.printable and time.monotonic() - self._full_at < self.poll_s:
            if online() is True:
                return self.status
        return self._check("no")

    def _check(self, maintain: str = "no") -> PrinterStatus:
        self._full_at = time.monotonic()
        st = self.printer.status(maintain=maintain)
        if st.state != self.status.state:
            log.info("printer %s: %s -> %s %s", self.name, self.status.state, st.state, st.detail)
            self.status_since = self.clock()
        self.status = st
        try:
            self.on_status(self.name, st)
        except Exception:  # noqa: BLE001 - alerting must never break a print job
            log.exception("printer %s: status handler failed", self.name)
        return st

    def _ok_to_print(self, st: PrinterStatus) -> bool:
        return st.printable or (not self.printer.queryable and st.state == "unknown")

    def ready(self) -> bool:
        """Idle with a printer that was ready at the last look and is settled (no probe due before a job),
        and nothing armed for it yet: a new order's jobs may be armed (at most one order's wait to be
        sent; a crash marks no more 补打)."""
        return (self.idle and self._ok_to_print(self.status) and getattr(self.printer, "settled", True)
                and self._thread is not None and not self._stop.is_set() and not self.journal.armed(self.name))

    def _unarm(self, *ids: int) -> None:
        try:
            self.journal.unarm(self.name, ids, now=self.clock())
        except JournalError as e:  # closed: a crash-like stop, those print marked 补打
            log.warning("printer %s: cannot un-arm: %s", self.name, e)

    def _event(self, job: Job) -> OrderEvent:
        """The job's event, parsed once for all of its tickets (the receipt and the card share it)."""
        seq, ev = self._parsed
        if seq != job.event_seq or ev is None:
            ev = parse_stored(job.payload, self.parsed)
            self._parsed = (job.event_seq, ev)
        return ev

    def _render(self, job: Job) -> tuple[bytes, float]:
        """The job's bytes, and the paper it will use (mm)."""
        out = self.output  # one layout for the whole job (apply() may swap it meanwhile)
        columns, render, qr, cut, charset = ((out.columns, out.render, out.qr, out.cut, out.charset) if out else
                                             (self.columns, self.render_mode, self.qr_mode, self.cut, self.charset))
        if job.type == "agent.reprint":  # a reprint asked for by a person: the order's own tickets, marked
            doc = self.renderer.render(job.document, self._event(job), columns=columns, reprint=True)
        elif job.type.startswith("agent."):  # test page, prep reminder, unshipped summary
            ctx = {**context_from(job.payload), "printer": {**self.describe, "output": out.as_dict() if out else None}}
            doc = self.renderer.render_named(job.document, ctx, columns=columns)
        else:
            doc = self.renderer.render(job.document, self._event(job), columns=columns, reprint=job.reprint)
        data = encode(doc, render, qr, cut=cut, charset=charset)
        return data, paper_mm(doc, cut)

    def _attempt(self, job: Job) -> bool:
        """One attempt at a claimed job; False means 'wait before the next attempt'."""
        back_to_back = self.status.printable and time.monotonic() - self._ok_after_at < BACK_TO_BACK_S
        self._ok_after_at = float("-inf")  # one check after a job stands for the check before one job at most
        if not self._ok_to_print(self.status if back_to_back else self._quick_check(before=True)):
            self._unarm()  # nothing of them was sent: a crash during the spell must not mark them 补打
            return False
        if job.printer != self.name:
            log.warning("printer %s: taking over %s of %s (faulted)", self.name, job.document, job.printer)
        if not (job.state == "printing" and self.journal.take_armed(job.id)):
            limit = min(self.max_attempts, MAX_UNCERTAIN) if self.max_attempts else MAX_UNCERTAIN
            job = self.journal.begin_attempt(job.id, now=self.clock(), printer=self.name,
                                             siblings=tuple({job.printer, self.name}), ahead=ARM_AHEAD,
                                             max_uncertain=limit, on_done=self.on_done)
            if job is None:  # finished meanwhile (by another printer)
                return True
            if job.state == "failed":
                log.error("printer %s: job %s of %s not sent again: may have printed %d times already",
                          self.name, job.id, job.event_id, job.attempts)
                try:
                    self.on_uncertain(job)
                except Exception:  # noqa: BLE001 - alerting must never break the print loop
                    log.exception("printer %s: uncertain-job handler failed", self.name)
                return True
        try:
            data, mm = self._render(job)
        except Exception as e:  # noqa: BLE001 - a document that cannot render fails its job, never the agent
            log.exception("printer %s: cannot render %s for %s", self.name, job.document, job.event_id)
            self._finish(job, "failed", f"render error: {e}")
            return True
        self.current = job
        t0 = time.monotonic()
        try:
            self.printer.send(data, paper_mm=mm)
        except PrinterIOError as e:  # bytes may have left: the next attempt is a reprint
            log.warning("printer %s: job %s interrupted: %s", self.name, job.id, e)
            self.journal.note_error(job.id, str(e), now=self.clock())
            self._check()
            return False
        except PrinterError as e:  # nothing left: back to queued, no reprint implied
            log.warning("printer %s: job %s not sent: %s", self.name, job.id, e)
            self._unarm(job.id)
            self._check()
            return False
        except Exception:  # a driver failing in its own way: our drivers raise PrinterIOError once a byte left,
            self._unarm(job.id)  # so this one sent nothing: back to queued; the fault itself is raised by _run
            raise
        finally:
            self.current = None
        after = self._quick_check()
        if after.printable:
            self._ok_after_at = time.monotonic()
        if not self._ok_to_print(after):
            log.warning("printer %s: %s after job %s; it will be reprinted", self.name, after.state, job.id)
            self.journal.note_error(job.id, f"printer {after.state} after sending", now=self.clock())
            return False
        if getattr(self.printer, "confirm", False):  # the printer's own word that it printed: its speed
            took = time.monotonic() - t0
            self.print_s = took if self.print_s is None else 0.8 * self.print_s + 0.2 * took
        self.last_print_at = self.clock()
        self._fault_logged = ""  # printing works: the same error later is news again
        self.paper_mm += mm
        self.journal.add_paper(self.name, mm, now=self.clock())
        self._finish(job, "printed", None)
        try:
            self.on_printed(self.name, mm, job)
        except Exception:  # noqa: BLE001
            log.exception("printer %s: printed handler failed", self.name)
        return True

    def _finish(self, job: Job, state: str, error: Optional[str]) -> None:
        self._finished.add(job.event_seq)
        self.journal.finish_job(job.id, state, error, printer=self.name, done=self.on_done, now=self.clock())


# -- the printers of a config (drivers built from it)
def printer_settings(cfg: Config, index: int) -> dict:
    p = cfg.printers[index]
    settings = p.model_dump(exclude={"name", "connection", "paper_width_mm", "role", "render", "qr", "cut", "profile",
                                     "charset", "paper_roll_m"})
    if p.connection in ("file", "virtual"):
        settings.pop("confirm", None)
    if p.connection == "virtual":
        settings["spool_dir"] = p.spool_dir or str(Path(cfg.state_dir) / "spool" / p.name)
        settings["columns"] = p.columns
    return settings


def build_printers(cfg: Config) -> dict[str, Printer]:
    return {p.name: make_printer(p.connection, p.name, **printer_settings(cfg, i)) for i, p in enumerate(cfg.printers)}
