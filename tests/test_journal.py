import sqlite3

import pytest

from agent.journal import Journal, JournalError

DOCS = [("receipt", "counter"), ("warm_tip", "counter")]


@pytest.fixture
def j(tmp_path):
    jr = Journal(tmp_path / "j.sqlite3")
    yield jr
    jr.close()


def test_wal_and_full_sync(j, tmp_path):
    assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_event_id_is_unique(j):
    assert j.record_event("e1", "o1", "order.created", b"{}", DOCS).status == "queued"
    assert j.record_event("e1", "o1", "order.created", b"{}", DOCS).status == "duplicate"
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
    assert j.finish_job(a.id, "printed") is None  # warm_tip still open
    b = j.begin_attempt(j.next_job("counter").id)
    done = j.finish_job(b.id, "printed")
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
    done = jr.finish_job(again.id, "printed")
    assert done is None
    jr.close()


def test_attempt_not_sent_is_no_reprint(j):
    j.record_event("e1", "o1", "order.created", b"{}", DOCS)
    a = j.begin_attempt(j.next_job("counter").id)
    j.attempt_not_sent(a.id, "connection refused")
    assert not j.begin_attempt(a.id).reprint


def test_failed_job_fails_the_event(j):
    j.record_event("e1", "o1", "order.created", b"{}", DOCS)
    a = j.begin_attempt(j.next_job("counter").id)
    j.finish_job(a.id, "failed", "paper out too long")
    b = j.begin_attempt(j.next_job("counter").id)
    done = j.finish_job(b.id, "printed")
    assert done.status == "failed" and done.documents == ["warm_tip"] and "paper out" in done.error


def test_prune_by_age_keeps_open_jobs(j):
    j.record_event("old-done", "o1", "order.completed", b"{}", [], now=0)
    j.record_event("old-open", "o2", "order.created", b"{}", DOCS, now=0)
    j.record_rejected("abc", "bad", b"x", now=0)
    n = j.prune(keep_days=1, max_bytes=10**9, now=10 * 86400)
    assert n == 2
    assert j.event_status("old-done") is None and j.event_status("old-open") == "queued"


def test_prune_by_size(j):
    pad = b"x" * 4000
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
    pages = j._db.execute("PRAGMA page_count").fetchone()[0]
    j._db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own SQLITE_FULL, like a full SD card
    with pytest.raises(JournalError, match="full"):
        j.record_event("e1", "o1", "order.created", b"y" * 100_000, DOCS)
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
    assert first.document == "receipt" and first.reprint  # it may have printed on the old printer
    assert j.next_job("old") is None
