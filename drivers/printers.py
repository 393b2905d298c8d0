"""Receipt printer drivers: python-escpos / pyusb / pyserial behind one small protocol.

``drivers`` never imports ``agent``: the factory takes plain keyword settings.
Library errors are translated here into ``PrinterError`` (nothing reached the
printer) and ``PrinterIOError`` (bytes may have reached paper).

escpos, usb and serial are imported lazily, with python-escpos' import-time
side effects (a temp dir, ``logging.basicConfig()``) neutralised.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from .escpos_caps import CapabilitiesError, prepare_pickle_dir
from .escpos_proto import (TRANSMIT_PAPER_STATUS, TYPE_CUTTER, EscPosParser, ParsedJob, PrinterStatus, dle_eot, fixed_bits_ok,
                           identify, interpret_status, transmit_status_ok)

log = logging.getLogger(__name__)


class PrinterError(Exception):
    """The printer could not be reached; no byte of the job was sent."""


class PrinterIOError(PrinterError):
    """Sending failed part-way: some bytes may have reached paper."""


class Printer(Protocol):
    name: str
    queryable: bool

    def status(self, maintain: str = "no") -> PrinterStatus: ...

    def send(self, data: bytes, on_written: Callable[[], None] = ..., paper_mm: float = ...) -> None: ...

    def close(self) -> None: ...


_escpos_lock = threading.Lock()


def import_escpos_printers() -> Any:
    """Import ``escpos.printer`` without its side effects on logging and /tmp, its capability pickle made
    whole first (see drivers/escpos_caps.py); ``PrinterError`` when that cannot be done."""
    with _escpos_lock:
        if "escpos.capabilities" not in sys.modules:  # its import reads (or writes) the pickle: make it whole first
            try:
                os.environ["ESCPOS_CAPABILITIES_PICKLE_DIR"] = prepare_pickle_dir(os.environ.get("ESCPOS_CAPABILITIES_PICKLE_DIR"))
            except CapabilitiesError as e:
                raise PrinterError(str(e)) from e
        root = logging.getLogger()
        before = list(root.handlers)
        import escpos.printer as ep  # noqa: PLC0415 - lazy on purpose

        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
        if not root.handlers:
            # escpos logs through logging.info() & co., which call basicConfig() whenever the root
            # logger has no handler: a NullHandler keeps it from installing a stderr handler later
            root.addHandler(logging.NullHandler())
        logging.getLogger("escpos").setLevel(logging.WARNING)
        return ep


class _Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def read1(self, timeout: float) -> Optional[int]: ...

    def drain(self) -> None: ...

    def close(self) -> None: ...


class StreamPrinter:
    """A printer reached through a byte stream that can answer ``DLE EOT``.

    Subclasses provide ``_connect()``. The connection is kept open between jobs
    and re-made after any error.
    """

    queryable = True

    CHUNK = 4096
    CONFIRM_BYTES_PER_S = 4096  # how long a job may take to print, at worst, before GS r must answer ...
    SLOWEST_MM_S = 40.0  # ... or its paper at the slowest thermal printer's speed, whichever is longer
    PROBE_WAIT_S = 1.0  # how long a probe waits for each answer (an idle printer answers in milliseconds; a busy
    # one's GS r is asked again later). 0.3 s was tried: it changed the SIGKILL drill's figures (see RELIABILITY)
    STRINGS_WAIT_S = 0.25  # GS I 65..69 (names), asked only of a printer that has just answered GS I 1..3: one
    # that has them answers at once (20 bytes at 9600 baud: 21 ms); many clones never do, and a new install's
    # first order waits for the probe
    REPROBE_S = 5.0  # an unanswered GS r is asked again this often while the printer is idle and printable ...
    GS_R_TRIES = 3  # ... and taken for "does not answer GS r" after this many probes without an answer
    SETTLE_TRIES = 5  # looks at a printer that stays silent to GS I (busy: another host's long ticket) before
    # what is known is used as it is (about 15 s with the default print.retry_s; orders wait meanwhile)

    def __init__(self, name: str, timeout_s: float = 3.0, status_query: bool = True, confirm: "str | bool" = "auto") -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.queryable = status_query
        self.confirm_mode = {True: "gs_r", False: "none"}.get(confirm, confirm)  # type: ignore[call-overload]
        if self.confirm_mode not in CONFIRM_MODES:
            raise ValueError(f"confirm must be one of {', '.join(CONFIRM_MODES)}, not {confirm!r}")
        self.caps: Optional[dict[str, Any]] = None  # what the last probe found (see probe()), or remember() gave
        self.fresh = False  # this run has probed the printer, or found it to be the remembered one
        self._settle_misses = 0  # looks that could not settle it (silent, busy, unreachable)
        self.hint_gs_r: Optional[bool] = None  # what an earlier run found (the journal): used while undecided
        self.on_probe: Callable[[dict[str, Any]], None] = lambda caps: None
        self._gs_r_misses = 0
        self._probed_at = 0.0
        self._t: Optional[_Transport] = None
        self._lock = threading.Lock()

    @property
    def confirm(self) -> bool:
        """Wait for ``GS r 1`` after each job: always with ``gs_r``, never with ``none``. With ``auto``: where
        the probe found the printer answers it; not where it found it never does (``GS_R_TRIES`` idle probes
        without an answer); while undecided (a busy printer holds GS r), as an earlier run found
        (``hint_gs_r``), else not (the DLE EOT checks around each job still apply); not probed at all yet:
        yes (the careful default; the probe runs before the first job)."""
        if not self.queryable or self.confirm_mode == "none":
            return False
        if self.confirm_mode == "gs_r" or self.caps is None:
            return True
        gs_r = self.caps.get("gs_r")
        if gs_r is None:
            return bool(self.hint_gs_r)
        return bool(gs_r)

    @property
    def settled(self) -> bool:
        """What is known of this printer holds for this run: probed in it, or remembered and found to be the
        same printer (``_verify``); a printer that is not asked anything is settled as it is, and so is one
        that stayed silent to ``SETTLE_TRIES`` looks (what is known, or the careful defaults, is used)."""
        return self.fresh or not self.queryable or self._settle_misses >= self.SETTLE_TRIES

    def remember(self, caps: Optional[dict[str, Any]]) -> None:
        """What an earlier run's probe found (the journal). Before it is used for a job, ``status(maintain=
        "first")`` checks that the printer is still the one it describes (``_verify``: its ``GS I 1..3``
        ids, milliseconds): a restart needs no whole probe; a printer swapped meanwhile is probed anew."""
        if not caps:
            return
        with self._lock:
            if self.caps is None:
                self.caps = dict(caps)
            if self.hint_gs_r is None:
                self.hint_gs_r = caps.get("gs_r")

    def _verify(self, t: _Transport) -> None:
        """Remembered caps, not yet checked in this run. The ids the printer gave before (``GS I 1..3``, those
        it answered) asked again: the same -> the memory holds (``fresh``); different -> another printer:
        forgotten, and the whole probe made now. Silent (``GS I`` waits its turn behind a ticket still
        printing; or gone quiet): nothing is concluded, the memory is kept and asked again at the next look
        (``settled`` after ``SETTLE_TRIES`` of them). A printer that never answered ``GS I`` has nothing to
        compare: its memory holds."""
        ident = (self.caps or {}).get("ident") or {}
        known = {k: ident[k] for k in IDENT_NUMBERS.values() if ident.get(k) is not None}
        if not known:
            self.fresh = True
            return
        try:
            t.drain()
            time.sleep(0.05)  # late answers to an earlier look (a USB or serial link keeps them) go first
            t.drain()
            seen = ask_ids(t, min(self.timeout_s, self.PROBE_WAIT_S), known)
        except (OSError, PrinterError):
            self._drop()
            self._settle_misses += 1
            return
        if len(seen) < len(known):
            self._drop()  # (a late answer must not reach a job: jobs wait while the printer is not settled)
            self._settle_misses += 1
            log.info("printer %s: no answer to GS I (busy printing?): asked again at the next look", self.name)
            return
        if seen == known:
            self.fresh, self._settle_misses = True, 0
            return
        log.warning("printer %s: not the printer probed before (GS I ids %s, remembered %s): probing it again",
                    self.name, seen, known)
        self._drop()
        self.caps, self.hint_gs_r, self._gs_r_misses = None, None, 0
        try:
            t = self._transport()
        except PrinterError:
            self._settle_misses += 1
            return
        self._probe(t)

    def probe(self) -> dict[str, Any]:
        """Ask the printer what it does (``DLE EOT``, ``GS r 1``, ``GS I``; see ``probe_transport``), for a
        person (``printers probe``): an unanswered GS r is asked again right away until decided."""
        with self._lock:
            try:
                t = self._transport()
            except PrinterError as e:
                return {"reachable": False, "error": str(e)}
            caps = self._probe(t)
            while (not caps.get("deferred") and caps.get("reachable", True) and self.caps is caps
                   and caps.get("gs_r") is None and self._gs_r_misses < self.GS_R_TRIES):
                time.sleep(0.2)
                try:
                    t = self._transport()
                except PrinterError:
                    break
                self._ask_gs_r_again(t)
                caps = self.caps
            return caps

    def _probe(self, t: _Transport) -> dict[str, Any]:
        self._probed_at = time.monotonic()
        def relink() -> _Transport:  # (over TCP a late answer dies with the old connection)
            self._drop()
            return self._transport()

        try:
            caps = probe_transport(t, min(self.timeout_s, self.PROBE_WAIT_S), self.STRINGS_WAIT_S, relink)
        except (OSError, PrinterError) as e:
            self._drop()
            self._settle_misses += 1
            return {"reachable": False, "error": f"probe failed: {e}"}
        if caps.pop("timed_out", False):
            self._drop()  # an answer that comes late must never pass for a job's confirmation: a fresh link
        if caps.get("deferred"):
            self._settle_misses += 1
            return caps  # silent, offline or busy: nothing is concluded; asked again next time
        old = (self.caps or {}) if self.fresh else {}  # remembered, unchecked caps are no evidence for this printer
        if caps.get("gs_r") is None:  # unanswered: a busy printer holds GS r, a clone never answers it
            if old.get("gs_r") is not None:
                caps["gs_r"] = old["gs_r"]
            else:
                self._gs_r_misses += 1
                if self._gs_r_misses >= self.GS_R_TRIES:
                    caps["gs_r"] = False
        else:
            self._gs_r_misses = 0
        self.fresh, self._settle_misses = True, 0
        self._set_caps(caps)
        return caps

    def _set_caps(self, caps: dict[str, Any]) -> None:
        self.caps = caps
        try:
            self.on_probe(caps)
        except Exception:  # noqa: BLE001 - a listener must not break the driver
            log.exception("printer %s: probe listener failed", self.name)

    def _ask_gs_r_again(self, t: _Transport) -> None:
        """Undecided whether the printer answers GS r: ask once more (idle and printable: it would answer now)."""
        self._probed_at = time.monotonic()
        try:
            t.drain()
            t.write(TRANSMIT_PAPER_STATUS)
            b = t.read1(min(self.timeout_s, self.PROBE_WAIT_S))
        except (OSError, PrinterError):
            self._drop()
            return
        if b is not None and transmit_status_ok(b):
            self._gs_r_misses = 0
            self._set_caps({**(self.caps or {}), "gs_r": True})
            return
        self._drop()  # (a late answer must not reach the next job)
        self._gs_r_misses += 1
        if self._gs_r_misses >= self.GS_R_TRIES:
            self._set_caps({**(self.caps or {}), "gs_r": False})

    def _connect(self) -> _Transport:
        raise PrinterError(f"{type(self).__name__} cannot connect")

    def _transport(self) -> _Transport:
        if self._t is None:
            self._t = self._connect()
        return self._t

    def _drop(self) -> None:
        if self._t is not None:
            try:
                self._t.close()
            except Exception:  # noqa: BLE001 - closing a broken link must not raise
                pass
            self._t = None

    def status(self, maintain: str = "no") -> PrinterStatus:
        """``DLE EOT 1..4``, interpreted. While the printer can print, ``maintain`` says what else may be asked
        in the same turn (only the print worker asks more, on its own thread, before it marks a job):
        ``"no"``: nothing; ``"first"``: settle what is known of the printer (``settled``) if not yet: the
        whole probe when nothing is known of it, else the check that it is the remembered printer
        (``_verify``); ``"idle"`` (nothing waits): the same, then an undecided ``GS r`` asked again every
        ``REPROBE_S``."""
        if not self.queryable:
            return PrinterStatus("unknown", "status queries disabled for this printer")
        with self._lock:
            try:
                t = self._transport()
            except PrinterError as e:
                return PrinterStatus("unreachable", str(e))
            if not self.queryable:  # its connection found it write-only (a USB printer with no IN endpoint)
                return PrinterStatus("unknown", "write-only printer: no status answers")
            answers: dict[int, Optional[int]] = {}
            try:
                t.drain()
                for n in (1, 2, 3, 4):
                    t.write(dle_eot(n))
                    answers[n] = t.read1(self.timeout_s)
                    if answers[n] is None:
                        break
            except (OSError, PrinterError) as e:
                self._drop()
                return PrinterStatus("unreachable", f"status query failed: {e}")
            st = interpret_status(answers)
            if st.state in ("unreachable", "unknown"):
                self._drop()  # a silent or garbled link is re-made next time
            elif not st.printable or maintain == "no":
                pass
            elif self.caps is None:
                self._probe(t)  # while it can print and nothing waits (a held GS r proves nothing)
            elif not self.fresh:
                self._verify(t)
            elif (maintain == "idle" and self.caps.get("gs_r") is None and self.confirm_mode == "auto"
                  and time.monotonic() - self._probed_at >= self.REPROBE_S):
                self._ask_gs_r_again(t)
            return st

    def online(self) -> Optional[bool]:
        """``DLE EOT 1`` alone (one round trip): True when the printer says it is online, False when
        offline (cover open, paper end, an error: ask ``status()`` why), None when it did not answer
        sensibly. For the checks around a job, between full ``status()`` polls."""
        if not self.queryable:
            return None
        with self._lock:
            try:
                t = self._transport()
                if not self.queryable:
                    return None
                t.drain()
                t.write(dle_eot(1))
                b = t.read1(self.timeout_s)
            except (OSError, PrinterError):
                self._drop()
                return None
            if b is None or not fixed_bits_ok(b):
                self._drop()
                return None
            return not b & 0x08

    def send(self, data: bytes, on_written: Callable[[], None] = lambda: None, paper_mm: float = 0.0) -> None:
        """Write a job (``on_written`` runs once all of it is written); with ``confirm``, return only once the
        printer has processed all of it.

        ``DLE EOT`` is answered in real time, ahead of buffered data, so it cannot tell that a job
        printed. ``GS r 1`` is executed in sequence: its answer arrives after everything before it
        was printed; it is waited for as long as the job's bytes or its paper (``paper_mm`` at the
        slowest printers' speed) can take. No answer in time means the job may not have printed:
        ``PrinterIOError``. Any failure before the first byte is written is a ``PrinterError`` (nothing
        sent), whatever raised it; any after it a ``PrinterIOError``.
        """
        with self._lock:
            try:  # never a probe here: the worker probes before it marks a job printing (agent/printing.py)
                t = self._transport()
                t.drain()  # nothing said before this job may pass for its confirmation
            except PrinterError:
                raise
            except Exception as e:  # noqa: BLE001 - nothing was written: no reprint implied
                self._drop()
                raise PrinterError(f"{self.name}: {type(e).__name__}: {e}") from e
            try:
                for i in range(0, len(data), self.CHUNK):  # the timeout applies per chunk, not per job
                    t.write(data[i : i + self.CHUNK])
                on_written()
                if self.confirm:
                    self._confirm(t, self.timeout_s + max(len(data) / self.CONFIRM_BYTES_PER_S, paper_mm / self.SLOWEST_MM_S))
            except Exception as e:  # noqa: BLE001 - bytes may have reached paper: the next attempt is a 补打
                self._drop()
                raise PrinterIOError(f"{self.name}: {e}") from e

    def _confirm(self, t: _Transport, wait_s: float) -> None:
        t.write(TRANSMIT_PAPER_STATUS)
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            b = t.read1(max(left, 0.01)) if left > 0 else None
            if b is None:
                raise PrinterIOError(f"no confirmation within {wait_s:.1f}s that the job printed")
            if transmit_status_ok(b):
                return  # (stray DLE EOT answers have bit 4 set and are skipped)

    def close(self) -> None:
        with self._lock:
            self._drop()


CONFIRM_MODES = ("auto", "gs_r", "none")
IDENT_NUMBERS = {1: "model_id", 2: "type_id", 3: "firmware_id"}
IDENT_STRINGS = {65: "firmware", 66: "maker", 67: "model", 68: "serial", 69: "font"}


def _read_block(t: _Transport, wait: float) -> Optional[str]:
    """A ``GS I 65..69`` answer: ``_``, text, NUL. None when the printer said nothing."""
    b = t.read1(wait)
    if b is None:
        return None
    if b != 0x5F:
        return ""
    data = bytearray()
    while len(data) < 80:
        b = t.read1(wait)
        if b is None or b == 0:
            break
        data.append(b)
    return "".join(c for c in data.decode("ascii", errors="replace") if c.isprintable()).strip()


def ask_ids(t: _Transport, wait: float, only: Optional[Any] = None) -> dict[str, int]:
    """``GS I 1/2/3`` (all, or those whose key is in ``only``), in order, each waited for at most ``wait``;
    stops at the first one not answered (what came back so far)."""
    ids: dict[str, int] = {}
    for n, key in IDENT_NUMBERS.items():
        if only is not None and key not in only:
            continue
        t.write(identify(n))
        b = t.read1(wait)
        if b is None:
            break
        ids[key] = b
    return ids


def probe_transport(t: _Transport, wait: float, strings_wait: Optional[float] = None,
                    relink: Optional[Callable[[], _Transport]] = None) -> dict[str, Any]:
    """What a printer does, asked in an order that never makes a simple one print garbage:

    * ``DLE EOT 1`` answered (fixed bits right)? If not, nothing more is asked: silence is never
      taken for a capability (a silent printer is configured ``status_query = false`` by a person).
    * ``GS r 1`` answered? Then jobs can be confirmed (``confirm = "auto"``). Unanswered is undecided
      (``None``): a busy printer holds it; the driver asks again and decides "no" only after
      ``GS_R_TRIES`` idle probes.
    * ``GS I 1/2/3`` (model, type, firmware ids; type bit 1 = autocutter), on a new link (``relink``) when
      ``GS r`` went unanswered (its answer may still come and must not pass for an id), and where those are
      answered ``GS I 65..69`` (firmware, maker, model, serial, font strings), each waited for at most
      ``strings_wait`` (default ``wait``).
    """
    caps: dict[str, Any] = {"reachable": True, "dle_eot": False, "gs_r": False, "ident": {}, "cutter": None,
                            "probed_at": time.time()}
    t.drain()
    t.write(dle_eot(1))
    b = t.read1(wait)
    caps["dle_eot"] = b is not None and fixed_bits_ok(b)
    if not caps["dle_eot"]:  # silent (write-only, hung, busy) or garbled: nothing is concluded from it
        return {**caps, "gs_r": None, "deferred": "no answer to DLE EOT", "timed_out": b is None}
    if b & 0x08:  # offline (cover, paper, error): it would hold GS r, which then proves nothing
        return {**caps, "gs_r": None, "deferred": "printer offline"}
    t.write(TRANSMIT_PAPER_STATUS)
    b = t.read1(wait)
    caps["gs_r"] = True if b is not None and transmit_status_ok(b) else None  # None: undecided (busy, or never)
    timed_out = b is None
    if timed_out and relink is not None:
        t = relink()
    ident: dict[str, Any] = ask_ids(t, wait)
    if len(ident) < len(IDENT_NUMBERS):
        timed_out = True
    if ident:
        for n, key in IDENT_STRINGS.items():
            t.write(identify(n))
            text = _read_block(t, wait if strings_wait is None else min(wait, strings_wait))
            if text is None:
                timed_out = True
                break
            if text:
                ident[key] = text
    if "type_id" in ident:
        caps["cutter"] = bool(ident["type_id"] & TYPE_CUTTER)
    caps["ident"] = ident
    caps["timed_out"] = timed_out  # the driver drops the link then: a late answer never reaches a later job
    time.sleep(0.05)
    t.drain()
    return caps


# ------------------------------------------------------------------ network


class _SocketTransport:
    """A printer's TCP socket. The socket keeps one timeout, changed only when a read waits longer or
    shorter (Python's timed socket calls poll() before every send and receive anyway), and ``drain``
    asks poll() alone whether anything is waiting: a status round trip is five system calls, not nine
    (each one lets another thread take the GIL)."""

    def __init__(self, sock: socket.socket, closer: Any, timeout: float) -> None:
        self.sock = sock
        self._closer = closer
        self.timeout = timeout
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def _wait(self, timeout: float) -> None:
        if self.sock.gettimeout() != timeout:  # gettimeout() is a field: no system call
            self.sock.settimeout(timeout)

    def write(self, data: bytes) -> None:
        self._wait(self.timeout)  # a printer that stops reading must not block us forever
        self.sock.sendall(data)

    def read1(self, timeout: float) -> Optional[int]:
        self._wait(timeout)
        try:
            b = self.sock.recv(1)
        except socket.timeout:
            return None
        if not b:
            raise PrinterIOError("connection closed by printer")
        return b[0]

    def drain(self) -> None:
        """Drop whatever the printer said that nobody read (a late answer must not pass for the next one)."""
        while self._poll.poll(0):  # readable: data, or the printer closed its end (recv says which)
            self._wait(self.timeout)
            try:
                if not self.sock.recv(64):
                    return  # closed: the next read says so
            except socket.timeout:  # readable yet nothing came (not on Linux TCP): nothing to drop
                return

    def close(self) -> None:
        self._closer()


class NetworkPrinter(StreamPrinter):
    """Raw TCP (port 9100) through ``escpos.printer.Network``."""

    def __init__(self, name: str, host: str, port: int = 9100, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.host, self.port = host, port

    def _connect(self) -> _Transport:
        ep = import_escpos_printers()
        dev = ep.Network(self.host, port=self.port, timeout=self.timeout_s)
        try:
            dev.open()
        except Exception as e:  # escpos raises DeviceNotFoundError wrapping OSError
            raise PrinterError(f"{self.host}:{self.port}: {e}".replace("\n", " ")) from e
        sock = dev.device
        sock.settimeout(self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _SocketTransport(sock, dev.close, self.timeout_s)


# ---------------------------------------------------------------------- usb


def usb_endpoints(interface: Any) -> tuple[int, int]:
    """Bulk OUT and IN endpoint addresses from an interface descriptor (IN may be absent: 0)."""
    out_ep = in_ep = 0
    for ep in interface:
        addr = ep.bEndpointAddress
        if (ep.bmAttributes & 0x03) != 0x02:  # bulk only
            continue
        if addr & 0x80:
            in_ep = in_ep or addr
        else:
            out_ep = out_ep or addr
    if not out_ep:
        raise PrinterError("USB interface has no bulk OUT endpoint")
    return out_ep, in_ep


class _UsbTransport:
    def __init__(self, dev: Any, in_ep: int, timeout_ms: int) -> None:
        self.dev, self.in_ep, self.timeout_ms = dev, in_ep, timeout_ms

    def write(self, data: bytes) -> None:
        self.dev._raw(data)

    def read1(self, timeout: float) -> Optional[int]:
        if not self.in_ep:
            return None
        import usb.core  # noqa: PLC0415

        try:
            data = self.dev.device.read(self.in_ep, 64, int(timeout * 1000))
        except usb.core.USBTimeoutError:
            return None
        except usb.core.USBError as e:
            raise PrinterIOError(f"USB read: {e}") from e
        return data[-1] if len(data) else None

    def drain(self) -> None:
        if self.in_ep:
            while self.read1(0.01) is not None:
                pass

    def close(self) -> None:
        self.dev.close()


class UsbPrinter(StreamPrinter):
    """USB printer class device through ``escpos.printer.Usb`` with endpoints from its descriptors."""

    def __init__(self, name: str, vendor_id: int, product_id: int, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.vendor_id, self.product_id = vendor_id, product_id

    def _connect(self) -> _Transport:
        try:
            import usb.core  # noqa: PLC0415
        except ImportError as e:
            raise PrinterError(f"pyusb unavailable: {e}") from e
        ident = f"USB {self.vendor_id:04x}:{self.product_id:04x}"
        try:
            found = usb.core.find(idVendor=self.vendor_id, idProduct=self.product_id)
            if found is None:
                raise PrinterError(f"{ident} not found (unplugged or no permission)")
            try:
                intf = found.get_active_configuration()[(0, 0)]
            except usb.core.USBError:  # not configured yet
                intf = found[0][(0, 0)]
            out_ep, in_ep = usb_endpoints(intf)
            ep = import_escpos_printers()
            dev = ep.Usb(self.vendor_id, self.product_id, timeout=int(self.timeout_s * 1000), in_ep=in_ep or 0x82, out_ep=out_ep)
            dev.open()
        except PrinterError:
            raise
        except Exception as e:  # usb.core.USBError, escpos errors
            raise PrinterError(f"{ident}: {e}") from e
        if not in_ep and self.queryable:
            log.warning("%s has no IN endpoint: it cannot answer status queries; printing unconfirmed", ident)
            self.queryable = False
        return _UsbTransport(dev, in_ep, int(self.timeout_s * 1000))


# ------------------------------------------------------------------- serial


class _SerialTransport:
    def __init__(self, dev: Any) -> None:
        self.dev = dev

    def write(self, data: bytes) -> None:
        self.dev._raw(data)

    def read1(self, timeout: float) -> Optional[int]:
        ser = self.dev.device
        ser.timeout = timeout
        b = ser.read(1)
        return b[0] if b else None

    def drain(self) -> None:
        self.dev.device.reset_input_buffer()

    def close(self) -> None:
        self.dev.close()


FLOW_CONTROLS = ("none", "rtscts", "xonxoff", "dsrdtr")  # how the printer says "my buffer is full": a burst cannot overrun it


class SerialPrinter(StreamPrinter):
    def __init__(self, name: str, device: str, baudrate: int = 19200, flow_control: str = "none", **kw: Any) -> None:
        super().__init__(name, **kw)
        if flow_control not in FLOW_CONTROLS:
            raise ValueError(f"flow_control must be one of {', '.join(FLOW_CONTROLS)}, not {flow_control!r}")
        self.device, self.baudrate, self.flow_control = device, baudrate, flow_control

    def _connect(self) -> _Transport:
        ep = import_escpos_printers()
        try:
            # escpos' Serial turns on DSR/DTR handshaking by default and has no RTS/CTS: set all three here
            dev = ep.Serial(devfile=self.device, baudrate=self.baudrate, timeout=self.timeout_s,
                            xonxoff=self.flow_control == "xonxoff", dsrdtr=self.flow_control == "dsrdtr")
            dev.open()
            dev.device.rtscts = self.flow_control == "rtscts"
            dev.device.write_timeout = self.timeout_s
        except Exception as e:
            raise PrinterError(f"{self.device}: {e}") from e
        return _SerialTransport(dev)


# --------------------------------------------------------------------- file


class FilePrinter:
    """A write-only device file such as /dev/usb/lp0 (``escpos.printer.File``): no status answers."""

    queryable = False

    def __init__(self, name: str, path: str, **_: Any) -> None:
        self.name, self.path = name, path

    def status(self, maintain: str = "no") -> PrinterStatus:
        if not os.path.exists(self.path):
            return PrinterStatus("unreachable", f"{self.path} does not exist")
        if not os.access(self.path, os.W_OK):
            return PrinterStatus("unreachable", f"{self.path} is not writable by this user")
        return PrinterStatus("unknown", "write-only device: status not available")

    def send(self, data: bytes, on_written: Callable[[], None] = lambda: None, paper_mm: float = 0.0) -> None:
        ep = import_escpos_printers()
        try:
            dev = ep.File(devfile=self.path, auto_flush=True)
            dev.open()
        except Exception as e:
            raise PrinterError(f"{self.path}: {e}") from e
        try:
            dev._raw(data)
            dev.flush()
        except Exception as e:
            raise PrinterIOError(f"{self.path}: write failed: {e}") from e
        finally:
            try:
                dev.close()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ virtual


class SpoolPrinter:
    """The ``virtual`` connection: no hardware; each job's bytes plus text/PNG previews go to a spool dir.

    A file ``STATE`` in the spool dir (one word: ready, paper_out, cover_open, ...) sets what the
    printer reports, so a technician can rehearse faults without a printer.
    """

    queryable = True

    def __init__(self, name: str, spool_dir: str, columns: int = 48, **_: Any) -> None:
        self.name = name
        self.dir = Path(spool_dir)
        self.columns = columns
        self._lock = threading.Lock()

    def _state(self) -> str:
        try:
            return (self.dir / "STATE").read_text().strip() or "ready"
        except FileNotFoundError:
            return "ready"
        except OSError as e:
            return f"unreachable:{e}"

    def status(self, maintain: str = "no") -> PrinterStatus:
        from .escpos_proto import STATES

        state = self._state()
        if state not in STATES:
            return PrinterStatus("unknown", f"spool STATE file says {state!r}")
        return PrinterStatus(state, "virtual printer")

    def send(self, data: bytes, on_written: Callable[[], None] = lambda: None, paper_mm: float = 0.0) -> None:
        from .preview import write_job_files

        with self._lock:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise PrinterError(f"spool dir {self.dir}: {e}") from e
            if not self.status().printable:
                return  # like paper: nothing comes out; the after-job status check will say why
            jobs: list[ParsedJob] = []
            parser = EscPosParser(jobs.append)
            parser.feed(data)
            tail = parser.flush_incomplete()
            if tail is not None:
                jobs.append(tail)
            try:
                for job in jobs:
                    write_job_files(self.dir, job, self.columns)
            except OSError as e:
                raise PrinterIOError(f"spool dir {self.dir}: {e}") from e

    def close(self) -> None:
        pass


def make_printer(connection: str, name: str, **settings: Any) -> Printer:
    """The one factory: ``connection`` is network | usb | serial | file | virtual."""
    kw = {"timeout_s": settings.pop("timeout_s", 3.0), "status_query": settings.pop("status_query", True),
          "confirm": settings.pop("confirm", "auto")}
    if connection == "network":
        return NetworkPrinter(name, settings["host"], settings.get("port", 9100), **kw)
    if connection == "usb":
        return UsbPrinter(name, settings["vendor_id"], settings["product_id"], **kw)
    if connection == "serial":
        return SerialPrinter(name, settings["device"], settings.get("baudrate", 19200), settings.get("flow_control", "none"), **kw)
    if connection == "file":
        return FilePrinter(name, settings["path"])
    if connection == "virtual":
        return SpoolPrinter(name, settings["spool_dir"], settings.get("columns", 48))
    raise ValueError(f"unknown printer connection {connection!r}")
