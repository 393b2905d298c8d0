"""``store-agent doctor``: one checklist a technician can read, each failing line with its fix."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import Config
from .control import SOCKET_NAME, ControlError, call
from .filecheck import cert_days_left


@dataclass
class Check:
    name: str
    ok: Optional[bool]  # None = not applicable / skipped
    detail: str
    fix: str = ""


# never "move it aside": acknowledged orders that did not print are only in the journal
SALVAGE_FIX = ("sudo systemctl stop store-agent; sudo store-agent journal salvage (copies every unprinted order "
               "into a fresh journal and keeps the damaged file); sudo systemctl start store-agent. Never delete the journal")


def run_checks(cfg: Config) -> list[Check]:
    from .remote import RemoteConfig  # noqa: PLC0415

    out: list[Check] = [Check("config", True, f"store {cfg.store_id}, {len(cfg.printers)} printer(s)")]
    remote = RemoteConfig(cfg)
    cfg = remote.effective()  # what the agent runs: the file plus HQ's overlay
    err = remote.error
    out.append(Check("remote config", err is None,
                     f"overlay version {remote.version}" + (" (on probation after a restart)" if remote.probation else "")
                     + (f"; version {err['version']} refused: {err['message']}" if err else ""),
                     "the info department sends a corrected config/set with a higher version"))
    daemon = None
    try:
        daemon = call(cfg.state_dir, "diagnose", timeout=30)
        out.append(Check("agent", daemon.get("status") == "ok", "running" if daemon.get("status") == "ok" else str(daemon.get("error")),
                         "systemctl restart store-agent"))
    except ControlError as e:
        out.append(Check("agent", False, str(e), "sudo systemctl start store-agent; journalctl -u store-agent -e"))
    data = (daemon or {}).get("data") or {}

    # broker
    from .mqtt import MqttSettings, ToolClient  # noqa: PLC0415

    m = cfg.mqtt
    try:
        sock = Path(cfg.state_dir) / SOCKET_NAME
        if not daemon and sock.exists():  # an agent may be running but not answering us: never log in beside it
            out.append(Check("broker", None, f"not probed: {sock} exists, so an agent may be running (logging in as "
                             "the store would take over its session)", "run doctor as root or in group store-agent"))
        elif daemon:  # never connect beside a running agent: with the broker kit the store's login *is* its client id
            up = bool(data.get("mqtt", {}).get("connected"))
            out.append(Check("broker", up, f"{m.host}:{m.port} " + ("connected (agent)" if up else "not connected (agent)"),
                             "check mqtt.host/port, the network, TLS files and credentials (mqtt.username / password_file)"))
        else:
            settings = MqttSettings(m.host, m.port, cfg.client_id, username=m.username, password=cfg.mqtt_password(), tls=m.tls,
                                    ca_file=m.ca_file, cert_file=m.cert_file, key_file=m.key_file, session_expiry_s=m.session_expiry_s)
            with ToolClient(settings, keep_session=True):
                pass
            out.append(Check("broker", True, f"{m.host}:{m.port} accepts this store's credentials"))
    except Exception as e:  # noqa: BLE001 - every failure is a line in the report
        out.append(Check("broker", False, f"{m.host}:{m.port}: {e}",
                         "check mqtt.host/port, the network, TLS files and credentials (mqtt.username / password_file)"))
    for label, path in (("ca_file", m.ca_file), ("cert_file", m.cert_file)):
        if m.tls and path:
            days = cert_days_left(path)
            if days is None:
                out.append(Check(f"tls {label}", False, f"cannot read {path}", "install the certificate from the info department"))
            else:
                out.append(Check(f"tls {label}", days > 30, f"{path} expires in {days:.0f} days", "renew the certificate before it expires"))
    if daemon:
        sub = data.get("mqtt", {}).get("subscribed")
        out.append(Check("subscriptions", bool(sub), "orders and requests subscribed" if sub else "not subscribed",
                         "the broker ACL must allow this store to read P/S/orders and P/S/request/#"))

    # printers
    states = {p["name"]: p for p in data.get("printers", [])}
    for p in cfg.printers:
        st = states.get(p.name)
        if st is None:
            from drivers.printers import make_printer  # noqa: PLC0415
            from .printing import printer_settings  # noqa: PLC0415

            s = make_printer(p.connection, p.name, **printer_settings(cfg, cfg.printers.index(p))).status()
            st = {"state": s.state, "detail": s.detail}
        good = st["state"] in ("ready", "paper_low") or (p.connection == "file" and st["state"] == "unknown")
        fixes = {"paper_out": "load paper", "cover_open": "close the cover", "offline": "check the printer's error light, power-cycle it",
                 "unreachable": "check power and cable (network: ping the printer's IP; USB: replug)"}
        out.append(Check(f"printer {p.name}", good, f"{p.connection}: {st['state']} {st.get('detail', '')}".strip(),
                         fixes.get(st["state"], "see README troubleshooting")))
    usb = [p for p in cfg.printers if p.connection == "usb"]
    if usb:
        try:
            from drivers.usbscan import scan  # noqa: PLC0415

            found = {(d["vendor_id"], d["product_id"]): d for d in scan()}
            for p in usb:
                d = found.get((p.vendor_id, p.product_id))
                out.append(Check(f"usb {p.name}", bool(d and d["writable"]),
                                 "not found" if not d else ("read/write" if d["writable"] else f"no permission on {d['node']}"),
                                 "add the printer to /etc/udev/rules.d/60-store-agent-printers.rules and reload udev"))
        except Exception as e:  # noqa: BLE001
            out.append(Check("usb", False, str(e), "apt-get install libusb-1.0-0"))
        rule = Path("/etc/udev/rules.d/60-store-agent-printers.rules")
        out.append(Check("udev rule", rule.exists(), str(rule), "sudo ./install.sh (installs the rule)"))

    # audio, gpio
    if cfg.sound.enabled:
        aplay = shutil.which("aplay")
        if not aplay:
            out.append(Check("audio", False, "aplay not installed", "apt-get install alsa-utils"))
        else:
            r = subprocess.run([aplay, "-l"], capture_output=True, text=True, timeout=10)
            has = "card" in r.stdout
            state = data.get("audio", {}).get("state")
            out.append(Check("audio", has and state != "failed", f"{'sound card present' if has else 'no sound card'}"
                             + (f", agent audio {state}" if state else ""), "plug in the speaker / USB sound card; check alsamixer"))
    else:
        out.append(Check("audio", None, "sound disabled in config"))
    if cfg.gpio.enabled:
        from drivers.gpio import GpioError, make_pin_factory  # noqa: PLC0415

        try:
            make_pin_factory(cfg.gpio.pin_factory).close()
            out.append(Check("gpio", True, f"pin factory {cfg.gpio.pin_factory or 'default'}"))
        except GpioError as e:
            out.append(Check("gpio", False, str(e), "add the user to group gpio; on a Pi 5 use pin_factory = \"lgpio\""))
    else:
        out.append(Check("gpio", None, "LEDs and button disabled in config"))

    # disk, clock, journal
    try:
        free = shutil.disk_usage(cfg.state_dir).free // 2**20
        out.append(Check("disk", free > 100, f"{free} MiB free in {cfg.state_dir}", "free space on the SD card (journalctl --vacuum-size=50M)"))
    except OSError as e:
        out.append(Check("disk", False, str(e), f"create {cfg.state_dir} (sudo ./install.sh does)"))
    year = time.gmtime().tm_year
    out.append(Check("clock", year >= 2025, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     "the clock is wrong: enable NTP (timedatectl set-ntp true); order expiry depends on it"))
    journal = Path(cfg.state_dir) / "journal.sqlite3"
    if journal.exists():
        try:
            with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as db:
                res = db.execute("PRAGMA quick_check").fetchone()[0]
            out.append(Check("journal", res == "ok", f"{journal}: {res}", SALVAGE_FIX))
        except sqlite3.Error as e:
            out.append(Check("journal", False, f"{journal}: {e}", SALVAGE_FIX))
    else:
        out.append(Check("journal", None, f"{journal} not created yet"))
    return out
