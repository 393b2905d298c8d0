"""Rules -> tickets, chimes, LEDs and alerts, on real outputs: the virtual printer, ALSA's file
plugin, gpiozero mock pins and the alerts topic on a real mosquitto."""

import json
import time

import pytest

from agent.messages import EVENT_TYPES
from agent.rules import DEFAULT_RULES, alert_code
from conftest import example, fresh, wait_until


def test_every_event_type_has_a_rule():
    assert set(DEFAULT_RULES) == set(EVENT_TYPES)


def alerts_of(hq):
    return [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("alerts")]


def event(t, oid="MT-8812345678901", **detail):
    ev = example("rider-unassigned.json")
    ev.update(type=t, id=f"evt-{t}-{time.monotonic_ns()}", detail=detail)
    ev["order"]["id"] = oid
    return ev


@pytest.fixture
def noisy_agent(broker, vprinter, make_agent, hq_factory, store_id, alsa_file):
    def make(**over):
        hq = hq_factory(broker.port, store_id)
        over.setdefault("sound", {"enabled": True, "volume": 1.0})
        over.setdefault("gpio", {"enabled": True, "pin_factory": "mock"})
        agent = make_agent(broker.port, vprinter.port, store_id, **over)
        return agent, hq

    return make


def test_exception_event_prints_chimes_blinks_and_alerts(noisy_agent, vprinter, alsa_file):
    agent, hq = noisy_agent()
    alsa_file.write_bytes(b"")
    hq.publish(event("rider.unassigned", minutes=15))
    assert vprinter.wait_jobs(1)
    assert "长时间无骑手接单" in vprinter.texts()[0]
    assert wait_until(lambda: any(a["code"] == "order.rider_unassigned" for a in alerts_of(hq)))
    raised = alerts_of(hq)[0]
    assert raised["state"] == "raised" and raised["audience"] == "store" and raised["order_id"] == "MT-8812345678901"
    assert raised["severity"] == "critical" and raised["id"].startswith("order:MT-8812345678901:")
    assert wait_until(lambda: any(s == "urgent" and o == "simpleaudio" for _, s, o in agent.annunciator.played))
    assert wait_until(lambda: alsa_file.stat().st_size > 10000)  # the urgent chime's samples reached ALSA
    exc_pin = agent.pin_factory.pin(17)
    assert wait_until(lambda: agent.annunciator.exception_led.pattern == "blink")
    time.sleep(0.8)
    assert {s.state for s in exc_pin.states[-4:]} == {True, False}  # really blinking
    assert agent.pin_factory.pin(27).state  # status LED steady: broker connected
    changed = agent.acknowledge()
    assert [a.state for a in changed] == ["acknowledged"]
    assert wait_until(lambda: any(a["state"] == "acknowledged" for a in alerts_of(hq)))
    assert wait_until(lambda: agent.annunciator.exception_led.pattern == "off")
    assert wait_until(lambda: not exc_pin.state)


def test_new_order_chimes_without_an_alert(noisy_agent, vprinter):
    agent, hq = noisy_agent()
    hq.publish(fresh(example("order-created-meituan.json")))
    assert vprinter.wait_jobs(2)
    assert wait_until(lambda: any(s == "new_order" for _, s, _ in agent.annunciator.played))
    time.sleep(0.3)
    assert alerts_of(hq) == []


@pytest.mark.parametrize("t", [t for t in EVENT_TYPES if t != "order.created"])
def test_each_event_type_does_what_its_rule_says(noisy_agent, vprinter, t):
    agent, hq = noisy_agent(gpio={"enabled": False})
    rule = DEFAULT_RULES[t]
    hq.publish(event(t, minutes=5))
    if rule.documents:
        assert vprinter.wait_jobs(len(rule.documents))
    if rule.sound != "none":
        assert wait_until(lambda: any(s == rule.sound for _, s, _ in agent.annunciator.played)), t
    if rule.ack:
        assert wait_until(lambda: any(a["code"] == alert_code(t) and a["state"] == "raised" for a in alerts_of(hq))), t
    else:
        time.sleep(0.3)
        assert not alerts_of(hq), t
    assert wait_until(lambda: len(hq.final("printed")) == 1)
    assert len(vprinter.jobs) == len(rule.documents)


def test_unacknowledged_alert_repeats_until_acknowledged(noisy_agent):
    agent, hq = noisy_agent(rules={"stock.short": {"repeat_s": 1}})
    hq.publish(event("stock.short", sku="1", name="x", wanted=2, available=1))
    plays = lambda: [p for p in agent.annunciator.played if p[1] == "urgent"]
    assert wait_until(lambda: len(plays()) >= 3, 10)
    agent.acknowledge()
    time.sleep(0.5)
    n = len(plays())
    time.sleep(2.5)
    assert len(plays()) == n  # no more repeats


def test_quiet_hours_mute_the_chime_not_the_light(noisy_agent, alsa_file):
    agent, hq = noisy_agent(sound={"enabled": True, "quiet_hours": "00:00-23:59"})
    agent.annunciator.local_now = lambda: __import__("datetime").datetime(2026, 11, 22, 12, 0)
    alsa_file.write_bytes(b"")
    hq.publish(event("rider.cancelled"))
    assert wait_until(lambda: any(s == "urgent" and o == "muted" for _, s, o in agent.annunciator.played))
    assert alsa_file.stat().st_size == 0
    assert wait_until(lambda: agent.annunciator.exception_led.pattern == "blink")


def test_audio_failure_is_an_alert_and_orders_keep_printing(noisy_agent, vprinter):
    agent, hq = noisy_agent(sound={"enabled": True, "device": "hw:63"})
    hq.publish(fresh(example("order-created-meituan.json")))
    assert wait_until(lambda: any(a["code"] == "audio.failed" and a["state"] == "raised" for a in alerts_of(hq)))
    assert vprinter.wait_jobs(2)
    assert wait_until(lambda: len(hq.final("printed")) == 1)
    assert agent.annunciator.audio_state == "failed"
    assert wait_until(lambda: agent.annunciator.exception_led.pattern == "on")  # a device fault: solid


def test_shipping_the_order_clears_its_alerts(noisy_agent):
    agent, hq = noisy_agent()
    hq.publish(event("rider.unassigned", minutes=15))
    assert wait_until(lambda: any(a["state"] == "raised" for a in alerts_of(hq)))
    hq.publish(event("order.dispatched"))
    assert wait_until(lambda: any(a["state"] == "cleared" for a in alerts_of(hq)))
    assert agent.alerts.open_alerts() == []


def test_unacknowledged_alert_is_escalated(noisy_agent):
    agent, hq = noisy_agent(rules={"rx.pending": {"escalate_after_s": 1}})
    hq.publish(event("rx.pending", stage="开方中"))
    assert wait_until(lambda: any(a["state"] == "escalated" and a["audience"] == "infodept" for a in alerts_of(hq)), 10)


def test_open_alerts_survive_a_restart(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    first = make_agent(broker.port, vprinter.port, store_id)
    hq.publish(event("stock.short", sku="1", name="x", wanted=2, available=1))
    assert wait_until(lambda: len(first.alerts.open_alerts()) == 1)
    first.stop()
    second = make_agent(broker.port, vprinter.port, store_id)
    assert [a.code for a in second.alerts.open_alerts()] == ["order.stock_short"]


def test_button_press_acknowledges_and_long_press_prints_a_test_page(noisy_agent, vprinter):
    agent, hq = noisy_agent(gpio={"enabled": True, "pin_factory": "mock", "hold_s": 0.3})
    hq.publish(event("order.urged"))
    assert wait_until(lambda: any(a["state"] == "raised" for a in alerts_of(hq)))
    btn = agent.pin_factory.pin(22)
    btn.drive_low()
    time.sleep(0.05)
    btn.drive_high()
    assert wait_until(lambda: any(a["state"] == "acknowledged" for a in alerts_of(hq)))
    jobs_before = len(vprinter.jobs)
    btn.drive_low()
    time.sleep(0.6)
    btn.drive_high()
    assert vprinter.wait_jobs(jobs_before + 1)
    assert "打印测试页" in vprinter.texts()[-1]
    time.sleep(0.3)
    assert not any(r["event_id"] and r["event_id"].startswith("agent-") for r in hq.results())


def test_status_led_blinks_slowly_while_the_broker_is_unreachable(own_broker, vprinter, make_agent, store_id, monkeypatch):
    from agent import annunciator as ann_mod  # noqa: PLC0415

    monkeypatch.setattr(ann_mod, "QUIET_LOOK_S", 60.0)  # only the link change's poke can move the LED in time
    agent = make_agent(own_broker.port, vprinter.port, store_id, gpio={"enabled": True, "pin_factory": "mock"})
    assert wait_until(lambda: agent.annunciator.status_led.pattern == "on")
    own_broker.stop()
    assert wait_until(lambda: agent.annunciator.status_led.pattern == "slow_blink", 10)
    own_broker.start()
    assert wait_until(lambda: agent.annunciator.status_led.pattern == "on", 15)


def test_audio_failure_shows_in_health(noisy_agent):
    agent, hq = noisy_agent(sound={"enabled": True, "device": "hw:63"})
    agent.annunciator.request("new_order")
    health = lambda: [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("health")]
    assert wait_until(lambda: any(h["audio"]["state"] == "failed" for h in health()), 10)
    h = health()[-1]
    assert h["alerts_open"] >= 1 and h["store_id"] == agent.cfg.store_id and h["printers"][0]["name"] == "counter"
