"""store-fleet at scale (issue 16): real agents plus simulated stores on one mosquitto, the console measured.

    .venv/bin/python bench/fleet.py --stores 1000 --real 20          # figures for docs/FLEET.md
    .venv/bin/python bench/fleet.py --stores 5000 --real 20 --wave 250

The parent process runs the broker (the project's recommended settings, deploy/mosquitto/store-agent.conf)
and the console, so the console's RSS and CPU are its own. A child process runs the fleet: ``--real`` real
agents in one process, each with its own virtual network printer, and simulated stores for the rest (one
MQTT connection per 100 of them) that speak the same protocol: retained ``status``, ``health`` and
``config/state``; a ``config/set`` is verified (Ed25519, as an agent with ``security.hq_public_key``) and
answered with a ``config/state`` of the new version. The console signs.

Measured: a new console showing the whole fleet (every store's health and config/state), a fault to the
console (a real agent's printer running out of paper; a simulated store's health), a signed config push to
every store in canary + waves end to end, the console's and the broker's RSS and CPU (idle, and during the
push). Prints the figures and one JSON line. Not TLS: the simulated stores share logins (docs/FLEET.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PREFIX = "stores"
CTL = "bench-fleet/ctl"
PER_CLIENT = 100


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int | str = "self") -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the fleet (child process)
class SimStores:
    """``ids`` simulated stores on one MQTT connection."""

    def __init__(self, port: int, ids: list[str], base: dict, verifier_key: str) -> None:
        import paho.mqtt.client as paho  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        from agent.signing import Verifier  # noqa: PLC0415

        self.ids, self.base = ids, base
        self.verifiers = {s: Verifier([verifier_key], s) for s in ids} if verifier_key else {}
        self.versions = dict.fromkeys(ids, 0)
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{ids[0]}", protocol=paho.MQTTv5)
        self.c.max_inflight_messages_set(200)
        self.c.on_message = self._on_message
        self.ready = threading.Event()
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe([(f"{PREFIX}/{s}/config/set", 1) for s in ids])

    def health(self, sid: str, state: str = "ready") -> bytes:
        return json.dumps({"v": 1, "store_id": sid, "at": now_iso(), "agent": {"version": "0.1.0", "uptime_s": 10},
                           "mqtt": {"connected": True, "last_error": None},
                           "printers": [{"name": "counter", "role": "primary", "state": state, "queue": 0}],
                           "audio": {"state": "ok"}, "queue": {"pending": 0, "oldest_s": None}, "alerts_open": 0}).encode()

    def state(self, sid: str, version: int, error: dict | None = None) -> bytes:
        import hashlib  # noqa: PLC0415

        cfg = {**self.base, "store_id": sid}
        sha = hashlib.sha256(json.dumps(cfg, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
        return json.dumps({"v": 1, "version": version, "applied_at": now_iso() if version else None, "sha256": sha,
                           "config": cfg, "error": error}, ensure_ascii=False).encode()

    def announce(self) -> list:
        infos = []
        for s in self.ids:
            infos.append(self.c.publish(f"{PREFIX}/{s}/status", b"online", qos=1, retain=True))
            infos.append(self.c.publish(f"{PREFIX}/{s}/health", self.health(s), qos=1, retain=True))
            infos.append(self.c.publish(f"{PREFIX}/{s}/config/state", self.state(s, 0), qos=1, retain=True))
        return infos

    def _on_message(self, client, userdata, m) -> None:  # noqa: ANN001
        sid = m.topic.split("/")[1]
        try:
            body = json.loads(m.payload)
            v = body["version"]
        except (ValueError, KeyError, TypeError):
            return
        why = self.verifiers[sid].check("config/set", body, replay=False) if self.verifiers else None
        if why or v <= self.versions[sid]:
            err = {"version": v, "message": why or "not newer"}
            client.publish(f"{PREFIX}/{sid}/config/state", self.state(sid, self.versions[sid], err), qos=1, retain=True)
            return
        self.versions[sid] = v
        client.publish(f"{PREFIX}/{sid}/config/state", self.state(sid, v), qos=1, retain=True)

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def child(port: int, n: int, real: int, workdir: Path, public_key: str) -> None:
    import logging  # noqa: PLC0415

    import paho.mqtt.client as paho  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    from agent.app import Agent  # noqa: PLC0415
    from agent.config import parse_config, redacted  # noqa: PLC0415
    from drivers.vprinter import VirtualPrinter  # noqa: PLC0415

    logging.disable(logging.WARNING)
    security = {"hq_public_key": public_key} if public_key else {}
    agents, printers = {}, {}
    real_ids = [f"real-{i:04d}" for i in range(real)]
    for sid in real_ids:
        vp = printers[sid] = VirtualPrinter().start()
        cfg = {"store_id": sid, "state_dir": str(workdir / sid),
               "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.5, "reconnect_max_s": 5},
               "printers": [{"name": "counter", "connection": "network", "host": "127.0.0.1", "port": vp.port}],
               "health": {"printer_poll_s": 1}, "sound": {"enabled": False}, "voice": {"enabled": False},
               "timers": {"prep_before_s": 0, "summary_every_s": 0}, "security": security}
        a = agents[sid] = Agent(parse_config(cfg))
        a.start()
    print(f"child: {len(agents)} agents started", file=sys.stderr, flush=True)
    base = redacted(parse_config({"store_id": "x", "state_dir": "/var/lib/store-agent",
                                  "printers": [{"name": "counter", "connection": "usb", "vendor_id": 0x0416, "product_id": 0x5011}]}))
    sim_ids = [f"sim-{i:05d}" for i in range(n - real)]
    sims = [SimStores(port, sim_ids[i:i + PER_CLIENT], base, public_key) for i in range(0, len(sim_ids), PER_CLIENT)]
    for s in sims:
        s.ready.wait(10)
    print(f"child: {len(sims)} simulator connections up", file=sys.stderr, flush=True)
    for s in sims:
        for info in s.announce():
            info.wait_for_publish(30)
    print(f"child: {len(sim_ids)} simulated stores announced", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 60
    while not all(a.link.subscribed for a in agents.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    by_sim = {sid: s for s in sims for sid in s.ids}
    done = threading.Event()

    def on_ctl(client, userdata, m) -> None:  # noqa: ANN001
        cmd, _, sid = m.payload.decode().partition(" ")
        if cmd == "quit":
            done.set()
        elif sid in printers:
            printers[sid].set_mode("paper_out" if cmd == "fault" else "ready")
        elif sid in by_sim:
            s = by_sim[sid]
            s.c.publish(f"{PREFIX}/{sid}/health", s.health(sid, "paper_out" if cmd == "fault" else "ready"), qos=1, retain=True)

    ctl = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-ctl", protocol=paho.MQTTv5)
    ctl.on_message = on_ctl
    ctl.connect("127.0.0.1", port)
    ctl.subscribe(CTL, qos=1)
    ctl.loop_start()
    time.sleep(0.3)
    print(json.dumps({"ready": True, "real": len(agents), "sim": len(sim_ids), "rss_mb": round(rss_mb(), 1)}), flush=True)
    done.wait()
    for a in agents.values():
        a.stop()
    for vp in printers.values():
        vp.stop()
    for s in sims:
        s.stop()
    ctl.loop_stop()


# ---------------------------------------------------------------- the console (parent process)
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stores", type=int, default=1000)
    ap.add_argument("--real", type=int, default=20, help="real agents (each with a virtual printer) among them")
    ap.add_argument("--wave", type=int, default=100)
    ap.add_argument("--canary", type=int, default=2)
    ap.add_argument("--soak", type=float, default=1.0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--key", default="", help=argparse.SUPPRESS)
    ap.add_argument("--unsigned", action="store_true", help="no signatures (to see what signing costs)")
    args = ap.parse_args()
    if args.child:
        child(args.port, args.stores, args.real, Path(args.workdir), args.key)
        return

    from agent.devbroker import DevBroker  # noqa: PLC0415
    from agent.signing import generate  # noqa: PLC0415
    from fleet import config as fconfig  # noqa: PLC0415
    from fleet.console import Console  # noqa: PLC0415
    from fleet.rollout import Rollout  # noqa: PLC0415

    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    broker = DevBroker(work / "broker").start()
    bpid = broker.proc.pid
    pem, public = generate()
    (work / "hq.key").write_bytes(pem)
    if args.unsigned:
        public = ""
    fig: dict = {"stores": args.stores, "cores": os.cpu_count()}
    t0 = time.monotonic()
    kid = subprocess.Popen([sys.executable, __file__, "--child", "--port", str(broker.port), "--stores", str(args.stores),
                            "--real", str(args.real), "--workdir", str(work), "--key", public],
                           stdout=subprocess.PIPE, text=True)
    try:
        line = kid.stdout.readline()
        info = json.loads(line)
        fig.update(real_agents=info["real"], simulated=info["sim"], fleet_process_rss_mb=info["rss_mb"],
                   fleet_start_s=round(time.monotonic() - t0, 1))
        print(f"fleet up: {info['real']} real agents + {info['sim']} simulated stores in {fig['fleet_start_s']} s "
              f"(fleet process {info['rss_mb']} MB)")
        cfg = fconfig.parse({"mqtt": {"host": "127.0.0.1", "port": broker.port}, "state_dir": str(work / "console"),
                             "signing": {"key_file": "" if args.unsigned else str(work / "hq.key")},
                             "push": {"answer_s": 120}})
        cpu0, t0 = cpu_s(), time.monotonic()
        c = Console(cfg, role="bench").start(settle=False)

        def complete() -> bool:
            with c.state.lock:
                return sum(1 for s in c.state.stores.values() if s.health and s.config) >= args.stores

        while not complete() and time.monotonic() - t0 < 300:
            time.sleep(0.01)
        fig["console_full_picture_s"] = round(time.monotonic() - t0, 2)
        fig["console_full_picture_cpu_s"] = round(cpu_s() - cpu0, 2)
        print(f"a new console shows all {args.stores} stores after {fig['console_full_picture_s']} s "
              f"({fig['console_full_picture_cpu_s']} s CPU)")
        t = time.perf_counter()
        rows, counts = c.state.table()
        fig["status_table_ms"] = round((time.perf_counter() - t) * 1000, 1)

        def fault_latency(sid: str) -> float:
            t = time.monotonic()
            c.link.publish(CTL, f"fault {sid}".encode()).wait_for_publish(5)
            while time.monotonic() - t < 30:
                with c.state.lock:
                    s = c.state.stores[sid]
                    if s.health and s.health.printers[0].state == "paper_out":
                        break
                time.sleep(0.002)
            took = time.monotonic() - t
            c.link.publish(CTL, f"clear {sid}".encode()).wait_for_publish(5)
            while time.monotonic() - t < 60:
                with c.state.lock:
                    if c.state.stores[sid].health.printers[0].state == "ready":
                        break
                time.sleep(0.01)
            return took

        if args.real:
            real = [fault_latency(f"real-{i % args.real:04d}") for i in range(5)]
            fig["fault_real_agent_to_console_s"] = {"median": round(statistics.median(real), 2), "max": round(max(real), 2)}
            print(f"printer fault on a real agent -> console: median {fig['fault_real_agent_to_console_s']['median']} s "
                  f"(includes the agent's 1 s status poll), max {fig['fault_real_agent_to_console_s']['max']} s")
        sims = [fault_latency(f"sim-{(i * 97) % (args.stores - args.real):05d}") for i in range(10)]
        fig["fault_health_to_console_ms"] = {"median": round(statistics.median(sims) * 1000, 1), "max": round(max(sims) * 1000, 1)}
        print(f"health message -> console: median {fig['fault_health_to_console_ms']['median']} ms, "
              f"max {fig['fault_health_to_console_ms']['max']} ms")

        cpu_c, cpu_b, t = cpu_s(), cpu_s(bpid), time.monotonic()
        time.sleep(10)
        dt = time.monotonic() - t
        fig["idle"] = {"console_rss_mb": round(rss_mb(), 1), "console_cpu_pct": round((cpu_s() - cpu_c) / dt * 100, 1),
                       "broker_rss_mb": round(rss_mb(bpid), 1), "broker_cpu_pct": round((cpu_s(bpid) - cpu_b) / dt * 100, 1)}
        print(f"idle (10 s): console {fig['idle']['console_rss_mb']} MB, {fig['idle']['console_cpu_pct']} % CPU; "
              f"broker {fig['idle']['broker_rss_mb']} MB, {fig['idle']['broker_cpu_pct']} % CPU")

        ids = sorted(s.id for s in c.state.snapshot())
        events = []
        cpu_c, cpu_b, t = cpu_s(), cpu_s(bpid), time.monotonic()
        r = Rollout(c, ids, {"texts": {"warm_tip_title": "用药小贴士"}, "print": {"retry_s": 1.0}}, canary=args.canary,
                    wave=args.wave, soak=args.soak, pattern="*", on_event=events.append).run()
        dt = time.monotonic() - t
        fig["push"] = {"state": r["state"], "stores": len(ids), "canary": args.canary, "wave": args.wave, "soak_s": args.soak,
                       "steps": 1 + -(-(len(ids) - args.canary) // args.wave), "seconds": round(dt, 1),
                       "seconds_without_soak": round(dt - args.soak * (1 + -(-(len(ids) - args.canary) // args.wave)), 1),
                       "console_cpu_s": round(cpu_s() - cpu_c, 1), "broker_cpu_s": round(cpu_s(bpid) - cpu_b, 1),
                       "console_rss_mb": round(rss_mb(), 1), "broker_rss_mb": round(rss_mb(bpid), 1),
                       "signed": not args.unsigned}
        print(f"push to {len(ids)} stores ({args.canary} canaries, waves of {args.wave}, soak {args.soak:g} s, "
              f"{'signed' if not args.unsigned else 'unsigned'}): {r['state']} in {fig['push']['seconds']} s "
              f"({fig['push']['seconds_without_soak']} s without the soaks); console {fig['push']['console_cpu_s']} s CPU, "
              f"{fig['push']['console_rss_mb']} MB; broker {fig['push']['broker_cpu_s']} s CPU, {fig['push']['broker_rss_mb']} MB")
        if r["state"] != "done":
            print("  " + r["result"])
        c.stop()
        print(json.dumps(fig, ensure_ascii=False))
    finally:
        try:
            from paho.mqtt import publish  # noqa: PLC0415

            publish.single(CTL, b"quit", qos=1, hostname="127.0.0.1", port=broker.port)
            kid.wait(60)
        except Exception:  # noqa: BLE001
            kid.kill()
        broker.stop()


if __name__ == "__main__":
    main()
