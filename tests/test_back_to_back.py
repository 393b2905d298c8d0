"""In a burst the check after one ticket stands for the check before the next (agent/printing.py
``BACK_TO_BACK_S``): one ``DLE EOT`` round trip per ticket instead of two (issue 17), while a fault seen
after a ticket still stops the next one (the paper-out drills: tests/test_e2e.py, tests/test_failover.py)."""

from conftest import order, wait_until


def test_a_burst_asks_the_printer_about_once_per_ticket(broker, make_agent, hq_factory, store_id, vprinter):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id, health={"printer_poll_s": 30})  # no idle polls meanwhile
    hq.publish(order(0, "bb"))
    assert wait_until(lambda: len(hq.final()) == 1, 15)
    asked = vprinter.status_queries
    for i in range(1, 41):
        hq.publish(order(i, "bb"))
    assert wait_until(lambda: len(hq.final()) == 41, 60)
    tickets = 80  # a receipt and a warm-tip card each
    queries = vprinter.status_queries - asked
    print(f"\nDLE EOT queries for {tickets} tickets in a burst: {queries} (two per ticket without the rule)")
    assert queries < 1.9 * tickets, queries  # 81 here; a before- and an after-check each would be >= 160


def test_paper_out_after_a_ticket_stops_the_next_one(broker, make_agent, hq_factory, store_id, vprinter):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id)
    vprinter.run_out_after(3)  # the paper ends inside the 4th ticket of the burst (that one is lost)
    for i in range(5):
        hq.publish(order(i, "po"))
    assert wait_until(lambda: vprinter.mode == "paper_out" and vprinter.discarded, 15)
    import time  # noqa: PLC0415

    time.sleep(1.0)  # the spell: the agent polls (printer_poll_s 1, retry_s 0.2) and sends nothing
    assert len(vprinter.jobs) == 3 and len(vprinter.discarded) == 1, (len(vprinter.jobs), len(vprinter.discarded))
    vprinter.set_mode("ready")
    assert wait_until(lambda: len(hq.final()) == 5, 30)
    assert len(vprinter.jobs) == 10 and len(vprinter.discarded) == 1  # the cut-off one again (marked 补打), then the rest
