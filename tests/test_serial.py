"""The serial driver against a virtual printer on a pseudo-terminal (a real tty, no mock)."""

import os
import threading
import tty

from agent.render import Cut, Document, Text, to_escpos
from drivers.escpos_proto import EscPosParser, status_bytes
from drivers.printers import make_printer


def test_serial_printer_over_a_pty():
    master, slave = os.openpty()
    tty.setraw(slave)
    jobs = []
    state = {"mode": "ready"}
    stop = threading.Event()

    def device():
        parser = EscPosParser(jobs.append, lambda n: status_bytes(state["mode"]).get(n), lambda n: 0)
        while not stop.is_set():
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            parser.feed(data)
            if parser.answers:
                os.write(master, bytes(parser.answers))
                parser.answers.clear()

    t = threading.Thread(target=device, daemon=True)
    t.start()
    p = make_printer("serial", "s", device=os.ttyname(slave), baudrate=19200, timeout_s=1.0)
    try:
        assert p.status().state == "ready"
        state["mode"] = "cover_open"
        assert p.status().state == "cover_open"
        state["mode"] = "ready"
        p.send(to_escpos(Document("t", 32, (Text("串口打印 OK"), Cut()))))
        for _ in range(100):
            if jobs:
                break
            threading.Event().wait(0.02)
        assert jobs and jobs[0].text() == "串口打印 OK"
    finally:
        stop.set()
        p.close()
        os.close(slave)
        os.close(master)


def pty_capacity() -> int:
    """How many bytes a pty holds between a writer on its slave side and a reader that does not read."""
    import fcntl  # noqa: PLC0415

    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        fcntl.fcntl(slave, fcntl.F_SETFL, fcntl.fcntl(slave, fcntl.F_GETFL) | os.O_NONBLOCK)
        n = 0
        try:
            while n < 1 << 22:
                n += os.write(slave, b"x" * 1024)
        except BlockingIOError:
            pass
        return n
    finally:
        os.close(slave)
        os.close(master)


class SlowSerialPrinter:
    """A serial printer with a receive buffer that prints slower than the line delivers: without flow
    control a burst overruns the buffer and bytes are lost; with XON/XOFF it says XOFF at an eighth full
    and XON when drained, and the host (the kernel's tty, IXON) waits."""

    XON, XOFF = b"\x11", b"\x13"

    # The pty delivers what the host wrote before XOFF at once, up to its own buffers (20 KB on this
    # kernel, other kernels differ), where a real UART trickles a FIFO's worth: so the printer says XOFF at
    # XOFF_AT and its buffer holds that plus twice what the pty can have in flight, as real ones keep a margin
    # for the bytes already on the wire. The test measures the pty instead of assuming a kernel.
    XOFF_AT = 4096

    def __init__(self, xonxoff: bool, bytes_per_tick: int = 512, wire_per_tick: int = 2048,
                 tick_s: float = 0.01) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.in_flight = pty_capacity()
        buffer = max(32768, self.XOFF_AT + 2 * self.in_flight + 8192)
        self.xonxoff, self.cap, self.rate, self.tick = xonxoff, buffer, bytes_per_tick, tick_s
        self.wire = wire_per_tick
        self.buf = bytearray()
        self.dropped = 0
        self.jobs: list = []
        self.parser = EscPosParser(self.jobs.append, lambda n: status_bytes("ready").get(n), lambda n: 0)
        self.stop = threading.Event()
        self.paused = False
        self.xoffs = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import select  # noqa: PLC0415

        # One tick: the wire brings at most `wire` bytes, the head prints `rate`. Both are counted in ticks of
        # this thread, so a loaded machine slows the wire and the head alike (a real UART is paced by its baud
        # rate, a pty is not).
        while not self.stop.wait(self.tick):
            r, _, _ = select.select([self.master], [], [], 0)
            if r:
                try:
                    data = os.read(self.master, self.wire)
                except OSError:
                    return
                room = self.cap - len(self.buf)
                self.buf += data[:room]
                self.dropped += max(len(data) - room, 0)  # overrun: those bytes never reach the print head
            done, self.buf = bytes(self.buf[: self.rate]), self.buf[self.rate :]
            if done:
                self.parser.feed(done)
                if self.parser.answers:
                    os.write(self.master, bytes(self.parser.answers))
                    self.parser.answers.clear()
            if self.xonxoff:
                if not self.paused and len(self.buf) > self.XOFF_AT:
                    os.write(self.master, self.XOFF)
                    self.paused = True
                    self.xoffs += 1
                elif self.paused and len(self.buf) < self.XOFF_AT // 2:
                    os.write(self.master, self.XON)
                    self.paused = False

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        os.close(self.slave)
        os.close(self.master)


import pytest  # noqa: E402


@pytest.mark.parametrize("flow_control", ["xonxoff", "none"])
def test_a_burst_to_a_slow_serial_printer_overruns_only_without_flow_control(flow_control):
    dev = SlowSerialPrinter(xonxoff=flow_control == "xonxoff")
    p = make_printer("serial", "s", device=os.ttyname(dev.slave), baudrate=115200, timeout_s=5.0,
                     flow_control=flow_control, confirm="none")
    body = "一行收据文字 receipt line 0123456789"
    one = to_escpos(Document("t", 48, tuple(Text(f"00 {body}") for _ in range(40)) + (Cut(),)))
    count = 2 * dev.cap // len(one) + 1  # a burst of twice what the printer holds (each ticket ~2.5 KB)
    tickets = [to_escpos(Document("t", 48, tuple(Text(f"{n:02d} {body}") for _ in range(40)) + (Cut(),)))
               for n in range(count)]
    try:
        for data in tickets:
            p.send(data)
        for _ in range(3000):
            if len(dev.jobs) >= count or (dev.dropped and not dev.buf):
                break
            threading.Event().wait(0.02)
        if flow_control == "xonxoff":
            assert dev.xoffs > 0 and dev.dropped == 0 and len(dev.jobs) == count  # it said "wait", and was heard
            assert all(j.text().count(body) == 40 for j in dev.jobs)  # every line intact
        else:
            assert dev.dropped > 0  # the overrun a store would see as garbled or missing tickets
    finally:
        p.close()
        dev.close()
