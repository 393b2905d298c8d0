"""Printer fault detection time: from the virtual printer's fault to the agent's alert on P/S/alerts.

    .venv/bin/python bench/detection.py [--trials 10] [--poll 5]

For each fault kind (paper_out, cover_open, offline, hang, down), ``trials`` times: fault the printer
at a random moment of the poll cycle, time until the raised alert arrives, then recover and wait for
the clear. Prints median and worst per kind.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import HQ, agent_config, wait_until  # noqa: E402

from agent.app import Agent  # noqa: E402
from agent.config import parse_config  # noqa: E402
from agent.devbroker import DevBroker  # noqa: E402
from drivers.vprinter import VirtualPrinter  # noqa: E402

EXPECTED = {"paper_out": "printer.paper_out", "cover_open": "printer.cover_open", "offline": "printer.offline",
            "hang": "printer.unreachable", "down": "printer.unreachable"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--poll", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=3.0, help="printer I/O timeout_s")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    rng = random.Random(7)
    with DevBroker(work / "broker") as broker, VirtualPrinter() as vp:
        cfg = agent_config(work / "state", broker.port, vp.port, "detect-0001",
                           health={"printer_poll_s": a.poll, "clear_after_s": 0},
                           escalation={"printer_fault_after_s": 3600})
        cfg["printers"][0]["timeout_s"] = a.timeout
        agent = Agent(parse_config(cfg))
        agent.start()
        hq = HQ(broker.port, "stores", "detect-0001")
        try:
            assert wait_until(lambda: agent.link.subscribed, 10)
            for kind, code in EXPECTED.items():
                times = []
                for _ in range(a.trials):
                    time.sleep(rng.uniform(0, a.poll))
                    n = len(hq.messages)
                    t0 = time.monotonic()
                    vp.set_mode(kind)
                    ok = wait_until(lambda: any(t == hq.topic("alerts") and json.loads(p)["code"] == code and json.loads(p)["state"] == "raised"
                                                for t, p, _ in hq.messages[n:]), 4 * a.poll + 3 * a.timeout + 10, 0.01)
                    times.append(time.monotonic() - t0 if ok else float("inf"))
                    vp.set_mode("ready")
                    wait_until(lambda: not agent.alerts.open_alerts(), 4 * a.poll + 10)
                finite = [t for t in times if t != float("inf")]
                print(f"{kind:<11} n={len(times)} detected={len(finite)} median={statistics.median(finite):5.2f}s "
                      f"worst={max(finite):5.2f}s  (poll {a.poll}s, I/O timeout {a.timeout}s)")
        finally:
            hq.close()
            agent.stop()


if __name__ == "__main__":
    main()
