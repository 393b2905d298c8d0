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


def emit_json(ok: bool, data: dict | None = None, error: str | None = None) -> None:
    """The one ``--json`` shape of every command: ``{"ok": bool, "data": {...}, "error": str or null}``."""
    click.echo(json.dumps({"ok": bool(ok), "data": data or {}, "error": error}, ensure_ascii=False, indent=2, default=str))


def _wants_json() -> bool:
    return "--json" in sys.argv[1:]


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="config file (default: $STORE_AGENT_CONFIG, else /etc/store-agent/config.toml)",
)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            if _wants_json():
                emit_json(False, {}, f"config error: {e}")
            click.echo(f"config error: {e}", err=True)
            sys.exit(2)
        except BrokenPipeError:  # `store-agent config show | head`: the reader has what it wanted
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # nothing more to flush at exit: no second BrokenPipeError
            sys.exit(0)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - one line unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if _wants_json():
                emit_json(False, {}, f"{type(e).__name__}: {e}")
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
    eff = remote.effective() if remote else cfg
    data = redacted(eff)
    data["mqtt"]["client_id"] = eff.client_id  # the default filled in, like every other key (never "")
    if as_json:
        emit_json(True, data)
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
            emit_json(False, {"file": str(path), "problems": []}, str(e))
        else:
            click.echo(f"config error: {e}", err=True)
        sys.exit(2)
    from .filecheck import check_files, state_dir_problem  # noqa: PLC0415

    problems = check_files(cfg) + [p for p in [state_dir_problem(cfg)] if p]
    if problems:  # the files it names: what run would otherwise fail on, naming no path
        if as_json:
            emit_json(False, {"file": str(path), "problems": [{"key": p.key, "path": p.path, "reason": p.reason} for p in problems]},
                      "; ".join(map(str, problems)))
        else:
            for p in problems:
                click.echo(f"config error: {p}", err=True)
        sys.exit(2)
    if as_json:
        emit_json(True, {"file": str(path), "store_id": cfg.store_id, "printers": [p.name for p in cfg.printers], "problems": []})
    else:
        click.echo(f"{path}: ok (store {cfg.store_id}, {len(cfg.printers)} printer(s))")


@main.command()
@click.argument("event_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--template", "template", default=None, help="document: receipt, warm_tip, slip; or an agent-made slip "
              "(report, followups, unshipped_summary, prep_reminder, test_page) with this event's order as its data "
              "(default: what the event prints)")
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
    from .preview import AGENT_SLIPS, sample_context  # noqa: PLC0415

    for i, doc_name in enumerate(docs):
        if doc_name in AGENT_SLIPS:  # an agent-made slip: shown with this event's order as its data
            doc = renderer.render_named(doc_name, sample_context(doc_name, parsed), columns=columns)
        else:
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

    def config_trouble(msg: str) -> None:  # the file was edited since the agent started: say so, ask the agent anyway
        click.echo(f"warning: config error: {msg} (the running agent uses the config it started with; "
                   "store-agent config check names what to fix)", err=True)

    try:  # a technician in store-agent-cli may not read config.toml: the socket is found anyway
        out = call(state_dir_for(config_path, config_trouble), command, args)
    except ControlError as e:
        if as_json:
            emit_json(False, {}, str(e))
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    if as_json:
        emit_json(out.get("status") == "ok", out.get("data") or {}, out.get("error"))
    elif out.get("status") == "ok":
        show(out.get("data") or {})
    if out.get("status") != "ok":
        if not as_json:
            click.echo(f"error: {out.get('error')}", err=True)
        sys.exit(2 if str(out.get("error") or "").startswith(("bad arguments", "unknown command")) else 1)


def _age(seconds) -> str:  # noqa: ANN001
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h{(s % 3600) // 60:02d}m"


def local_time(when) -> str:  # noqa: ANN001 - an ISO string or epoch seconds
    """A time as the technician's clock shows it: HH:MM:SS today, else YYYY-MM-DD HH:MM."""
    from datetime import datetime  # noqa: PLC0415

    if when is None or when == "":
        return "-"
    try:
        t = datetime.fromtimestamp(float(when)) if isinstance(when, (int, float)) else datetime.fromisoformat(str(when))
    except (ValueError, OverflowError, OSError):
        return str(when)
    t = t.astimezone() if t.tzinfo else t
    return t.strftime("%H:%M:%S") if t.date() == datetime.now().date() else t.strftime("%Y-%m-%d %H:%M")


json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@main.command()
@config_option
@json_option
def status(config_path: str | None, as_json: bool) -> None:
    """What the running agent is doing: MQTT, printers, audio, alerts, queue."""

    def show(d: dict) -> None:
        click.echo(f"store {d['store_id']}  version {d['version']}  up {d['uptime_s']}s")
        m = d["mqtt"]
        err = m.get("last_error")
        if m["connected"]:
            click.echo(f"mqtt     connected to {m.get('broker', '?')}"
                       + ("" if m.get("subscribed", True) else " (NOT SUBSCRIBED: see journalctl -u store-agent)"))
            if err:
                click.echo(f"         last error {local_time(err['at'])}: {err['error']}")
        else:
            click.echo(f"mqtt     NOT CONNECTED to {m.get('broker', '?')}"
                       + (f": {err['error']} (since {local_time(err['at'])}, {err['failed_attempts']} failed attempt(s))"
                          if err else ": connecting"))
            if err:
                click.echo(f"         fix: {err['fix']}")
        for p in d["printers"]:
            click.echo(f"printer  {p['name']:<12} {p['state']:<12} {p['detail']}")
            if p.get("profile"):
                paper = p.get("paper") or {}
                click.echo(f"         confirm {p.get('confirm')}, profile {p['profile']} ({p.get('profile_source')}), "
                           f"{p.get('columns')} columns, {'cut' if p.get('cut') else 'feed to tear'}"
                           + (f"; paper ~{paper['left_m']} m left (~{paper['tickets_left']} tickets)" if paper else "")
                           + (f"; {p['print_s']} s/ticket" if p.get("print_s") else ""))
        au = d["audio"]
        click.echo(f"audio    {au['state']}" + (f" since {local_time(au['since'])}: {au['error']}" if au.get("error") else "")
                   + (f" (silenced until {local_time(au['silenced_until'])}; store-agent silence --off)"
                      if au.get("silenced_until") else " (silenced)" if au.get("silenced") else ""))
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
            return
        click.echo(f"{'job':>6} {'printer':<12} {'state':<9} {'document':<9} {'order':<20} {'age':>7} {'tries':>5}  note")
        for j in d["jobs"]:
            note = " ".join(x for x in ("补打" if j["reprint"] else "",
                                         f"printer {j['printer_state']}" if j.get("printer_state") not in (None, "ready", "paper_low") else "") if x)
            click.echo(f"{j['job']:>6} {j['printer']:<12} {j['state']:<9} {j['document']:<9} {j['order_id'] or '-':<20} "
                       f"{_age(j.get('age_s')):>7} {j['attempts']:>5}  {note}")

    _daemon(config_path, "queue", {}, as_json, show)


@main.command()
@click.argument("order_id")
@config_option
@json_option
def reprint(order_id: str, config_path: str | None, as_json: bool) -> None:
    """Print an order's receipt and warm-tip card again, marked 补打."""
    _daemon(config_path, "reprint", {"order_id": order_id}, as_json,
            lambda d: click.echo(f"reprint of {order_id} queued ({', '.join(d['jobs'])}) on {d.get('printer', '?')}"
                                 + _printer_note(d)))


@main.command("test-print")
@click.argument("printer", required=False)
@config_option
@json_option
def test_print(printer: str | None, config_path: str | None, as_json: bool) -> None:
    """Print a test page (default printer unless PRINTER is given)."""
    args = {"printer": printer} if printer else {}
    _daemon(config_path, "test_print", args, as_json,
            lambda d: click.echo(f"test page queued on {d['printer']}" + _printer_note(d)))


def _printer_note(d: dict) -> str:
    """What the printer's state means for what was just queued (issue 18, finding 12)."""
    state, waiting = d.get("state"), d.get("waiting", 0)
    if state in ("ready", "paper_low", None):
        return f"; printer {state or '?'}" + (f", {waiting} ticket(s) ahead of it or with it" if waiting > 1 else "")
    return (f"; but the printer is {state}" + (f" ({d['detail']})" if d.get("detail") else "")
            + f": it prints when that is fixed ({waiting} ticket(s) waiting; store-agent status)")


@main.command()
@click.argument("alert_id", required=False)
@config_option
@json_option
def ack(alert_id: str | None, config_path: str | None, as_json: bool) -> None:
    """Acknowledge one alert, or all open alerts: stops their repeats and blinking."""
    args = {"alert_id": alert_id} if alert_id else {}
    _daemon(config_path, "ack", args, as_json, lambda d: click.echo(f"acknowledged {len(d['acknowledged'])} alert(s)"))


@main.command()
@click.argument("minutes", type=click.FloatRange(0, 720), required=False)
@click.option("--off", is_flag=True, help="end the silence now (same as MINUTES 0)")
@config_option
@json_option
def silence(minutes: float | None, off: bool, config_path: str | None, as_json: bool) -> None:
    """Mute chimes for MINUTES (at most 720; LEDs keep showing). --off (or 0) ends it."""
    if off and minutes:
        raise click.UsageError("give MINUTES or --off, not both")
    if minutes is None and not off:
        raise click.UsageError("give MINUTES (1..720), or --off to end a silence")
    minutes = 0.0 if off else float(minutes)
    _daemon(config_path, "silence", {"minutes": minutes}, as_json,
            lambda d: click.echo(f"chimes silenced until {local_time(d['silenced_until'])} (store-agent silence --off ends it)"
                                 if d.get("silenced_until") else "chimes on again"))


@main.command()
@click.argument("sound", default="new_order")
@config_option
@json_option
def chime(sound: str, config_path: str | None, as_json: bool) -> None:
    """Play a chime (new_order, exception, urgent, device_fault) to test the speaker; waits until it played,
    exit 1 with the reason when it did not (no sound card, silenced, quiet hours, sound disabled)."""
    _daemon(config_path, "chime", {"sound": sound}, as_json, lambda d: click.echo(f"played {sound} ({d.get('played')})"))


@main.command()
@click.argument("text")
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False), help="write FILE.wav instead of playing it")
@config_option
@json_option
def say(text: str, out: str | None, config_path: str | None, as_json: bool) -> None:
    """Speak TEXT as the agent announces orders (clips from voice.clips_dir, else espeak-ng); waits until it
    was heard, exit 1 with the reason when not. --out FILE.wav writes it instead (no agent needed)."""
    if out is None:
        _daemon(config_path, "say", {"text": text}, as_json, lambda d: click.echo(f"said {d['text']} ({d['played']})"))
        return
    import shutil as _shutil  # noqa: PLC0415

    from drivers.audio import AudioError  # noqa: PLC0415

    from .voice import make_voice  # noqa: PLC0415

    import tempfile as _tempfile  # noqa: PLC0415
    from pathlib import Path as _Path  # noqa: PLC0415

    cfg = load_config(config_path)
    try:
        with _tempfile.TemporaryDirectory(prefix="store-agent-say-") as tmp:  # the agent's cache may not be ours to write
            voice = make_voice(cfg)
            voice.cache = _Path(tmp)
            _shutil.copyfile(voice.say(text), out)
    except (AudioError, OSError) as e:
        emit_json(False, {}, str(e)) if as_json else click.echo(f"error: {e}", err=True)
        sys.exit(1)
    emit_json(True, {"file": out}) if as_json else click.echo(f"wrote {out}")


def tool_login_options(fn):  # noqa: ANN001, ANN201
    """--username/--password-file/--cert-file/--key-file/--take-over: the login a tool connects with."""
    for opt in reversed([
        click.option("--username", default="", help="a login for tools: the broker kit's tech login (never the store's, hq or infodept)"),
        click.option("--password-file", default=None, type=click.Path(dir_okay=False), help="that login's password (first line)"),
        click.option("--cert-file", default=None, type=click.Path(dir_okay=False), help="that login's certificate (kit in certificate mode)"),
        click.option("--key-file", default=None, type=click.Path(dir_okay=False), help="that certificate's key"),
        click.option("--take-over", is_flag=True, help="log in even with a login that is in use (disconnects whoever holds it)"),
    ]):
        fn = opt(fn)
    return fn


def _tool_login(username: str, password_file: str | None, cert_file: str | None, key_file: str | None):  # noqa: ANN202
    from .toollogin import ToolLogin  # noqa: PLC0415

    for key, path in (("--password-file", password_file), ("--cert-file", cert_file), ("--key-file", key_file)):
        if path and not os.access(path, os.R_OK):
            click.echo(f"error: {key}: {path}: " + ("no such file" if not os.path.exists(path) else "not readable by this user"), err=True)
            sys.exit(2)
    return ToolLogin(username, password_file or "", cert_file or "", key_file or "")


@main.command()
@config_option
@json_option
@tool_login_options
def doctor(config_path: str | None, as_json: bool, username: str, password_file: str | None, cert_file: str | None,
           key_file: str | None, take_over: bool) -> None:
    """One checklist: config, agent, broker and TLS, subscriptions, printers, USB and udev, audio, GPIO,
    disk, clock, journal. Each failing line says how to fix it; exit 1 if any fails. It never logs in as the
    store while an agent is connected as it (the retained status is read first, with --username tech …)."""
    from dataclasses import asdict  # noqa: PLC0415

    from .control import raw_state_dir  # noqa: PLC0415
    from .doctor import run_checks  # noqa: PLC0415

    tool = _tool_login(username, password_file, cert_file, key_file)
    path = resolve_path(config_path)
    try:
        cfg, error, state_dir = load_config(config_path), "", ""
    except ConfigError as e:  # report it and go on with what can be checked
        cfg, error, state_dir = None, str(e), raw_state_dir(path)
    checks = run_checks(cfg, config_path=str(path), config_error=error, state_dir=state_dir, tool=tool, take_over=take_over)
    failed = any(c.ok is False for c in checks)
    if as_json:
        emit_json(not failed, {"checks": [asdict(c) for c in checks]},
                  None if not failed else "; ".join(f"{c.name}: {c.detail}" for c in checks if c.ok is False))
    else:
        for c in checks:
            mark = {True: "ok  ", False: "FAIL", None: "--  "}[c.ok]
            click.echo(f"[{mark}] {c.name:<18} {c.detail}")
            if c.ok is not True and c.fix:
                click.echo(f"       fix: {c.fix}")
    if failed:
        sys.exit(1)


@main.command()
@click.option("--step", "step_s", default=1.5, show_default=True, help="seconds per pattern")
@config_option
@json_option
def led(step_s: float, config_path: str | None, as_json: bool) -> None:
    """Cycle the LEDs through on, off, blink and slow blink (to check the wiring), saying each step as it shows
    it, then back to normal."""
    if as_json:
        _daemon(config_path, "led", {"step_s": step_s}, as_json, lambda d: None)
        return
    steps = ("on", "off", "blink", "slow_blink")
    for i, pattern in enumerate(steps, 1):
        click.echo(f"now: {pattern:<10} ({i}/{len(steps)}, {step_s:g} s) both LEDs", nl=True)
        _daemon(config_path, "led", {"step_s": step_s, "pattern": pattern}, False, lambda d: None)
    click.echo("done: the LEDs show the agent's state again")


@main.command()
@click.argument("event_file", required=False, type=click.Path(exists=True, dir_okay=False))
@config_option
@json_option
@click.option("--wait", "wait_s", default=10.0, show_default=True, help="seconds to wait for the agent's result")
@click.option("--sample", default=None, help="send a built-in sample event instead of a file (new ids, times from now); --list names them")
@click.option("--list", "list_samples", is_flag=True, help="list the built-in samples and the example files, then exit")
@click.option("--fresh", is_flag=True, help="rewrite the file's times (and its event id) from now: example files carry a "
              "stale expires_at and would be answered 'expired'")
@tool_login_options
def send(event_file: str | None, config_path: str | None, as_json: bool, wait_s: float, sample: str | None, list_samples: bool,
         fresh: bool, username: str, password_file: str | None, cert_file: str | None, key_file: str | None, take_over: bool) -> None:
    """Publish an order event (a file, or --sample NAME) to this store's order topic and show the agent's results
    as they arrive. With the broker kit, log in with its tech login (--username tech --password-file FILE, or
    --cert-file/--key-file): never as the store, hq or infodept, which would disconnect them."""
    from .messages import Rejection, parse_event  # noqa: PLC0415
    from .mqtt import MqttSettings, ToolClient  # noqa: PLC0415
    from .remote import RemoteConfig  # noqa: PLC0415
    from .samples import SAMPLE_NAMES, example_dir, freshen, sample_event  # noqa: PLC0415
    from .toollogin import refusal  # noqa: PLC0415
    from .topics import Topics  # noqa: PLC0415

    if list_samples:
        if as_json:
            emit_json(True, {"samples": list(SAMPLE_NAMES), "example_dir": str(example_dir())})
            return
        click.echo("built-in samples (store-agent send --sample NAME):")
        for name, what in SAMPLE_NAMES.items():
            click.echo(f"  {name:<18} {what}")
        click.echo(f"example files (store-agent send --fresh FILE): {example_dir()}")
        return
    if bool(event_file) == bool(sample):
        click.echo("send: give an event file or --sample NAME (store-agent send --list)", err=True)
        sys.exit(2)
    tool = _tool_login(username, password_file, cert_file, key_file)
    cfg = RemoteConfig(load_config(config_path)).effective()  # where the agent listens now
    if sample:
        try:
            payload = json.dumps(sample_event(sample), ensure_ascii=False).encode()
        except KeyError:
            click.echo(f"send: no sample {sample!r}; one of {', '.join(SAMPLE_NAMES)}", err=True)
            sys.exit(2)
        source = f"sample {sample}"
    else:
        payload = Path(event_file).read_bytes()
        source = event_file
        if fresh:
            try:
                payload = json.dumps(freshen(json.loads(payload)), ensure_ascii=False).encode()
            except (ValueError, TypeError, AttributeError) as e:
                click.echo(f"{event_file}: --fresh needs a JSON order event: {e}", err=True)
                sys.exit(2)
    parsed = parse_event(payload, cfg.intake.max_payload_bytes)
    if isinstance(parsed, Rejection):
        click.echo(f"{source}: the agent would reject it: {parsed.reason}", err=True)
        sys.exit(2)
    topics = Topics(cfg.mqtt.topic_prefix, cfg.store_id)
    m = cfg.mqtt
    if (m.username or m.cert_file) and not tool.given:
        click.echo("send: pass the broker kit's tech login (--username tech --password-file FILE, or --cert-file/--key-file "
                   "of tech.crt). Logging in as the store would take over the agent's session (with the broker kit a "
                   "store's login is its client id), and the store's ACL does not allow publishing orders anyway.", err=True)
        sys.exit(2)
    why = refusal(cfg, tool.name, take_over=take_over) if tool.given else None
    if why:
        click.echo(f"send: {why}", err=True)
        sys.exit(2)
    client_id = f"store-agent-send-{os.getpid()}"
    settings = tool.settings(cfg, client_id) if tool.given else MqttSettings(m.host, m.port, client_id, tls=m.tls, ca_file=m.ca_file)
    final = ("printed", "failed", "rejected", "duplicate", "expired")
    results: list[dict] = []

    def mine(msgs) -> list[dict]:  # noqa: ANN001
        out = []
        for _, p in msgs:
            try:
                r = json.loads(p)
            except ValueError:
                continue
            if isinstance(r, dict) and r.get("event_id") == parsed.id:
                out.append(r)
        return out

    def say(line: str) -> None:
        if not as_json:
            click.echo(line)

    try:
        with ToolClient(settings, [topics.result, topics.status]) as c:
            # the agent's retained status first: an order for an agent that is away waits at the broker
            c.wait_for(lambda msgs: any(t == topics.status for t, _ in msgs), 1.0)
            statuses = [p.decode(errors="replace") for t, p in c.received if t == topics.status]
            agent_status = statuses[-1] if statuses else None
            c.publish(topics.orders, payload)
            say(f"sent {parsed.id} ({parsed.type}, order {parsed.order.id}) to {topics.orders}; waiting up to {wait_s:g}s for the agent")
            if agent_status != "online":
                say(f"note: {topics.status} is {agent_status!r}: the agent is not connected (stopped, or lost: power or "
                    "network); the order waits at the broker until it is (store-agent status, doctor on the store's Pi)"
                    if agent_status else f"note: nothing retained on {topics.status}: this store's agent has never connected to "
                    "this broker, and orders for it are not kept (start it once)")
            import time as _time  # noqa: PLC0415

            deadline = _time.monotonic() + wait_s
            while True:
                got = mine(list(c.received))
                for r in got[len(results):]:
                    results.append(r)
                    say(f"result {r['status']:<9} {', '.join(r.get('documents') or []) or ''}"
                        + (f" on {r['printer']}" if r.get("printer") else "") + (f"  {r['error']}" if r.get("error") else ""))
                if any(r["status"] in final for r in results) or _time.monotonic() >= deadline or c.taken_over:
                    break
                c.wait_for(lambda msgs: len(mine(msgs)) > len(results), min(1.0, max(deadline - _time.monotonic(), 0.01)))
            taken = c.taken_over
    except ConnectionError as e:
        if as_json:
            emit_json(False, {"event_id": parsed.id, "results": []}, str(e))
        click.echo(f"send: cannot log in to the broker: {e}", err=True)
        sys.exit(1)
    error = None
    if taken:
        error = f"another client logged in as {tool.name or client_id} and took this tool's session over; try again"
    elif not results:
        error = (f"no result within {wait_s:g}s: is the agent running and subscribed? (store-agent status)" if agent_status == "online"
                 else f"no result within {wait_s:g}s: the agent is not connected ({topics.status}: {agent_status or 'nothing'})")
    elif not any(r["status"] in final for r in results):
        error = f"no final result within {wait_s:g}s (last: {results[-1]['status']}): store-agent status shows the printer"
    if as_json:
        emit_json(error is None or bool(results), {"event_id": parsed.id, "results": results, "agent_status": agent_status},
                  error)
    if error:
        click.echo(error, err=True)
        if not results or taken:
            sys.exit(1)


@main.command()
@config_option
@json_option
@click.option("--for", "for_s", default=None, type=click.FloatRange(0.5, 86400), help="stop after this many seconds (default: Ctrl-C)")
@tool_login_options
def watch(config_path: str | None, as_json: bool, for_s: float | None, username: str, password_file: str | None,
          cert_file: str | None, key_file: str | None, take_over: bool) -> None:
    """Watch what this store says on the broker: status, results, alerts, health, one line each as they come.
    With the broker kit log in with its tech login (as for send); the store's own login, hq and infodept are refused."""
    import time  # noqa: PLC0415

    from .mqtt import MqttSettings, ToolClient  # noqa: PLC0415
    from .remote import RemoteConfig  # noqa: PLC0415
    from .toollogin import refusal  # noqa: PLC0415
    from .topics import Topics  # noqa: PLC0415

    if as_json and for_s is None:
        raise click.UsageError("--json needs --for SECONDS (the answer is printed at the end)")
    tool = _tool_login(username, password_file, cert_file, key_file)
    cfg = RemoteConfig(load_config(config_path)).effective()
    m = cfg.mqtt
    if (m.username or m.cert_file) and not tool.given:
        click.echo("watch: pass the broker kit's tech login (--username tech --password-file FILE, or --cert-file/--key-file)",
                   err=True)
        sys.exit(2)
    why = refusal(cfg, tool.name, take_over=take_over) if tool.given else None
    if why:
        click.echo(f"watch: {why}", err=True)
        sys.exit(2)
    t = Topics(m.topic_prefix, cfg.store_id)
    client_id = f"store-agent-watch-{os.getpid()}"
    settings = tool.settings(cfg, client_id) if tool.given else MqttSettings(m.host, m.port, client_id, tls=m.tls, ca_file=m.ca_file)
    seen: list[dict] = []

    def line(topic: str, payload: bytes) -> dict:
        text = payload.decode("utf-8", errors="replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        kind = topic[len(t._t("")):] if topic.startswith(t._t("")) else topic  # noqa: SLF001
        if kind == "status":
            say = f"status   {text}"
        elif kind == "orders/result" and isinstance(body, dict):
            say = (f"result   {body.get('event_id')} {body.get('status')} {', '.join(body.get('documents') or [])}"
                   + (f" on {body['printer']}" if body.get("printer") else "") + (f"  {body['error']}" if body.get("error") else ""))
        elif kind == "alerts" and isinstance(body, dict):
            say = f"alert    {body.get('id')} {body.get('state')}: {body.get('message')}"
        elif kind == "health" and isinstance(body, dict):
            printers = ", ".join(f"{p.get('name')} {p.get('state')}" for p in body.get("printers") or [])
            say = (f"health   mqtt {'connected' if (body.get('mqtt') or {}).get('connected') else 'not connected'}; {printers}; "
                   f"audio {(body.get('audio') or {}).get('state')}; queue {(body.get('queue') or {}).get('pending')}")
        else:
            say = f"{kind:<8} {text[:200]}"
        return {"topic": topic, "at": local_time(time.time()), "line": say}

    topics = [t.status, t.result, t.alerts, t.health]
    try:
        with ToolClient(settings, topics) as c:
            if not as_json:
                click.echo(f"watching {t._t('')}{{status, orders/result, alerts, health}} on {m.host}:{m.port}"  # noqa: SLF001
                           + (f" for {for_s:g}s" if for_s else "; Ctrl-C ends"))
            deadline = time.monotonic() + for_s if for_s else None
            try:
                while deadline is None or time.monotonic() < deadline:
                    n = len(seen)
                    c.wait_for(lambda msgs: len(msgs) > n, 0.5 if deadline is None else max(min(0.5, deadline - time.monotonic()), 0.01))
                    for topic, payload in list(c.received)[n:]:
                        entry = line(topic, payload)
                        seen.append(entry)
                        if not as_json:
                            click.echo(f"{entry['at']}  {entry['line']}")
                    if c.taken_over:
                        raise ConnectionError(f"another client logged in as {tool.name or client_id} and took this tool's "
                                              "session over (two tools with one login take it from each other)")
            except KeyboardInterrupt:
                pass
    except ConnectionError as e:
        if as_json:
            emit_json(False, {"messages": seen}, str(e))
        click.echo(f"watch: {e}", err=True)
        sys.exit(1)
    if as_json:
        emit_json(True, {"messages": seen})


@main.group("printers", invoke_without_command=True)
@config_option
@json_option
@click.pass_context
def printers(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """The configured printers with their state (from the running agent, else asked directly), and the USB
    receipt printers pyusb can see: ids, permissions, and whether the config uses them.
    `printers probe NAME`: what a printer does; `printers profiles`: the printer database."""
    if ctx.invoked_subcommand is not None:
        return
    from drivers.usbscan import UsbScanError, scan  # noqa: PLC0415

    cfg = None
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        if not as_json:
            click.echo(f"(config not loaded: {e}; USB printers only)", err=True)
    configured_rows = _configured_printers(cfg) if cfg else []
    configured = {(p.vendor_id, p.product_id) for p in cfg.printers if p.connection == "usb"} if cfg else set()  # noqa: E501
    usb_error = None
    try:
        found = scan()
    except UsbScanError as e:
        found, usb_error = [], str(e)
    rows = [dict(d, configured=(d["vendor_id"], d["product_id"]) in configured) for d in found]
    if as_json:
        emit_json(usb_error is None, {"configured": configured_rows, "usb": rows}, usb_error)
        if usb_error:
            sys.exit(1)
        return
    for r in configured_rows:
        click.echo(f"{r['name']:<12} {r['connection']:<8} {r['target']:<24} {r['state']:<12} {r['detail']}"
                   + (f"\n             fix: {r['fix']}" if r.get("fix") else ""))
    if usb_error:
        click.echo(f"error: {usb_error}", err=True)
        sys.exit(1)
    if not rows:
        click.echo("no USB printers found (plugged in and powered? `lsusb` lists every USB device)")
    for r in rows:
        click.echo(f"{r['vendor_id']:04x}:{r['product_id']:04x}  bus {r['bus']} addr {r['address']}  {r['product'] or '?'}"
                   f"  {'rw ok' if r['writable'] else 'NO PERMISSION (udev rule?)'}  {'configured' if r['configured'] else 'not configured'}")


def _yn(v) -> str:  # noqa: ANN001
    from .printerfacts import yes_no  # noqa: PLC0415 - the same words as the agent's log

    return yes_no(v)


def show_probe(d: dict) -> None:
    caps = d.get("caps") or {}
    name = d["printer"]
    if not caps.get("reachable", True):
        click.echo(f"{name}: cannot reach it: {caps.get('error')}")
        return
    if not caps.get("dle_eot"):
        click.echo(f"{name}: no answer to DLE EOT: a write-only printer (or the wrong port)? If it prints, set "
                   f"status_query = false for it: it then prints unconfirmed")
    elif caps.get("deferred"):
        click.echo(f"{name}: answers DLE EOT but is {caps['deferred']}: probe again once it can print")
    else:
        ident = caps.get("ident") or {}
        model = " ".join(str(ident[k]) for k in ("maker", "model") if ident.get(k)) or "not reported"
        click.echo(f"{name}: answers DLE EOT yes, GS r 1 {_yn(caps.get('gs_r'))}, cutter {_yn(caps.get('cutter'))}, model {model}"
                   + (f", firmware {ident['firmware']}" if ident.get("firmware") else ""))
        if not caps.get("gs_r"):
            click.echo("  it cannot confirm that a ticket printed: with confirm = \"auto\" its tickets print unconfirmed")
    out = d.get("output") or {}
    click.echo(f"  confirm   {d.get('confirm')}")
    click.echo(f"  profile   suggested {d['suggested_profile']} ({d['why']}); in use {out.get('profile')} ({out.get('source')})")
    if out:
        click.echo(f"  layout    {out['columns']} columns, QR {out['qr']}, {'cut' if out['cut'] else 'feed to the tear bar'}, "
                   f"charset {out['charset']}, {out['render']} mode")


@printers.command("probe")
@click.argument("name", required=False)
@config_option
@json_option
def printers_probe(name: str | None, config_path: str | None, as_json: bool) -> None:
    """Ask printer NAME (default: the first) what it does: DLE EOT, GS r 1, GS I (model, cutter); suggest a
    profile. Through the running agent's connection, else directly when the agent is not running."""
    from .control import ControlError, call  # noqa: PLC0415

    cfg = load_config(config_path)
    try:
        out = call(cfg.state_dir, "probe", {"printer": name}, timeout=30)
    except ControlError:
        out = None
    if out is None:  # no agent: ask the printer ourselves
        from drivers.printers import make_printer  # noqa: PLC0415

        from .printerfacts import confirm_word  # noqa: PLC0415
        from .printing import printer_settings  # noqa: PLC0415
        from .profiles import choose, suggest  # noqa: PLC0415

        idx = next((i for i, p in enumerate(cfg.printers) if name in (None, p.name)), None)
        if idx is None:
            msg = f"no printer {name!r}; configured: {', '.join(p.name for p in cfg.printers)}"
            emit_json(False, {}, msg) if as_json else click.echo(f"error: {msg}", err=True)
            sys.exit(2)
        p = cfg.printers[idx]
        drv = make_printer(p.connection, p.name, **printer_settings(cfg, idx))
        if not hasattr(drv, "probe"):
            msg = f"printer {p.name} ({p.connection}) cannot be asked anything: it has no status channel"
            emit_json(False, {}, msg) if as_json else click.echo(f"error: {msg}", err=True)
            sys.exit(1)
        try:
            caps = drv.probe()
        finally:
            drv.close()
        profile, why = suggest(caps, p.paper_width_mm)
        out = {"status": "ok", "data": {"printer": p.name, "caps": caps, "suggested_profile": profile, "why": why,
                                        "output": choose(p, caps).as_dict(), "confirm": confirm_word(drv, caps)}}
    if as_json:
        emit_json(out.get("status") == "ok", out.get("data") or {}, out.get("error"))
    elif out.get("status") == "ok":
        show_probe(out["data"])
    else:
        click.echo(f"error: {out.get('error')}", err=True)
    reachable = ((out.get("data") or {}).get("caps") or {}).get("reachable", True)
    sys.exit(0 if out.get("status") == "ok" and reachable else 1)


@printers.command("profiles")
@json_option
def printers_profiles(as_json: bool) -> None:
    """The printer database python-escpos ships (escpos-printer-db): what each profile sets."""
    from drivers.escpos_caps import profiles as db  # noqa: PLC0415

    rows = []
    for name, prof in sorted(db().items()):
        feats = prof.get("features") or {}
        width = (prof.get("media") or {}).get("width") or {}
        cols = ((prof.get("fonts") or {}).get("0") or {}).get("columns")
        rows.append({"profile": name, "vendor": prof.get("vendor"), "width_mm": width.get("mm"), "dots": width.get("pixels"),
                     "columns": cols, "cutter": bool(feats.get("paperFullCut") or feats.get("paperPartCut")),
                     "qr": bool(feats.get("qrCode")), "raster": bool(feats.get("bitImageRaster"))})
    if as_json:
        emit_json(True, {"profiles": rows})
        return
    click.echo(f"{'profile':<16} {'vendor':<16} {'mm':>6} {'dots':>6} {'cols':>4}  cutter  qr   raster")
    for r in rows:
        click.echo(f"{r['profile']:<16} {str(r['vendor'] or ''):<16} {str(r['width_mm'] or '?'):>6} {str(r['dots'] or '?'):>6} "
                   f"{str(r['columns'] or '?'):>4}  {_yn(r['cutter']):<6}  {_yn(r['qr']):<3}  {_yn(r['raster'])}")


@main.group("paper")
def paper_group() -> None:
    """The paper-left forecast."""


@paper_group.command("loaded")
@click.argument("printer", required=False)
@config_option
@json_option
def paper_loaded(printer: str | None, config_path: str | None, as_json: bool) -> None:
    """A new roll is in PRINTER (default: the first): the paper count starts again."""
    _daemon(config_path, "paper_loaded", {"printer": printer}, as_json,
            lambda d: click.echo(f"{d['printer']}: new roll; the last one gave {d['last_roll_m']} m; "
                                 f"about {d['paper']['tickets_left']} tickets on this one ({d['paper']['left_m']} m)"))


def _printer_target(p) -> str:  # noqa: ANN001 - PrinterConfig
    g = lambda k: getattr(p, k, None)  # noqa: E731 - each connection kind has its own keys
    if p.connection == "network":
        return f"{g('host')}:{g('port')}"
    if p.connection == "usb":
        return f"{g('vendor_id') or 0:04x}:{g('product_id') or 0:04x}"
    return str(g({"serial": "device", "file": "path", "virtual": "spool_dir"}.get(p.connection, "")) or "")


def _configured_printers(cfg) -> list[dict]:  # noqa: ANN001 - Config
    """Each configured printer's state: the running agent's view when it answers (never two connections to
    one printer), else a status query of its own."""
    from .control import ControlError, call  # noqa: PLC0415
    from .doctor import printer_fix  # noqa: PLC0415

    states = {}
    try:
        out = call(cfg.state_dir, "status", {}, timeout=10)
        if out.get("status") == "ok":
            states = {p["name"]: (p["state"], p.get("detail", ""), "agent") for p in out["data"].get("printers", [])}
    except ControlError:
        pass
    rows = []
    for i, p in enumerate(cfg.printers):
        if p.name not in states:
            try:
                from drivers.printers import make_printer  # noqa: PLC0415

                from .printing import printer_settings  # noqa: PLC0415

                drv = make_printer(p.connection, p.name, **printer_settings(cfg, i))
                try:
                    st = drv.status()  # DLE EOT only: no probe from a one-shot command
                finally:
                    drv.close()
                states[p.name] = (st.state, st.detail, "asked")
            except Exception as e:  # noqa: BLE001 - a line per printer, never a crash
                states[p.name] = ("unknown", f"{type(e).__name__}: {e}", "asked")
        state, detail, source = states[p.name]
        rows.append({"name": p.name, "connection": p.connection, "target": _printer_target(p), "role": p.role,
                     "state": state, "detail": detail, "source": source, "fix": printer_fix(p, state, detail)})  # noqa: E501
    return rows


@main.command("report")
@click.option("--day", "day", default=None, help="YYYY-MM-DD (default: today)")
@click.option("--week", "period", flag_value="week", help="the 7 days ending with --day")
@click.option("--month", "period", flag_value="month", help="the calendar month of --day")
@click.option("--print", "print_it", is_flag=True, help="also print it as a slip")
@config_option
@json_option
def report(day: str | None, period: str | None, print_it: bool, config_path: str | None, as_json: bool) -> None:
    """The store's figures: orders and amounts per platform, tickets, 补打, printer faults, escalations,
    alert response, follow-ups (a day by default)."""
    _daemon(config_path, "report", {"period": period or "day", "day": day, "print": print_it}, as_json, show_report)


def show_report(r: dict) -> None:
    span = r["from_day"] if r["from_day"] == r["to_day"] else f"{r['from_day']} .. {r['to_day']}"
    click.echo(f"{r.get('period', 'day')} {span}")
    o = r["orders"]
    click.echo(f"orders      {o['total']}  paid {o['paid_fen'] / 100:.2f}")
    for name, p in o["by_platform"].items():
        click.echo(f"  {name:<10} {p['orders']:>5}  paid {p['paid_fen'] / 100:.2f}")
    click.echo("tickets     " + (", ".join(f"{k} {v}" for k, v in r["tickets"].items()) or "0"))
    click.echo("reprints    " + (", ".join(f"{k} {v}" for k, v in r["reprints"].items()) or "0"))
    click.echo("results     " + (", ".join(f"{k} {v}" for k, v in r["results"].items()) or "none other than printed"))
    t = r["to_paper_s"]
    click.echo(f"to paper    p50 {t['p50']} s  p95 {t['p95']} s  max {t['max']} s  ({t['n']} events)")
    click.echo("faults      " + (", ".join(f"{k} {f['count']}x {f['minutes']} min" for k, f in r["faults"].items()) or "none"))
    a = r["alert_response_s"]
    click.echo(f"escalated   {r['escalations']}    alert response median {a['median']} s, max {a['max']} s ({a['n']})")
    f = r["followups"]
    click.echo(f"follow-ups  done {f['done']} (reached {f['reached']}, no answer {f['no_answer']}, declined {f['declined']})"
               + (f", rate {f['rate']:.0%}" if f["rate"] is not None else "") + (f", due now {f['due']}" if f.get("due") is not None else ""))


@main.command("followups")
@config_option
@json_option
def followups(config_path: str | None, as_json: bool) -> None:
    """The orders due for their follow-up call (delivered 24-48 h ago, not yet called)."""

    def show(d: dict) -> None:
        if not d["due"]:
            click.echo(f"no follow-ups due (orders delivered {d['after_h']:g}-{d['before_h']:g} h ago, not yet called)")
        for o in d["due"]:
            click.echo(f"{o['order_id']:<22} {o['platform'] or '-':<8} #{o['seq'] if o['seq'] is not None else '-':<4} "
                       f"delivered {local_time(o['delivered_at'])} ({o['hours_ago']} h)  {o['phone'] or '-'}"
                       + ("  [after-sale]" if o["aftersale"] else "") + ("  " + "; ".join(o["items"]) if o["items"] else ""))

    _daemon(config_path, "followups", {}, as_json, show)


@main.group("followup")
def followup_group() -> None:
    """Record follow-up calls."""


@followup_group.command("done")
@click.argument("order_id")
@click.option("--outcome", type=click.Choice(["reached", "no_answer", "declined"]), default="reached", show_default=True)
@config_option
@json_option
def followup_done(order_id: str, outcome: str, config_path: str | None, as_json: bool) -> None:
    """Record the follow-up call of ORDER_ID (it leaves the list; counted in the report)."""
    _daemon(config_path, "followup_done", {"order_id": order_id, "outcome": outcome}, as_json,
            lambda d: click.echo(f"{d['order_id']}: {d['outcome']}" + (f" (was {d['was']})" if d.get("was") else "")))


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
        if as_json:
            emit_json(False, {}, "the agent is running: stop it first (sudo systemctl stop store-agent)")
        click.echo("error: the agent is running: stop it first (sudo systemctl stop store-agent)", err=True)
        sys.exit(1)
    path = Path(cfg.state_dir) / "journal.sqlite3"
    try:
        report = salvage(path)
    except SalvageError as e:
        if as_json:
            emit_json(False, {}, str(e))
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    if as_json:
        emit_json(True, asdict(report))
        return
    click.echo(f"{path}: salvaged {report.unfinished_events} unfinished order event(s), {report.jobs_copied} ticket(s) "
               f"({report.printing_jobs} will print marked 补打); {report.events_read} event(s) read, "
               f"{report.unreadable_rows} unreadable row(s); {report.dedupe_keys} id(s) kept against re-sends")
    click.echo(f"the damaged file is kept as {report.kept_as}; start the agent: sudo systemctl start store-agent")


if __name__ == "__main__":
    main()
