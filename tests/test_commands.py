"""Commands through MQTT requests and through the CLI (control socket) against a running agent."""

import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import ROOT, agent_config, example, fresh, wait_until, write_toml
from tickets_util import tickets


@pytest.fixture
def running(broker, vprinter, make_agent, hq_factory, store_id, tmp_path):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id)
    cfg_file = write_toml(tmp_path / "agent.toml", agent_config(tmp_path / "state", broker.port, vprinter.port, store_id))
    return agent, hq, cfg_file


def request(hq, command, args=None, transaction="tx-1", raw=None):
    payload = raw if raw is not None else json.dumps({"transaction": transaction, "args": args or {}}).encode()
    hq.publish(payload, topic=hq.topic("request", command))
    topic = hq.topic("response", command)
    assert wait_until(lambda: any(t == topic for t, _, _ in list(hq.messages)), 10), f"no response to {command}"
    replies = [json.loads(p) for t, p, _ in list(hq.messages) if t == topic]
    return replies[-1]


def cli(cfg_file, *args):
    r = subprocess.run([sys.executable, "-m", "agent.cli", *args, "--config", str(cfg_file)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    return r


def test_status_over_mqtt_echoes_the_transaction(running):
    agent, hq, _ = running
    r = request(hq, "status", transaction="abc-123")
    assert r["transaction"] == "abc-123" and r["status"] == "ok" and r["error"] is None
    assert r["data"]["mqtt"]["connected"] and r["data"]["printers"][0]["name"] == "counter"


@pytest.mark.parametrize(
    "command, args, raw, error",
    [
        ("explode", {}, None, "unknown command"),
        ("silence", {"minutes": "ten"}, None, "bad arguments for silence: minutes"),
        ("silence", {"minutes": -1}, None, "minutes"),
        ("silence", {"minutes": 721}, None, "minutes"),
        ("chime", {"sound": "urgent"}, None, "urgent not played: sound is disabled in the config"),
        ("reprint", {}, None, "order_id"),
        ("reprint", {"order_id": "NOPE"}, None, "no order NOPE"),
        ("test_print", {"printer": "nope"}, None, "no printer named"),
        ("chime", {"sound": "trumpet"}, None, "unknown sound"),
        ("ack", {"alert_id": "nope"}, None, "no open alert"),
        ("status", {"extra": 1}, None, "bad arguments"),
        ("status", None, b"{not json", "bad request"),
        ("status", None, b"[1]", "bad request"),
    ],
)
def test_bad_requests_get_an_error_reply(running, command, args, raw, error):
    _, hq, _ = running
    r = request(hq, command, args, raw=raw)
    assert r["status"] == "error" and error in r["error"], r


def test_reprint_over_mqtt_prints_marked_copies(running, vprinter):
    _, hq, _ = running
    hq.publish(fresh(example("order-created-meituan.json")))
    assert vprinter.wait_jobs(2)
    r = request(hq, "reprint", {"order_id": "MT-8812345678901"})
    assert r["status"] == "ok" and r["data"]["jobs"] == ["receipt", "warm_tip"]
    assert vprinter.wait_jobs(4)
    assert tickets(vprinter) == [("MT-8812345678901", False), ("MT-8812345678901", True)]


def test_queue_diagnose_chime_silence_test_print(running, vprinter):
    agent, hq, _ = running
    vprinter.set_mode("paper_out")
    hq.publish(fresh(example("order-created-meituan.json")))
    assert wait_until(lambda: request(hq, "queue")["data"]["pending"] == 2)
    d = request(hq, "diagnose")["data"]
    assert d["printers"][0]["state"] == "paper_out" and d["disk"]["free_mb"] > 0
    vprinter.set_mode("ready")
    assert request(hq, "test_print")["status"] == "ok"
    assert vprinter.wait_for(lambda v: any("打印测试页" in j.text for j in v.jobs), 15)
    assert request(hq, "silence", {"minutes": 5})["status"] == "ok"
    assert agent.annunciator.silenced_until > agent.clock()
    request(hq, "silence", {"minutes": 0}, transaction="tx-off")  # issue 18, finding 9: 0 ends it
    assert wait_until(lambda: agent.annunciator.silenced_until <= agent.clock(), 10)


def test_cli_talks_to_the_running_agent(running, vprinter):
    agent, hq, cfg_file = running
    sock = agent.control.path
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    r = cli(cfg_file, "status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["data"]["store_id"] == agent.cfg.store_id
    r = cli(cfg_file, "status")
    assert r.returncode == 0 and "printer  counter" in r.stdout
    r = cli(cfg_file, "reprint", "NOPE")
    assert r.returncode == 1 and "no order NOPE" in r.stderr
    r = cli(cfg_file, "queue")
    assert r.returncode == 0 and "queue empty" in r.stdout


def test_cli_ack_stops_repeats(running):
    agent, hq, cfg_file = running
    ev = example("rider-unassigned.json")
    hq.publish(ev)
    assert wait_until(lambda: len(agent.alerts.open_alerts()) == 1)
    r = cli(cfg_file, "ack", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["data"]["acknowledged"] == [f"order:MT-8812345678901:rider.unassigned"]
    assert agent.alerts.open_alerts()[0].acknowledged
    r = cli(cfg_file, "ack", "no-such-alert")
    assert r.returncode == 1 and "no open alert" in r.stderr


def test_ack_request_over_mqtt(running):
    agent, hq, _ = running
    hq.publish(example("stock-short.json"))
    assert wait_until(lambda: len(agent.alerts.open_alerts()) == 1)
    alert_id = agent.alerts.open_alerts()[0].id
    r = request(hq, "ack", {"alert_id": alert_id})
    assert r["status"] == "ok" and r["data"]["acknowledged"] == [alert_id]


def test_cli_without_a_running_agent(tmp_path):
    cfg = write_toml(tmp_path / "c.toml", agent_config(tmp_path / "nostate", 1, 1, "nobody"))
    r = cli(cfg, "status")
    assert r.returncode == 1 and "not running" in r.stderr


def test_config_show_redacts_secrets(tmp_path):
    cfg = agent_config(tmp_path / "s", 1883, 9100, "show-1")
    cfg["mqtt"] = {**cfg["mqtt"], "username": "u", "password": "topsecret"}
    f = write_toml(tmp_path / "c.toml", cfg)
    r = cli(f, "config", "show", "--json")
    assert r.returncode == 0 and "topsecret" not in r.stdout
    data = json.loads(r.stdout)["data"]
    assert data["mqtt"]["password"] == "***" and data["mqtt"]["username"] == "u" and data["health"]["printer_poll_s"] == 1
    r = cli(f, "config", "show")
    assert r.returncode == 0 and 'mqtt.password = "***"' in r.stdout and "printers[0].name" in r.stdout


def test_send_publishes_an_event_file_and_shows_the_result(running, vprinter, tmp_path):
    _, _, cfg_file = running
    ev = tmp_path / "order.json"
    ev.write_text(json.dumps(fresh(example("order-created-meituan.json")), ensure_ascii=False), encoding="utf-8")
    r = cli(cfg_file, "send", str(ev))
    assert r.returncode == 0, r.stderr
    assert "result queued" in r.stdout and "result printed" in r.stdout and "receipt, warm_tip" in r.stdout
    assert vprinter.wait_jobs(2)
    bad = tmp_path / "bad.json"
    bad.write_text('{"v": 1, "id": "x", "type": "order.created", "order": {"id": "o"}}')
    r = cli(cfg_file, "send", str(bad))
    assert r.returncode == 2 and "would reject" in r.stderr


def test_printers_lists_usb_printers(tmp_path):
    r = cli(write_toml(tmp_path / "c.toml", agent_config(tmp_path / "s", 1, 1, "p-1")), "printers", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # this machine has no USB printer: an empty list, not an error
    assert out["ok"] is True and out["data"]["usb"] == [] and out["data"]["configured"][0]["name"] == "counter"


def test_led_cycles_the_patterns_on_the_pins(broker, vprinter, make_agent, store_id, tmp_path):
    cfg = agent_config(tmp_path / "state", broker.port, vprinter.port, store_id, gpio={"enabled": True, "pin_factory": "mock"})
    agent = make_agent(broker.port, vprinter.port, store_id, gpio={"enabled": True, "pin_factory": "mock"})
    f = write_toml(tmp_path / "agent.toml", cfg)
    pin = agent.pin_factory.pin(17)
    pin.clear_states()
    r = cli(f, "led", "--step", "0.6")
    assert r.returncode == 0, r.stderr
    states = [s.state for s in pin.states]
    assert states.count(True) >= 3 and states.count(False) >= 3  # on, off, and two blinking patterns
    assert wait_until(lambda: agent.annunciator.exception_led.pattern == "off")  # back to showing alerts (none)


def test_led_is_not_an_mqtt_command(running):
    _, hq, _ = running
    r = request(hq, "led", {})
    assert r["status"] == "error" and "unknown command" in r["error"]


def test_doctor_on_a_healthy_setup(running):
    _, _, cfg_file = running
    r = cli(cfg_file, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)["data"]["checks"]}
    assert r.returncode == 0, r.stdout
    for name in ("config", "remote config", "agent", "broker", "subscriptions", "printer counter", "disk", "clock", "journal"):
        assert checks[name]["ok"] is True, checks[name]
    assert "connected (agent)" in checks["broker"]["detail"]  # it did not log in beside the agent


def test_doctor_probe_leaves_the_stores_queued_orders_alone(broker, vprinter, make_agent, hq_factory, store_id, tmp_path):
    """With the agent stopped, doctor logs in as the store: orders queued in its session must survive."""
    from conftest import order

    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id)
    agent.stop()
    for i in range(1, 4):
        hq.publish(order(i, "doc"))
    cfg_file = write_toml(tmp_path / "agent.toml", agent_config(tmp_path / "state", broker.port, vprinter.port, store_id))
    r = cli(cfg_file, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)["data"]["checks"]}
    assert checks["broker"]["ok"] is True and checks["broker login"]["ok"] is True and checks["agent"]["ok"] is False
    make_agent(broker.port, vprinter.port, store_id)
    assert wait_until(lambda: len(hq.final()) == 3, 20), hq.results()


def test_doctor_on_a_broken_setup(tmp_path, vprinter):
    from agent.devbroker import free_port

    vprinter.set_mode("paper_out")
    cfg = agent_config(tmp_path / "state", free_port(), vprinter.port, "broken-1")
    r = cli(write_toml(tmp_path / "c.toml", cfg), "doctor")
    assert r.returncode == 1
    out = r.stdout
    assert "[FAIL] agent" in out and "systemctl start store-agent" in out
    assert "[FAIL] broker" in out and "nothing listens on 127.0.0.1:" in out and "fix: is the broker up" in out
    assert "[--  ] subscriptions      skipped" in out  # issue 18, finding 4: not blamed on the ACL
    assert "[FAIL] printer counter" in out and "paper_out" in out and "fix: load paper" in out
