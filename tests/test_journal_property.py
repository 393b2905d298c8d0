"""A stateful property test of the order path: intake, the journal's writer, two print workers (a
primary and a backup that takes over while the primary is faulted), failing commits (a lost
transaction as SQLite reports IOERR, a full disk through ``max_page_count``), clean stops and
crashes (the journal reopened without closing). The journal, its SQLite file, OrderIntake and
PrintWorker are the real ones; only the printers are stand-ins that keep the paper they "print".

Invariants, checked after every step:
  A  every acknowledged event is stored (read on a fresh connection: committed state);
  B  no job is sent without a durable ``printing`` mark (checked at the moment of sending);
  C  no job is on paper twice without 补打;
  D  no first copy is marked 补打 unless a crash found the job ``printing``;
  E  no event is both unacknowledged and forgotten: after the writer settles, every delivered
     event was acknowledged or redelivery was asked for.

``PROPERTY_EXAMPLES`` x ``PROPERTY_STEPS``: a short run in the suite, 10 000 steps in the drills.
"""

import json
import os
import sqlite3

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import agent.journal as journal_mod
from agent.intake import OrderIntake
from agent.journal import Journal, JournalError
from agent.printing import Inflight, PrintWorker
from agent.tickets import TicketRenderer
from conftest import lose_transaction, order
from drivers.escpos_proto import PrinterStatus
from drivers.printers import PrinterError, PrinterIOError

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "100"))
STEPS = int(os.environ.get("PROPERTY_STEPS", "50"))
RENDERER = TicketRenderer(store_name="店", store_phone="1")


class Paper:
    """A printer stand-in: ready or faulted, and a send that works, is refused, or drops mid-job."""

    queryable = True

    def __init__(self, name, machine):
        self.name, self.m = name, machine
        self.state = "ready"
        self.send_mode = "ok"
        self.worker = None

    def status(self, maintain="idle"):
        return PrinterStatus(self.state, "")

    def online(self):
        return self.state == "ready"

    def send(self, data, on_written=lambda: None, **_):
        job = self.worker.current
        if self.send_mode == "refuse":
            raise PrinterError("connection refused")
        committed = self.m.committed_state(job.id)
        assert committed == "printing", f"B: job {job.id} sent while its committed state is {committed}"
        self.m.paper.append((job.id, job.reprint))
        if self.send_mode == "drop":
            raise PrinterIOError("connection reset mid-job")

    def close(self):
        pass


class OrderPath(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        import tempfile
        self._lazy_s, journal_mod.LAZY_S = journal_mod.LAZY_S, 3600.0  # lazy writes commit only with a batch: no timing
        self.dir = tempfile.mkdtemp(prefix="prop-journal-")
        self.path = os.path.join(self.dir, "j.sqlite3")
        self.printers = {"counter": Paper("counter", self), "backup": Paper("backup", self)}
        self.paper: list[tuple[int, bool]] = []
        self.delivered: set[str] = set()  # events the broker has handed over at least once
        self.acked: set[str] = set()
        self.redeliver: set[str] = set()  # events whose store failed: redelivery was asked for
        self.unacked: list[int] = []  # the broker's queue of unacknowledged events (redelivered)
        self.next_event = 0
        self.printing_at_crash: set[int] = set()
        self.full = False
        self._open()

    # -- plumbing
    def _open(self):
        self.j = Journal(self.path)
        self.inflight = Inflight()
        m = self

        class Intake(OrderIntake):
            def _stored(self, ev, ack, docs, intake, error):
                if error is not None:
                    m.redeliver.add(ev.id)
                super()._stored(ev, ack, docs, intake, error)

        self.intake = Intake(self.j, max_payload_bytes=1 << 20,
                             plan=lambda t: [("receipt", "counter"), ("warm_tip", "counter")],
                             publish_result=lambda r: None, wake=lambda: None, on_store_failure=lambda e: None,
                             ready=lambda p: self.workers[p].ready())
        self.workers = {}
        for name, paper in self.printers.items():
            takeover = (lambda: ("counter",) if self.printers["counter"].state != "ready" else ()) if name == "backup" else (lambda: ())
            w = PrintWorker(paper, columns=32, journal=self.j, renderer=RENDERER, on_done=lambda d: None,
                            poll_s=0.0, retry_s=0.0, takeover=takeover, inflight=self.inflight)
            w._thread = object()  # driven by the rules, not by a thread (ready() wants a started worker)
            paper.worker = w
            self.workers[name] = w
        if self.full:
            self._set_full(True)

    def committed_state(self, job_id):
        db = sqlite3.connect(self.path)
        try:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            return row[0] if row else None
        finally:
            db.close()

    def _settle(self):
        for _ in range(3):
            try:
                self.j.flush()
                return
            except JournalError:
                pass

    def _set_full(self, on):
        def fn(db):
            n = db.execute("PRAGMA page_count").fetchone()[0] if on else 1 << 30
            db.execute(f"PRAGMA max_page_count={n}")
        self.j.submit(fn, raw=True).result()

    # -- the broker
    def _deliver(self, n):
        ev = order(n, "p")
        self.delivered.add(ev["id"])

        def ack(eid=ev["id"], n=n):
            self.acked.add(eid)
            if n in self.unacked:
                self.unacked.remove(n)
        if n not in self.unacked:
            self.unacked.append(n)
        self.intake.handle(json.dumps(ev, ensure_ascii=False).encode(), ack)

    @rule()
    def new_order(self):
        self._deliver(self.next_event)
        self.next_event += 1
        self._settle()

    @rule(n=st.integers(2, 6), fail_at=st.one_of(st.none(), st.integers(0, 6)))
    def burst(self, n, fail_at):
        """Several events in one batch (group commit); maybe a write in it that loses the transaction."""
        gate = __import__("threading").Event()
        started = __import__("threading").Event()
        self.j.submit(lambda db: (started.set(), gate.wait(10)) and None)
        started.wait(5)
        for i in range(n):
            if fail_at == i:
                self.j.submit(lose_transaction)
            self._deliver(self.next_event)
            self.next_event += 1
        gate.set()
        self._settle()

    @rule(k=st.integers(0, 1000), acked=st.booleans())
    def broker_resends(self, k, acked):
        """An unacknowledged event redelivered, or an acknowledged one again (its PUBACK was lost):
        answered with its status, never printed again."""
        pool = sorted(int(e[len("evt-p"):]) for e in self.acked) if acked else self.unacked
        if pool:
            self._deliver(pool[k % len(pool)])
            self._settle()

    # -- the printers
    @rule(name=st.sampled_from(["counter", "counter", "backup"]), n=st.integers(1, 4))
    def print_steps(self, name, n):
        for _ in range(n):
            try:
                self.workers[name].step()
            except JournalError:  # a full disk: the worker's loop waits and tries again
                pass
            self.j.wait_quiet()  # outcomes stay pending (lazy): a crash now loses them, as it would

    @rule(name=st.sampled_from(["counter", "backup"]), state=st.sampled_from(["ready", "ready", "paper_out", "cover_open"]),
          mode=st.sampled_from(["ok", "ok", "ok", "refuse", "drop"]))
    def printer_changes(self, name, state, mode):
        self.printers[name].state = state
        self.printers[name].send_mode = mode

    # -- the disk
    @rule(name=st.sampled_from(["counter", "backup"]), other=st.sampled_from(["counter", "backup"]),
          what=st.sampled_from(["fail", "unarm", "both"]))
    def overlap(self, name, other, what):
        """A worker's attempt submitted while a batch is being applied, with another worker's un-arm
        and/or a write that loses the transaction in the same batch (the review's interleavings)."""
        import threading
        gate, started = threading.Event(), threading.Event()
        self.j.submit(lambda db: (started.set(), gate.wait(10)) and None)
        started.wait(5)
        queued = len(self.j._writer._ops)
        t = threading.Thread(target=self._step_quietly, args=(name,))
        t.start()
        while t.is_alive() and len(self.j._writer._ops) == queued:  # until its attempt is queued (or it needed none)
            t.join(0.001)
        if what in ("unarm", "both"):
            self.workers[other]._unarm()
        if what in ("fail", "both"):
            self.j.submit(lose_transaction)
        gate.set()
        t.join(10)
        self._settle()

    def _step_quietly(self, name):
        try:
            self.workers[name].step()
        except JournalError:
            pass

    @rule(what=st.sampled_from(["commit", "fail", "full", "space", "space"]))
    def disk(self, what):
        """A commit (carrying the lazy writes), a write that loses the transaction, the card full or not."""
        if what == "fail":
            self.j.submit(lose_transaction)
        elif what in ("full", "space"):
            self.full = what == "full"
            self._set_full(self.full)
        self._settle()

    # -- the process
    @rule()
    def clean_stop(self):
        self._settle()
        for w in self.workers.values():
            w._unarm()
        if not self.j.close():  # its last commit failed (a full disk): for the journal, a crash
            self.printing_at_crash |= {r[0] for r in self._db_rows("SELECT id FROM jobs WHERE state='printing'")}
        self._open()

    @rule()
    def crash(self):
        self.j.crash()
        self.printing_at_crash |= {r[0] for r in self._db_rows("SELECT id FROM jobs WHERE state='printing'")}
        self._open()

    def _db_rows(self, sql):
        db = sqlite3.connect(self.path)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    # -- invariants
    @invariant()
    def acked_events_are_stored(self):
        stored = {r[0] for r in self._db_rows("SELECT event_id FROM events")}
        assert self.acked <= stored, f"A: acknowledged but not stored: {self.acked - stored}"

    @invariant()
    def no_unmarked_double(self):
        seen: dict[int, int] = {}
        for job_id, reprint in self.paper:
            if not reprint:
                seen[job_id] = seen.get(job_id, 0) + 1
        assert all(n <= 1 for n in seen.values()), f"C: printed twice unmarked: {seen}"

    @invariant()
    def no_false_reprint(self):
        first: dict[int, bool] = {}
        for job_id, reprint in self.paper:
            first.setdefault(job_id, reprint)
        false = [i for i, marked in first.items() if marked and i not in self.printing_at_crash]
        assert not false, f"D: first copies marked 补打 without a crash: {false}"

    @invariant()
    def nothing_unacked_and_forgotten(self):
        self._settle()
        forgotten = self.delivered - self.acked - self.redeliver
        assert not forgotten, f"E: neither acknowledged nor redelivery asked for: {forgotten}"

    def teardown(self):
        journal_mod.LAZY_S = self._lazy_s
        try:
            self.j.close()
        except Exception:  # noqa: BLE001
            pass


OrderPath.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                       suppress_health_check=list(HealthCheck))
test_order_path = OrderPath.TestCase


@pytest.mark.slow
def test_order_path_10000_steps():
    """The drill's run: 10 000 steps in all."""
    OrderPath.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None,
                                           suppress_health_check=list(HealthCheck))
    OrderPath.TestCase().runTest()
