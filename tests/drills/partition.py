"""Network-partition drill; run inside a private network namespace (`unshare --net`, as root).

Loopback only: the broker listens on 127.0.0.1 (HQ) and 127.0.0.2 (the agent); nftables DROPs
the agent's traffic to and from the broker for DRILL_PARTITION_S seconds (silently, like a cut
cable), while HQ keeps publishing. Exit 0 when every order printed once (0 lost, 0 unmarked
duplicates). Prints one DRILL line.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import HQ, agent_config, order, spawn_agent, wait_until, write_toml  # noqa: E402
from test_drills import final_ok, report  # noqa: E402

from agent.devbroker import DevBroker  # noqa: E402
from drivers.vprinter import VirtualPrinter  # noqa: E402


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def main() -> int:
    seconds = float(os.environ.get("DRILL_PARTITION_S", "60"))
    sh("ip", "link", "set", "lo", "up")
    work = Path(tempfile.mkdtemp(prefix="drill-partition-"))
    broker = DevBroker(work / "broker")
    broker.extra = f"listener {broker.port} 127.0.0.2\n"
    with broker, VirtualPrinter() as vp:
        store = "drill-part"
        hq = HQ(broker.port, "stores", store, persistent=True)
        cfg = agent_config(work / "state", broker.port, vp.port, store,
                           mqtt={"host": "127.0.0.2", "keepalive_s": 5, "reconnect_min_s": 0.5, "reconnect_max_s": 3})
        proc = spawn_agent(write_toml(work / "agent.toml", cfg), work / "agent.log")
        try:
            assert wait_until(lambda: "online" in hq.statuses(), 20)
            events = [order(i, "np") for i in range(1, 151)]
            for ev in events[:50]:
                hq.publish(ev)
            sh("nft", "add", "table", "inet", "drill")
            sh("nft", "add", "chain", "inet", "drill", "out", "{ type filter hook output priority 0; }")
            sh("nft", "add", "rule", "inet", "drill", "out", "ip", "daddr", "127.0.0.2", "tcp", "dport", str(broker.port), "drop")
            sh("nft", "add", "rule", "inet", "drill", "out", "ip", "saddr", "127.0.0.2", "tcp", "sport", str(broker.port), "drop")
            t0 = time.monotonic()
            for ev in events[50:100]:  # HQ goes on publishing; they wait at the broker
                hq.publish(ev)
                time.sleep(seconds / 100)
            time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
            sh("nft", "delete", "table", "inet", "drill")
            for ev in events[100:]:
                hq.publish(ev)
            ok = wait_until(lambda: final_ok(hq, events), 180)
            dup_results = sum(1 for r in hq.results() if r["status"] == "duplicate")
            f = report("network_partition", events, vp, proc, partition_s=seconds, duplicate_results=dup_results,
                       agent_reconnects=sum(1 for s in hq.statuses() if s == "online") - 1)
            return 0 if ok and f["lost"] == 0 and f["duplicates"] == 0 else 1
        finally:
            proc.terminate()
            proc.wait(20)
            hq.close()


if __name__ == "__main__":
    sys.exit(main())
