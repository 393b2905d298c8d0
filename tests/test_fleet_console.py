"""store-fleet against real agents (virtual printers) on a real mosquitto: the picture matches what the agents
publish, the console survives garbage, pushes go in canaries and waves and halt at the first store that
rejects or degrades, rollback restores what ran before, requests at scale (issue 16)."""

import json
import uuid

import pytest
from click.testing import CliRunner

from agent import __version__ as agent_version
from agent.app import Agent
from agent.config import parse_config
from agent.signing import generate
from conftest import agent_config, order, wait_until, write_toml
from drivers.vprinter import VirtualPrinter
from fleet import config as fconfig
from fleet.cli import main
from fleet.console import Console
from fleet.rollout import Rollout, check_overlay, rollback_plan
from fleet.state import FleetState, summary_line


class Fleet:
    """N real agents, each with its own virtual printer, under one topic prefix of their own."""

    def __init__(self, broker, tmp_path, n, **over):
        self.broker, self.tmp = broker, tmp_path
        self.prefix = f"fl{uuid.uuid4().hex[:6]}"
        self.ids = [f"cq-{i:04d}" for i in range(1, n + 1)]
        self.printers, self.agents = {}, {}
        for sid in self.ids:
            self.start(sid, **over.get(sid, {}))

    def start(self, sid, **over):
        vp = self.printers.get(sid) or VirtualPrinter().start()
        self.printers[sid] = vp
        cfg = agent_config(self.tmp / sid, self.broker.port, vp.port, sid,
                           mqtt={"topic_prefix": self.prefix}, **over)
        a = Agent(parse_config(cfg))
        a.start()
        assert wait_until(lambda: a.link.subscribed, 10)
        self.agents[sid] = a
        return a

    def stop_agent(self, sid):
        self.agents.pop(sid).stop()

    def close(self):
        for a in self.agents.values():
            try:
                a.stop()
            except Exception:  # noqa: BLE001
                pass
        for vp in self.printers.values():
            vp.stop()

    def console_cfg(self, **over):
        data = {"mqtt": {"host": "127.0.0.1", "port": self.broker.port, "topic_prefix": self.prefix,
                         "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
                "state_dir": str(self.tmp / "fleet"), "push": {"answer_s": 15}}
        for k, v in over.items():
            data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
        return data


@pytest.fixture
def fleet3(broker, tmp_path):
    f = Fleet(broker, tmp_path, 3)
    yield f
    f.close()


def console(f, **over):
    return Console(fconfig.parse(f.console_cfg(**over))).start()


def names(c, ids):
    return {s: (c.state.stores[s].config.config["store"]["name"] if c.state.stores[s].config else None) for s in ids}


def test_the_picture_matches_what_the_agents_publish(fleet3, tmp_path):
    f = fleet3
    a1 = f.agents["cq-0001"]
    c = console(f)
    try:
        assert wait_until(lambda: all(c.state.stores.get(s) and c.state.stores[s].health for s in f.ids), 15)
        f.printers["cq-0002"].set_mode("paper_out")
        f.stop_agent("cq-0003")  # a clean stop: retained "stopped"
        assert wait_until(lambda: c.state.stores["cq-0003"].status == "stopped", 10)
        assert wait_until(lambda: c.state.stores["cq-0002"].health.printers[0].state == "paper_out", 15)
        snap = {s.id: s for s in c.state.snapshot()}
        assert snap["cq-0001"].status == "online" and snap["cq-0003"].status == "stopped"
        assert snap["cq-0001"].health.printers[0].state == "ready"
        assert snap["cq-0001"].version == agent_version and snap["cq-0001"].health.store_id == a1.cfg.store_id
        assert snap["cq-0001"].config.version == 0 and snap["cq-0001"].config.error is None
        rows, counts = c.state.table()
        assert [s.id for s, _ in rows] == ["cq-0003", "cq-0002", "cq-0001"]  # stopped, printer fault, ok
        assert counts == {"ok": 1, "stopped": 1, "printer": 1}
        assert summary_line(counts) == "3 stores: 1 ok, 1 stopped, 1 printer faults"
        # an order printed shows as the last print; a paper_out spell raises an alert the console keeps
        hqtopic = f"{f.prefix}/cq-0001/orders"
        c.link.publish(hqtopic, json.dumps(order(1, "fl")).encode()).wait_for_publish(5)
        assert wait_until(lambda: c.state.stores["cq-0001"].last_print_at is not None, 15)
        assert wait_until(lambda: any(a["code"] == "printer.paper_out" for a in c.state.stores["cq-0002"].alerts.values()), 15)
    finally:
        c.stop()
    # a new console (restart) still knows the open alert from its history, and the CLI shows it all
    path = write_toml(tmp_path / "fleet.toml", f.console_cfg())
    r = CliRunner().invoke(main, ["status", "--config", str(path)])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[-1] == "3 stores: 1 ok, 1 stopped, 1 printer faults"
    assert lines[0].startswith("cq-0003") and "STOPPED" in lines[0] and "! agent stopped" in lines[0]
    assert lines[1].startswith("cq-0002") and "counter=paper_out" in lines[1] and "printer counter paper_out" in lines[1]
    r = CliRunner().invoke(main, ["status", "--problems", "--json", "--config", str(path)])
    assert r.exit_code == 1
    data = json.loads(r.output)
    assert [s["store_id"] for s in data["stores"]] == ["cq-0003", "cq-0002"]
    r = CliRunner().invoke(main, ["store", "cq-0002", "--config", str(path)])
    assert r.exit_code == 0, r.output
    assert "printer    counter (primary): paper_out" in r.output and "printer.paper_out" in r.output
    assert "config     v0" in r.output
    r = CliRunner(env={fconfig.ENV: str(path)}).invoke(main, ["store", "nope-1"])
    assert r.exit_code == 1 and "nothing seen from it" in r.output


def test_the_console_survives_garbage_on_every_topic(broker, tmp_path):
    f = Fleet(broker, tmp_path, 1)
    try:
        c = console(f)
        try:
            p = f.prefix
            assert wait_until(lambda: c.state.stores.get("cq-0001") and c.state.stores["cq-0001"].health, 15)
            junk = [(f"{p}/cq-0001/health", b"\xff\xfe"), (f"{p}/cq-0001/health", b"{}"),
                    (f"{p}/cq-0001/health", b"[" * 100000), (f"{p}/cq-0001/alerts", b'{"id": 5}'),
                    (f"{p}/cq-0001/alerts", json.dumps({"id": "x", "state": "raised", "code": "c", "message": "m" * 10**6}).encode()),
                    (f"{p}/cq-0001/config/state", b'{"v":1}'), (f"{p}/cq-0001/stats", b"null"),
                    (f"{p}/cq-0001/status", b"pwned"), (f"{p}/bad id!/health", b"{}"), (f"{p}/x/orders/result", b'"failed"'),
                    (f"{p}/cq-0009/health", json.dumps({"v": 1, "store_id": "cq-0001", "at": "2026-01-01T00:00:00Z",
                                                         "agent": {}, "mqtt": {}, "printers": [], "audio": {}, "queue": {},
                                                         "alerts_open": 0}).encode())]
            for t, pl in junk:
                c.link.publish(t, pl).wait_for_publish(5)
            assert wait_until(lambda: c.state.stores.get("cq-0001") and c.state.stores["cq-0001"].garbage >= 7, 10)
            s = c.state.stores["cq-0001"]
            assert s.status == "online" and s.health is not None and s.health.store_id == "cq-0001"
            assert "cq-0009" not in {x.id for x in c.state.snapshot() if x.health}  # a health naming another store is refused
            assert s.alerts == {} and s.config.version == 0 and (s.stats is None or s.stats.store_id == "cq-0001")
            rows, counts = c.state.table()
            assert counts == {"ok": 1}
        finally:
            c.stop()
    finally:
        f.close()


def test_fleet_state_refuses_what_does_not_validate():
    st = FleetState("stores")
    assert st.ingest("stores/a/status", b"online") == "a"
    assert st.ingest("stores/a/status", b"x" * (300 * 1024)) is None
    assert st.ingest("stores/a/health", b'{"v":2}') is None and st.stores["a"].garbage == 2
    assert st.ingest("stores/../status", b"online") is None and st.garbage == 1
    assert st.ingest("other/a/status", b"lost") is None and st.stores["a"].status == "online"
    assert st.ingest("stores/a/alerts", json.dumps({"id": "p", "code": "printer.paper_out", "state": "escalated"}).encode())
    assert [p.kind for p in st.problems(st.snapshot()[0])] == ["escalated", "silent"]  # online, no health yet
    assert st.ingest("stores/a/alerts", json.dumps({"id": "p", "code": "printer.paper_out", "state": "cleared"}).encode())
    assert [p.kind for p in st.problems(st.snapshot()[0])] == ["silent"]


def test_a_push_goes_in_canaries_and_waves_and_rollback_restores_it(fleet3, tmp_path):
    f = fleet3
    c = console(f)
    events = []
    try:
        assert wait_until(lambda: all(c.state.stores.get(s) and c.state.stores[s].config for s in f.ids), 15)
        first = {"store": {"name": "甲店"}, "texts": {"warm_tip_title": "用药小贴士"}}
        assert check_overlay(first, c.state.snapshot()) == []
        r = Rollout(c, f.ids, first, canary=1, wave=2, soak=0.5, pattern="cq-*", on_event=events.append).run()
        assert r["state"] == "done", r
        assert [s["outcome"] for s in r["steps"]] == ["good"] * 3 and [s["version"] for s in r["steps"]] == [1, 1, 1]
        texts = [e["text"] for e in events]
        assert texts[1].startswith("canaries: cq-0001 (1)") and any(t.startswith("wave 1: cq-0002, cq-0003 (2)") for t in texts)
        assert wait_until(lambda: names(c, f.ids) == dict.fromkeys(f.ids, "甲店"), 10)
        assert all(a.cfg.store.name == "甲店" for a in f.agents.values())
        second = {"store": {"name": "乙店"}}
        r2 = Rollout(c, f.ids, second, canary=1, wave=5, soak=0.2, pattern="cq-*").run()
        assert r2["state"] == "done"
        assert wait_until(lambda: names(c, f.ids) == dict.fromkeys(f.ids, "乙店"), 10)
        push, overlays, cannot = rollback_plan(c.history)
        assert push["id"] == r2["id"] and cannot == [] and overlays == dict.fromkeys(f.ids, first)
        path = write_toml(tmp_path / "fleet.toml", f.console_cfg())  # the same history: the CLI rolls it back
        r = CliRunner().invoke(main, ["rollback", "--config", str(path)])
        assert r.exit_code == 0, r.output
        assert f"rollback #{r2['id'] + 1}: 3 stores" in r.output and "done: 3 stores" in r.output
        assert wait_until(lambda: names(c, f.ids) == dict.fromkeys(f.ids, "甲店"), 10)
        assert all(a.cfg.store.name == "甲店" and a.cfg.texts["warm_tip_title"] == "用药小贴士" for a in f.agents.values())
        assert {s.config.version for s in c.state.snapshot()} == {3}
        c.refresh_pushed()  # the rollback ran in another console process; serve and watch read it from the history
        rows, counts = c.state.table()
        assert counts == {"ok": 3}  # the versions match what HQ last pushed: nothing stale
    finally:
        c.stop()


def test_a_rejecting_canary_halts_the_push_with_nothing_sent_to_the_rest(broker, tmp_path):
    pem, pub = generate()
    _, other = generate()
    key = tmp_path / "hq.key"
    key.write_bytes(pem)
    # the canary trusts another key (a store that missed a key rotation): it refuses the signed set
    f = Fleet(broker, tmp_path, 3, **{"cq-0001": {"security": {"hq_public_key": other}},
                                      "cq-0002": {"security": {"hq_public_key": pub}},
                                      "cq-0003": {"security": {"hq_public_key": pub}}})
    try:
        path = write_toml(tmp_path / "fleet.toml", f.console_cfg(signing={"key_file": str(key)}))
        overlay = tmp_path / "overlay.toml"
        overlay.write_text('[store]\nname = "丙店"\n', encoding="utf-8")
        r = CliRunner().invoke(main, ["push", str(overlay), "--stores", "cq-*", "--canary", "1", "--wave", "5",
                                      "--soak", "0.2", "--config", str(path)])
        assert r.exit_code == 1, r.output
        assert "halted at cq-0001: rejected: signature: signed with key" in r.output
        assert "2 store(s) not sent" in r.output
        c = console(f)
        try:
            assert wait_until(lambda: all(c.state.stores.get(s) and c.state.stores[s].config for s in f.ids), 10)
            assert {s: c.state.stores[s].config.version for s in f.ids} == {"cq-0001": 0, "cq-0002": 0, "cq-0003": 0}
            p = c.history.push()
            assert p["state"] == "halted" and [s["store"] for s in p["steps"]] == ["cq-0001"]
            assert p["steps"][0]["outcome"] == "rejected"
            assert any("halted at cq-0001" in x["text"] for x in p["log"])  # the progress is in the history
        finally:
            c.stop()
        # an overlay with a file-only key never leaves the console
        overlay.write_text('[mqtt]\nhost = "10.9.9.9"\n', encoding="utf-8")
        r = CliRunner().invoke(main, ["push", str(overlay), "--stores", "cq-*", "--config", str(path)])
        assert r.exit_code == 2 and "mqtt.host: set in the config file only" in r.output and "nothing sent" in r.output
        # signed with the right key, the other two take it
        overlay.write_text('[store]\nname = "丙店"\n', encoding="utf-8")
        r = CliRunner().invoke(main, ["push", str(overlay), "--stores", "cq-0002,cq-0003", "--canary", "1",
                                      "--soak", "0.2", "--config", str(path)])
        assert r.exit_code == 0, r.output
        assert f.agents["cq-0002"].cfg.store.name == "丙店" and f.agents["cq-0003"].cfg.store.name == "丙店"
        assert f.agents["cq-0001"].cfg.store.name != "丙店"
    finally:
        f.close()


def test_a_store_that_degrades_during_the_soak_halts_the_push(fleet3):
    f = fleet3
    c = console(f)
    try:
        assert wait_until(lambda: all(c.state.stores.get(s) and c.state.stores[s].health for s in f.ids), 15)

        def on_event(e):
            if e.get("store") == "cq-0001" and "applied" in e["text"]:
                f.printers["cq-0001"].set_mode("paper_out")  # the canary's printer fails right after the change

        r = Rollout(c, f.ids, {"print": {"retry_s": 1.0}}, canary=1, wave=5, soak=8, on_event=on_event).run()
        assert r["state"] == "halted"
        assert "halted at cq-0001: printer fault after the change: counter paper_out" in r["result"]
        assert [s["store"] for s in r["steps"]] == ["cq-0001"]
    finally:
        c.stop()


def test_requests_at_scale_list_answers_and_silent_stores(fleet3, tmp_path):
    f = fleet3
    c = console(f)
    try:
        assert wait_until(lambda: all(c.state.stores.get(s) and c.state.stores[s].config for s in f.ids), 15)
    finally:
        c.stop()
    f.stop_agent("cq-0003")
    path = write_toml(tmp_path / "fleet.toml", f.console_cfg())
    r = CliRunner().invoke(main, ["request", "status", "--stores", "cq-*", "--timeout", "5", "--config", str(path)])
    assert r.exit_code == 1, r.output
    assert "warning: signing.key_file is not set: requests go out unsigned" in r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("cq-0001") and " ok " in lines[0] and lines[1].startswith("cq-0002")
    assert lines[-1] == "3 stores: 2 ok, 0 error, 1 no answer within 5 s: cq-0003"
    r = CliRunner().invoke(main, ["request", "test_print", "--stores", "cq-0001", "--args", '{"printer":"nope"}',
                                  "--json", "--config", str(path)])
    data = json.loads(r.stdout)
    assert data["answers"]["cq-0001"]["status"] == "error" and data["no_answer"] == []
    r = CliRunner().invoke(main, ["request", "test_print", "--stores", "cq-0001,cq-0002", "--timeout", "5", "--config", str(path)])
    assert r.exit_code == 0, r.output
    assert wait_until(lambda: len(f.printers["cq-0001"].jobs) >= 1 and len(f.printers["cq-0002"].jobs) >= 1, 10)


def test_keygen_writes_a_private_key_and_prints_the_public_one(tmp_path):
    out = tmp_path / "k" / "hq.key"
    r = CliRunner().invoke(main, ["keygen", "--out", str(out)])
    assert r.exit_code == 0, r.output
    public = r.stdout.strip().splitlines()[0]
    assert public.startswith("ed25519:") and oct(out.stat().st_mode & 0o777) == "0o600"
    from agent.signing import Signer  # noqa: PLC0415
    assert Signer(out.read_bytes()).public == public
    r = CliRunner().invoke(main, ["keygen", "--out", str(out)])
    assert r.exit_code == 2 and "exists" in r.output


def test_watch_redraws_the_fleet_live(fleet3, tmp_path):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import time  # noqa: PLC0415

    f = fleet3
    path = write_toml(tmp_path / "fleet.toml", f.console_cfg())
    out = tmp_path / "watch.out"
    with open(out, "wb") as fh:
        p = subprocess.Popen([sys.executable, "-m", "fleet.cli", "watch", "--every", "0.2", "--config", str(path)],
                             stdout=fh, stderr=subprocess.STDOUT)
        try:
            assert wait_until(lambda: b"3 stores: 3 ok" in out.read_bytes(), 20), out.read_bytes()[-500:]
            f.printers["cq-0001"].set_mode("paper_out")
            assert wait_until(lambda: b"3 stores: 2 ok, 1 printer faults" in out.read_bytes(), 20), out.read_bytes()[-500:]
            time.sleep(0.1)
        finally:
            p.terminate()
            p.wait(10)
    import re  # noqa: PLC0415
    frames = re.split(r"(?m)^\d\d:\d\d:\d\d connected$", out.read_bytes().decode())  # one per redraw
    last = [fr for fr in frames if "1 printer faults" in fr][-1]
    assert last.splitlines()[1].startswith("cq-0001"), last  # problems first


def test_the_next_version_goes_above_a_reverted_one_and_ignores_junk(tmp_path):
    c = Console(fconfig.parse({"state_dir": str(tmp_path)}))  # not connected: fed by hand
    sent = []
    c.send_config = lambda sid, v, o: sent.append((sid, v)) or None

    def state(sid, version, err):
        body = {"v": 1, "version": version, "applied_at": None, "sha256": "0" * 64, "config": {}, "error": err}
        assert c.state.ingest(f"stores/{sid}/config/state", json.dumps(body).encode()) == sid

    state("a", 5, {"version": 7, "message": "not connected and subscribed within 120 s with config version 7: reverted"})
    state("b", 5, {"version": 2**63 - 1, "message": "version 9223372036854775807 is more than 1000000 ahead"})
    state("c", 0, {"version": 9, "message": "signature: bad signature"})
    r = Rollout(c, ["a", "b", "c"], {})
    r.push_id = c.history.start_push("push", "", {})
    for sid in ("a", "b", "c"):
        r._send(sid)
    assert sent == [("a", 8), ("b", 6), ("c", 1)]
    assert c.history.push(r.push_id)["steps"][0]["prev_overlay"] is None  # v5 was not pushed by this console
    assert c.history.push(r.push_id)["steps"][2]["prev_overlay"] == {}  # v0: the file alone
    c.history.close()


def test_the_history_keeps_90_days(tmp_path):
    from fleet.history import History  # noqa: PLC0415

    h = History(tmp_path / "h.sqlite3")
    h.on_change("a", "alert", {"id": "x", "code": "printer.paper_out", "state": "raised"})
    h.on_change("a", "status", {"state": "lost", "at": 1000.0})
    h.on_change("a", "status", {"state": "online", "at": 2000.0})
    h.db.execute("UPDATE alert_events SET seen = seen - 91 * 86400")
    h.prune()
    assert h.alerts_of("a") == [] and h.outages_of("a") == []  # closed long ago: gone
    h.on_change("a", "status", {"state": "lost", "at": 3000.0})
    h.prune()
    assert h.outages_of("a") == [{"state": "lost", "since": 3000.0, "until": None}]  # an open outage stays
    h.close()
