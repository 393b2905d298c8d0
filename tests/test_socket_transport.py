"""The network printer's socket transport (drivers/printers.py ``_SocketTransport``), against a real peer socket.

``drain`` must drop everything the printer said that nobody read (a late answer must never pass for the
answer to the next question), return at once when there is nothing, and leave a closed connection for the
next read to report; reads and writes keep their timeouts."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from drivers.printers import PrinterIOError, _SocketTransport


@pytest.fixture()
def pair():
    """The agent's end and the printer's end of a real loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname(), timeout=2.0)
        b, _ = srv.accept()
    a.settimeout(2.0)
    t = _SocketTransport(a, a.close, 2.0)
    yield t, b
    a.close()
    b.close()


def test_drain_drops_unread_bytes_and_the_next_answer_is_the_real_one(pair):
    t, printer = pair
    printer.sendall(b"\x12" * 150)  # late answers, more than one recv(64) holds
    time.sleep(0.05)
    t.drain()
    t.write(b"\x10\x04\x01")
    assert printer.recv(3) == b"\x10\x04\x01"
    printer.sendall(b"\x16")
    assert t.read1(1.0) == 0x16


def test_drain_with_nothing_waiting_returns_at_once_and_keeps_the_timeout(pair):
    t, _ = pair
    t0 = time.monotonic()
    t.drain()
    assert time.monotonic() - t0 < 0.5
    assert t.sock.gettimeout() == 2.0


def test_a_read_that_times_out_says_none_and_a_later_late_byte_is_drained(pair):
    t, printer = pair
    assert t.read1(0.05) is None
    printer.sendall(b"\x12")  # the answer to the question that timed out
    time.sleep(0.05)
    t.drain()
    assert t.read1(0.05) is None  # it did not pass for the answer to the next question
    assert t.sock.gettimeout() == 0.05
    t.write(b"x")  # writes go back to the transport's own timeout
    assert t.sock.gettimeout() == 2.0


def test_a_closed_printer_is_reported_by_the_next_read_not_hidden_by_drain(pair):
    t, printer = pair
    printer.sendall(b"\x12")
    printer.close()
    time.sleep(0.05)
    t.drain()
    with pytest.raises(PrinterIOError, match="closed"):
        t.read1(0.5)


def test_a_printer_that_resets_the_connection_is_an_error_not_a_hang(pair):
    t, printer = pair
    printer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    printer.close()  # RST, as a printer that reboots
    time.sleep(0.05)
    with pytest.raises(OSError):
        t.drain()
        t.read1(0.5)
