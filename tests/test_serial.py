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


class SlowSerialPrinter:
    """A serial printer with a receive buffer that prints slower than the line delivers: without flow
    control a burst overruns the buffer and bytes are lost; with XON/XOFF it says XOFF at an eighth full
    and XON when drained, and the host (the kernel's tty, IXON) waits."""

    XON, XOFF = b"\x11", b"\x13"

    # The pty delivers what the host wrote before XOFF at once, up to its own buffers (about 12 KB: the tty
    # buffer limit and n_tty's), where a real UART trickles a FIFO's worth: so the printer says XOFF with most
    # of its buffer still free (more than the pty can hold), as real ones do with a margin.
    def __init__(self, xonxoff: bool, buffer: int = 32768, bytes_per_tick: int = 128, tick_s: float = 0.01) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.xonxoff, self.cap, self.rate, self.tick = xonxoff, buffer, bytes_per_tick, tick_s
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

        while not self.stop.is_set():
            r, _, _ = select.select([self.master], [], [], self.tick)
            if r:
                try:
                    data = os.read(self.master, 4096)
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
                if not self.paused and len(self.buf) > self.cap // 8:
                    os.write(self.master, self.XOFF)
                    self.paused = True
                    self.xoffs += 1
                elif self.paused and len(self.buf) < self.cap // 16:
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
    tickets = [to_escpos(Document("t", 48, tuple(Text(f"{n:02d} {body}") for _ in range(40)) + (Cut(),))) for n in range(20)]
    try:
        for data in tickets:  # a burst: each ticket ~2.5 KB, the printer holds 32 KB
            p.send(data)
        for _ in range(300):
            if len(dev.jobs) >= 20 or (dev.dropped and not dev.buf):
                break
            threading.Event().wait(0.02)
        if flow_control == "xonxoff":
            assert dev.xoffs > 0 and dev.dropped == 0 and len(dev.jobs) == 20  # it had to say "wait", and was heard
            assert all(j.text().count(body) == 40 for j in dev.jobs)  # every line intact
        else:
            assert dev.dropped > 0  # the overrun a store would see as garbled or missing tickets
    finally:
        p.close()
        dev.close()
