"""``store-agent demo``: the whole product on one machine, no config and no hardware.

A private mosquitto (the project's recommended settings) on a free loopback port, a virtual
network printer, an agent with mock GPIO pins, then: sample orders and exceptions (their chimes
and LED patterns are logged; chimes also play when the machine has a sound card), the clerk's
acknowledgement, a paper-out spell with its alert, escalation and recovery, and the printed
tickets left as ``.txt`` + ``.png`` + ``.bin`` under ``./demo-out/``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from drivers.vprinter import VirtualPrinter

from .app import Agent
from .config import parse_config
from .devbroker import DevBroker
from .mqtt import MqttSettings, ToolClient
from .samples import now_utc, sample_events
from .topics import Topics

log = logging.getLogger(__name__)

FINAL = {"printed", "failed", "rejected", "duplicate", "expired"}


class LoggedChime:
    """Says which chime would sound; plays it too when the machine has a sound card."""

    def __init__(self, echo: Callable[[str], None], inner: Optional[object] = None) -> None:
        self.echo, self.inner = echo, inner

    def play(self, wav: Path, volume: float = 1.0) -> str:
        if wav.stem.startswith("phrase-"):  # a spoken announcement (agent/voice.py)
            self.echo(f"  ♪ speaking ({_seconds(wav):.1f} s, volume {volume:.1f})")
        else:
            self.echo(f"  ♪ chime {wav.stem} (volume {volume:.1f})")
        if self.inner is not None:
            try:
                return self.inner.play(wav, volume)  # type: ignore[attr-defined]
            except Exception as e:  # noqa: BLE001 - the demo goes on without sound
                self.echo(f"    (no sound from this machine: {e})")
                self.inner = None
        return "logged"


class LoggedLed:
    """A real gpiozero LED on a mock pin, with every pattern change shown."""

    def __init__(self, led, label: str, echo: Callable[[str], None]) -> None:  # noqa: ANN001 - drivers.gpio.Led
        self.led, self.label, self.echo = led, label, echo

    @property
    def pattern(self) -> str:
        return self.led.pattern

    def show(self, pattern: str) -> None:
        if pattern != self.led.pattern:
            self.echo(f"  ● {self.label}: {pattern}")
        self.led.show(pattern)

    def close(self) -> None:
        self.led.close()


def _seconds(wav: Path) -> float:
    import wave  # noqa: PLC0415

    try:
        with wave.open(str(wav), "rb") as w:
            return w.getnframes() / w.getframerate()
    except (OSError, EOFError, wave.Error):
        return 0.0


def _has_sound_card() -> bool:
    try:
        return "no soundcards" not in Path("/proc/asound/cards").read_text()
    except OSError:
        return False


def _order(n: int) -> dict:
    ev = sample_events(now_utc(), tag=f"paper{n}")[0]
    ev["order"]["seq"] = 30 + n
    return ev


def run_demo(out_dir: Path, echo: Callable[[str], None] = print) -> int:
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="store-agent-demo-"))
    t0 = time.monotonic()
    try:
        with DevBroker(work / "broker") as broker, VirtualPrinter(spool_dir=out_dir / "counter", columns=48, png=True) as printer:
            echo(f"broker: mosquitto on 127.0.0.1:{broker.port}   printer: virtual ESC/POS on 127.0.0.1:{printer.port}")
            cfg = parse_config({
                "store_id": "demo-0001",
                "state_dir": str(work / "state"),
                "store": {"name": "示例大药房(解放碑店)", "phone": "023-6000-0231"},
                "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_max_s": 2},
                "printers": [{"name": "counter", "connection": "network", "host": "127.0.0.1", "port": printer.port,
                              "paper_width_mm": 80, "timeout_s": 1.0}],
                "health": {"printer_poll_s": 1, "clear_after_s": 1},
                "print": {"retry_s": 0.5},
                "escalation": {"printer_fault_after_s": 3},
                "gpio": {"enabled": True, "pin_factory": "mock"},
                "timers": {"prep_before_s": 0, "summary_every_s": 0},
            })
            topics = Topics(cfg.mqtt.topic_prefix, cfg.store_id)
            agent = Agent(cfg)
            ann = agent.annunciator
            ann.chime = LoggedChime(echo, ann.chime if _has_sound_card() else None)
            ann.audio_state = "ok"
            if ann.exception_led is not None:
                ann.exception_led = LoggedLed(ann.exception_led, "exception LED", echo)
            if ann.status_led is not None:
                ann.status_led = LoggedLed(ann.status_led, "status LED", echo)
            speak = agent.speak

            def logged_speak(template: str, facts: dict, done=None) -> str:  # noqa: ANN001
                phrase = speak(template, facts, done)
                if phrase:
                    echo(f"  🗣 voice: {phrase}")
                return phrase

            agent.speak = logged_speak  # type: ignore[method-assign]
            agent.start()
            ok = True
            try:
                deadline = time.monotonic() + 10
                while not agent.link.subscribed and time.monotonic() < deadline:  # a new store: session + subscription first
                    time.sleep(0.05)
                with ToolClient(MqttSettings("127.0.0.1", broker.port, "demo-hq"), [topics.result, topics.alerts]) as hq:
                    ok &= _orders_and_exceptions(agent, hq, topics, echo)
                    ok &= _paper_out_spell(agent, hq, topics, printer, echo)
                    ok &= _store_day(agent, hq, topics, printer, echo)
            finally:
                agent.stop()
            echo(f"\n{len(printer.jobs)} ticket(s) printed in {time.monotonic() - t0:.1f}s; each as .txt, .png and .bin:")
            for f in sorted((out_dir / "counter").glob("*.txt")):
                echo(f"  {f}")
            return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _results(hq: ToolClient, topics: Topics) -> list[dict]:
    return [json.loads(p) for t, p in list(hq.received) if t == topics.result]


def _alert_lines(hq: ToolClient, topics: Topics, seen: int, echo: Callable[[str], None]) -> int:
    alerts = [json.loads(p) for t, p in list(hq.received) if t == topics.alerts]
    for a in alerts[seen:]:
        echo(f"  alert {a['state']:<12} {a['code']:<24} to {a['audience']:<8} {a['message']}")
    return len(alerts)


def _orders_and_exceptions(agent: Agent, hq: ToolClient, topics: Topics, echo: Callable[[str], None]) -> bool:
    echo("\n== orders and exceptions from HQ")
    events = sample_events(now_utc())
    for ev in events:
        hq.publish(topics.orders, json.dumps(ev, ensure_ascii=False).encode())
        echo(f"published {ev['type']:<18} {ev['id']}  order {ev['order']['id']}")
        time.sleep(0.4)  # one after another, as they would arrive: each chime is heard
    hq.publish(topics.orders, b"{not json")
    echo("published a malformed payload (expect: rejected)")
    ok = hq.wait_for(lambda msgs: sum(1 for r in _results(hq, topics) if r["status"] in FINAL) >= len(events) + 1, 20)
    for r in _results(hq, topics):
        echo(f"  result {r['status']:<9} {r['event_id'] or '-':<16} {', '.join(r['documents']) or r['error'] or ''}")
    time.sleep(1.5)  # let the LED catch up
    seen = _alert_lines(hq, topics, 0, echo)
    echo("the clerk presses the acknowledge button")
    acked = agent.acknowledge()
    echo(f"  {len(acked)} alert(s) acknowledged: {', '.join(a.code for a in acked)}")
    time.sleep(1.5)
    _alert_lines(hq, topics, seen, echo)
    return ok


def _paper_out_spell(agent: Agent, hq: ToolClient, topics: Topics, printer: VirtualPrinter, echo: Callable[[str], None]) -> bool:
    echo("\n== the paper runs out")
    seen = len([1 for t, _ in list(hq.received) if t == topics.alerts])  # show only what comes next
    printer.set_mode("paper_out")
    orders = [_order(n) for n in (1, 2)]
    for ev in orders:
        hq.publish(topics.orders, json.dumps(ev, ensure_ascii=False).encode())
        echo(f"published order.created     {ev['id']}  order {ev['order']['id']}")
    ids = {ev["id"] for ev in orders}

    def alert_state(state: str) -> bool:
        return any(json.loads(p)["code"] == "printer.paper_out" and json.loads(p)["state"] == state
                   for t, p in list(hq.received) if t == topics.alerts)

    escalated = hq.wait_for(lambda msgs: alert_state("escalated"), 15)
    queued = [r for r in _results(hq, topics) if r["event_id"] in ids]
    echo(f"  waiting for paper: {len(queued)} result(s) so far, all {', '.join(sorted({r['status'] for r in queued})) or '-'}")
    seen = _alert_lines(hq, topics, seen, echo)
    echo("the clerk loads a new roll")
    printer.set_mode("ready")
    printed = hq.wait_for(lambda msgs: {r["event_id"] for r in _results(hq, topics) if r["status"] == "printed"} >= ids, 20)
    cleared = hq.wait_for(lambda msgs: alert_state("cleared"), 10)
    time.sleep(0.5)
    for r in _results(hq, topics):
        if r["event_id"] in ids and r["status"] in FINAL:
            echo(f"  result {r['status']:<9} {r['event_id']:<16} {', '.join(r['documents'])}")
    _alert_lines(hq, topics, seen, echo)
    return escalated and printed and cleared


def _store_day(agent: Agent, hq: ToolClient, topics: Topics, printer: VirtualPrinter, echo: Callable[[str], None]) -> bool:
    """The follow-up list (an order delivered 30 h ago) and the day's report, each as a slip."""
    from datetime import datetime, timedelta, timezone  # noqa: PLC0415

    echo("\n== the store's day: follow-up calls and the daily report")
    created = sample_events(now_utc(), tag="followup")[0]
    created["order"]["seq"] = 7
    done = json.loads(json.dumps(created))
    done.update(type="order.completed", id=created["id"] + "-done",
                at=(datetime.now(timezone.utc) - timedelta(hours=30)).isoformat())
    for ev in (created, done):
        hq.publish(topics.orders, json.dumps(ev, ensure_ascii=False).encode())
    echo(f"published order.created + order.completed (delivered 30 h ago)  order {created['order']['id']}")
    hq.wait_for(lambda msgs: {r["event_id"] for r in _results(hq, topics) if r["status"] in FINAL} >= {created["id"], done["id"]}, 15)
    before = len(printer.jobs)
    due = agent.followups.due()
    echo(f"  follow-ups due: {', '.join(o['order_id'] for o in due) or 'none'}")
    agent.print_followups(due)
    today = datetime.fromtimestamp(agent.clock()).date()
    agent.journal.flush()
    time.sleep(0.3)  # the last figures (lazy) are in
    report = agent.report("day")
    agent.print_report("day", today, today)
    faults = ", ".join(f"{k} {v['count']}x" for k, v in report["faults"].items()) or "none"
    echo(f"  daily report: {report['orders']['total']} orders, {sum(report['tickets'].values())} tickets, faults {faults}")
    ok = printer.wait_for(lambda p: len(p.jobs) >= before + 2, 15)
    for j in printer.jobs[before:]:
        echo(f"  printed: {j.text.splitlines()[0].strip() if j.text else '?'}")
    return ok
