"""Issue 18, "done when": docs/TECHNICIAN.md is tested by running its commands.

Every ``console`` block after a ``<!-- walkthrough: NAME -->`` marker is run as written (``sudo`` is a
shim that just runs the command; ``store-agent`` is this checkout's CLI; the config is the store's,
through ``STORE_AGENT_CONFIG``) against the broker kit (TLS, password logins, a tech login), the
virtual printer and a running agent with the fault NAME made for real; the lines the page shows must
appear in the output, in order (``…`` = anything, ``HH:MM:SS`` = a time).
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

from agent.devbroker import free_port
from conftest import ROOT, agent_config, wait_until
from test_tech_connect import RunningAgent
from test_tls import make_pki

DOC = ROOT / "docs" / "TECHNICIAN.md"
STORE = "cq-0231"


def blocks() -> dict[str, list[tuple[str, list[str]]]]:
    """{scenario: [(command, expected lines)]} from the page."""
    text = DOC.read_text(encoding="utf-8")
    out = {}
    for m in re.finditer(r"<!-- walkthrough: (\w+) -->\n```console\n(.*?)\n```", text, re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in m.group(2).splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
        out[m.group(1)] = steps
    return out


def pattern(line: str) -> re.Pattern:
    p = re.escape(line.rstrip()).replace(re.escape("…"), ".*").replace("HH:MM:SS", r"\d\d:\d\d:\d\d")
    return re.compile(p)


def assert_shows(command: str, output: str, expected: list[str]) -> None:
    lines = [ln.rstrip() for ln in output.splitlines()]
    i = 0
    for want in expected:
        pat = pattern(want)
        while i < len(lines) and not pat.match(lines[i]):
            i += 1
        assert i < len(lines), f"$ {command}\nexpected (in order): {want!r}\nthe tool printed:\n{output}"
        i += 1


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    from test_broker_kit import Kit  # noqa: PLC0415

    k = Kit("password", tmp_path_factory.mktemp("walk-kit"), stores=(STORE,))
    subprocess.run(["mosquitto_passwd", "-b", str(k.d / "passwd"), "tech", "tech-pw"], check=True, capture_output=True)
    k.reload()
    yield k
    k.stop()


def test_the_page_has_every_scenario():
    assert set(blocks()) == {"healthy", "paper_out", "printer_port_closed", "wrong_password", "wrong_ca", "no_sound"}


@pytest.mark.parametrize("scenario", ["healthy", "paper_out", "printer_port_closed", "wrong_password", "wrong_ca", "no_sound"])
def test_walkthrough(scenario, kit, vprinter, tmp_path, alsa_file):
    home = Path(os.environ["HOME"])  # alsa_file's home: ALSA's default device is a file there
    (home / "tech.pass").write_text("tech-pw\n")
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (shims / "sudo").chmod(0o755)
    mqtt = {**kit.store_mqtt(STORE), "reconnect_min_s": 0.2, "reconnect_max_s": 0.5}
    printer_port = vprinter.port
    sound = {"enabled": True}
    if scenario == "wrong_password":
        (tmp_path / "old.pass").write_text("an-old-password\n")
        mqtt["password_file"] = str(tmp_path / "old.pass")
    elif scenario == "wrong_ca":
        (tmp_path / "pki").mkdir()
        mqtt["ca_file"] = str(make_pki(tmp_path / "pki")[0])
    elif scenario == "printer_port_closed":
        printer_port = free_port()
    elif scenario == "no_sound":
        sound["device"] = "plughw:63"  # the USB speaker's card, unplugged
    cfg = agent_config(tmp_path / "state", kit.port, printer_port, STORE, sound=sound)
    cfg["mqtt"] = mqtt
    agent = RunningAgent(tmp_path / "agent", cfg)
    try:
        if scenario in ("wrong_password", "wrong_ca"):
            assert wait_until(lambda: ((agent.status()["mqtt"].get("last_error") or {}).get("failed_attempts") or 0) >= 2, 20)
        elif scenario != "printer_port_closed":
            assert wait_until(lambda: agent.status()["mqtt"]["subscribed"], 20), agent.log()
        if scenario != "printer_port_closed":
            assert wait_until(lambda: agent.status()["printers"][0]["state"] == "ready", 15)
        if scenario == "paper_out":
            vprinter.set_mode("paper_out")
            assert wait_until(lambda: agent.status()["printers"][0]["state"] == "paper_out", 15)
            assert wait_until(lambda: agent.status()["alerts"], 15)
        env = {**os.environ, "PATH": f"{shims}:{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
               "STORE_AGENT_CONFIG": str(agent.cfg_file), "HOME": str(home)}
        for command, expected in blocks()[scenario]:
            r = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=90)
            assert_shows(command, r.stdout + r.stderr, expected)
    finally:
        agent.stop()
        vprinter.set_mode("ready")
