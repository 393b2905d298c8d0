"""Backup printer: takes the jobs while every primary is faulted, hands back when it recovers; each
order prints exactly once across both printers."""

import time

import pytest

from conftest import order, wait_until
from drivers.vprinter import VirtualPrinter
from tickets_util import check_exactly_once, tickets


@pytest.fixture
def backup():
    p = VirtualPrinter().start()
    yield p
    p.stop()


def two_printers(primary, backup):
    net = lambda name, p, **kw: {"name": name, "connection": "network", "host": "127.0.0.1", "port": p.port, "timeout_s": 1.0, **kw}  # noqa: E731
    return [net("counter", primary), net("back", backup, role="backup")]


class Both:
    """The two printers' output as one (for the exactly-once check)."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    @property
    def jobs(self):
        return list(self.a.jobs) + list(self.b.jobs)


def test_failover_to_backup_and_back(broker, vprinter, backup, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id, health={"printer_poll_s": 1},
               printers=two_printers(vprinter, backup))
    first = [order(i, "f") for i in range(5)]
    for ev in first:
        hq.publish(ev)
    assert wait_until(lambda: len(hq.final()) == 5, 20)
    assert len(backup.jobs) == 0  # while the primary is fine, the backup is idle
    vprinter.set_mode("paper_out")
    time.sleep(2.5)  # the primary's fault is seen by its poll
    during = [order(i, "g") for i in range(5)]
    for ev in during:
        hq.publish(ev)
    assert wait_until(lambda: len(hq.final()) == 10, 30)
    assert {o for o, _ in tickets(backup)} == {e["order"]["id"] for e in during}
    assert all(r["printer"] == "back" for r in hq.final().values() if r["order_id"].startswith("MT-g"))
    vprinter.set_mode("ready")
    time.sleep(2.5)
    after = [order(i, "h") for i in range(5)]
    for ev in after:
        hq.publish(ev)
    assert wait_until(lambda: len(hq.final()) == 15, 30)
    assert {o for o, _ in tickets(vprinter) if o.startswith("MT-h")} == {e["order"]["id"] for e in after}
    check_exactly_once(Both(vprinter, backup), [e["order"]["id"] for e in first + during + after])


def test_paper_runs_out_mid_burst_backup_finishes_it(broker, vprinter, backup, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id, health={"printer_poll_s": 1},
               printers=two_printers(vprinter, backup))
    events = [order(i, "m") for i in range(20)]
    vprinter.run_out_after(5)
    for ev in events:
        hq.publish(ev)
    assert wait_until(lambda: len(hq.final()) == 20, 40)
    stats = check_exactly_once(Both(vprinter, backup), [e["order"]["id"] for e in events])
    assert len(vprinter.jobs) == 5 and len(backup.jobs) >= 35
    print(f"\nfailover mid-burst: primary printed {len(vprinter.jobs)}, backup {len(backup.jobs)}, marked extra copies {stats['extra_marked_copies']}")


def test_a_hung_printer_blocks_no_other_printer(broker, vprinter, backup, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id, health={"printer_poll_s": 1},
                       printers=two_printers(vprinter, backup),
                       rules={"stock.short": {"printer": "back"}})
    vprinter.set_mode("hang")
    hq.publish(order(1, "hang"))  # stuck on the hung counter printer
    ev = __import__("conftest").example("stock-short.json")
    hq.publish(ev)  # routed to the other printer by its rule
    assert backup.wait_for(lambda v: any("缺货" in j.text for j in v.jobs), 10)
    assert agent.workers["counter"].status.state == "unreachable" or wait_until(lambda: agent.workers["counter"].status.state == "unreachable", 10)
