import socket
import time
from types import SimpleNamespace

import pytest

from agent.render import Cut, Document, Text, to_escpos
from drivers.printers import NetworkPrinter, PrinterError, PrinterIOError, SpoolPrinter, make_printer, usb_endpoints
from drivers.vprinter import VirtualPrinter
from conftest import wait_until

JOB = to_escpos(Document("t", 48, (Text("小票 test"), Cut())))


@pytest.mark.parametrize("mode", ["ready", "paper_low", "paper_out", "cover_open", "offline"])
def test_network_status_follows_the_printer(vprinter, mode):
    p = NetworkPrinter("n", "127.0.0.1", vprinter.port, timeout_s=1.0)
    vprinter.set_mode(mode)
    assert p.status().state == mode
    p.close()


@pytest.mark.parametrize("mode,online", [("ready", True), ("paper_low", True), ("paper_out", False),
                                         ("cover_open", False), ("offline", False), ("hang", None)])
def test_quick_online_check_is_dle_eot_1(vprinter, mode, online):
    """The one-round-trip check around jobs: anything that stops printing shows as offline; no
    answer is None (the worker then runs the full query), never 'online'."""
    p = NetworkPrinter("n", "127.0.0.1", vprinter.port, timeout_s=0.3)
    vprinter.set_mode(mode)
    assert p.online() is online
    p.close()


def test_jobs_are_split_at_cuts_and_decoded(vprinter):
    p = NetworkPrinter("n", "127.0.0.1", vprinter.port, timeout_s=1.0)
    p.send(JOB + JOB)
    assert vprinter.wait_jobs(2)
    assert vprinter.texts() == ["小票 test", "小票 test"]
    assert vprinter.jobs[0].job.raw == JOB
    p.close()


def test_nothing_comes_out_while_paper_is_out(vprinter):
    p = NetworkPrinter("n", "127.0.0.1", vprinter.port, timeout_s=1.0)
    vprinter.set_mode("paper_out")
    with pytest.raises(PrinterIOError, match="no confirmation"):
        p.send(JOB)  # the printer holds GS r until it can print: no word that the job printed
    assert vprinter.wait_for(lambda v: len(v.discarded) == 1)
    assert vprinter.jobs == []
    p.close()


def test_send_returns_only_after_the_printer_confirms(vprinter):
    p = NetworkPrinter("n", "127.0.0.1", vprinter.port, timeout_s=1.0)
    p.send(JOB)
    assert len(vprinter.jobs) == 1  # already there when send() returned: GS r was answered after it
    unconfirmed = NetworkPrinter("u", "127.0.0.1", vprinter.port, timeout_s=1.0, confirm=False)
    unconfirmed.send(JOB)
    assert vprinter.wait_jobs(2)
    p.close()
    unconfirmed.close()


def test_big_jobs_are_written_in_chunks_within_the_timeout(vprinter):
    p = NetworkPrinter("n", "127.0.0.1", vprinter.port, timeout_s=0.5)
    big = to_escpos(Document("t", 48, tuple(Text("长" * 24) for _ in range(4000)) + (Cut(),)))
    assert len(big) > 200_000
    p.send(big)
    assert len(vprinter.jobs) == 1 and len(vprinter.jobs[0].job.lines) == 4000
    p.close()


def test_hung_printer_is_unreachable_within_the_timeout(vprinter):
    p = NetworkPrinter("n", "127.0.0.1", vprinter.port, timeout_s=0.5)
    assert p.status().state == "ready"
    vprinter.set_mode("hang")
    t = time.monotonic()
    st = p.status()
    took = time.monotonic() - t
    assert st.state == "unreachable"
    print(f"hung printer detected in {took:.2f}s (timeout 0.5s)")
    assert took < 5  # bounded by the I/O timeout, never forever


def test_down_printer_refuses_and_is_unreachable(vprinter):
    p = NetworkPrinter("n", "127.0.0.1", vprinter.port, timeout_s=0.5)
    vprinter.set_mode("down")
    assert p.status().state == "unreachable"
    with pytest.raises(PrinterError) as e:
        p.send(JOB)
    assert not isinstance(e.value, PrinterIOError)  # nothing was sent
    vprinter.set_mode("ready")
    assert p.status().state == "ready"
    p.send(JOB)
    assert vprinter.wait_jobs(1)


def test_printer_closing_mid_job_is_an_io_error(vprinter):
    p = NetworkPrinter("n", "127.0.0.1", vprinter.port, timeout_s=0.5)
    assert p.status().state == "ready"
    vprinter.set_mode("down")  # drops the open connection
    with pytest.raises(PrinterError):
        for _ in range(50):
            p.send(JOB * 100)
            time.sleep(0.01)


def test_spool_printer_writes_bytes_text_and_png(tmp_path):
    p = make_printer("virtual", "v", spool_dir=str(tmp_path / "spool"), columns=32)
    assert p.status().state == "ready"
    p.send(JOB)
    assert (tmp_path / "spool" / "0001.bin").read_bytes() == JOB
    assert "小票 test" in (tmp_path / "spool" / "0001.txt").read_text(encoding="utf-8")
    assert (tmp_path / "spool" / "0001.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "spool" / "STATE").write_text("paper_out")
    assert p.status().state == "paper_out"
    p.send(JOB)
    assert not (tmp_path / "spool" / "0002.bin").exists()


def test_usb_endpoints_come_from_the_descriptors():
    # no USB printer exists in CI: the descriptor is the only part that has to be stood in for
    ep = lambda addr, attr=0x02: SimpleNamespace(bEndpointAddress=addr, bmAttributes=attr)
    assert usb_endpoints([ep(0x83, 0x03), ep(0x81), ep(0x02)]) == (0x02, 0x81)
    assert usb_endpoints([ep(0x03)]) == (0x03, 0)
    with pytest.raises(PrinterError):
        usb_endpoints([ep(0x81)])


def test_missing_usb_printer_is_unreachable():
    p = make_printer("usb", "u", vendor_id=0xFFFE, product_id=0xFFFE, timeout_s=0.5)
    st = p.status()
    assert st.state == "unreachable" and "fffe:fffe" in st.detail


def test_file_printer_without_device_is_unreachable(tmp_path):
    p = make_printer("file", "f", path=str(tmp_path / "lp0"))
    assert p.status().state == "unreachable"
    (tmp_path / "lp0").write_bytes(b"")
    assert p.status().state == "unknown"
    p.send(JOB)
    assert (tmp_path / "lp0").read_bytes() == JOB


def test_escpos_leaves_the_root_logger_alone(vprinter):
    # in a fresh interpreter: pytest's own root handlers would hide a basicConfig() call here
    import subprocess
    import sys

    code = (
        "import logging; from drivers.printers import NetworkPrinter;"
        f"p = NetworkPrinter('n', '127.0.0.1', {vprinter.port}, timeout_s=1.0); print(p.status().state); p.close();"
        "print([type(h).__name__ for h in logging.getLogger().handlers])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(__import__("conftest").ROOT))
    assert r.stdout.splitlines() == ["ready", "['NullHandler']"], r.stdout + r.stderr
