"""A virtual network receipt printer: a TCP server that speaks ESC/POS.

It parses what it receives, records jobs (split at cuts), answers ``DLE EOT``,
``GS r`` and ``GS I`` as its ``personality`` does (see ``PERSONALITIES``), counts
the paper it uses, and can be switched to ``paper_low``, ``paper_out``, ``cover_open``,
``offline``, ``hang`` (accepts, never reads) and ``down`` (refuses
connections). Used by the tests and by ``store-agent demo``; run alone with
``python -m drivers.vprinter --port 9100 --spool DIR``.

While the printer is not printable, received job bytes are discarded (nothing
comes out), exactly like paper that is not there.
"""

from __future__ import annotations

import argparse
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .escpos_proto import PRINTABLE_STATES, EscPosParser, ParsedJob, paper_mm, status_bytes, transmit_status_byte

log = logging.getLogger(__name__)
MODES = ("ready", "paper_low", "paper_out", "cover_open", "offline", "hang", "down")


@dataclass(frozen=True)
class Personality:
    """What kind of printer the virtual printer plays (the ones stores actually buy)."""

    name: str
    dle_eot: bool = True  # answers DLE EOT 1..4
    gs_r: bool = True  # answers GS r 1 (in sequence, after what came before has printed)
    ident: tuple[int, int, int] | None = (0x20, 0x02, 0x40)  # GS I 1/2/3 (2: type id, bit 1 = cutter)
    strings: dict[int, str] | None = None  # GS I 65..69
    cutter: bool = True
    font: str = "gb18030"
    speed_mm_s: float = 0.0  # 0: instant; else GS r answers once the paper before it has come out


PERSONALITIES = {
    "generic": Personality("generic"),  # answers DLE EOT, GS r, GS I 1..3 (cutter); no model string
    "epson": Personality("epson", strings={65: "30.02 ESC/POS", 66: "EPSON", 67: "TM-T88V", 68: "VP0000001", 69: "CHINA GB18030"}),
    "clone": Personality("clone", gs_r=False, ident=(0x20, 0x02, 0x10)),
    "write_only": Personality("write_only", dle_eot=False, gs_r=False, ident=None),
    "no_cutter": Personality("no_cutter", gs_r=False, ident=(0x20, 0x00, 0x10), cutter=False),
    "gbk": Personality("gbk", gs_r=False, ident=(0x20, 0x03, 0x10), font="gbk"),
    "slow": Personality("slow", speed_mm_s=80.0, strings={65: "1.05", 66: "EPSON", 67: "TM-T20II"}),
}


@dataclass
class PrintedJob:
    job: ParsedJob
    at: float  # time.time() when the cut arrived
    conn: int  # connection number it came on
    printed: bool = True

    @property
    def text(self) -> str:
        return self.job.text()


@dataclass
class VirtualPrinter:
    host: str = "127.0.0.1"
    port: int = 0
    spool_dir: Optional[Path] = None
    columns: int = 48
    png: bool = False
    personality: str = "generic"
    jobs: list[PrintedJob] = field(default_factory=list)
    discarded: list[PrintedJob] = field(default_factory=list)
    incomplete: list[PrintedJob] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.mode = "ready"
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._listener: Optional[socket.socket] = None
        self._conns: set[socket.socket] = set()
        self._conn_no = 0
        self.status_queries = 0
        self.ident_asked: list[tuple[float, int]] = []  # (time.time(), n) of each GS I n asked: when it was probed
        self.paper_left: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        if self.personality not in PERSONALITIES:
            raise ValueError(f"unknown personality {self.personality!r}; one of {', '.join(PERSONALITIES)}")
        self.kind = PERSONALITIES[self.personality]
        self.paper_mm = 0.0  # paper used since start (the paper counter the forecast is checked against)
        self.cuts_ignored = 0
        self._busy_until = 0.0  # slow printers: monotonic time the buffered paper is out by

    # -- lifecycle
    def start(self) -> "VirtualPrinter":
        self._listen()
        self._thread = threading.Thread(target=self._accept_loop, name=f"vprinter-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(8)
        s.settimeout(0.1)
        self.port = s.getsockname()[1]
        self._listener = s

    def stop(self) -> None:
        self._stop.set()
        self._close_listener()
        self._close_conns()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "VirtualPrinter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _close_conns(self) -> None:
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self._conns.clear()

    # -- control
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        with self._cv:
            old, self.mode = self.mode, mode
        if mode == "down" and old != "down":
            self._close_listener()
            self._close_conns()
        elif old == "down" and mode != "down":
            self._listen()
        if mode == "hang":
            pass  # connections stay open; the reader stops reading (see _serve)

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        """Wait until ``predicate(self)`` is true (checked on every job)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.2))
            return True

    def wait_jobs(self, n: int, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda p: len(p.jobs) >= n, timeout)

    def texts(self) -> list[str]:
        with self._cv:
            return [j.text for j in self.jobs]

    # -- serving
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            lst = self._listener
            if lst is None:
                time.sleep(0.05)
                continue
            try:
                conn, _ = lst.accept()
            except (socket.timeout, OSError):
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.add(conn)
            self._conn_no += 1
            threading.Thread(target=self._serve, args=(conn, self._conn_no), daemon=True).start()

    def _answer(self, n: int) -> Optional[int]:
        self.status_queries += 1
        if not self.kind.dle_eot:
            return None
        state = self.mode
        return status_bytes(state).get(n)

    def _identify(self, n: int) -> Optional[bytes]:
        self.ident_asked.append((time.time(), n))
        k = self.kind
        self._wait_turn()  # like GS r, processed in sequence
        if k.ident is not None and n in (1, 2, 3):
            return bytes((k.ident[n - 1],))
        if k.strings and n in k.strings:
            return b"_" + k.strings[n].encode("ascii") + b"\x00"
        return None

    def run_out_after(self, jobs: int) -> None:
        """The paper ends during the job after the next ``jobs`` ones: that job is lost, state paper_out."""
        with self._cv:
            self.paper_left = jobs

    def _wait_turn(self) -> None:
        """A command processed in sequence (GS r, GS I): a slow printer answers once what came before is on paper."""
        wait = self._busy_until - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _answer_gs_r(self, n: int) -> Optional[int]:
        # processed in sequence: a printer out of paper or offline holds it until it can print again
        if not self.kind.gs_r:
            return None
        self._wait_turn()
        return transmit_status_byte(self.mode) if self.mode in PRINTABLE_STATES else None

    def _on_job(self, conn_no: int, job: ParsedJob) -> None:
        with self._cv:
            if self.paper_left is not None and self.mode in PRINTABLE_STATES:
                if self.paper_left == 0:
                    self.mode, self.paper_left = "paper_out", None
                else:
                    self.paper_left -= 1
            printed = self.mode in PRINTABLE_STATES
            if printed:
                mm = paper_mm(job.lines, job.cut)
                self.paper_mm += mm
                if self.kind.speed_mm_s:
                    self._busy_until = max(self._busy_until, time.monotonic()) + mm / self.kind.speed_mm_s
            rec = PrintedJob(job, time.time(), conn_no, printed)
            (self.jobs if printed else self.discarded).append(rec)
            if printed and self.spool_dir is not None:
                from .preview import write_job_files  # noqa: PLC0415

                write_job_files(self.spool_dir, job, self.columns, png=self.png)
            self._cv.notify_all()

    def _serve(self, conn: socket.socket, conn_no: int) -> None:
        parser = EscPosParser(lambda job: self._on_job(conn_no, job), self._answer, self._answer_gs_r, self._identify,
                              font=self.kind.font, cutter=self.kind.cutter)
        try:
            while not self._stop.is_set():
                if self.mode == "hang":
                    time.sleep(0.05)  # never read: the host's buffers fill and its queries go unanswered
                    continue
                r, _, _ = select.select([conn], [], [], 0.1)
                if not r:
                    continue
                data = conn.recv(65536)
                if not data:
                    break
                if self.mode == "hang":
                    continue
                parser.feed(data)
                if parser.answers:
                    conn.sendall(bytes(parser.answers))
                    parser.answers.clear()
        except (OSError, ValueError):  # ValueError: the socket was closed under us (mode "down", stop)
            pass
        finally:
            with self._cv:
                self.cuts_ignored += parser.cuts_ignored
            tail = parser.flush_incomplete()
            if tail is not None:
                with self._cv:
                    self.incomplete.append(PrintedJob(tail, time.time(), conn_no, False))
                    self._cv.notify_all()
            self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description="virtual ESC/POS network printer")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--spool", type=Path, default=Path("vprinter-out"))
    ap.add_argument("--columns", type=int, default=48)
    ap.add_argument("--personality", choices=sorted(PERSONALITIES), default="generic",
                    help="what it plays: generic (answers everything), epson (and says it is a TM-T88V), clone (no GS r), write_only (no answers), "
                         "no_cutter, gbk (GBK-only font), slow (80 mm/s)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    p = VirtualPrinter(args.host, args.port, args.spool, args.columns, png=True, personality=args.personality).start()
    print(f"virtual printer on {p.host}:{p.port}, jobs in {args.spool}; modes via stdin: {', '.join(MODES)}", flush=True)
    try:
        for line in iter(input, ""):
            try:
                p.set_mode(line.strip())
                print(f"mode {p.mode}", flush=True)
            except ValueError as e:
                print(e, flush=True)
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        p.stop()


if __name__ == "__main__":
    main()
