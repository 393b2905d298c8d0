"""Issue 18, findings 4, 5, 7, 8, 10-16: the CLI as a technician meets it, through the real CLI against a running
agent (``store-agent run``), the broker kit as shipped (TLS, password logins, the tech login) and the virtual
printer."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.devbroker import free_port
from conftest import EXAMPLES, ROOT, agent_config, wait_until, write_toml
from test_tech_connect import RunningAgent, cli


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    from test_broker_kit import Kit  # noqa: PLC0415

    k = Kit("password", tmp_path_factory.mktemp("tech-cli"), stores=("kit-a",))
    subprocess.run(["mosquitto_passwd", "-b", str(k.d / "passwd"), "tech", "tech-pw"], check=True, capture_output=True)
    k.reload()
    (k.d / "tech.pass").write_text("tech-pw\n")
    yield k
    k.stop()


@pytest.fixture
def running(tmp_path, kit, vprinter):
    cfg = agent_config(tmp_path / "state", kit.port, vprinter.port, "kit-a")
    cfg["mqtt"] = {**kit.store_mqtt("kit-a"), "reconnect_min_s": 0.2, "reconnect_max_s": 0.5}
    agent = RunningAgent(tmp_path, cfg)
    agent.tech = ["--username", "tech", "--password-file", str(kit.d / "tech.pass")]  # the kit's login for tools
    assert wait_until(lambda: agent.status()["mqtt"]["subscribed"], 20), agent.log()
    yield agent
    agent.stop()


def lines_with(text, word):
    return [ln for ln in text.splitlines() if word in ln]


# -- finding 7: a typo in the config on disk -----------------------------------------------------------------

@pytest.mark.parametrize("typo", ['\n[mqtt]\nhsot = "x"\n', "\nthis is [[ not toml\n"])
def test_a_broken_config_file_still_reaches_the_running_agent(running, typo):
    good = running.cfg_file.read_text()
    running.cfg_file.write_text(good + typo)
    for command in ("status", "queue"):
        r = running.cli(command)
        assert r.returncode == 0, (command, r.stderr)
        assert "warning: config error:" in r.stderr and "the running agent uses the config it started with" in r.stderr
    r = running.cli("doctor")
    assert r.returncode == 1
    out = r.stdout
    assert lines_with(out, "] config")[0].startswith("[FAIL]"), out
    assert "hsot" in out or "not valid TOML" in out
    assert "[ok  ] agent              running" in out  # and it goes on with what it can check
    assert lines_with(out, "printer counter")[0].startswith("[ok  ]")
    assert lines_with(out, "] broker ")[0].startswith("[ok  ]") and "connected (agent)" in out
    assert "] journal" in out and "] disk" in out


# -- finding 4: dependent checks are skipped; the ACL is named as it is ---------------------------------------

def test_subscription_fix_names_the_acl_as_shipped():
    from agent.doctor import _subscription_check  # noqa: PLC0415

    c = _subscription_check({"mqtt": {"subscribed": False}}, True, "stores/s/orders, stores/s/request/+, stores/s/config/set")
    assert c[0].ok is False and "request/+" in c[0].fix and "request/#" not in c[0].fix
    acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text()
    assert "pattern read stores/%u/request/+" in acl
    skipped = _subscription_check({"mqtt": {"subscribed": False}}, False, "x")
    assert skipped[0].ok is None and "skipped" in skipped[0].detail


# -- finding 5: a technician who is not root ---------------------------------------------------------------

class _NoPermissionSocket:
    """The control socket as a technician outside store-agent-cli meets it (root cannot: it bypasses permissions)."""

    def __init__(self, *a, **kw):
        pass

    def settimeout(self, t):
        pass

    def connect(self, path):
        raise PermissionError(13, "Permission denied", path)

    def close(self):
        pass


def test_not_root_gets_sudo_or_the_group_never_start_the_agent(running, monkeypatch):
    import socket as real_socket  # noqa: PLC0415
    import types  # noqa: PLC0415

    from click.testing import CliRunner  # noqa: PLC0415

    from agent import control  # noqa: PLC0415
    from agent.cli import main  # noqa: PLC0415

    fake = types.SimpleNamespace(**{k: getattr(real_socket, k) for k in dir(real_socket) if not k.startswith("__")})
    fake.socket = _NoPermissionSocket
    monkeypatch.setattr(control, "socket", fake)
    runner = CliRunner()
    r = runner.invoke(main, ["status", "--config", str(running.cfg_file)])
    assert r.exit_code == 1 and "use sudo, or join the store-agent-cli group" in r.output, r.output
    r = runner.invoke(main, ["doctor", "--config", str(running.cfg_file)])
    agent_line = lines_with(r.output, "] agent")[0]
    assert agent_line.startswith("[FAIL]") and "cannot ask the agent" in agent_line, r.output
    fix = r.output.split(agent_line, 1)[1].splitlines()[1]
    assert "use sudo, or join the store-agent-cli group" in fix and "systemctl start" not in fix, fix
    # the agent may hold the printer: doctor does not open a second connection to it
    assert "not asked: an agent may be using it" in lines_with(r.output, "printer counter")[0], r.output
    assert "broker login       not tried" in r.output  # nor log in as the store beside it


def test_no_writable_home_is_no_crash(running, tmp_path):
    """python-escpos keeps a cache: a technician's account without a writable home must not crash the CLI (the
    config copy has no running agent, so printers are asked directly, through python-escpos)."""
    text = running.cfg_file.read_text()
    copy = tmp_path / "copy.toml"
    copy.write_text(re.sub(r'state_dir = "[^"]*"', f'state_dir = "{tmp_path / "other-state"}"', text))
    env = {k: v for k, v in os.environ.items() if k != "ESCPOS_CAPABILITIES_PICKLE_DIR"}
    env["HOME"] = "/proc/no-home"  # cannot be created, even by root
    env["XDG_CACHE_HOME"] = "/proc/no-home/.cache"
    for args in (["printers"], ["doctor"], ["preview", str(EXAMPLES / "order-created-meituan.json")]):
        r = subprocess.run([sys.executable, "-m", "agent.cli", *args, "--config", str(copy)], capture_output=True,
                           text=True, cwd=ROOT, env=env, timeout=60)
        assert "Traceback" not in r.stderr and "error:" not in r.stderr, (args, r.stderr)
        assert r.returncode in (0, 1) and r.stdout.strip(), (args, r.stdout)
        if args[0] != "preview":
            assert "counter" in r.stdout and "ready" in r.stdout, r.stdout  # asked directly, and it answered


# -- finding 8: samples that stay fresh -------------------------------------------------------------------

def test_shipped_samples_are_listed_and_print(running, vprinter):
    r = running.cli("send", "--list")
    assert r.returncode == 0 and "order-meituan" in r.stdout and str(EXAMPLES) in r.stdout
    example = EXAMPLES / "order-created-meituan.json"
    stale = running.cli("send", str(example), *running.tech)  # the example's expires_at lies in the past
    assert "result expired" in stale.stdout, stale.stdout + stale.stderr
    r = running.cli("send", "--fresh", str(example), *running.tech)
    assert r.returncode == 0 and "result printed" in r.stdout, r.stdout + r.stderr
    r = running.cli("send", "--sample", "order-eleme-rx", *running.tech)
    assert r.returncode == 0 and "result printed" in r.stdout, r.stdout + r.stderr
    r = running.cli("send", "--sample", "trumpet", *running.tech)
    assert r.returncode == 2 and "one of order-meituan" in r.stderr


def test_fresh_moves_every_time_by_the_same_amount():
    from datetime import datetime, timezone  # noqa: PLC0415

    from agent.samples import freshen  # noqa: PLC0415

    ev = json.loads((EXAMPLES / "order-created-meituan.json").read_text())
    now = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
    out = freshen(ev, now)
    t = lambda s: datetime.fromisoformat(s)  # noqa: E731
    assert t(out["at"]) == now
    assert t(out["order"]["expires_at"]) - t(out["at"]) == t(ev["order"]["expires_at"]) - t(ev["at"])
    assert out["id"] != ev["id"] and out["order"]["id"] != ev["order"]["id"]


# -- finding 10: SIGPIPE ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("config", "show"), ("preview", str(EXAMPLES / "order-created-meituan.json")),
                                  ("status",), ("doctor",)])
def test_a_closed_pipe_is_quiet(running, args):
    p = subprocess.Popen([sys.executable, "-m", "agent.cli", *args, "--config", str(running.cfg_file)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    p.stdout.close()  # like `| head -0`: the reader is gone before the first line
    err = p.stderr.read().decode()
    p.wait(60)
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
    assert p.returncode in (0, 1)  # doctor's own verdict may be 1; never a crash


# -- finding 11: led says each step ------------------------------------------------------------------------

def test_led_says_each_step_as_it_shows_it(tmp_path, broker, vprinter):
    cfg = agent_config(tmp_path / "state", broker.port, vprinter.port, "led-1", gpio={"enabled": True, "pin_factory": "mock"})
    agent = RunningAgent(tmp_path, cfg)
    try:
        p = subprocess.Popen([sys.executable, "-m", "agent.cli", "led", "--step", "1", "--config", str(agent.cfg_file)],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
        first = p.stdout.readline()
        assert first.startswith("now: on"), first
        assert p.poll() is None  # said before the rest is shown, not after
        limit = threading.Timer(40, p.kill)  # a led command that never ends fails the test instead of hanging it
        limit.start()
        try:
            rest = p.stdout.read()
        finally:
            limit.cancel()
        assert p.wait(5) == 0
        steps = re.findall(r"^now: (\w+)", first + rest, re.M)
        assert steps == ["on", "off", "blink", "slow_blink"] and "done" in rest
    finally:
        agent.stop()


# -- findings 12, 13: the printer's state where a job is queued; queue and printers --------------------------

def test_test_print_and_queue_during_paper_out(running, vprinter):
    vprinter.set_mode("paper_out")
    assert wait_until(lambda: running.status()["printers"][0]["state"] == "paper_out", 15)
    r = running.cli("test-print")
    assert r.returncode == 0 and "test page queued on counter; but the printer is paper_out" in r.stdout, r.stdout
    r = running.cli("queue")
    header, *rows = r.stdout.splitlines()
    assert header.split()[:6] == ["job", "printer", "state", "document", "order", "age"], header
    assert rows and re.search(r"\d+s", rows[0]) and "printer paper_out" in rows[0], r.stdout
    r = running.cli("reprint", "NOPE")
    assert r.returncode == 1 and "no order NOPE" in r.stderr
    vprinter.set_mode("ready")
    assert vprinter.wait_for(lambda v: any("打印测试页" in j.text for j in v.jobs), 20)


def test_printers_lists_configured_printers_and_a_closed_port(tmp_path, broker):
    port = free_port()  # nothing listens there
    cfg = agent_config(tmp_path / "s", broker.port, port, "pr-1")
    r = cli(write_toml(tmp_path / "c.toml", cfg), "printers")
    assert r.returncode == 0, r.stderr
    row = lines_with(r.stdout, "counter")[0]
    assert f"127.0.0.1:{port}" in row and "unreachable" in row
    assert f"port closed: nothing listens on 127.0.0.1:{port}" in r.stdout and f"nc -vz 127.0.0.1 {port}" in r.stdout


# -- finding 14: a deleted state_dir --------------------------------------------------------------------------

def test_a_deleted_state_dir_is_logged(tmp_path, broker, vprinter):
    cfg = agent_config(tmp_path / "state", broker.port, vprinter.port, "del-1")
    agent = RunningAgent(tmp_path / "one", cfg)
    agent.stop()
    assert "a new journal starts" in agent.log()
    shutil.rmtree(tmp_path / "state")
    again = RunningAgent(tmp_path / "two", cfg)
    try:
        line = lines_with(again.log(), "a new journal starts")[0]
        assert "WARNING" in line and "(the directory did not exist)" in line and "may print again" in line
    finally:
        again.stop()
    third = RunningAgent(tmp_path / "three", cfg)  # the journal is there now: nothing to say
    third.stop()
    assert "a new journal starts" not in third.log()


# -- finding 15: one --json shape ------------------------------------------------------------------------------

def shape(r):
    out = json.loads(r.stdout)
    assert set(out) == {"ok", "data", "error"}, out
    assert isinstance(out["ok"], bool) and isinstance(out["data"], dict)
    assert (out["error"] is None) == out["ok"] or (out["ok"] and out["error"]), out
    assert r.returncode == (0 if out["ok"] else r.returncode) and (r.returncode != 0) == (not out["ok"]), (r.returncode, out)
    return out


def test_every_command_has_one_json_shape(running, tmp_path):
    for args in (["status"], ["queue"], ["config", "show"], ["config", "check"], ["doctor"], ["printers"],
                 ["send", "--list"], ["ack"], ["silence", "5"], ["silence", "--off"], ["test-print"],
                 ["chime", "urgent"], ["reprint", "NOPE"], ["journal", "salvage"], ["led"],
                 ["send", "--sample", "order-meituan", *running.tech], ["watch", "--for", "1", *running.tech]):
        r = running.cli(*args, "--json")
        out = shape(r)
        if args[0] in ("chime", "reprint", "journal", "led"):
            assert out["ok"] is False and out["error"], (args, out)
    # finding 9: no raw epoch anywhere in what status and queue say (times are ISO 8601 with an offset)
    def epochs(obj):
        if isinstance(obj, dict):
            return [x for v in obj.values() for x in epochs(v)]
        if isinstance(obj, list):
            return [x for v in obj for x in epochs(v)]
        return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) and obj > 1e9 else []

    for command in ("status", "queue"):
        data = shape(running.cli(command, "--json"))["data"]
        assert epochs(data) == [], (command, data)
    assert re.match(r"\d{4}-\d\d-\d\dT", shape(running.cli("status", "--json"))["data"]["printers"][0]["last_print_at"])
    gone = write_toml(tmp_path / "gone.toml", agent_config(tmp_path / "nostate", 1, 1, "nobody"))
    out = shape(cli(gone, "status", "--json"))
    assert out["ok"] is False and "not running" in out["error"]
    bad = tmp_path / "bad.toml"
    bad.write_text('store_id = "x"\nbogus = 1\n')
    out = shape(cli(bad, "config", "check", "--json"))
    assert out["ok"] is False and "bogus" in out["error"]


# -- finding 16: config show fills in the client id -------------------------------------------------------------

def test_config_show_fills_in_the_client_id(running):
    r = running.cli("config", "show")
    assert 'mqtt.client_id = ""' not in r.stdout
    assert 'mqtt.client_id = "store-agent-kit-a"' in r.stdout, r.stdout
    assert json.loads(running.cli("config", "show", "--json").stdout)["data"]["mqtt"]["client_id"].startswith("store-agent-")
