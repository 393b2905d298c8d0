"""systemd notify protocol on a real datagram socket: READY, WATCHDOG while healthy, none when a worker wedges."""

import os
import socket
import threading

from conftest import wait_until


def test_watchdog_pings_only_while_workers_are_alive(broker, vprinter, make_agent, store_id, tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    got = []

    def read():
        while True:
            try:
                got.append(sock.recv(256).decode())
            except socket.timeout:
                continue
            except OSError:
                return

    threading.Thread(target=read, daemon=True).start()
    agent = make_agent(broker.port, vprinter.port, store_id, health={"printer_poll_s": 1, "stuck_after_s": 3})
    assert wait_until(lambda: "READY=1" in got and got.count("WATCHDOG=1") >= 2, 10)
    wedge = threading.Event()
    worker = agent.workers["counter"]
    worker.printer.status = lambda **_: wedge.wait()  # the print thread hangs inside a driver call
    assert wait_until(lambda: worker.heartbeat and (__import__("time").monotonic() - worker.heartbeat) > 3.5, 10)
    n = got.count("WATCHDOG=1")
    __import__("time").sleep(2.5)
    assert got.count("WATCHDOG=1") == n  # withheld: systemd restarts the service
    wedge.set()
    worker.printer.status = type(worker.printer).status.__get__(worker.printer)
    assert wait_until(lambda: got.count("WATCHDOG=1") > n, 10)
    sock.close()
