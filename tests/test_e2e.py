"""The whole path with real parts: mosquitto -> agent -> virtual ESC/POS network printer."""

import json
import random
import time

import pytest

from agent.journal import LAZY_S
from agent.messages import sha256_hex
from conftest import example, example_events, fresh, order, set_max_pages, wait_until
from tickets_util import check_exactly_once, tickets


def test_every_example_prints(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id)
    events = [fresh(e) for e in example_events()]
    for ev in events:
        hq.publish(ev)
    ids = [e["id"] for e in events]
    assert wait_until(lambda: set(hq.final()) >= set(ids)), hq.results()
    by = {}
    for r in hq.results():
        by.setdefault(r["event_id"], []).append(r["status"])
    assert all(by[i] == ["queued", "printed"] for i in ids), by
    final = hq.final()
    assert final["evt-0001"]["documents"] == ["receipt", "warm_tip"] and final["evt-0001"]["printer"] == "counter"
    assert final["evt-0003"]["documents"] == ["slip"]
    assert vprinter.wait_jobs(6)
    texts = vprinter.texts()
    assert len(texts) == 6
    created = [e for e in events if e["type"] == "order.created"]
    assert sorted(o for o, _ in tickets(vprinter, "receipt")) == sorted(e["order"]["id"] for e in created)
    assert sorted(o for o, _ in tickets(vprinter, "warm_tip")) == sorted(e["order"]["id"] for e in created)
    assert any("长时间无骑手接单" in t and "15分钟无骑手接单" in t for t in texts)
    assert any("缺货" in t and "需要2 实有1" in t for t in texts)
    assert "online" in hq.statuses()


def test_queued_result_within_one_second(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id)
    vprinter.set_mode("paper_out")  # nothing can print: the queued result must still come at once
    t0 = time.monotonic()
    hq.publish(fresh(example("order-created-meituan.json")))
    assert wait_until(lambda: any(r["status"] == "queued" for r in hq.results()), 1.0)
    print(f"queued result after {1000 * (time.monotonic() - t0):.1f} ms")
    time.sleep(1.5)
    assert not hq.final("printed")
    vprinter.set_mode("ready")
    assert wait_until(lambda: "evt-0001" in hq.final())


def test_burst_of_200_prints_each_once_in_order(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id)
    events = [order(i, "b") for i in range(200)]
    for ev in events:
        hq.publish(ev)
    assert wait_until(lambda: len(hq.final()) == 200, 60), len(hq.final())
    ids = [e["order"]["id"] for e in events]
    stats = check_exactly_once(vprinter, ids)
    check_exactly_once(vprinter, ids, "warm_tip")
    assert [o for o, _ in tickets(vprinter)] == ids  # FIFO
    assert stats["extra_marked_copies"] == 0


def test_duplicates_print_nothing_more(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id)
    ev = fresh(example("order-created-meituan.json"))
    hq.publish(ev)
    assert wait_until(lambda: "evt-0001" in hq.final())
    hq.publish(ev)  # same event id: its current status again, not a duplicate (HQ's last word stays true)
    again = dict(ev, id="evt-0001-again")  # same order, new event id: a duplicate naming the first
    hq.publish(again)
    assert wait_until(lambda: len(hq.final("duplicate")) == 1)
    dup = hq.final("duplicate")
    assert "evt-0001" in dup["evt-0001-again"]["error"] and not dup["evt-0001-again"]["redelivered"]
    answers = [r for r in hq.results() if r["event_id"] == "evt-0001"]
    assert [(r["status"], r["redelivered"]) for r in answers] == [("queued", False), ("printed", False), ("printed", True)]
    time.sleep(0.5)
    assert len(vprinter.jobs) == 2


def test_malformed_payloads_are_rejected_and_the_agent_carries_on(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id)
    good = fresh(example("order-created-meituan.json"))
    bad_qty = json.loads(json.dumps(good))
    bad_qty["id"] = "evt-bad-qty"
    bad_qty["order"]["items"][0]["qty"] = 0
    no_id = dict(good)
    no_id.pop("id")
    payloads = [
        b"not json at all",
        b"\xff\xfe\xfd",
        b"[]",
        json.dumps(bad_qty).encode(),
        json.dumps(no_id).encode(),
        json.dumps(dict(good, type="order.unknown", id="evt-bad-type")).encode(),
        b'{"v":1,"id":"big","pad":"' + b"x" * (1024 * 1024) + b'"}',
    ]
    for p in payloads:
        hq.publish(p)
    hq.publish(good)
    assert wait_until(lambda: "evt-0001" in hq.final(), 20)
    rejected = [r for r in hq.results() if r["status"] == "rejected"]
    assert len(rejected) == len(payloads)
    assert {r["payload_sha256"] for r in rejected} == {sha256_hex(p) for p in payloads}
    by_sha = {r["payload_sha256"]: r for r in rejected}
    assert "qty" in by_sha[sha256_hex(payloads[3])]["error"] and by_sha[sha256_hex(payloads[3])]["event_id"] == "evt-bad-qty"
    assert "too large" in by_sha[sha256_hex(payloads[6])]["error"]
    assert by_sha[sha256_hex(payloads[0])]["event_id"] is None
    kept = agent.journal._read("SELECT sha256, size, length(payload) FROM rejected")
    assert len(kept) == len(payloads)
    assert max(k[2] for k in kept) <= 65536 and max(k[1] for k in kept) > 1024 * 1024
    assert len(vprinter.jobs) == 2


def test_expired_order_is_kept_not_printed(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id)
    ev = example("order-created-meituan.json")
    ev["order"]["expires_at"] = "2020-01-01T00:00:00+08:00"
    hq.publish(ev)
    assert wait_until(lambda: "evt-0001" in hq.final("expired"))
    assert agent.journal.event_status("evt-0001") == "expired"
    time.sleep(0.3)
    assert vprinter.jobs == []


def test_orders_published_while_stopped_print_on_start(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    first = make_agent(broker.port, vprinter.port, store_id)
    first.stop()
    assert wait_until(lambda: "stopped" in hq.statuses())
    events = [order(i, "off") for i in range(10)]
    for ev in events:
        hq.publish(ev)
    time.sleep(0.3)
    assert vprinter.jobs == []
    make_agent(broker.port, vprinter.port, store_id)
    assert wait_until(lambda: len(hq.final()) == 10, 30)
    check_exactly_once(vprinter, [e["order"]["id"] for e in events])


def test_broker_restart_mid_burst(own_broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(own_broker.port, store_id)
    agent = make_agent(own_broker.port, vprinter.port, store_id)
    events = [order(i, "r") for i in range(100)]
    for ev in events:
        hq.publish(ev)
    assert wait_until(lambda: len(vprinter.jobs) >= 20, 30)
    own_broker.restart()
    assert wait_until(lambda: agent.link.connects >= 2, 30)
    ids = [e["order"]["id"] for e in events]
    assert wait_until(lambda: len({o for o, _ in tickets(vprinter)}) == 100, 60)
    check_exactly_once(vprinter, ids)
    check_exactly_once(vprinter, ids, "warm_tip")
    done = lambda: {r[0] for r in agent.journal._read("SELECT event_id FROM events WHERE status='printed'")}
    assert wait_until(lambda: done() == {e["id"] for e in events}, 20), agent.journal._read("SELECT event_id, status FROM events WHERE status != 'printed'")


def test_paper_out_mid_burst(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id)
    events = [order(i, "p") for i in range(40)]
    vprinter.run_out_after(7)  # the paper ends in the middle of the 8th ticket
    for ev in events[:20]:
        hq.publish(ev)
    assert wait_until(lambda: vprinter.mode == "paper_out", 20)
    time.sleep(LAZY_S + 0.5)  # the outcomes of what printed before the paper ended are committed (lazily) and sent
    printed_at_switch = len(hq.final())
    for ev in events[20:]:
        hq.publish(ev)
    time.sleep(2.0)
    assert len(hq.final()) == printed_at_switch  # nothing marked printed while out
    assert len(vprinter.jobs) == 7 and len(vprinter.discarded) >= 1
    for r in hq.final().values():  # every 'printed' result has its paper
        assert r["order_id"] in {o for o, _ in tickets(vprinter)}
    vprinter.set_mode("ready")
    ids = [e["order"]["id"] for e in events]
    assert wait_until(lambda: len(hq.final()) == 40, 60)
    check_exactly_once(vprinter, ids)
    assert [o for o, _ in tickets(vprinter)] == ids  # in order after paper returns
    # the ticket lost with the paper end (the 8th: order 3's warm-tip card) is reprinted, marked 补打
    assert ("MT-p00003", True) in tickets(vprinter, "warm_tip")
    assert tickets(vprinter)[3] == ("MT-p00003", False)


def test_full_journal_is_never_acked(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id, intake={"redeliver_s": 1.0})
    set_max_pages(agent.journal)  # SQLITE_FULL on the next growth
    big = fresh(example("order-created-meituan.json"))
    rng = random.Random(7)  # random characters: the journal stores payloads compressed
    big["order"]["note"] = "".join(chr(rng.randrange(0x4E00, 0x9FA5)) for _ in range(6000))  # ~18 KiB, over a free page
    hq.publish(big)
    time.sleep(3.0)
    assert hq.results() == [] and vprinter.jobs == []  # not stored, not acked, not answered
    alerts = lambda: [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("alerts")]  # noqa: E731
    assert wait_until(lambda: any(a["code"] == "agent.journal_failed" and a["state"] == "escalated" for a in alerts()), 10)
    set_max_pages(agent.journal, 1073741823)  # space again
    assert wait_until(lambda: "evt-0001" in hq.final(), 30)  # the broker redelivered it
    assert agent.link.connects >= 2
    assert wait_until(lambda: any(a["code"] == "agent.journal_failed" and a["state"] == "cleared" for a in alerts()), 10)


def test_hung_printer_never_blocks_intake(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id)
    vprinter.set_mode("hang")
    events = [order(i, "h") for i in range(5)]
    t0 = time.monotonic()
    for ev in events:
        hq.publish(ev)
    assert wait_until(lambda: len([r for r in hq.results() if r["status"] == "queued"]) == 5, 2.0)
    print(f"5 orders queued in {1000 * (time.monotonic() - t0):.0f} ms with a hung printer")
    time.sleep(1.5)
    assert not hq.final()
    vprinter.set_mode("ready")
    assert wait_until(lambda: len(hq.final()) == 5, 30)
    check_exactly_once(vprinter, [e["order"]["id"] for e in events])
