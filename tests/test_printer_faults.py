"""Never silent, never bricked: python-escpos' capability cache, and unexpected errors in a print worker.

A 0-byte or garbage capabilities pickle (a power cut while python-escpos wrote it, a full card) used to
make every ``import escpos.printer`` fail forever with no alert. An unexpected exception in a print
worker used to be logged every 2 s and nothing else.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.escpos_caps import CapabilitiesError, pickle_name, prepare_pickle_dir
from conftest import ROOT, agent_config, order, spawn_agent, wait_until, write_toml


def alerts_of(hq):
    return [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("alerts")]


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage, not a pickle", pickle.dumps(["not", "a", "dict"])],
                         ids=["truncated", "garbage", "wrong-shape"])
def test_agent_with_a_damaged_capabilities_cache_prints(tmp_path, broker, vprinter, hq_factory, store_id, content):
    cache = tmp_path / "escpos-cache"
    cache.mkdir()
    damaged = cache / pickle_name()
    damaged.write_bytes(content)
    os.utime(damaged, (time.time() + 3600, time.time() + 3600))  # newer than the JSON: escpos would load it
    hq = hq_factory(broker.port, store_id)
    cfg = write_toml(tmp_path / "config.toml", agent_config(tmp_path / "state", broker.port, vprinter.port, store_id))
    proc = spawn_agent(cfg, tmp_path / "agent.log", env={"ESCPOS_CAPABILITIES_PICKLE_DIR": str(cache)})
    try:
        assert wait_until(lambda: "online" in hq.statuses(), 20), (tmp_path / "agent.log").read_text()
        hq.publish(order(1))
        assert vprinter.wait_jobs(2, 20), (tmp_path / "agent.log").read_text()
    finally:
        proc.terminate()
        proc.wait(20)
    with open(damaged, "rb") as f:  # replaced by a whole one (atomically: see test below)
        assert isinstance(pickle.load(f)["profiles"], dict)
    assert "EOFError" not in (tmp_path / "agent.log").read_text()


def test_an_unwritable_cache_dir_falls_back_to_a_private_one(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    d = prepare_pickle_dir(str(blocked / "cache"))
    assert d != str(blocked / "cache") and (Path(d) / pickle_name()).stat().st_size > 0
    assert oct(Path(d).stat().st_mode & 0o777) == "0o700"


def test_the_pickle_is_replaced_by_rename_never_rewritten_in_place(tmp_path):
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / pickle_name()).write_bytes(b"")
    ino = (cache / pickle_name()).stat().st_ino
    assert prepare_pickle_dir(str(cache)) == str(cache)
    assert (cache / pickle_name()).stat().st_ino != ino  # a new file renamed over the old one
    assert [p.name for p in cache.iterdir()] == [pickle_name()]  # no temp file left behind
    mtime = (cache / pickle_name()).stat().st_mtime_ns
    prepare_pickle_dir(str(cache))  # a good one is kept as it is
    assert (cache / pickle_name()).stat().st_mtime_ns == mtime


def test_cli_import_in_a_process_with_a_damaged_cache(tmp_path):
    """The same through a plain import in a fresh process (what every CLI command does)."""
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / pickle_name()).write_bytes(b"")
    os.utime(cache / pickle_name(), (time.time() + 3600, time.time() + 3600))
    code = "from drivers.printers import import_escpos_printers as i; ep = i(); print(ep.Dummy.__name__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "ESCPOS_CAPABILITIES_PICKLE_DIR": str(cache)})
    assert r.returncode == 0 and r.stdout.strip() == "Dummy", r.stderr


def test_nowhere_to_write_is_a_clear_error(tmp_path, monkeypatch):
    import drivers.escpos_caps as caps

    monkeypatch.setattr(caps, "_try_dir", lambda d, source: f"{d}: No space left on device")
    with pytest.raises(CapabilitiesError, match="No space left on device"):
        caps.prepare_pickle_dir(str(tmp_path / "c"))


class RaisingPrinter:
    """A driver with a bug: ``send`` raises something no driver should (not a PrinterError)."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner, self.broken = inner, True
        self.name, self.queryable = inner.name, inner.queryable

    def _check(self) -> None:
        if self.broken:  # like the import of escpos failing inside connect(), under status()
            raise RuntimeError("driver bug: 'NoneType' object has no attribute 'write'")

    def status(self, maintain="idle"):  # noqa: ANN201
        self._check()
        return self.inner.status()

    def online(self):  # noqa: ANN201
        self._check()
        return self.inner.online()

    def send(self, data, on_written=lambda: None, **_):  # noqa: ANN001, ANN003, ANN201
        self._check()
        return self.inner.send(data, on_written)

    def close(self) -> None:
        self.inner.close()


def test_a_worker_exception_is_a_device_fault_alerted_escalated_and_cleared(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id, start=False,
                       health={"printer_poll_s": 1, "clear_after_s": 1, "publish_s": 1},
                       escalation={"printer_fault_after_s": 2, "renotify_s": 600})
    bad = RaisingPrinter(agent.workers["counter"].printer)
    agent.workers["counter"].printer = bad
    agent.printers["counter"] = bad
    agent.start()
    assert wait_until(lambda: agent.link.subscribed, 10)
    hq.publish(order(1))
    assert wait_until(lambda: any(a["code"] == "printer.error" and a["state"] == "raised" for a in alerts_of(hq)), 10)
    raised = next(a for a in alerts_of(hq) if a["code"] == "printer.error")
    assert raised["audience"] == "store" and "driver bug" in raised["message"]
    assert wait_until(lambda: any(a["code"] == "printer.error" and a["state"] == "escalated" for a in alerts_of(hq)), 10)
    health = [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("health")]
    assert any(p["state"] == "unknown" and "agent error: RuntimeError" in p["detail"] for h in health for p in h["printers"])
    assert not vprinter.jobs
    bad.broken = False
    assert vprinter.wait_jobs(2, 15)
    assert wait_until(lambda: any(a["code"] == "printer.error" and a["state"] == "cleared" for a in alerts_of(hq)), 10)
    assert hq.final().keys() == {order(1)["id"]}
