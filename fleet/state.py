"""The fleet's picture, built from what the agents publish: one ``Store`` per store id.

Invariants:

* whatever arrives is hostile: a payload that is too large, not UTF-8/JSON, or does not validate against
  the agent's own models (agent.messages.Health, Report; agent.remote.ConfigState) is counted on its
  store (``garbage``) and changes nothing else (``FleetState.ingest`` never raises);
* a topic names a store only if the id is a valid store_id (the agent's pattern), and at most
  ``MAX_STORES`` stores are kept;
* a store's problems are derived from its state alone (``problems``), so the terminal, the web page and
  a push's soak check agree.

No MQTT and no I/O: ``FleetLink`` hands messages in, ``History`` listens for changes worth keeping.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Optional

from pydantic import ValidationError

from agent.messages import Health, OrderResult, Report
from agent.remote import ConfigState

STORE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_PAYLOAD = 256 * 1024
MAX_STORES = 50_000
MAX_ALERTS_PER_STORE = 200
FAULTS = frozenset({"paper_out", "cover_open", "offline", "unreachable", "unknown"})
ALERT_STATES = frozenset({"raised", "acknowledged", "escalated", "cleared"})

# problem kinds, worst first: (kind, rank, word for the summary line)
KINDS: dict[str, tuple[int, str]] = {
    "offline": (0, "offline"),
    "stopped": (1, "stopped"),
    "printer": (2, "printer faults"),
    "escalated": (3, "escalations"),
    "queue": (4, "queues growing"),
    "config": (5, "config errors"),
    "stale": (6, "stale config"),
    "silent": (7, "no health"),
    "audio": (8, "audio faults"),
    "version": (9, "old version"),
}


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def version_key(v: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.+-]", v or "0"))


@dataclass
class Store:
    id: str
    status: Optional[str] = None
    status_since: Optional[float] = None
    health: Optional[Health] = None
    health_seen: Optional[float] = None
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # open (not cleared) alerts by id
    config: Optional[ConfigState] = None
    stats: Optional[Report] = None
    failed_results: int = 0
    last_printed: Optional[tuple[str, datetime]] = None  # (order id, when) from the last "printed" result
    garbage: int = 0
    garbage_last: str = ""

    @property
    def version(self) -> Optional[str]:
        v = self.health.agent.get("version") if self.health else None
        return v if isinstance(v, str) else None

    @property
    def escalated(self) -> list[dict[str, Any]]:
        return [a for a in self.alerts.values() if a.get("state") == "escalated"]

    @property
    def last_print_at(self) -> Optional[datetime]:
        times = [p.last_print_at for p in (self.health.printers if self.health else []) if p.last_print_at]
        if self.last_printed:
            times.append(self.last_printed[1])
        return max(times) if times else None


@dataclass(frozen=True)
class Problem:
    kind: str
    text: str

    @property
    def rank(self) -> int:
        return KINDS[self.kind][0]


class FleetState:
    """Thread-safe: paho's thread ingests, the CLI / web page / rollout read ``snapshot()``."""

    def __init__(self, prefix: str, clock: Callable[[], float] = time.time, queue_oldest_s: float = 300,
                 health_stale_s: float = 600, expect_version: str = "") -> None:
        self.prefix = prefix
        self.clock = clock
        self.queue_oldest_s, self.health_stale_s, self.expect_version = queue_oldest_s, health_stale_s, expect_version
        self.stores: dict[str, Store] = {}
        self.pushed: dict[str, int] = {}  # the config version HQ last pushed, per store (History keeps it)
        self.garbage = 0  # messages on topics that name no valid store, or beyond MAX_STORES
        self.messages = 0
        self.lock = threading.RLock()
        self.listeners: list[Callable[[str, str, dict[str, Any]], None]] = []  # (store, kind, data)
        self.changed = threading.Condition(self.lock)
        self.generation = 0

    # -- input
    def ingest(self, topic: str, payload: bytes, retained: bool = False) -> Optional[str]:
        """One message from the broker; returns the store id it changed (None: ignored). Never raises."""
        try:
            return self._ingest(topic, payload, retained)
        except Exception as e:  # noqa: BLE001 - a console must survive anything on its topics
            with self.lock:
                self.garbage += 1
            self._last_error = f"{type(e).__name__}: {e}"[:200]
            return None

    def _store(self, sid: str) -> Optional[Store]:
        st = self.stores.get(sid)
        if st is None:
            if len(self.stores) >= MAX_STORES:
                self.garbage += 1
                return None
            st = self.stores[sid] = Store(sid)
        return st

    def _ingest(self, topic: str, payload: bytes, retained: bool) -> Optional[str]:
        parts = topic.split("/")
        pre = self.prefix.split("/")
        if parts[: len(pre)] != pre or len(parts) < len(pre) + 2:
            return None
        sid, kind = parts[len(pre)], "/".join(parts[len(pre) + 1:])
        if kind not in ("status", "health", "alerts", "stats", "config/state", "orders/result"):
            return None
        with self.changed:
            self.messages += 1
            if not STORE_ID.match(sid):
                self.garbage += 1
                return None
            new = sid not in self.stores
            st = self._store(sid)
            if st is None:
                return None
            why = self._apply(st, kind, payload, retained)
            if new and (why or kind == "orders/result"):  # a store is in the picture once it said something valid
                del self.stores[sid]
                self.garbage += bool(why)
                return None
            if why:
                st.garbage += 1
                st.garbage_last = f"{kind}: {why}"[:200]
                return None
            self.generation += 1
            self.changed.notify_all()
        return sid

    def _notify(self, sid: str, kind: str, data: dict[str, Any]) -> None:
        for fn in self.listeners:
            try:
                fn(sid, kind, data)
            except Exception:  # noqa: BLE001 - a broken history must not stop the picture
                pass

    def _apply(self, st: Store, kind: str, payload: bytes, retained: bool = False) -> Optional[str]:
        """Update ``st``; a string says why the payload was refused."""
        if len(payload) > MAX_PAYLOAD:
            return f"payload too large ({len(payload)} bytes)"
        now = self.clock()
        if kind == "status":
            text = payload.decode("utf-8", "replace").strip()
            if text not in ("online", "stopped", "lost"):
                return f"unknown status {text[:20]!r}"
            if text != st.status:
                if retained and st.status is None:  # first sight of a retained status: since when is unknown
                    st.status, st.status_since = text, None
                else:
                    st.status, st.status_since = text, now
                    self._notify(st.id, "status", {"state": text, "at": now})
            return None
        if kind == "orders/result":
            if b'"failed"' in payload or b'"printed"' in payload:  # cheap: other results are not read
                try:
                    body = OrderResult.model_validate_json(payload)
                except (ValidationError, ValueError, RecursionError):
                    return "result does not validate"
                if body.status == "failed":
                    st.failed_results += 1
                elif body.status == "printed" and (st.last_printed is None or body.at >= st.last_printed[1]):
                    st.last_printed = (body.order_id or "", body.at)
            return None
        try:
            if kind == "health":
                h = Health.model_validate_json(payload)
                if h.store_id != st.id:
                    return f"health names store {h.store_id[:64]!r}"
                st.health, st.health_seen = h, now
            elif kind == "stats":
                r = Report.model_validate_json(payload)
                if r.store_id not in (None, st.id):
                    return f"stats name store {r.store_id[:64]!r}"
                st.stats = r
            elif kind == "config/state":
                st.config = ConfigState.model_validate_json(payload)
            elif kind == "alerts":
                return self._alert(st, payload, now)
        except ValidationError as e:
            return "does not validate: " + "; ".join(
                f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()[:3])
        except (ValueError, RecursionError) as e:
            return f"unreadable: {e}"[:200]
        return None

    def _alert(self, st: Store, payload: bytes, now: float) -> Optional[str]:
        body = json.loads(payload)
        if not isinstance(body, dict):
            return "alert is not an object"
        aid, state, code = body.get("id"), body.get("state"), body.get("code")
        if not (isinstance(aid, str) and 0 < len(aid) <= 200 and state in ALERT_STATES and isinstance(code, str)):
            return "alert without a valid id, state or code"
        keep = {k: body.get(k) for k in ("id", "code", "state", "severity", "since", "at", "message", "printer", "order_id")
                if isinstance(body.get(k), (str, int, float, type(None)))}
        keep["message"] = str(keep.get("message") or "")[:300]
        if state == "cleared":
            st.alerts.pop(aid, None)
        elif aid in st.alerts or len(st.alerts) < MAX_ALERTS_PER_STORE:
            st.alerts[aid] = keep
        self._notify(st.id, "alert", keep)
        return None

    def restore(self, sid: str, status: Optional[str], since: Optional[float], alerts: list[dict[str, Any]]) -> None:
        """From the history at start: what retained messages do not say (since when, open alerts)."""
        with self.lock:
            st = self._store(sid) if STORE_ID.match(sid) else None
            if st is None:
                return
            if st.status is None:
                st.status, st.status_since = status, since
            elif st.status == status and since:
                st.status_since = since
            for a in alerts:
                st.alerts.setdefault(a["id"], a)

    # -- reading
    def snapshot(self) -> list[Store]:
        with self.lock:
            return [self._copy(s) for s in self.stores.values()]

    @staticmethod
    def _copy(s: Store) -> Store:
        return Store(s.id, s.status, s.status_since, s.health, s.health_seen, dict(s.alerts), s.config, s.stats,
                     s.failed_results, s.last_printed, s.garbage, s.garbage_last)

    def newest_version(self, stores: list[Store]) -> str:
        if self.expect_version:
            return self.expect_version
        vs = [s.version for s in stores if s.version]
        return max(vs, key=version_key) if vs else ""

    def problems(self, st: Store, newest: str = "") -> list[Problem]:
        out: list[Problem] = []
        now = self.clock()
        if st.status == "lost":
            out.append(Problem("offline", "agent lost (no goodbye: power or network)"))
        elif st.status == "stopped":
            out.append(Problem("stopped", "agent stopped"))
        h = st.health
        if h is None:
            if st.status == "online":
                out.append(Problem("silent", "online, no health seen"))
        else:
            for p in h.printers:
                if p.state in FAULTS and (p.role == "primary" or all(q.state in FAULTS for q in h.printers)):
                    out.append(Problem("printer", f"printer {p.name} {p.state}" + (f" ({p.detail[:60]})" if p.detail else "")))
            if st.status == "online" and st.health_seen and now - st.health_seen > self.health_stale_s \
                    and now - h.at.timestamp() > self.health_stale_s:
                out.append(Problem("silent", f"no health for {_age(now - h.at.timestamp())}"))
            oldest = h.queue.get("oldest_s")
            if isinstance(oldest, (int, float)) and oldest > self.queue_oldest_s:
                out.append(Problem("queue", f"queue {int(h.queue.get('pending') or 0)}, oldest {_age(oldest)}"))
            if h.audio.get("state") == "failed":
                out.append(Problem("audio", f"audio failed: {h.audio.get('error', '')[:60]}"))
        esc = st.escalated
        if esc:
            out.append(Problem("escalated", f"{len(esc)} escalated: " + ", ".join(sorted({a['code'] for a in esc}))[:80]))
        pushed = self.pushed.get(st.id)
        if st.config is not None:
            err = st.config.error
            if err is not None and (pushed is None or err.version == pushed or err.version is None):
                out.append(Problem("config", f"config error (v{err.version}): {_cut(err.message, 110)}"))
            elif pushed is not None and st.config.version != pushed:
                out.append(Problem("stale", f"config v{st.config.version}, HQ pushed v{pushed}"))
        elif pushed is not None:
            out.append(Problem("stale", f"no config/state, HQ pushed v{pushed}"))
        if newest and st.version and version_key(st.version) < version_key(newest):
            out.append(Problem("version", f"agent {st.version} (newest {newest})"))
        return sorted(out, key=lambda p: p.rank)

    def table(self) -> tuple[list[tuple[Store, list[Problem]]], dict[str, int]]:
        """Every store with its problems, problems first (worst first, then by id); and the summary counts."""
        stores = self.snapshot()
        newest = self.newest_version(stores)
        rows = [(s, self.problems(s, newest)) for s in stores]
        rows.sort(key=lambda r: (r[1][0].rank if r[1] else 99, r[0].id))
        counts: dict[str, int] = {"ok": 0}
        for _, probs in rows:
            k = probs[0].kind if probs else "ok"
            counts[k] = counts.get(k, 0) + 1
        return rows, counts


def summary_line(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    parts = [f"{counts.get('ok', 0)} ok"] + [f"{counts[k]} {KINDS[k][1]}" for k in KINDS if counts.get(k)]
    return f"{total} store{'s' if total != 1 else ''}: " + ", ".join(parts)


def _age(s: float) -> str:
    s = max(0, int(s))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


def store_dict(s: Store, problems: list[Problem], pushed: Optional[int] = None, info: Any = None) -> dict[str, Any]:
    """A store as plain data (status --json, store --json, the web page)."""
    h = s.health
    printers = []
    for p in (h.printers if h else []):
        printers.append({"name": p.name, "role": p.role, "state": p.state, "since": p.since.isoformat() if p.since else None,
                         "detail": p.detail, "queue": p.queue,
                         "paper": p.paper.model_dump() if p.paper else None,
                         "last_print_at": p.last_print_at.isoformat() if p.last_print_at else None})
    cs = s.config
    st = s.stats
    return {
        "store_id": s.id,
        "name": getattr(info, "name", "") or "",
        "region": getattr(info, "region", "") or "",
        "status": s.status,
        "status_since": s.status_since,
        "ok": not problems,
        "problems": [{"kind": p.kind, "text": p.text} for p in problems],
        "version": s.version,
        "uptime_s": h.agent.get("uptime_s") if h else None,
        "health_at": h.at.isoformat() if h else None,
        "printers": printers,
        "queue": dict(h.queue) if h else None,
        "audio": dict(h.audio) if h else None,
        "alerts_open": h.alerts_open if h else len(s.alerts),
        "alerts": sorted(s.alerts.values(), key=lambda a: str(a.get("at") or "")),
        "escalated": len(s.escalated),
        "config": {"version": cs.version, "sha256": cs.sha256, "applied_at": cs.applied_at,
                   "error": cs.error.model_dump() if cs.error else None} if cs else None,
        "config_pushed": pushed,
        "last_print_at": s.last_print_at.isoformat() if s.last_print_at else None,
        "last_order_printed": s.last_printed[0] if s.last_printed else None,
        "today": {"day": st.from_day, "orders": st.orders.total, "paid_fen": st.orders.paid_fen, "tickets": st.tickets,
                  "results": st.results, "escalations": st.escalations} if st else None,
        "failed_results": s.failed_results,
        "garbage": s.garbage,
        "garbage_last": s.garbage_last,
    }
