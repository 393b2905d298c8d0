"""The order journal: SQLite in ``state_dir``, WAL + ``synchronous=FULL``.

Every accepted order event is committed here before it is acknowledged to the
broker; every print job is a row whose state moves
``queued -> printing -> printed | failed``. A job found in ``printing`` after a
restart may have reached paper already, so its next attempt is a reprint.

All methods are thread-safe (one connection behind a lock). Any SQLite failure
is raised as ``JournalError`` so the caller never acknowledges an event that
was not durably stored.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    order_id     TEXT,
    type         TEXT NOT NULL,
    status       TEXT NOT NULL,
    received_at  REAL NOT NULL,
    finished_at  REAL,
    payload      BLOB NOT NULL,
    error        TEXT,
    reported     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_order ON events(order_id, type);
CREATE INDEX IF NOT EXISTS events_received ON events(received_at);
CREATE TABLE IF NOT EXISTS jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq    INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    document     TEXT NOT NULL,
    printer      TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    reprint      INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    printed_at   REAL,
    error        TEXT
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(printer, state, id);
CREATE INDEX IF NOT EXISTS jobs_event ON jobs(event_seq);
CREATE TABLE IF NOT EXISTS alerts (
    id           TEXT PRIMARY KEY,
    open         INTEGER NOT NULL,
    updated_at   REAL NOT NULL,
    body         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS timers (
    key          TEXT PRIMARY KEY,
    fired_at     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at  REAL NOT NULL,
    sha256       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    payload      BLOB NOT NULL
);
"""

OPEN_JOB_STATES = ("queued", "printing")
FINAL_EVENT_STATES = ("printed", "failed", "duplicate", "expired")


class JournalError(Exception):
    """The journal could not durably store or read something."""


@dataclass(frozen=True)
class Intake:
    """What the journal decided for an incoming event."""

    status: str  # queued | duplicate | expired | printed (nothing to print)
    seq: Optional[int]
    reason: Optional[str] = None


@dataclass(frozen=True)
class Job:
    id: int
    event_seq: int
    event_id: str
    order_id: Optional[str]
    type: str
    document: str
    printer: str
    state: str
    attempts: int
    reprint: bool
    payload: bytes


@dataclass(frozen=True)
class EventDone:
    """An event whose every job has finished (for the result message)."""

    event_id: str
    order_id: Optional[str]
    status: str
    documents: list[str]
    printer: str
    reprint: bool
    error: Optional[str]


def _event_done(event_id: str, order_id: Optional[str], status: str, error: Optional[str], jobs: list[tuple]) -> EventDone:
    """Jobs as (document, printer, state, reprint, ...) rows."""
    return EventDone(
        event_id=event_id,
        order_id=order_id,
        status=status,
        documents=[j[0] for j in jobs if j[2] == "printed"],
        printer=jobs[-1][1] if jobs else "",
        reprint=any(j[3] for j in jobs),
        error=error,
    )


class Journal:
    def __init__(self, path: str | Path, *, max_rejected_bytes: int = 65536) -> None:
        self.path = Path(path)
        self.max_rejected_bytes = max_rejected_bytes
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise JournalError(f"{self.path}: cannot switch to WAL (got {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise JournalError(f"{self.path}: {e}") from e

    # -- plumbing -------------------------------------------------------
    def _tx(self, fn, *args):
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._db, *args)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                return out
            except sqlite3.Error as e:
                raise JournalError(str(e)) from e

    def _read(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as e:
                raise JournalError(str(e)) from e

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    # -- intake ---------------------------------------------------------
    def record_event(
        self,
        event_id: str,
        order_id: Optional[str],
        type_: str,
        payload: bytes,
        documents: list[tuple[str, str]],
        *,
        expired: bool = False,
        reprint: bool = False,
        now: Optional[float] = None,
    ) -> Intake:
        """Store an accepted event and its print jobs ``[(document, printer), ...]`` in one transaction."""
        now = time.time() if now is None else now

        def tx(db: sqlite3.Connection) -> Intake:
            row = db.execute("SELECT seq FROM events WHERE event_id=?", (event_id,)).fetchone()
            if row:
                return Intake("duplicate", row[0], "event id already received")
            if type_ == "order.created":
                prior = db.execute(
                    "SELECT event_id FROM events WHERE order_id=? AND type='order.created' "
                    "AND status IN ('queued','printed') LIMIT 1",
                    (order_id,),
                ).fetchone()
                if prior:
                    status, reason = "duplicate", f"order {order_id} already received as {prior[0]}"
                elif expired:
                    status, reason = "expired", "order.expires_at has passed"
                else:
                    status, reason = "queued", None
            else:
                status, reason = ("expired", "order.expires_at has passed") if expired else ("queued", None)
            if status == "queued" and not documents:
                status = "printed"
            final = now if status != "queued" else None
            cur = db.execute(
                "INSERT INTO events(event_id, order_id, type, status, received_at, finished_at, payload, error) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (event_id, order_id, type_, status, now, final, payload, reason if status != "queued" else None),
            )
            seq = cur.lastrowid
            if status == "queued":
                db.executemany(
                    "INSERT INTO jobs(event_seq, document, printer, state, reprint, created_at, updated_at) "
                    "VALUES (?,?,?,'queued',?,?,?)",
                    [(seq, doc, printer, int(reprint), now, now) for doc, printer in documents],
                )
            return Intake(status, seq, reason)

        return self._tx(tx)

    def record_rejected(self, sha256: str, reason: str, payload: bytes, now: Optional[float] = None) -> None:
        """Keep a rejected payload (up to the cap) so nothing sent to the store is lost without trace."""
        now = time.time() if now is None else now
        kept = payload[: self.max_rejected_bytes]

        def tx(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO rejected(received_at, sha256, reason, size, payload) VALUES (?,?,?,?,?)",
                (now, sha256, reason, len(payload), kept),
            )

        self._tx(tx)

    # -- printing -------------------------------------------------------
    _JOB_SQL = (
        "SELECT j.id, j.event_seq, e.event_id, e.order_id, e.type, j.document, j.printer, j.state, "
        "j.attempts, j.reprint, e.payload FROM jobs j JOIN events e ON e.seq = j.event_seq "
    )

    @staticmethod
    def _job(row: tuple) -> Job:
        return Job(*row[:9], bool(row[9]), row[10])

    def next_job(self, printer: str, also: tuple[str, ...] = (), skip: tuple[int, ...] = ()) -> Optional[Job]:
        """The oldest open job of ``printer`` (or of the printers in ``also``, for a backup taking over)."""
        names = (printer, *also)
        where = f"WHERE j.printer IN ({','.join('?' * len(names))}) AND j.state IN ('queued','printing')"
        if skip:
            where += f" AND j.id NOT IN ({','.join('?' * len(skip))})"
        rows = self._read(self._JOB_SQL + where + " ORDER BY j.id LIMIT 1", (*names, *skip))
        return self._job(rows[0]) if rows else None

    def open_jobs(self, printer: Optional[str] = None) -> list[Job]:
        where = "WHERE j.state IN ('queued','printing')" + (" AND j.printer=?" if printer else "")
        rows = self._read(self._JOB_SQL + where + " ORDER BY j.id", (printer,) if printer else ())
        return [self._job(r) for r in rows]

    def reassign_orphans(self, printers: list[str], to: str, now: Optional[float] = None) -> int:
        """Open jobs for printers no longer configured move to ``to`` (a 'printing' one stays a reprint)."""
        now = time.time() if now is None else now
        marks = ",".join("?" * len(printers))

        def tx(db: sqlite3.Connection) -> int:
            return db.execute(
                f"UPDATE jobs SET printer=?, updated_at=?, reprint=CASE WHEN state='printing' THEN 1 ELSE reprint END "
                f"WHERE state IN ('queued','printing') AND printer NOT IN ({marks})",
                (to, now, *printers),
            ).rowcount

        return self._tx(tx)

    def open_job_counts(self) -> dict[str, int]:
        """Open jobs per printer (health and status: no payloads read)."""
        return {p: n for p, n in self._read(
            "SELECT printer, COUNT(*) FROM jobs WHERE state IN ('queued','printing') GROUP BY printer")}

    def begin_attempt(self, job_id: int, now: Optional[float] = None, printer: Optional[str] = None) -> Job:
        """Mark a job ``printing`` (on ``printer``, when a backup takes it over) before any byte is sent;
        the returned job says whether it is a reprint."""
        now = time.time() if now is None else now

        def tx(db: sqlite3.Connection) -> Job:
            state, attempts, reprint, owner = db.execute(
                "SELECT state, attempts, reprint, printer FROM jobs WHERE id=?", (job_id,)
            ).fetchone()
            # a job already 'printing' was interrupted after bytes may have left: paper may exist
            reprint = bool(reprint) or state == "printing"
            db.execute(
                "UPDATE jobs SET state='printing', attempts=attempts+1, reprint=?, printer=?, updated_at=? WHERE id=?",
                (int(reprint), printer or owner, now, job_id),
            )
            return self._job(db.execute(self._JOB_SQL + "WHERE j.id=?", (job_id,)).fetchone())

        return self._tx(tx)

    def attempt_not_sent(self, job_id: int, error: str, now: Optional[float] = None) -> None:
        """The attempt failed before any byte reached the printer: back to ``queued``, no reprint implied."""
        now = time.time() if now is None else now
        self._tx(
            lambda db: db.execute(
                "UPDATE jobs SET state='queued', error=?, updated_at=? WHERE id=? AND state='printing'",
                (error, now, job_id),
            )
        )

    def note_error(self, job_id: int, error: str, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        self._tx(lambda db: db.execute("UPDATE jobs SET error=?, updated_at=? WHERE id=?", (error, now, job_id)))

    def finish_job(
        self, job_id: int, state: str, error: Optional[str] = None, now: Optional[float] = None
    ) -> Optional[EventDone]:
        """Mark a job ``printed`` or ``failed``; returns the event outcome when this was its last open job."""
        if state not in ("printed", "failed"):
            raise ValueError(f"not a final job state: {state}")
        now = time.time() if now is None else now

        def tx(db: sqlite3.Connection) -> Optional[EventDone]:
            db.execute(
                "UPDATE jobs SET state=?, error=?, updated_at=?, printed_at=CASE WHEN ?='printed' THEN ? END "
                "WHERE id=?",
                (state, error, now, state, now, job_id),
            )
            (seq,) = db.execute("SELECT event_seq FROM jobs WHERE id=?", (job_id,)).fetchone()
            return self._finish_event(db, seq, now)

        return self._tx(tx)

    @staticmethod
    def _finish_event(db: sqlite3.Connection, seq: int, now: float) -> Optional[EventDone]:
        jobs = db.execute("SELECT document, printer, state, reprint, error FROM jobs WHERE event_seq=? ORDER BY id", (seq,)).fetchall()
        if any(j[2] in OPEN_JOB_STATES for j in jobs):
            return None
        event_id, order_id, status = db.execute(
            "SELECT event_id, order_id, status FROM events WHERE seq=?", (seq,)
        ).fetchone()
        if status != "queued":
            return None
        failed = [j for j in jobs if j[2] == "failed"]
        status = "failed" if failed else "printed"
        error = "; ".join(f"{j[0]}: {j[4]}" for j in failed) or None
        db.execute("UPDATE events SET status=?, finished_at=?, error=? WHERE seq=?", (status, now, error, seq))
        return _event_done(event_id, order_id, status, error, jobs)

    def order_payload(self, order_id: str) -> Optional[bytes]:
        """The newest order.created payload of an order (printed, failed or expired alike), for reprints."""
        rows = self._read(
            "SELECT payload FROM events WHERE order_id=? AND type='order.created' "
            "AND status IN ('queued','printed','failed','expired') ORDER BY seq DESC LIMIT 1", (order_id,))
        return rows[0][0] if rows else None

    # -- local timers ---------------------------------------------------
    def timer_fired(self, key: str, default: Optional[float] = None) -> Optional[float]:
        rows = self._read("SELECT fired_at FROM timers WHERE key=?", (key,))
        return rows[0][0] if rows else default

    def mark_timer(self, key: str, fired_at: float) -> None:
        self._tx(lambda db: db.execute(
            "INSERT INTO timers(key, fired_at) VALUES (?,?) ON CONFLICT(key) DO UPDATE SET fired_at=excluded.fired_at",
            (key, fired_at)))

    def recent_created(self, since: float) -> list[tuple[float, bytes, str]]:
        """(received_at, payload, order_id) of accepted order.created events since ``since``."""
        return self._read(
            "SELECT received_at, payload, order_id FROM events WHERE type='order.created' "
            "AND status IN ('queued','printed') AND received_at > ? ORDER BY seq", (since,))

    def orders_with(self, types: tuple[str, ...], since: float) -> set[str]:
        marks = ",".join("?" * len(types))
        return {r[0] for r in self._read(
            f"SELECT DISTINCT order_id FROM events WHERE type IN ({marks}) AND received_at > ?", (*types, since))}

    # -- alerts ---------------------------------------------------------
    def save_alert(self, alert_id: str, body: str, is_open: bool, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        self._tx(
            lambda db: db.execute(
                "INSERT INTO alerts(id, open, updated_at, body) VALUES (?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET open=excluded.open, updated_at=excluded.updated_at, body=excluded.body",
                (alert_id, int(is_open), now, body),
            )
        )

    def open_alerts(self) -> list[str]:
        return [r[0] for r in self._read("SELECT body FROM alerts WHERE open=1 ORDER BY updated_at")]

    # -- results outbox -------------------------------------------------
    def mark_reported(self, event_ids: Iterable[str]) -> None:
        """The broker confirmed (PUBACK) the final results of these events (one transaction)."""
        ids = [(e,) for e in event_ids]
        if ids:
            self._tx(lambda db: db.executemany("UPDATE events SET reported=1 WHERE event_id=?", ids))

    def unreported(self, limit: int = 1000) -> list[EventDone]:
        """Finished events whose final result the broker never confirmed (e.g. the agent was killed)."""
        rows = self._read(
            "SELECT seq, event_id, order_id, status, error FROM events WHERE reported=0 "
            "AND status IN ('printed','failed','duplicate','expired') ORDER BY seq LIMIT ?",
            (limit,),
        )
        out = []
        for seq, event_id, order_id, status, error in rows:
            jobs = self._read("SELECT document, printer, state, reprint FROM jobs WHERE event_seq=? ORDER BY id", (seq,))
            out.append(_event_done(event_id, order_id, status, error, jobs))
        return out

    # -- queries --------------------------------------------------------
    def event_status(self, event_id: str) -> Optional[str]:
        rows = self._read("SELECT status FROM events WHERE event_id=?", (event_id,))
        return rows[0][0] if rows else None

    def counts(self) -> dict[str, int]:
        rows = self._read("SELECT status, COUNT(*) FROM events GROUP BY status")
        return {s: n for s, n in rows}

    def oldest_open_age(self, now: Optional[float] = None) -> Optional[float]:
        now = time.time() if now is None else now
        rows = self._read("SELECT MIN(created_at) FROM jobs WHERE state IN ('queued','printing')")
        return (now - rows[0][0]) if rows and rows[0][0] is not None else None

    def size_bytes(self) -> int:
        (pages,), (size,), (free,) = (
            self._read("PRAGMA page_count")[0],
            self._read("PRAGMA page_size")[0],
            self._read("PRAGMA freelist_count")[0],
        )
        return (pages - free) * size

    # -- pruning --------------------------------------------------------
    def prune(self, keep_days: int, max_bytes: int, now: Optional[float] = None) -> int:
        """Delete finished events older than ``keep_days``, then oldest-first until under ``max_bytes``.

        Events with open jobs are never deleted. Returns the number of events removed.
        """
        now = time.time() if now is None else now
        cutoff = now - keep_days * 86400
        final = f"status IN ({','.join(repr(s) for s in FINAL_EVENT_STATES)})"

        def by_age(db: sqlite3.Connection) -> int:
            n = db.execute(f"DELETE FROM events WHERE {final} AND received_at < ?", (cutoff,)).rowcount
            n += db.execute("DELETE FROM rejected WHERE received_at < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM alerts WHERE open=0 AND updated_at < ?", (cutoff,))
            db.execute("DELETE FROM timers WHERE fired_at < ? AND key != 'summary'", (cutoff,))
            return n

        removed = self._tx(by_age)
        while self.size_bytes() > max_bytes:
            total = self._read("SELECT COUNT(*) FROM events")[0][0] + self._read("SELECT COUNT(*) FROM rejected")[0][0]
            batch = max(1, total // 20)  # 5 % steps: never far below the bound

            def oldest(db: sqlite3.Connection) -> int:
                # under size pressure only events whose result HQ has confirmed go (age pruning takes any)
                n = db.execute(
                    f"DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE {final} AND reported=1 ORDER BY seq LIMIT ?)",
                    (batch,),
                ).rowcount
                n += db.execute(
                    "DELETE FROM rejected WHERE id IN (SELECT id FROM rejected ORDER BY id LIMIT ?)", (batch,)
                ).rowcount
                return n

            n = self._tx(oldest)
            removed += n
            if n == 0:
                break
        with self._lock:
            try:
                self._db.execute("PRAGMA incremental_vacuum")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                log.warning("journal vacuum failed: %s", e)
        return removed
