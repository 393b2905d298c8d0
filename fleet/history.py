"""The console's history (``<state_dir>/history.sqlite3``): alerts and outages as they were seen, what HQ
pushed to each store, and every push's progress, so a restarted console loses nothing it showed.

One connection, guarded by a lock (paho's thread writes alert and status changes; a push writes its steps);
WAL, so another console process (``status`` beside ``serve``) reads while this one writes."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Optional

from agent.config import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_events (id INTEGER PRIMARY KEY, store TEXT NOT NULL, alert_id TEXT NOT NULL,
    code TEXT, state TEXT, severity TEXT, message TEXT, at TEXT, seen REAL NOT NULL);
CREATE INDEX IF NOT EXISTS alert_events_store ON alert_events(store, seen);
CREATE TABLE IF NOT EXISTS open_alerts (store TEXT NOT NULL, alert_id TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (store, alert_id));
CREATE TABLE IF NOT EXISTS outages (id INTEGER PRIMARY KEY, store TEXT NOT NULL, state TEXT NOT NULL,
    since REAL NOT NULL, until REAL);
CREATE INDEX IF NOT EXISTS outages_store ON outages(store, since);
CREATE TABLE IF NOT EXISTS store_status (store TEXT PRIMARY KEY, state TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pushed (store TEXT PRIMARY KEY, version INTEGER NOT NULL, overlay TEXT NOT NULL,
    push_id INTEGER, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pushes (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, started REAL NOT NULL, ended REAL,
    pattern TEXT, overlay TEXT, state TEXT NOT NULL, result TEXT);
CREATE TABLE IF NOT EXISTS push_steps (push_id INTEGER NOT NULL, store TEXT NOT NULL, prev_version INTEGER,
    prev_overlay TEXT, version INTEGER, outcome TEXT, detail TEXT, at REAL, PRIMARY KEY (push_id, store));
CREATE TABLE IF NOT EXISTS push_log (push_id INTEGER NOT NULL, at REAL NOT NULL, text TEXT NOT NULL);
"""
KEEP_DAYS = 90


class History:
    def __init__(self, path: Path) -> None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"state_dir: cannot open the history {path}: {e} (set state_dir to a directory this user "
                              "may write)") from None
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _tx(self, fn):  # noqa: ANN001, ANN202
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self.db)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            return out

    # -- what the state tells (FleetState listener)
    def on_change(self, store: str, kind: str, data: dict[str, Any]) -> None:
        if kind == "status":
            self._status(store, data["state"], data["at"])
        elif kind == "alert":
            self._alert(store, data)

    def _status(self, store: str, state: str, at: float) -> None:
        def fn(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT state FROM store_status WHERE store=?", (store,)).fetchone()
            if row and row[0] == state:
                return
            db.execute("INSERT OR REPLACE INTO store_status VALUES (?,?,?)", (store, state, at))
            db.execute("UPDATE outages SET until=? WHERE store=? AND until IS NULL", (at, store))
            if state != "online":
                db.execute("INSERT INTO outages (store, state, since) VALUES (?,?,?)", (store, state, at))

        self._tx(fn)

    def _alert(self, store: str, a: dict[str, Any]) -> None:
        def fn(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO alert_events (store, alert_id, code, state, severity, message, at, seen) "
                       "VALUES (?,?,?,?,?,?,?,?)", (store, a["id"], a.get("code"), a.get("state"), a.get("severity"),
                                                    a.get("message"), str(a.get("at") or ""), time.time()))
            if a.get("state") == "cleared":
                db.execute("DELETE FROM open_alerts WHERE store=? AND alert_id=?", (store, a["id"]))
            else:
                db.execute("INSERT OR REPLACE INTO open_alerts VALUES (?,?,?)", (store, a["id"], json.dumps(a, ensure_ascii=False)))

        self._tx(fn)

    def restore_into(self, state: Any) -> None:  # noqa: ANN401 - fleet.state.FleetState
        with self.lock:
            statuses = self.db.execute("SELECT store, state, since FROM store_status").fetchall()
            alerts = self.db.execute("SELECT store, body FROM open_alerts").fetchall()
            pushed = self.db.execute("SELECT store, version FROM pushed").fetchall()
        by_store: dict[str, list[dict[str, Any]]] = {}
        for store, body in alerts:
            by_store.setdefault(store, []).append(json.loads(body))
        for store, st, since in statuses:
            state.restore(store, st, since, by_store.pop(store, []))
        for store, al in by_store.items():
            state.restore(store, None, None, al)
        state.pushed.update(dict(pushed))

    def alerts_of(self, store: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT alert_id, code, state, severity, message, at, seen FROM alert_events "
                                   "WHERE store=? ORDER BY id DESC LIMIT ?", (store, limit)).fetchall()
        return [dict(zip(("id", "code", "state", "severity", "message", "at", "seen"), r)) for r in rows]

    def outages_of(self, store: str, limit: int = 20) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT state, since, until FROM outages WHERE store=? ORDER BY id DESC LIMIT ?",
                                   (store, limit)).fetchall()
        return [{"state": s, "since": a, "until": b} for s, a, b in rows]

    def prune(self, keep_days: int = KEEP_DAYS) -> None:
        cut = time.time() - keep_days * 86400
        self._tx(lambda db: (db.execute("DELETE FROM alert_events WHERE seen < ?", (cut,)),
                             db.execute("DELETE FROM outages WHERE until IS NOT NULL AND until < ?", (cut,))))

    # -- pushes
    def pushed_of(self, store: str) -> Optional[tuple[int, dict[str, Any]]]:
        with self.lock:
            row = self.db.execute("SELECT version, overlay FROM pushed WHERE store=?", (store,)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def pushed_versions(self) -> dict[str, int]:
        with self.lock:
            return dict(self.db.execute("SELECT store, version FROM pushed").fetchall())

    def start_push(self, kind: str, pattern: str, overlay: dict[str, Any]) -> int:
        return self._tx(lambda db: db.execute("INSERT INTO pushes (kind, started, pattern, overlay, state) VALUES (?,?,?,?,?)",
                                              (kind, time.time(), pattern, json.dumps(overlay, ensure_ascii=False),
                                               "running")).lastrowid)

    def end_push(self, push_id: int, state: str, result: str) -> None:
        self._tx(lambda db: db.execute("UPDATE pushes SET ended=?, state=?, result=? WHERE id=?",
                                       (time.time(), state, result, push_id)))

    def log(self, push_id: int, text: str) -> None:
        self._tx(lambda db: db.execute("INSERT INTO push_log VALUES (?,?,?)", (push_id, time.time(), text)))

    def step(self, push_id: int, store: str, prev_version: Optional[int], prev_overlay: Optional[dict[str, Any]],
             version: int, overlay: dict[str, Any]) -> None:
        """A config/set is about to go out: what the store ran before, and that HQ now wants ``version``."""

        def fn(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO push_steps VALUES (?,?,?,?,?,?,?,?)",
                       (push_id, store, prev_version, None if prev_overlay is None else json.dumps(prev_overlay, ensure_ascii=False),
                        version, "sent", "", time.time()))
            db.execute("INSERT OR REPLACE INTO pushed VALUES (?,?,?,?,?)",
                       (store, version, json.dumps(overlay, ensure_ascii=False), push_id, time.time()))

        self._tx(fn)

    def unpush(self, store: str, before: Optional[tuple[int, dict[str, Any]]]) -> None:
        """A config/set the broker refused never reached the store: what HQ pushed to it is as before."""
        if before is None:
            self._tx(lambda db: db.execute("DELETE FROM pushed WHERE store=?", (store,)))
        else:
            self._tx(lambda db: db.execute("UPDATE pushed SET version=?, overlay=? WHERE store=?",
                                           (before[0], json.dumps(before[1], ensure_ascii=False), store)))

    def outcome(self, push_id: int, store: str, outcome: str, detail: str = "") -> None:
        self._tx(lambda db: db.execute("UPDATE push_steps SET outcome=?, detail=?, at=? WHERE push_id=? AND store=?",
                                       (outcome, detail[:500], time.time(), push_id, store)))

    def push(self, push_id: Optional[int] = None, kind: str = "push") -> Optional[dict[str, Any]]:
        """A push with its steps and log (the latest of ``kind`` when no id is given)."""
        with self.lock:
            if push_id is None:
                row = self.db.execute("SELECT * FROM pushes WHERE kind=? ORDER BY id DESC LIMIT 1", (kind,)).fetchone()
            else:
                row = self.db.execute("SELECT * FROM pushes WHERE id=?", (push_id,)).fetchone()
            if row is None:
                return None
            steps = self.db.execute("SELECT store, prev_version, prev_overlay, version, outcome, detail FROM push_steps "
                                    "WHERE push_id=? ORDER BY rowid", (row[0],)).fetchall()
            logs = self.db.execute("SELECT at, text FROM push_log WHERE push_id=? ORDER BY rowid", (row[0],)).fetchall()
        keys = ("id", "kind", "started", "ended", "pattern", "overlay", "state", "result")
        out = dict(zip(keys, row))
        out["overlay"] = json.loads(out["overlay"] or "{}")
        out["steps"] = [{"store": s, "prev_version": pv, "prev_overlay": None if po is None else json.loads(po),
                         "version": v, "outcome": o, "detail": d} for s, pv, po, v, o, d in steps]
        out["log"] = [{"at": a, "text": t} for a, t in logs]
        return out

    def pushes(self, limit: int = 20) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT id, kind, started, ended, pattern, state, result FROM pushes "
                                   "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(zip(("id", "kind", "started", "ended", "pattern", "state", "result"), r)) for r in rows]
