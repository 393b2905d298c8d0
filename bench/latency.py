"""Publish -> cut-received latency on loopback: mosquitto + agent process + virtual printer.

    .venv/bin/python bench/latency.py [--paced 100] [--burst 200]

Prints figures (no assertions); results go into docs/PERFORMANCE.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import HQ, agent_config, order, spawn_agent, wait_until, write_toml  # noqa: E402

from agent.devbroker import DevBroker  # noqa: E402
from drivers.vprinter import VirtualPrinter  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def fsync_ms(directory: Path, n: int = 50) -> float:
    f = directory / "fsync.probe"
    times = []
    with open(f, "wb") as fh:
        for _ in range(n):
            fh.write(b"x" * 4096)
            fh.flush()
            t = time.perf_counter()
            os.fsync(fh.fileno())
            times.append(time.perf_counter() - t)
    f.unlink()
    return statistics.median(times) * 1000


def run(paced: int, interval: float, burst: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    with DevBroker(work / "broker") as broker, VirtualPrinter() as vp:
        store = "bench-0001"
        hq = HQ(broker.port, "stores", store)
        cfg = write_toml(work / "agent.toml", agent_config(work / "state", broker.port, vp.port, store))
        proc = spawn_agent(cfg, work / "agent.log")
        try:
            assert wait_until(lambda: "online" in hq.statuses(), 20)
            time.sleep(1.0)  # subscription in place
            sent: dict[str, float] = {}

            def receipt_latencies(ids: list[str]) -> list[float]:
                cut = {}
                for j in vp.jobs:
                    t = j.text
                    for oid in ids:
                        if f"订单号:{oid}" in t and "温馨提示" not in t and oid not in cut:
                            cut[oid] = j.at
                return [(cut[o] - sent[o]) * 1000 for o in ids if o in cut]

            def phase(name: str, events: list[dict], gap: float) -> None:
                ids = [e["order"]["id"] for e in events]
                t0 = time.time()
                for ev in events:
                    sent[ev["order"]["id"]] = time.time()
                    hq.publish(ev)
                    if gap:
                        time.sleep(gap)
                assert wait_until(lambda: len(receipt_latencies(ids)) == len(ids), 120)
                lat = receipt_latencies(ids)
                wall = max(j.at for j in vp.jobs) - t0
                slow = sorted(range(len(lat)), key=lambda i: -lat[i])[:3]
                print(f"{'':<22} slowest: " + ", ".join(f"#{i} {lat[i]:.0f} ms" for i in slow))
                print(f"{name:<22} n={len(lat):<4} p50={pct(lat, 50):6.1f} ms  p95={pct(lat, 95):6.1f} ms  "
                      f"p99={pct(lat, 99):6.1f} ms  max={max(lat):6.1f} ms  ({len(ids) / wall:.0f} orders/s)")

            phase("cold start (first 3)", [order(i, "w") for i in range(3)], interval)  # imports, template compile, connect
            phase(f"paced 1 per {interval * 1000:.0f} ms", [order(i, "p") for i in range(paced)], interval)
            phase("burst", [order(i, "b") for i in range(burst)], 0)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            hq.close()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"fsync of 4 KiB on {work}: {fsync_ms(work):.2f} ms (median)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--paced", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--burst", type=int, default=200)
    a = ap.parse_args()
    run(a.paced, a.interval, a.burst)
