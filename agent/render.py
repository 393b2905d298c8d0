"""Pure rendering: a neutral document (lines, styles, QR, cut) and its ESC/POS bytes.

No I/O here. Chinese goes to the printer as ``FS &`` (Chinese mode) + GB18030;
characters a printer font cannot hold (emoji, supplementary-plane CJK, private
use, controls) become a defined fallback glyph instead of stray bytes.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Literal, Union

from wcwidth import wcwidth

from drivers.escpos_proto import FEED_TO_TEAR

FALLBACK = "□"  # U+25A1, in GB2312 (A1F5): every Chinese printer font has it

Align = Literal["left", "center", "right"]


@dataclass(frozen=True)
class Text:
    text: str
    align: Align = "left"
    bold: bool = False
    width: int = 1  # 1..2 character width multiplier
    height: int = 1  # 1..2 character height multiplier


@dataclass(frozen=True)
class Feed:
    lines: int = 1


@dataclass(frozen=True)
class QR:
    data: str
    size: int = 6


@dataclass(frozen=True)
class Barcode:
    data: str


@dataclass(frozen=True)
class Cut:
    pass


Block = Union[Text, Feed, QR, Barcode, Cut]


@dataclass(frozen=True)
class Document:
    name: str
    columns: int
    blocks: tuple[Block, ...]


# ------------------------------------------------------------------ text layout


@lru_cache(maxsize=8192)
def _printable_char(ch: str) -> str:
    cat = unicodedata.category(ch)
    if ch in "\n\t" or cat in ("Zl", "Zp"):  # line/paragraph separators: one line stays one line
        return " "
    if cat in ("Cc", "Cf"):
        return ""
    if ord(ch) > 0xFFFF or cat in ("Co", "Cs", "Cn") or wcwidth(ch) < 0:
        return FALLBACK
    return ch


MEMO_CHARS = 200  # lines up to this long are memoised (a ticket's lines pass through up to three times);
# longer text (a whole note before it is cut) is not: thousands of them could hold megabytes of customer data


@lru_cache(maxsize=1024)  # at most about 1 MiB
def _printable_memo(text: str) -> str:
    return "".join(map(_printable_char, text))


def printable(text: str) -> str:
    """Replace what a receipt font cannot print with ``FALLBACK``; drop control characters."""
    if text.isascii() and text.isprintable():
        return text
    if len(text) <= MEMO_CHARS:
        return _printable_memo(text)
    return "".join(map(_printable_char, text))


@lru_cache(maxsize=8192)
def _width(ch: str) -> int:
    return max(wcwidth(ch), 0)


def width_of(text: str) -> int:
    if text.isascii() and text.isprintable():
        return len(text)
    return sum(map(_width, text))


# Chinese line-breaking (禁则): these never start a line; the previous character moves down with them.
NO_LINE_START = set("，。、；：！？）》」』】〕…—,.;:!?)]}%")


def wrap(text: str, columns: int) -> list[str]:
    """Wrap by display width; never split a double-width character, never exceed ``columns``."""
    lines, cur, w = [], "", 0
    for ch in printable(text):
        cw = max(wcwidth(ch), 0)
        if w + cw > columns:
            carry = ""
            if ch in NO_LINE_START and len(cur) > 1 and cur[-1] not in NO_LINE_START and cur[-1] != " ":
                carry, cur = cur[-1], cur[:-1]
            lines.append(cur.rstrip())
            cur, w = carry, width_of(carry)
            if ch == " " and not carry:
                continue
        cur += ch
        w += cw
    if cur.strip() or not lines:
        lines.append(cur.rstrip())
    return lines


def columns_row(left: str, right: str, columns: int) -> list[str]:
    """``left`` wrapped, ``right`` right-aligned on the last line (or its own line when it cannot fit)."""
    right = printable(right)
    rw = width_of(right)
    lines = wrap(left, columns)
    last = lines[-1]
    if width_of(last) + 1 + rw <= columns:
        lines[-1] = last + " " * (columns - width_of(last) - rw) + right
    else:
        lines.append(" " * (columns - rw) + right)
    return lines


def money(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}¥{fen // 100}.{fen % 100:02d}"


# ------------------------------------------------------------------ ESC/POS

ESC_INIT = b"\x1b@"
CHINESE_ON = b"\x1c&"
CUT = b"\x1dVA\x03"  # feed 3 and full cut
_ALIGN = {"left": 0, "center": 1, "right": 2}


def encode_text(text: str) -> bytes:
    """GB18030 bytes of already ``printable()`` text."""
    return printable(text).encode("gb18030")


def _qr_bytes(data: str, size: int) -> bytes:
    payload = data.encode("utf-8")[:700]

    def fn(cn_fn: bytes, body: bytes = b"") -> bytes:
        n = len(cn_fn) + len(body)
        return b"\x1d(k" + bytes((n % 256, n // 256)) + cn_fn + body

    return (
        fn(b"\x31\x41", b"\x32\x00")  # model 2
        + fn(b"\x31\x43", bytes((max(1, min(size, 16)),)))  # module size
        + fn(b"\x31\x45", b"\x31")  # error correction M
        + fn(b"\x31\x50\x30", payload)  # store
        + fn(b"\x31\x51\x30")  # print
    )


def _holds(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def missing_in(text: str, charset: str) -> str:
    """The characters of already ``printable()`` text that a ``charset`` font does not hold (those the
    printer's own code page 437 holds, such as ¥, are not missing: they go out in single-byte mode)."""
    if charset == "gb18030" or text.isascii():
        return ""
    out = []
    for ch in text:
        if not ch.isascii() and ch not in out and not _holds(ch, charset) and not _holds(ch, "cp437"):
            out.append(ch)
    return "".join(out)


def _encode_line(text: str, charset: str) -> bytes:
    """Text in the printer's Chinese encoding; a character outside it but in code page 437 (¥ is not in
    GBK) leaves Chinese mode for its one byte (``FS .`` … ``FS &``)."""
    codec = "big5" if charset == "big5" else "gb18030"
    if charset == "gb18030":
        return text.encode(codec, errors="replace")
    out = bytearray()
    for ch in text:
        if ch.isascii() or _holds(ch, charset):
            out += ch.encode(codec, errors="replace")
        else:
            out += b"\x1c." + ch.encode("cp437", errors="replace") + CHINESE_ON
    return bytes(out)


def _text_escpos(b: Text, encoded: bytes) -> bytes:
    size = ((b.width - 1) << 4) | (b.height - 1)
    return b"\x1ba" + bytes((_ALIGN[b.align],)) + b"\x1d!" + bytes((size,)) + b"\x1bE" + bytes((1 if b.bold else 0,)) + encoded + b"\n"


def _text_bytes(b: Text, charset: str) -> "bytes | None":
    """One text line's bytes (alignment, size, bold, the text), or None when it holds characters the
    printer's ``charset`` lacks (the caller draws the line or prints ``FALLBACK`` for them)."""
    text = printable(b.text)
    if missing_in(text, charset):
        return None
    return _text_escpos(b, _encode_line(text, charset))


# A ticket's fixed lines (store, headings, rules, wording) are the same on every order: their bytes are
# made once. Pure (the same block and charset give the same bytes); lines up to MEMO_CHARS only.
_text_memo = lru_cache(maxsize=1024)(_text_bytes)


def to_escpos(doc: Document, qr_encoder: "Callable[[QR], bytes] | None" = None, *, cut: bool = True,
              charset: str = "gb18030", line_encoder: "Callable[[Text], bytes] | None" = None) -> bytes:
    """Text-mode bytes. ``qr_encoder`` replaces the native ``GS ( k`` QR (for printers without it).
    ``cut=False``: feed to the tear bar instead (no cutter). ``charset``: what the printer's font holds
    (Chinese goes as that encoding); a line with characters outside it goes to ``line_encoder`` (drawn
    as an image) when given, else those characters print as ``FALLBACK``."""
    out = bytearray(ESC_INIT + CHINESE_ON)
    for b in doc.blocks:
        if isinstance(b, Text):
            line = _text_memo(b, charset) if len(b.text) <= MEMO_CHARS else _text_bytes(b, charset)
            if line is None and line_encoder is not None:  # characters outside the printer's charset: drawn
                out += line_encoder(b)
                continue
            if line is None:  # or printed as FALLBACK
                text = printable(b.text)
                for ch in missing_in(text, charset):
                    text = text.replace(ch, FALLBACK)
                line = _text_escpos(b, _encode_line(text, charset))
            out += line
        elif isinstance(b, Feed):
            out += b"\x1bd" + bytes((max(0, min(b.lines, 255)),))
        elif isinstance(b, QR):
            out += b"\x1ba\x01" + (qr_encoder(b) if qr_encoder else _qr_bytes(b.data, b.size)) + b"\n"
        elif isinstance(b, Barcode):
            data = b.data.encode("ascii", errors="replace")[:255]
            out += b"\x1ba\x01\x1dh\x50\x1dw\x02\x1dH\x02" + b"\x1dkI" + bytes((len(data) + 2,)) + b"{B" + data + b"\n"
        elif isinstance(b, Cut):
            out += b"\x1ba\x00\x1d!\x00\x1bE\x00" + (CUT if cut else FEED_TO_TEAR)
    return bytes(out)


def paper_mm(doc: Document, cut: bool = True) -> float:
    """The paper this document takes, by the same measure as ``drivers.escpos_proto.paper_mm`` applied to
    the lines a printer parses back from its bytes (text lines by height, a code and the line fed after it,
    the cut margin or the tear feed), without laying the lines out a second time."""
    from drivers.escpos_proto import BARCODE_MM, CUT_FEED_MM, LINE_MM, QR_MM, TEAR_FEED_MM  # noqa: PLC0415

    mm = 0.0
    for b in doc.blocks:
        if isinstance(b, Text):
            mm += LINE_MM * b.height
        elif isinstance(b, Feed):
            mm += LINE_MM * b.lines
        elif isinstance(b, QR):
            mm += QR_MM + LINE_MM
        elif isinstance(b, Barcode):
            mm += BARCODE_MM + LINE_MM
    return mm + (CUT_FEED_MM if cut else TEAR_FEED_MM)


# ------------------------------------------------------------------ previews (same document as the paper)


def document_lines(doc: Document) -> list["Line"]:
    """The printed lines of a document, in the shape the virtual printers parse back from the bytes."""
    from drivers.escpos_proto import Line  # noqa: PLC0415 - a plain dataclass

    out: list[Line] = []
    for b in doc.blocks:
        if isinstance(b, Text):
            out.append(Line(printable(b.text), _ALIGN[b.align], b.width, b.height, b.bold))
        elif isinstance(b, Feed):
            out += [Line("") for _ in range(b.lines)]
        elif isinstance(b, QR):  # the LF after a code feeds one empty (centred) line on paper
            out += [Line(f"[QR:{b.data}]", 1, 1, 1, False, "qr"), Line("", 1)]
        elif isinstance(b, Barcode):
            out += [Line(f"[BARCODE:{b.data}]", 1, 1, 1, False, "barcode"), Line("", 1)]
    return out
