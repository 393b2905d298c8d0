"""Issue 17: warm start and no per-order compiles or imports. Behaviour only: counts, never milliseconds
(bench/suite.py and bench/profile.py measure the time)."""

from __future__ import annotations

import sys
import time

from agent.app import Agent
from agent.config import parse_config
from agent.templating import builtin_dir
from agent.tickets import TicketRenderer
from conftest import agent_config, order, wait_until
from drivers.escpos_proto import PrinterStatus


class SlowToAnswerPrinter:
    """A printer whose status answer takes 0.2 s (a stand-in: the test is about the agent's start)."""

    queryable = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: list[bytes] = []

    def status(self, maintain="idle") -> PrinterStatus:
        time.sleep(0.2)
        return PrinterStatus("ready", "")

    def online(self) -> bool:
        return True

    def send(self, data: bytes, on_written=lambda: None, **_) -> None:  # noqa: ANN001, ANN003
        self.jobs.append(data)
        on_written()

    def close(self) -> None:
        pass


def count_compiles(renderer: TicketRenderer) -> list[str]:
    """Every template the renderer's environment compiles from now on, by name."""
    env = renderer.builtin
    compiled: list[str] = []
    original = env.compile

    def compile(source, name=None, filename=None, raw=False, defer_init=False):  # noqa: ANN001, A001
        compiled.append(name)
        return original(source, name, filename, raw, defer_init)

    env.compile = compile  # type: ignore[method-assign]
    return compiled


def test_warm_compiles_every_builtin_template_and_renders_a_sample():
    r = TicketRenderer(store_name="店", store_phone="1")
    compiled = count_compiles(r)
    rendered = r.warm({(48, "text", "native"), (32, "image", "image")})
    assert sorted(compiled) == sorted(p.name for p in builtin_dir().glob("*.j2"))
    assert rendered == 4  # receipt and warm-tip card, for each format


def test_online_comes_after_the_warm_up(broker, tmp_path, store_id):
    cfg = parse_config(agent_config(tmp_path / "state", broker.port, 9, store_id))
    agent = Agent(cfg, printers={"counter": SlowToAnswerPrinter("counter")})
    compiled = count_compiles(agent.renderer)
    renders: list[str] = []
    render = agent.renderer.render

    def counting_render(document, ev, **kw):  # noqa: ANN001
        renders.append(document)
        return render(document, ev, **kw)

    agent.renderer.render = counting_render  # type: ignore[method-assign]
    at_link_start: dict = {}
    link_start = agent.link.start

    def start() -> None:  # what had happened when the agent began to connect (it reports `online` after)
        at_link_start.update(compiled=list(compiled), renders=list(renders),
                             states={n: w.status.state for n, w in agent.workers.items()})
        link_start()

    agent.link.start = start  # type: ignore[method-assign]
    agent.start()
    try:
        assert wait_until(lambda: agent.link.subscribed, 10)
    finally:
        agent.stop()
    assert set(at_link_start["compiled"]) >= {"receipt.j2", "warm_tip.j2", "slip.j2", "test_page.j2"}
    assert at_link_start["renders"] == ["receipt", "warm_tip"]  # one sample order, before any real one
    assert at_link_start["states"] == {"counter": "ready"}  # the printer's status known


def test_second_order_compiles_and_imports_nothing(broker, vprinter, make_agent, hq_factory, store_id):
    agent = make_agent(broker.port, vprinter.port, store_id)
    compiled = count_compiles(agent.renderer)
    hq = hq_factory(broker.port, store_id)
    hq.publish(order(1, "warm"))
    assert wait_until(lambda: len(hq.final()) == 1, 15)
    modules = set(sys.modules)
    hq.publish(order(2, "warm"))
    assert wait_until(lambda: len(hq.final()) == 2, 15)
    assert compiled == []  # not even the first order compiled: the warm-up did
    assert set(sys.modules) - modules == set()  # nothing imported for the second order


def test_warm_does_not_wait_for_custom_templates():
    r = TicketRenderer(store_name="店", store_phone="1", template_overrides={"receipt": "@center| 自定义\n@cut"})
    try:
        assert r.warm({(48, "text", "native")}) == 1  # the card; the custom receipt is the child's, later
        assert r.sandbox is not None and r.sandbox.spawned == 1  # started, not waited for
    finally:
        r.close()


def test_a_new_install_probes_before_online_and_a_restart_checks_ids_before_online(broker, vprinter, make_agent, store_id):
    """The first order after start finds the printer settled (issue 17: ≤ 100 ms publish → cut): on a new
    install the one probe, after a restart the check of the remembered ids, both before the subscription."""
    seen: list[tuple[bool, list]] = []

    def started(agent: Agent) -> Agent:
        link_start = agent.link.start

        def start() -> None:  # what had happened when the agent began to connect (`online` follows)
            seen.append((agent.workers["counter"].printer.settled, list(vprinter.ident_asked)))
            link_start()

        agent.link.start = start  # type: ignore[method-assign]
        agent.start()
        assert wait_until(lambda: agent.link.subscribed, 10)
        return agent

    first = started(make_agent(broker.port, vprinter.port, store_id, start=False))
    assert seen[0][0] is True  # probed before the agent connected
    assert {n for _, n in seen[0][1]} >= {1, 2, 3}  # the probe asked the ids (and the names)
    first.stop()
    asked = len(vprinter.ident_asked)
    started(make_agent(broker.port, vprinter.port, store_id, start=False))
    assert seen[1][0] is True  # the remembered printer checked before the agent connected
    assert [n for _, n in seen[1][1][asked:]] == [1, 2, 3]  # by its ids only: no names, no second probe


def test_an_order_is_parsed_once(broker, vprinter, make_agent, hq_factory, store_id, monkeypatch):
    """Intake's parsed event is the one the print worker renders (keyed by the payload's exact bytes):
    an order's JSON goes through pydantic once, not once more on the print thread."""
    from agent.messages import OrderEvent

    agent = make_agent(broker.port, vprinter.port, store_id)
    hq = hq_factory(broker.port, store_id)
    hq.publish(order(1, "once"))
    assert wait_until(lambda: len(hq.final()) == 1, 15)
    parses: list[bytes] = []
    original = OrderEvent.model_validate_json.__func__  # type: ignore[attr-defined]

    def counting(cls, data, **kw):  # noqa: ANN001, ANN003
        parses.append(bytes(data))
        return original(cls, data, **kw)

    monkeypatch.setattr(OrderEvent, "model_validate_json", classmethod(counting))
    hq.publish(order(2, "once"))
    assert wait_until(lambda: len(hq.final()) == 2, 15)
    assert len(parses) == 1  # intake's; the worker took it from agent.parsed
    assert len(agent.parsed._items) == 2


def test_parsed_events_hit_only_the_same_bytes_and_stay_bounded():
    import json

    from agent.messages import ParsedEvents, parse_event, parse_stored

    memo = ParsedEvents(size=3, max_bytes=4096)
    payloads = [json.dumps(order(i, "memo")).encode() for i in range(5)]
    events = [parse_event(p, 65536) for p in payloads]
    for p, ev in zip(payloads, events):
        memo.put(p, ev)
    assert [parse_stored(p, memo) is ev for p, ev in zip(payloads, events)] == [False, False, True, True, True]
    assert [parse_stored(p, memo) == ev for p, ev in zip(payloads, events)] == [True] * 5  # a miss parses again
    spaced = payloads[4].replace(b'", "', b'",  "', 1)  # the same event, other bytes: not the kept value
    assert spaced != payloads[4] and parse_stored(spaced, memo) is not events[4]
    big = json.dumps({**order(9, "memo"), "detail": {"note": "x" * 5000}}).encode()
    memo.put(big, parse_event(big, 65536))
    assert memo.get(big) is None and len(memo._items) == 3  # over max_bytes: not kept


def test_an_events_plain_form_is_made_once_for_its_tickets(monkeypatch):
    import json

    import agent.tickets as tickets
    from agent.messages import parse_event

    r = TicketRenderer(store_name="店", store_phone="1")
    ev = parse_event(json.dumps(order(1, "plain")).encode(), 65536)
    made: list[object] = []
    real = tickets.to_plain
    monkeypatch.setattr(tickets, "to_plain", lambda v: made.append(v) or real(v))
    receipt, card = r.render("receipt", ev, columns=48), r.render("warm_tip", ev, columns=48)
    again = r.render("receipt", ev, columns=48)
    assert made == [ev]  # once for the event's three renders
    other = parse_event(json.dumps(order(1, "plain")).encode(), 65536)  # equal, but another object: made again
    assert r.render("receipt", other, columns=48) == receipt == again
    assert made == [ev, other]
    fresh_r = TicketRenderer(store_name="店", store_phone="1")
    assert fresh_r.render("warm_tip", ev, columns=48) == card  # nothing of the first render leaked into the card


def test_a_printer_that_cannot_print_at_start_ends_the_warm_wait_with_its_state(broker, vprinter, make_agent, store_id, caplog):
    """Out of paper at start: its state is known in milliseconds and it cannot be probed until it can print, so the
    warm start does not wait its whole budget for a settling that cannot come (second review of issue 17)."""
    import logging

    vprinter.set_mode("paper_out")
    caplog.set_level(logging.INFO, logger="agent.app")
    agent = make_agent(broker.port, vprinter.port, store_id)
    assert agent.workers["counter"].status.state == "paper_out"
    assert not agent.workers["counter"].printer.settled  # probed later, once it can print
    assert not [r for r in caplog.records if "subscribing anyway" in r.getMessage()]


def test_with_sound_disabled_a_chime_is_answered_without_waking_the_sound_thread():
    """Sound off (sound.enabled = false): each order's chime and phrase are recorded as muted at once;
    nothing is queued for the sound thread, a phrase's file is never made, a waiter gets the reason."""
    from concurrent.futures import Future  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from agent.annunciator import Annunciator, SoundSettings  # noqa: PLC0415
    from test_review15 import FakeChime, NoAlerts  # noqa: PLC0415

    chime = FakeChime()
    ann = Annunciator(NoAlerts(), chime=chime, settings=SoundSettings(False, 0.8, "", 0.0))  # type: ignore[arg-type]
    made: list[int] = []
    ann.request("new_order")
    ann.speak("美团1号新订单", lambda: made.append(1) or Path("/nonexistent.wav"))
    done: Future = Future()
    ann.request("new_order", done)
    assert ann._sounds.qsize() == 0 and not made and not chime.played
    assert [(s, o) for _, s, o in ann.played] == [("new_order", "muted"), ("voice: 美团1号新订单", "muted"),
                                                   ("new_order", "muted")]
    assert done.result(0) == "muted: sound is disabled in the config (sound.enabled)"
    ann.settings = SoundSettings(True, 0.8, "", 0.0)  # switched on (remote config): queued for the thread again
    ann.request("new_order")
    assert ann._sounds.qsize() == 1


def test_the_control_socket_waits_without_polling_and_stops_at_once(tmp_path):
    """Idle CPU (issue 17): accept() blocks with no timeout, and stop() still ends the thread."""
    import json as _json  # noqa: PLC0415
    import socket  # noqa: PLC0415

    from agent.control import ControlServer  # noqa: PLC0415

    srv = ControlServer(tmp_path / "control.sock", lambda c, a: {"transaction": None, "status": "ok", "data": {"c": c}, "error": None})
    srv.start()
    try:
        assert srv._sock.gettimeout() is None
        with socket.socket(socket.AF_UNIX) as s:  # it still answers
            s.connect(str(srv.path))
            s.sendall(b'{"command": "status"}\n')
            assert _json.loads(s.makefile().readline())["data"] == {"c": "status"}
    finally:
        srv.stop()
    assert not srv._thread.is_alive()


def test_an_alert_change_wakes_the_leds_at_once(monkeypatch):
    """The sound thread looks at the alerts every QUIET_LOOK_S when idle; a raised alert pokes it."""
    from types import SimpleNamespace  # noqa: PLC0415

    from agent import annunciator as ann_mod  # noqa: PLC0415
    from agent.annunciator import Annunciator, SoundSettings  # noqa: PLC0415

    monkeypatch.setattr(ann_mod, "IDLE_LOOK_S", 60.0)
    monkeypatch.setattr(ann_mod, "QUIET_LOOK_S", 60.0)
    shown: list[str] = []
    led = SimpleNamespace(show=shown.append)
    alerts: list = []
    book = SimpleNamespace(open_alerts=lambda: list(alerts))
    ann = Annunciator(book, chime=None, settings=SoundSettings(False, 0.8, "", 0.0), exception_led=led)  # type: ignore[arg-type]
    ann.start()
    try:
        assert wait_until(lambda: shown[-1:] == ["off"], 5)
        alerts.append(SimpleNamespace(device_fault=True, acknowledged=False, repeat_s=0, id="printer:x:paper_out"))
        ann.poke()
        assert wait_until(lambda: shown[-1:] == ["on"], 5), shown  # not 60 s later
    finally:
        ann.stop()


def test_alert_pokes_never_crowd_out_a_chime():
    """Review finding: pokes went through the bounded sound queue; a burst of alert changes while a
    chime plays dropped the next order's chime. At most one poke waits now, in its own slot."""
    import threading  # noqa: PLC0415

    from agent.annunciator import MAX_SOUNDS  # noqa: PLC0415

    release, playing, played = threading.Event(), threading.Event(), []
    ann = held_sound_thread(release, playing, played)
    ann.start()
    try:
        ann.request("new_order")
        assert playing.wait(5)
        for _ in range(200):  # alerts changing while the chime plays
            ann.poke()
        for _ in range(MAX_SOUNDS):
            ann.request("new_order")
        assert ann._sounds.qsize() == MAX_SOUNDS + 1  # every chime kept, and one poke
        release.set()
        assert wait_until(lambda: len(played) == MAX_SOUNDS + 1, 10)
    finally:
        release.set()
        ann.stop()


def test_stop_ends_the_idle_wait_and_an_alert_pokes_the_leds(broker, vprinter, make_agent, store_id, monkeypatch):
    """The agent's wiring: an alert published pokes the sound thread; stop() does not wait for the idle look."""
    from agent import annunciator as ann_mod  # noqa: PLC0415

    monkeypatch.setattr(ann_mod, "IDLE_LOOK_S", 30.0)
    monkeypatch.setattr(ann_mod, "QUIET_LOOK_S", 30.0)
    agent = make_agent(broker.port, vprinter.port, store_id)
    pokes: list[int] = []
    poke = agent.annunciator.poke
    monkeypatch.setattr(agent.annunciator, "poke", lambda: (pokes.append(1), poke()))
    agent.alerts.raise_("test:x", "agent.test", "测试", needs_ack=True)
    assert pokes
    ann = agent.annunciator
    assert wait_until(lambda: not ann._poke_pending and ann._sounds.qsize() == 0, 5)  # the poke was looked at
    time.sleep(0.3)  # the thread is back in its idle wait
    t0 = time.monotonic()
    agent.annunciator.stop()
    assert not agent.annunciator._thread.is_alive() and time.monotonic() - t0 < 5  # not the 30 s idle look


def test_the_request_desk_waits_without_waking_and_stops_at_once():
    """Idle CPU (issue 17): the request thread sleeps on its condition with no timeout (it woke twice a
    second), and stop() still ends it at once."""
    from pathlib import Path  # noqa: PLC0415

    from agent.requests import RequestDesk  # noqa: PLC0415

    class NoAgent:  # the desk reads nothing more of its agent until something is offered
        cfg = topics = None

    desk = RequestDesk(NoAgent())
    desk.start()
    try:
        assert wait_until(lambda: desk._thread.native_id is not None, 5)
        status = Path(f"/proc/self/task/{desk._thread.native_id}/status")

        def switches() -> int:
            return sum(int(line.split()[1]) for line in status.read_text().splitlines() if "ctxt_switches" in line)

        time.sleep(0.3)
        before = switches()
        time.sleep(1.6)  # a 0.5 s timed wait would wake three times here
        assert switches() - before == 0
    finally:
        t0 = time.monotonic()
        desk.stop()
        desk._thread.join(5)
    assert not desk._thread.is_alive() and time.monotonic() - t0 < 1.0


def test_the_sound_thread_looks_every_second_only_while_an_alert_repeats(monkeypatch):
    """Idle CPU (issue 17): with no unacknowledged repeating alert the sound thread sleeps QUIET_LOOK_S; one
    raised (a poke) brings back the look every IDLE_LOOK_S that its repeats need; acknowledged, it sleeps again."""
    from types import SimpleNamespace  # noqa: PLC0415

    from agent import annunciator as ann_mod  # noqa: PLC0415
    from agent.annunciator import Annunciator, SoundSettings  # noqa: PLC0415

    monkeypatch.setattr(ann_mod, "IDLE_LOOK_S", 0.2)
    monkeypatch.setattr(ann_mod, "QUIET_LOOK_S", 60.0)
    alerts: list = []
    looks: list[float] = []
    book = SimpleNamespace(open_alerts=lambda: looks.append(time.monotonic()) or list(alerts))
    ann = Annunciator(book, chime=None, settings=SoundSettings(False, 0.8, "", 0.0))  # type: ignore[arg-type]
    ann.start()
    try:
        assert wait_until(lambda: looks, 5)
        time.sleep(0.3)
        n = len(looks)
        time.sleep(1.5)
        assert len(looks) == n  # quiet: no look in 1.5 s (it was one every 0.2 s)
        alert = SimpleNamespace(device_fault=False, acknowledged=False, repeat_s=30, id="order:x", since=time.time(),
                                sound="urgent")
        alerts.append(alert)
        ann.poke()
        assert wait_until(lambda: len(looks) >= n + 5, 5)  # repeats are due on time again
        alert.acknowledged = True
        ann.poke()
        assert wait_until(lambda: not ann._repeats, 5)
        time.sleep(0.3)
        n = len(looks)
        time.sleep(1.5)
        assert len(looks) == n
    finally:
        ann.stop()


def test_a_waiting_sound_thread_is_alive_and_a_hung_chime_is_not(monkeypatch):
    """The watchdog's view (housekeeping withholds the systemd ping when a heartbeat is older than
    health.stuck_after_s, which may be 3 s): a thread asleep on its queue is alive however long it sleeps;
    one stuck in a chime is not."""
    import threading  # noqa: PLC0415

    from agent import annunciator as ann_mod  # noqa: PLC0415

    monkeypatch.setattr(ann_mod, "QUIET_LOOK_S", 60.0)
    release, playing = threading.Event(), threading.Event()
    ann = held_sound_thread(release, playing)  # its chime hangs until released
    ann.start()
    try:
        time.sleep(2.0)  # asleep on the queue (60 s look)
        assert time.monotonic() - ann.heartbeat < 1.0
        ann.request("new_order")
        assert playing.wait(5)
        time.sleep(2.0)
        assert time.monotonic() - ann.heartbeat > 1.5  # stuck in play(): stale
        release.set()
        assert wait_until(lambda: time.monotonic() - ann.heartbeat < 1.0, 5)  # back to its wait: alive
    finally:
        release.set()
        ann.stop()


def test_a_broker_link_change_pokes_the_leds(broker, vprinter, make_agent, store_id, monkeypatch):
    """The status LED shows the broker link; with the quiet look it would lag 10 s unless the link change pokes."""
    agent = make_agent(broker.port, vprinter.port, store_id)
    pokes: list[int] = []
    poke = agent.annunciator.poke
    monkeypatch.setattr(agent.annunciator, "poke", lambda: (pokes.append(1), poke()))
    agent._on_connection(False)
    assert pokes


def test_the_agent_hears_of_every_link_change_even_when_the_callback_fails_midway(monkeypatch):
    """Review finding: with the sound thread's 10 s quiet look, the status LED follows the broker link through
    on_connection alone; a subscribe that raises after `connected` was set, or a disconnect explanation that
    raises, must not swallow that call. (A paho client failing that way cannot be made with a real broker.)"""
    from types import SimpleNamespace  # noqa: PLC0415

    from agent.mqtt import MqttLink, MqttSettings  # noqa: PLC0415

    heard: list[bool] = []
    link = MqttLink(MqttSettings("127.0.0.1", 1, "t-1"), subscriptions=["stores/x/orders"], status_topic="stores/x/status",
                    handler=lambda m: None, on_connection=heard.append)

    def broken(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise OSError("socket gone")

    client = SimpleNamespace(backoff=SimpleNamespace(reset=lambda: None), subscribe=broken, publish=broken)
    link._on_connect(client, None, SimpleNamespace(session_present=True), SimpleNamespace(is_failure=False), None)
    assert link.connected and heard == [True]
    monkeypatch.setattr(link, "_explain_disconnect", broken)
    link._on_disconnect(client, None, None, SimpleNamespace(is_failure=True), None)
    assert not link.connected and heard == [True, False]


def held_sound_thread(release, playing, played=None):  # noqa: ANN001, ANN201
    """A sound thread with nothing alerting and a chime that holds in play() until ``release`` is set."""
    from types import SimpleNamespace  # noqa: PLC0415

    from agent.annunciator import Annunciator, SoundSettings  # noqa: PLC0415

    class HeldChime:
        def play(self, path, volume):  # noqa: ANN001, ANN201
            if played is not None:
                played.append(path)
            playing.set()
            release.wait(30)
            return "held"

    return Annunciator(SimpleNamespace(open_alerts=lambda: []), chime=HeldChime(),  # type: ignore[arg-type]
                       settings=SoundSettings(True, 0.8, "", 0.0))
