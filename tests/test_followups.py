"""The follow-up call list (issue 15): due 24-48 h after delivery, recorded outcomes, the daily slip."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from conftest import ROOT, agent_config, order, wait_until, write_toml


def cli(cfg_file, *args):  # noqa: ANN001, ANN201
    return subprocess.run([sys.executable, "-m", "agent.cli", *args, "--config", str(cfg_file)], capture_output=True,
                          text=True, cwd=ROOT, timeout=90)


def delivered(n: int, hours_ago: float, kind: str = "order.completed") -> list[dict]:
    created = order(n, "fu")
    done = json.loads(json.dumps(created))
    done["type"], done["id"] = kind, f"evt-fu-done-{n}"
    done["at"] = (datetime.now(timezone.utc) - timedelta(hours=hours_ago)).isoformat()
    return [created, done]


def test_due_done_report_and_the_daily_slip(tmp_path, broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    over = dict(followup={"print_at": ""}, timers={"check_s": 1, "prep_before_s": 0, "summary_every_s": 0},
                report={"daily_at": ""})
    agent = make_agent(broker.port, vprinter.port, store_id, **over)
    events = delivered(1, 20) + delivered(2, 30) + delivered(3, 50) + delivered(4, 36, "order.dispatched")
    cancelled = delivered(5, 30)
    cancel = dict(cancelled[0], type="order.cancelled", id="evt-fu-cancel-5")
    events += cancelled + [cancel]
    for ev in events:
        hq.publish(ev)
    assert wait_until(lambda: len(hq.final()) == len(events), 30), hq.results()
    cfg = write_toml(tmp_path / "c.toml", agent_config(tmp_path / "state", broker.port, vprinter.port, store_id, **over))

    r = cli(cfg, "followups", "--json")
    due = json.loads(r.stdout)["data"]["due"]
    assert [d["order_id"] for d in due] == ["MT-fu00004", "MT-fu00002"]  # 36 h (dispatched), 30 h; not 20 h, 50 h, cancelled
    assert due[1]["delivered_by"] == "completed" and due[0]["delivered_by"] == "dispatched"
    assert due[1]["items"][0].startswith("布洛芬混悬液") and due[1]["items"][-1].startswith("… +")
    text = cli(cfg, "followups")
    assert "MT-fu00002" in text.stdout and "MT-fu00001" not in text.stdout

    r = cli(cfg, "followup", "done", "MT-fu00002", "--outcome", "no_answer")
    assert r.returncode == 0 and "MT-fu00002: no_answer" in r.stdout
    r = cli(cfg, "followup", "done", "MT-fu00002")  # called again, reached this time
    assert "MT-fu00002: reached (was no_answer)" in r.stdout
    r = cli(cfg, "followup", "done", "MT-nosuch")
    assert r.returncode == 1 and "no order 'MT-nosuch'" in r.stderr
    due = json.loads(cli(cfg, "followups", "--json").stdout)["data"]["due"]
    assert [d["order_id"] for d in due] == ["MT-fu00004"]
    agent.journal.flush()
    rep = json.loads(cli(cfg, "report", "--json").stdout)["data"]["followups"]
    assert rep == {"done": 1, "reached": 1, "no_answer": 0, "declined": 0, "due": 1, "rate": 1.0}

    # the slip: once a day, also across a restart
    agent.stop()
    over["followup"] = {"print_at": "00:00"}
    agent = make_agent(broker.port, vprinter.port, store_id, **over)
    slips = lambda: [j for j in vprinter.jobs if "回访清单" in j.text]  # noqa: E731
    assert wait_until(lambda: len(slips()) == 1, 15)
    assert "MT-fu00004" in slips()[0].text and "MT-fu00002" not in slips()[0].text and "□已回访" in slips()[0].text
    agent.stop()
    agent = make_agent(broker.port, vprinter.port, store_id, **over)
    agent.housekeeper.tick()
    agent.followup_schedule().tick()
    assert not wait_until(lambda: len(slips()) > 1, 3)


def test_followup_done_over_mqtt_checks_its_args(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id)

    def request(tx: str, command: str, args: dict) -> dict:
        hq.publish(json.dumps({"transaction": tx, "args": args}).encode(), topic=hq.topic("request", command))
        replies = lambda: [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("response", command)]  # noqa: E731
        assert wait_until(lambda: any(r["transaction"] == tx for r in replies()), 10)
        return next(r for r in replies() if r["transaction"] == tx)

    assert "outcome" in request("a", "followup_done", {"order_id": "X", "outcome": "maybe"})["error"]
    assert "no order 'X'" in request("b", "followup_done", {"order_id": "X"})["error"]
    assert request("c", "followups", {})["data"]["due"] == []
