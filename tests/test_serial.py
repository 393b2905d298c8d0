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
