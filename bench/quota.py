"""A Pi-sized CPU budget for a benchmarked process: a share of one core, pinned to one CPU.

Mechanisms, the first that works on this machine (``CpuQuota.method``):

``cgroup2``  a child group of the cgroup v2 hierarchy at /sys/fs/cgroup (needs the ``cpu`` controller
             enabled there and write access: root, or a delegated subtree): ``cpu.max = "15000 100000"``.
``cgroup1``  a group under the cgroup v1 ``cpu`` hierarchy (/sys/fs/cgroup/cpu, root):
             ``cpu.cfs_quota_us = 15000``, ``cpu.cfs_period_us = 100000``.
``duty``     no writable cgroup (a container, no root): a thread here sums the process's CPU time
             (every thread's ``/proc/<pid>/task/*/schedstat``, nanoseconds) every 1 ms and stops the
             process (SIGSTOP) once it has used its share of the current 100 ms period, continuing it
             (SIGCONT) when the period ends. The same budget as CFS bandwidth control, but coarser:
             the process may overrun by up to the poll interval (1 ms ≈ 7 % of a 15 ms budget), the
             poll itself runs outside the budget, and a stopped process is stopped as a whole (CFS
             throttles the same way: every thread of the group waits for the next period).

``systemd-run -p CPUQuota=15%`` is what a device with systemd would use (the unit can set
``CPUQuota=`` the same way); it needs systemd as PID 1 and is the ``cgroup2`` mechanism underneath,
so it is not used here. In every mechanism the process is also pinned to one CPU
(``sched_setaffinity``), so "15 % of one core" cannot be spread over two.

The process is moved into the group right after it is started (``watch(pid)``, from the parent,
before the agent's interpreter has started its first thread; threads and children made later are
in the group by inheritance).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Optional

CG2 = Path("/sys/fs/cgroup")
CG1_CPU = Path("/sys/fs/cgroup/cpu")


def _cgroup2_usable() -> bool:
    try:
        return "cpu" in (CG2 / "cgroup.controllers").read_text().split() and os.access(CG2, os.W_OK)
    except OSError:
        return False


def _cgroup1_usable() -> bool:
    return (CG1_CPU / "cpu.cfs_quota_us").is_file() and os.access(CG1_CPU, os.W_OK)


class CpuQuota:
    def __init__(self, percent: float, *, period_us: int = 100_000, cpu: Optional[int] = None,
                 method: str = "auto", name: str = "store-agent-bench") -> None:
        self.percent = percent
        self.period_us = period_us
        self.quota_us = max(1000, int(period_us * percent / 100))
        self.cpu = cpu if cpu is not None else max(os.sched_getaffinity(0))
        if method == "auto":
            method = "cgroup2" if _cgroup2_usable() else "cgroup1" if _cgroup1_usable() else "duty"
        self.method = method
        self.group: Optional[Path] = None
        self.pids: list[int] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.duty_stops = 0
        if method == "cgroup2":
            sub = CG2 / "cgroup.subtree_control"
            if "cpu" not in sub.read_text().split():
                sub.write_text("+cpu")
            self.group = CG2 / f"{name}-{os.getpid()}"
            self.group.mkdir(exist_ok=True)
            (self.group / "cpu.max").write_text(f"{self.quota_us} {period_us}")
        elif method == "cgroup1":
            self.group = CG1_CPU / f"{name}-{os.getpid()}"
            self.group.mkdir(exist_ok=True)
            (self.group / "cpu.cfs_period_us").write_text(str(period_us))
            (self.group / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        elif method != "duty":
            raise ValueError(f"unknown quota method {method}")

    def describe(self) -> str:
        where = {"cgroup2": f"cgroup v2 {self.group} cpu.max", "cgroup1": f"cgroup v1 {self.group} cpu.cfs_quota_us",
                 "duty": "SIGSTOP/SIGCONT duty cycle (no writable cgroup)"}[self.method]
        return (f"{self.percent:g} % of one core ({self.quota_us} us per {self.period_us} us) via {where}; "
                f"pinned to CPU {self.cpu}")

    def watch(self, pid: int) -> None:
        """Put ``pid`` (just started) in the budget."""
        self.pids.append(pid)
        os.sched_setaffinity(pid, {self.cpu})
        if self.group is not None:
            (self.group / "cgroup.procs").write_text(str(pid))
        else:
            t = threading.Thread(target=self._duty, args=(pid,), name=f"duty-{pid}", daemon=True)
            t.start()
            self._threads.append(t)

    def throttled(self) -> dict[str, float]:
        """How often the budget stopped the group: periods, throttled periods, throttled seconds."""
        if self.group is None:
            return {"stops": self.duty_stops}
        out: dict[str, float] = {}
        for line in (self.group / "cpu.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            out[k] = int(v)
        if "throttled_time" in out:  # v1: ns
            out["throttled_s"] = out.pop("throttled_time") / 1e9
        if "throttled_usec" in out:  # v2
            out["throttled_s"] = out.pop("throttled_usec") / 1e6
        return out

    def close(self) -> None:
        self._stop.set()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for t in self._threads:
            t.join(2)
        if self.group is not None:
            for _ in range(50):
                try:
                    self.group.rmdir()
                    break
                except OSError:  # processes still leaving
                    time.sleep(0.1)

    # -- the fallback
    @staticmethod
    def _cpu_ns(pid: int) -> int:
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
        return total

    def _duty(self, pid: int) -> None:
        period = self.period_us / 1e6
        budget = self.quota_us * 1000
        try:
            while not self._stop.is_set():
                start, used0 = time.monotonic(), self._cpu_ns(pid)
                end = start + period
                while time.monotonic() < end and not self._stop.is_set():
                    if self._cpu_ns(pid) - used0 >= budget:
                        os.kill(pid, signal.SIGSTOP)
                        self.duty_stops += 1
                        time.sleep(max(0.0, end - time.monotonic()))
                        os.kill(pid, signal.SIGCONT)
                        break
                    time.sleep(0.001)
                time.sleep(max(0.0, end - time.monotonic()))
        except (ProcessLookupError, FileNotFoundError):
            return
