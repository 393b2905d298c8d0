"""One print worker per printer: FIFO from the journal, never on paho's thread.

A job counts as printed only when the printer was printable before *and*
after it. A job whose attempt may have reached paper (it was ``printing`` when
the agent stopped, or the printer faulted during it) is printed again marked
补打 (reprint), so a clerk never mistakes it for a second order.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from drivers.escpos_proto import PrinterStatus
from drivers.printers import Printer, PrinterError, PrinterIOError

from .journal import EventDone, Job, Journal, JournalError
from .messages import OrderEvent, parse_stored
from .preview import encode
from .timers import context_from
from .tickets import TicketRenderer

log = logging.getLogger(__name__)

# With a queue (a burst, or the end of a paper-out spell), one durable commit also marks this many
# jobs queued behind the current event. Bytes written per order fall; the price: after a crash in
# such a spell, up to this many tickets that never printed come out marked 补打.
ARM_AHEAD = 8


class Inflight:
    """Jobs being attempted right now, shared by all workers: a job is never on two printers at once.

    Also the *armed* jobs: stored as ``printing`` by this process (at intake, or with the first job of
    their event) although no byte of theirs has been sent yet, so their attempt needs no commit of
    its own. After a restart nothing is armed: a ``printing`` job is then an interrupted attempt and
    prints again marked 补打.
    """

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self._armed: dict[int, str] = {}  # job id -> the printer it was armed for
        self._lock = threading.Lock()

    def arm(self, job_ids, printer: str) -> None:  # noqa: ANN001 - any iterable of ids
        with self._lock:
            for i in job_ids:
                self._armed[i] = printer

    def armed_for(self, job_id: int) -> Optional[str]:
        with self._lock:
            return self._armed.get(job_id)

    def armed_ids(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(self._armed)

    def disarm(self, job_id: int) -> None:
        with self._lock:
            self._armed.pop(job_id, None)

    def disarm_except(self, printers) -> tuple[int, ...]:  # noqa: ANN001 - any collection of names
        """Forget the jobs armed for printers not in ``printers``; returns their ids."""
        with self._lock:
            gone = tuple(i for i, p in self._armed.items() if p not in printers)
            for i in gone:
                del self._armed[i]
            return gone

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
        journal: Journal,
        renderer: TicketRenderer,
        on_done: Callable[[EventDone], None],
        on_status: Callable[[str, PrinterStatus], None] = lambda name, st: None,
        retry_s: float = 2.0,
        poll_s: float = 5.0,
        max_attempts: int = 0,
        clock: Callable[[], float] = time.time,
        takeover: Callable[[], tuple[str, ...]] = lambda: (),
        inflight: Optional["Inflight"] = None,
    ) -> None:
        self.takeover = takeover  # a backup printer: the primaries whose jobs it may print now
        self.inflight = inflight or Inflight()
        self.printer = printer
        self.name = printer.name
        self.columns = columns
        self.render_mode = render_mode
        self.describe = describe or {"name": printer.name, "connection": "", "paper_width_mm": 80}
        self.qr_mode = qr_mode
        self.journal = journal
        self.renderer = renderer
        self.on_done = on_done
        self.on_status = on_status
        self.retry_s = retry_s
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self.clock = clock
        self.status: PrinterStatus = PrinterStatus("unknown", "not checked yet")
        self.status_since = clock()
        self._full_at = float("-inf")  # time.monotonic() of the last full status query
        self.last_print_at: Optional[float] = None
        self.heartbeat = time.monotonic()
        self.idle = False  # nothing to print at the last look (intake may then arm a new order's jobs)
        self._wake = threading.Event()
        self._pre_lock = threading.Lock()
        self._pre_todo: list[tuple[str, str, OrderEvent]] = []  # (event id, document, event) to render ahead
        self._pre_done: dict[tuple[str, str], tuple[int, bytes]] = {}  # -> (id(renderer), bytes)
        self._pre_checked: Optional[tuple[float, PrinterStatus]] = None  # (monotonic, status) checked ahead
        self._first_sent = threading.Event()  # the ticket rendered ahead went out (or will not)
        self._handoff: Optional[Job] = None  # an armed job intake just committed: no need to read it back
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"print-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        self.printer.close()

    def wake(self) -> None:
        self._wake.set()

    def prerender(self, event_id: str, document: str, ev: OrderEvent) -> None:
        """Render a new order's first ticket now, while intake is still committing it: the job then
        finds its bytes ready. Only worth it (and only asked) while this worker is idle; a render
        nobody uses is dropped after the next few."""
        with self._pre_lock:
            self._pre_todo.append((event_id, document, ev))
        self._first_sent.clear()
        self._wake.set()

    def handoff(self, job: Job) -> None:
        """Intake, under the journal lock right after committing ``job`` armed for this idle printer."""
        self._handoff = job

    def wait_first_sent(self, timeout: float) -> bool:
        """Intake waits (briefly) for the ticket rendered ahead to go out before its own bookkeeping:
        on a small machine the receipt comes first."""
        return self._first_sent.wait(timeout)

    def _prerender_pending(self) -> None:
        with self._pre_lock:
            todo, self._pre_todo = self._pre_todo, []
        if todo:  # the status check before the job, done while intake still commits
            self._pre_checked = (time.monotonic(), self._quick_check())
        for event_id, document, ev in todo:
            try:
                doc = self.renderer.render(document, ev, columns=self.columns, reprint=False)
                data = encode(doc, self.render_mode, self.qr_mode)
            except Exception:  # noqa: BLE001 - the job renders (and reports) it again
                continue
            with self._pre_lock:
                self._pre_done[(event_id, document)] = (id(self.renderer), data)
                while len(self._pre_done) > 8:
                    del self._pre_done[next(iter(self._pre_done))]

    def _prerendered(self, job: Job) -> Optional[bytes]:
        with self._pre_lock:
            hit = self._pre_done.pop((job.event_id, job.document), None)
        return hit[1] if hit and hit[0] == id(self.renderer) else None

    # -- loop
    def _run(self) -> None:
        try:  # connect and learn the printer's state before the first order needs it
            self._check()
        except Exception:  # noqa: BLE001
            log.exception("printer %s: first status check failed", self.name)
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                if self._pre_todo:
                    self._prerender_pending()
                with self.journal.lock:  # intake hands an armed job over under this lock
                    job, self._handoff = self._handoff, None
                    if job is None:
                        job = self.journal.next_job(self.name, self.takeover(), skip=self.inflight.ids())
                self.idle = job is None
                if job is None:
                    self._idle()
                    continue
                if not self.inflight.claim(job.id):
                    continue
                try:
                    ok = self._process(job)
                finally:
                    self.inflight.release(job.id)
                if not ok:
                    self._sleep(self.retry_s)
            except JournalError as e:
                log.error("printer %s: journal error: %s", self.name, e)
                self._sleep(self.retry_s)
            except Exception:  # noqa: BLE001 - a print thread must not die
                log.exception("printer %s: unexpected error", self.name)
                self._sleep(self.retry_s)

    def _sleep(self, seconds: float) -> None:
        self.heartbeat = time.monotonic()  # waiting for paper is not being stuck
        self._stop.wait(seconds)

    def _idle(self) -> None:
        """Nothing to print: poll the printer's status every ``poll_s`` until woken."""
        self.heartbeat = time.monotonic()
        if self.journal.lazy_events >= 2:
            # the end of a burst: write its outcomes now, so a crash in the next seconds does not
            # reprint them (a single order's outcome rides on the next order's commit instead)
            try:
                self.journal.flush()
            except JournalError as e:
                log.warning("printer %s: cannot write outcomes: %s", self.name, e)
        if self._wake.wait(self.poll_s):
            self._wake.clear()
            return
        if not self._stop.is_set():
            self._check()

    def _quick_check(self) -> PrinterStatus:
        """Before and after a job: one ``DLE EOT 1`` round trip while the last full status is fresh
        (under ``poll_s`` old) and printable; the full status otherwise, and whenever the printer
        does not say it is online (cover open, paper end and errors all put it offline)."""
        online = getattr(self.printer, "online", None)
        if online is not None and self.status.printable and time.monotonic() - self._full_at < self.poll_s:
            if online() is True:
                return self.status
        return self._check()

    def _check(self) -> PrinterStatus:
        self._full_at = time.monotonic()
        st = self.printer.status()
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
        """Idle with a printer that was ready at the last look: a new order's jobs may be armed."""
        return self.idle and self._ok_to_print(self.status) and self._thread is not None and not self._stop.is_set()

    def _render(self, job: Job) -> bytes:
        if not job.reprint and not job.type.startswith("agent."):
            data = self._prerendered(job)
            if data is not None:
                return data
        if job.type == "agent.reprint":  # a reprint asked for by a person: the order's own tickets, marked
            doc = self.renderer.render(job.document, parse_stored(job.payload), columns=self.columns, reprint=True)
            return encode(doc, self.render_mode, self.qr_mode)
        if job.type.startswith("agent."):  # test page, prep reminder, unshipped summary
            ctx = {**context_from(job.payload), "printer": self.describe}
            doc = self.renderer.render_named(job.document, ctx, columns=self.columns)
            return encode(doc, self.render_mode, self.qr_mode)
        ev = parse_stored(job.payload)
        doc = self.renderer.render(job.document, ev, columns=self.columns, reprint=job.reprint)
        return encode(doc, self.render_mode, self.qr_mode)

    def _process(self, job: Job) -> bool:
        """One attempt at a job; False means 'wait before the next attempt'."""
        try:
            return self._attempt(job)
        finally:
            self._first_sent.set()

    def _attempt(self, job: Job) -> bool:
        # armed: stored as 'printing' by this process for this printer, nothing of it sent yet
        armed = self.inflight.armed_for(job.id) == self.name == job.printer and job.state == "printing"
        if self.max_attempts and job.attempts - armed >= self.max_attempts:
            self._finish(job, "failed", f"gave up after {job.attempts - armed} attempts: {self.status.state} {self.status.detail}".strip())
            return True
        pre, self._pre_checked = self._pre_checked, None
        before = pre[1] if pre and armed and time.monotonic() - pre[0] < 0.05 else self._quick_check()
        if not self._ok_to_print(before):
            return False
        if job.printer != self.name:
            log.warning("printer %s: taking over %s of %s (faulted)", self.name, job.document, job.printer)
        if not armed:
            # one durable commit for the whole event: its other tickets on this printer print next
            job = self.journal.begin_attempt(job.id, now=self.clock(), printer=self.name,
                                             armed=self.inflight.armed_ids(), siblings=tuple({job.printer, self.name}),
                                             ahead=ARM_AHEAD)
            self.inflight.arm(job.siblings, self.name)
        self.inflight.disarm(job.id)  # from here on, 'printing' means bytes may have left
        try:
            data = self._render(job)
        except Exception as e:  # noqa: BLE001 - a document that cannot render fails its job, never the agent
            log.exception("printer %s: cannot render %s for %s", self.name, job.document, job.event_id)
            self._finish(job, "failed", f"render error: {e}")
            return True
        try:
            self.printer.send(data, on_written=self._first_sent.set)
        except PrinterIOError as e:
            log.warning("printer %s: job %s interrupted: %s", self.name, job.id, e)
            self.journal.note_error(job.id, str(e), now=self.clock())
            self._check()
            return False
        except PrinterError as e:
            log.warning("printer %s: job %s not sent: %s", self.name, job.id, e)
            self.journal.attempt_not_sent(job.id, str(e), now=self.clock())  # its armed siblings stay armed
            self._check()
            return False
        after = self._quick_check()
        if not self._ok_to_print(after):
            log.warning("printer %s: %s after job %s; it will be reprinted", self.name, after.state, job.id)
            self.journal.note_error(job.id, f"printer {after.state} after sending", now=self.clock())
            return False
        self.last_print_at = self.clock()
        self._finish(job, "printed", None)
        return True

    def _finish(self, job: Job, state: str, error: Optional[str]) -> None:
        self.inflight.disarm(job.id)  # (a job given up on before any attempt was still armed)
        done = self.journal.finish_job(job.id, state, error, now=self.clock())
        if done is not None:
            self.on_done(done)
