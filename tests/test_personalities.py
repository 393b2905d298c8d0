"""The printers stores actually have, end to end through the real broker (issue 14).

The virtual printer plays each personality (drivers/vprinter.py PERSONALITIES): an Epson that answers
everything and names itself, a clone that never answers GS r, a write-only one, one without a cutter,
one whose font holds GBK only, a slow one. For each: every order on paper exactly once, extra copies
only marked 补打; the probe identifies it; the profile changes columns, QR and cut as documented.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import example, fresh, order, wait_until
from drivers.vprinter import VirtualPrinter
from tickets_util import check_exactly_once, tickets

# what the agent must conclude for each personality (README: "The printers stores have")
EXPECT = {
    "generic": {"confirm": "gs_r", "cutter": True, "profile": "default", "profile_source": "paper width", "columns": 48, "cut": True},
    "epson": {"confirm": "gs_r", "cutter": True, "model": "EPSON TM-T88V", "profile": "TM-T88V", "profile_source": "probe",
              "columns": 42, "cut": True, "qr": "native"},
    "clone": {"confirm": "unsupported", "cutter": True, "profile": "default", "cut": True},
    "write_only": {"confirm": "off", "status_answers": None, "cutter": None, "profile": "default", "cut": True},
    "no_cutter": {"confirm": "unsupported", "cutter": False, "cut": False},
    "gbk": {"confirm": "unsupported", "cutter": True},
    "slow": {"confirm": "gs_r", "model": "EPSON TM-T20II", "profile": "TM-T20II", "columns": 48},
}


@pytest.fixture(autouse=True)
def quick_reprobe(monkeypatch):
    """An unanswered GS r is asked again every 0.3 s here (5 s in the agent): a clone is decided quickly."""
    from drivers.printers import StreamPrinter

    monkeypatch.setattr(StreamPrinter, "REPROBE_S", 0.3)


def printer_over(personality: str) -> dict:
    over: dict = {}
    if personality == "write_only":
        over["status_query"] = False  # silence is never taken for a capability: a person says so
    if personality == "gbk":
        over["charset"] = "gbk"
    if personality == "slow":
        over["timeout_s"] = 3.0  # long enough for a ticket to come out at 80 mm/s
    return over


def named_order(n: int, tag: str, name: str) -> dict:
    ev = order(n, tag)
    ev["order"]["customer"]["name"] = name
    return ev


@pytest.mark.parametrize("personality", list(EXPECT))
def test_each_personality_prints_every_order_once(broker, make_agent, hq_factory, store_id, personality):
    with VirtualPrinter(personality=personality) as vp:
        hq = hq_factory(broker.port, store_id)
        p = {"name": "counter", "connection": "network", "host": "127.0.0.1", "port": vp.port, "timeout_s": 1.0,
             **printer_over(personality)}
        agent = make_agent(broker.port, vp.port, store_id, printers=[p])
        events = [named_order(i, personality[:2], "王䶮" if i % 2 else "喆*") for i in range(6)]
        for ev in events:
            hq.publish(ev)
        assert wait_until(lambda: len(hq.final()) == len(events), 60), (hq.results(), agent.journal.open_jobs())
        ids = [e["order"]["id"] for e in events]
        stats = check_exactly_once(vp, ids)
        check_exactly_once(vp, ids, "warm_tip")
        assert stats["first_copies_marked"] == 0 and stats["extra_marked_copies"] == 0, stats
        want_confirm = EXPECT[personality]["confirm"]
        assert wait_until(lambda: agent.printer_facts.view("counter")["confirm"] == want_confirm, 15), \
            agent.printer_facts.view("counter")
        view = agent.printer_facts.view("counter")
        for key, want in EXPECT[personality].items():
            assert view[key] == want, (key, view)
        health = agent.housekeeper.health().model_dump(mode="json")["printers"][0]
        assert health["capabilities"]["confirm"] == EXPECT[personality]["confirm"]
        assert health["paper"]["used_m"] > 0 and health["paper"]["tickets_left"] > 100
        texts = vp.texts()
        if personality == "no_cutter":
            assert vp.cuts_ignored == 0 and all(j.job.torn and not j.job.cut for j in vp.jobs)  # fed to tear, never cut
        else:
            assert all(j.job.cut for j in vp.jobs)
        if personality == "gbk":
            assert not any("?" in t for t in texts)  # 䶮 is not in GBK: its line came as an image, not as '?'
            images = [line for j in vp.jobs for line in j.job.lines if line.kind == "image"]
            assert images and not any("䶮" in t for t in texts)
        else:
            assert any("䶮" in t for t in texts) and any("喆" in t for t in texts)
        if personality == "epson":  # 42 columns from its profile: no printed line is wider
            from drivers.preview import display_width

            assert max(display_width(line.text) * line.width for j in vp.jobs for line in j.job.lines) <= 42
        if personality == "slow":
            assert view["print_s"] and view["print_s"] > 0.3  # the printer's own pace, from send to GS r


def test_a_clone_that_never_confirms_prints_each_ticket_once_not_every_5_seconds(broker, make_agent, hq_factory, store_id):
    """The reported bug: confirm = gs_r forced on a clone reprinted the same receipt every few seconds. Now
    auto does not wait for GS r there; forced, it reprints at most once (补打) and then asks the store."""
    with VirtualPrinter(personality="clone") as vp:
        hq = hq_factory(broker.port, store_id)
        p = {"name": "counter", "connection": "network", "host": "127.0.0.1", "port": vp.port, "timeout_s": 0.5, "confirm": "gs_r"}
        agent = make_agent(broker.port, vp.port, store_id, printers=[p], print={"retry_s": 0.2})
        ev = order(1, "cl")
        hq.publish(ev)
        assert wait_until(lambda: len(hq.final("failed")) == 1, 30), hq.results()
        time.sleep(3)  # nothing more comes out while nobody looks
        receipts = tickets(vp)
        assert receipts == [(ev["order"]["id"], False), (ev["order"]["id"], True)]  # the first, one 补打, no more
        alerts = [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("alerts")]
        ask = [a for a in alerts if a["code"] == "printer.uncertain"]
        assert ask and "请查看打印机是否已出单" in ask[0]["message"] and ask[0]["order_id"] == ev["order"]["id"]
        assert ask[0]["audience"] == "store"


def test_paper_forecast_within_10_percent_over_300_mixed_tickets(broker, make_agent, hq_factory, store_id):
    with VirtualPrinter() as vp:
        hq = hq_factory(broker.port, store_id)
        agent = make_agent(broker.port, vp.port, store_id)
        events, n = [], 0
        while sum(2 if e["type"] == "order.created" else 1 for e in events) < 300:
            n += 1
            if n % 5 == 0:  # exception slips between the orders
                ev = fresh(example("rider-unassigned.json"))
                ev["id"] = f"evt-slip-{n}"
            else:
                ev = order(n, "pf")
                ev["order"]["items"] = ev["order"]["items"] * (1 + n % 4)  # short and long receipts
            events.append(ev)
        for ev in events:
            hq.publish(ev)
        assert wait_until(lambda: len(hq.final()) == len(events), 180), len(hq.final())
        assert len(vp.jobs) >= 300
        counted = agent.workers["counter"].paper_mm
        assert abs(counted - vp.paper_mm) <= 0.1 * vp.paper_mm, (counted, vp.paper_mm)
        f = agent.printer_facts.forecast("counter")
        print(f"300+ tickets: agent counted {counted / 1000:.2f} m, printer {vp.paper_mm / 1000:.2f} m; forecast {f}")
        assert f["left_m"] == pytest.approx(50 - counted / 1000, abs=0.01)
