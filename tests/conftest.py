"""Real parts for the tests: a mosquitto with the project's recommended settings, the virtual
ESC/POS network printer, agents in-process or as subprocesses, and an HQ-side MQTT client."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.app import Agent
from agent.config import parse_config
from agent.devbroker import DevBroker
from drivers.vprinter import VirtualPrinter

DATA = Path(__file__).parent / "data"
EXAMPLES = DATA / "examples"
ROOT = Path(__file__).resolve().parent.parent


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def example_events() -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(EXAMPLES.glob("*.json"))]


def fresh(ev: dict[str, Any], **over: Any) -> dict[str, Any]:
    """A copy of an event whose expiry lies ahead (the shared examples expire on their day)."""
    ev = copy.deepcopy(ev)
    if "expires_at" in ev.get("order", {}):
        ev["order"]["expires_at"] = (datetime.now(timezone.utc) + timedelta(hours=2)).isoformat()
    ev.update(over)
    return ev


def order(n: int, tag: str = "") -> dict[str, Any]:
    """The n-th order of a burst: a fresh meituan example with its own ids."""
    ev = fresh(example("order-created-meituan.json"))
    ev["id"] = f"evt-{tag}{n:05d}"
    ev["order"]["id"] = f"MT-{tag}{n:05d}"
    ev["order"]["seq"] = n
    return ev


def set_max_pages(journal, pages=None) -> int:  # noqa: ANN001 - agent.journal.Journal
    """SQLite's own SQLITE_FULL, like a full SD card: the journal's file may not grow past ``pages``
    (default: its size now). Set on the writer's connection, by the writer."""
    def fn(db):  # noqa: ANN001
        n = pages if pages is not None else db.execute("PRAGMA page_count").fetchone()[0]
        return db.execute(f"PRAGMA max_page_count={n}").fetchone()[0]
    return journal.submit(fn, raw=True).result()


def lose_transaction(db) -> None:  # noqa: ANN001 - the journal writer's connection
    """A journal operation that does what SQLite does on IOERR/FULL/NOMEM: roll the whole transaction
    back by itself, then report the error."""
    import sqlite3  # noqa: PLC0415
    db.execute("ROLLBACK")
    raise sqlite3.OperationalError("disk I/O error")


def wait_until(cond: Callable[[], bool], timeout: float = 15.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


class HQ:
    """HQ's side: publishes order events and records what the agent publishes."""

    def __init__(self, port: int, prefix: str, store: str, persistent: bool = False, host: str = "127.0.0.1") -> None:
        """``persistent``: a session that outlives broker restarts, so no result is missed (the drills)."""
        self.prefix, self.store = prefix, store
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hq-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)

        def on_connect(c, u, f, rc, p):
            c.subscribe(f"{prefix}/{store}/#", qos=1)

        def on_subscribe(c, u, mid, rcs, p):
            self._ready.set()

        def on_message(c, u, m):
            with self._lock:
                self.messages.append((m.topic, m.payload, m.retain))

        self.c.on_connect, self.c.on_subscribe, self.c.on_message = on_connect, on_subscribe, on_message
        props = None
        if persistent:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.c.reconnect_delay_set(0.2, 1.0)
        self.c.connect(host, port, clean_start=False if persistent else paho.MQTT_CLEAN_START_FIRST_ONLY, properties=props)
        self.c.loop_start()
        assert self._ready.wait(10), "HQ client could not subscribe"

    def topic(self, *parts: str) -> str:
        return "/".join((self.prefix, self.store) + parts)

    def publish(self, ev: dict[str, Any] | bytes, topic: str | None = None) -> None:
        payload = ev if isinstance(ev, bytes) else json.dumps(ev, ensure_ascii=False).encode()
        self.c.publish(topic or self.topic("orders"), payload, qos=1).wait_for_publish(10)

    def results(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t == self.topic("orders", "result")]

    def statuses(self) -> list[str]:
        with self._lock:
            return [p.decode() for t, p, _ in self.messages if t == self.topic("status")]

    def final(self, status: str = "printed") -> dict[str, dict[str, Any]]:
        return {r["event_id"]: r for r in self.results() if r["status"] == status}

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> DevBroker:
    b = DevBroker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path) -> DevBroker:
    """A broker this test may stop and restart."""
    b = DevBroker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def vprinter() -> VirtualPrinter:
    p = VirtualPrinter().start()
    yield p
    p.stop()


@pytest.fixture
def store_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def agent_config(state_dir: Path, broker_port: int, printer_port: int, store_id: str, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "store_id": store_id,
        "state_dir": str(state_dir),
        "store": {"name": "示例大药房(解放碑店)", "phone": "023-6000-0231"},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "printers": [{"name": "counter", "connection": "network", "host": "127.0.0.1", "port": printer_port, "timeout_s": 1.0}],
        "health": {"printer_poll_s": 1},
        "print": {"retry_s": 0.2},
        "sound": {"enabled": False},
        "timers": {"prep_before_s": 0, "summary_every_s": 0},
        # no scheduled slips: the daily report (22:00) and the follow-up list (09:30) would print at every start
        # after their hour, so a test run late in the day saw an extra ticket (tests that want them say so)
        "report": {"daily_at": ""},
        "followup": {"print_at": ""},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


@pytest.fixture
def make_agent(tmp_path):
    agents: list[Agent] = []

    def make(broker_port: int, printer_port: int, store_id: str, start: bool = True, **over: Any) -> Agent:
        a = Agent(parse_config(agent_config(tmp_path / "state", broker_port, printer_port, store_id, **over)))
        if start:
            a.start()
            assert wait_until(lambda: a.link.subscribed, 10), "agent did not subscribe"
        agents.append(a)
        return a

    yield make
    for a in agents:
        try:
            a.stop()
        except Exception:  # already stopped by the test
            pass


@pytest.fixture
def hq_factory():
    clients: list[HQ] = []

    def make(port: int, store: str, prefix: str = "stores", persistent: bool = False) -> HQ:
        h = HQ(port, prefix, store, persistent)
        clients.append(h)
        return h

    yield make
    for h in clients:
        h.close()


def write_toml(path: Path, cfg: dict[str, Any]) -> Path:
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return json.dumps(v, ensure_ascii=False)

    lines = [f"{k} = {val(v)}" for k, v in cfg.items() if not isinstance(v, (dict, list))]
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {val(vv)}" for kk, vv in v.items()]
    for p in cfg.get("printers", []):
        lines.append("[[printers]]")
        lines += [f"{kk} = {val(vv)}" for kk, vv in p.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def spawn_agent(config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(config_path), "--log-level", "info"],
        stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
    )


@pytest.fixture(scope="session")
def alsa_file(tmp_path_factory):
    """ALSA's default device -> a file (via ~/.asoundrc). ALSA reads its config once per process,
    so every audio test shares this one."""
    home = tmp_path_factory.mktemp("alsa-home")
    out = home / "alsa-out.raw"
    (home / ".asoundrc").write_text(
        'pcm.!default { type file; slave.pcm "null"; file "%s"; format "raw" }\n'
        'pcm.capture_file { type file; slave.pcm "null"; file "%s"; format "raw" }\n' % (out, out)
    )
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    yield out
    if old is not None:
        os.environ["HOME"] = old
