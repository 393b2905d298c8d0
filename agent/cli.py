"""The ``store-agent`` command line. Exit 0 ok, 1 failure, 2 usage/config error."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click

from . import __version__
from .config import ConfigError, load_config, resolve_path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for name in ("agent", "drivers"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="config file (default: $STORE_AGENT_CONFIG, else /etc/store-agent/config.toml)",
)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            click.echo(f"config error: {e}", err=True)
            sys.exit(2)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - one line unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {type(e).__name__}: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="store-agent")
@click.option("--debug", is_flag=True, help="full tracebacks on errors")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """store-agent: MQTT orders to receipts, chimes and alerts."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@main.command()
@config_option
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def run(config_path: str | None, log_level: str) -> None:
    """Run the agent in the foreground (systemd Type=notify). SIGTERM stops it cleanly."""
    from .daemon import run_supervised  # noqa: PLC0415

    from .filecheck import check_files  # noqa: PLC0415

    cfg = load_config(config_path)
    setup_logging(log_level)
    problems = check_files(cfg)
    for p in problems:
        logging.getLogger("agent.cli").log(logging.ERROR if p.fatal else logging.WARNING, "config: %s", p)
    fatal = [p for p in problems if p.fatal]
    if fatal:  # the key and the path, not a bare FileNotFoundError from deep inside the TLS setup
        click.echo("config error: " + "; ".join(map(str, fatal)), err=True)
        sys.exit(2)
    os.umask(0o077)  # the journal, remote config and spool hold customers' data: private, outside systemd too
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_supervised(cfg, stop)


@main.command()
@click.option("--out", "out_dir", default="demo-out", type=click.Path(file_okay=False), help="where tickets are left")
@click.option("--log-level", default="error", type=click.Choice(["debug", "info", "warning", "error"]))
def demo(out_dir: str, log_level: str) -> None:
    """Private broker + virtual printer + sample orders; tickets under ./demo-out/."""
    from .demo import run_demo  # noqa: PLC0415

    setup_logging(log_level)
    sys.exit(run_demo(Path(out_dir), echo=click.echo))


@main.group("config")
def config_group() -> None:
    """Show or check configuration."""


@config_group.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--file-only", is_flag=True, help="the config file alone, without the remote overlay from HQ")
def config_show(config_path: str | None, as_json: bool, file_only: bool) -> None:
    """The effective configuration (file + HQ's overlay, defaults filled in), secrets redacted."""
    from .config import redacted  # noqa: PLC0415
    from .remote import RemoteConfig  # noqa: PLC0415

    cfg = load_config(config_path)
    remote = None if file_only else RemoteConfig(cfg)
    data = redacted(remote.effective() if remote else cfg)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    if remote is not None:
        click.echo(f"# config file + remote overlay version {remote.version}"
                   + (f" ({', '.join(sorted(remote.overlay))})" if remote.overlay else " (none)"))
        if remote.error:
            click.echo(f"# remote config error (version {remote.error['version']}): {remote.error['message']}")

    def show(prefix: str, obj) -> None:  # noqa: ANN001
        if isinstance(obj, dict):
            for k, v in obj.items():
                show(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
            for i, v in enumerate(obj):
                show(f"{prefix}[{i}]", v)
        else:
            click.echo(f"{prefix} = {json.dumps(obj, ensure_ascii=False)}")

    show("", data)


@config_group.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@config_option
@click.option("--json", "as_json", is_flag=True)
def config_check(file: str | None, config_path: str | None, as_json: bool) -> None:
    """Validate a config file (FILE, else --config); exit 2 with the offending key when invalid."""
    path = resolve_path(file or config_path)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        if as_json:
            click.echo(json.dumps({"ok": False, "file": str(path), "error": str(e)}, ensure_ascii=False))
        else:
            click.echo(f"config error: {e}", err=True)
        sys.exit(2)
    from .filecheck import check_files, state_dir_problem  # noqa: PLC0415

    problems = check_files(cfg) + [p for p in [state_dir_problem(cfg)] if p]
    if problems:  # the files it names: what run would otherwise fail on, naming no path
        if as_json:
            click.echo(json.dumps({"ok": False, "file": str(path), "error": "; ".join(map(str, problems)),
                                   "problems": [{"key": p.key, "path": p.path, "reason": p.reason} for p in problems]},
                                  ensure_ascii=False))
        else:
            for p in problems:
                click.echo(f"config error: {p}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps({"ok": True, "file": str(path), "store_id": cfg.store_id, "printers": [p.name for p in cfg.printers]}, ensure_ascii=False))
    else:
        click.echo(f"{path}: ok (store {cfg.store_id}, {len(cfg.printers)} printer(s))")


@main.command()
@click.argument("event_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--template", "template", default=None, help="document: receipt, warm_tip, slip, test_page (default: what the event prints)")
@click.option("--width", type=click.Choice(["58", "80"]), default="80", help="paper width in mm")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None, help="FILE.png or FILE.txt (default: text to stdout)")
@click.option("--reprint", is_flag=True, help="as a reprint (补打)")
@config_option
def preview(event_file: str, template: str | None, width: str, out: str | None, reprint: bool, config_path: str | None) -> None:
    """Render an order event file as it would print, without a printer."""
    from .messages import OrderEvent, Rejection, parse_event  # noqa: PLC0415
    from .preview import preview_text, save_png  # noqa: PLC0415
    from .tickets import TicketRenderer, documents_for  # noqa: PLC0415

    from .rules import effective_rules  # noqa: PLC0415

    store_name, store_phone, texts, tdir, rules = "", "", {}, None, None
    if config_path or __import__("os").environ.get("STORE_AGENT_CONFIG"):
        cfg = load_config(config_path)
        store_name, store_phone, texts, tdir = cfg.store.name, cfg.store.phone, cfg.texts, cfg.templates.dir or None
        rules = effective_rules(cfg.rules)
    parsed = parse_event(Path(event_file).read_bytes(), 16 * 1024 * 1024)
    if isinstance(parsed, Rejection):
        click.echo(f"{event_file}: not a valid order event: {parsed.reason}", err=True)
        sys.exit(2)
    docs = [template] if template else documents_for(parsed.type, rules)
    if not docs:
        click.echo(f"{parsed.type} prints no ticket; choose one with --template", err=True)
        sys.exit(1)
    renderer = TicketRenderer(store_name=store_name, store_phone=store_phone, texts=texts, template_dir=tdir,
                              on_fallback=lambda n, e: click.echo(f"template {n} failed, used the built-in: {e}", err=True))
    columns = 32 if width == "58" else 48
    for i, doc_name in enumerate(docs):
        doc = renderer.render(doc_name, parsed, columns=columns, reprint=reprint)
        if out is None:
            click.echo(preview_text(doc))
            continue
        target = Path(out)
        if len(docs) > 1:
            target = target.with_name(f"{target.stem}-{doc_name}{target.suffix}")
        if target.suffix.lower() == ".png":
            save_png(doc, target)
        elif target.suffix.lower() == ".txt":
            target.write_text(preview_text(doc), encoding="utf-8")
        else:
            click.echo("--out must end in .png or .txt", err=True)
            sys.exit(2)
        click.echo(f"wrote {target}")


# ---------------------------------------------------------------- commands to the running daemon


def _daemon(config_path: str | None, command: str, args: dict, as_json: bool, show) -> None:  # noqa: ANN001
    from .control import ControlError, call, state_dir_for  # noqa: PLC0415

    try:  # a technician in store-agent-cli may not read config.toml: the socket is found anyway
        out = call(state_dir_for(config_path), command, args)
    except ControlError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(out, ensure_ascii=False, indent=2, default=str))
    elif out.get("status") == "ok":
        show(out.get("data") or {})
    if out.get("status") != "ok":
        if not as_json:
            click.echo(f"error: {out.get('error')}", err=True)
        sys.exit(1)


json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@main.command()
@config_option
@json_option
def status(config_path: str | None, as_json: bool) -> None:
    """What the running agent is doing: MQTT, printers, audio, alerts, queue."""

    def show(d: dict) -> None:
        click.echo(f"store {d['store_id']}  version {d['version']}  up {d['uptime_s']}s")
        click.echo(f"mqtt     {'connected' if d['mqtt']['connected'] else 'NOT CONNECTED'}")
        for p in d["printers"]:
            click.echo(f"printer  {p['name']:<12} {p['state']:<12} {p['detail']}")
        click.echo(f"audio    {d['audio']['state']}{' (silenced)' if d['audio']['silenced'] else ''}")
        click.echo(f"queue    {d['queue']['pending']} job(s) waiting")
        for a in d["alerts"]:
            click.echo(f"alert    {a['id']:<40} {a['state']:<12} {a['message']}")

    _daemon(config_path, "status", {}, as_json, show)


@main.command()
@config_option
@json_option
def queue(config_path: str | None, as_json: bool) -> None:
    """Print jobs waiting or in progress."""

    def show(d: dict) -> None:
        if not d["jobs"]:
            click.echo("queue empty")
        for j in d["jobs"]:
            click.echo(f"{j['job']:>6} {j['printer']:<12} {j['state']:<9} {j['document']:<9} {j['order_id'] or '-':<20} attempts {j['attempts']}{' 补打' if j['reprint'] else ''}")

    _daemon(config_path, "queue", {}, as_json, show)


@main.command()
@click.argument("order_id")
@config_option
@json_option
def reprint(order_id: str, config_path: str | None, as_json: bool) -> None:
    """Print an order's receipt and warm-tip card again, marked 补打."""
    _daemon(config_path, "reprint", {"order_id": order_id}, as_json, lambda d: click.echo(f"reprinting {order_id}: {', '.join(d['jobs'])}"))


@main.command("test-print")
@click.argument("printer", required=False)
@config_option
@json_option
def test_print(printer: str | None, config_path: str | None, as_json: bool) -> None:
    """Print a test page (default printer unless PRINTER is given)."""
    args = {"printer": printer} if printer else {}
    _daemon(config_path, "test_print", args, as_json, lambda d: click.echo(f"test page queued on {d['printer']}"))


@main.command()
@click.argument("alert_id", required=False)
@config_option
@json_option
def ack(alert_id: str | None, config_path: str | None, as_json: bool) -> None:
    """Acknowledge one alert, or all open alerts: stops their repeats and blinking."""
    args = {"alert_id": alert_id} if alert_id else {}
    _daemon(config_path, "ack", args, as_json, lambda d: click.echo(f"acknowledged {len(d['acknowledged'])} alert(s)"))


@main.command()
@click.argument("minutes", type=float)
@config_option
@json_option
def silence(minutes: float, config_path: str | None, as_json: bool) -> None:
    """Mute chimes for MINUTES (LEDs keep showing)."""
    _daemon(config_path, "silence", {"minutes": minutes}, as_json, lambda d: click.echo(f"silenced for {minutes:g} min"))


@main.command()
@click.argument("sound", default="new_order")
@config_option
@json_option
def chime(sound: str, config_path: str | None, as_json: bool) -> None:
    """Play a chime (new_order, exception, urgent, device_fault) to test the speaker."""
    _daemon(config_path, "chime", {"sound": sound}, as_json, lambda d: click.echo(f"playing {sound}"))


@main.command()
@config_option
@json_option
def doctor(config_path: str | None, as_json: bool) -> None:
    """One checklist: config, agent, broker and TLS, subscriptions, printers, USB and udev, audio, GPIO,
    disk, clock, journal. Each failing line says how to fix it; exit 1 if any fails."""
    from dataclasses import asdict  # noqa: PLC0415

    from .doctor import run_checks  # noqa: PLC0415

    checks = run_checks(load_config(config_path))
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks], ensure_ascii=False, indent=2))
    else:
        for c in checks:
            mark = {True: "ok  ", False: "FAIL", None: "--  "}[c.ok]
            click.echo(f"[{mark}] {c.name:<18} {c.detail}")
            if c.ok is False and c.fix:
                click.echo(f"       fix: {c.fix}")
    if any(c.ok is False for c in checks):
        sys.exit(1)


@main.command()
@click.option("--step", "step_s", default=1.5, show_default=True, help="seconds per pattern")
@config_option
@json_option
def led(step_s: float, config_path: str | None, as_json: bool) -> None:
    """Cycle the LEDs through on, off, blink and slow blink (to check the wiring), then back to normal."""
    _daemon(config_path, "led", {"step_s": step_s}, as_json, lambda d: click.echo("LED patterns shown: on, off, blink, slow_blink"))


@main.command()
@click.argument("event_file", type=click.Path(exists=True, dir_okay=False))
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--wait", "wait_s", default=10.0, show_default=True, help="seconds to wait for the agent's result")
@click.option("--username", default="", help="an HQ or test login allowed to publish orders (needed when the store has a login)")
@click.option("--password-file", default=None, type=click.Path(exists=True, dir_okay=False), help="that login's password")
def send(event_file: str, config_path: str | None, as_json: bool, wait_s: float, username: str, password_file: str | None) -> None:
    """Publish an order event file to this store's order topic and show the agent's result."""
    from .messages import Rejection, parse_event  # noqa: PLC0415
    from .mqtt import MqttSettings, ToolClient  # noqa: PLC0415
    from .topics import Topics  # noqa: PLC0415

    from .remote import RemoteConfig  # noqa: PLC0415

    cfg = RemoteConfig(load_config(config_path)).effective()  # where the agent listens now
    payload = Path(event_file).read_bytes()
    parsed = parse_event(payload, cfg.intake.max_payload_bytes)
    if isinstance(parsed, Rejection):
        click.echo(f"{event_file}: the agent would reject it: {parsed.reason}", err=True)
        sys.exit(2)
    topics = Topics(cfg.mqtt.topic_prefix, cfg.store_id)
    m = cfg.mqtt
    if m.username and not username:
        click.echo("send: pass --username/--password-file of an HQ or test login. Logging in as the store would take "
                   "over the agent's session (with the broker kit a store's login is its client id), and the store's "
                   "ACL does not allow publishing orders anyway.", err=True)
        sys.exit(2)
    password = Path(password_file).read_text(encoding="utf-8").strip() if password_file else ""
    settings = MqttSettings(m.host, m.port, f"store-agent-send-{__import__('os').getpid()}", username=username,
                            password=password, tls=m.tls, ca_file=m.ca_file)
    with ToolClient(settings, [topics.result]) as c:
        c.publish(topics.orders, payload)
        final = ("printed", "failed", "rejected", "duplicate", "expired")
        mine = lambda msgs: [json.loads(p) for _, p in msgs if json.loads(p).get("event_id") == parsed.id]  # noqa: E731
        c.wait_for(lambda msgs: any(r["status"] in final for r in mine(msgs)), wait_s)
        results = mine(c.received)
    if as_json:
        click.echo(json.dumps({"event_id": parsed.id, "results": results}, ensure_ascii=False, indent=2))
    else:
        click.echo(f"sent {parsed.id} ({parsed.type}, order {parsed.order.id}) to {topics.orders}")
        for r in results:
            click.echo(f"result {r['status']:<9} {', '.join(r['documents']) or r.get('error') or ''}")
    if not results:
        click.echo(f"no result within {wait_s:g}s: is the agent running and subscribed?", err=True)
        sys.exit(1)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True)
def printers(config_path: str | None, as_json: bool) -> None:
    """USB receipt printers pyusb can see: ids, permissions, and whether the config uses them."""
    from drivers.usbscan import UsbScanError, scan  # noqa: PLC0415

    configured = set()
    try:
        cfg = load_config(config_path)
        configured = {(p.vendor_id, p.product_id) for p in cfg.printers if p.connection == "usb"}
    except ConfigError:
        pass  # listing printers must work before a config exists
    try:
        found = scan()
    except UsbScanError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    rows = [dict(d, configured=(d["vendor_id"], d["product_id"]) in configured) for d in found]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("no USB printers found (plugged in and powered? `lsusb` lists every USB device)")
    for r in rows:
        click.echo(f"{r['vendor_id']:04x}:{r['product_id']:04x}  bus {r['bus']} addr {r['address']}  {r['product'] or '?'}"
                   f"  {'rw ok' if r['writable'] else 'NO PERMISSION (udev rule?)'}  {'configured' if r['configured'] else 'not configured'}")



@main.group("journal")
def journal_group() -> None:
    """The order journal (state_dir/journal.sqlite3)."""


@journal_group.command("salvage")
@config_option
@json_option
def journal_salvage(config_path: str | None, as_json: bool) -> None:
    """Copy every unfinished order out of a damaged journal into a fresh one (the agent must be stopped).

    Never delete a journal: orders in it were acknowledged and the broker will not send them again.
    The damaged file is kept beside the new one as journal.sqlite3.damaged-<time>."""
    from dataclasses import asdict  # noqa: PLC0415

    from .control import ControlError, call  # noqa: PLC0415
    from .salvage import SalvageError, salvage  # noqa: PLC0415

    cfg = load_config(config_path)
    try:
        call(cfg.state_dir, "status", {})
    except ControlError:
        pass  # not running: good
    else:
        click.echo("error: the agent is running: stop it first (sudo systemctl stop store-agent)", err=True)
        sys.exit(1)
    path = Path(cfg.state_dir) / "journal.sqlite3"
    try:
        report = salvage(path)
    except SalvageError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(asdict(report), ensure_ascii=False, indent=2))
        return
    click.echo(f"{path}: salvaged {report.unfinished_events} unfinished order event(s), {report.jobs_copied} ticket(s) "
               f"({report.printing_jobs} will print marked 补打); {report.events_read} event(s) read, "
               f"{report.unreadable_rows} unreadable row(s); {report.dedupe_keys} id(s) kept against re-sends")
    click.echo(f"the damaged file is kept as {report.kept_as}; start the agent: sudo systemctl start store-agent")


if __name__ == "__main__":
    main()
