"""Finding 9: a damaged journal is salvaged, never deleted: every unfinished order is copied into a
fresh journal (an interrupted one still prints marked 补打), the damaged file is kept beside it."""

import os
import sqlite3
import subprocess
import sys

from agent.doctor import SALVAGE_FIX
from agent.journal import Journal
from conftest import ROOT, agent_config, write_toml

DOCS = [("receipt", "counter"), ("warm_tip", "counter")]


def _journal_with_damage(path):
    j = Journal(path)
    pad = os.urandom(3000)  # incompressible: many pages of finished orders to damage
    for i in range(200):
        j.record_event(f"done-{i}", f"o-{i}", "order.created", pad, [("receipt", "counter")], now=1000 + i)
        job = j.begin_attempt(j.next_job("counter").id)
        j.finish_job(job.id, "printed")
    j.record_event("open-1", "o-open-1", "order.created", b'{"a":1}', DOCS, now=5000)
    j.begin_attempt(j.next_job("counter").id)  # it may have reached paper
    j.record_event("open-2", "o-open-2", "order.created", b'{"b":2}', DOCS, now=5001)
    j.close()
    with open(path, "r+b") as f:  # garbage over pages in the middle: finished orders' rows
        size = os.path.getsize(path)
        for off in range(size // 4, size // 2, 7 * 1024):
            f.seek(off)
            f.write(os.urandom(1024))
    with sqlite3.connect(path) as db:
        try:
            assert db.execute("PRAGMA quick_check").fetchone()[0] != "ok"
        except sqlite3.DatabaseError:
            pass


def test_salvage_keeps_every_unfinished_order(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    path = state / "journal.sqlite3"
    _journal_with_damage(path)
    cfg = write_toml(tmp_path / "agent.toml", agent_config(state, 1, 1, "salvage-1"))
    out = subprocess.run([sys.executable, "-m", "agent.cli", "journal", "salvage", "--config", str(cfg)],
                         capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "salvaged 2 unfinished order event(s), 4 ticket(s) (1 will print marked 补打)" in out.stdout
    kept = [p for p in os.listdir(state) if p.startswith("journal.sqlite3.damaged-")]
    assert kept, os.listdir(state)  # the damaged file is kept, never deleted
    j = Journal(path)
    try:
        assert j._read("PRAGMA quick_check")[0][0] == "ok"
        jobs = j.open_jobs()
        assert [(x.event_id, x.document, x.state) for x in jobs] == [
            ("open-1", "receipt", "printing"), ("open-1", "warm_tip", "queued"),
            ("open-2", "receipt", "queued"), ("open-2", "warm_tip", "queued")]
        assert j.begin_attempt(jobs[0].id).reprint  # interrupted before the damage: 补打
        keys = [k for (k,) in j._read("SELECT key FROM dedupe WHERE key LIKE 'e:done-%'")]
        assert len(keys) > 100  # the readable finished orders: kept against re-sends
        again = j.record_event(keys[-1][2:], "o-x", "order.created", b"{}", DOCS)
        assert again.redelivered and again.status == "printed" and len(j.open_jobs()) == 4
    finally:
        j.close()


def test_doctor_never_advises_deleting_the_journal():
    assert "salvage" in SALVAGE_FIX and "aside" not in SALVAGE_FIX and "re-arrive" not in SALVAGE_FIX
