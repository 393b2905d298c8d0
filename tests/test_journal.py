import os
import sqlite3

import pytest

from agent.journal import SCHEMA_VERSION, Journal, JournalError
from conftest import set_max_pages, wait_until

DOCS = [("receipt", "counter"), ("warm_tip", "counter")]


@pytest.fixture
def j(tmp_path):
    jr = Journal(tmp_path / "j.sqlite3")
    yield jr
    jr.close()


def test_wal_and_full_sync(j, tmp_path):
    assert j.call(lambda db: db.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    assert j.call(lambda db: db.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
    assert oct(os.stat(tmp_path / "j.sqlite3").st_mode & 0o777) == "0o600"  # names, phones, addresses


def finish(j, job_id, state="printed", error=None):
    """finish_job is lazy: commit it and return the event's outcome (None while jobs are open)."""
    out = []
    j.finish_job(job_id, state, error, done=out.append)
    j.flush()
    return out[0] if out else None


def test_event_id_is_unique_and_answered_with_its_status(j):
    assert j.record_event("e1", "o1", "order.created", b"{}", DOCS).status == "queued"
    again = j.record_event("e1", "o1", "order.created", b"{}", DOCS)
    assert again.status == "queued" and again.redelivered  # its current status, not "duplicate"
    assert len(j.open_jobs()) == 2


def test_second_created_for_same_order_is_duplicate(j):
    j.record_event("e1", "o1", "order.created", b"{}", DOCS)
    r = j.record_event("e2", "o1", "order.created", b"{}", DOCS)
    assert r.status == "duplicate" and "e1" in r.reason
    assert len(j.open_jobs()) == 2
    # an exception event for the same order is not a duplicate
    assert j.record_event("e3", "o1", "rider.unassigned", b"{}", [("slip", "counter")]).status == "queued"


def test_expired_is_kept_not_queued(j):
    r = j.record_event("e1", "o1", "order.created", b"{}", DOCS, expired=True)
    assert r.status == "expired" and j.open_jobs() == []
    assert j.event_status("e1") == "expired"


def test_no_documents_is_done_at_once(j):
    assert j.record_event("e1", "o1", "order.completed", b"{}", []).status == "printed"


def test_job_lifecycle_and_event_outcome(j):
    j.record_event("e1", "o1", "order.created", b"{}", DOCS)
    a = j.next_job("counter")
    assert a.document == "receipt" and not a.reprint
    a = j.begin_attempt(a.id)
    assert a.state == "printing" and a.attempts == 1 and not a.reprint
    assert finish(j, a.id) is None  # warm_tip still open
    b = j.begin_attempt(j.next_job("counter").id)
    done = finish(j, b.id)
    assert done.status == "printed" and done.documents == ["receipt", "warm_tip"] and not done.reprint
    assert j.event_status("e1") == "printed" and j.next_job("counter") is None


def test_interrupted_attempt_becomes_a_reprint_after_reopen(tmp_path):
    jr = Journal(tmp_path / "j.sqlite3")
    jr.record_event("e1", "o1", "order.created", b"{}", DOCS)
    jr.begin_attempt(jr.next_job("counter").id)  # bytes may have gone out, then the process died
    jr.close()
    jr = Journal(tmp_path / "j.sqlite3")
    job = jr.next_job("counter")
    assert job.state == "printing"
    again = jr.begin_attempt(job.id)
    assert again.reprint and again.attempts == 2
    assert finish(jr, again.id) is None
    jr.close()


def test_attempt_not_sent_is_no_reprint(j):
    j.record_event("e1", "o1", "order.created", b"{}", DOCS)
    a = j.begin_attempt(j.next_job("counter").id)
    j.unarm(ids=[a.id])  # the send failed before any byte left
    j.flush()
    assert j.open_jobs()[0].state == "queued"
    again = j.begin_attempt(a.id)
    assert not again.reprint and again.attempts == 1


def test_failed_job_fails_the_event(j):
    j.record_event("e1", "o1", "order.created", b"{}", DOCS)
    a = j.begin_attempt(j.next_job("counter").id)
    finish(j, a.id, "failed", "paper out too long")
    b = j.begin_attempt(j.next_job("counter").id)
    done = finish(j, b.id)
    assert done.status == "failed" and done.documents == ["warm_tip"] and "paper out" in done.error


def test_prune_by_age_keeps_open_jobs(j):
    j.record_event("old-done", "o1", "order.completed", b"{}", [], now=0)
    j.record_event("old-open", "o2", "order.created", b"{}", DOCS, now=0)
    j.record_rejected("abc", "bad", b"x", now=0)
    n = j.prune(keep_days=1, max_bytes=10**9, now=10 * 86400)
    assert n == 2
    assert j.event_status("old-done") is None and j.event_status("old-open") == "queued"


def test_prune_by_size(j):
    pad = os.urandom(4000)  # incompressible: payloads are stored zlib-compressed
    for i in range(300):
        j.record_event(f"e{i}", f"o{i}", "order.completed", pad, [], now=1000 + i)
    j.mark_reported([f"e{i}" for i in range(1, 300)])  # e0's result was never confirmed
    before = j.size_bytes()
    j.prune(keep_days=3650, max_bytes=200_000, now=2000)
    assert j.size_bytes() <= 200_000 < before
    assert j.event_status("e299") == "printed" and j.event_status("e1") is None
    assert j.event_status("e0") == "printed"  # kept until HQ has its result


def test_disk_full_raises_and_stores_nothing(j):
    j.record_event("e0", "o0", "order.completed", b"{}", [])
    set_max_pages(j)
    with pytest.raises(JournalError, match="full"):
        j.record_event("e1", "o1", "order.created", os.urandom(100_000), DOCS)
    assert j.event_status("e1") is None and j.open_jobs() == []


def test_unopenable_journal_is_a_journal_error(tmp_path):
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(JournalError):
        Journal(tmp_path / "dir.sqlite3")


def test_jobs_of_a_removed_printer_move_to_the_default(j):
    j.record_event("e1", "o1", "order.created", b"{}", [("receipt", "old"), ("warm_tip", "old")])
    j.begin_attempt(j.next_job("old").id)
    assert j.reassign_orphans(["counter"], "counter") == 2
    first = j.next_job("counter")
    assert first.document == "receipt" and first.state == "printing"
    assert j.begin_attempt(first.id).reprint  # it may have printed on the old printer
    assert j.next_job("old") is None


V1_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, order_id TEXT,
    type TEXT NOT NULL, status TEXT NOT NULL, received_at REAL NOT NULL, finished_at REAL, payload BLOB NOT NULL,
    error TEXT, reported INTEGER NOT NULL DEFAULT 0);
CREATE INDEX events_order ON events(order_id, type);
CREATE INDEX events_received ON events(received_at);
CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, event_seq INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    document TEXT NOT NULL, printer TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    reprint INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL, printed_at REAL, error TEXT);
CREATE TABLE alerts (id TEXT PRIMARY KEY, open INTEGER NOT NULL, updated_at REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE timers (key TEXT PRIMARY KEY, fired_at REAL NOT NULL);
CREATE TABLE rejected (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at REAL NOT NULL, sha256 TEXT NOT NULL,
    reason TEXT NOT NULL, size INTEGER NOT NULL, payload BLOB NOT NULL);
"""


def test_schema_1_journal_is_migrated(tmp_path):
    """A journal written by an earlier version keeps everything: open jobs (an interrupted one stays a
    reprint), finished events for reprints and dedupe, alerts, timers, rejected payloads."""
    path = tmp_path / "j.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V1_SCHEMA)
    db.execute("INSERT INTO events VALUES (1,'e1','o1','order.created','printed',1.0,2.0,?,NULL,1)", (b'{"a":1}',))
    db.execute("INSERT INTO events VALUES (5,'e5','o5','order.created','queued',3.0,NULL,?,NULL,0)", (b'{"b":2}',))
    db.executemany("INSERT INTO jobs(id, event_seq, document, printer, state, attempts, reprint, created_at, updated_at) "
                   "VALUES (?,?,?,?,?,?,0,1,1)",
                   [(1, 1, "receipt", "counter", "printed", 1), (2, 1, "warm_tip", "counter", "printed", 1),
                    (9, 5, "receipt", "counter", "printing", 1), (10, 5, "warm_tip", "counter", "queued", 0)])
    db.execute("INSERT INTO alerts VALUES ('a1', 1, 1.0, '{}')")
    db.execute("INSERT INTO timers VALUES ('summary', 7.0)")
    db.execute("INSERT INTO rejected(received_at, sha256, reason, size, payload) VALUES (1.0,'ab','bad',3,?)", (b"xyz",))
    db.close()

    j = Journal(path)
    try:
        assert j._read("PRAGMA user_version")[0][0] == SCHEMA_VERSION
        assert j._read("PRAGMA page_size")[0][0] == 1024
        assert (tmp_path / "j.sqlite3.v1").exists()
        assert j.order_payload("o1") == b'{"a":1}'
        assert j.record_event("e1", "o1", "order.created", b"{}", DOCS).redelivered
        assert j.record_event("e9", "o5", "order.created", b"{}", DOCS).status == "duplicate"
        jobs = j.open_jobs()
        assert [(x.event_id, x.document, x.state) for x in jobs] == [("e5", "receipt", "printing"), ("e5", "warm_tip", "queued")]
        assert j.begin_attempt(jobs[0].id).reprint  # interrupted before the upgrade: may have printed
        assert j.open_alerts() == ["{}"] and j.timer_fired("summary") == 7.0
        assert j._read("SELECT sha256, payload FROM rejected") == [("ab", b"xyz")]
    finally:
        j.close()


def test_lazy_outcomes_ride_on_the_next_commit_or_within_lazy_s(tmp_path):
    jr = Journal(tmp_path / "j.sqlite3")
    jr.record_event("e1", "o1", "order.created", b"{}", DOCS)
    a = jr.begin_attempt(jr.next_job("counter").id, printer="counter", siblings=("counter",))
    assert a.siblings == (a.id + 1,)  # the warm-tip card was armed with it: no commit of its own
    outcomes = []
    jr.finish_job(a.id, "printed", done=outcomes.append)
    assert jr.settling() == (a.id,)
    nxt = jr.next_job("counter")  # a settling job is never taken again
    assert nxt.document == "warm_tip" and jr.take_armed(nxt.id) and not jr.take_armed(nxt.id)
    assert jr._read("SELECT state FROM jobs ORDER BY id") == [("printing",), ("printing",)]  # committed state only
    jr.record_event("e2", "o2", "order.created", b"{}", DOCS)  # a durable commit carries it
    assert jr._read("SELECT state FROM jobs ORDER BY id")[:2] == [("printed",), ("printing",)] and jr.settling() == ()
    jr.finish_job(a.id + 1, "printed", done=outcomes.append)
    assert wait_until(lambda: jr.event_status("e1") == "printed", 2 * jr.LAZY_S + 1)  # no other commit needed
    assert [o.status for o in outcomes] == ["printed"]
    jr.close()


def test_lost_outcome_prints_again_marked(tmp_path):
    """The outcome is lazy: lost with the process (a power cut), the ticket prints again as 补打."""
    jr = Journal(tmp_path / "j.sqlite3")
    jr.record_event("e1", "o1", "order.created", b"{}", [("receipt", "counter")])
    a = jr.begin_attempt(jr.next_job("counter").id)
    jr.finish_job(a.id, "printed")
    jr.crash()  # no commit: as if the process died
    jr = Journal(tmp_path / "j.sqlite3")
    assert jr.begin_attempt(jr.next_job("counter").id).reprint
    jr.close()


def test_armed_jobs_are_no_reprint_in_this_process_and_unarmed_at_a_clean_stop(tmp_path):
    jr = Journal(tmp_path / "j.sqlite3")
    r = jr.record_event("e1", "o1", "order.created", b"{}", DOCS, arm_for="counter")
    assert len(r.armed) == 2 and all(x.state == "printing" for x in jr.open_jobs())
    assert not jr.begin_attempt(r.armed[0]).reprint  # armed here: nothing was sent
    jr.close()  # clean: the other armed job goes back to queued
    jr = Journal(tmp_path / "j.sqlite3")
    second = jr.open_jobs()[1]
    assert second.state == "queued" and not jr.begin_attempt(second.id).reprint
    jr.crash()
    jr = Journal(tmp_path / "j.sqlite3")
    assert jr.begin_attempt(second.id).reprint  # after a crash nobody knows: 补打
    jr.close()


def test_failed_commit_keeps_lazy_writes(j):
    j.record_event("e1", "o1", "order.created", b"{}", [("receipt", "counter")])
    a = j.begin_attempt(j.next_job("counter").id)
    set_max_pages(j)
    j.finish_job(a.id, "printed")
    with pytest.raises(JournalError, match="full"):
        j.record_event("e2", "o2", "order.created", os.urandom(100_000), DOCS)
    assert j.event_status("e2") is None and j.settling() == (a.id,)
    set_max_pages(j, 1 << 30)
    j.flush()
    assert j.event_status("e1") == "printed"  # the outcome was tried again with the next batch
