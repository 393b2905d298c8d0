"""``bench/profile_agent.py --tool cprofile``: the agent under cProfile, every thread, when py-spy is not at hand.

    python bench/cprofile_agent.py OUT_DIR -m agent.cli run --config ... 

Every thread (and the main thread) runs under its own ``cProfile.Profile``; SIGUSR1 writes their
merged statistics so far to ``OUT_DIR/cprofile-<n>.pstats`` (cumulative since the start: the file
written after the burst includes the paced phase; subtract, or profile one phase per run). Read with ``python -m pstats FILE`` (``sort cumtime``, ``stats 30``). cProfile
instruments every call: the agent runs about 2x slower under it, so its shares are indicative
and its CPU-per-order figures are not the suite's.
"""

import cProfile
import itertools
import os
import pstats
import runpy
import signal
import sys
import threading
import time
from pathlib import Path

OUT = Path(sys.argv[1])
PROFILES: list[cProfile.Profile] = []
_LOCK = threading.Lock()
_N = itertools.count()


# CPROFILE_TIMER=thread: each thread's CPU time (time.thread_time) instead of the wall clock, so that a
# thread waiting on a lock, a socket or the disk costs nothing (the profile then splits CPU, not latency)
_TIMER = (time.thread_time,) if os.environ.get("CPROFILE_TIMER") == "thread" else ()


def _new() -> cProfile.Profile:
    p = cProfile.Profile(*_TIMER)
    with _LOCK:
        PROFILES.append(p)
    return p


_run = threading.Thread.run


def _profiled_run(self):  # noqa: ANN001
    p = _new()
    p.enable()
    try:
        _run(self)
    finally:
        p.disable()


threading.Thread.run = _profiled_run


def _dump(signum, frame):  # noqa: ANN001
    with _LOCK:
        profs = list(PROFILES)
    st = None
    for p in profs:
        try:
            p.snapshot_stats()  # what create_stats() does, without disabling the profiler
        except Exception:  # noqa: BLE001
            continue
        if not p.stats:
            continue
        st = pstats.Stats(p) if st is None else (st.add(p) or st)
    if st is not None:
        st.dump_stats(str(OUT / f"cprofile-{next(_N)}.pstats"))


signal.signal(signal.SIGUSR1, _dump)
main = _new()
sys.argv = [sys.argv[3]] + sys.argv[4:] if sys.argv[2] == "-m" else sys.argv[2:]
main.enable()
runpy.run_module("agent.cli", run_name="__main__", alter_sys=True)
