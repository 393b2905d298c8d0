"""ESC/POS protocol pieces shared by the drivers and the virtual printers.

* ``DLE EOT n`` real-time status: the queries and a strict parser (fixed bits
  checked; a missing answer means *unreachable*, never *ready*).
* ``EscPosParser``: a streaming parser of the commands store-agent (and common
  host software) sends, used by the virtual printers to split jobs at cuts and
  to turn them back into text lines for previews and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

DLE, EOT, ESC, GS, FS, LF = 0x10, 0x04, 0x1B, 0x1D, 0x1C, 0x0A

STATES = ("ready", "paper_low", "paper_out", "cover_open", "offline", "unreachable", "unknown")
PRINTABLE_STATES = ("ready", "paper_low")


def dle_eot(n: int) -> bytes:
    if n not in (1, 2, 3, 4):
        raise ValueError(f"DLE EOT n must be 1..4, got {n}")
    return bytes((DLE, EOT, n))


def fixed_bits_ok(b: int) -> bool:
    """Every DLE EOT answer has bit 1 and bit 4 set, bit 0 and bit 7 clear."""
    return (b & 0x93) == 0x12


@dataclass(frozen=True)
class PrinterStatus:
    state: str
    detail: str = ""
    raw: tuple[Optional[int], ...] = ()
    error: bool = False  # the agent failed here, not the printer: a fault whatever the state says

    @property
    def printable(self) -> bool:
        return self.state in PRINTABLE_STATES


def interpret_status(answers: dict[int, Optional[int]]) -> PrinterStatus:
    """Turn the answers to ``DLE EOT 1..4`` into one state.

    ``answers`` maps n to the answered byte, or None when the printer said nothing.
    """
    raw = tuple(answers.get(n) for n in (1, 2, 3, 4))
    if all(v is None for v in raw):
        return PrinterStatus("unreachable", "no answer to DLE EOT", raw)
    missing = [n for n in (1, 2, 4) if answers.get(n) is None]
    if missing:
        return PrinterStatus("unknown", f"no answer to DLE EOT {missing}", raw)
    bad = [n for n, v in answers.items() if v is not None and not fixed_bits_ok(v)]
    if bad:
        return PrinterStatus("unknown", f"malformed answer to DLE EOT {bad}: " + " ".join(f"{answers[n]:#04x}" for n in bad), raw)
    s1, s2, s4 = answers[1], answers[2], answers[4]
    s3 = answers.get(3)
    if s2 & 0x04:
        return PrinterStatus("cover_open", "cover is open", raw)
    if (s4 & 0x60) or (s2 & 0x20):
        return PrinterStatus("paper_out", "paper roll end", raw)
    if s3 is not None and s3 & 0x68:
        causes = [c for bit, c in ((0x08, "autocutter error"), (0x20, "unrecoverable error"), (0x40, "auto-recoverable error (head temperature)")) if s3 & bit]
        return PrinterStatus("offline", ", ".join(causes), raw)
    if s1 & 0x08 or s2 & 0x40:
        return PrinterStatus("offline", "printer reports offline", raw)
    if s4 & 0x0C:
        return PrinterStatus("paper_low", "paper near end", raw)
    return PrinterStatus("ready", "", raw)


TRANSMIT_PAPER_STATUS = b"\x1dr\x01"  # GS r 1: paper sensor status, answered in sequence
TEAR_DOTS = 128  # ESC J n with n >= this: the feed to the tear bar that ends a ticket on a printer without a cutter
FEED_TO_TEAR = bytes((ESC, ord("J"), 160))  # 160 dots = 20 mm at 203 dpi: the ticket's end clears the tear bar


LINE_MM = 3.75  # one text line at the default 30-dot line spacing, 203 dpi
QR_MM, BARCODE_MM, CUT_FEED_MM, TEAR_FEED_MM = 25.0, 12.0, 3 * LINE_MM, 20.0


def paper_mm(lines: "list[Line]", cut: bool) -> float:
    """The paper a ticket of these lines uses: lines (double height counts twice), codes, images (their
    dots at 203 dpi), and the feed to the cutter or to the tear bar."""
    mm = 0.0
    for line in lines:
        if line.kind == "qr":
            mm += QR_MM
        elif line.kind == "barcode":
            mm += BARCODE_MM
        elif line.kind == "image":
            try:
                mm += int(line.text.rstrip("]").split("x")[-1]) / 203 * 25.4
            except ValueError:
                mm += LINE_MM
        else:
            mm += LINE_MM * line.height
    return mm + (CUT_FEED_MM if cut else TEAR_FEED_MM)  # (a job ended by neither is counted as torn)


def identify(n: int) -> bytes:
    """``GS I n``: 1 model id, 2 type id, 3 firmware id (one byte each); 65..69 firmware version, maker,
    model, serial number, font (``_`` + text + NUL, where supported)."""
    return bytes((GS, ord("I"), n))


# type id (GS I 2) bits
TYPE_MULTIBYTE, TYPE_CUTTER = 0x01, 0x02


def _in_font(ch: str, font: str) -> bool:
    try:
        ch.encode(font)
    except UnicodeEncodeError:
        return False
    return True


def transmit_status_ok(b: int) -> bool:
    """A ``GS r 1`` answer: bit 4 and bit 7 are 0 (a DLE EOT answer always has bit 4 set)."""
    return (b & 0x90) == 0


def transmit_status_byte(state: str) -> int:
    return 0x03 if state == "paper_low" else 0x00


def status_bytes(state: str) -> dict[int, int]:
    """The answers a printer in ``state`` gives (used by the virtual printers)."""
    s1, s2, s3, s4 = 0x12, 0x12, 0x12, 0x12
    if state == "paper_low":
        s4 |= 0x0C
    elif state == "paper_out":
        s1 |= 0x08
        s2 |= 0x20
        s4 |= 0x6C
    elif state == "cover_open":
        s1 |= 0x08
        s2 |= 0x04
    elif state == "offline":
        s1 |= 0x08
        s2 |= 0x40
    return {1: s1, 2: s2, 3: s3, 4: s4}


# ---------------------------------------------------------------- parsing


@dataclass
class Line:
    text: str
    align: int = 0  # 0 left, 1 centre, 2 right
    width: int = 1  # character width multiplier
    height: int = 1
    bold: bool = False
    kind: str = "text"  # text | qr | barcode | image


@dataclass
class ParsedJob:
    lines: list[Line] = field(default_factory=list)
    raw: bytes = b""
    cut: bool = False
    unknown: list[str] = field(default_factory=list)
    torn: bool = False  # ended at the feed to the tear bar (a printer without a cutter)

    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


# argument lengths of fixed-size commands: prefix -> number of argument bytes
_ESC_ARGS = {b"@": 0, b"!": 1, b"E": 1, b"G": 1, b"-": 1, b"a": 1, b"d": 1, b"J": 1, b"t": 1, b"2": 0, b"3": 1,
             b"M": 1, b"R": 1, b"{": 1, b"p": 3, b"c": 2, b"V": 1, b"U": 1, b"\x20": 1, b"$": 2, b"\\": 2, b"D": -1}
_GS_ARGS = {b"!": 1, b"B": 1, b"h": 1, b"w": 1, b"H": 1, b"f": 1, b"x": 1, b"L": 2, b"W": 2, b"a": 1, b"I": 1, b"r": 1}
_FS_ARGS = {b"&": 0, b".": 0, b"!": 1, b"-": 1, b"W": 1, b"C": 1, b"S": 2}


class EscPosParser:
    """Incremental ESC/POS parser. Feed bytes; finished jobs (split at cuts) go to ``on_job``.

    ``on_status`` is called for each ``DLE EOT n`` with n and must return the byte to answer
    (or None to stay silent); the caller writes it back to the host.
    """

    def __init__(
        self,
        on_job: Callable[[ParsedJob], None],
        on_status: Callable[[int], Optional[int]] | None = None,
        on_transmit_status: Callable[[int], Optional[int]] | None = None,
        on_identify: Callable[[int], Optional[bytes]] | None = None,
        *,
        font: str = "gb18030",
        cutter: bool = True,
    ):
        """``on_transmit_status(n)`` answers ``GS r n``, which (unlike DLE EOT) runs in order, after
        everything before it has printed; None = no answer. ``on_identify(n)`` answers ``GS I n``.
        ``font``: the Chinese characters the printer's font holds (gb18030, gbk, gb2312, big5); others
        come out as ``?``. Without a ``cutter``, cuts are ignored (counted) and a job ends at the
        feed-to-tear (``ESC J n``, n >= 128) the agent sends instead."""
        self._buf = b""
        self._on_job = on_job
        self._on_status = on_status or (lambda n: None)
        self._on_gs_r = on_transmit_status or (lambda n: None)
        self._on_gs_i = on_identify or (lambda n: None)
        self.font, self.cutter = font, cutter
        self.cuts_ignored = 0
        self._reset_job()
        self.answers: bytearray = bytearray()
        self._cut_pending = False
        self._tear = False
        self._skip_raw = False
        self._qr = ""

    def _reset_job(self) -> None:
        self.job = ParsedJob()
        self._text = bytearray()
        self._align = 0
        self._w = self._h = 1
        self._bold = False
        self._chinese = False
        self._cur: Optional[Line] = None

    # -- text assembly: a line takes the style in force at its first character
    def _decode(self) -> None:
        if self._text:
            codec = ("big5" if self.font == "big5" else "gb18030") if self._chinese else "cp437"
            if self._cur is None:
                self._cur = Line("", self._align, self._w, self._h, self._bold)
            text = bytes(self._text).decode(codec, errors="replace")
            if self._chinese and self.font != "gb18030":
                text = "".join(c if c.isascii() or _in_font(c, self.font) else "?" for c in text)
            self._cur.text += text
            self._text.clear()

    def _end_line(self) -> None:
        """LF: the current line (possibly empty) is printed."""
        self._decode()
        self.job.lines.append(self._cur or Line("", self._align, self._w, self._h, self._bold))
        self._cur = None

    def _special(self, kind: str, text: str) -> None:
        self._decode()
        if self._cur is not None:
            self.job.lines.append(self._cur)
            self._cur = None
        self.job.lines.append(Line(text, self._align, 1, 1, False, kind))

    def _finish(self, cut: bool, torn: bool = False) -> None:
        self._decode()
        if self._cur is not None:  # text without LF before the cut is printed by the cut's feed
            self.job.lines.append(self._cur)
        self.job.cut, self.job.torn = cut, torn
        job = self.job
        self._reset_job()
        self._on_job(job)

    def flush_incomplete(self) -> Optional[ParsedJob]:
        """Return (and forget) what arrived since the last cut, e.g. when the host disconnects."""
        if not self.job.raw and not self._text:
            return None
        self._decode()
        if self._cur is not None:
            self.job.lines.append(self._cur)
        job = self.job
        self._reset_job()
        return job

    # -- parsing
    def feed(self, data: bytes) -> None:
        self._buf += data
        while self._buf:
            used = self._step(self._buf)
            if used == 0:
                return  # need more bytes
            if not self._skip_raw:
                self.job.raw += self._buf[:used]
            self._skip_raw = False
            self._buf = self._buf[used:]
            if self._cut_pending:
                self._cut_pending = False
                self._finish(not self._tear, torn=self._tear)
                self._tear = False

    def _step(self, b: bytes) -> int:
        c = b[0]
        if c == LF:
            self._end_line()
            return 1
        if c == DLE:
            if len(b) < 3:
                return 0
            if b[1] == EOT:
                ans = self._on_status(b[2])
                if ans is not None:
                    self.answers.append(ans)
                self._skip_raw = True  # status queries are not part of any job
                return 3
            self.job.unknown.append(f"DLE {b[1]:#04x}")
            return 2
        if c == ESC:
            return self._esc(b)
        if c == GS:
            return self._gs(b)
        if c == FS:
            return self._fs(b)
        if c < 0x20:
            return 1  # other control bytes (CR, HT, ...) are ignored
        if self._cur is None and not self._text:
            self._cur = Line("", self._align, self._w, self._h, self._bold)
        self._text.append(c)
        return 1

    def _fixed(self, table: dict[bytes, int], b: bytes, name: str) -> int:
        if len(b) < 2:
            return 0
        n = table.get(b[1:2])
        if n is None:
            self.job.unknown.append(f"{name} {b[1]:#04x}")
            return 2
        if n == -1:  # NUL-terminated list (ESC D)
            end = b.find(b"\x00", 2)
            return 0 if end < 0 else end + 1
        if len(b) < 2 + n:
            return 0
        return 2 + n

    def _esc(self, b: bytes) -> int:
        if len(b) < 2:
            return 0
        cmd = b[1:2]
        n = self._fixed(_ESC_ARGS, b, "ESC")
        if n == 0:
            return 0
        arg = b[2] if n >= 3 else None
        if cmd == b"@":
            self._decode()  # a style or mode change mid-line
            self._align, self._w, self._h, self._bold, self._chinese = 0, 1, 1, False, False
        elif cmd == b"a" and arg is not None:
            self._align = arg % 48 if arg >= 48 else arg
        elif cmd == b"E" and arg is not None:
            self._bold = bool(arg & 1)
        elif cmd == b"!" and arg is not None:
            self._bold = bool(arg & 0x08)
            self._h = 2 if arg & 0x10 else 1
            self._w = 2 if arg & 0x20 else 1
        elif cmd == b"d" and arg is not None:
            for _ in range(arg):
                self._end_line()
        elif cmd == b"J" and arg is not None and arg >= TEAR_DOTS and not self.cutter:
            self._cut_pending = True  # fed to the tear bar: the clerk tears the ticket off here
            self._tear = True
        return n

    def _gs(self, b: bytes) -> int:
        if len(b) < 2:
            return 0
        cmd = b[1:2]
        if cmd == b"V":  # cut: GS V m  |  GS V m n (m = 65, 66, 97..)
            if len(b) < 3:
                return 0
            m = b[2]
            n = 3 if m in (0, 1, 48, 49) else 4
            if len(b) < n:
                return 0
            if self.cutter:
                self._cut_pending = True
            else:
                self.cuts_ignored += 1
            return n
        if cmd == b"(":  # GS ( fn pL pH ...
            if len(b) < 5:
                return 0
            size = 5 + b[3] + 256 * b[4]
            if len(b) < size:
                return 0
            if b[2:3] == b"k" and size >= 8:
                cn, fn = b[5], b[6]
                if cn == 49 and fn == 80:  # store QR data
                    self._qr = b[8:size].decode("utf-8", errors="replace")
                elif cn == 49 and fn == 81:  # print stored QR
                    self._special("qr", f"[QR:{self._qr}]")
            return size
        if cmd == b"k":  # barcode: GS k m (n d1..dn) for m >= 65
            if len(b) < 4:
                return 0
            m = b[2]
            if m >= 65:
                size = 4 + b[3]
                if len(b) < size:
                    return 0
                self._special("barcode", f"[BARCODE:{b[4:size].decode('ascii', errors='replace')}]")
                return size
            end = b.find(b"\x00", 3)
            if end < 0:
                return 0
            self._special("barcode", f"[BARCODE:{b[3:end].decode('ascii', errors='replace')}]")
            return end + 1
        if cmd == b"v":  # GS v 0 m xL xH yL yH d...
            if len(b) < 8:
                return 0
            width_bytes = b[4] + 256 * b[5]
            height = b[6] + 256 * b[7]
            size = 8 + width_bytes * height
            if len(b) < size:
                return 0
            self._special("image", f"[IMAGE {width_bytes * 8}x{height}]")
            return size
        n = self._fixed(_GS_ARGS, b, "GS")
        if n and cmd == b"I" and n >= 3:
            self._decode()
            ident = self._on_gs_i(b[2])
            if ident is not None:
                self.answers.extend(ident)
            self._skip_raw = True
        if n and cmd == b"r" and n >= 3:
            self._decode()
            ans = self._on_gs_r(b[2])
            if ans is not None:
                self.answers.append(ans)
            self._skip_raw = True
        if n and cmd == b"!" and n >= 3:
            self._w = (b[2] >> 4) + 1
            self._h = (b[2] & 0x0F) + 1
        return n

    def _fs(self, b: bytes) -> int:
        if len(b) < 2:
            return 0
        cmd = b[1:2]
        n = self._fixed(_FS_ARGS, b, "FS")
        if cmd == b"&":
            self._decode()  # a style or mode change mid-line
            self._chinese = True
        elif cmd == b".":
            self._decode()  # a style or mode change mid-line
            self._chinese = False
        return n
