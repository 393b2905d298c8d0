"""The shipped systemd unit: it parses (systemd-analyze verify) and its hardening scores an exposure ≤ 2.5."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

UNIT = ROOT / "systemd" / "store-agent.service"


def analyze(*args):
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze missing: ./install.sh --dev installs it (package systemd)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def unit_copy(tmp_path: Path) -> Path:
    """The unit as installed, except that ExecStart points at this checkout's CLI (/opt is not there in CI)."""
    exe = Path(sys.executable).parent / "store-agent"
    assert exe.exists(), exe
    text = UNIT.read_text().replace("/opt/store-agent/bin/store-agent", str(exe))
    out = tmp_path / "store-agent.service"
    out.write_text(text)
    return out


def test_unit_has_what_the_daemon_relies_on():
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=always", "StateDirectory=store-agent", "Environment=LG_WD=",
                 "Environment=ESCPOS_CAPABILITIES_PICKLE_DIR=", "ExecStart=/opt/store-agent/bin/store-agent run"):
        assert line in text, line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)


def test_systemd_analyze_verify(tmp_path):
    r = analyze("verify", str(unit_copy(tmp_path)))
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_systemd_analyze_security_exposure(tmp_path):
    r = analyze("security", "--offline=true", str(unit_copy(tmp_path)))
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    exposure = float(m.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= 2.5, r.stdout
