"""``store-agent journal salvage``: rescue the unfinished orders of a damaged journal.

Orders in the journal were acknowledged to the broker: the broker will never send them again, so a
damaged journal must never be deleted or "moved aside and forgotten". Salvage reads whatever rows
can still be read (row by row where a page is damaged) and writes a fresh journal with:

* every event with an unfinished job, and all of its jobs as they were (a ``printing`` one stays
  ``printing``, so it prints marked 补打: it may have reached paper);
* the dedupe keys of every other readable event (a re-sent event is not printed as new);
* open alerts and the timers (reminders already printed are not printed again);
* what is known of the printers (probe, paper count, learnt roll length), the day's figures and the
  follow-up calls.

The damaged file (with its -wal/-shm) is kept beside it as ``<name>.damaged-<UTC time>``, and the
fresh journal takes its name in one rename. The agent must be stopped.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from .journal import JOB_SLOTS, OPEN_JOB_STATES, _fsync_dir, build_journal_file

log = logging.getLogger(__name__)

EVENT_COLS = "seq, event_id, order_id, type, status, received_at, finished_at, payload, error, reported"
JOB_COLS = "id, event_seq, document, printer, state, attempts, reprint, created_at, updated_at, printed_at, error"


class SalvageError(Exception):
    """Nothing could be salvaged (the file is not a journal, or the agent is running)."""


@dataclass
class SalvageReport:
    path: str
    kept_as: str = ""
    events_read: int = 0
    unfinished_events: int = 0
    jobs_copied: int = 0
    printing_jobs: int = 0  # will print marked 补打
    unreadable_rows: int = 0
    dedupe_keys: int = 0
    notes: list[str] = field(default_factory=list)


def _rows(db: sqlite3.Connection, sql: str, one_by_one: list[str], report: SalvageReport) -> list[tuple]:
    """All rows of ``sql``; where a damaged page stops the scan, each of ``one_by_one`` is tried alone."""
    try:
        return db.execute(sql).fetchall()
    except sqlite3.DatabaseError:
        out = []
        for q in one_by_one:
            try:
                out += db.execute(q).fetchall()
            except sqlite3.DatabaseError:
                report.unreadable_rows += 1
        return out


def _optional(db: sqlite3.Connection, sql: str) -> list[tuple]:
    try:
        return db.execute(sql).fetchall()
    except sqlite3.DatabaseError:
        return []


def _max_rowid(db: sqlite3.Connection, table: str, key: str) -> int:
    for sql in (f"SELECT MAX({key}) FROM {table}", f"SELECT {key} FROM {table} ORDER BY {key} DESC LIMIT 1"):
        try:
            row = db.execute(sql).fetchone()
            if row is not None and row[0] is not None:
                return int(row[0])
        except sqlite3.DatabaseError:
            continue
    return 0


def salvage(path: str | Path, now: float | None = None) -> SalvageReport:
    path = Path(path)
    now = time.time() if now is None else now
    report = SalvageReport(str(path))
    if not path.exists():
        raise SalvageError(f"{path}: no journal there")
    try:
        old = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        old.execute("SELECT 1 FROM events LIMIT 1").fetchall()
    except sqlite3.DatabaseError as e:
        raise SalvageError(f"{path}: cannot read it as a journal ({e}); keep the file and ask IT: "
                           "orders acknowledged but not printed are only in it") from e
    try:
        top = _max_rowid(old, "events", "seq")
        events = _rows(old, f"SELECT {EVENT_COLS} FROM events ORDER BY seq",
                       [f"SELECT {EVENT_COLS} FROM events WHERE seq={s}" for s in range(1, top + 1)], report)
        report.events_read = len(events)
        keep, jobs = [], []
        for ev in events:
            seq = ev[0]
            evjobs = _rows(old, f"SELECT {JOB_COLS} FROM jobs WHERE id >= {seq * JOB_SLOTS} AND id < {(seq + 1) * JOB_SLOTS} ORDER BY id",
                           [f"SELECT {JOB_COLS} FROM jobs WHERE id={seq * JOB_SLOTS + n}" for n in range(JOB_SLOTS)], report)
            if ev[4] == "queued" or any(j[4] in OPEN_JOB_STATES for j in evjobs):
                keep.append(ev)
                jobs += evjobs
        alerts = _rows(old, "SELECT id, open, updated_at, body FROM alerts WHERE open=1", [], report)
        timers = _rows(old, "SELECT key, fired_at FROM timers", [], report)
        dedupe = _optional(old, "SELECT key, value, at FROM dedupe")
        # what is known beyond the orders (schema 4): the printers' probe and paper count, the day's figures,
        # the follow-up calls; a table that is missing (an older journal) or unreadable is left behind
        printers = _optional(old, "SELECT name, caps, paper_mm, loaded_at, mm_per_roll, updated_at FROM printers")
        stats = _optional(old, "SELECT day, key, n FROM stats")
        samples = _optional(old, "SELECT day, kind, value FROM stat_samples")
        followups = _optional(old, "SELECT order_id, outcome, at FROM followups")
    finally:
        old.close()
    kept_seqs = {ev[0] for ev in keep}
    for ev in events:
        if ev[0] in kept_seqs:
            continue
        dedupe.append(("e:" + ev[1], ev[4], now))
        if ev[3] == "order.created" and ev[4] == "printed" and ev[2]:
            dedupe.append(("o:" + ev[2], ev[1], now))
    report.unfinished_events = len(keep)
    report.jobs_copied = len(jobs)
    report.printing_jobs = sum(1 for j in jobs if j[4] == "printing")
    report.dedupe_keys = len(dedupe)

    fresh = path.with_name(path.name + ".salvage-tmp")

    def fill(new: sqlite3.Connection) -> None:
        new.executemany(f"INSERT INTO events({EVENT_COLS}) VALUES ({','.join('?' * 10)})", keep)
        new.executemany(f"INSERT INTO jobs({JOB_COLS}) VALUES ({','.join('?' * 11)})", jobs)
        new.executemany("INSERT OR IGNORE INTO alerts(id, open, updated_at, body) VALUES (?,?,?,?)", alerts)
        new.executemany("INSERT OR IGNORE INTO timers(key, fired_at) VALUES (?,?)", timers)
        new.executemany("INSERT OR IGNORE INTO dedupe(key, value, at) VALUES (?,?,?)", dedupe)
        new.executemany("INSERT OR IGNORE INTO printers(name, caps, paper_mm, loaded_at, mm_per_roll, updated_at) "
                        "VALUES (?,?,?,?,?,?)", printers)
        new.executemany("INSERT OR IGNORE INTO stats(day, key, n) VALUES (?,?,?)", stats)
        new.executemany("INSERT INTO stat_samples(day, kind, value) VALUES (?,?,?)", samples)
        new.executemany("INSERT OR IGNORE INTO followups(order_id, outcome, at) VALUES (?,?,?)", followups)

    build_journal_file(fresh, fill)
    check = sqlite3.connect(str(fresh))
    try:
        ok = check.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        check.close()
    if ok != "ok":
        raise SalvageError(f"the fresh journal does not check out ({ok}); nothing was replaced")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):  # the damaged file and its WAL stay together, beside it
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, Path(f"{aside}{suffix}"))
    os.replace(fresh, path)
    _fsync_dir(path.parent)
    report.kept_as = str(aside)
    log.warning("journal salvaged: %d unfinished event(s), %d job(s) copied; the damaged file is kept as %s",
                report.unfinished_events, report.jobs_copied, aside)
    return report
