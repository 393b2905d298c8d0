"""Local timers on the real path: reminders and summaries printed on the virtual printer, across restarts."""

from datetime import datetime, timedelta, timezone

from conftest import example, order, wait_until


def iso(dt):
    return dt.astimezone(timezone(timedelta(hours=8))).isoformat()


def test_prep_reminder_once_even_across_a_restart(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    timers = {"prep_before_s": 1800, "summary_every_s": 0, "check_s": 1}
    first = make_agent(broker.port, vprinter.port, store_id, timers=timers)
    now = datetime.now(timezone.utc)
    soon, later = order(1, "prep"), order(2, "prep")
    soon["order"]["delivery"]["window"] = {"start": iso(now + timedelta(minutes=20)), "end": iso(now + timedelta(minutes=50))}
    later["order"]["delivery"]["window"] = {"start": iso(now + timedelta(hours=3)), "end": iso(now + timedelta(hours=4))}
    hq.publish(soon)
    hq.publish(later)
    assert vprinter.wait_for(lambda v: any("备货提醒" in j.text for j in v.jobs), 15)
    reminder = [j.text for j in vprinter.jobs if "备货提醒" in j.text][0]
    assert "MT-prep00001" in reminder and "MT-prep00002" not in reminder
    first.stop()
    make_agent(broker.port, vprinter.port, store_id, timers=timers)
    import time

    time.sleep(3)
    assert sum("备货提醒" in j.text for j in vprinter.jobs) == 1


def test_unshipped_summary_lists_old_open_orders_and_alerts(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id,
                       timers={"prep_before_s": 0, "unshipped_after_s": 3600, "summary_every_s": 2, "check_s": 1})
    old, shipped, new = order(1, "u"), order(2, "u"), order(3, "u")
    two_hours_ago = iso(datetime.now(timezone.utc) - timedelta(hours=2))
    old["order"]["placed_at"] = shipped["order"]["placed_at"] = two_hours_ago
    new["order"]["placed_at"] = iso(datetime.now(timezone.utc))
    for ev in (old, shipped, new):
        hq.publish(ev)
    dispatched = example("rider-unassigned.json")
    dispatched.update(type="order.dispatched", id="evt-u-dispatched", detail={})
    dispatched["order"]["id"] = shipped["order"]["id"]
    hq.publish(dispatched)
    assert vprinter.wait_for(lambda v: any("未出库订单汇总" in j.text for j in v.jobs), 15)
    summary = [j.text for j in vprinter.jobs if "未出库订单汇总" in j.text][0]
    assert "MT-u00001" in summary and "MT-u00002" not in summary and "MT-u00003" not in summary
    assert "共1单" in summary and "120分钟" in summary
    assert wait_until(lambda: any(a.code == "order.unshipped" for a in agent.alerts.open_alerts()))
