"""config/set -> config/state (CONTRACT §3): versioned overlays, live apply, persistence, restart and revert."""

import json
import threading
import time

import jsonschema
import pytest

from agent.app import Agent
from agent.daemon import run_supervised
from agent.config import ConfigError, merge_patch, parse_config, restart_needed
from agent.schema import schemas
from agent.remote import STATE_FILE, RemoteConfig
from conftest import agent_config, order, wait_until
from drivers.vprinter import VirtualPrinter
from tickets_util import check_exactly_once, tickets


def set_config(hq, version, overlay, raw=None):
    body = raw if raw is not None else json.dumps({"v": 1, "version": version, "config": overlay}, ensure_ascii=False).encode()
    hq.publish(body, topic=hq.topic("config", "set"))


def states(hq):
    return [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("config", "state")]


def wait_state(hq, pred, timeout=15):
    assert wait_until(lambda: any(pred(s) for s in states(hq)), timeout), f"no such config/state; got {states(hq)[-3:]}"
    return [s for s in states(hq) if pred(s)][-1]


def base(tmp_path, broker_port=1883, printer_port=9100, store="s1", **over):
    return parse_config(agent_config(tmp_path / "state", broker_port, printer_port, store, **over))


# -- the overlay itself -------------------------------------------------------------------------

def test_merge_patch_follows_rfc_7396():
    target = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]}
    assert merge_patch(target, {"b": {"c": None, "e": 4}, "l": [9], "a": None}) == {"b": {"d": 3, "e": 4}, "l": [9]}
    assert target == {"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]}  # untouched


def test_version_ordering_replays_and_persistence(tmp_path):
    cfg = base(tmp_path)
    (tmp_path / "state").mkdir()
    rc = RemoteConfig(cfg)
    assert rc.version == 0 and rc.effective() is cfg

    def msg(version, overlay):
        return json.dumps({"v": 1, "version": version, "config": overlay}).encode()

    d = rc.propose(msg(3, {"store": {"name": "新名字"}}), cfg)
    assert d.kind == "apply" and d.cfg.store.name == "新名字" and d.cfg.store.phone == cfg.store.phone and not d.restart
    rc.commit(d)
    assert (tmp_path / "state" / STATE_FILE).stat().st_mode & 0o777 == 0o600

    assert rc.propose(msg(3, {"store": {"name": "新名字"}}), cfg).kind == "same"  # a retained replay
    for version in (3, 2):  # same version, other content; an older one
        d = rc.propose(msg(version, {"store": {"name": "旧"}}), cfg)
        assert d.kind == "refused" and d.version == version and "not greater than the applied version 3" in d.message

    again = RemoteConfig(cfg)  # a restart, broker unreachable: the overlay comes from state_dir
    assert again.version == 3 and again.effective().store.name == "新名字"
    # each set replaces the whole overlay: version 4 without the name goes back to the file's name
    d = again.propose(msg(4, {"print": {"retry_s": 1.0}}), cfg)
    assert d.cfg.store.name == cfg.store.name and d.cfg.print.retry_s == 1.0


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"{not json", "bad config/set"),
        (b'{"v":1,"version":"7","config":{}}', "version"),
        (b'{"v":1,"version":true,"config":{}}', "version"),
        (b'{"v":1,"version":0,"config":{}}', "version"),
        (b'{"v":2,"version":5,"config":{}}', "v"),
        (b'{"v":1,"version":5,"config":[]}', "config"),
        (b'{"v":1,"version":5,"config":{"printers":[{"name":"counter","connection":"network","hsot":"x"}]}}', "printers[0].hsot: set in the config file only"),
        (b'{"v":1,"version":5,"config":{"timers":{"hsot":1}}}', "timers.hsot: unknown key"),
        (b'{"v":1,"version":5,"config":{"store_id":"other"}}', "store_id: set in the config file only"),
        (b'{"v":1,"version":5,"config":{"state_dir":"/tmp"}}', "state_dir: set in the config file only"),
        (b'{"v":1,"version":5,"config":{"health":{"printer_poll_s":0}}}', "health.printer_poll_s"),
        (b'{"v":1,"version":5,"config":{"templates":{"custom":{"receipt":"{% if %}"}}}}', "template receipt line 1"),
        (b'{"v":1,"version":5,"config":{"rules":{"order.cancelled":{"printer":"nope"}}}}', "no printer named 'nope'"),
    ],
)
def test_bad_sets_are_refused_with_a_reason(tmp_path, payload, reason):
    cfg = base(tmp_path)
    (tmp_path / "state").mkdir()
    d = RemoteConfig(cfg).propose(payload, cfg)
    assert d.kind == "refused" and reason in d.message, d.message


def test_restart_keys_are_those_marked_in_the_schema(tmp_path):
    cfg = base(tmp_path)
    changed = parse_config(merge_patch(cfg.model_dump(mode="json", exclude_unset=True),
                                       {"mqtt": {"keepalive_s": 60}, "gpio": {"enabled": True}, "store": {"name": "x"}}))
    assert restart_needed(cfg, changed) == ["mqtt", "gpio"]
    sound = parse_config(merge_patch(cfg.model_dump(mode="json", exclude_unset=True), {"sound": {"enabled": True, "volume": 0.2}}))
    assert restart_needed(cfg, sound) == ["sound.enabled"]


def test_an_unreadable_state_file_runs_the_file_alone(tmp_path):
    cfg = base(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / STATE_FILE).write_text("{garbage")
    rc = RemoteConfig(cfg)
    assert rc.effective() is cfg and rc.version == 0 and "unreadable" in rc.error["message"]


def test_an_overlay_that_cannot_be_stored_is_not_applied(tmp_path, monkeypatch):
    cfg = base(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    rc = RemoteConfig(cfg)
    d = rc.propose(b'{"v":1,"version":1,"config":{"store":{"name":"x"}}}', cfg)
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("agent.remote.tempfile.mkstemp", full)  # the disk is full: nothing can be written
    with pytest.raises(OSError):
        rc.commit(d)
    monkeypatch.undo()
    assert rc.version == 0 and rc.overlay == {} and RemoteConfig(cfg).version == 0


# -- through the broker, against a running agent --------------------------------------------------

@pytest.fixture
def setup(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id, mqtt={"password": "s3cret-pw", "host": "127.0.0.1"})
    return agent, hq


def test_boot_publishes_state_version_0_with_secrets_redacted(setup):
    agent, hq = setup
    s = wait_state(hq, lambda s: s["version"] == 0)
    assert s["v"] == 1 and s["error"] is None and s["applied_at"] is None and len(s["sha256"]) == 64
    assert s["config"]["mqtt"]["password"] == "***" and "s3cret-pw" not in json.dumps(s)
    assert s["config"]["store_id"] == agent.cfg.store_id
    jsonschema.validate(s, json.loads(schemas()["config-state.schema.json"]))


def test_a_valid_set_applies_live_and_shows_in_the_tickets(setup, vprinter):
    agent, hq = setup
    wait_state(hq, lambda s: s["version"] == 0)
    set_config(hq, 1, {"store": {"name": "远程改名大药房"}, "texts": {"paid": "远程实付"},
                       "rules": {"order.created": {"documents": ["receipt"]}}})
    s = wait_state(hq, lambda s: s["version"] == 1)
    assert s["error"] is None and s["config"]["store"]["name"] == "远程改名大药房" and s["applied_at"]
    hq.publish(order(1, "live"))
    assert wait_until(lambda: "MT-live00001" in [o for o, _ in tickets(vprinter)])
    text = [j.text for j in vprinter.jobs if "MT-live00001" in j.text]
    assert "远程改名大药房" in text[0] and "远程实付" in text[0]
    assert wait_until(lambda: hq.final().get("evt-live00001"))
    assert hq.final()["evt-live00001"]["documents"] == ["receipt"]  # the rule was swapped: no warm-tip card


def test_refused_sets_leave_the_running_config(setup, vprinter):
    agent, hq = setup
    set_config(hq, 5, {"store": {"name": "五"}})
    wait_state(hq, lambda s: s["version"] == 5)
    set_config(hq, 4, {"store": {"name": "四"}})
    s = wait_state(hq, lambda s: s["error"] and s["error"]["version"] == 4)
    assert s["version"] == 5 and s["config"]["store"]["name"] == "五" and "not greater" in s["error"]["message"]
    set_config(hq, 6, {"printers": [{"name": "counter", "connection": "network", "hsot": "x"}]})
    s = wait_state(hq, lambda s: s["error"] and s["error"]["version"] == 6)
    assert s["version"] == 5 and "printers[0].hsot: set in the config file only" in s["error"]["message"]
    set_config(hq, None, None, raw=b"\xff\xfe not json")
    wait_state(hq, lambda s: s["error"] and "bad config/set" in s["error"]["message"])
    n = len(states(hq))
    set_config(hq, 5, {"store": {"name": "五"}})  # a replay of the applied version: answered, no error
    s = wait_state(hq, lambda s: len(states(hq)) > n)
    assert states(hq)[-1]["error"]["version"] != 5 and agent.cfg.store.name == "五"
    hq.publish(order(1, "ref"))  # and orders still print
    assert wait_until(lambda: hq.final().get("evt-ref00001"))


def test_printers_reopen_without_losing_queued_jobs(broker, make_agent, hq_factory, store_id):
    old_p, new_p = VirtualPrinter().start(), VirtualPrinter().start()
    try:
        old_p.set_mode("paper_out")
        hq = hq_factory(broker.port, store_id)
        agent = make_agent(broker.port, old_p.port, store_id)
        ids = [order(i, "mv") for i in range(1, 9)]
        for ev in ids:
            hq.publish(ev)
        assert wait_until(lambda: len([r for r in hq.results() if r["status"] == "queued"]) == 8)
        # HQ changes what it may of the printer (not its host or port: issue 19): it is reopened
        set_config(hq, 1, {"printers": [{"name": "counter", "timeout_s": 1.5, "confirm": True}]})
        wait_state(hq, lambda s: s["version"] == 1)
        assert agent.cfg.printers[0].timeout_s == 1.5 and agent.cfg.printers[0].port == old_p.port
        old_p.set_mode("ready")
        assert wait_until(lambda: len(hq.final()) == 8, 30), hq.results()[-3:]
        stats = check_exactly_once(old_p, [ev["order"]["id"] for ev in ids])
        assert stats["printed"] == 8 and not tickets(new_p)
        # pointing the printer elsewhere, or adding one, is for the config file
        set_config(hq, 2, {"printers": [{"name": "counter", "connection": "network", "host": "127.0.0.1", "port": new_p.port}]})
        s = wait_state(hq, lambda s: s["error"] and s["error"]["version"] == 2)
        assert "printers[0].port: set in the config file only" in s["error"]["message"] and s["version"] == 1
        set_config(hq, 3, {"printers": [{"name": "front", "connection": "network", "host": "127.0.0.1", "port": new_p.port}]})
        s = wait_state(hq, lambda s: s["error"] and s["error"]["version"] == 3)
        assert "printers[0].name (a printer is added in the config file)" in s["error"]["message"]
        assert agent.cfg.printers[0].port == old_p.port
    finally:
        old_p.stop()
        new_p.stop()


def test_remote_templates_render_in_the_sandbox(setup, vprinter):
    agent, hq = setup
    receipt = "@bold| 远程模板 {{ order.id }}\n@cut\n"
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}\n@cut\n"
    set_config(hq, 1, {"templates": {"custom": {"receipt": receipt, "warm_tip": evil}}})
    wait_state(hq, lambda s: s["version"] == 1)
    hq.publish(order(1, "tpl"))
    assert wait_until(lambda: hq.final().get("evt-tpl00001"))
    texts = [j.text for j in vprinter.jobs]
    assert any("远程模板 MT-tpl00001" in t for t in texts)
    assert any("温馨提示" in t and "MT-tpl00001" in t for t in texts)  # the unsafe one fell back to the built-in
    assert not any("subclasses" in t or "<class" in t for t in texts)
    assert wait_until(lambda: any(a.code == "agent.template_failed" for a in agent.alerts.open_alerts()))


def test_the_overlay_survives_a_restart_without_the_broker(broker, vprinter, hq_factory, store_id, tmp_path):
    cfg = parse_config(agent_config(tmp_path / "state", broker.port, vprinter.port, store_id))
    hq = hq_factory(broker.port, store_id)
    a = Agent(cfg)
    a.start()
    try:
        assert wait_until(lambda: a.link.subscribed)
        set_config(hq, 7, {"store": {"name": "持久化"}})
        wait_state(hq, lambda s: s["version"] == 7)
    finally:
        a.stop()
    offline = parse_config(agent_config(tmp_path / "state", 1, vprinter.port, store_id))  # no broker there
    b = Agent(offline)
    try:
        assert b.cfg.store.name == "持久化" and b.remote.version == 7
    finally:
        b.journal.close()


# -- restart-tier keys: in-process restart, probation, revert ----------------------------------------

@pytest.fixture
def supervised(broker, vprinter, hq_factory, store_id, tmp_path):
    cfg = parse_config(agent_config(tmp_path / "state", broker.port, vprinter.port, store_id, mqtt={"probation_s": 5}))
    hq = hq_factory(broker.port, store_id)
    stop = threading.Event()
    t = threading.Thread(target=run_supervised, args=(cfg, stop, 0.1), daemon=True)
    t.start()
    wait_state(hq, lambda s: s["version"] == 0)
    yield hq
    stop.set()
    t.join(20)
    assert not t.is_alive()


def test_a_restart_key_restarts_the_agent_and_is_kept_once_connected(supervised, tmp_path):
    hq = supervised
    set_config(hq, 1, {"sound": {"enabled": True, "volume": 0.0}})  # the one remote restart key left (issue 19)
    s = wait_state(hq, lambda s: s["version"] == 1)
    assert s["config"]["sound"]["enabled"] and s["error"] is None
    assert wait_until(lambda: not json.loads((tmp_path / "state" / STATE_FILE).read_text())["probation"])
    hq.publish(order(1, "rs"))
    assert wait_until(lambda: hq.final().get("evt-rs00001"))


def test_an_mqtt_change_is_refused_and_the_store_keeps_its_connection(supervised, tmp_path):
    hq = supervised
    set_config(hq, 1, {"store": {"name": "一"}})
    wait_state(hq, lambda s: s["version"] == 1)
    set_config(hq, 2, {"store": {"name": "一"}, "mqtt": {"port": 1, "probation_s": 5}})  # nothing listens on port 1
    s = wait_state(hq, lambda s: s["error"] and s["error"]["version"] == 2, timeout=40)
    assert s["version"] == 1 and s["config"]["mqtt"]["port"] != 1
    assert "mqtt.port: set in the config file only" in s["error"]["message"]
    stored = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    assert stored["version"] == 1 and not stored["probation"]
    hq.publish(order(1, "rv"))  # the store works again on the old settings
    assert wait_until(lambda: hq.final().get("evt-rv00001"))


def test_config_show_includes_the_overlay(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, write_toml

    raw = agent_config(tmp_path / "state", 1, 1, "show-2")
    f = write_toml(tmp_path / "c.toml", raw)
    cfg = parse_config(raw)
    (tmp_path / "state").mkdir()
    rc = RemoteConfig(cfg)
    rc.commit(rc.propose(b'{"v":1,"version":9,"config":{"store":{"name":"\xe8\xbf\x9c\xe7\xa8\x8b"}}}', cfg))

    def show(*args):
        r = subprocess.run([sys.executable, "-m", "agent.cli", "config", "show", "--config", str(f), *args],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = show()
    assert "remote overlay version 9 (store)" in out and 'store.name = "远程"' in out
    assert json.loads(show("--json"))["data"]["store"]["name"] == "远程"
    assert json.loads(show("--json", "--file-only"))["data"]["store"]["name"] == cfg.store.name


# -- hardening (from review) ------------------------------------------------------------------------

@pytest.mark.parametrize("overlay, key", [
    ({"mqtt": {"topic_prefix": "chain"}}, "mqtt.topic_prefix"),
    ({"mqtt": {"client_id": "other"}}, "mqtt.client_id"),
    ({"mqtt": {"username": "other"}}, "mqtt.username"),
    ({"mqtt": {"password_file": "/etc/shadow"}}, "mqtt.password_file"),
    ({"mqtt": {"tls": True, "ca_file": "/tmp/evil.pem"}}, "mqtt.ca_file"),
    ({"printers": [{"name": "counter", "connection": "file", "path": "/var/lib/store-agent/journal.sqlite3"}]}, "printers[0].path"),
    ({"printers": [{"name": "counter", "connection": "virtual", "spool_dir": "/etc"}]}, "printers[0].spool_dir"),
    ({"templates": {"dir": "/"}}, "templates.dir"),
])
def test_identity_and_path_keys_are_file_only(tmp_path, overlay, key):
    cfg = base(tmp_path)
    (tmp_path / "state").mkdir()
    d = RemoteConfig(cfg).propose(json.dumps({"v": 1, "version": 1, "config": overlay}).encode(), cfg)
    assert d.kind == "refused" and f"{key}: set in the config file only" in d.message, d.message


def test_errors_never_echo_secrets_or_whole_payloads(tmp_path):
    cfg = base(tmp_path)
    (tmp_path / "state").mkdir()
    rc = RemoteConfig(cfg)
    truncated = b'{"v":1,"version":3,"config":{"mqtt":{"password":"hunter2-SECRET"},"texts":{"paid":"' + b"x" * 900_000
    d = rc.propose(truncated, cfg)
    assert d.kind == "refused" and "hunter2" not in d.message and len(d.message) <= 500
    d = rc.propose(b'{"v":1,"version":3,"config":{"mqtt":{"password":12345678}}}', cfg)
    assert d.kind == "refused" and "12345678" not in d.message and "mqtt.password" in d.message
    hook = {"escalation": {"notifiers": [{"kind": "dingtalk", "url": "https://oapi.dingtalk.com/robot/send?access_token=TOKEN123"}]}}
    d = rc.propose(json.dumps({"v": 1, "version": 3, "config": hook}).encode(), cfg)
    assert d.kind == "apply"
    assert "TOKEN123" not in rc.state(d.cfg).decode() and "robot/send?***" in rc.state(d.cfg).decode()


def test_deep_nesting_is_refused_not_raised(tmp_path):
    cfg = base(tmp_path)
    (tmp_path / "state").mkdir()
    rc = RemoteConfig(cfg)
    deep = b'{"v":1,"version":3,"config":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001
    assert rc.propose(deep, cfg).kind == "refused"
    template = "{{" + "(" * 50_000 + "1" + ")" * 50_000 + "}}"
    d = rc.propose(json.dumps({"v": 1, "version": 3, "config": {"templates": {"custom": {"receipt": template}}}}).encode(), cfg)
    assert d.kind == "refused" and "receipt" in d.message


def test_probation_keeps_the_known_good_version_and_survives_crashes(tmp_path, monkeypatch):
    cfg = base(tmp_path)
    (tmp_path / "state").mkdir()
    rc = RemoteConfig(cfg)

    def send(version, overlay):
        d = rc.propose(json.dumps({"v": 1, "version": version, "config": overlay}).encode(), cfg)
        assert d.kind == "apply", d.message
        rc.commit(d)
        return d

    send(4, {"store": {"name": "good"}})
    assert not send(5, {"sound": {"enabled": True}}).restart == []
    send(6, {"sound": {"enabled": True, "volume": 0.5}, "store": {"name": "x"}})  # a second change before the first was confirmed
    assert rc.previous["version"] == 4  # still the known-good one

    # a save that fails leaves the state as it was (and the revert is tried again later)
    monkeypatch.setattr("agent.remote.tempfile.mkstemp", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(OSError):
        rc.revert("test")
    assert rc.probation and rc.version == 6
    monkeypatch.undo()

    # the agent keeps dying before it connects: the third boot on probation reverts
    for boot in range(1, 4):
        again = RemoteConfig(cfg)
        again.effective(boot=True)
        assert again.probation_boots == boot and again.version == 6
    last = RemoteConfig(cfg)
    assert last.effective(boot=True).store.name == "good"
    assert last.version == 4 and not last.probation and last.error["version"] == 6 and last.reverted == 6
    assert RemoteConfig(cfg).effective().store.name == "good"  # the CLI only looks
    d = last.propose(json.dumps({"v": 1, "version": 6, "config": {"sound": {"enabled": True, "volume": 0.5}, "store": {"name": "x"}}}).encode(), cfg)
    assert d.kind == "refused" and "reverted" in d.message  # a retained replay is not applied again


def test_a_retained_mqtt_set_is_refused_and_never_restarts_the_agent(supervised):
    hq = supervised
    onlines = hq.statuses().count("online")
    body = json.dumps({"v": 1, "version": 3, "config": {"mqtt": {"port": 1}}}).encode()
    hq.c.publish(hq.topic("config", "set"), body, qos=1, retain=True).wait_for_publish(10)
    s = wait_state(hq, lambda s: s["error"] and s["error"]["version"] == 3, timeout=40)
    assert s["version"] == 0 and "mqtt.port: set in the config file only" in s["error"]["message"]
    time.sleep(2)
    assert hq.statuses().count("online") == onlines
    hq.c.publish(hq.topic("config", "set"), b"", qos=1, retain=True).wait_for_publish(10)


def test_an_in_process_restart_does_not_tell_systemd_it_is_stopping(broker, vprinter, hq_factory, store_id, tmp_path, monkeypatch):
    import socket

    sock_path = tmp_path / "notify.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(sock_path))
    rx.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    got = []

    def drain():
        while True:
            try:
                got.append(rx.recv(4096).decode())
            except socket.timeout:
                return

    cfg = parse_config(agent_config(tmp_path / "state", broker.port, vprinter.port, store_id, mqtt={"probation_s": 5}))
    hq = hq_factory(broker.port, store_id)
    stop = threading.Event()
    t = threading.Thread(target=run_supervised, args=(cfg, stop, 0.1), daemon=True)
    t.start()
    try:
        wait_state(hq, lambda s: s["version"] == 0)
        set_config(hq, 1, {"sound": {"enabled": True, "volume": 0.0}})
        wait_state(hq, lambda s: s["version"] == 1)
        drain()
        assert got.count("READY=1") == 2 and "STOPPING=1" not in got, got
    finally:
        stop.set()
        t.join(20)
    drain()
    assert got[-1] == "STOPPING=1"
    rx.close()
