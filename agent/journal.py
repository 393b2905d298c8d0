"""The order journal: SQLite in ``state_dir``, WAL + ``synchronous=FULL``, 1 KiB pages.

Every accepted order event is committed here before it is acknowledged to the
broker; every print job is a row whose state moves
``queued -> printing -> printed | failed``. ``printing`` is committed before any
byte of the job leaves, so a job found in ``printing`` after a restart may have
reached paper already and its next attempt is a reprint (补打).

What is committed when (the write budget of an order, docs/PERFORMANCE.md):

* the event and its jobs: one durable commit before the PUBACK (a burst's events
  share one, see agent/intake.py);
* ``printing``: durable, before the bytes: at intake when the printer is idle and
  ready (*armed*: no commit of its own), else one commit for the event's jobs and
  up to ``ARM_AHEAD`` queued behind them;
* a job's outcome and the "result delivered" marks: lazy (see ``Journal``).

All methods are thread-safe (one connection behind a lock). Any SQLite failure
is raised as ``JournalError`` so the caller never acknowledges an event that
was not durably stored.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Optional

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
PAGE_SIZE = 1024  # small pages: a commit appends whole pages to the WAL (bytes written per order)
JOB_SLOTS = 64  # a job's id is its event's seq * JOB_SLOTS + n: an event's jobs are one rowid range

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    order_id     TEXT,
    type         TEXT NOT NULL,
    status       TEXT NOT NULL,
    received_at  REAL NOT NULL,
    finished_at  REAL,
    payload      BLOB NOT NULL,      -- the event as received, zlib-compressed
    error        TEXT,
    reported     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_created ON events(order_id) WHERE type = 'order.created';
CREATE TABLE IF NOT EXISTS jobs (
    id           INTEGER PRIMARY KEY,  -- event_seq * 64 + n
    event_seq    INTEGER NOT NULL,
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
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(id) WHERE state IN ('queued', 'printing');
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
    id           INTEGER PRIMARY KEY,
    received_at  REAL NOT NULL,
    sha256       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    payload      BLOB NOT NULL
);
"""

OPEN_JOB_STATES = ("queued", "printing")
CLOCK_SLACK_S = 3600.0
FINAL_EVENT_STATES = ("printed", "failed", "duplicate", "expired")


class JournalError(Exception):
    """The journal could not durably store or read something."""


@dataclass(frozen=True)
class Intake:
    """What the journal decided for an incoming event."""

    status: str  # queued | duplicate | expired | printed (nothing to print)
    seq: Optional[int]
    reason: Optional[str] = None
    armed: tuple[int, ...] = ()  # job ids stored as an attempt already begun (record_event(arm=True))


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
    siblings: tuple[int, ...] = ()  # begin_attempt: the event's other jobs marked in the same commit


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


def _pack(payload: bytes) -> bytes:
    return zlib.compress(payload, 6)


def _unpack(stored: bytes) -> bytes:
    return zlib.decompress(stored)


class Journal:
    """See the module docstring. Writes come in two kinds:

    * durable (``synchronous=FULL``, committed before the method returns): an accepted event, the
      mark that a print attempt is about to send bytes, a rejected payload, alerts, timers;
    * lazy: a job's outcome and the "result delivered" marks. They are applied at once (every read
      sees them) inside an open transaction that the next durable write commits with it, or
      ``flush()`` after ``LAZY_S``. Losing them (power cut, SIGKILL) is safe: a job that printed but
      whose outcome was lost is still ``printing`` after a restart, so it prints again marked 补打,
      and its result is sent again.
    """

    LAZY_S = 2.0

    def __init__(self, path: str | Path, *, max_rejected_bytes: int = 65536) -> None:
        self.path = Path(path)
        self.max_rejected_bytes = max_rejected_bytes
        self._lock = threading.RLock()
        self._lazy_ops: list[tuple[str, tuple]] = []  # replayed if the commit carrying them fails
        self._lazy_since: Optional[float] = None
        self.lazy_events = 0  # events whose completion is among the lazy writes
        self.rollbacks = 0  # bumped whenever uncommitted writes may have been thrown away
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._open()
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
            if version > SCHEMA_VERSION:
                raise JournalError(f"{self.path}: journal schema {version} is newer than this agent's ({SCHEMA_VERSION}); "
                                   "upgrade the agent, or move the journal aside")
            if version < SCHEMA_VERSION and "events" in tables:
                self._db.close()
                migrate_v1(self.path)
                self._db = self._open()
                tables = set()
            if not {"events", "jobs", "alerts", "timers", "rejected"} <= tables:
                self._db.executescript(SCHEMA)
            if version != SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise JournalError(f"{self.path}: {e}") from e

    @property
    def lock(self) -> threading.RLock:
        """Held by every journal call; hold it to make a call and what follows it atomic to readers."""
        return self._lock

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10)
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # takes effect only on a new file
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise JournalError(f"{self.path}: cannot switch to WAL (got {mode})")
        db.execute("PRAGMA synchronous=FULL")
        return db

    # -- plumbing -------------------------------------------------------
    def _tx(self, fn, *args, durable: bool = True):
        """Run ``fn(db, *args)`` atomically; durable: commit it (and any lazy writes) with an fsync."""
        with self._lock:
            db = self._db
            try:
                if not db.in_transaction:
                    db.execute("BEGIN IMMEDIATE")
                db.execute("SAVEPOINT op")
                mark = len(self._lazy_ops)
                try:
                    out = fn(db, *args)
                    db.execute("RELEASE op")
                except BaseException:
                    del self._lazy_ops[mark:]
                    self._undo_op()
                    raise
                if durable:
                    self._commit()
                elif self._lazy_since is None:
                    self._lazy_since = time.monotonic()
                return out
            except sqlite3.Error as e:
                raise JournalError(str(e)) from e

    def _undo_op(self) -> None:
        """Undo the current operation only; lazy writes before it stay applied (or are applied again
        when SQLite rolled the whole transaction back, as it may on a full disk)."""
        db = self._db
        try:
            if db.in_transaction:
                db.execute("ROLLBACK TO op")
                db.execute("RELEASE op")
                if not self._lazy_ops:
                    self.rollbacks += 1
                    db.execute("ROLLBACK")
                return
            self.rollbacks += 1  # SQLite rolled the whole transaction back by itself
        except sqlite3.Error:
            self.rollbacks += 1
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
        self._replay_lazy()

    def _commit(self) -> None:
        """COMMIT (FULL). When it fails, nothing of it is kept; the lazy writes are applied again."""
        db = self._db
        try:
            db.execute("COMMIT")
        except sqlite3.Error:
            self.rollbacks += 1
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self._replay_lazy()
            raise
        self._lazy_ops.clear()
        self._lazy_since = None
        self.lazy_events = 0

    def _replay_lazy(self) -> None:
        ops, self._lazy_ops = self._lazy_ops, []
        self._lazy_since = None
        if not ops:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for sql, params in ops:
                self._db.execute(sql, params)
            self._lazy_ops = ops
            self._lazy_since = time.monotonic()
        except sqlite3.Error as e:  # at worst those jobs print again, marked 补打
            self.lazy_events = 0
            log.warning("journal: %d lazy write(s) lost after a failed commit: %s", len(ops), e)
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass

    def _lazy(self, db: sqlite3.Connection, sql: str, params: tuple) -> sqlite3.Cursor:
        cur = db.execute(sql, params)
        self._lazy_ops.append((sql, params))
        return cur

    def flush(self, older_than: float = 0.0) -> bool:
        """Commit lazy writes that have waited ``older_than`` seconds or more; True if it committed."""
        with self._lock:
            if self._lazy_since is None or time.monotonic() - self._lazy_since < older_than:
                return False
            if not self._db.in_transaction:
                self._lazy_ops.clear()
                self._lazy_since = None
                self.lazy_events = 0
                return False
            try:
                self._commit()
            except sqlite3.Error as e:
                raise JournalError(str(e)) from e
            return True

    def _read(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as e:
                raise JournalError(str(e)) from e

    def close(self) -> None:
        with self._lock:
            try:
                self.flush()
            except JournalError as e:
                log.warning("journal: final flush failed: %s", e)
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
        arm: bool = False,
        durable: bool = True,
        before_commit: Callable[[], None] = lambda: None,
        now: Optional[float] = None,
    ) -> Intake:
        """Store an accepted event and its print jobs ``[(document, printer), ...]`` in one durable
        transaction. ``arm``: its jobs are stored as an attempt already begun (``printing``), so the
        printer it is meant for, idle and ready, can send them without another commit.
        ``durable=False`` (intake batching): left in the open transaction for the next durable
        commit; the caller must not acknowledge it before then (see ``rollbacks``)."""
        now = time.time() if now is None else now
        if len(documents) >= JOB_SLOTS:
            raise ValueError(f"at most {JOB_SLOTS - 1} tickets per event (got {len(documents)})")

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
                (event_id, order_id, type_, status, now, final, _pack(payload), reason if status != "queued" else None),
            )
            seq = cur.lastrowid
            ids: tuple[int, ...] = ()
            if status == "queued":
                ids = tuple(seq * JOB_SLOTS + n for n in range(len(documents)))
                state, attempts = ("printing", 1) if arm else ("queued", 0)
                db.executemany(
                    "INSERT INTO jobs(id, event_seq, document, printer, state, attempts, reprint, created_at, updated_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?)",
                    [(i, seq, doc, printer, state, attempts, int(reprint), now, now) for i, (doc, printer) in zip(ids, documents)],
                )
            if status == "queued":
                before_commit()  # e.g. render the receipt while the commit writes and syncs
            return Intake(status, seq, reason, ids if arm else ())

        if arm and not durable:
            raise ValueError("armed jobs must be committed at once")
        return self._tx(tx, durable=durable)

    def commit(self) -> None:
        """Commit whatever is pending (batched events, lazy writes) durably."""
        with self._lock:
            if self._db.in_transaction:
                try:
                    self._commit()
                except sqlite3.Error as e:
                    raise JournalError(str(e)) from e
            self._lazy_ops.clear()
            self._lazy_since = None
            self.lazy_events = 0

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
    _OPEN = "j.state IN ('queued','printing')"

    @staticmethod
    def _job(row: tuple) -> Job:
        return Job(*row[:9], bool(row[9]), _unpack(row[10]))

    def next_job(self, printer: str, also: tuple[str, ...] = (), skip: tuple[int, ...] = ()) -> Optional[Job]:
        """The oldest open job of ``printer`` (or of the printers in ``also``, for a backup taking over)."""
        names = (printer, *also)
        where = f"WHERE {self._OPEN} AND j.printer IN ({','.join('?' * len(names))})"
        if skip:
            where += f" AND j.id NOT IN ({','.join('?' * len(skip))})"
        rows = self._read(self._JOB_SQL + where + " ORDER BY j.id LIMIT 1", (*names, *skip))
        return self._job(rows[0]) if rows else None

    def open_jobs(self, printer: Optional[str] = None) -> list[Job]:
        where = f"WHERE {self._OPEN}" + (" AND j.printer=?" if printer else "")
        rows = self._read(self._JOB_SQL + where + " ORDER BY j.id", (printer,) if printer else ())
        return [self._job(r) for r in rows]

    def reassign_orphans(self, printers: list[str], to: str, now: Optional[float] = None,
                         armed: Iterable[int] = ()) -> int:
        """Open jobs for printers no longer configured move to ``to`` (a 'printing' one stays a reprint,
        unless it is only ``armed``: marked by this process, nothing sent)."""
        now = time.time() if now is None else now
        marks = ",".join("?" * len(printers))
        armed = tuple(armed)
        unsent = f"id IN ({','.join('?' * len(armed))})" if armed else "0"

        def tx(db: sqlite3.Connection) -> int:
            return db.execute(
                f"UPDATE jobs SET printer=?, updated_at=?, "
                f"state=CASE WHEN {unsent} THEN 'queued' ELSE state END, "
                f"reprint=CASE WHEN state='printing' AND NOT {unsent} THEN 1 ELSE reprint END "
                f"WHERE state IN ('queued','printing') AND printer NOT IN ({marks})",
                (to, now, *armed, *armed, *printers),
            ).rowcount

        return self._tx(tx)

    def open_job_counts(self) -> dict[str, int]:
        """Open jobs per printer (health and status: no payloads read)."""
        return {p: n for p, n in self._read(
            f"SELECT printer, COUNT(*) FROM jobs j WHERE {self._OPEN} GROUP BY printer")}

    def begin_attempt(
        self, job_id: int, now: Optional[float] = None, printer: Optional[str] = None, *,
        armed: Iterable[int] = (), siblings: Iterable[str] = (), ahead: int = 0,
    ) -> Job:
        """Durably mark a job ``printing`` (on ``printer``, when a backup takes it over) before any byte
        is sent; the returned job says whether it is a reprint.

        ``armed``: ids whose ``printing`` state this process set without sending anything yet (not
        an interrupted attempt: no 补打). ``siblings``: the printers whose other open jobs of the
        same event are marked in the same commit (they print next, without a commit of their own),
        and up to ``ahead`` jobs queued behind them; their ids are in the returned job's ``siblings``.
        """
        now = time.time() if now is None else now
        armed = set(armed)
        names = tuple(siblings)

        def tx(db: sqlite3.Connection) -> Job:
            state, attempts, reprint, owner, seq = db.execute(
                "SELECT state, attempts, reprint, printer, event_seq FROM jobs WHERE id=?", (job_id,)
            ).fetchone()
            target = printer or owner
            rows = [(job_id, state, reprint)]
            if names:
                # the rest of this event, and up to `ahead` more jobs queued behind it
                rows += db.execute(
                    f"SELECT id, state, reprint FROM jobs j WHERE id > ? AND {self._OPEN} "
                    f"AND printer IN ({','.join('?' * len(names))}) ORDER BY id LIMIT ?",
                    (job_id, *names, JOB_SLOTS + ahead),
                ).fetchall()
                rows = [r for r in rows if r[0] < (seq + 1) * JOB_SLOTS] + [r for r in rows if r[0] >= (seq + 1) * JOB_SLOTS][:ahead]
            for jid, st, rp in rows:
                # a job already 'printing' and not armed here was interrupted after bytes may have left
                rp = bool(rp) or (st == "printing" and jid not in armed)
                db.execute(
                    "UPDATE jobs SET state='printing', attempts=attempts+?, reprint=?, printer=?, updated_at=? WHERE id=?",
                    (1 if jid == job_id else 0, int(rp), target, now, jid),
                )
            job = self._job(db.execute(self._JOB_SQL + "WHERE j.id=?", (job_id,)).fetchone())
            return replace(job, siblings=tuple(r[0] for r in rows[1:]))

        return self._tx(tx)

    def attempt_not_sent(self, job_id: int | Iterable[int], error: str, now: Optional[float] = None) -> None:
        """The attempt failed before any byte reached the printer: back to ``queued``, no reprint implied."""
        now = time.time() if now is None else now
        ids = [job_id] if isinstance(job_id, int) else list(job_id)
        self._tx(
            lambda db: db.executemany(
                "UPDATE jobs SET state='queued', error=?, updated_at=? WHERE id=? AND state='printing'",
                [(error, now, i) for i in ids],
            )
        )

    def note_error(self, job_id: int, error: str, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        self._tx(lambda db: self._lazy(db, "UPDATE jobs SET error=?, updated_at=? WHERE id=?", (error, now, job_id)),
                 durable=False)

    def finish_job(
        self, job_id: int, state: str, error: Optional[str] = None, now: Optional[float] = None
    ) -> Optional[EventDone]:
        """Mark a job ``printed`` or ``failed`` (a lazy write); returns the event outcome when this was
        its last open job."""
        if state not in ("printed", "failed"):
            raise ValueError(f"not a final job state: {state}")
        now = time.time() if now is None else now

        def tx(db: sqlite3.Connection) -> Optional[EventDone]:
            self._lazy(
                db,
                "UPDATE jobs SET state=?, error=?, updated_at=?, printed_at=CASE WHEN ?='printed' THEN ? END WHERE id=?",
                (state, error, now, state, now, job_id),
            )
            return self._finish_event(db, job_id // JOB_SLOTS, now)

        return self._tx(tx, durable=False)

    def _finish_event(self, db: sqlite3.Connection, seq: int, now: float) -> Optional[EventDone]:
        jobs = db.execute(
            "SELECT document, printer, state, reprint, error FROM jobs WHERE id >= ? AND id < ? ORDER BY id",
            (seq * JOB_SLOTS, (seq + 1) * JOB_SLOTS),
        ).fetchall()
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
        self._lazy(db, "UPDATE events SET status=?, finished_at=?, error=? WHERE seq=?", (status, now, error, seq))
        self.lazy_events += 1
        return _event_done(event_id, order_id, status, error, jobs)

    def order_payload(self, order_id: str) -> Optional[bytes]:
        """The newest order.created payload of an order (printed, failed or expired alike), for reprints."""
        rows = self._read(
            "SELECT payload FROM events WHERE order_id=? AND type='order.created' "
            "AND status IN ('queued','printed','failed','expired') ORDER BY seq DESC LIMIT 1", (order_id,))
        return _unpack(rows[0][0]) if rows else None

    # -- local timers ---------------------------------------------------
    def timer_fired(self, key: str, default: Optional[float] = None) -> Optional[float]:
        rows = self._read("SELECT fired_at FROM timers WHERE key=?", (key,))
        return rows[0][0] if rows else default

    def mark_timer(self, key: str, fired_at: float) -> None:
        self._tx(lambda db: db.execute(
            "INSERT INTO timers(key, fired_at) VALUES (?,?) ON CONFLICT(key) DO UPDATE SET fired_at=excluded.fired_at",
            (key, fired_at)))

    def _recent(self, sql: str, params: tuple, since: float) -> list[tuple]:
        """Rows of ``sql`` (whose first column is received_at), newest first, back to ``since``.

        Events are stored in arrival order, so this walks back from the newest one instead of keeping a
        time index (one page less written per order); a clock set back by up to ``CLOCK_SLACK_S`` is
        tolerated."""
        out = []
        with self._lock:
            try:
                for row in self._db.execute(sql + " ORDER BY seq DESC", params):
                    if row[0] <= since - CLOCK_SLACK_S:
                        break
                    if row[0] > since:
                        out.append(row)
            except sqlite3.Error as e:
                raise JournalError(str(e)) from e
        return out

    def recent_created(self, since: float) -> list[tuple[float, bytes, str]]:
        """(received_at, payload, order_id) of accepted order.created events since ``since``, oldest first."""
        rows = self._recent("SELECT received_at, payload, order_id, type, status FROM events", (), since)
        return [(r[0], _unpack(r[1]), r[2]) for r in reversed(rows)
                if r[3] == "order.created" and r[4] in ("queued", "printed")]

    def orders_with(self, types: tuple[str, ...], since: float) -> set[str]:
        rows = self._recent("SELECT received_at, order_id, type FROM events", (), since)
        return {r[1] for r in rows if r[2] in types}

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
        """The broker confirmed (PUBACK) the final results of these events (a lazy write)."""
        ids = [(e,) for e in event_ids]
        if ids:
            self._tx(lambda db: [self._lazy(db, "UPDATE events SET reported=1 WHERE event_id=?", i) for i in ids],
                     durable=False)

    def unreported(self, limit: int = 1000) -> list[EventDone]:
        """Finished events whose final result the broker never confirmed (e.g. the agent was killed)."""
        rows = self._read(
            "SELECT seq, event_id, order_id, status, error FROM events WHERE reported=0 "
            "AND status IN ('printed','failed','duplicate','expired') ORDER BY seq LIMIT ?",
            (limit,),
        )
        out = []
        for seq, event_id, order_id, status, error in rows:
            jobs = self._read("SELECT document, printer, state, reprint FROM jobs WHERE id >= ? AND id < ? ORDER BY id",
                              (seq * JOB_SLOTS, (seq + 1) * JOB_SLOTS))
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
        rows = self._read(f"SELECT MIN(created_at) FROM jobs j WHERE {self._OPEN}")
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

        Events with open jobs are never deleted. Returns the number of events removed. Freed pages
        are reused by new events (the file keeps its size).
        """
        now = time.time() if now is None else now
        cutoff = now - keep_days * 86400
        final = f"status IN ({','.join(repr(s) for s in FINAL_EVENT_STATES)})"

        def delete_events(db: sqlite3.Connection, where: str, params: tuple) -> int:
            seqs = [r[0] for r in db.execute(f"SELECT seq FROM events WHERE {where}", params)]
            db.executemany("DELETE FROM jobs WHERE id >= ? AND id < ?", [(s * JOB_SLOTS, (s + 1) * JOB_SLOTS) for s in seqs])
            db.executemany("DELETE FROM events WHERE seq=?", [(s,) for s in seqs])
            return len(seqs)

        def by_age(db: sqlite3.Connection) -> int:
            n = delete_events(db, f"{final} AND received_at < ?", (cutoff,))
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
                n = delete_events(
                    db, f"seq IN (SELECT seq FROM events WHERE {final} AND reported=1 ORDER BY seq LIMIT ?)", (batch,))
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
                if self._db.in_transaction:  # lazy writes since: a checkpoint cannot run inside a transaction
                    self._commit()
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the WAL file is reused, not regrown
            except sqlite3.Error as e:
                log.warning("journal checkpoint failed: %s", e)
        return removed


def migrate_v1(path: Path) -> None:
    """Rewrite a schema-1 journal (4 KiB pages, AUTOINCREMENT ids, plain payloads) as schema 2.

    The new file is built beside the old one and renamed over it; the old one is kept as
    ``<name>.v1`` until the next migration. Open jobs keep their state (a ``printing`` one stays a
    reprint), and an event's jobs keep their order.
    """
    tmp = path.with_name(path.name + ".v2-tmp")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    old = sqlite3.connect(str(path), isolation_level=None)
    try:
        old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        new = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            new.execute(f"PRAGMA page_size={PAGE_SIZE}")
            new.executescript(SCHEMA)
            new.execute("BEGIN")
            for seq, event_id, order_id, type_, status, received_at, finished_at, payload, error, reported in old.execute(
                "SELECT seq, event_id, order_id, type, status, received_at, finished_at, payload, error, reported "
                "FROM events ORDER BY seq"
            ):
                new.execute(
                    "INSERT INTO events(seq, event_id, order_id, type, status, received_at, finished_at, payload, error, reported) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (seq, event_id, order_id, type_, status, received_at, finished_at, _pack(payload), error, reported),
                )
                jobs = old.execute(
                    "SELECT document, printer, state, attempts, reprint, created_at, updated_at, printed_at, error "
                    "FROM jobs WHERE event_seq=? ORDER BY id", (seq,)).fetchall()
                new.executemany(
                    "INSERT INTO jobs(id, event_seq, document, printer, state, attempts, reprint, created_at, updated_at, "
                    "printed_at, error) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [(seq * JOB_SLOTS + n, seq, *row) for n, row in enumerate(jobs[: JOB_SLOTS - 1])],
                )
            for table, cols in (("alerts", "id, open, updated_at, body"), ("timers", "key, fired_at"),
                                ("rejected", "id, received_at, sha256, reason, size, payload")):
                rows = old.execute(f"SELECT {cols} FROM {table}").fetchall()
                new.executemany(f"INSERT INTO {table}({cols}) VALUES ({','.join('?' * len(cols.split(',')))})", rows)
            new.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            new.execute("COMMIT")
            new.execute("PRAGMA journal_mode=WAL")
        finally:
            new.close()
    finally:
        old.close()
    os.replace(path, path.with_name(path.name + ".v1"))
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(tmp, path)
    fd = os.open(str(path.parent), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    log.warning("journal: migrated %s to schema %d (the old file is kept as %s.v1)", path, SCHEMA_VERSION, path.name)
