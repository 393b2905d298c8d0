"""The store's day in figures (issue 15): every figure of the report equals what the test sent and caused,
read back through `store-agent report --json`, the printed slip and the retained P/S/stats."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import date, datetime, timedelta, timezone

from agent.stats import ReportSchedule, period
from conftest import ROOT, agent_config, example, fresh, order, wait_until, write_toml


def cli(cfg_file, *args):  # noqa: ANN001, ANN201
    return subprocess.run([sys.executable, "-m", "agent.cli", *args, "--config", str(cfg_file)], capture_output=True,
                          text=True, cwd=ROOT, timeout=90)


def eleme(n: int) -> dict:
    ev = fresh(example("order-created-eleme-rx.json"))
    ev["id"], ev["order"]["id"] = f"evt-el-{n}", f"EL-{n}"
    return ev


def test_a_day_of_mixed_events_adds_up(tmp_path, broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id, report={"daily_at": "", "publish_s": 10},
                       health={"printer_poll_s": 1, "clear_after_s": 1}, escalation={"printer_fault_after_s": 1})
    mt = [order(i, "st") for i in range(3)]
    el = [eleme(i) for i in range(2)]
    for ev in mt + el:
        hq.publish(ev)
    assert wait_until(lambda: len(hq.final()) == 5, 30)
    dup = order(0, "st")
    dup["id"] = "evt-dup-0"  # the same order again under a new event id
    late = order(9, "late")
    late["order"]["expires_at"] = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
    hq.publish(dup)
    hq.publish(late)
    hq.publish(b"{not json")
    hq.publish(mt[1])  # a redelivery: answered again, counted once
    rider = fresh(example("rider-unassigned.json"))
    rider["id"], rider["order"]["id"] = "evt-rider-1", mt[2]["order"]["id"]
    hq.publish(rider)
    assert wait_until(lambda: any(r["status"] == "rejected" for r in hq.results())
                      and {r["status"] for r in hq.results() if r.get("event_id") in ("evt-dup-0", late["id"])} == {"duplicate", "expired"}
                      and "evt-rider-1" in hq.final(), 30), hq.results()
    # a paper-out spell, escalated, then cleared
    vprinter.set_mode("paper_out")
    assert wait_until(lambda: any(a.code == "printer.paper_out" and a.state == "escalated" for a in agent.alerts.open_alerts()), 15)
    vprinter.set_mode("ready")
    assert wait_until(lambda: not any(a.code == "printer.paper_out" for a in agent.alerts.open_alerts()), 15)
    acked = agent.acknowledge()  # the clerk presses the button: the rider alert
    assert any(a.code == "order.rider_unassigned" for a in acked)
    assert agent.reprint(mt[0]["order"]["id"])
    assert wait_until(lambda: vprinter.wait_jobs(5 * 2 + 1 + 2, 1), 20)
    agent.journal.commit_soon()
    agent.journal.flush()
    time.sleep(0.5)
    agent.journal.flush()

    cfg = write_toml(tmp_path / "c.toml", agent_config(tmp_path / "state", broker.port, vprinter.port, store_id))
    r = cli(cfg, "report", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)["data"]
    paid_mt = sum(e["order"]["amounts"]["paid"] for e in mt)
    paid_el = sum(e["order"]["amounts"]["paid"] for e in el)
    assert rep["orders"] == {"total": 5, "paid_fen": paid_mt + paid_el,
                             "by_platform": {"eleme": {"orders": 2, "paid_fen": paid_el}, "meituan": {"orders": 3, "paid_fen": paid_mt}}}
    assert rep["events"] == {"order.created": 5, "rider.unassigned": 1}
    assert rep["tickets"] == {"receipt": 6, "warm_tip": 6, "slip": 1}  # 5 orders, the rider slip, one reprint
    assert rep["reprints"] == {"person": 2}  # the reprint's receipt and warm-tip card
    assert rep["results"] == {"rejected": 1, "duplicate": 1, "expired": 1}
    assert rep["to_paper_s"]["n"] == 6 and 0 < rep["to_paper_s"]["p50"] <= rep["to_paper_s"]["max"] < 30
    assert rep["faults"]["paper_out"]["count"] == 1 and rep["faults"]["paper_out"]["minutes"] > 0
    assert rep["escalations"] == 1
    assert rep["alert_response_s"]["n"] == 1 and rep["alert_response_s"]["max"] >= 0
    assert r.returncode == 0

    text = cli(cfg, "report")
    assert "orders      5" in text.stdout and "paper_out 1x" in text.stdout, text.stdout

    # P/S/stats, retained
    agent.housekeeper.publish_stats(force=True)
    published = lambda: [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("stats")]  # noqa: E731
    assert wait_until(lambda: published() and published()[-1]["tickets"] == rep["tickets"], 10), published()
    stats = published()[-1]
    assert stats["store_id"] == store_id and stats["orders"] == rep["orders"] and stats["faults"] == rep["faults"]

    # the slip
    before = len(vprinter.jobs)
    r = cli(cfg, "report", "--print")
    assert r.returncode == 0, r.stderr
    assert vprinter.wait_jobs(before + 1, 15)
    slip = vprinter.jobs[-1].text
    assert "日报" in slip and "合计 5" in slip and "缺纸" in slip and "小票" in slip

    # the order rows pruned: the figures stay
    assert agent.journal.prune(1, 1 << 30, now=time.time() + 3 * 86400) > 0
    again = json.loads(cli(cfg, "report", "--json").stdout)["data"]
    assert again["orders"] == rep["orders"] and again["faults"] == rep["faults"]


def test_report_request_over_mqtt_and_bad_args(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id)

    def request(tx: str, args: dict) -> dict:
        hq.publish(json.dumps({"transaction": tx, "args": args}).encode(), topic=hq.topic("request", "report"))
        replies = lambda: [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("response", "report")]  # noqa: E731
        assert wait_until(lambda: any(r["transaction"] == tx for r in replies()), 10)
        return next(r for r in replies() if r["transaction"] == tx)

    r = request("a", {"period": "week"})
    assert r["status"] == "ok" and r["data"]["days"] == 7 and r["data"]["period"] == "week"
    r = request("b", {"period": "year"})
    assert r["status"] == "error" and "period" in r["error"]
    r = request("c", {"day": "2026-13-40"})
    assert r["status"] == "error" and "day" in r["error"]


def test_periods():
    d = date(2026, 11, 30)
    assert period("day", d) == (d, d)
    assert period("week", d) == (date(2026, 11, 24), d)
    assert period("month", date(2026, 2, 10)) == (date(2026, 2, 1), date(2026, 2, 28))


class FakeTimers:
    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def timer_fired(self, key: str, default=None):  # noqa: ANN001, ANN201
        return self.marks.get(key, default)

    def mark_timer(self, key: str, at: float) -> None:
        self.marks[key] = at


def test_report_slips_print_once_per_day_week_and_month():
    printed: list[tuple] = []
    timers = FakeTimers()
    now = [datetime(2026, 11, 1, 21, 59).timestamp()]  # a Sunday, the 1st
    sched = ReportSchedule(timers, daily_at="22:00", weekly_on="sun", monthly=True,
                           print_report=lambda *a: printed.append(a), clock=lambda: now[0])
    assert sched.tick() == []
    now[0] += 120
    assert sorted(sched.tick()) == ["report:day:2026-11-01", "report:month:2026-10", "report:week:2026-11-01"]
    assert ("month", date(2026, 10, 1), date(2026, 10, 31)) in printed
    assert ("week", date(2026, 10, 26), date(2026, 11, 1)) in printed
    assert sched.tick() == []  # once, also when ticked again (the keys live in the journal: across restarts too)
    now[0] += 86400
    assert sched.tick() == ["report:day:2026-11-02"]
    off = ReportSchedule(timers, daily_at="", weekly_on="sun", monthly=True, print_report=lambda *a: 1 / 0, clock=lambda: now[0])
    assert off.tick() == []


def test_every_agent_made_slip_has_a_preview(tmp_path):
    from conftest import DATA

    event = DATA / "examples" / "order-created-meituan.json"
    for template, title in (("report", "日报"), ("followups", "回访清单"), ("unshipped_summary", "未出库订单汇总"),
                            ("prep_reminder", "备货提醒"), ("test_page", "打印测试页")):
        r = subprocess.run([sys.executable, "-m", "agent.cli", "preview", str(event), "--template", template, "--width", "58"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 0 and title in r.stdout, (template, r.stdout, r.stderr)
    cfg = write_toml(tmp_path / "c.toml", {**agent_config(tmp_path / "s", 1, 1, "pv-1"), "texts": {"report_title_day": "营业日报"}})
    r = cli(cfg, "preview", str(event), "--template", "report")
    assert r.returncode == 0 and "营业日报" in r.stdout  # the chain's wording overrides apply


def test_refreshed_and_renotified_alerts_are_counted_once(tmp_path):
    from agent.alerts import Alert
    from agent.journal import Journal
    from agent.stats import Stats

    j = Journal(tmp_path / "j.sqlite3")
    try:
        now = [1_800_000_000.0]
        st = Stats(j, clock=lambda: now[0])
        a = Alert("printer:p:paper_out", "printer.paper_out", "critical", "缺纸", since=now[0], at=now[0])
        st.on_alert(a)
        st.on_alert(Alert(a.id, a.code, a.severity, "缺纸 (new detail)", since=now[0], at=now[0] + 5))  # refreshed
        esc = Alert(a.id, a.code, a.severity, a.message, since=now[0], at=now[0] + 120, state="escalated")
        st.on_alert(esc)
        st.on_alert(Alert(a.id, a.code, a.severity, a.message, since=now[0], at=now[0] + 1920, state="escalated"))  # renotify
        st.on_alert(Alert(a.id, a.code, a.severity, a.message, since=now[0], at=now[0] + 2000, state="cleared"))
        j.flush()
        day = date.fromtimestamp(now[0])
        rep = st.report(day, day)
        assert rep["faults"] == {"paper_out": {"count": 1, "minutes": round(2000 / 60, 1)}} and rep["escalations"] == 1
        st2 = Stats(j, clock=lambda: now[0])  # after a restart: an alert escalated before is not a new escalation
        st2.already_counted([Alert("x", "order.rx_pending", "critical", "m", since=now[0], at=now[0] + 5, state="escalated")])
        st2.on_alert(Alert("x", "order.rx_pending", "critical", "m", since=now[0], at=now[0] + 9, state="escalated"))
        j.flush()
        assert st2.report(day, day)["escalations"] == 1
    finally:
        j.close()
