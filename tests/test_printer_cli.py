"""The technician's view of the printers (issue 14): probe, profiles, paper, status and health."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, agent_config, order, wait_until, write_toml
from drivers.vprinter import VirtualPrinter


def cli(cfg_file, *args):  # noqa: ANN001, ANN201
    return subprocess.run([sys.executable, "-m", "agent.cli", *args, "--config", str(cfg_file)], capture_output=True,
                          text=True, cwd=ROOT, timeout=90)


@pytest.mark.parametrize("personality, says", [
    ("epson", ["answers DLE EOT yes, GS r 1 yes, cutter yes, model EPSON TM-T88V", "suggested TM-T88V",
               "42 columns, QR native, cut"]),
    ("clone", ["GS r 1 no", "print unconfirmed", "suggested default", "48 columns"]),
    ("no_cutter", ["cutter no", "feed to the tear bar"]),
    ("write_only", ["no answer to DLE EOT", "status_query = false"]),
])
def test_probe_without_a_running_agent(tmp_path, personality, says):
    with VirtualPrinter(personality=personality) as vp:
        cfg = write_toml(tmp_path / "c.toml", agent_config(tmp_path / "state", 1, vp.port, "probe-1"))
        r = cli(cfg, "printers", "probe", "counter")
        for s in says:
            assert s in r.stdout, r.stdout + r.stderr
        assert r.returncode == 0
        j = json.loads(cli(cfg, "printers", "probe", "--json").stdout)
        assert j["ok"] and j["data"]["caps"]["dle_eot"] == (personality != "write_only")


def test_probe_an_unknown_printer_is_a_usage_error(tmp_path, vprinter):
    cfg = write_toml(tmp_path / "c.toml", agent_config(tmp_path / "state", 1, vprinter.port, "probe-2"))
    r = cli(cfg, "printers", "probe", "nosuch")
    assert r.returncode == 2 and "no printer 'nosuch'; configured: counter" in r.stderr


def test_probe_paper_and_status_through_the_running_agent(tmp_path, broker, hq_factory, store_id, make_agent):
    with VirtualPrinter(personality="epson") as vp:
        hq = hq_factory(broker.port, store_id)
        agent = make_agent(broker.port, vp.port, store_id)
        cfg = write_toml(tmp_path / "c.toml", agent_config(tmp_path / "state", broker.port, vp.port, store_id))
        hq.publish(order(1))
        assert wait_until(lambda: len(hq.final()) == 1, 20)
        conns = vp._conn_no
        r = cli(cfg, "printers", "probe")
        assert r.returncode == 0 and "model EPSON TM-T88V" in r.stdout, r.stdout + r.stderr
        assert vp._conn_no == conns  # asked through the agent's own connection, never a second one
        r = cli(cfg, "status")
        assert "confirm gs_r, profile TM-T88V (probe), 42 columns, cut; paper ~" in r.stdout, r.stdout
        r = cli(cfg, "doctor")
        assert "printer counter confirms" in r.stdout and "yes: every ticket confirmed" in r.stdout, r.stdout
        assert "profile TM-T88V (probe), 42 columns, QR native, cut, model EPSON TM-T88V" in r.stdout
        assert "m left of 50.0 m" in r.stdout
        used = agent.workers["counter"].paper_mm
        assert used > 100
        r = cli(cfg, "paper", "loaded")
        assert r.returncode == 0 and f"the last one gave {round(used / 1000, 2)} m" in r.stdout, r.stdout + r.stderr
        assert agent.workers["counter"].paper_mm == 0
        assert agent.journal.printer_facts()["counter"]["paper_mm"] == 0  # kept across restarts
        health = agent.housekeeper.health().model_dump(mode="json")["printers"][0]
        assert health["capabilities"]["model"] == "EPSON TM-T88V" and health["paper"]["used_m"] == 0
        assert health["print_s"] is not None


def test_paper_count_survives_a_restart_and_a_roll_change_resets_it(tmp_path, broker, hq_factory, store_id, make_agent):
    with VirtualPrinter() as vp:
        hq = hq_factory(broker.port, store_id)
        agent = make_agent(broker.port, vp.port, store_id)
        for i in range(3):
            hq.publish(order(i, "pc"))
        assert wait_until(lambda: len(hq.final()) == 3, 20)
        used = agent.workers["counter"].paper_mm
        agent.stop()
        again = make_agent(broker.port, vp.port, store_id)
        assert again.workers["counter"].paper_mm == pytest.approx(used)
        vp.set_mode("paper_out")  # the roll ends; a new one goes in
        assert wait_until(lambda: again.workers["counter"].status.state == "paper_out", 10)
        vp.set_mode("ready")
        assert wait_until(lambda: again.workers["counter"].paper_mm == 0, 10)
        assert again.journal.printer_facts()["counter"]["loaded_at"] is not None


def test_low_paper_alert_before_the_sensor_trips(tmp_path, broker, hq_factory, store_id, make_agent):
    with VirtualPrinter() as vp:
        hq = hq_factory(broker.port, store_id)
        p = {"name": "counter", "connection": "network", "host": "127.0.0.1", "port": vp.port, "timeout_s": 1.0,
             "paper_roll_m": 3.0}  # a 3 m roll: ~25 tickets
        make_agent(broker.port, vp.port, store_id, printers=[p])
        for i in range(4):
            hq.publish(order(i, "lo"))
        alerts = lambda: [json.loads(m) for t, m, _ in list(hq.messages) if t == hq.topic("alerts")]  # noqa: E731
        assert wait_until(lambda: any(a["code"] == "printer.paper_left" for a in alerts()), 30)
        a = next(a for a in alerts() if a["code"] == "printer.paper_left")
        assert "纸卷约剩" in a["message"] and a["severity"] == "info" and a["audience"] == "store"


def test_doctor_says_a_clone_prints_unconfirmed(tmp_path, broker, hq_factory, store_id, make_agent, monkeypatch):
    from drivers.printers import StreamPrinter

    monkeypatch.setattr(StreamPrinter, "REPROBE_S", 0.3)
    with VirtualPrinter(personality="clone") as vp:
        agent = make_agent(broker.port, vp.port, store_id)
        assert wait_until(lambda: agent.printer_facts.view("counter")["confirm"] == "unsupported", 15)
        cfg = write_toml(tmp_path / "c.toml", agent_config(tmp_path / "state", broker.port, vp.port, store_id))
        r = cli(cfg, "doctor")
        assert "the printer does not answer GS r 1, tickets print unconfirmed" in r.stdout, r.stdout
        assert "[FAIL] printer counter" not in r.stdout
