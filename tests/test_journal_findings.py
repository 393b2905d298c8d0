"""The review's findings on the journal (issue 13), one test each, with a real SQLite file.

Each test names the invariant it proves:
  A: acknowledged => committed          B: sent => a durable ``printing`` mark first
  C: no unmarked double                 D: no false 补打 (a first copy is never marked)
  E: no event both unacknowledged and forgotten (stored, or redelivery asked for)
"""

import json
import os
import socket
import sqlite3
import threading
import time

import pytest

from agent.intake import OrderIntake
from agent.journal import SCHEMA_VERSION, Journal, JournalError
from agent.printing import PrintWorker
from agent.tickets import TicketRenderer
from conftest import lose_transaction, order, set_max_pages
from drivers.escpos_proto import PrinterStatus
from drivers.printers import make_printer

DOCS = [("receipt", "counter"), ("warm_tip", "counter")]


def payload(i, tag="f"):
    return json.dumps(order(i, tag), ensure_ascii=False).encode()


class Hq:
    """What the broker sees of one intake: acks, results, redelivery requests."""

    def __init__(self, journal, fail_ack=()):
        self.acked, self.results, self.redeliver = [], [], []
        self.fail_ack = set(fail_ack)
        self.intake = OrderIntake(journal, max_payload_bytes=1 << 20, plan=lambda t: list(DOCS),
                                  publish_result=self.results.append, wake=lambda: None,
                                  on_store_failure=self.redeliver.append)

    def send(self, i, tag="f"):
        def ack():
            if i in self.fail_ack:
                raise RuntimeError("socket gone")
            self.acked.append(i)
        self.intake.handle(payload(i, tag), ack)


def hold_writer(j):
    """Keep the writer busy so what follows is queued into one batch; set() the event to let it go."""
    gate, started = threading.Event(), threading.Event()
    j.submit(lambda db: (started.set(), gate.wait(10)) and None)
    assert started.wait(5)
    return gate


def settle(j):
    """Wait until everything queued so far has been through the writer (a failed batch included)."""
    for _ in range(3):
        try:
            j.flush()
            return
        except JournalError:
            pass


@pytest.fixture
def j(tmp_path):
    jr = Journal(tmp_path / "j.sqlite3")
    yield jr
    jr.close()


def stored_ids(path):
    db = sqlite3.connect(str(path))
    try:
        return {r[0] for r in db.execute("SELECT event_id FROM events")}
    finally:
        db.close()


# 1. a batched order dropped without redelivery (A, E)
def test_1_a_lost_transaction_fails_every_event_in_the_batch_and_asks_for_redelivery(j, tmp_path):
    hq = Hq(j)
    gate = hold_writer(j)
    for i in range(3):
        hq.send(i)
    j.submit(lose_transaction)  # another thread's write in the same batch (an alert, a timer)
    for i in range(3, 5):
        hq.send(i)
    gate.set()
    settle(j)
    assert hq.acked == [] and hq.results == []  # nothing acknowledged, nothing answered
    assert len(hq.redeliver) == 5  # each of them asked the broker to send it again, and raised the alert
    assert stored_ids(tmp_path / "j.sqlite3") == set()
    for i in range(5):  # the broker redelivers: each stored and acknowledged exactly once
        hq.send(i)
    j.flush()
    assert sorted(hq.acked) == list(range(5)) and [r.status for r in hq.results] == ["queued"] * 5


def test_1_a_full_disk_in_the_batch_fails_it_and_nothing_is_acked(j, tmp_path):
    hq = Hq(j)
    set_max_pages(j)
    gate = hold_writer(j)
    for i in range(4):
        hq.send(i)
    j.submit(lambda db: db.execute("INSERT INTO alerts VALUES ('x', 1, 0, ?)", (os.urandom(200_000),)) and None)
    gate.set()
    settle(j)
    assert hq.acked == [] and len(hq.redeliver) == 4
    acked_but_missing = {payload_id for payload_id in hq.acked} - {int(e.split("-")[-1]) for e in stored_ids(tmp_path / "j.sqlite3")}
    assert not acked_but_missing


# 2. an acknowledgement for an order that is not stored (A)
def test_2_failing_reads_never_touch_what_intake_commits(j, tmp_path):
    hq = Hq(j)
    stop = threading.Event()

    def reader():  # health, timers, next_job: reads on their own connection, some of them failing
        while not stop.is_set():
            for sql in ("SELECT COUNT(*) FROM events", "SELECT * FROM no_such_table"):
                try:
                    j._read(sql)
                except JournalError:
                    pass

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(100):
        hq.send(i)
    j.flush()
    stop.set()
    for t in threads:
        t.join()
    j.crash()  # whatever is only in memory is gone
    stored = stored_ids(tmp_path / "j.sqlite3")
    assert len(hq.acked) == 100 and all(order(i, "f")["id"] in stored for i in hq.acked)


# 3. a finished job printed again unmarked (C)
def test_3_a_finished_job_never_goes_back_to_printing(j):
    j.record_event("e1", "o1", "order.created", b"{}", [("receipt", "counter")])
    job = j.next_job("counter")  # a stale read, e.g. a backup's handoff after a takeover
    a = j.begin_attempt(job.id, printer="counter")
    j.finish_job(a.id, "printed")
    j.flush()
    assert j.begin_attempt(job.id, printer="backup") is None
    assert j._read("SELECT state, reprint, attempts FROM jobs") == [("printed", 0, 1)]


# 4. a takeover moves the primary's queue to the backup for good
def test_4_a_takeover_never_rewrites_the_queue(j):
    for n in range(3):
        j.record_event(f"e{n}", f"o{n}", "order.created", b"{}", [("receipt", "counter")])
    first = j.next_job("backup", ("counter",))
    a = j.begin_attempt(first.id, printer="backup", siblings=("counter", "backup"), ahead=8)
    outcomes = []
    j.finish_job(a.id, "printed", printer="backup", done=outcomes.append)
    j.unarm("backup")  # the backup faults before it sends the jobs it armed
    j.flush()
    assert outcomes[0].printer == "backup"  # the result names the printer that printed it
    assert {r[0] for r in j._read("SELECT printer FROM jobs")} == {"counter"}  # the queue stays the primary's
    nxt = j.next_job("counter")  # the recovered primary takes its queue back, first copies
    assert nxt.event_id == "e1" and nxt.state == "queued" and not j.begin_attempt(nxt.id, printer="counter").reprint


# 5. first copies marked 补打 on every restart (D)
def test_5_a_clean_stop_unarms_everything_armed(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    j.record_event("e1", "o1", "order.created", b"{}", DOCS, arm_for="counter")
    for n in range(2, 6):
        j.record_event(f"e{n}", f"o{n}", "order.created", b"{}", DOCS)
    a = j.begin_attempt(j.next_job("counter", skip=j.armed()).id, printer="counter", siblings=("counter",), ahead=8)
    assert len(j.armed()) == 2 + 1 + 6  # armed at intake, the sibling, the ones queued behind
    j.close()
    j = Journal(tmp_path / "j.sqlite3")
    states = dict(j._read("SELECT id, state FROM jobs"))
    assert [i for i, s in states.items() if s == "printing"] == [a.id]  # only the one really begun
    reprints = [j.begin_attempt(x.id).reprint for x in j.open_jobs()]
    assert reprints == [False, False, True] + [False] * 7  # a.id (may have printed) is the only 补打
    j.close()


def test_5_a_printer_that_is_not_ready_unarms_its_jobs(j, vprinter):
    printer = make_printer("network", "counter", host="127.0.0.1", port=vprinter.port, timeout_s=1.0)
    w = PrintWorker(printer, columns=48, journal=j, renderer=TicketRenderer(store_name="店", store_phone="1"), on_done=lambda d: None, poll_s=0.5)
    try:
        r = j.record_event("e1", "o1", "order.created", payload(1), DOCS, arm_for="counter")
        vprinter.set_mode("paper_out")
        assert w.step() is False  # not ready: nothing sent
        j.flush()
        assert j.armed() == () and {x.state for x in j.open_jobs()} == {"queued"}
        vprinter.set_mode("ready")
        assert w.step() and w.step()
        j.flush()
        assert j.event_status("e1") == "printed" and vprinter.wait_jobs(2)
        assert not any("补打" in t for t in vprinter.texts()) and r.armed
    finally:
        printer.close()


def test_5_a_send_that_fails_before_any_byte_unarms(j, vprinter):
    printer = make_printer("network", "counter", host="127.0.0.1", port=vprinter.port, timeout_s=1.0)
    w = PrintWorker(printer, columns=48, journal=j, renderer=TicketRenderer(store_name="店", store_phone="1"), on_done=lambda d: None, poll_s=60)
    try:
        j.record_event("e1", "o1", "order.created", payload(1), DOCS, arm_for="counter")
        w.status = printer.status()  # ready at the last look
        w._full_at = float("inf")  # ... and fresh: no status query before the send
        printer.close()
        with socket.socket() as s:  # a port nobody listens on: the connection is refused, nothing left
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        w.printer = make_printer("network", "counter", host="127.0.0.1", port=closed_port, timeout_s=1.0)
        w.printer.online = lambda: True
        assert w.step() is False
        j.flush()
        assert {x.state for x in j.open_jobs()} == {"queued"} and j.armed() == ()
    finally:
        printer.close()


# 6. a power cut during the schema migration empties the journal (A)
V1 = """
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, order_id TEXT,
    type TEXT NOT NULL, status TEXT NOT NULL, received_at REAL NOT NULL, finished_at REAL, payload BLOB NOT NULL,
    error TEXT, reported INTEGER NOT NULL DEFAULT 0);
CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, event_seq INTEGER NOT NULL, document TEXT NOT NULL,
    printer TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, reprint INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, printed_at REAL, error TEXT);
CREATE TABLE alerts (id TEXT PRIMARY KEY, open INTEGER NOT NULL, updated_at REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE timers (key TEXT PRIMARY KEY, fired_at REAL NOT NULL);
CREATE TABLE rejected (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at REAL NOT NULL, sha256 TEXT NOT NULL,
    reason TEXT NOT NULL, size INTEGER NOT NULL, payload BLOB NOT NULL);
"""


def test_6_a_power_cut_at_any_point_of_the_migration_keeps_the_orders(tmp_path, monkeypatch):
    path = tmp_path / "j.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V1)
    db.execute("INSERT INTO events VALUES (5,'e5','o5','order.created','queued',3.0,NULL,?,NULL,0)", (b'{"b":2}',))
    db.execute("INSERT INTO jobs(event_seq, document, printer, state, created_at, updated_at) VALUES (5,'receipt','counter','queued',1,1)")
    db.close()

    def power_cut(*a, **k):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", power_cut)  # the last step of the migration never happens
    with pytest.raises((OSError, JournalError)):
        Journal(path)
    monkeypatch.undo()
    j = Journal(path)  # the next boot migrates again from the intact old file
    try:
        assert j._read("PRAGMA user_version")[0][0] == SCHEMA_VERSION
        assert [(x.event_id, x.state) for x in j.open_jobs()] == [("e5", "queued")]
    finally:
        j.close()


# 7. dedupe ends with the rows (C)
def test_7_dedupe_outlives_pruning(tmp_path):
    j = Journal(tmp_path / "j.sqlite3", dedupe_days=30)
    try:
        j.record_event("e1", "o1", "order.created", b"{}", [("receipt", "counter")], now=1000)
        a = j.begin_attempt(j.next_job("counter").id)
        j.finish_job(a.id, "printed")
        j.flush()
        assert j.prune(keep_days=1, max_bytes=10**9, now=1000 + 2 * 86400) == 1
        assert j.event_status("e1") is None  # the row is gone ...
        again = j.record_event("e1", "o1", "order.created", b"{}", [("receipt", "counter")], now=1000 + 3 * 86400)
        assert again.redelivered and again.status == "printed"  # ... its id is still known
        other = j.record_event("e2", "o1", "order.created", b"{}", [("receipt", "counter")], now=1000 + 3 * 86400)
        assert other.status == "duplicate" and "e1" in other.reason
        assert j.open_jobs() == []
        j.prune(keep_days=1, max_bytes=10**9, now=1000 + 40 * 86400)  # dedupe_days later: forgotten
        assert j._read("SELECT COUNT(*) FROM dedupe WHERE key IN ('e:e1', 'o:o1')") == [(0,)]
    finally:
        j.close()


# 8. one failing acknowledgement breaks the rest of the batch (A, E)
def test_8_a_failing_ack_touches_no_other_event(j):
    hq = Hq(j, fail_ack={1})
    gate = hold_writer(j)
    for i in range(3):
        hq.send(i)
    gate.set()
    j.flush()
    assert hq.acked == [0, 2]
    assert [r.status for r in hq.results] == ["queued"] * 3  # the committed order is never answered "rejected"
    assert all(r.status != "rejected" for r in hq.results)


# 10. a redelivered event answered "duplicate"
def test_10_a_redelivered_event_gets_its_current_status(j):
    hq = Hq(j)
    hq.send(1)
    j.flush()
    job = j.begin_attempt(j.next_job("counter").id)
    j.finish_job(job.id, "printed")
    j.begin_attempt(j.next_job("counter").id)
    j.flush()
    hq.send(1)  # its PUBACK was lost: the broker sends it again
    j.flush()
    assert hq.acked == [1, 1]
    first, again = hq.results
    assert (first.status, first.redelivered) == ("queued", False)
    assert (again.status, again.redelivered) == ("queued", True)  # still printing: its status now


def test_attempts_never_print_one_job_more_than_twice_unasked(j):
    """An attempt loop (no confirmation, a dropped connection) sends a job at most twice: the first
    copy and one 补打; then the job fails for a person to reprint (C)."""
    j.record_event("e1", "o1", "order.created", b"{}", [("receipt", "counter")])
    a = j.begin_attempt(j.next_job("counter").id)  # sent; the outcome is uncertain
    b = j.begin_attempt(a.id)
    assert (a.reprint, b.reprint, b.attempts) == (False, True, 2)
    outcomes = []
    c = j.begin_attempt(a.id, on_done=outcomes.append)
    assert c.state == "failed" and outcomes[0].status == "failed" and "reprint it by hand" in outcomes[0].error
    assert j.open_jobs() == []


# The independent review of the rewrite (interleavings the property test does not reach: an operation
# submitted while a batch is being applied).
def test_review_1_an_unarm_retried_after_a_lost_batch_never_undoes_a_later_attempt(j):
    """B, D, forward-only: the un-arm touches only what is still on its way back when it is applied."""
    job_id = j.record_event("e1", "o1", "order.created", b'{"x":1}', [("receipt", "P")], arm_for="P").armed[0]
    j.unarm("P")  # the printer is not ready (a lazy write)
    gate, started = threading.Event(), threading.Event()

    def lose_later(db):
        started.set()
        gate.wait(10)
        lose_transaction(db)

    j.submit(lose_later)  # the batch carrying the un-arm fails ...
    assert started.wait(5)
    assert not j.take_armed(job_id)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("job", j.begin_attempt(job_id, printer="P", siblings=("P",))))
    t.start()  # ... while the printer, ready again, asks for an attempt
    time.sleep(0.2)
    gate.set()
    t.join(10)
    job = out["job"]
    assert (job.state, job.reprint, job.attempts) == ("printing", False, 1)  # a first copy: nothing was sent
    settle(j)
    assert j._read("SELECT state FROM jobs") == [("printing",)]  # what is being sent stays printing
    j.finish_job(job_id, "printed", printer="P")
    settle(j)
    assert j._read("SELECT state, reprint FROM jobs") == [("printed", 0)] and j.next_job("P") is None


def test_review_1b_an_arming_is_takeable_only_after_its_commit(j):
    """B, C: a job armed by a batch that then fails was never marked printing: nobody may send it."""
    j.record_event("e0", "o0", "order.created", b"{}", [("receipt", "P")])
    sib = j.record_event("e1", "o1", "order.created", b"{}", [("receipt", "P")]).seq * 64
    gate, started = threading.Event(), threading.Event()
    j.submit(lambda db: (started.set(), gate.wait(10)) and None)
    assert started.wait(5)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", _try(lambda: j.begin_attempt(64, printer="B", siblings=("P", "B"), ahead=8))))
    t.start()
    time.sleep(0.1)
    seen = []

    def primary_tries_then_batch_fails(db):  # runs after the backup's attempt, in the same batch
        seen.append(j.take_armed(sib))  # the primary, which read the sibling earlier, tries to take it
        lose_transaction(db)  # ... and then the batch fails

    j.submit(primary_tries_then_batch_fails)
    gate.set()
    t.join(10)
    assert isinstance(out["r"], JournalError) and seen == [False] and j.armed() == ()
    assert j._read("SELECT state FROM jobs ORDER BY id") == [("queued",), ("queued",)]


def _try(fn):
    try:
        return fn()
    except JournalError as e:
        return e


def test_review_2_nothing_is_armed_after_a_clean_close_begins(tmp_path):
    """D: an arming still queued when close() starts is committed queued, or un-armed: never left printing."""
    j = Journal(tmp_path / "j.sqlite3")
    gate, started = threading.Event(), threading.Event()
    j.submit(lambda db: (started.set(), gate.wait(10)) and None)
    assert started.wait(5)
    j.record_event("e1", "o1", "order.created", b"{}", [("receipt", "P")], arm_for="P", done=lambda r, e: None)
    closer = threading.Thread(target=j.close)
    closer.start()
    time.sleep(0.1)
    gate.set()
    closer.join(10)
    j = Journal(tmp_path / "j.sqlite3")
    try:
        assert j._read("SELECT state FROM jobs") == [("queued",)]
        assert not j.begin_attempt(j.next_job("P").id).reprint
    finally:
        j.close()


def test_review_3_an_idle_printer_has_at_most_one_order_armed(j):
    """D after a crash: only the order waiting to be sent is armed; the next ones queue."""

    class Slow:  # a printer whose status poll is slow: the worker stays "idle" meanwhile
        name, queryable = "P", True

        def status(self, maintain="idle"):
            return PrinterStatus("ready", "")

        def close(self):
            pass

    w = PrintWorker(Slow(), columns=32, journal=j, renderer=TicketRenderer(store_name="店", store_phone="1"),
                    on_done=lambda d: None)
    w.idle, w._thread, w.status = True, object(), PrinterStatus("ready", "")
    hq = Hq(j)
    hq.intake.ready = lambda p: w.ready()
    hq.intake.plan = lambda t: [("receipt", "P")]
    for i in range(12):
        hq.send(i)
        j.flush()
    assert len(j.armed("P")) == 1 and len(hq.acked) == 12
    j.crash()
    j2 = Journal(j.path)
    try:
        assert j2._read("SELECT COUNT(*) FROM jobs WHERE state='printing'") == [(1,)]
    finally:
        j2.close()
