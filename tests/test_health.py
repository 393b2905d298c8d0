"""Health snapshot on P/S/health: retained, on change and on schedule."""

import json

from conftest import HQ, wait_until


def test_health_follows_the_printer_and_is_retained(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id, health={"printer_poll_s": 1, "publish_s": 60})
    health = lambda h: [json.loads(p) for t, p, _ in list(h.messages) if t == h.topic("health")]
    assert wait_until(lambda: any(x["printers"][0]["state"] == "ready" for x in health(hq)), 10)
    vprinter.set_mode("paper_out")
    assert wait_until(lambda: health(hq)[-1]["printers"][0]["state"] == "paper_out", 10)
    h = health(hq)[-1]
    assert h["v"] == 1 and h["mqtt"]["connected"] and h["printers"][0]["since"] and h["queue"]["pending"] == 0
    late = HQ(broker.port, "stores", store_id)  # a late subscriber (IT's dashboard) gets the retained one
    try:
        assert wait_until(lambda: health(late) and health(late)[-1]["printers"][0]["state"] == "paper_out", 10)
    finally:
        late.close()
