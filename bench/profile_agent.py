"""Where the agent's CPU goes: py-spy on the running agent process during a paced and a burst run.

    .venv/bin/python bench/profile_agent.py [--paced 100] [--rate 10] [--burst 500] [--top 25]
                                      [--py-spy PATH] [--agent-root DIR] [--out DIR] [--sound]

Runs what bench/suite.py runs (a private mosquitto, the virtual ESC/POS network printer, the agent
as its own process with tests/conftest.py ``agent_config``), then for each phase: 3 warm-up
orders, ``--paced`` orders at ``--rate`` per second, a burst of ``--burst`` published at once.
During each phase ``py-spy record --nonblocking --threads --format raw`` samples the agent (250 Hz;
only samples of threads that were running, not waiting, are kept), and afterwards this script prints:

* CPU per order of the phase (utime + stime of the agent from /proc/<pid>/stat, / orders);
* the share of samples per thread (network, journal writer, print worker, ...);
* the functions with the largest *inclusive* share (the function and what it called) and the largest
  *self* share (the innermost frame), across threads.

The raw stacks (``<phase>.txt``, collapsed: one stack and its count per line; open them in
https://www.speedscope.app or feed them to flamegraph.pl) are kept in ``--out`` (default
``/tmp/store-agent-profile/``). py-spy: ``pip install py-spy`` (a static binary wheel on PyPI for
x86_64 and aarch64; it needs ptrace of the agent: run as root or with the same user and
``kernel.yama.ptrace_scope`` 0). Without py-spy, ``--tool cprofile`` runs the agent under
``bench/cprofile_agent.py`` (cProfile in every thread, a cumulative pstats file after each phase; heavier: it
slows the agent about 2x, so its CPU-per-order figures are not comparable with the suite's).

``--agent-root`` runs the agent from another checkout (e.g. ``git worktree add /tmp/before <commit>``)
so that two versions are profiled the same way. ``--sound`` turns chimes on (an ALSA ``null`` device
is used if the machine has no sound card); the suite runs with sound off.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import suite  # noqa: E402  (bench/suite.py: the same rig and helpers)
from suite import HQ, DevBroker, ReceiptIndex, ResultIndex, Rig, StatusWatch, VirtualPrinter  # noqa: E402
from suite import agent_config, order, proc_cpu_s, run_phase, spawn_agent_from, stop_proc, write_toml  # noqa: E402

FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def find_py_spy(arg: Optional[str]) -> Optional[str]:
    for c in (arg, shutil.which("py-spy"), str(Path(sys.executable).parent / "py-spy")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def short(frame: str) -> str:
    """'render (/work/main/agent/tickets.py:172)' -> 'agent/tickets.py:render'."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    f = m.group("file")
    for marker in ("/site-packages/", "/lib/python3", "/agent/", "/drivers/"):
        i = f.find(marker)
        if i >= 0:
            f = f[i + 1:] if marker in ("/agent/", "/drivers/") else f[i + len(marker):]
            break
    return f"{f}:{m.group('fn')}"


def summarise(raw: Path, top: int) -> list[str]:
    """Collapsed stacks ('thread;frame;frame count' per line, outermost first) -> report lines."""
    total = 0
    by_thread: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]
        total += count
        by_thread[re.sub(r"\s*\(.*?\)|0x[0-9a-f]+|\d+", "", thread).strip() or thread] += count
        names = [short(f) for f in frames]
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    if not total:
        return ["(no samples)"]
    out = [f"{total} samples (running threads only)", "", "| thread | share |", "| --- | --- |"]
    out += [f"| {t} | {c / total * 100:.1f} % |" for t, c in by_thread.most_common(8)]
    out += ["", f"| inclusive (function and its callees), top {top} | share |", "| --- | --- |"]
    skip = ("threading.py:", "<frozen", "(idle)")
    out += [f"| `{f}` | {c / total * 100:.1f} % |" for f, c in inclusive.most_common(top * 3)
            if not f.startswith(skip)][:top]
    out += ["", f"| self (innermost frame), top {top} | share |", "| --- | --- |"]
    out += [f"| `{f}` | {c / total * 100:.1f} % |" for f, c in own.most_common(top)]
    return out


def user_sys(pid: int) -> tuple[float, float]:
    s = Path(f"/proc/{pid}/stat").read_text()
    f = s[s.rindex(")") + 2:].split()
    return int(f[11]) / suite.CLK_TCK, int(f[12]) / suite.CLK_TCK


def per_task(pid: int, name: str, read: Callable[[str], float]) -> dict[int, float]:
    """``read`` of ``/proc/<pid>/task/<tid>/<name>`` for each thread of ``pid`` (gone threads left out), by OS thread id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / name).read_text()
        except OSError:
            continue
        out[int(task.name)] = read(text)
    return out


def task_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (utime + stime) of each thread of ``pid``, by OS thread id."""
    def cpu(st: str) -> float:
        f = st[st.rindex(")") + 2:].split()
        return (int(f[11]) + int(f[12])) / suite.CLK_TCK
    return per_task(pid, "stat", cpu)


def thread_names(spy: str, pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name (``py-spy dump``)."""
    r = subprocess.run([spy, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True, timeout=30)
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', r.stdout, re.M)}


def main() -> None:
    ap = argparse.ArgumentParser(description="profile the running agent (py-spy) in a paced and a burst run")
    ap.add_argument("--paced", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10.0, help="paced orders per second (default 10)")
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--gil", action="store_true", help="py-spy --gil: only samples of the thread holding the GIL "
                    "(Python's own CPU; leaves out SQLite, socket and fsync time spent without it)")
    ap.add_argument("--py-spy", dest="py_spy", help="path of the py-spy binary (default: PATH, then the venv)")
    ap.add_argument("--tool", choices=("py-spy", "cprofile"), default="py-spy")
    ap.add_argument("--agent-root", help="run the agent from this checkout (default: this one)")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "store-agent-profile"))
    ap.add_argument("--sound", action="store_true", help="chimes on (the suite runs with sound off)")
    a = ap.parse_args()
    spy = find_py_spy(a.py_spy) if a.tool == "py-spy" else None
    if a.tool == "py-spy" and spy is None:
        sys.exit("py-spy not found: pip install py-spy (or --py-spy PATH, or --tool cprofile)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    agent_root = Path(a.agent_root).resolve() if a.agent_root else ROOT
    work = Path(tempfile.mkdtemp(prefix="bench-profile-", dir=suite.pick_base(None)))
    report: list[str] = [f"# agent profile ({agent_root}), {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
    try:
        with DevBroker(work / "broker") as broker, VirtualPrinter() as vp:
            watch = StatusWatch(broker.port)
            store = "prof-0001"
            over = {"sound": {"enabled": True, "device": "null"}} if a.sound else {}
            cfg = agent_config(work / "state", broker.port, vp.port, store, **over)
            cfg["journal"] = {"max_mb": 4096}
            cfg_path = write_toml(work / "agent.toml", cfg)
            wrapper = [str(ROOT / "bench" / "cprofile_agent.py"), str(out)] if a.tool == "cprofile" else None
            t0 = time.time()
            proc = spawn_agent_from(agent_root, cfg_path, work / "agent.log", wrapper=wrapper)
            watch.wait_for(0, f"stores/{store}/status", b"online", 60, proc)
            report.append(f"start -> online: {(time.time() - t0) * 1000:.0f} ms")
            hq = HQ(broker.port, "stores", store)
            rig = Rig("agent", proc, hq, ReceiptIndex(vp, suite.AGENT_RECEIPT, suite.WARM_TIP), ResultIndex(hq))
            time.sleep(2.0)
            phases = [("warm-up", [order(i, "w") for i in range(3)], 1.0),
                      (f"paced-{a.rate:g}-per-s", [order(i, "p") for i in range(a.paced)], 1.0 / a.rate),
                      ("burst", [order(i, "b") for i in range(a.burst)], 0.0)]
            for name, events, gap in phases:
                raw = out / f"{name}.txt"
                spy_proc = None
                if spy and name != "warm-up":
                    spy_proc = subprocess.Popen([spy, "record", "--pid", str(proc.pid), "--rate", "250", "--threads",
                                                 "--nonblocking", "--format", "raw", "--output", str(raw)] + (["--gil"] if a.gil else []),
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)  # py-spy attached
                c0, us0, tc0 = proc_cpu_s(proc.pid), user_sys(proc.pid), task_cpu(proc.pid)
                ph = run_phase(rig, name, events, gap)
                time.sleep(0.5 if gap else 2.5)  # the last outcome's lazy commit
                cpu, us1, tc1 = proc_cpu_s(proc.pid) - c0, user_sys(proc.pid), task_cpu(proc.pid)
                names = thread_names(spy, proc.pid) if spy else {}
                by_name: collections.Counter[str] = collections.Counter()
                for tid, t in tc1.items():
                    by_name[re.sub(r"-\d+$", "", names.get(tid, f"thread {tid}"))] += t - tc0.get(tid, 0.0)
                lat = sorted(ph.lat_ms)
                report += ["", f"## {name}: {ph.n} orders", "",
                           f"CPU per order {cpu / ph.n * 1000:.2f} ms (agent utime+stime {cpu:.2f} s); publish -> cut "
                           f"p50 {suite.pct(lat, 50):.1f} ms, p99 {suite.pct(lat, 99):.1f} ms",
                           f"of which user {(us1[0] - us0[0]) / ph.n * 1000:.2f} ms, system (kernel: sockets, "
                           f"fsync, thread wake-ups) {(us1[1] - us0[1]) / ph.n * 1000:.2f} ms"]
                if by_name:  # the real split, SQLite and system calls included (/proc/<pid>/task/*/stat)
                    report.append("CPU per order by thread: " + ", ".join(
                        f"{k} {v / ph.n * 1000:.2f} ms" for k, v in by_name.most_common() if v > 0))
                if spy_proc is not None:
                    spy_proc.send_signal(signal.SIGINT)
                    spy_proc.wait(30)
                    report += ["", f"stacks: {raw}", ""] + summarise(raw, a.top)
                if wrapper:
                    os.kill(proc.pid, signal.SIGUSR1)  # cprofile_agent: write <out>/cprofile-<n>.pstats
                    time.sleep(1.0)
                    report += ["", f"cProfile: {out}/ (python -m pstats <file>; sort cumtime)"]
                print("\n".join(report), flush=True)
                report = []
            stop_proc(proc)
            hq.close()
            watch.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
