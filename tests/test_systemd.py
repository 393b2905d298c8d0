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


def unit_lines():
    return [ln.strip() for ln in UNIT.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def test_unit_bounds_memory_tasks_network_and_devices():
    """Issue 19 (findings 5, 11 and the unit): resources bounded, network and devices allow-listed."""
    lines = unit_lines()
    have = dict(ln.split("=", 1) for ln in lines if "=" in ln and not ln.startswith("DeviceAllow=")
                and not ln.startswith("IPAddressAllow="))
    mem = have["MemoryMax"]
    assert mem.endswith("M") and 128 <= int(mem[:-1]) <= 512, mem
    assert 32 <= int(have["TasksMax"]) <= 256
    assert have["OOMPolicy"] == "continue"
    assert have["IPAddressDeny"] == "any"
    allowed = " ".join(ln.split("=", 1)[1] for ln in lines if ln.startswith("IPAddressAllow="))
    assert "localhost" in allowed and "192.168.0.0/16" in allowed and "0.0.0.0/0" not in allowed and "any" not in allowed
    assert have["DevicePolicy"] == "closed"
    devices = {ln.split("=", 1)[1].split()[0] for ln in lines if ln.startswith("DeviceAllow=")}
    for d in ("char-usb_device", "char-usb", "char-lp", "char-ttyUSB", "char-ttyACM", "char-ttyS", "char-alsa", "char-gpiochip"):
        assert d in devices, d
    assert have["ProtectProc"] == "invisible"


def test_unit_separates_the_cli_group_from_the_secrets_group():
    have = dict(ln.split("=", 1) for ln in unit_lines() if "=" in ln)
    assert have["User"] == "store-agent"
    assert have["Group"] == "store-agent-cli"  # the state directory and the control socket carry it
    assert "store-agent" in have["SupplementaryGroups"].split()  # reads /etc/store-agent (secrets)
    assert have["UMask"] == "0077"  # journal, remote config, spool: 0600, whatever the group
    assert have["StateDirectoryMode"] == "0750"
    assert have["CacheDirectoryMode"] == "0700"


def ip_allow(tmp_path, toml):
    cfg = tmp_path / "config.toml"
    cfg.write_text(toml)
    return subprocess.run([sys.executable, str(ROOT / "systemd" / "ip-allow.py"), str(cfg), "--no-defaults"],
                          capture_output=True, text=True, timeout=60)


def test_ip_allow_dropin_allows_the_broker_and_webhooks_only(tmp_path):
    r = ip_allow(tmp_path, '[mqtt]\nhost = "203.0.113.10"\n[escalation]\n'
                           '[[escalation.notifiers]]\nkind = "dingtalk"\nurl = "https://198.51.100.7/robot/send?access_token=t"\n'
                           '[[escalation.notifiers]]\nkind = "wecom"\nurl = "https://192.168.1.9/x"\n'
                           '[[escalation.notifiers]]\nkind = "wecom"\nurl = "https://no-such-host.invalid/x"\n')
    assert r.returncode == 0, r.stderr
    allow = [ln for ln in r.stdout.splitlines() if ln.startswith("IPAddressAllow=")]
    assert allow == ["IPAddressAllow=203.0.113.10", "IPAddressAllow=198.51.100.7"]
    assert "access_token" not in r.stdout
    assert "no-such-host.invalid" in r.stderr
    assert r.stdout.splitlines()[2] == "[Service]"


def test_unit_with_the_address_dropin_verifies_and_scores(tmp_path):
    unit = unit_copy(tmp_path)
    r = ip_allow(tmp_path, '[mqtt]\nhost = "203.0.113.10"\n')
    d = tmp_path / "store-agent.service.d"
    d.mkdir()
    (d / "50-addresses.conf").write_text(r.stdout)
    (d / "60-store.conf").write_text("[Service]\nIPAddressAllow=\nIPAddressAllow=localhost 192.168.1.0/24 203.0.113.10\n")
    v = analyze("verify", str(unit))
    assert v.returncode == 0 and not v.stderr.strip(), v.stderr
    s = analyze("security", "--offline=true", str(unit))
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", s.stdout)
    assert m and float(m.group(1)) <= 2.5, s.stdout
