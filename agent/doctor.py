"""``store-agent doctor``: one checklist a technician can read, each failing line with its fix."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import Config
from .control import CLI_GROUP, SOCKET_NAME, ControlError, call
from .filecheck import cert_days_left
from .toollogin import ToolLogin, anonymous_ok, refusal, store_login


@dataclass
class Check:
    name: str
    ok: Optional[bool]  # None = not applicable / skipped
    detail: str
    fix: str = ""


# never "move it aside": acknowledged orders that did not print are only in the journal
SALVAGE_FIX = ("sudo systemctl stop store-agent; sudo store-agent journal salvage (copies every unprinted order "
               "into a fresh journal and keeps the damaged file); sudo systemctl start store-agent. Never delete the journal")


PRINTER_FIXES = {"paper_out": "load paper", "cover_open": "close the cover",
                 "offline": "check the printer's error light, power-cycle it",
                 "unreachable": "check power and cable (network: ping the printer's IP; USB: replug)"}


def printer_fix(p, state: str, detail: str) -> str:  # noqa: ANN001 - PrinterConfig
    """What a technician does about a printer state, for this printer's connection."""
    if state == "unreachable" and p.connection == "network":
        host, port = getattr(p, "host", ""), getattr(p, "port", "")
        closed = "refused" in detail.lower() or "port closed" in detail.lower()
        return ((f"port closed: nothing listens on {host}:{port} (printer off, or its port is not {port}); " if closed
                 else f"no answer from {host}:{port}; ") + f"check with: nc -vz {host} {port}, ping {host}")
    return PRINTER_FIXES.get(state, "") if state not in ("ready", "paper_low") else ""


def _ask_printer(cfg: Config, p) -> dict:  # noqa: ANN001 - PrinterConfig
    """The printer's status, asked directly (no agent is running): a line, never a crash."""
    from drivers.printers import make_printer  # noqa: PLC0415

    from .printing import printer_settings  # noqa: PLC0415

    drv = None
    try:
        drv = make_printer(p.connection, p.name, **printer_settings(cfg, cfg.printers.index(p)))
        s = drv.status()
        return {"state": s.state, "detail": s.detail}
    except Exception as e:  # noqa: BLE001 - a missing driver library, a device that cannot be opened
        return {"state": "unknown", "detail": f"{type(e).__name__}: {e}"}
    finally:
        close = getattr(drv, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001
                pass


def _service_active() -> Optional[bool]:
    """systemd's word on the store-agent service (None: no systemd here)."""
    systemctl = shutil.which("systemctl")
    if not systemctl:
        return None
    try:
        r = subprocess.run([systemctl, "is-active", "store-agent"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    state = r.stdout.strip()
    return True if state in ("active", "activating", "reloading") else False if state in ("inactive", "failed") else None


def run_checks(cfg: Optional[Config], *, config_path: str = "", config_error: str = "", state_dir: str = "",
               tool: Optional[ToolLogin] = None, take_over: bool = False) -> list[Check]:
    """Every check it can make. ``cfg`` None: the config file has a mistake (``config_error``); the running agent is
    still asked (at ``state_dir``) and the rest is checked from what it says. A check that depends on one that
    failed is skipped and says so."""
    from .remote import RemoteConfig  # noqa: PLC0415

    out: list[Check] = []
    if cfg is None:
        out.append(Check("config", False, f"{config_path}: {config_error}",
                         f"fix the key named (store-agent config check {config_path}); the running agent keeps the "
                         "config it started with until it restarts"))
        out.append(Check("remote config", None, "skipped: the config file does not load"))
    else:
        out.append(Check("config", True, f"store {cfg.store_id}, {len(cfg.printers)} printer(s)"))
        remote = RemoteConfig(cfg)
        cfg = remote.effective()  # what the agent runs: the file plus HQ's overlay
        err = remote.error
        out.append(Check("remote config", err is None,
                         f"overlay version {remote.version}" + (" (on probation after a restart)" if remote.probation else "")
                         + (f"; version {err['version']} refused: {err['message']}" if err else ""),
                         "the info department sends a corrected config/set with a higher version"))
        state_dir = cfg.state_dir
    daemon = None
    sock = Path(state_dir) / SOCKET_NAME
    try:
        daemon = call(state_dir, "diagnose", timeout=30)
        ok = daemon.get("status") == "ok"
        out.append(Check("agent", ok, "running" if ok else str(daemon.get("error")), "systemctl restart store-agent"))
        if not ok:
            daemon = None
    except ControlError as e:
        active = _service_active()
        if e.kind == "permission":
            out.append(Check("agent", False, f"cannot ask the agent: {e}" + (" (the service is running)" if active else ""),
                             f"use sudo, or join the {CLI_GROUP} group: sudo usermod -aG {CLI_GROUP} $USER (then log in again)"))
        elif active:
            out.append(Check("agent", False, f"the service is running but does not answer at {sock}: {e}",
                             "journalctl -u store-agent -e; sudo systemctl restart store-agent"))
        else:
            out.append(Check("agent", False, str(e), "sudo systemctl start store-agent; journalctl -u store-agent -e"))
    data = (daemon or {}).get("data") or {}
    out += _broker_checks(cfg, data if daemon else None, sock, tool, take_over)
    if cfg is None:
        out += _from_agent_only(data)
        out += _local_checks(state_dir)
        return out

    # printers
    states = {p["name"]: p for p in data.get("printers", [])}
    for p in cfg.printers:
        st = states.get(p.name)
        if st is None and not daemon and sock.exists():  # an agent may hold the printer: no second connection
            out.append(Check(f"printer {p.name}", None, f"{p.connection}: not asked: an agent may be using it "
                             f"({sock} exists but did not answer)", f"run doctor with sudo or in group {CLI_GROUP}"))
            continue
        if st is None:
            st = _ask_printer(cfg, p)
        good = st["state"] in ("ready", "paper_low") or (p.connection == "file" and st["state"] == "unknown")
        out.append(Check(f"printer {p.name}", good, f"{p.connection}: {st['state']} {st.get('detail', '')}".strip(),
                         printer_fix(p, st["state"], st.get("detail", "")) or "see README troubleshooting"))
        out += _printer_facts(p.name, st)
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
    out.append(_audio_check(cfg, data.get("audio") if daemon else None))
    if cfg.gpio.enabled:
        from drivers.gpio import GpioError, make_pin_factory  # noqa: PLC0415

        try:
            make_pin_factory(cfg.gpio.pin_factory).close()
            out.append(Check("gpio", True, f"pin factory {cfg.gpio.pin_factory or 'default'}"))
        except GpioError as e:
            out.append(Check("gpio", False, str(e), "add the user to group gpio; on a Pi 5 use pin_factory = \"lgpio\""))
    else:
        out.append(Check("gpio", None, "LEDs and button disabled in config"))

    out += _local_checks(cfg.state_dir)
    return out


BROKER_FIX = "check mqtt.host/port, the network, TLS files and credentials (mqtt.username / password_file)"


def _broker_checks(cfg: Optional[Config], agent: Optional[dict], sock: Path, tool: Optional[ToolLogin],
                   take_over: bool) -> list[Check]:
    """The broker as the running agent sees it, or probed: network and TLS without logging in (that touches no
    session), then the store's login only when nobody is using it."""
    from .mqtt import MqttSettings, ToolClient, read_retained, tls_probe  # noqa: PLC0415
    from .topics import Topics  # noqa: PLC0415

    out: list[Check] = []
    connected = False
    if agent is not None:
        mq = agent.get("mqtt", {})
        connected = bool(mq.get("connected"))
        err = mq.get("last_error") or {}
        where = mq.get("broker") or (f"{cfg.mqtt.host}:{cfg.mqtt.port}" if cfg else "?")
        if connected:
            out.append(Check("broker", True, f"{where} connected (agent)"
                             + (f"; last error {_local(err.get('at'))}: {err['error']}" if err else "")))
        else:
            out.append(Check("broker", False, f"{where} not connected (agent): "
                             + (f"{err['error']} (since {_local(err.get('at'))}, {err.get('failed_attempts')} failed attempt(s))"
                                if err else "connecting"), err.get("fix") or BROKER_FIX))
    if cfg is None:
        if agent is None:
            out.append(Check("broker", None, "skipped: neither the config file nor the agent can say which broker"))
        out += _subscription_check(agent, connected, "")
        return out
    m = cfg.mqtt
    topics = Topics(m.topic_prefix, cfg.store_id)
    settings = MqttSettings(m.host, m.port, cfg.client_id, username=m.username, tls=m.tls, ca_file=m.ca_file,
                            cert_file=m.cert_file, key_file=m.key_file, session_expiry_s=m.session_expiry_s)
    # network and TLS: no CONNECT, so no login and no session touched, even beside a running agent
    reach: Optional[dict] = None
    try:
        reach = tls_probe(settings)
        if agent is None:
            out.append(Check("broker", True, reach["detail"]))
    except ConnectionError as e:
        if agent is None:
            reason, _, fix = str(e).partition("; fix: ")
            out.append(Check("broker", False, reason, fix or BROKER_FIX))
    except Exception as e:  # noqa: BLE001 - every failure is a line in the report
        if agent is None:
            out.append(Check("broker", False, f"{m.host}:{m.port}: {type(e).__name__}: {e}", BROKER_FIX))
    if m.tls:
        days = reach.get("server_cert_days") if reach else None
        if days is not None:
            out.append(Check("tls broker certificate", days > 30, f"the broker's certificate ({m.host}) expires in {days:.0f} days",
                             "the info department renews it (make-certs.sh HOSTNAME on the broker)"))
        for label, path, fix in (("ca_file", m.ca_file, "the info department issues a new CA and certificates"),
                                 ("cert_file", m.cert_file, "the info department re-issues it: add-store.sh STORE")):
            if path:
                days = cert_days_left(path)
                if days is None:
                    out.append(Check(f"tls {label}", False, f"cannot read {path}", "install the certificate from the info department"))
                else:
                    out.append(Check(f"tls {label}", days > 30, f"{path} expires in {days:.0f} days", fix))
    if agent is not None:
        out += _subscription_check(agent, connected, _sub_topics(topics))
        return out
    # the store's login, probed only when no one uses it
    if reach is None:
        out.append(Check("broker login", None, "skipped: the broker cannot be reached"))
    elif sock.exists():  # an agent may be running but not answering us: never log in beside it
        out.append(Check("broker login", None, f"not tried: {sock} exists, so an agent may be running (logging in as "
                         "the store would take over its session)", f"run doctor with sudo or in group {CLI_GROUP}"))
    else:
        out.append(_login_check(cfg, settings, topics, tool, take_over, ToolClient, read_retained))
    out += _subscription_check(None, False, "")
    return out


def _sub_topics(t) -> str:  # noqa: ANN001 - Topics
    return f"{t.orders}, {t.requests}, {t.config_set}"


def _subscription_check(agent: Optional[dict], connected: bool, topics: str) -> list[Check]:
    if agent is None:
        return [Check("subscriptions", None, "skipped: no running agent to ask")]
    if not connected:
        return [Check("subscriptions", None, "skipped: the agent is not connected to the broker (see broker)")]
    sub = (agent.get("mqtt") or {}).get("subscribed")
    return [Check("subscriptions", bool(sub), f"subscribed: {topics}" if sub else f"the broker refused: {topics}",
                  f"the broker ACL must let this store read {topics} (deploy/mosquitto/acl)")]


def _login_check(cfg: Config, settings, topics, tool: Optional[ToolLogin], take_over: bool, ToolClient, read_retained) -> Check:  # noqa: ANN001, N803
    """Log in as the store (keeping its session and queued orders) only when its retained status says no agent
    is connected. The status is read with the tech login, or anonymously where the store has no login."""
    import dataclasses  # noqa: PLC0415

    login = store_login(cfg) or "(anonymous)"
    status: Optional[bytes] = None
    known = False
    try:
        if tool is not None and tool.given:
            why = refusal(cfg, tool.name, take_over=take_over)
            if why:
                return Check("broker login", False, f"not tried: --username/--cert-file: {why}", "use the kit's tech login")
            status, known = read_retained(tool.settings(cfg), topics.status), True
        elif anonymous_ok(cfg):
            status, known = read_retained(dataclasses.replace(settings, client_id=f"store-agent-doctor-{os.getpid()}"),
                                          topics.status), True
    except ConnectionError as e:
        return Check("broker login", False, f"cannot read {topics.status} with the tech login: {e}",
                     "check --username/--password-file (or --cert-file/--key-file) of the kit's tech login")
    if not known and not take_over:
        return Check("broker login", None, f"not tried: without another login doctor cannot tell whether {login} is in "
                     "use by an agent (logging in would take over its session)",
                     "store-agent doctor --username tech --password-file FILE (the kit's tech login, docs/BROKER.md), "
                     "or --take-over when no agent runs anywhere with this store's login")
    if status == b"online" and not take_over:
        return Check("broker login", False, f"not tried: {login} is in use: {topics.status} is 'online', an agent is "
                     "connected as this store (logging in would take over its session)",
                     "run doctor on the Pi that runs the agent (sudo, or in group store-agent-cli); if this Pi should be "
                     "the store, stop the agent on the other one")
    try:
        with ToolClient(dataclasses.replace(settings, password=cfg.mqtt_password()), keep_session=True):
            pass
    except ConnectionError as e:
        reason, _, fix = str(e).partition("; fix: ")
        return Check("broker login", False, f"{login}: {reason}", fix or BROKER_FIX)
    was = status.decode(errors="replace") if status else "none"
    return Check("broker login", True, f"accepts this store's login {login} (its status was {was})")


def _printer_facts(name: str, st: dict) -> list[Check]:
    """What the running agent knows of a printer beyond its state: confirmation, layout, paper left."""
    if not st.get("confirm"):
        return []
    out = []
    confirm = st["confirm"]
    words = {"gs_r": (True, "yes: every ticket confirmed by the printer (GS r 1)", ""),
             "unsupported": (None, "no: the printer does not answer GS r 1, tickets print unconfirmed",
                             "a ticket cut off mid-way is reprinted once (补打), then the store is asked to look"),
             "off": (None, "no: confirm = none or a write-only printer, tickets print unconfirmed", ""),
             "undecided": (None, "not known yet: GS r 1 not answered so far (asked again while the printer is idle); "
                                 "until then tickets print unconfirmed unless an earlier run found it confirms",
                           f"store-agent printers probe {name}"),
             "unprobed": (None, "not known yet: the printer has not been probed (it was never ready)",
                          f"store-agent printers probe {name}")}
    ok, detail, fix = words.get(confirm, (None, confirm, ""))
    out.append(Check(f"printer {name} confirms", ok, detail, fix))
    if st.get("profile"):
        out.append(Check(f"printer {name} layout", True,
                         f"profile {st['profile']} ({st.get('profile_source')}), {st.get('columns')} columns, QR {st.get('qr')}, "
                         f"{'cut' if st.get('cut') else 'feed to the tear bar'}" + (f", model {st['model']}" if st.get("model") else "")))
    paper = st.get("paper")
    if paper:
        low = paper["tickets_left"] <= 40
        out.append(Check(f"printer {name} paper", not low,
                         f"~{paper['left_m']} m left of {paper['roll_m']} m (~{paper['tickets_left']} tickets)"
                         + (", roll length learnt from the near-end sensor" if paper.get("learnt") else ""),
                         "put a new roll in, then: store-agent paper loaded " + name if low else ""))
    return out


AUDIO_FIX = "plug in the speaker or USB sound card; check sound.device (aplay -l lists the cards) and alsamixer"


def _audio_check(cfg: Config, agent_audio: Optional[dict]) -> Check:
    """One audio truth: the running agent's (it has played through the device), else the same check it makes
    at start (20 ms of silence down the chime's path) made here."""
    if not cfg.sound.enabled:
        return Check("audio", None, "sound disabled in config (sound.enabled)")
    if agent_audio:
        state, err = agent_audio.get("state"), agent_audio.get("error")
        return Check("audio", state == "ok", f"agent audio {state}" + (f": {err}" if err else "")
                     + (" (silenced)" if agent_audio.get("silenced") else ""), AUDIO_FIX)
    from drivers.audio import AudioError, make_chime  # noqa: PLC0415

    try:
        backend = make_chime(cfg.sound.device).check()
        return Check("audio", True, f"sound device {cfg.sound.device} plays ({backend})")
    except AudioError as e:
        return Check("audio", False, f"sound device {cfg.sound.device}: {e}", AUDIO_FIX)


def _from_agent_only(data: dict) -> list[Check]:
    """Printers and audio as the running agent reports them (the config file does not load)."""
    out = []
    for p in data.get("printers", []):
        out.append(Check(f"printer {p['name']}", p["state"] in ("ready", "paper_low"), f"{p['state']} {p.get('detail', '')}".strip(),
                         PRINTER_FIXES.get(p["state"], "see README troubleshooting")))
        out += _printer_facts(p["name"], p)
    audio = (data.get("audio") or {})
    if audio:
        out.append(Check("audio", audio.get("state") != "failed", f"agent audio {audio.get('state')}"
                         + (f": {audio['error']}" if audio.get("error") else ""), AUDIO_FIX))
    return out


def _local(when) -> str:  # noqa: ANN001
    from .cli import local_time  # noqa: PLC0415

    return local_time(when)


def _local_checks(state_dir: str) -> list[Check]:
    out: list[Check] = []
    try:
        free = shutil.disk_usage(state_dir).free // 2**20
        out.append(Check("disk", free > 100, f"{free} MiB free in {state_dir}", "free space on the SD card (journalctl --vacuum-size=50M)"))
    except OSError as e:
        out.append(Check("disk", False, str(e), f"create {state_dir} (sudo ./install.sh does)"))
    year = time.gmtime().tm_year
    out.append(Check("clock", year >= 2025, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     "the clock is wrong: enable NTP (timedatectl set-ntp true); order expiry depends on it"))
    journal = Path(state_dir) / "journal.sqlite3"
    if journal.exists() and not os.access(journal, os.R_OK):
        out.append(Check("journal", None, f"{journal}: not readable by this user (checked by the agent itself; use sudo to check it here)"))
    elif journal.exists():
        try:
            with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as db:
                res = db.execute("PRAGMA quick_check").fetchone()[0]
            out.append(Check("journal", res == "ok", f"{journal}: {res}", SALVAGE_FIX))
        except sqlite3.Error as e:
            out.append(Check("journal", False, f"{journal}: {e}", SALVAGE_FIX))
    else:
        out.append(Check("journal", None, f"{journal} not created yet"))
    return out
