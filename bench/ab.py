"""Two checkouts of the agent side by side, runs alternating: CPU per order and publish → cut p50.

    .venv/bin/python bench/ab.py /tmp/before . [--orders 500] [--rate 0] [--runs 3]

Each run is a fresh rig (bench/suite.py's private mosquitto, the virtual ESC/POS network printer, the
agent as its own process with tests/conftest.py ``agent_config``): 3 warm-up orders, then ``--orders``
orders at ``--rate`` per second (0: a burst, published at once). Runs alternate between the checkouts
(A B A B ...), so a machine that slows down during the session weighs on both alike. bench/suite.py runs
each agent's phases in one block and one after the other; on a shared machine its burst figures move by
±15 % between runs of the same code, which this shows (the spread of each side's runs).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import suite  # noqa: E402
from suite import (HQ, DevBroker, ReceiptIndex, ResultIndex, Rig, StatusWatch, VirtualPrinter,  # noqa: E402
                   agent_config, order, proc_cpu_s, run_phase, spawn_agent_from, stop_proc, write_toml)


@contextlib.contextmanager
def warm_agent(root: Path, *, store: str = "ab-0001", edit: Optional[Callable[[dict], None]] = None,
               wrapper: Optional[list[str]] = None, results: bool = True,
               ) -> Iterator[tuple[subprocess.Popen, Rig, VirtualPrinter]]:
    """A fresh rig with the agent from ``root`` (its config changed by ``edit``, run under ``wrapper``),
    online, its 3 warm-up orders printed: ``(process, rig, printer)``; everything stopped afterwards.
    ``results``: each phase also waits for every order's ``printed`` result."""
    work = Path(tempfile.mkdtemp(prefix="bench-ab-", dir=suite.pick_base(None)))
    try:
        with DevBroker(work / "broker") as broker, VirtualPrinter() as vp:
            watch = StatusWatch(broker.port)
            cfg = agent_config(work / "state", broker.port, vp.port, store)
            cfg["journal"] = {"max_mb": 4096}
            if edit:
                edit(cfg)
            proc = spawn_agent_from(root, write_toml(work / "agent.toml", cfg), work / "agent.log", wrapper=wrapper)
            hq: Optional[HQ] = None
            try:
                watch.wait_for(0, f"stores/{store}/status", b"online", 60, proc)
                hq = HQ(broker.port, "stores", store)
                rig = Rig("agent", proc, hq, ReceiptIndex(vp, suite.AGENT_RECEIPT, suite.WARM_TIP),
                          ResultIndex(hq) if results else None)
                time.sleep(1.0)
                run_phase(rig, "warm-up", [order(i, "w") for i in range(3)], 1.0)
                time.sleep(1.0)
                yield proc, rig, vp
            finally:
                stop_proc(proc)
                if hq is not None:
                    hq.close()
                watch.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def one_run(root: Path, orders: int, rate: float) -> tuple[float, float, float]:
    """(CPU ms per order, publish → cut p50 ms, orders/s drained) of one fresh agent from ``root``."""
    with warm_agent(root) as (proc, rig, _):
        c0, t0 = proc_cpu_s(proc.pid), time.time()
        ph = run_phase(rig, "measured", [order(i, "m") for i in range(orders)], 1.0 / rate if rate else 0.0)
        wall = time.time() - t0
        time.sleep(0.5 if rate else 2.5)  # the last outcomes' lazy commit
        cpu = proc_cpu_s(proc.pid) - c0
        return cpu / ph.n * 1000, suite.pct(sorted(ph.lat_ms), 50), ph.n / wall


def main() -> None:
    ap = argparse.ArgumentParser(description="two agent checkouts, alternating runs")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--orders", type=int, default=500)
    ap.add_argument("--rate", type=float, default=0.0, help="orders per second (0: a burst)")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    roots = [Path(a.a).resolve(), Path(a.b).resolve()]
    what = f"a burst of {a.orders}" if not a.rate else f"{a.orders} orders at {a.rate:g}/s"
    print(f"# A/B ({time.strftime('%Y-%m-%d %H:%M:%S')}): {what}, {a.runs} runs each, alternating\n", flush=True)
    got: dict[Path, list[tuple[float, float, float]]] = {r: [] for r in roots}
    for i in range(a.runs):
        for r in roots:
            got[r].append(one_run(r, a.orders, a.rate))
            cpu, p50, rate = got[r][-1]
            print(f"run {i + 1} {r}: CPU/order {cpu:.2f} ms, p50 {p50:.1f} ms, {rate:.1f} orders/s", flush=True)
    print("\n| checkout | CPU per order (ms), each run | median | p50 median (ms) | orders/s median |\n| --- | --- | --- | --- | --- |")
    for r in roots:
        rows = got[r]
        med = lambda k: sorted(x[k] for x in rows)[len(rows) // 2]  # noqa: E731
        print(f"| {r} | {' / '.join(f'{x[0]:.2f}' for x in rows)} | {med(0):.2f} | {med(1):.1f} | {med(2):.1f} |")


if __name__ == "__main__":
    main()
