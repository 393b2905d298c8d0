"""The order journal: SQLite in ``state_dir`` (WAL, ``synchronous=FULL``), with one writer thread.

The four rules, and the code that enforces each
------------------------------------------------

1. **Acknowledged => committed.** An order event is acknowledged to the broker only in the
   completion of the commit that holds it (``OrderIntake._stored`` is that completion). The writer
   completes an operation only after ``COMMIT`` returned; a batch that fails (a statement, a lost
   transaction, the ``COMMIT`` itself) fails *every* operation in it, so an event in it is never
   acknowledged and the intake asks the broker to send it again. Enforced by ``_Writer._run_batch``.
2. **Sent => a durable ``printing`` mark first.** A job's bytes leave only after a committed
   ``printing`` state: ``begin_attempt`` (a durable operation the worker waits for), or an *armed*
   job, whose ``printing`` state was committed by an earlier operation of this process (at intake,
   or beside its event's first job) and which nobody has sent since. An arming becomes takeable only
   in the completion of its commit (``_arming_done``), and ``take_armed`` hands it to exactly one
   sender: the only way to send without waiting for a commit.
3. **No unmarked double.** A job found in ``printing`` that this process did not mark with nothing
   sent (``_take_fresh``: armed, being armed, or on its way back) may have reached paper:
   ``begin_attempt`` marks its next attempt ``reprint`` (补打), in SQL. Job states only move forward
   (``queued -> printing -> printed | failed``), checked by the ``WHERE state`` of every ``UPDATE``;
   the one step back, ``printing -> queued``, is ``unarm``: only for jobs nothing was sent of, and its
   write touches only the ids still on their way back when it is applied (an attempt begun meanwhile
   keeps its job). Automatic attempts stop after two that may have reached paper (``MAX_UNCERTAIN``):
   a person asks for more (``reprint``).
4. **No false 补打.** ``printing`` after a restart is the only source of 补打, so nothing is left
   ``printing`` that was not sent: a clean ``close()`` stops arming, commits what was queued and
   un-arms every armed job; a worker whose printer is not ready (or whose send failed before any byte
   left) un-arms its own; an idle printer gets at most one order armed at a time (``PrintWorker.ready``).

How writes work
---------------

Every write is an operation (a function of the write connection) handed to the writer thread,
which owns the only write connection. It takes whatever is queued, applies it in one
transaction (each operation inside its own savepoint), commits, and only then completes each
operation: its ``done(result, error)`` callback runs on the writer thread and must not wait for
the journal (submitting more is fine); a caller that waits gets the result (or ``JournalError``).
That is group commit: a burst of orders shares one fsync without anyone holding a transaction
open. Reads use per-thread connections and see committed state only.

*Lazy* operations (a job's outcome, "result delivered", un-arming) have no waiter: they ride on
the next commit or are committed within ``LAZY_S``; if their batch fails they stay queued and are
tried again with the next one. A job whose outcome is not committed yet is *settling*: no worker
takes it again meanwhile. Lost with the process (a power cut), its job is still ``printing`` and
prints again marked 补打, and its result is sent again.

Dedupe: an event id, and the order id of a printed ``order.created``, are kept in ``dedupe`` for
``dedupe_days`` after their rows are pruned, so a re-sent event never prints as new.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
PAGE_SIZE = 1024  # small pages: a commit appends whole pages to the WAL (bytes written per order)
JOB_SLOTS = 64  # a job's id is its event's seq * JOB_SLOTS + n: an event's jobs are one rowid range
MAX_UNCERTAIN = 2  # automatic attempts that may have reached paper (the first copy and one 补打)
LAZY_S = 2.0  # lazy operations are committed at the latest this long after they were queued

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
    printer      TEXT NOT NULL,        -- the printer it is meant for (never rewritten by a takeover)
    state        TEXT NOT NULL,        -- queued -> printing -> printed | failed
    attempts     INTEGER NOT NULL DEFAULT 0,  -- durable printing marks (un-arming takes one back)
    reprint      INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    printed_at   REAL,
    error        TEXT,
    printed_on   TEXT                  -- the printer that sent it (a backup, during a takeover)
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
CREATE TABLE IF NOT EXISTS dedupe (
    key          TEXT PRIMARY KEY,     -- 'e:' event id -> its final status; 'o:' order id -> first event id
    value        TEXT NOT NULL,
    at           REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS printers (
    name         TEXT PRIMARY KEY,     -- what is known of each printer across restarts
    caps         TEXT,                 -- the last probe's result (JSON)
    paper_mm     REAL NOT NULL DEFAULT 0,  -- paper used since the roll was loaded
    loaded_at    REAL,                 -- when the roll was loaded (NULL: not known)
    mm_per_roll  REAL,                 -- learnt: paper used when the near-end sensor last tripped
    updated_at   REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stats (
    day          TEXT NOT NULL,        -- local date, YYYY-MM-DD: the report's figures, kept after orders are pruned
    key          TEXT NOT NULL,        -- e.g. 'orders:meituan', 'paid:meituan', 'tickets:receipt', 'fault_s:paper_out'
    n            REAL NOT NULL,
    PRIMARY KEY (day, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stat_samples (
    day          TEXT NOT NULL,
    kind         TEXT NOT NULL,        -- 'to_paper_s' (arrival to paper), 'ack_s' (alert raised to acknowledged)
    value        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS stat_samples_day ON stat_samples(day, kind);
CREATE TABLE IF NOT EXISTS followups (
    order_id     TEXT PRIMARY KEY,     -- a follow-up call recorded (agent/followups.py)
    outcome      TEXT NOT NULL,        -- reached | no_answer | declined
    at           REAL NOT NULL
) WITHOUT ROWID;
"""

OPEN_JOB_STATES = ("queued", "printing")
CLOCK_SLACK_S = 3600.0
FINAL_EVENT_STATES = ("printed", "failed", "duplicate", "expired")
TABLES = {"events", "jobs", "alerts", "timers", "rejected", "dedupe", "printers", "stats", "stat_samples", "followups"}


class JournalError(Exception):
    """The journal could not durably store or read something."""


@dataclass(frozen=True)
class Intake:
    """What the journal decided for an incoming event."""

    status: str  # queued | duplicate | expired | printed (nothing to print) | an earlier status (redelivered)
    seq: Optional[int]
    reason: Optional[str] = None
    armed: tuple[int, ...] = ()  # job ids stored as an attempt already begun (record_event(arm_for=...))
    redelivered: bool = False  # the same event id was received before: this is its current status


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
    siblings: tuple[int, ...] = ()  # begin_attempt: the jobs armed in the same commit


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
    waited_s: Optional[float] = None  # from arrival to the last job's end (set when it just finished, for the stats)
    type: str = ""


Done = Callable[[Any, Optional[BaseException]], None]


def _event_done(event_id: str, order_id: Optional[str], status: str, error: Optional[str], jobs: list[tuple]) -> EventDone:
    """Jobs as (document, printer, state, reprint, ...) rows; printer = printed_on or printer."""
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


class _Op:
    __slots__ = ("fn", "done", "lazy", "future", "raw")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], done: Optional[Done], lazy: bool, raw: bool) -> None:
        self.fn, self.done, self.lazy, self.raw = fn, done, lazy, raw
        self.future: Future = Future()


class _Writer:
    """The writer thread: the only user of the write connection (see the module docstring)."""

    def __init__(self, db: sqlite3.Connection, name: str, on_commit: Callable[[Optional[str]], None]) -> None:
        self.db = db
        self.on_commit = on_commit  # None after a good commit, the error after a failed one
        self._ops: deque[_Op] = deque()
        self._cv = threading.Condition()
        self._lazy_since: Optional[float] = None
        self._closing = False
        self._crashed = False
        self._busy = False  # a batch is being applied
        self.thread = threading.Thread(target=self._loop, name=f"journal-{name}", daemon=True)

    def submit(self, op: _Op) -> None:
        with self._cv:
            if self._closing:
                raise JournalError("the journal is closed")
            self._ops.append(op)
            if not op.lazy:
                self._cv.notify_all()  # (wait_quiet may wait on the same condition)
            elif self._lazy_since is None:
                self._lazy_since = time.monotonic()
                self._cv.notify_all()  # the writer now waits at most LAZY_S

    def _take(self) -> Optional[list[_Op]]:
        """Wait for work: a durable operation, due lazy ones, or the end. None = the thread ends."""
        with self._cv:
            while True:
                if self._crashed:
                    return None
                if self._ops and (self._closing or any(not op.lazy for op in self._ops)):
                    break
                if self._ops and self._lazy_since is not None and time.monotonic() - self._lazy_since >= LAZY_S:
                    break
                if self._closing:
                    return None
                wait = None if self._lazy_since is None else max(0.0, LAZY_S - (time.monotonic() - self._lazy_since))
                self._cv.wait(wait)
            raw = next((op for op in self._ops if op.raw), None)
            if raw is not None:  # outside any transaction, alone, ahead of the rest (lazy writes that keep
                self._ops.remove(raw)  # failing on a full card must never hold it back: no busy loop)
                batch = [raw]
            else:
                batch = list(self._ops)
                self._ops.clear()
            if not any(op.lazy for op in self._ops):
                self._lazy_since = None
            self._busy = True
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                if batch[0].raw:
                    self._run_raw(batch[0])
                else:
                    self._run_batch(batch)
            except BaseException as e:  # noqa: BLE001 - the writer must not die; nothing of it is acknowledged
                log.exception("journal writer: unexpected error")
                for op in batch:
                    if not op.future.done():
                        self._fail(op, e)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def wait_quiet(self, timeout: float = 10.0) -> bool:
        """Wait until nothing but lazy operations is queued and no batch is being applied."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._busy or any(not op.lazy for op in self._ops):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def _run_raw(self, op: _Op) -> None:
        try:
            out = op.fn(self.db)
        except Exception as e:  # noqa: BLE001
            self._fail(op, e)
            return
        self._complete(op, out)

    def _run_batch(self, batch: list[_Op]) -> None:
        db = self.db
        results: list[tuple[_Op, Any, Optional[BaseException]]] = []
        lost: Optional[BaseException] = None  # the transaction is gone: every operation in it fails
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            lost = e
        if lost is None:
            for op in batch:
                try:
                    db.execute("SAVEPOINT op")
                    out = op.fn(db)
                    db.execute("RELEASE op")
                    results.append((op, out, None))
                except Exception as e:  # noqa: BLE001 - this operation fails; the others may stand
                    results.append((op, None, e))
                    if not self._undo_one():
                        lost = e  # SQLite rolled the whole transaction back (IOERR, FULL, NOMEM, BUSY ...)
                        break
        if lost is None:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as e:
                lost = e
        if lost is not None:
            self._rollback()
            log.error("journal: a commit of %d operation(s) failed: %s", len(batch), lost)
            bugs = {id(op) for op, _, err in results if err is not None and not isinstance(err, sqlite3.Error)}
            self._report(str(lost))
            self._retry([op for op in batch if op.lazy and id(op) not in bugs])
            for op in batch:
                if not op.lazy or id(op) in bugs:
                    self._fail(op, lost if id(op) not in bugs else next(e for o, _, e in results if o is op))
            return
        self._report(None)
        self._retry([op for op, _, err in results if err is not None and op.lazy and isinstance(err, sqlite3.Error)])
        for op, out, err in results:
            if err is None:
                self._complete(op, out)
            elif not (op.lazy and isinstance(err, sqlite3.Error)):
                self._fail(op, err)

    def _retry(self, ops: list[_Op]) -> None:
        """Lazy operations whose write failed are tried again first, in their order (not at close)."""
        if not ops:
            return
        with self._cv:
            if self._closing:
                for op in ops:
                    self._fail(op, JournalError("not stored before the journal closed"))
                return
            self._ops.extendleft(reversed(ops))
            if self._lazy_since is None:
                self._lazy_since = time.monotonic()
                self._cv.notify_all()  # (wait_quiet may wait on the same condition)

    def _undo_one(self) -> bool:
        """Undo the failed operation only; False when the transaction itself is gone."""
        db = self.db
        if not db.in_transaction:
            return False
        try:
            db.execute("ROLLBACK TO op")
            db.execute("RELEASE op")
        except sqlite3.Error:
            return False
        return db.in_transaction

    def _rollback(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _report(self, error: Optional[str]) -> None:
        try:
            self.on_commit(error)
        except Exception:  # noqa: BLE001
            log.exception("journal: commit listener failed")

    @staticmethod
    def _complete(op: _Op, out: Any) -> None:
        op.future.set_result(out)
        if op.done is not None:
            try:
                op.done(out, None)
            except Exception:  # noqa: BLE001 - one completion never breaks another
                log.exception("journal: completion failed")

    @staticmethod
    def _fail(op: _Op, error: BaseException) -> None:
        err = error if isinstance(error, JournalError) else (
            JournalError(str(error)) if isinstance(error, sqlite3.Error) else error)
        if not op.future.done():
            op.future.set_exception(err)
        if op.done is not None:
            try:
                op.done(None, err)
            except Exception:  # noqa: BLE001
                log.exception("journal: completion failed")

    def close(self, crash: bool = False) -> None:
        with self._cv:
            self._closing = True
            self._crashed = crash
            self._cv.notify_all()  # (wait_quiet may wait on the same condition)
        if threading.current_thread() is not self.thread:
            self.thread.join(30)
        with self._cv:
            left, self._ops = list(self._ops), deque()
        for op in left:  # only after a crash (or a writer that would not end)
            if not op.future.done():
                op.future.set_exception(JournalError("the journal was closed before this was stored"))


class Journal:
    """See the module docstring."""

    LAZY_S = LAZY_S

    def __init__(self, path: str | Path, *, max_rejected_bytes: int = 65536, dedupe_days: int = 30,
                 on_commit: Callable[[Optional[str]], None] = lambda error: None) -> None:
        self.path = Path(path)
        self.max_rejected_bytes = max_rejected_bytes
        self.dedupe_days = dedupe_days
        self.on_commit = on_commit  # told after every commit: None (ok) or the error
        self._arming: dict[int, str] = {}  # job id -> printer: armed by the batch being applied
        self._armed: dict[int, str] = {}  # job id -> the printer it was armed for; see take_armed
        self._unarming: set[int] = set()  # un-armed, their way back to queued not yet committed
        self._no_arming = False  # closing: nothing more is armed
        self._settling: set[int] = set()  # jobs whose outcome is queued but not committed yet
        self._mem_lock = threading.Lock()
        self._stats_pending: Optional[tuple[dict[tuple[str, str], float], list[tuple[str, str, float]]]] = None  # stats_add
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(self.path)
            db = _open(self.path)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
            if version > SCHEMA_VERSION:
                db.close()
                raise JournalError(f"{self.path}: journal schema {version} is newer than this agent's ({SCHEMA_VERSION}); "
                                   "upgrade the agent (never delete the journal: it may hold unprinted orders)")
            if version < 2 and "events" in tables:
                db.close()
                migrate_v1(self.path)
                db = _open(self.path)
                version = SCHEMA_VERSION
            if version in (2, 3) and "events" in tables:
                _upgrade(db)
            elif not TABLES <= tables:
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise JournalError(f"{self.path}: {e}") from e
        self._writer = _Writer(db, self.path.stem, self._committed)
        self._writer.thread.start()

    def _committed(self, error: Optional[str]) -> None:
        self.on_commit(error)

    # -- plumbing -------------------------------------------------------
    def submit(self, fn: Callable[[sqlite3.Connection], Any], *, done: Optional[Done] = None,
               lazy: bool = False, raw: bool = False) -> Future:
        """Hand ``fn(write_connection)`` to the writer. ``done(result, error)`` runs on the writer thread
        after the commit (or its failure). ``lazy``: no hurry (see the module docstring). ``raw``: run
        outside any transaction (a checkpoint)."""
        op = _Op(fn, done, lazy, raw)
        self._writer.submit(op)
        return op.future

    def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in the next commit and wait for it; raises ``JournalError`` if it was not stored."""
        return self._wait(self.submit(fn))

    def _wait(self, fut: Future) -> Any:
        if threading.current_thread() is self._writer.thread:
            raise RuntimeError("a journal completion must not wait for the journal (it runs on the writer)")
        try:
            return fut.result()
        except sqlite3.Error as e:
            raise JournalError(str(e)) from e

    def _write(self, fn: Callable[[sqlite3.Connection], Any], done: Optional[Done], wait: bool = True) -> Any:
        """Wait for ``fn``'s commit (its result, or ``JournalError``) unless ``wait`` is False; ``done``
        runs on the writer thread after the commit either way."""
        fut = self.submit(fn, done=done)
        return self._wait(fut) if wait else None

    def flush(self) -> None:
        """Commit whatever is queued (lazy writes included) now, and wait for it."""
        self.call(lambda db: None)

    def wait_quiet(self, timeout: float = 10.0) -> bool:
        """Tests and diagnostics: wait until the writer has applied everything but lazy writes."""
        return self._writer.wait_quiet(timeout)

    def commit_soon(self) -> None:
        """Commit the lazy writes with the next batch, without waiting (the end of a burst)."""
        try:
            self.submit(lambda db: None)
        except JournalError:
            pass

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10)
            db.execute("PRAGMA query_only=1")
            self._local.db = db
            with self._mem_lock:
                self._readers.append(db)
        return db

    def _read(self, sql: str, params: Iterable = ()) -> list[tuple]:
        """A read of committed state on this thread's own connection (never touches a write)."""
        try:
            return self._db().execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as e:
            raise JournalError(str(e)) from e

    def close(self) -> bool:
        """A clean stop: armed jobs nothing was sent of go back to ``queued``, everything queued is
        committed, then the connections close. False when the last commit failed (a full or failing
        card): then the stop is, for the journal, a crash, and armed tickets print marked 补打."""
        with self._mem_lock:
            self._no_arming = True
        ok = True
        for step in ("flush", "unarm", "flush"):  # armings queued are committed (and become armed), then un-armed
            try:
                getattr(self, step)()
                ok = True
            except (JournalError, RuntimeError) as e:
                ok = False
                log.warning("journal: %s at close failed: %s", step, e)
        if not ok:
            log.error("journal: closed without its last commit: tickets marked for printing but not sent will "
                      "print marked 补打 after the restart")
        self._shutdown(crash=False)
        return ok

    def crash(self) -> None:
        """Tests: stop as a killed process would: nothing queued is committed, nothing un-armed."""
        self._shutdown(crash=True)

    def _shutdown(self, crash: bool) -> None:
        self._writer.close(crash=crash)
        for db in [self._writer.db, *self._readers]:
            try:
                db.close()
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
        arm_for: Optional[str] = None,
        done: Optional[Done] = None,
        now: Optional[float] = None,
    ) -> Optional[Intake]:
        """Store an accepted event and its print jobs ``[(document, printer), ...]`` in one commit.

        ``arm_for``: the printer, idle and ready, that will print them next: they are stored as an
        attempt already begun (``printing``, armed), so it sends them without another commit.
        The same event id again is answered with its current status (``redelivered``)."""
        now = time.time() if now is None else now
        if len(documents) >= JOB_SLOTS:
            raise ValueError(f"at most {JOB_SLOTS - 1} tickets per event (got {len(documents)})")

        def tx(db: sqlite3.Connection) -> Intake:
            row = db.execute("SELECT seq, status, error FROM events WHERE event_id=?", (event_id,)).fetchone()
            if row:
                return Intake(row[1], row[0], row[2], redelivered=True)
            row = db.execute("SELECT value FROM dedupe WHERE key=?", ("e:" + event_id,)).fetchone()
            if row:
                return Intake(row[0], None, None, redelivered=True)
            status, reason = ("expired", "order.expires_at has passed") if expired else ("queued", None)
            if type_ == "order.created":
                prior = db.execute(
                    "SELECT event_id FROM events WHERE order_id=? AND type='order.created' "
                    "AND status IN ('queued','printed') LIMIT 1", (order_id,)).fetchone() or db.execute(
                    "SELECT value FROM dedupe WHERE key=?", ("o:" + str(order_id),)).fetchone()
                if prior:
                    status, reason = "duplicate", f"order {order_id} already received as {prior[0]}"
            if status == "queued" and not documents:
                status = "printed"
            cur = db.execute(
                "INSERT INTO events(event_id, order_id, type, status, received_at, finished_at, payload, error) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (event_id, order_id, type_, status, now, now if status != "queued" else None, _pack(payload),
                 reason if status != "queued" else None),
            )
            seq = cur.lastrowid
            if status != "queued":
                return Intake(status, seq, reason)
            ids = tuple(seq * JOB_SLOTS + n for n in range(len(documents)))
            arm = arm_for if not self._no_arming else None
            state, attempts = ("printing", 1) if arm else ("queued", 0)
            db.executemany(
                "INSERT INTO jobs(id, event_seq, document, printer, state, attempts, reprint, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                [(i, seq, doc, printer, state, attempts, int(reprint), now, now) for i, (doc, printer) in zip(ids, documents)],
            )
            if arm:
                self._arm(ids, arm, box)
            return Intake(status, seq, reason, ids if arm else ())

        box: list[int] = []  # ids armed by this operation: takeable after its commit, forgotten if it fails
        return self._write(tx, self._arming_done(box, done), wait=done is None)

    def record_rejected(self, sha256: str, reason: str, payload: bytes, *, done: Optional[Done] = None,
                        now: Optional[float] = None) -> None:
        """Keep a rejected payload (up to the cap) so nothing sent to the store is lost without trace."""
        now = time.time() if now is None else now
        kept = payload[: self.max_rejected_bytes]
        self._write(lambda db: db.execute(
            "INSERT INTO rejected(received_at, sha256, reason, size, payload) VALUES (?,?,?,?,?)",
            (now, sha256, reason, len(payload), kept)) and None, done, wait=done is None)

    # -- armed jobs (in memory: this process marked them printing and sent nothing of them) ------
    #
    # An id is in at most one of: _arming (its printing mark is in the batch being applied), _armed
    # (committed, nothing sent: takeable) and _unarming (on its way back to queued). All three change
    # under _mem_lock only. A job in none of them that is found printing may have reached paper.

    def _arm(self, ids: Iterable[int], printer: str, box: list[int]) -> None:
        """Writer thread, inside the operation that stores their ``printing`` state. They become takeable
        (``_armed``) only in the completion of its commit, and are forgotten if it fails."""
        with self._mem_lock:
            for i in ids:
                self._arming[i] = printer
                box.append(i)

    def _arming_done(self, box: list[int], done: Optional[Done], took: Optional[dict[int, tuple[str, Optional[str]]]] = None) -> Done:
        """The completion of an arming operation (writer thread, after its commit or its failure)."""
        def finished(out: Any, error: Optional[BaseException]) -> None:
            with self._mem_lock:
                for i in box:
                    printer = self._arming.pop(i, None)
                    if printer is not None and error is None:
                        self._armed[i] = printer
                if error is not None:  # what this operation took is as it was
                    for i, (source, printer) in (took or {}).items():
                        if source == "armed":
                            self._armed[i] = printer
                        elif source == "unarming":
                            self._unarming.add(i)
            if done is not None:
                done(out, error)
        return finished

    def take_armed(self, job_id: int) -> bool:
        """Take an armed job to send it now without a commit of its own; True for exactly one caller.

        Only for a job read (committed) as ``printing``: its mark is durable."""
        with self._mem_lock:
            return self._armed.pop(job_id, None) is not None

    def _take_fresh(self, job_id: int) -> Optional[tuple[str, Optional[str]]]:
        """In ``begin_attempt``'s transaction: was this ``printing`` job marked by this process with
        nothing sent (armed, being armed in this batch, or being un-armed)? Takes it if so."""
        with self._mem_lock:
            if job_id in self._armed:
                return "armed", self._armed.pop(job_id)
            if job_id in self._arming:
                return "arming", self._arming.pop(job_id)
            if job_id in self._unarming:
                self._unarming.discard(job_id)
                return "unarming", None
        return None

    def armed(self, printer: Optional[str] = None) -> tuple[int, ...]:
        """Jobs armed (or being armed) for ``printer`` (or any)."""
        with self._mem_lock:
            return tuple(i for d in (self._armed, self._arming) for i, p in d.items() if printer is None or p == printer)

    def unarm(self, printer: Optional[str] = None, ids: Iterable[int] = (), now: Optional[float] = None) -> int:
        """Armed jobs (of ``printer``, or all) and ``ids`` (taken, but nothing of them was sent) go back
        to ``queued``: a lazy write (nothing was sent, so losing it is harmless). The write touches
        only what is still on its way back when it is applied: an attempt begun meanwhile keeps it."""
        now = time.time() if now is None else now
        with self._mem_lock:
            back = [i for i, p in self._armed.items() if printer is None or p == printer]
            for i in back:
                del self._armed[i]
            back += list(ids)
            self._unarming.update(back)
        if not back:
            return 0
        applied: list[int] = []

        def tx(db: sqlite3.Connection) -> None:
            with self._mem_lock:
                applied[:] = [i for i in back if i in self._unarming]
            db.executemany("UPDATE jobs SET state='queued', attempts=MAX(attempts-1, 0), updated_at=? "
                           "WHERE id=? AND state='printing'", [(now, i) for i in applied])

        def finished(_: Any, error: Optional[BaseException]) -> None:
            if error is None:
                with self._mem_lock:
                    self._unarming.difference_update(applied)

        self.submit(tx, done=finished, lazy=True)
        return len(back)

    def settling(self) -> tuple[int, ...]:
        with self._mem_lock:
            return tuple(self._settling)

    # -- printing -------------------------------------------------------
    _JOB_SQL = (
        "SELECT j.id, j.event_seq, e.event_id, e.order_id, e.type, j.document, j.printer, j.state, "
        "j.attempts, j.reprint, e.payload FROM jobs j JOIN events e ON e.seq = j.event_seq "
    )
    _OPEN = "j.state IN ('queued','printing')"

    @staticmethod
    def _job(row: tuple) -> Job:
        return Job(*row[:9], bool(row[9]), _unpack(row[10]))

    def next_job(self, printer: str, also: tuple[str, ...] = (), skip: Iterable[int] = ()) -> Optional[Job]:
        """The oldest open job of ``printer`` (or of the printers in ``also``, for a backup taking over),
        not in ``skip`` (claimed by a worker) and not settling."""
        names = (printer, *also)
        skip = (*skip, *self.settling())
        where = f"WHERE {self._OPEN} AND j.printer IN ({','.join('?' * len(names))})"
        if skip:
            where += f" AND j.id NOT IN ({','.join('?' * len(skip))})"
        # orders first: agent-made tickets (test pages, reminders, reprints asked for) never overtake one.
        # Each pick walks the open jobs in id order and stops at the first that fits (the oldest order's, else
        # the oldest agent-made one), instead of sorting every open job: in a burst of 500 the sort made each
        # pick cost a quarter of a millisecond.
        pick = "(SELECT j.id FROM jobs j JOIN events e ON e.seq = j.event_seq " + where + " AND {} ORDER BY j.id LIMIT 1)"
        rows = self._read(self._JOB_SQL + "WHERE j.id = COALESCE(" + pick.format("NOT (e.type LIKE 'agent.%')") + ", "
                          + pick.format("e.type LIKE 'agent.%'") + ")", (*names, *skip) * 2)
        return self._job(rows[0]) if rows else None

    def open_jobs(self, printer: Optional[str] = None) -> list[Job]:
        where = f"WHERE {self._OPEN}" + (" AND j.printer=?" if printer else "")
        rows = self._read(self._JOB_SQL + where + " ORDER BY j.id", (printer,) if printer else ())
        return [self._job(r) for r in rows]

    # -- what is known of each printer (probe, paper) -------------------
    def _printer_row(self, db: sqlite3.Connection, name: str, now: float) -> None:
        db.execute("INSERT OR IGNORE INTO printers(name, updated_at) VALUES (?, ?)", (name, now))

    def save_caps(self, name: str, caps: dict, now: Optional[float] = None) -> None:
        """A probe's result (lazy: it is found again at the next start if lost)."""
        now = time.time() if now is None else now
        text = json.dumps(caps, ensure_ascii=False, sort_keys=True)

        def tx(db: sqlite3.Connection) -> None:
            self._printer_row(db, name, now)
            db.execute("UPDATE printers SET caps=?, updated_at=? WHERE name=?", (text, now, name))
        self.submit(tx, lazy=True)

    def add_paper(self, name: str, mm: float, now: Optional[float] = None) -> None:
        """Paper a printed job used (lazy: a crash loses at most a few seconds of the count)."""
        now = time.time() if now is None else now

        self.submit(lambda db: db.execute(
            "INSERT INTO printers(name, paper_mm, updated_at) VALUES (?,?,?) ON CONFLICT(name) DO UPDATE "
            "SET paper_mm=paper_mm+excluded.paper_mm, updated_at=excluded.updated_at", (name, mm, now)) and None, lazy=True)

    def paper_loaded(self, name: str, now: Optional[float] = None) -> float:
        """A new roll: the count starts again (from a known start: ``loaded_at``). Returns the mm counted."""
        now = time.time() if now is None else now

        def tx(db: sqlite3.Connection) -> float:
            self._printer_row(db, name, now)
            used = db.execute("SELECT paper_mm FROM printers WHERE name=?", (name,)).fetchone()[0]
            db.execute("UPDATE printers SET paper_mm=0, loaded_at=?, updated_at=? WHERE name=?", (now, now, name))
            return used
        return self.call(tx)

    def learn_roll(self, name: str, min_mm: float, now: Optional[float] = None) -> Optional[float]:
        """The near-end sensor tripped: the paper counted since a known roll start (``loaded_at`` set), when at
        least ``min_mm``, becomes the learnt roll length. Returns it, or None when nothing was learnt."""
        now = time.time() if now is None else now

        def tx(db: sqlite3.Connection) -> Optional[float]:
            row = db.execute("SELECT paper_mm, loaded_at FROM printers WHERE name=?", (name,)).fetchone()
            if row is None or row[1] is None or row[0] < min_mm:
                return None
            db.execute("UPDATE printers SET mm_per_roll=?, updated_at=? WHERE name=?", (row[0], now, name))
            return row[0]
        return self.call(tx)

    def printer_facts(self) -> dict[str, dict]:
        """Per printer: ``caps`` (dict or None), ``paper_mm``, ``loaded_at``, ``mm_per_roll``."""
        out = {}
        for name, caps, mm, loaded, per_roll in self._read(
                "SELECT name, caps, paper_mm, loaded_at, mm_per_roll FROM printers"):
            try:
                c = json.loads(caps) if caps else None
            except ValueError:
                c = None
            out[name] = {"caps": c, "paper_mm": mm, "loaded_at": loaded, "mm_per_roll": per_roll}
        return out

    # -- per-day figures (agent/stats.py) --------------------------------
    def stats_add(self, day: str, counts: dict[str, float], samples: Iterable[tuple[str, float]] = ()) -> None:
        """Add to the day's counters and samples (lazy: a crash loses at most the last seconds of figures).

        Figures add up, so they are merged in memory until the writer takes them: one operation per commit
        writes all that came since the last one, however many calls made them (an order makes five). The
        operation takes what is pending when the writer first runs it and keeps that for a retry, so a
        failed batch neither drops nor counts twice what it took."""
        with self._mem_lock:
            pend = self._stats_pending
            first = pend is None
            if first:
                pend = self._stats_pending = ({}, [])
            totals, kept = pend
            for k, v in counts.items():
                totals[(day, k)] = totals.get((day, k), 0.0) + float(v)  # REAL: a huge value cannot fail the others
            kept.extend((day, k, float(v)) for k, v in samples)
        if not first:
            return  # the operation already queued writes these too
        taken: list[tuple[dict, list]] = []

        def tx(db: sqlite3.Connection) -> None:
            if not taken:  # its first run: what is pending is this operation's from now on
                with self._mem_lock:
                    taken.append(self._stats_pending or ({}, []))
                    self._stats_pending = None
            totals, kept = taken[0]
            if totals:
                db.executemany("INSERT INTO stats(day, key, n) VALUES (?,?,?) ON CONFLICT(day, key) DO UPDATE SET n = n + excluded.n",
                               [(d, k, v) for (d, k), v in totals.items()])
            if kept:
                db.executemany("INSERT INTO stat_samples(day, kind, value) VALUES (?,?,?)", kept)
        try:
            self.submit(tx, lazy=True)
        except JournalError:
            with self._mem_lock:
                if self._stats_pending is pend:
                    self._stats_pending = None
            raise

    def stats_between(self, first: str, last: str) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Summed counters and all samples of the days ``first..last`` (inclusive, YYYY-MM-DD)."""
        counts = {k: n for k, n in self._read("SELECT key, SUM(n) FROM stats WHERE day BETWEEN ? AND ? GROUP BY key", (first, last))}
        samples: dict[str, list[float]] = {}
        for kind, value in self._read("SELECT kind, value FROM stat_samples WHERE day BETWEEN ? AND ? ORDER BY value", (first, last)):
            samples.setdefault(kind, []).append(value)
        return counts, samples

    def recent_events(self, since: float, types: tuple[str, ...]) -> list[tuple[float, str, str, bytes]]:
        """(received_at, order_id, type, payload) of events of ``types`` received since ``since``, oldest first."""
        rows = self._recent("SELECT received_at, order_id, type, payload FROM events", (), since)
        return [(r[0], r[1], r[2], _unpack(r[3])) for r in reversed(rows) if r[2] in types and r[1]]

    def followups_done(self, order_ids: Iterable[str]) -> dict[str, tuple[str, float]]:
        ids = list(order_ids)
        out: dict[str, tuple[str, float]] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            for oid, outcome, at in self._read(f"SELECT order_id, outcome, at FROM followups WHERE order_id IN "
                                               f"({','.join('?' * len(part))})", part):
                out[oid] = (outcome, at)
        return out

    def record_followup(self, order_id: str, outcome: str, now: float) -> Optional[tuple[str, float]]:
        """Durable; returns the outcome recorded before and when (None: the first call recorded)."""
        def tx(db: sqlite3.Connection) -> Optional[tuple[str, float]]:
            row = db.execute("SELECT outcome, at FROM followups WHERE order_id=?", (order_id,)).fetchone()
            db.execute("INSERT INTO followups(order_id, outcome, at) VALUES (?,?,?) ON CONFLICT(order_id) DO UPDATE "
                       "SET outcome=excluded.outcome, at=excluded.at", (order_id, outcome, now))
            return (row[0], row[1]) if row else None
        return self.call(tx)

    def has_order(self, order_id: str) -> bool:
        """Any event of this order in the journal."""
        return bool(self._read("SELECT 1 FROM events WHERE order_id=? LIMIT 1", (order_id,)))

    def prune_stats(self, before_day: str) -> None:
        def tx(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM stats WHERE day < ?", (before_day,))
            db.execute("DELETE FROM stat_samples WHERE day < ?", (before_day,))
        self.submit(tx, lazy=True)

    def open_job_counts(self) -> dict[str, int]:
        """Open jobs per printer (health and status: no payloads read)."""
        return {p: n for p, n in self._read(
            f"SELECT printer, COUNT(*) FROM jobs j WHERE {self._OPEN} GROUP BY printer")}

    def reassign_orphans(self, printers: list[str], to: str, now: Optional[float] = None) -> int:
        """Open jobs for printers no longer configured move to ``to`` (a 'printing' one is a reprint:
        this runs when nothing of them is armed — at start, or after un-arming a removed printer)."""
        now = time.time() if now is None else now
        marks = ",".join("?" * len(printers))
        return self.call(lambda db: db.execute(
            f"UPDATE jobs SET printer=?, updated_at=? WHERE state IN ('queued','printing') AND printer NOT IN ({marks})",
            (to, now, *printers)).rowcount)

    def orphaned(self, printers: list[str]) -> int:
        """Open jobs whose printer is not among ``printers`` (a read: nothing is written when there are none)."""
        return self._read(f"SELECT COUNT(*) FROM jobs j WHERE {self._OPEN} AND printer NOT IN "
                          f"({','.join('?' * len(printers))})", printers)[0][0]

    def begin_attempt(self, job_id: int, now: Optional[float] = None, *, printer: Optional[str] = None,
                      siblings: Iterable[str] = (), ahead: int = 0, max_uncertain: int = MAX_UNCERTAIN,
                      on_done: Callable[[EventDone], None] = lambda done: None) -> Optional[Job]:
        """Durably mark a job ``printing`` before any byte is sent; None when it is no longer open.

        Found ``printing`` and not armed here, an earlier attempt may have reached paper: this one is a
        reprint (补打). After ``max_uncertain`` such attempts the job fails instead (a person reprints
        it): the returned job is ``failed`` and ``on_done`` gets its event's outcome when that was the
        event's last open job. ``siblings``: printers whose queued jobs of the same event, and up to
        ``ahead`` queued behind them, are armed for ``printer`` in the same commit (``Job.siblings``)."""
        now = time.time() if now is None else now
        names = tuple(siblings)
        outcome: list[EventDone] = []

        def tx(db: sqlite3.Connection) -> Optional[Job]:
            row = db.execute("SELECT state, attempts, reprint FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row[0] not in OPEN_JOB_STATES:
                return None
            state, attempts, reprint = row
            fresh = self._take_fresh(job_id) if state == "printing" else None
            if fresh is not None:
                took[job_id] = fresh
            armed_here = fresh is not None
            uncertain = state == "printing" and not armed_here
            if uncertain and attempts >= max_uncertain:
                db.execute("UPDATE jobs SET state='failed', error=?, updated_at=? WHERE id=? AND state='printing'",
                           (f"sent {attempts} times without a confirmed print: check whether it came out, "
                            "reprint it by hand if not", now, job_id))
                outcome.extend(filter(None, [self._finish_event(db, job_id // JOB_SLOTS, now)]))
                return self._job(db.execute(self._JOB_SQL + "WHERE j.id=?", (job_id,)).fetchone())
            cur = db.execute(
                "UPDATE jobs SET state='printing', attempts=attempts+?, reprint=?, updated_at=? "
                "WHERE id=? AND state IN ('queued','printing')",
                (0 if armed_here else 1, int(bool(reprint) or uncertain), now, job_id))
            if cur.rowcount != 1:
                return None
            armed: list[int] = []
            if names and printer and not self._no_arming and not uncertain:  # a reprint after a crash arms nothing more
                seq = job_id // JOB_SLOTS
                rows = db.execute(
                    f"SELECT id FROM jobs j WHERE id > ? AND j.state='queued' "
                    f"AND printer IN ({','.join('?' * len(names))}) ORDER BY id LIMIT ?",
                    (job_id, *names, JOB_SLOTS + ahead)).fetchall()
                ids = [r[0] for r in rows if r[0] < (seq + 1) * JOB_SLOTS]
                ids += [r[0] for r in rows if r[0] >= (seq + 1) * JOB_SLOTS][:ahead]
                db.executemany("UPDATE jobs SET state='printing', attempts=attempts+1, updated_at=? "
                               "WHERE id=? AND state='queued'", [(now, i) for i in ids])
                self._arm(ids, printer, box)
                armed = ids
            job = self._job(db.execute(self._JOB_SQL + "WHERE j.id=?", (job_id,)).fetchone())
            return Job(**{**job.__dict__, "siblings": tuple(armed)})

        box: list[int] = []
        took: dict[int, tuple[str, Optional[str]]] = {}
        job = self._write(tx, self._arming_done(box, None, took))
        for done in outcome:
            on_done(done)
        return job

    def note_error(self, job_id: int, error: str, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        self.submit(lambda db: db.execute("UPDATE jobs SET error=?, updated_at=? WHERE id=?", (error, now, job_id)) and None,
                    lazy=True)

    def finish_job(self, job_id: int, state: str, error: Optional[str] = None, *, printer: Optional[str] = None,
                   done: Optional[Callable[[Optional[EventDone]], None]] = None, now: Optional[float] = None) -> None:
        """Mark a ``printing`` job ``printed`` or ``failed`` (lazy). ``done(EventDone)`` runs after the
        commit when this was its event's last open job. Until then the job is settling."""
        if state not in ("printed", "failed"):
            raise ValueError(f"not a final job state: {state}")
        now = time.time() if now is None else now

        def tx(db: sqlite3.Connection) -> Optional[EventDone]:
            db.execute(
                "UPDATE jobs SET state=?, error=?, updated_at=?, printed_at=CASE WHEN ?='printed' THEN ? END, "
                "printed_on=COALESCE(?, printer) WHERE id=? AND state='printing'",
                (state, error, now, state, now, printer, job_id))
            return self._finish_event(db, job_id // JOB_SLOTS, now)

        def finished(out: Optional[EventDone], err: Optional[BaseException]) -> None:
            with self._mem_lock:
                self._settling.discard(job_id)
            if err is None and out is not None and done is not None:
                done(out)

        with self._mem_lock:
            self._settling.add(job_id)
        self.submit(tx, done=finished, lazy=True)

    def _finish_event(self, db: sqlite3.Connection, seq: int, now: float) -> Optional[EventDone]:
        jobs = db.execute(
            "SELECT document, COALESCE(printed_on, printer), state, reprint, error FROM jobs "
            "WHERE id >= ? AND id < ? ORDER BY id", (seq * JOB_SLOTS, (seq + 1) * JOB_SLOTS)).fetchall()
        if any(j[2] in OPEN_JOB_STATES for j in jobs):
            return None
        event_id, order_id, status, received_at, etype = db.execute(
            "SELECT event_id, order_id, status, received_at, type FROM events WHERE seq=?", (seq,)).fetchone()
        if status != "queued":
            return None
        failed = [j for j in jobs if j[2] == "failed"]
        status = "failed" if failed else "printed"
        error = "; ".join(f"{j[0]}: {j[4]}" for j in failed) or None
        db.execute("UPDATE events SET status=?, finished_at=?, error=? WHERE seq=?", (status, now, error, seq))
        done = _event_done(event_id, order_id, status, error, jobs)
        return dataclasses.replace(done, waited_s=max(now - received_at, 0.0), type=etype)

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
        self.call(lambda db: db.execute(
            "INSERT INTO timers(key, fired_at) VALUES (?,?) ON CONFLICT(key) DO UPDATE SET fired_at=excluded.fired_at",
            (key, fired_at)) and None)

    def _recent(self, sql: str, params: tuple, since: float) -> list[tuple]:
        """Rows of ``sql`` (whose first column is received_at), newest first, back to ``since``.

        Events are stored in arrival order, so this walks back from the newest one instead of keeping a
        time index; a clock set back by up to ``CLOCK_SLACK_S`` is tolerated."""
        out = []
        try:
            for row in self._db().execute(sql + " ORDER BY seq DESC", params):
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
    def save_alert(self, alert_id: str, body: str, is_open: bool, now: Optional[float] = None,
                   done: Optional[Done] = None) -> None:
        """Stored with the next commit; ``done`` reports a failure (alerts never wait for the disk)."""
        now = time.time() if now is None else now
        self.submit(lambda db: db.execute(
            "INSERT INTO alerts(id, open, updated_at, body) VALUES (?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET open=excluded.open, updated_at=excluded.updated_at, body=excluded.body",
            (alert_id, int(is_open), now, body)) and None, done=done)

    def open_alerts(self) -> list[str]:
        return [r[0] for r in self._read("SELECT body FROM alerts WHERE open=1 ORDER BY updated_at")]

    # -- results outbox -------------------------------------------------
    def mark_reported(self, event_ids: Iterable[str]) -> None:
        """The broker confirmed (PUBACK) the final results of these events (a lazy write)."""
        ids = [(e,) for e in event_ids]
        if ids:
            self.submit(lambda db: db.executemany("UPDATE events SET reported=1 WHERE event_id=?", ids) and None, lazy=True)

    def unreported(self, limit: int = 1000) -> list[EventDone]:
        """Finished events whose final result the broker never confirmed (e.g. the agent was killed)."""
        rows = self._read(
            "SELECT seq, event_id, order_id, status, error FROM events WHERE reported=0 "
            "AND status IN ('printed','failed','duplicate','expired') ORDER BY seq LIMIT ?", (limit,))
        out = []
        for seq, event_id, order_id, status, error in rows:
            jobs = self._read("SELECT document, COALESCE(printed_on, printer), state, reprint FROM jobs "
                              "WHERE id >= ? AND id < ? ORDER BY id", (seq * JOB_SLOTS, (seq + 1) * JOB_SLOTS))
            out.append(_event_done(event_id, order_id, status, error, jobs))
        return out

    # -- queries --------------------------------------------------------
    def event_status(self, event_id: str) -> Optional[str]:
        rows = self._read("SELECT status FROM events WHERE event_id=?", (event_id,))
        return rows[0][0] if rows else None

    def counts(self) -> dict[str, int]:
        return {s: n for s, n in self._read("SELECT status, COUNT(*) FROM events GROUP BY status")}

    def oldest_open_age(self, now: Optional[float] = None) -> Optional[float]:
        now = time.time() if now is None else now
        rows = self._read(f"SELECT MIN(created_at) FROM jobs j WHERE {self._OPEN}")
        return (now - rows[0][0]) if rows and rows[0][0] is not None else None

    def size_bytes(self) -> int:
        (pages,), (size,), (free,) = (self._read("PRAGMA page_count")[0], self._read("PRAGMA page_size")[0],
                                      self._read("PRAGMA freelist_count")[0])
        return (pages - free) * size

    # -- pruning --------------------------------------------------------
    def prune(self, keep_days: int, max_bytes: int, now: Optional[float] = None) -> int:
        """Delete finished events older than ``keep_days``, then oldest-first until under ``max_bytes``.

        Events with open jobs are never deleted; the keys of deleted events go to ``dedupe`` (kept
        ``dedupe_days``). Returns the number of events removed. Freed pages are reused."""
        now = time.time() if now is None else now
        cutoff = now - keep_days * 86400
        final = f"status IN ({','.join(repr(s) for s in FINAL_EVENT_STATES)})"

        def delete_events(db: sqlite3.Connection, where: str, params: tuple) -> int:
            seqs = [r[0] for r in db.execute(f"SELECT seq FROM events WHERE {where}", params)]
            for s in seqs:
                db.execute("INSERT OR IGNORE INTO dedupe(key, value, at) "
                           "SELECT 'e:' || event_id, status, ? FROM events WHERE seq=?", (now, s))
                db.execute("INSERT OR IGNORE INTO dedupe(key, value, at) SELECT 'o:' || order_id, event_id, ? "
                           "FROM events WHERE seq=? AND type='order.created' AND status='printed' "
                           "AND order_id IS NOT NULL", (now, s))
            db.executemany("DELETE FROM jobs WHERE id >= ? AND id < ?", [(s * JOB_SLOTS, (s + 1) * JOB_SLOTS) for s in seqs])
            db.executemany("DELETE FROM events WHERE seq=?", [(s,) for s in seqs])
            return len(seqs)

        def by_age(db: sqlite3.Connection) -> int:
            n = delete_events(db, f"{final} AND received_at < ?", (cutoff,))
            n += db.execute("DELETE FROM rejected WHERE received_at < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM alerts WHERE open=0 AND updated_at < ?", (cutoff,))
            db.execute("DELETE FROM timers WHERE fired_at < ? AND key != 'summary'", (cutoff,))
            db.execute("DELETE FROM dedupe WHERE at < ?", (now - self.dedupe_days * 86400,))
            db.execute("DELETE FROM followups WHERE at < ?", (cutoff,))  # their orders are gone from the list too
            return n

        removed = self.call(by_age)
        while self.size_bytes() > max_bytes:
            total = self._read("SELECT COUNT(*) FROM events")[0][0] + self._read("SELECT COUNT(*) FROM rejected")[0][0]
            batch = max(1, total // 20)  # 5 % steps: never far below the bound

            def oldest(db: sqlite3.Connection) -> int:
                # under size pressure only events whose result HQ has confirmed go (age pruning takes any)
                n = delete_events(
                    db, f"seq IN (SELECT seq FROM events WHERE {final} AND reported=1 ORDER BY seq LIMIT ?)", (batch,))
                n += db.execute("DELETE FROM rejected WHERE id IN (SELECT id FROM rejected ORDER BY id LIMIT ?)",
                                (batch,)).rowcount
                return n

            n = self.call(oldest)
            removed += n
            if n == 0:
                break
        try:  # the WAL file is reused, not regrown
            self._wait(self.submit(lambda db: db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall(), raw=True))
        except Exception as e:  # noqa: BLE001
            log.warning("journal checkpoint failed: %s", e)
        return removed


def _create_private(path: Path) -> None:
    """The journal holds customers' names, phones and addresses: 0600 from its first byte."""
    try:
        fd = os.open(str(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)
        except OSError:
            pass


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
    db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # takes effect only on a new file
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise JournalError(f"{path}: cannot switch to WAL (got {mode})")
    db.execute("PRAGMA synchronous=FULL")
    return db


def _statements(script: str) -> list[str]:
    """A script's statements one by one (``executescript`` would commit the open transaction first)."""
    out, cur = [], ""
    for line in script.splitlines(keepends=True):
        cur += line
        if sqlite3.complete_statement(cur):
            out.append(cur.strip())
            cur = ""
    return out


def _upgrade(db: sqlite3.Connection) -> None:
    """Schema 2 or 3 -> 4 in place, in one transaction: the dedupe table and ``jobs.printed_on`` (3), the
    printers table (4). Every step is additive: an older agent's rows are kept as they are."""
    db.execute("BEGIN IMMEDIATE")
    try:
        cols = {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
        if "printed_on" not in cols:
            db.execute("ALTER TABLE jobs ADD COLUMN printed_on TEXT")
        for stmt in _statements(SCHEMA):  # CREATE ... IF NOT EXISTS: only what is missing
            db.execute(stmt)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    log.warning("journal: upgraded to schema %d", SCHEMA_VERSION)


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_journal_file(tmp: Path, fill: Callable[[sqlite3.Connection], None]) -> None:
    """A new journal file at ``tmp`` (0600, the current schema and page size, WAL), filled by ``fill``
    in one synced transaction; the caller renames it into place (migration, salvage)."""
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    _create_private(tmp)
    new = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        new.execute(f"PRAGMA page_size={PAGE_SIZE}")
        new.execute("PRAGMA synchronous=FULL")
        new.executescript(SCHEMA)
        new.execute("BEGIN")
        fill(new)
        new.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        new.execute("COMMIT")
        new.execute("PRAGMA journal_mode=WAL")
    finally:
        new.close()


def migrate_v1(path: Path) -> None:
    """Rewrite a schema-1 journal (4 KiB pages, AUTOINCREMENT ids, plain payloads) in the current schema.

    The new file is built beside the old one. The old one stays in place until the new one is
    complete and synced; then it is hard-linked as ``<name>.v1`` and the new one takes its name in
    one atomic ``rename``: a power cut at any point leaves either the old journal or the new one
    at ``path``, never neither. Open jobs keep their state (a ``printing`` one stays a reprint).
    """
    tmp = path.with_name(path.name + ".v2-tmp")
    old = sqlite3.connect(str(path), isolation_level=None)
    try:
        old.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        def fill(new: sqlite3.Connection) -> None:
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

        build_journal_file(tmp, fill)
    finally:
        old.close()
    for suffix in ("-wal", "-shm"):  # the old file is checkpointed and closed: its WAL must not meet the new file
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    _fsync_dir(path.parent)
    kept = path.with_name(path.name + ".v1")
    kept.unlink(missing_ok=True)  # an earlier, interrupted migration's link (the same file)
    os.link(path, kept)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    log.warning("journal: migrated %s to schema %d (the old file is kept as %s.v1)", path, SCHEMA_VERSION, path.name)
