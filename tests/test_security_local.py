"""Issue 19, finding 11: local users. The group a technician needs for the CLI reads no secrets and no
journal; the control socket carries that group; add-store.sh never puts a password on a command line.

Tests that need a second user run only as root (CI): they act as ``nobody`` through a subprocess."""

import grp
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from agent import control
from agent.control import ControlServer
from agent.devbroker import KIT
from conftest import ROOT

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def other_group() -> grp.struct_group:
    """A group that stands in for store-agent-cli: not root's, and nobody is not in it."""
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    mine = set(os.getgroups()) | {os.getegid()}
    for g in sorted(grp.getgrall(), key=lambda g: g.gr_gid):
        if g.gr_gid not in (0, nobody.pw_gid) and "nobody" not in g.gr_mem and (os.geteuid() == 0 or g.gr_gid in mine):
            return g
    pytest.skip("no spare group on this machine")


@pytest.fixture
def shared_dir():
    """A directory another user can traverse (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="sa-local-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_nobody(code: str, groups=()) -> subprocess.CompletedProcess:
    """Run stdlib-only ``code`` as nobody (the system python: the venv may sit in root's home)."""
    nobody = pwd.getpwnam("nobody")
    py = shutil.which("python3", path="/usr/bin:/bin") or pytest.skip("no system python3")
    return subprocess.run([py, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=30,
                          user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=list(groups), cwd="/", env={})


CONNECT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1] if len(sys.argv) > 1 else {path!r})
except PermissionError:
    print("denied"); sys.exit(0)
s.sendall(b'{{"command": "status", "args": {{}}}}\\n')
print(json.loads(s.makefile().readline())["status"])
"""


def test_control_socket_gets_the_cli_group_and_mode_0660(monkeypatch, shared_dir):
    g = other_group()
    monkeypatch.setattr(control, "CLI_GROUP", g.gr_name)
    srv = ControlServer(shared_dir / "control.sock", lambda c, a: {"transaction": None, "status": "ok", "data": {}, "error": None})
    srv.start()
    try:
        st = os.stat(srv.path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == g.gr_gid
    finally:
        srv.stop()


@ROOT_ONLY
def test_only_the_cli_group_reaches_the_socket(monkeypatch, shared_dir):
    g = other_group()
    monkeypatch.setattr(control, "CLI_GROUP", g.gr_name)
    calls = []
    srv = ControlServer(shared_dir / "control.sock",
                        lambda c, a: calls.append(c) or {"transaction": None, "status": "ok", "data": {}, "error": None})
    srv.start()
    try:
        code = CONNECT.format(path=str(srv.path))
        outsider = as_nobody(code)
        assert outsider.stdout.strip() == "denied", outsider.stderr
        member = as_nobody(code, groups=[g.gr_gid])
        assert member.stdout.strip() == "ok", member.stderr
        assert calls == ["status"]
    finally:
        srv.stop()


@ROOT_ONLY
def test_cli_finds_the_socket_without_reading_the_config(shared_dir):
    """A technician in store-agent-cli cannot read config.toml (root:store-agent 0640): the CLI falls
    back to the default state_dir instead of failing on the file."""
    cfg = shared_dir / "config.toml"
    cfg.write_text('store_id = "s1"\nstate_dir = "/somewhere"\n[[printers]]\nname = "p"\nconnection = "virtual"\n')
    cfg.chmod(0o640)
    nobody = pwd.getpwnam("nobody")
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        as_technician = control.state_dir_for(str(cfg))
    finally:
        os.seteuid(0)
        os.setegid(0)
    assert as_technician == control.DEFAULT_STATE_DIR
    # the owner reads it and gets the configured one
    assert control.state_dir_for(str(cfg)) == "/somewhere"


def test_the_control_socket_serves_a_bounded_number_of_clients(tmp_path):
    srv = ControlServer(tmp_path / "control.sock", lambda c, a: {"transaction": None, "status": "ok", "data": {}, "error": None})
    srv.client_timeout_s, srv.busy_wait_s = 2.0, 0.2
    srv.start()
    idle = []
    try:
        for _ in range(control.MAX_CLIENTS + 4):  # connect and say nothing
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(srv.path))
            idle.append(s)
        import threading
        busy = [t for t in threading.enumerate() if t.name == "control-client"]
        assert len(busy) <= control.MAX_CLIENTS
    finally:
        for s in idle:
            s.close()
        srv.stop()
    # once they are gone it answers again
    srv = ControlServer(tmp_path / "control.sock", lambda c, a: {"transaction": None, "status": "ok", "data": {}, "error": None})
    srv.start()
    try:
        out = control.call(str(tmp_path), "status")
        assert out["status"] == "ok"
    finally:
        srv.stop()


def test_add_store_never_puts_the_password_on_a_command_line(tmp_path):
    """Every process add-store.sh starts is recorded (a PATH shim in front of each tool): none has the
    password in its arguments, whether the script makes it up or reads it from standard input."""
    real = shutil.which("mosquitto_passwd")
    assert real
    shims = tmp_path / "bin"
    shims.mkdir()
    log = tmp_path / "argv.log"
    for tool in ("mosquitto_passwd", "openssl", "chgrp", "chmod", "mkdir", "getent", "grep", "tr", "cut", "rm",
                 "systemctl", "pkill"):
        target = shutil.which(tool)
        if not target:
            continue
        (shims / tool).write_text(f'#!/bin/sh\nprintf "%s\\n" "{tool} $*" >> "{log}"\nexec "{target}" "$@"\n')
        (shims / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "KIT_DIR": str(tmp_path / "kit"), "RELOAD": "0"}
    (tmp_path / "kit").mkdir()
    given = "Given-On-Stdin-123"
    r = subprocess.run([str(KIT / "add-store.sh"), "--password", "s-one", "localhost"], env=env, input=given + "\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "kit" / "stores" / "s-one.pass").read_text().strip() == given
    made = subprocess.run([str(KIT / "add-store.sh"), "--password", "s-two"], env=env, input="", capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    generated = (tmp_path / "kit" / "stores" / "s-two.pass").read_text().strip()
    assert len(generated) >= 20
    argv = log.read_text()
    assert "mosquitto_passwd" in argv  # the shim saw it
    assert given not in argv and generated not in argv, argv
    assert "-b" not in [w for line in argv.splitlines() if line.startswith("mosquitto_passwd") for w in line.split()]
    # the passwd file holds both logins, hashed
    passwd = (tmp_path / "kit" / "passwd").read_text()
    assert passwd.count("$7$") == 2 and given not in passwd
    assert stat.S_IMODE(os.stat(tmp_path / "kit" / "stores" / "s-one.pass").st_mode) == 0o600


def test_add_store_password_login_works_with_the_broker(tmp_path):
    """The stdin password is the one mosquitto checks (not a half-read or doubled line)."""
    from agent.devbroker import DevBroker
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    kit = tmp_path / "kit"
    kit.mkdir()
    env = {**os.environ, "KIT_DIR": str(kit), "RELOAD": "0"}
    subprocess.run([str(KIT / "add-store.sh"), "--password", "s-three"], env=env, input="pw-from-stdin\n",
                   check=True, capture_output=True, text=True)
    with DevBroker(tmp_path / "b", password_file=kit / "passwd") as b:
        results = {}
        for pw in ("pw-from-stdin", "wrong"):
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{pw}", protocol=paho.MQTTv5)
            c.username_pw_set("s-three", pw)
            c.connect("127.0.0.1", b.port)
            rc = []
            c.on_connect = lambda cl, u, f, r, p: rc.append(r.is_failure)
            for _ in range(50):
                c.loop(0.1)
                if rc:
                    break
            results[pw] = rc and not rc[0]
            c.disconnect()
    assert results == {"pw-from-stdin": True, "wrong": False}


INSTALLED = Path("/etc/store-agent/config.toml")


@pytest.mark.skipif(os.geteuid() != 0 or not INSTALLED.exists() or not os.environ.get("CI"),
                    reason="checks the device install that .ci/run made on this machine")
def test_device_install_left_the_groups_and_modes():
    cli = grp.getgrnam("store-agent-cli")
    secrets = grp.getgrnam("store-agent")
    assert "store-agent" in cli.gr_mem
    assert [m for m in secrets.gr_mem if m != "store-agent"] == []  # nobody else reads the secrets
    for path, mode, owner, group in ((Path("/etc/store-agent"), 0o750, "root", "store-agent"),
                                     (INSTALLED, 0o640, "root", "store-agent"),
                                     (Path("/var/lib/store-agent"), 0o750, "store-agent", "store-agent-cli")):
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name) == \
            (mode, owner, group), path
    for f in Path("/var/lib/store-agent").rglob("*"):
        if f.is_file() or f.is_dir():
            assert stat.S_IMODE(os.stat(f).st_mode) & 0o077 == 0, f
