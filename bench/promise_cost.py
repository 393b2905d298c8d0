"""What the agent's promises cost in CPU per order: the agent measured whole, then with each mechanism
that keeps a promise switched off (an experiment only: nothing here is a setting of the agent).

    .venv/bin/python bench/promise_cost.py [--orders 200] [--rate 10] [--runs 1] [--agent-root DIR]

Runs what bench/suite.py runs (a private mosquitto with the kit's settings, the virtual ESC/POS network
printer, the agent as its own process with tests/conftest.py ``agent_config``) once per variant:

* ``agent``: as shipped.
* ``-fsync``: the journal with ``PRAGMA synchronous=OFF`` (every order still committed before its
  acknowledgement, but nothing waits for the disk: a power cut could lose acknowledged orders).
* ``-checks``: no printer status round trip around a ticket (the worker trusts the last idle poll:
  a ticket could be marked and sent into a printer that ran out of paper since).
* ``-confirm``: ``confirm = "none"`` (no ``GS r`` after a ticket: a lost ticket would be counted printed).
* ``-all``: the three together.
* ``-results`` (not a promise, for scale): no order result published (``P/S/orders/result`` is part of
  the contract with HQ; each order has two, ``queued`` and ``printed``, each a QoS 1 round trip).

For each: CPU per order (utime + stime of the agent from /proc, over ``--orders`` orders at ``--rate``
per second, after 3 warm-up orders), split by thread (``/proc/<pid>/task/*/stat``), and publish → cut
p50. The variants run under ``bench/promise_cost.py --as-agent VARIANT -- <agent argv>``, which patches
the running agent before its ``main`` starts. The figures are for the development machine's 10 ms clock
tick: differences under about 0.3 ms per order are noise; ``--runs`` repeats each variant.
"""

from __future__ import annotations

import argparse
import collections
import re
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("agent", "-fsync", "-checks", "-confirm", "-all", "-results")


def _patch(variant: str) -> None:
    """Inside the agent's process, before it starts: switch the named mechanisms off."""
    off = {"-fsync", "-checks"} if variant == "-all" else {variant}
    if "-fsync" in off:
        import agent.journal as journal  # noqa: PLC0415

        opened = journal._open

        def _open_nosync(path):  # noqa: ANN001, ANN202
            db = opened(path)
            db.execute("PRAGMA synchronous=OFF")
            return db

        journal._open = _open_nosync
    if "-checks" in off:
        import agent.printing as printing  # noqa: PLC0415

        checked = printing.PrintWorker._quick_check

        def _trusting_check(self, before=False):  # noqa: ANN001, ANN202
            if self.status.printable and getattr(self.printer, "settled", True):
                return self.status  # the last idle poll's answer, not asked again
            return checked(self, before)

        printing.PrintWorker._quick_check = _trusting_check
    if "-results" in off:
        import agent.outbox as outbox  # noqa: PLC0415

        outbox.Outbox.publish = lambda self, result, fresh=True: None


def as_agent(argv: list[str]) -> None:
    variant, rest = argv[0], argv[argv.index("--") + 1:]
    _patch(variant)
    sys.argv = ["store-agent"] + rest[2:]  # rest: -m agent.cli run --config ...
    runpy.run_module(rest[1], run_name="__main__", alter_sys=True)


def main() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import profile_agent as pa  # noqa: PLC0415
    import suite  # noqa: PLC0415
    from ab import warm_agent  # noqa: PLC0415  (bench/ab.py: a fresh rig, the agent warm)
    from suite import order, proc_cpu_s, run_phase  # noqa: PLC0415

    ap = argparse.ArgumentParser(description="CPU per order with each promise-keeping mechanism switched off")
    ap.add_argument("--orders", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--agent-root", help="run the agent from this checkout (default: this one)")
    a = ap.parse_args()
    root = Path(a.agent_root).resolve() if a.agent_root else ROOT
    spy = pa.find_py_spy(None)
    rows: list[tuple[str, float, float, str]] = []
    print(f"# promise cost ({root}), {time.strftime('%Y-%m-%d %H:%M:%S')}: {a.orders} orders at {a.rate:g}/s per run\n", flush=True)
    for run in range(a.runs):
        for variant in a.variants.split(","):
            edit = (lambda cfg: cfg["printers"][0].update(confirm="none")) if variant in ("-confirm", "-all") else None
            wrapper = None if variant == "agent" else [str(Path(__file__).resolve()), "--as-agent", variant, "--"]
            with warm_agent(root, store="cost-0001", edit=edit, wrapper=wrapper, results=variant != "-results") as (proc, rig, vp):
                c0, tc0, q0 = proc_cpu_s(proc.pid), pa.task_cpu(proc.pid), vp.status_queries
                ph = run_phase(rig, "paced", [order(i, "p") for i in range(a.orders)], 1.0 / a.rate)
                time.sleep(0.5)
                cpu, tc1 = proc_cpu_s(proc.pid) - c0, pa.task_cpu(proc.pid)
                queries = (vp.status_queries - q0) / ph.n  # DLE EOT asked per order (idle polls included)
                names = pa.thread_names(spy, proc.pid) if spy else {}
            by: collections.Counter[str] = collections.Counter()
            for tid, t in tc1.items():
                by[re.sub(r"-\d+$", "", names.get(tid, f"thread {tid}"))] += t - tc0.get(tid, 0.0)
            split = ", ".join(f"{k} {v / ph.n * 1000:.2f}" for k, v in by.most_common(4) if v > 0)
            rows.append((variant, cpu / ph.n * 1000, suite.pct(sorted(ph.lat_ms), 50), split))
            print(f"run {run + 1} {variant:9} CPU/order {rows[-1][1]:.2f} ms  p50 {rows[-1][2]:.1f} ms  "
                  f"DLE EOT/order {queries:.1f}  by thread (ms): {split}", flush=True)
    print("\n| variant | CPU per order (ms), each run | median | publish → cut p50 (ms) |\n| --- | --- | --- | --- |")
    for variant in a.variants.split(","):
        mine = [r for r in rows if r[0] == variant]
        cpus = sorted(r[1] for r in mine)
        print(f"| {variant} | {' / '.join(f'{r[1]:.2f}' for r in mine)} | {cpus[len(cpus) // 2]:.2f} | "
              f"{sorted(r[2] for r in mine)[len(mine) // 2]:.1f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--as-agent":
        as_agent(sys.argv[2:])
    else:
        main()
