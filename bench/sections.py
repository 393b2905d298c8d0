"""CPU per order by section of the agent's code, measured inside the running agent (no profiler).

    .venv/bin/python bench/sections.py [--orders 200] [--rate 10] [--agent-root DIR]

Runs the agent as bench/ab.py does (a fresh rig: the private mosquitto with the kit's settings, the
virtual ESC/POS network printer, the agent as its own process, warm), under
``bench/sections.py --as-agent -- <agent argv>``, which wraps the functions named in ``SECTIONS``
before the agent's ``main`` starts: each call adds the calling thread's CPU time
(``time.thread_time()``) it took to its section, and its call count. SIGUSR1 makes the agent write its
counters (``<state>/sections.json``), before and after ``--orders`` orders at ``--rate`` per second.

Sections are inclusive (``_render`` is inside ``step``): read each as "CPU spent in this and what it
calls". Unlike cProfile this costs about a microsecond per wrapped call, and only these calls, so the
figures add up to the agent's own CPU per order (utime + stime from /proc, printed beside them).
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import importlib
import inspect
import json
import os
import re
import runpy
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SECTIONS = (
    # the print worker
    "agent.printing:PrintWorker.step",
    "agent.printing:PrintWorker._idle",
    "agent.printing:PrintWorker._render",
    "agent.printing:PrintWorker._quick_check",
    "agent.printing:PrintWorker._check",
    "drivers.printers:StreamPrinter.send",
    "drivers.printers:StreamPrinter._confirm",
    "agent.journal:Journal.next_job",
    "agent.journal:Journal.take_armed",
    "agent.journal:Journal.begin_attempt",
    "agent.journal:Journal.finish_job",
    "agent.journal:Journal.add_paper",
    "agent.journal:Journal.armed",
    "agent.journal:Journal.commit_soon",
    # the journal's writer
    "agent.journal:_Writer._run_batch",
    "agent.journal:_Writer._complete",
    "agent.journal:_Writer._take",
    "agent.intake:OrderIntake._stored",
    "agent.outbox:Outbox.publish",
    "agent.outbox:Outbox.on_done",
    "agent.app:Agent._on_accepted",
    "agent.app:Agent._on_printed",
    # the network thread
    "paho.mqtt.client:Client._loop",
    "paho.mqtt.client:Client.loop_read",
    "paho.mqtt.client:Client.loop_write",
    "paho.mqtt.client:Client.loop_misc",
    "paho.mqtt.client:Client.publish",
    "paho.mqtt.client:Client.ack",
    "agent.mqtt:MqttLink._on_message",
    "agent.intake:OrderIntake.handle",
    "agent.messages:parse_event",
    "agent.journal:Journal.record_event",
    # the rest
    "agent.annunciator:Annunciator._step",
    "agent.housekeeping:Housekeeper.tick",
    "logging:Logger._log",
)

_CPU: collections.Counter = collections.Counter()
_CALLS: collections.Counter = collections.Counter()
_SQL: collections.Counter = collections.Counter()  # (thread, statement's first 90 characters) -> times run
_LITERAL = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b|X'[0-9A-Fa-f]*'")  # the values bound, as '?'
_DEPTH = threading.local()


def _wrap(name: str, fn):  # noqa: ANN001, ANN202
    @functools.wraps(fn)
    def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        depth = getattr(_DEPTH, name, 0)  # a recursive call counts once
        setattr(_DEPTH, name, depth + 1)
        t0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            setattr(_DEPTH, name, depth)
            if depth == 0:
                _CPU[name] += time.thread_time() - t0
                _CALLS[name] += 1
    return timed


def _patch(out: Path) -> None:
    for spec in SECTIONS:
        mod_name, qual = spec.split(":")
        owner = importlib.import_module(mod_name)
        *path, attr = qual.split(".")
        for p in path:
            owner = getattr(owner, p)
        raw = inspect.getattr_static(owner, attr)
        wrapped = _wrap(spec, getattr(owner, attr))
        setattr(owner, attr, staticmethod(wrapped) if isinstance(raw, staticmethod) else wrapped)

    started: dict[int, float] = {}

    def gc_timer(phase: str, info: dict) -> None:  # Python's cyclic garbage collector, per generation
        if phase == "start":
            started[threading.get_ident()] = time.thread_time()
        else:
            key = f"gc: generation {info.get('generation')}"
            _CPU[key] += time.thread_time() - started.pop(threading.get_ident(), time.thread_time())
            _CALLS[key] += 1

    gc.callbacks.append(gc_timer)

    import sqlite3  # noqa: PLC0415 - every statement the agent's connections run, counted by its text

    connect = sqlite3.connect

    def counted_connect(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        db = connect(*args, **kwargs)
        db.set_trace_callback(lambda sql: _SQL.update([(threading.current_thread().name, _LITERAL.sub(
            "?", " ".join(sql.split()))[:90])]))
        return db

    sqlite3.connect = counted_connect

    def dump(signum, frame):  # noqa: ANN001, ANN202
        data = {"cpu": dict(_CPU), "calls": dict(_CALLS), "process": time.process_time(),
                "sql": [[t, q, n] for (t, q), n in _SQL.items()]}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, out)

    signal.signal(signal.SIGUSR1, dump)


def as_agent(argv: list[str]) -> None:
    rest = argv[argv.index("--") + 1:]  # -m agent.cli run --config FILE
    config = Path(rest[rest.index("--config") + 1])
    _patch(config.with_name("sections.json"))
    sys.argv = ["store-agent"] + rest[2:]
    runpy.run_module(rest[1], run_name="__main__", alter_sys=True)


def main() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import profile_agent as pa  # noqa: PLC0415

    def switches_of(pid: int) -> dict[int, float]:  # voluntary + involuntary context switches, by thread
        return pa.per_task(pid, "status", lambda st: sum(int(line.split()[1]) for line in st.splitlines()
                                                         if "ctxt_switches:" in line))
    from ab import warm_agent  # noqa: PLC0415
    from suite import order, proc_cpu_s, run_phase  # noqa: PLC0415

    ap = argparse.ArgumentParser(description="CPU per order by section of the agent's code")
    ap.add_argument("--orders", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10.0, help="orders per second (0: a burst)")
    ap.add_argument("--agent-root", help="run the agent from this checkout (default: this one)")
    ap.add_argument("--cpu", type=int, action="append", help="pin the agent's threads to this CPU (repeat for more)")
    ap.add_argument("--idle", type=float, default=0.0, metavar="S",
                    help="measure S seconds with no orders instead (figures per second of idle)")
    a = ap.parse_args()
    root = Path(a.agent_root).resolve() if a.agent_root else ROOT
    wrapper = [str(Path(__file__).resolve()), "--as-agent", "--"]

    def snapshot(proc, path: Path) -> dict:  # noqa: ANN001
        path.unlink(missing_ok=True)
        os.kill(proc.pid, signal.SIGUSR1)
        for _ in range(200):
            if path.exists():
                return json.loads(path.read_text())
            time.sleep(0.01)
        raise SystemExit("the agent did not write its sections")

    with warm_agent(root, store="sect-0001", wrapper=wrapper) as (proc, rig, vp):
        path = Path(proc.args[proc.args.index("--config") + 1]).with_name("sections.json")
        if a.cpu:  # every thread of the agent, as CPUAffinity= in its systemd unit would
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), set(a.cpu))
        s0, c0, tc0, sw0 = snapshot(proc, path), proc_cpu_s(proc.pid), pa.task_cpu(proc.pid), switches_of(proc.pid)
        if a.idle:
            time.sleep(a.idle)
        else:
            ph = run_phase(rig, "measured", [order(i, "s") for i in range(a.orders)], 1.0 / a.rate if a.rate else 0.0)
            time.sleep(0.5 if a.rate else 2.5)
        s1, cpu, tc1, sw1 = snapshot(proc, path), proc_cpu_s(proc.pid) - c0, pa.task_cpu(proc.pid), switches_of(proc.pid)
        names = pa.thread_names(pa.find_py_spy(None), proc.pid) if pa.find_py_spy(None) else {}
    n = a.idle if a.idle else ph.n
    unit = "second of idle" if a.idle else "order"
    when = time.strftime('%Y-%m-%d %H:%M:%S')
    print(f"# sections ({root}), {when}: " + (
        f"{a.idle:g} s idle" if a.idle else f"{n} orders at {a.rate:g}/s" if a.rate else f"a burst of {n}"))
    print(f"agent CPU per {unit} {cpu / n * 1000:.2f} ms (utime+stime); by thread: " + ", ".join(
        f"{names.get(t, t)} {(v - tc0.get(t, 0.0)) / n * 1000:.2f}" for t, v in sorted(
            tc1.items(), key=lambda kv: -(kv[1] - tc0.get(kv[0], 0.0))) if v - tc0.get(t, 0.0) > 0))
    switches = {t: v - sw0.get(t, 0) for t, v in sw1.items()}
    print(f"context switches per {unit} {sum(switches.values()) / n:.1f}; by thread: " + ", ".join(
        f"{names.get(t, t)} {v / n:.1f}" for t, v in sorted(switches.items(), key=lambda kv: -kv[1]) if v > 0))
    print(f"\n| section (inclusive) | CPU per {unit} (ms) | calls per {unit} |\n| --- | --- | --- |")
    for spec in (*SECTIONS, "gc: generation 0", "gc: generation 1", "gc: generation 2"):
        d = s1["cpu"].get(spec, 0.0) - s0["cpu"].get(spec, 0.0)
        c = s1["calls"].get(spec, 0) - s0["calls"].get(spec, 0)
        print(f"| `{spec}` | {d / n * 1000:.3f} | {c / n:.1f} |")
    before = {(t, q): c for t, q, c in s0["sql"]}
    sql = sorted(((c - before.get((t, q), 0), t, q) for t, q, c in s1["sql"]), reverse=True)
    print(f"\n| SQL statements run per {unit} ({sum(c for c, _, _ in sql) / n:.1f} in all) | thread | statement |"
          "\n| --- | --- | --- |")
    for c, t, q in sql:
        if c > 0:
            print(f"| {c / n:.2f} | {t} | `{q}` |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--as-agent":
        as_agent(sys.argv[2:])
    else:
        main()
