"""``store-fleet``: the info department's console. Exit 0 ok, 1 failure (a problem found with --problems, a
halted push, stores that did not answer), 2 usage or config error. ``--debug`` shows tracebacks."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Optional

import click

from agent.config import ConfigError

from . import config as fconfig
from .state import store_dict, summary_line

CONFIG_HELP = f"the console's config (default ${fconfig.ENV}, else {fconfig.DEFAULT_PATH})"


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:  # noqa: ANN401
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            click.echo(f"config error: {e}", err=True)
            sys.exit(2)
        except ConnectionError as e:
            click.echo(f"cannot reach the broker: {e}", err=True)
            sys.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {type(e).__name__}: {e} (--debug shows the traceback)", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="full tracebacks")
@click.version_option(package_name="store-agent", prog_name="store-fleet")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """The info department's console: every store at a glance, staged config pushes, signed requests."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def config_option(f):  # noqa: ANN001, ANN201
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help=CONFIG_HELP)(f)


def _console(config_path: Optional[str], role: str):  # noqa: ANN202
    from .console import Console  # noqa: PLC0415

    return Console(fconfig.load(config_path), role=role)


@main.command()
@config_option
@click.option("--problems", is_flag=True, help="only stores with a problem (exit 1 when there is one)")
@click.option("--json", "as_json", is_flag=True)
def status(config_path: Optional[str], problems: bool, as_json: bool) -> None:
    """One line per store, problems first, and a summary line."""
    from .view import status_text  # noqa: PLC0415

    c = _console(config_path, "status").start()
    try:
        rows, counts = c.state.table()
        if as_json:
            out = {"summary": summary_line(counts), "counts": counts,
                   "stores": [store_dict(s, p, c.state.pushed.get(s.id), c.cfg.stores.get(s.id))
                              for s, p in rows if p or not problems]}
            click.echo(json.dumps(out, ensure_ascii=False, indent=1, default=str))
        else:
            click.echo(status_text(c.state, problems, c.cfg.stores))
    finally:
        c.stop()
    if problems and any(p for _, p in rows):
        sys.exit(1)


@main.command()
@click.argument("store_id")
@config_option
@click.option("--json", "as_json", is_flag=True)
def store(store_id: str, config_path: Optional[str], as_json: bool) -> None:
    """One store in full: agent, printers, paper, queue, alerts (and their history), config, today."""
    from .view import store_text  # noqa: PLC0415

    c = _console(config_path, "store").start()
    try:
        snap = {s.id: s for s in c.state.snapshot()}
        s = snap.get(store_id)
        if s is None:
            click.echo(f"store {store_id}: nothing seen from it (no retained status, health or config/state)", err=True)
            sys.exit(1)
        d = store_dict(s, c.state.problems(s, c.state.newest_version(list(snap.values()))), c.state.pushed.get(s.id),
                       c.cfg.stores.get(s.id))
        alerts, outages = c.history.alerts_of(store_id), c.history.outages_of(store_id)
        if as_json:
            click.echo(json.dumps({**d, "alert_history": alerts, "outages": outages}, ensure_ascii=False, indent=1, default=str))
        else:
            click.echo(store_text(d, alerts, outages))
    finally:
        c.stop()


def _read_overlay(path: str) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    try:
        return json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {e}") from None


def _progress(as_json: bool):  # noqa: ANN202
    def show(ev: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(ev, ensure_ascii=False))
        else:
            click.echo(f"{time.strftime('%H:%M:%S')} {ev['text']}")
    return show


@main.command()
@click.argument("overlay", type=click.Path(exists=True, dir_okay=False))
@click.option("--stores", "pattern", required=True, help="store ids or globs, comma-separated: 'cq-*' or 'cq-0231,cq-0232'")
@click.option("--canary", default=2, show_default=True, help="stores that take it first, alone")
@click.option("--wave", default=50, show_default=True, help="stores per wave after the canaries")
@click.option("--soak", default=60.0, show_default=True, help="seconds each step's stores must stay good")
@click.option("--answer", "answer_s", default=None, type=float, help="seconds a store has to answer (default push.answer_s)")
@click.option("--dry-run", is_flag=True, help="check the overlay against the targets, send nothing")
@config_option
@click.option("--json", "as_json", is_flag=True, help="progress as JSON lines")
def push(overlay: str, pattern: str, canary: int, wave: int, soak: float, answer_s: Optional[float], dry_run: bool,
         config_path: Optional[str], as_json: bool) -> None:
    """Push a config overlay (TOML or JSON: the keys HQ may set) in canaries and waves; halt at the first store
    that rejects, reverts or degrades."""
    from .rollout import Rollout, check_overlay  # noqa: PLC0415

    data = _read_overlay(overlay)
    c = _console(config_path, "push").start()
    try:
        targets = c.match(pattern)
        snap = {s.id: s for s in c.state.snapshot()}
        errors = check_overlay(data, [snap[s] for s in targets if s in snap], c.cfg.push.base_file)
        if errors:
            click.echo("overlay refused, nothing sent (the agents' own rules):", err=True)
            for e in errors[:20]:
                click.echo(f"  {e}", err=True)
            if len(errors) > 20:
                click.echo(f"  … and {len(errors) - 20} more stores", err=True)
            sys.exit(2)
        if not targets:
            click.echo(f"no store matches {pattern!r}", err=True)
            sys.exit(1)
        if dry_run:
            click.echo(f"overlay ok for {len(targets)} stores: {', '.join(targets[:10])}{' …' if len(targets) > 10 else ''}")
            return
        if c.signer is None:
            click.echo("warning: signing.key_file is not set: config/set goes out unsigned "
                       "(agents with security.hq_public_key refuse it)", err=True)
        r = Rollout(c, targets, data, canary=canary, wave=wave, soak=soak, answer_s=answer_s, pattern=pattern,
                    on_event=_progress(as_json))
        result = r.run()
    finally:
        c.stop()
    if result["state"] != "done":
        click.echo(f"push #{result['id']} halted; `store-fleet rollback` returns its stores to what they ran before", err=True)
        sys.exit(1)


@main.command()
@click.option("--push", "push_id", type=int, default=None, help="the push to undo (default: the latest)")
@click.option("--answer", "answer_s", default=None, type=float)
@config_option
@click.option("--json", "as_json", is_flag=True)
def rollback(push_id: Optional[int], answer_s: Optional[float], config_path: Optional[str], as_json: bool) -> None:
    """Return the stores of a push to the overlay they ran before it (sent as a new, higher version)."""
    from .rollout import Rollout, rollback_plan  # noqa: PLC0415

    c = _console(config_path, "rollback").start()
    try:
        p, overlays, cannot = rollback_plan(c.history, push_id)
        for why in cannot:
            click.echo(f"cannot roll back {why}", err=True)
        r = Rollout(c, list(overlays), overlays=overlays, canary=0, wave=max(1, len(overlays)), soak=0,
                    answer_s=answer_s, kind="rollback", pattern=f"push #{p['id']}", on_event=_progress(as_json))
        result = r.run()
    finally:
        c.stop()
    if result["state"] != "done" or cannot:
        sys.exit(1)


def _summary(data: Any) -> str:  # noqa: ANN401
    if not isinstance(data, dict):
        return json.dumps(data, ensure_ascii=False)[:80]
    keep = {k: v for k, v in data.items() if not isinstance(v, (dict, list)) or k in ("jobs", "acknowledged")}
    return json.dumps(keep, ensure_ascii=False, default=str)[:100]


@main.command()
@click.argument("command")
@click.option("--stores", "pattern", required=True)
@click.option("--args", "args_json", default=None, help="the request's args as JSON")
@click.option("--timeout", default=10.0, show_default=True)
@config_option
@click.option("--json", "as_json", is_flag=True)
def request(command: str, pattern: str, args_json: Optional[str], timeout: float, config_path: Optional[str],
            as_json: bool) -> None:
    """Send a request (test_print, reprint, status, report, …) to many stores: a table of the answers and the
    stores that did not answer within the timeout."""
    try:
        args = json.loads(args_json) if args_json else None
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--args") from None
    if args is not None and not isinstance(args, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--args")
    c = _console(config_path, "request").start()
    try:
        targets = c.match(pattern)
        if not targets:
            click.echo(f"no store matches {pattern!r}", err=True)
            sys.exit(1)
        if c.signer is None:
            click.echo("warning: signing.key_file is not set: requests go out unsigned "
                       "(agents with security.hq_public_key refuse them)", err=True)
        answers, silent = c.request(command, targets, args, timeout)
    finally:
        c.stop()
    if as_json:
        click.echo(json.dumps({"answers": {s: {k: v for k, v in a.items() if k != "_store"} for s, a in answers.items()},
                               "no_answer": silent}, ensure_ascii=False, indent=1, default=str))
    else:
        for s in targets:
            if s in answers:
                a = answers[s]
                text = a.get("error") if a.get("status") != "ok" else _summary(a.get("data"))
                click.echo(f"{s:<16} {a.get('status', '?'):<6} {text}")
        ok = sum(1 for a in answers.values() if a.get("status") == "ok")
        click.echo(f"{len(targets)} stores: {ok} ok, {len(answers) - ok} error, {len(silent)} no answer within {timeout:g} s"
                   + (f": {', '.join(silent[:20])}{' …' if len(silent) > 20 else ''}" if silent else ""))
    if silent or any(a.get("status") != "ok" for a in answers.values()):
        sys.exit(1)


@main.command()
@click.option("--listen", default=None, help="HOST:PORT (default web.listen, 127.0.0.1:8080)")
@config_option
def serve(listen: Optional[str], config_path: Optional[str]) -> None:
    """The fleet as a web page with live updates (login: web.token or [web.users]; never open)."""
    from .web import NotProtected, WebServer  # noqa: PLC0415

    cfg = fconfig.load(config_path)
    if not cfg.web.token and not cfg.web.users:
        raise ConfigError("serve needs a login: set web.token or [web.users] (the page is never served open)")
    listen = listen or cfg.web.listen
    host = listen.rpartition(":")[0].strip("[]")
    if host not in ("127.0.0.1", "::1", "localhost") and not cfg.web.tls_cert:
        click.echo(f"warning: serving on {host} without TLS (web.tls_cert): logins cross the network in clear; "
                   "put it behind a TLS proxy or set web.tls_cert/tls_key", err=True)
    from .console import Console  # noqa: PLC0415

    c = Console(cfg, role="serve").start()
    try:
        server = WebServer(c, listen)
        click.echo(f"store-fleet: {server.url}/ (Ctrl-C stops)", err=True)
        server.run()
    except NotProtected as e:
        raise ConfigError(str(e)) from None
    finally:
        c.stop()


@main.command()
@click.option("--problems", is_flag=True, help="only stores with a problem")
@click.option("--every", default=1.0, show_default=True, help="seconds between redraws (when something changed)")
@config_option
def watch(problems: bool, every: float, config_path: Optional[str]) -> None:
    """A live view in the terminal: the status lines, the summary and the latest push's progress (Ctrl-C stops)."""
    from .view import status_text  # noqa: PLC0415

    c = _console(config_path, "watch").start()
    seen, push_seen = -1, None
    try:
        while True:
            gen = c.state.generation
            p = c.history.push(kind="push")
            pk = (p["id"], p["state"], len(p["log"])) if p else None
            if gen != seen or pk != push_seen:
                seen, push_seen = gen, pk
                c.refresh_pushed()
                out = status_text(c.state, problems, c.cfg.stores)
                if p:
                    out += f"\n\n{p['kind']} #{p['id']} ({p['pattern']}): {p['state']}" + (f" - {p['result']}" if p["result"] else "")
                    out += "".join(f"\n  {time.strftime('%H:%M:%S', time.localtime(x['at']))} {x['text']}" for x in p["log"][-8:])
                click.echo("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") + ("connected" if c.link.connected else "NOT CONNECTED")
                           + "\n" + out)
            time.sleep(every)
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()


@main.command()
@click.option("--serve", "serve_s", default=0.0, help="keep the web page up this many seconds at the end")
def demo(serve_s: float) -> None:
    """The console over five real agents on a private broker: a fault, a staged push, a halted one, a rollback."""
    from .demo import run  # noqa: PLC0415

    sys.exit(run(click.echo, serve_s))


@main.command()
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="where the private key goes (mode 0600)")
@click.option("--force", is_flag=True, help="replace an existing key file")
def keygen(out: str, force: bool) -> None:
    """A new Ed25519 signing key: the private key to --out, the public key (for the agents'
    security.hq_public_key) on stdout."""
    from agent.signing import generate  # noqa: PLC0415

    p = Path(out)
    if p.exists() and not force:
        click.echo(f"{p} exists: a new key would lock out every store that trusts the old one until they are "
                   "given the new public key (--force to replace; see docs/FLEET.md, key rotation)", err=True)
        sys.exit(2)
    pem, public = generate()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(p) + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(str(p) + ".tmp", p)
    click.echo(public)
    click.echo(f"# private key written to {p} (0600); put the line above in each store's config:\n"
               f'#   [security]\n#   hq_public_key = "{public}"', err=True)


if __name__ == "__main__":
    main()
