"""``store-agent demo``: the whole path on one machine, no config and no hardware.

A private mosquitto (the project's recommended settings) on a free loopback
port, a virtual network printer, an agent, the sample orders and exceptions,
and the printed tickets left as ``.txt`` + ``.png`` under ``./demo-out/``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from drivers.vprinter import VirtualPrinter

from .app import Agent
from .config import parse_config
from .devbroker import DevBroker
from .mqtt import MqttSettings, ToolClient
from .samples import now_utc, sample_events
from .topics import Topics

log = logging.getLogger(__name__)


def run_demo(out_dir: Path, echo=print) -> int:
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="store-agent-demo-"))
    t0 = time.monotonic()
    try:
        with DevBroker(work / "broker") as broker, VirtualPrinter(spool_dir=out_dir / "counter", columns=48, png=True) as printer:
            echo(f"broker: mosquitto on 127.0.0.1:{broker.port}   printer: virtual ESC/POS on 127.0.0.1:{printer.port}")
            cfg = parse_config({
                "store_id": "demo-0001",
                "state_dir": str(work / "state"),
                "store": {"name": "示例大药房(解放碑店)", "phone": "023-6000-0231"},
                "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_max_s": 2},
                "printers": [{"name": "counter", "connection": "network", "host": "127.0.0.1", "port": printer.port, "paper_width_mm": 80}],
                "health": {"printer_poll_s": 1},
                "sound": {"enabled": False},  # no audio hardware assumed in the demo
            })
            topics = Topics(cfg.mqtt.topic_prefix, cfg.store_id)
            agent = Agent(cfg)
            agent.start()
            try:
                deadline = time.monotonic() + 10
                while not agent.link.subscribed and time.monotonic() < deadline:  # a new store: session + subscription first
                    time.sleep(0.05)
                events = sample_events(now_utc())
                with ToolClient(MqttSettings("127.0.0.1", broker.port, "demo-hq"), [topics.result]) as hq:
                    for ev in events:
                        hq.publish(topics.orders, json.dumps(ev, ensure_ascii=False).encode())
                        echo(f"published {ev['type']:<18} {ev['id']}  order {ev['order']['id']}")
                    hq.publish(topics.orders, b"{not json")
                    echo("published a malformed payload (expect: rejected)")
                    final = {"printed", "failed", "rejected", "duplicate", "expired"}

                    def finished(msgs):
                        return sum(1 for _, p in msgs if json.loads(p)["status"] in final) >= len(events) + 1

                    ok = hq.wait_for(finished, 20)
                    for _, p in hq.received:
                        r = json.loads(p)
                        echo(f"result  {r['status']:<9} {r['event_id'] or '-':<16} {', '.join(r['documents']) or r['error'] or ''}")
            finally:
                agent.stop()
            echo(f"\n{len(printer.jobs)} ticket(s) printed in {time.monotonic() - t0:.1f}s; each as .txt, .png and .bin:")
            for f in sorted((out_dir / "counter").glob("*.txt")):
                echo(f"  {f}")
            return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
