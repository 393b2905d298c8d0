"""Intake batching: a burst's events share one durable commit, and none is acknowledged before it.

The connection's "more bytes waiting" is the only stand-in here (``more``); journal, events and
payloads are real. The end-to-end burst through mosquitto is in test_e2e / the drills.
"""

import json
import os

from agent.intake import OrderIntake
from agent.journal import Journal
from conftest import order, wait_until


def _intake(journal, more, results, batch_max=16):
    return OrderIntake(journal, max_payload_bytes=65536, plan=lambda t: [("receipt", "counter"), ("warm_tip", "counter")],
                       publish_result=results.append, wake=lambda: None, on_store_failure=lambda e: None,
                       more=more, batch_max=batch_max)


def _payload(i):
    return json.dumps(order(i, "b"), ensure_ascii=False).encode()


def test_a_burst_is_one_commit_and_acked_only_after_it(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    commits = []
    real = j._commit
    j._commit = lambda: (commits.append(1), real())[1]
    pending = [True] * 9 + [False]  # 10 messages: 9 with more bytes behind them, then the last
    results, acked = [], []
    intake = _intake(j, lambda: pending[len(acked_or_staged)], results)
    acked_or_staged = []
    for i in range(10):
        intake.handle(_payload(i), lambda i=i: acked.append(i))
        acked_or_staged.append(i)
        if i < 9:
            assert acked == [] and results == []  # staged: nothing acknowledged or answered yet
    assert acked == list(range(10)) and [r.status for r in results] == ["queued"] * 10
    assert len(commits) == 1
    other = Journal(tmp_path / "j.sqlite3")
    assert other.counts() == {"queued": 10}
    other.close()
    j.close()


def test_batch_is_bounded_by_receive_maximum(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    acked = []
    intake = _intake(j, lambda: True, [], batch_max=4)
    for i in range(8):
        intake.handle(_payload(i), lambda i=i: acked.append(i))
    assert acked == list(range(8))  # every 4th commits: the broker never waits on us for acks
    j.close()


def test_a_failed_commit_acknowledges_none_of_the_batch(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    failures, acked = [], []
    intake = OrderIntake(j, max_payload_bytes=1 << 20, plan=lambda t: [("receipt", "counter")], publish_result=lambda r: None,
                         wake=lambda: None, on_store_failure=failures.append, more=lambda: len(acked_calls) < 3)
    acked_calls = []
    for i in range(3):
        intake.handle(_payload(i), lambda i=i: acked.append(i))
        acked_calls.append(i)
    pages = j._db.execute("PRAGMA page_count").fetchone()[0]
    j._db.execute(f"PRAGMA max_page_count={pages}")  # the disk is full now
    big = order(3, "b")
    big["order"]["note"] = os.urandom(30000).hex()  # 60 000 characters: valid, and over the free pages
    intake.handle(json.dumps(big).encode(), lambda: acked.append(3))
    assert acked == [] and failures
    j._db.execute("PRAGMA max_page_count=1000000")
    assert j.counts() == {}  # nothing of the batch is stored: the broker sends all of it again
    j.close()


def test_the_flusher_commits_a_burst_that_ends_without_another_order(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    acked = []
    intake = _intake(j, lambda: True, [])  # bytes keep waiting, but they are not orders
    intake.handle(_payload(0), lambda: acked.append(0))
    assert acked == []
    assert wait_until(lambda: acked == [0], 2)
    j.close()
