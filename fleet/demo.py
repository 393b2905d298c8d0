"""``store-fleet demo``: the console over a small fleet, on one machine, no config.

A private mosquitto, five real agents (each with a virtual network printer, each trusting the demo's
signing key but one, which missed a key rotation), the console signing with that key, then: the fleet at
a glance; a paper-out and a stopped agent; a staged push (canary, waves, soak) that goes through; one
that halts at the store with the old key, with nothing sent to the rest; a rollback; and ``--serve``
keeps the web page up for a look."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from agent.app import Agent
from agent.config import parse_config
from agent.devbroker import DevBroker, free_port
from agent.signing import generate
from drivers.vprinter import VirtualPrinter

from . import config as fconfig
from .console import Console
from .rollout import Rollout, rollback_plan
from .view import status_text

STORES = {"cq-0231": ("解放碑店", "渝中"), "cq-0232": ("观音桥店", "江北"), "cq-0233": ("南坪店", "南岸"),
          "cq-0234": ("沙坪坝店", "沙坪坝"), "cq-0235": ("杨家坪店", "九龙坡")}
OLD_KEY_STORE = "cq-0235"


def _wait(cond: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def run(echo: Callable[[str], None] = print, serve_s: float = 0, workdir: Optional[Path] = None) -> int:
    logging.getLogger("agent").setLevel(logging.ERROR)
    work = Path(workdir or tempfile.mkdtemp(prefix="store-fleet-demo-"))
    broker = DevBroker(work / "broker").start()
    printers: dict[str, VirtualPrinter] = {}
    agents: dict[str, Agent] = {}
    console: Optional[Console] = None
    pem, public = generate()
    _, old_public = generate()
    (work / "hq.key").write_bytes(pem)
    try:
        echo(f"== a private broker on 127.0.0.1:{broker.port}; five stores, each a real agent with a virtual printer")
        for sid, (name, _) in STORES.items():
            vp = printers[sid] = VirtualPrinter().start()
            cfg = {"store_id": sid, "state_dir": str(work / sid), "store": {"name": name},
                   "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                   "printers": [{"name": "counter", "connection": "network", "host": "127.0.0.1", "port": vp.port}],
                   "health": {"printer_poll_s": 1, "clear_after_s": 2}, "sound": {"enabled": False}, "voice": {"enabled": False},
                   "timers": {"prep_before_s": 0, "summary_every_s": 0}, "report": {"daily_at": ""}, "followup": {"print_at": ""},
                   "security": {"hq_public_key": old_public if sid == OLD_KEY_STORE else public}}
            a = agents[sid] = Agent(parse_config(cfg))
            a.start()
        fc = fconfig.parse({"mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                            "state_dir": str(work / "fleet"), "signing": {"key_file": str(work / "hq.key")},
                            "push": {"answer_s": 20}, "web": {"token": "demo"},
                            "stores": {s: {"name": n, "region": r} for s, (n, r) in STORES.items()}})
        console = Console(fc, role="demo").start()
        _wait(lambda: all(console.state.stores.get(s) and console.state.stores[s].health
                          and console.state.stores[s].config for s in STORES))
        echo("\n$ store-fleet status")
        echo(status_text(console.state, False, fc.stores))

        echo("\n== cq-0232 runs out of paper; cq-0234's agent is stopped")
        printers["cq-0232"].set_mode("paper_out")
        agents.pop("cq-0234").stop()
        _wait(lambda: console.state.stores["cq-0232"].health.printers[0].state == "paper_out"
              and console.state.stores["cq-0234"].status == "stopped")
        echo("\n$ store-fleet status --problems")
        echo(status_text(console.state, True, fc.stores))

        echo("\n== a staged push, signed: a new warm-tip title to three stores, canary 1, waves of 2, soak 2 s")
        overlay = {"texts": {"warm_tip_title": "用药小贴士"}}
        show = lambda e: echo(f"  {time.strftime('%H:%M:%S')} {e['text']}")  # noqa: E731
        targets = ["cq-0231", "cq-0233", "cq-0232"]
        r = Rollout(console, targets, overlay, canary=1, wave=2, soak=2, pattern="cq-0231,cq-0233,cq-0232", on_event=show).run()
        echo(f"  -> {r['state']}")

        echo(f"\n== the next push starts with {OLD_KEY_STORE}, which still trusts an old HQ key: it refuses, the push halts")
        r = Rollout(console, [OLD_KEY_STORE, "cq-0231", "cq-0233"], {"texts": {"warm_tip_title": "温馨提示"}}, canary=1,
                    wave=5, soak=1, pattern="cq-0235,cq-0231,cq-0233", on_event=show).run()
        echo(f"  -> {r['state']}")

        echo("\n== store-fleet rollback: the first push's stores go back to what they ran before it")
        _, overlays, cannot = rollback_plan(console.history, r["id"] - 1)
        r = Rollout(console, list(overlays), overlays=overlays, canary=0, wave=10, soak=0, kind="rollback",
                    pattern=f"push #{r['id'] - 1}", on_event=show).run()
        echo(f"  -> {r['state']}")
        printers["cq-0232"].set_mode("ready")
        _wait(lambda: console.state.stores["cq-0232"].health.printers[0].state == "ready")
        echo("\n$ store-fleet status")
        echo(status_text(console.state, False, fc.stores))
        if serve_s:
            from .web import WebServer  # noqa: PLC0415

            echo("\n== cq-0233's printer cover is opened, for the page to show a fault")
            printers["cq-0233"].set_mode("cover_open")

            srv = WebServer(console, f"127.0.0.1:{free_port()}").start()
            echo(f"\n== the web page: {srv.url}/?token=demo (for {serve_s:g} s)")
            try:
                time.sleep(serve_s)
            finally:
                srv.stop()
        return 0
    finally:
        if console is not None:
            console.stop()
        for a in agents.values():
            a.stop()
        for vp in printers.values():
            vp.stop()
        broker.stop()
