"""Benchmark suite on loopback: mosquitto + the agent process + the virtual printer, against a naive baseline.

    .venv/bin/python bench/suite.py [--quick] [--pi [--quota 15]] [--paced N] [--paced10 N] [--burst N]
                                    [--orders N] [--idle-s S] [--chunk N] [--agent-root DIR ...]
                                    [--workdir DIR] [--keep]

``--quick`` is a smoke run (paced 10, 10/s 30, burst 200, orders 1000, idle 10 s: about 70 s). The
default run (paced 60, 10/s 100, burst 1000, orders 10000, idle 30 s) took 6.5 minutes on a 2-core
machine (about 45 orders/s in the 10k phase); ``--orders 2000`` shortens it. Prints figures only (no
assertions); progress goes to stderr, the report to stdout.

``--agent-root DIR`` (repeatable) measures the agent of another checkout, each in turn with its own
store, state_dir and virtual printer, then the baseline once: ``git worktree add /tmp/before <commit>``
and ``--agent-root /tmp/before --agent-root .`` give before/after columns from one run (the closing
"Issue 17 figures" table). ``--pi`` runs the agent (and the baseline) inside a CPU quota of ``--quota``
% of one core, pinned to one CPU (bench/quota.py: cgroup v2, cgroup v1 or a SIGSTOP/SIGCONT duty
cycle, whichever this machine allows; cgroups need root), with smaller phases (paced 30, 10/s 50,
burst 200, no orders phase, idle 10 s); see docs/PERFORMANCE.md for what a quota does and does not model.

What runs: a private mosquitto with the recommended settings (agent.devbroker.DevBroker); the virtual
ESC/POS printer (drivers.vprinter) in this process; the agent as its own process (``python -m agent.cli
run --log-level info``, tests/conftest.py ``spawn_agent``) with tests/conftest.py ``agent_config``
defaults (sound off, timers off, printer_poll_s 1, retry_s 0.2; journal ``synchronous=FULL`` is built in)
plus ``journal.max_mb = 4096`` so that no pruning happens; later the naive baseline (bench/naive.py) as
its own process with its own virtual printer. The agent's state_dir lives on a real disk (by default
under /var/tmp, not tmpfs/overlay), because /proc/<pid>/io write_bytes is 0 on tmpfs.

How each figure is measured:

(a) latency: time.time() just before HQ's ``publish()`` call -> ``PrintedJob.at`` (time.time() in the
    virtual printer when the cut of that order's receipt arrived; the receipt is the job containing
    "订单号:<order id>", warm-tip cards are skipped). Nearest-rank p50/p95/p99 and max. Paced: one
    order per --interval (1 s), HQ waits for each PUBACK. Burst: the orders of (b).
(b) throughput: a burst of --burst orders published QoS 1 as fast as paho takes them (no wait per
    message; all PUBACKs awaited together after the last publish() call; paho keeps 20 in flight and
    queues the rest). orders/s = n / (last receipt cut - first publish).
(c) memory: VmRSS and VmHWM from /proc/<pid>/status of the agent: 5 s after it was subscribed (idle),
    and after --orders orders in total since its start (warm-up + paced + burst + the orders phase, which
    sends the rest in bursts of --chunk, each burst complete before the next).
(d) idle CPU: utime+stime from /proc/<pid>/stat over an --idle-s window with no orders, as % of one core.
(e) disk writes: /proc/<pid>/io write_bytes and wchar deltas / orders, over the paced phase (until 3 s
    after its last result: outcomes are written lazily), over the burst and over the orders phase, from
    before the first publish to when HQ has received the "printed" result of every order. The agent's stdout log (agent.log, --log-level info) is a file here and counted in those
    figures; its growth is shown separately (under systemd it goes to journald instead).
(f) start-up: Popen of the agent -> the retained "online" arriving on stores/<store>/status at a
    subscriber (the agent publishes it right after sending SUBSCRIBE on the same connection). 3 starts,
    median: the first with an empty state_dir, then two restarts on it (SIGTERM in between).
(h) CPU per order (issue 17): utime+stime of the agent over the paced, the 10/s and the burst phase,
    / orders; also net of the idle rate of (d) over the phase's wall time. First order after start: at
    each of the 3 starts of (f) one order is published the moment "online" arrives, publish -> cut.
(g) the same (a)/(b) for the naive baseline; agent/baseline ratios of p50 latency and throughput;
    median fsync of 4 KiB (write + flush, then os.fsync timed, 50 times) in the agent's state_dir; and
    agent p50 - baseline p50 (paced) in ms and in fsyncs, beside the bound 2 fsyncs + 3 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from conftest import HQ, agent_config, order, spawn_agent, write_toml  # noqa: E402

from agent.devbroker import DevBroker  # noqa: E402
from quota import CpuQuota  # noqa: E402  (bench/quota.py)
from drivers.vprinter import VirtualPrinter  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
AGENT_RECEIPT = re.compile(r"订单号:\s*(MT-[A-Za-z0-9]+)")
NAIVE_RECEIPT = re.compile(r"(MT-[A-Za-z0-9]+)")  # python-escpos sends GB2312 without FS &: the Chinese is garbled, the id is not
WARM_TIP = "温馨提示"
T0 = time.monotonic()
INTERRUPTED = threading.Event()


def progress(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ numbers and /proc

def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def proc_mem(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0])  # kB
    return out


def proc_cpu_s(pid: int) -> float:
    s = Path(f"/proc/{pid}/stat").read_text()
    f = s[s.rindex(")") + 2:].split()  # f[0] is field 3 (state): utime is field 14, stime 15
    return (int(f[11]) + int(f[12])) / CLK_TCK


def proc_io(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = int(v)
    return out


def mount_of(path: Path) -> tuple[str, str, str]:
    """(device, mount point, fs type) of the mount holding ``path``."""
    p = os.path.realpath(path)
    best = ("?", "", "?")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        dev, mnt, fs = line.split()[:3]
        mnt = mnt.replace("\\040", " ")
        if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[1]):
            best = (dev, mnt, fs)
    return best


NOT_A_DISK = {"tmpfs", "ramfs", "overlay", "devtmpfs", "squashfs"}


def pick_base(arg: Optional[str]) -> Path:
    if arg:
        return Path(arg)
    for c in (Path("/var/tmp"), ROOT / "bench", Path(tempfile.gettempdir())):
        if c.is_dir() and os.access(c, os.W_OK) and mount_of(c)[2] not in NOT_A_DISK:
            return c
    return Path("/var/tmp")


def fsync_ms(directory: Path, n: int = 50) -> float:
    f = directory / f"fsync-{uuid.uuid4().hex[:6]}.probe"
    times = []
    try:
        with open(f, "wb") as fh:
            for _ in range(n):
                fh.write(b"x" * 4096)
                fh.flush()
                t = time.perf_counter()
                os.fsync(fh.fileno())
                times.append(time.perf_counter() - t)
    finally:
        f.unlink(missing_ok=True)
    return statistics.median(times) * 1000


def machine() -> dict[str, str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        from agent.devbroker import find_mosquitto  # noqa: PLC0415

        r = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True, timeout=10)
        mosq = next((ln.strip() for ln in (r.stdout + r.stderr).splitlines() if "version" in ln), "?")
    except Exception as e:  # noqa: BLE001
        mosq = f"? ({e})"

    def ver(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "platform": platform.platform(),
        "cpu": f"{model}, {os.cpu_count()} cores",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "mosquitto": mosq,
        "libs": f"paho-mqtt {ver('paho-mqtt')}, python-escpos {ver('python-escpos')}",
    }


# ------------------------------------------------------------------ the agent process (another checkout, a CPU quota)

def spawn_agent_from(root: Path, config_path: Path, log_path: Path, *, wrapper: Optional[list[str]] = None,
                     quota: Optional["CpuQuota"] = None) -> subprocess.Popen:
    """``store-agent run`` from the checkout at ``root`` (tests/conftest.py ``spawn_agent`` for another
    tree: its ``agent`` package comes first on sys.path), optionally under ``wrapper`` (a script run
    with the agent's argv after it) and inside ``quota`` (joined right after the fork, from here,
    while the interpreter is still starting: every thread and child of the agent is made inside it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = ["-m", "agent.cli", "run", "--config", str(config_path), "--log-level", "info"]
    cmd = [sys.executable] + (wrapper + argv if wrapper else argv)
    proc = subprocess.Popen(cmd, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env, cwd=str(root))
    if quota:
        quota.watch(proc.pid)
    return proc


# ------------------------------------------------------------------ observers

class StatusWatch:
    """Records (time.time(), topic, payload) of every message on ``stores/+/status``."""

    def __init__(self, port: int, topic_filter: str = "stores/+/status") -> None:
        self.msgs: list[tuple[float, str, bytes]] = []
        ready = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
        self.c.on_message = lambda c, u, m: self.msgs.append((time.time(), m.topic, m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("status watcher could not subscribe")

    def wait_for(self, since: int, topic: str, payload: bytes, timeout: float, proc: subprocess.Popen) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, t, p in self.msgs[since:]:
                if t == topic and p == payload:
                    return at
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before {payload!r} on {topic}")
            time.sleep(0.002)
        raise RuntimeError(f"no {payload!r} on {topic} within {timeout}s")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class ReceiptIndex:
    """Indexes the virtual printer's jobs incrementally: order id -> time its receipt's cut arrived."""

    def __init__(self, vp: VirtualPrinter, rx: re.Pattern, skip: Optional[str]) -> None:
        self.vp, self.rx, self.skip = vp, rx, skip
        self.i = 0
        self.jobs_seen = 0
        self.cut: dict[str, float] = {}

    def update(self) -> list[str]:
        new = []
        jobs = self.vp.jobs
        n = len(jobs)
        while self.i < n:
            j = jobs[self.i]
            self.i += 1
            self.jobs_seen += 1
            t = j.text
            if self.skip and self.skip in t:
                continue
            m = self.rx.search(t)
            if m and m.group(1) not in self.cut:
                self.cut[m.group(1)] = j.at
                new.append(m.group(1))
        if self.i > 2000:  # keep the printer's job list short: thousands of parsed jobs are only memory here
            with self.vp._cv:
                del self.vp.jobs[: self.i]
            self.i = 0
        return new


class ResultIndex:
    """Event ids HQ has received a "printed" result for (incrementally, trimming HQ's message list)."""

    def __init__(self, hq: HQ) -> None:
        self.hq = hq
        self.topic = hq.topic("orders", "result")
        self.printed: set[str] = set()
        self.other: dict[str, int] = {}

    def update(self) -> None:
        with self.hq._lock:  # take what HQ has recorded so far and empty its list
            msgs = self.hq.messages[:]
            del self.hq.messages[:]
        for t, p, _ in msgs:
            if t == self.topic:
                r = json.loads(p)
                if r["status"] == "printed":
                    self.printed.add(r["event_id"])
                elif r["status"] != "queued":
                    self.other[r["status"]] = self.other.get(r["status"], 0) + 1


@dataclass
class Rig:
    name: str
    proc: subprocess.Popen
    hq: HQ
    receipts: ReceiptIndex
    results: Optional[ResultIndex] = None  # the baseline publishes none


@dataclass
class Phase:
    name: str
    n: int
    lat_ms: list[float]
    first_publish: float
    last_cut: float
    published: float  # last publish() returned
    acked: float  # every PUBACK in
    done: float  # every result in (agent) / every cut (baseline)

    @property
    def rate(self) -> float:
        return self.n / max(1e-9, self.last_cut - self.first_publish)

    @property
    def offered(self) -> float:
        return self.n / max(1e-9, self.published - self.first_publish)


def run_phase(rig: Rig, name: str, events: list[dict[str, Any]], gap: float) -> Phase:
    """Publish ``events`` (one per ``gap`` s, waiting for each PUBACK; or, gap 0, as fast as paho takes
    them and all PUBACKs awaited at the end), then wait for every receipt's cut (and result)."""
    payloads = [(ev["id"], ev["order"]["id"], json.dumps(ev, ensure_ascii=False).encode()) for ev in events]
    topic = rig.hq.topic("orders")
    sent: dict[str, float] = {}
    infos = []
    first = time.time()
    for i, (_, oid, payload) in enumerate(payloads):
        if gap:
            delay = first + i * gap - time.time()
            if delay > 0:
                time.sleep(delay)
        sent[oid] = time.time()
        info = rig.hq.c.publish(topic, payload, qos=1)
        if gap:
            info.wait_for_publish(10)
            rig.receipts.update()
        else:
            infos.append(info)
    published = time.time()
    for info in infos:
        info.wait_for_publish(120)
    acked = time.time()

    pending = set(sent) - set(rig.receipts.cut)
    deadline = time.monotonic() + 60 + len(events) / 2
    while pending:
        pending.difference_update(rig.receipts.update())
        if rig.results:
            rig.results.update()
        if rig.proc.poll() is not None:
            raise RuntimeError(f"{rig.name} exited with {rig.proc.returncode} during {name}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {len(pending)} of {len(sent)} receipts not printed in time")
        time.sleep(0.01)
    if rig.results:
        eids = {e for e, _, _ in payloads}
        while not eids <= rig.results.printed:
            rig.results.update()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: {len(eids - rig.results.printed)} 'printed' results missing "
                                   f"(other results: {rig.results.other})")
            time.sleep(0.01)
    done = time.time()
    cuts = [rig.receipts.cut[o] for o in sent]
    lat = [(rig.receipts.cut[o] - t) * 1000 for o, t in sent.items()]
    return Phase(name, len(lat), lat, first, max(cuts), published, acked, done)


def quietly(fn) -> None:
    with contextlib.suppress(Exception):
        fn()


def stop_proc(p: subprocess.Popen, timeout: float = 20) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


# ------------------------------------------------------------------ report

def lat_row(label: str, ph: Phase, rate: bool = True) -> str:
    lat = ph.lat_ms
    cols = [label, str(ph.n), f"{pct(lat, 50):.1f}", f"{pct(lat, 95):.1f}", f"{pct(lat, 99):.1f}", f"{max(lat):.1f}"]
    cols.append(f"{ph.rate:.1f}" if rate else "-")
    return "| " + " | ".join(cols) + " |"


def fmt_kb(kb: float) -> str:
    return f"{kb / 1024:.1f} MiB"


def measure_agent(stack: contextlib.ExitStack, procs: list[subprocess.Popen], broker: DevBroker, watch: StatusWatch,
                  work: Path, root: Path, tag: str, P: dict[str, Any], quota: Optional[CpuQuota]) -> dict[str, Any]:
    """Every agent figure for the agent in the checkout ``root`` (its own store, state_dir and virtual printer)."""
    R: dict[str, Any] = {"root": str(root), "commit": git_commit(root)}
    vp = stack.enter_context(VirtualPrinter())
    store = f"bench-{tag}"
    state = work / f"state-{tag}"
    cfg = agent_config(state, broker.port, vp.port, store)
    cfg["journal"] = {"max_mb": 4096}
    cfg_path = write_toml(work / f"agent-{tag}.toml", cfg)
    log_path = work / f"agent-{tag}.log"
    status_topic = f"stores/{store}/status"
    hq = HQ(broker.port, "stores", store)
    stack.callback(quietly, hq.close)
    warm = P["warm"]

    throttled0 = quota.throttled() if quota is not None else {}
    # (f) start-up x3, each followed at once by one order (the first order after start); the third is the agent under test
    starts, firsts = [], []
    done = 0
    for k in range(3):
        n0 = len(watch.msgs)
        t0 = time.time()
        proc = spawn_agent_from(root, cfg_path, log_path, quota=quota)
        procs.append(proc)
        t_online = watch.wait_for(n0, status_topic, b"online", 60, proc)
        starts.append(t_online - t0)
        rig = Rig("agent", proc, hq, ReceiptIndex(vp, AGENT_RECEIPT, WARM_TIP), ResultIndex(hq))
        first = run_phase(rig, "first", [order(k, "s")], 0)  # published as soon as 'online' arrived
        firsts.append(first.lat_ms[0])
        done += 1
        progress(f"[{tag}] agent start {k + 1}: {starts[-1] * 1000:.0f} ms to 'online'; first order {firsts[-1]:.1f} ms")
        if k < 2:
            stop_proc(proc)
            procs.remove(proc)
            done = 0
    R["starts"], R["firsts"] = starts, firsts
    pid = proc.pid

    # (c) idle memory, (d) idle CPU
    time.sleep(max(0.0, t_online + 5 - time.time()))
    R["mem_idle"] = proc_mem(pid)
    progress(f"[{tag}] idle memory {R['mem_idle']}; idle CPU window {P['idle_s']:.0f} s")
    c0, io0, m0 = proc_cpu_s(pid), proc_io(pid), time.monotonic()
    time.sleep(P["idle_s"])
    c1, io1, m1 = proc_cpu_s(pid), proc_io(pid), time.monotonic()
    R["idle_cpu"] = (c1 - c0, m1 - m0)
    idle_rate = (c1 - c0) / (m1 - m0)
    R["idle_io"] = {k: io1[k] - io0[k] for k in ("wchar", "write_bytes")}
    rig.receipts.update()
    rig.results.update()

    def cpu_phase(name: str, events: list[dict[str, Any]], gap: float, settle: float) -> Phase:
        """run_phase plus the agent's CPU over it (until ``settle`` s after the last result)."""
        c0, m0 = proc_cpu_s(pid), time.monotonic()
        ph = run_phase(rig, name, events, gap)
        time.sleep(settle)
        cpu, wall = proc_cpu_s(pid) - c0, time.monotonic() - m0
        R.setdefault("cpu", {})[name] = (ph.n, cpu, wall, idle_rate)
        return ph

    # (a) cold + paced (1 per --interval, then 10 per s)
    interval = P["interval"]
    progress(f"[{tag}] {warm} warm-up orders, then {P['paced']} paced at 1 per {interval:g} s, {P['paced10']} at 10 per s")
    R["a_cold"] = run_phase(rig, "cold", [order(i, "w") for i in range(warm)], interval)
    done += warm
    io0, log0 = proc_io(pid), log_path.stat().st_size
    R["a_paced"] = cpu_phase("paced", [order(i, "p") for i in range(P["paced"])], interval, 3.0)  # lazy outcome: within 2 s
    io1, log1 = proc_io(pid), log_path.stat().st_size
    R["io_paced"] = (P["paced"], {k: io1[k] - io0[k] for k in io0}, log1 - log0)
    done += P["paced"]
    if P["paced10"]:
        R["a_paced10"] = cpu_phase("paced10", [order(i, "q") for i in range(P["paced10"])], 0.1, 3.0)
        done += P["paced10"]
    R["mem_paced"] = (done, proc_mem(pid))

    # (a)(b)(e) burst
    progress(f"[{tag}] burst of {P['burst']}")
    io0, log0 = proc_io(pid), log_path.stat().st_size
    R["a_burst"] = cpu_phase("burst", [order(i, "b") for i in range(P["burst"])], 0, 0.0)
    io1, log1 = proc_io(pid), log_path.stat().st_size
    done += P["burst"]
    R["io_burst"] = (P["burst"], {k: io1[k] - io0[k] for k in io0}, log1 - log0)
    R["mem_burst"] = (done, proc_mem(pid))
    progress(f"[{tag}] burst {R['a_burst'].rate:.1f} orders/s")

    # (c)(e) the orders phase: the rest up to orders_total, in bursts of --chunk
    rest = max(0, P["orders_total"] - done)
    chunks: list[Phase] = []
    io0, log0 = proc_io(pid), log_path.stat().st_size
    k = 0
    while rest > 0:
        n = min(P["chunk"], rest)
        chunks.append(run_phase(rig, f"chunk {k}", [order(i, f"o{k}x") for i in range(n)], 0))
        rest -= n
        done += n
        k += 1
        progress(f"[{tag}] orders phase {done}/{P['orders_total']} ({chunks[-1].rate:.1f} orders/s, "
                 f"RSS {fmt_kb(proc_mem(pid)['VmRSS'])})")
    io1, log1 = proc_io(pid), log_path.stat().st_size
    R["chunks"] = chunks
    R["io_orders"] = (sum(c.n for c in chunks), {k: io1[k] - io0[k] for k in io0}, log1 - log0)
    R["mem_orders"] = (done, proc_mem(pid))
    R["jobs"] = rig.receipts.jobs_seen
    R["other_results"] = dict(rig.results.other)
    R["lost"] = 0  # run_phase raises when a receipt or a 'printed' result is missing
    R["state_bytes"] = {p.name: p.stat().st_size for p in state.rglob("*") if p.is_file()}
    R["log_bytes"] = log_path.stat().st_size
    if quota is not None:  # this agent's share of the group's counters (they count since the group was made)
        R["throttled"] = {k: v - throttled0.get(k, 0) for k, v in quota.throttled().items()}

    stop_proc(proc)
    procs.remove(proc)
    hq.close()
    R["fsync_ms"] = fsync_ms(state)
    progress(f"[{tag}] fsync in {state}: {R['fsync_ms']:.2f} ms")
    return R


def measure_baseline(stack: contextlib.ExitStack, procs: list[subprocess.Popen], broker: DevBroker, watch: StatusWatch,
                     work: Path, P: dict[str, Any], quota: Optional[CpuQuota]) -> dict[str, Any]:
    R: dict[str, Any] = {}
    warm, burst = P["warm"], P["burst"]
    vp2 = stack.enter_context(VirtualPrinter())
    nstore = "naive-0001"
    n0 = len(watch.msgs)
    t0 = time.time()
    nproc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "naive.py"), "--broker-port", str(broker.port),
         "--store", nstore, "--printer-port", str(vp2.port)],
        stdout=open(work / "naive.log", "ab"), stderr=subprocess.STDOUT, cwd=str(ROOT))
    if quota is not None:
        quota.watch(nproc.pid)
    procs.append(nproc)
    R["naive_start"] = watch.wait_for(n0, f"stores/{nstore}/status", b"online", 60, nproc) - t0
    nhq = HQ(broker.port, "stores", nstore)
    stack.callback(quietly, nhq.close)
    nrig = Rig("baseline", nproc, nhq, ReceiptIndex(vp2, NAIVE_RECEIPT, None))
    R["n_first"] = run_phase(nrig, "first", [order(0, "s")], 0).lat_ms[0]
    time.sleep(1.0)
    R["naive_mem_idle"] = proc_mem(nproc.pid)
    progress(f"baseline: {warm} warm-up, {P['paced']} paced, {P['paced10']} at 10/s, burst of {burst}")
    R["n_cold"] = run_phase(nrig, "cold", [order(i, "w") for i in range(warm)], P["interval"])
    cpu: dict[str, tuple] = {}

    def cpu_phase(name: str, events: list[dict[str, Any]], gap: float) -> Phase:
        c0, m0 = proc_cpu_s(nproc.pid), time.monotonic()
        ph = run_phase(nrig, name, events, gap)
        cpu[name] = (ph.n, proc_cpu_s(nproc.pid) - c0, time.monotonic() - m0, 0.0)
        return ph

    R["n_paced"] = cpu_phase("paced", [order(i, "p") for i in range(P["paced"])], P["interval"])
    if P["paced10"]:
        R["n_paced10"] = cpu_phase("paced10", [order(i, "q") for i in range(P["paced10"])], 0.1)
    io0 = proc_io(nproc.pid)
    R["n_burst"] = cpu_phase("burst", [order(i, "b") for i in range(burst)], 0)
    io1 = proc_io(nproc.pid)
    R["n_cpu"] = cpu
    R["n_io_burst"] = {k: io1[k] - io0[k] for k in io0}
    R["naive_mem"] = proc_mem(nproc.pid)
    progress(f"baseline: burst {R['n_burst'].rate:.1f} orders/s")
    stop_proc(nproc)
    procs.remove(nproc)
    return R


def git_commit(root: Path) -> str:
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return r.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description="store-agent benchmark suite (loopback)")
    ap.add_argument("--quick", action="store_true", help="smoke run: paced 10, burst 200, orders 1000, idle 10 s")
    ap.add_argument("--pi", action="store_true",
                    help="a Pi-sized run: the agent (and the baseline) inside a CPU quota of --quota %% of one core "
                         "(bench/quota.py); paced 30, 10/s 50, burst 200, no orders phase, idle 10 s")
    ap.add_argument("--quota", type=float, default=15.0, help="with --pi: %% of one core (default 15)")
    ap.add_argument("--quota-method", default="auto", choices=("auto", "cgroup2", "cgroup1", "duty"))
    ap.add_argument("--quota-period-us", type=int, default=10_000,
                    help="with --pi: the quota's period (default 10 000 us: an order's few ms of CPU are spread over "
                         "several periods, as on a slower core; with 100 000 us a single order fits in one budget "
                         "and runs at full speed)")
    ap.add_argument("--paced", type=int, help="orders at 1 per --interval (default 60; quick 10)")
    ap.add_argument("--paced10", type=int, help="orders at 10 per s after the paced phase (default 100; quick 30)")
    ap.add_argument("--interval", type=float, default=1.0, help="paced interval in s (default 1)")
    ap.add_argument("--burst", type=int, help="burst size (default 1000; quick 200)")
    ap.add_argument("--orders", type=int, help="orders since agent start for the memory/disk figures (default 10000; quick 1000)")
    ap.add_argument("--chunk", type=int, default=1000, help="the orders phase sends in bursts of this many (default 1000)")
    ap.add_argument("--idle-s", type=float, help="idle CPU window in s (default 30; quick 10)")
    ap.add_argument("--agent-root", action="append", default=[], metavar="DIR",
                    help="measure the agent of this checkout (repeatable: 'git worktree add /tmp/before <commit>' "
                         "then --agent-root /tmp/before --agent-root . gives before/after columns from one run)")
    ap.add_argument("--workdir", help="where to make the temp dir (default: /var/tmp if it is a real disk)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, journal)")
    a = ap.parse_args()
    q, pi = a.quick, a.pi
    P: dict[str, Any] = {
        "paced": a.paced if a.paced is not None else (10 if q else 30 if pi else 60),
        "paced10": a.paced10 if a.paced10 is not None else (30 if q else 50 if pi else 100),
        "burst": a.burst if a.burst is not None else (200 if q or pi else 1000),
        "idle_s": a.idle_s if a.idle_s is not None else (10.0 if q or pi else 30.0),
        "interval": a.interval, "chunk": a.chunk, "warm": 3,
    }
    P["orders_total"] = a.orders if a.orders is not None else (1000 if q else 0 if pi else 10000)
    roots = [Path(r).resolve() for r in a.agent_root] or [ROOT]

    def on_signal(signum, frame):
        INTERRUPTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # Ctrl-C also reaches the children (same process group)
    base = pick_base(a.workdir)
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-suite-", dir=base))
    procs: list[subprocess.Popen] = []
    quota = CpuQuota(a.quota, period_us=a.quota_period_us, method=a.quota_method) if pi else None
    M: dict[str, Any] = {"machine": machine(), "mount": mount_of(work), "quota": quota.describe() if quota else None}
    progress(f"work dir {work} on {M['mount'][0]} ({M['mount'][2]}); {P}" + (f"; quota: {M['quota']}" if quota else ""))
    agents: list[dict[str, Any]] = []
    try:
        with contextlib.ExitStack() as stack:
            broker = stack.enter_context(DevBroker(work / "broker"))
            watch = StatusWatch(broker.port)
            stack.callback(quietly, watch.close)
            stack.callback(lambda: [stop_proc(p) for p in procs])  # runs first: processes before broker/printer
            if quota is not None:
                stack.callback(quota.close)
            for i, root in enumerate(roots):
                agents.append(measure_agent(stack, procs, broker, watch, work, root, f"{i}", P, quota))
            B = measure_baseline(stack, procs, broker, watch, work, P, quota)
    except KeyboardInterrupt:
        progress("interrupted: cleaning up")
        raise
    finally:
        for p in procs:
            stop_proc(p)
        if a.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    for R in agents:
        report({**M, **R, **B}, work, P["paced"], P["burst"], P["orders_total"], P["idle_s"], a.interval, a.chunk, P["warm"])
        print()
    targets(agents, B, M, P)


def cpu_ms(entry: tuple) -> tuple[float, float]:
    """(CPU ms per order, the same net of the idle rate over the phase's wall time)."""
    n, cpu, wall, idle_rate = entry
    return cpu / n * 1000, max(0.0, cpu - idle_rate * wall) / n * 1000


def targets(agents: list[dict[str, Any]], B: dict[str, Any], M: dict[str, Any], P: dict[str, Any]) -> None:
    """Issue 17's figures, one column per agent measured in this run, beside the naive baseline."""
    print("## Issue 17 figures" + (f" (inside the quota: {M['quota']})" if M.get("quota") else ""))
    print()
    cols = [f"{Path(R['root']).name or R['root']} ({R['commit']})" for R in agents]
    print("| figure | " + " | ".join(cols) + " | naive baseline |")
    print("| --- | " + " | ".join("---" for _ in cols) + " | --- |")

    def row(label: str, fn, base: str = "–") -> None:
        vals = []
        for R in agents:
            try:
                vals.append(fn(R))
            except KeyError:
                vals.append("–")
        print(f"| {label} | " + " | ".join(vals) + f" | {base} |")

    def cpu_cell(R: dict[str, Any], name: str) -> str:
        raw, net = cpu_ms(R["cpu"][name])
        return f"{raw:.2f} ms ({net:.2f} net of idle)"

    nc = B.get("n_cpu", {})
    row(f"CPU per order, paced 1 per {P['interval']:g} s (utime+stime)", lambda R: cpu_cell(R, "paced"),
        f"{cpu_ms(nc['paced'])[0]:.2f} ms" if "paced" in nc else "–")
    if P["paced10"]:
        row("CPU per order, 10 per s", lambda R: cpu_cell(R, "paced10"),
            f"{cpu_ms(nc['paced10'])[0]:.2f} ms" if "paced10" in nc else "–")
    row(f"CPU per order, burst of {P['burst']}", lambda R: cpu_cell(R, "burst"),
        f"{cpu_ms(nc['burst'])[0]:.2f} ms" if "burst" in nc else "–")
    row("idle CPU, % of one core", lambda R: f"{R['idle_cpu'][0] / R['idle_cpu'][1] * 100:.2f} %")
    row("first order after start (published on 'online'), publish -> cut, 3 starts",
        lambda R: " / ".join(f"{x:.0f}" for x in R["firsts"]) + " ms", f"{B['n_first']:.0f} ms")
    row("start -> subscribed ('online'), median of 3", lambda R: f"{statistics.median(R['starts']) * 1000:.0f} ms",
        f"{B['naive_start'] * 1000:.0f} ms")

    def lat(R: dict[str, Any], key: str) -> str:
        v = R[key].lat_ms
        return f"{pct(v, 50):.1f} / {pct(v, 99):.1f} ms"

    row(f"publish -> cut p50 / p99, 1 per {P['interval']:g} s (n = {P['paced']})", lambda R: lat(R, "a_paced"), lat(B, "n_paced"))
    if P["paced10"]:
        row(f"publish -> cut p50 / p99, 10 per s (n = {P['paced10']})", lambda R: lat(R, "a_paced10"), lat(B, "n_paced10"))
    row(f"burst of {P['burst']}: drained at (orders/s), lost", lambda R: f"{R['a_burst'].rate:.1f}/s, {R['lost']} lost",
        f"{B['n_burst'].rate:.1f}/s")
    row("publish -> cut p50 / p99 in that burst", lambda R: lat(R, "a_burst"), lat(B, "n_burst"))
    row("RSS idle / at the end (VmHWM)", lambda R: f"{fmt_kb(R['mem_idle']['VmRSS'])} / {fmt_kb(R['mem_orders'][1]['VmRSS'])} "
        f"({fmt_kb(R['mem_orders'][1]['VmHWM'])})")
    if M.get("quota"):
        row("quota: throttled periods / periods", lambda R: f"{R['throttled'].get('nr_throttled', R['throttled'].get('stops', '?'))}"
            f" / {R['throttled'].get('nr_periods', '?')}")
    print()
    print("CPU per order: the agent's utime+stime over the phase (from the first publish to the last result, plus 3 s "
          "for the lazy outcome commit when paced) / orders; 'net of idle' subtracts the idle rate of (d) over the "
          "phase's wall time (the status poll every 1 s). Clock tick 10 ms: paced figures carry about ±0.2 ms.")


def report(R: dict[str, Any], work: Path, paced: int, burst: int, orders_total: int, idle_s: float,
           interval: float, chunk: int, warm: int) -> None:
    m, (dev, mnt, fs) = R["machine"], R["mount"]
    fs_ms = R["fsync_ms"]
    print("# store-agent benchmark suite (loopback)")
    print()
    print(f"machine:   {m['platform']}")
    print(f"cpu:       {m['cpu']}")
    print(f"python:    {m['python']}; {m['libs']}")
    print(f"broker:    {m['mosquitto']} (deploy/mosquitto/store-agent.conf)")
    print(f"state_dir: {work}/state on {dev}, {fs}, mounted at {mnt}")
    print(f"fsync:     {fs_ms:.3f} ms median (4 KiB write + os.fsync, 50 times, in state_dir)")
    print(f"agent:     {R['root']} at {R['commit']}; health.printer_poll_s=1, print.retry_s=0.2, sound off, timers off, "
          f"journal.max_mb=4096, --log-level info to a file")
    if R.get("quota"):
        print(f"quota:     {R['quota']} (the agent and the baseline)")
    print()

    s = R["starts"]
    print("## (f) start-up: Popen -> retained 'online' on stores/<store>/status")
    print()
    print(f"agent: median {statistics.median(s) * 1000:.0f} ms  (runs: " + ", ".join(f"{x * 1000:.0f}" for x in s)
          + " ms; 1st with an empty state_dir, then 2 restarts)")
    print(f"baseline (for reference, 'online' after its SUBACK): {R['naive_start'] * 1000:.0f} ms")
    print()

    chunks: list[Phase] = R["chunks"]
    print("## (a) latency: HQ publish -> receipt cut at the printer (ms); (b) throughput")
    print()
    print("| run | n | p50 | p95 | p99 | max | orders/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(lat_row(f"agent: {warm} orders after the idle window, 1 per {interval:g} s", R["a_cold"], False))
    print(lat_row(f"agent: paced, 1 per {interval:g} s", R["a_paced"], False))
    if "a_paced10" in R:
        print(lat_row("agent: paced, 10 per s", R["a_paced10"], False))
    print(lat_row(f"agent: burst of {burst}", R["a_burst"]))
    if chunks:
        allc = Phase("orders", sum(c.n for c in chunks), [x for c in chunks for x in c.lat_ms],
                     chunks[0].first_publish, chunks[-1].last_cut, 0, 0, 0)
        print(lat_row(f"agent: orders phase, {len(chunks)} bursts of <= {chunk} (each waits for the last)", allc))
    print(lat_row(f"baseline: {warm} orders after a 1 s pause", R["n_cold"], False))
    print(lat_row(f"baseline: paced, 1 per {interval:g} s", R["n_paced"], False))
    if "n_paced10" in R:
        print(lat_row("baseline: paced, 10 per s", R["n_paced10"], False))
    print(lat_row(f"baseline: burst of {burst}", R["n_burst"]))
    print()
    for who in ("a", "n"):
        b: Phase = R[f"{who}_burst"]
        print(f"{'agent' if who == 'a' else 'baseline'} burst: publish() x{b.n} took {(b.published - b.first_publish) * 1000:.0f} ms "
              f"({b.offered:.0f}/s offered, PUBACKs awaited together afterwards); all PUBACKs after "
              f"{b.acked - b.first_publish:.2f} s; last cut after {b.last_cut - b.first_publish:.2f} s "
              f"-> {b.rate:.1f} orders/s" + (f"; all results after {b.done - b.first_publish:.2f} s" if who == "a" else ""))
    if chunks:
        rates = [c.rate for c in chunks]
        print(f"agent orders-phase bursts: {min(rates):.1f}..{max(rates):.1f} orders/s (median {statistics.median(rates):.1f})")
    print()

    print("## (c) agent memory (/proc/<pid>/status)")
    print()
    print("| when | orders since start | VmRSS | VmHWM |")
    print("| --- | --- | --- | --- |")
    mi = R["mem_idle"]
    print(f"| idle, 5 s after subscribed | 0 | {fmt_kb(mi['VmRSS'])} | {fmt_kb(mi['VmHWM'])} |")
    for label, key in (("after paced", "mem_paced"), ("after the burst", "mem_burst"), ("after the orders phase", "mem_orders")):
        n, mm = R[key]
        print(f"| {label} | {n} | {fmt_kb(mm['VmRSS'])} | {fmt_kb(mm['VmHWM'])} |")
    n_orders = R["mem_orders"][0]
    print()
    print(f"orders since start: {n_orders} (target {orders_total}: {warm} warm-up + {paced} paced + {burst} burst + "
          f"{sum(c.n for c in chunks)} in the orders phase); {R['jobs']} tickets printed; results other than "
          f"printed/queued: {R['other_results'] or 'none'}")
    sb = R["state_bytes"]
    print(f"state_dir after {n_orders} orders: {sum(sb.values()) / 2**20:.1f} MiB (" +
          ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(sb.items())) + ")")
    nm = R["naive_mem"]
    print(f"baseline for reference: idle VmRSS {fmt_kb(R['naive_mem_idle']['VmRSS'])}; after its "
          f"{warm + paced + burst} orders VmRSS {fmt_kb(nm['VmRSS'])}, VmHWM {fmt_kb(nm['VmHWM'])}")
    print()

    cpu_s, wall = R["idle_cpu"]
    print("## (d) agent idle CPU (/proc/<pid>/stat utime+stime)")
    print()
    print(f"{cpu_s:.2f} CPU s over {wall:.1f} s idle = {cpu_s / wall * 100:.2f} % of one core "
          f"(clock tick {1000 / CLK_TCK:.0f} ms; printer status poll every 1 s)")
    iio = R["idle_io"]
    print(f"written while idle: wchar {iio['wchar']} B, write_bytes {iio['write_bytes']} B")
    print()

    print(f"## (e) agent bytes written per order (/proc/<pid>/io; state_dir on {fs})")
    print()
    print("| phase | orders | write_bytes/order | wchar/order | of which agent.log/order | cancelled_write_bytes/order |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, key in ((f"paced, 1 per {interval:g} s", "io_paced"), ("burst", "io_burst"), ("orders phase", "io_orders")):
        n, d, logb = R[key]
        if n:
            print(f"| {label} | {n} | {d['write_bytes'] / n:,.0f} B | {d['wchar'] / n:,.0f} B | {logb / n:,.0f} B "
                  f"| {d.get('cancelled_write_bytes', 0) / n:,.0f} B |")
    nb = R["n_io_burst"]
    print()
    print(f"baseline burst for reference: write_bytes {nb['write_bytes'] / burst:,.0f} B/order, wchar {nb['wchar'] / burst:,.0f} B/order "
          "(socket send() is counted in neither)")
    print()

    ap50, np50 = pct(R["a_paced"].lat_ms, 50), pct(R["n_paced"].lat_ms, 50)
    ab50, nb50 = pct(R["a_burst"].lat_ms, 50), pct(R["n_burst"].lat_ms, 50)
    d = ap50 - np50
    print("## (g) agent vs naive baseline")
    print()
    print("| figure | agent | baseline | agent/baseline |")
    print("| --- | --- | --- | --- |")
    print(f"| p50 latency, paced | {ap50:.2f} ms | {np50:.2f} ms | {ap50 / np50:.2f} |")
    print(f"| p50 latency, burst of {burst} | {ab50:.1f} ms | {nb50:.1f} ms | {ab50 / nb50:.2f} |")
    print(f"| throughput, burst of {burst} | {R['a_burst'].rate:.1f} orders/s | {R['n_burst'].rate:.1f} orders/s | "
          f"{R['a_burst'].rate / R['n_burst'].rate:.3f} |")
    print()
    print(f"fsync (4 KiB, median, state_dir): {fs_ms:.3f} ms")
    print(f"agent p50 - baseline p50 (paced): {d:.2f} ms = {d / fs_ms:.1f} fsyncs")
    print(f"bound reported against: 2 fsyncs + 3 ms = {2 * fs_ms + 3:.2f} ms")
    print()
    print(f"suite run time: {time.monotonic() - T0:.0f} s")


if __name__ == "__main__":
    try:
        try:
            main()
        except Exception:
            time.sleep(0.3)  # Ctrl-C reaches broker and agent too; their failure can beat our own signal handler
            if INTERRUPTED.is_set():
                raise KeyboardInterrupt from None
            raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
