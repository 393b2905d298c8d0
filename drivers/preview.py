"""Previews of what a printer received: text (column-exact) and PNG (with a CJK font).

Used by the virtual printers (spool driver and the TCP test/demo printer) to
leave each job as ``NNNN.bin`` + ``NNNN.txt`` + ``NNNN.png``.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from pathlib import Path

from wcwidth import wcswidth, wcwidth

from .escpos_proto import Line, ParsedJob

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
)
DOT = 12  # dots per half-width column: 48 columns x 12 = 576 dots (80 mm), 32 x 12 = 384 (58 mm)


def display_width(text: str) -> int:
    w = wcswidth(text)
    if w >= 0:
        return w
    return sum(max(wcwidth(c), 0) for c in text)


def line_text(line: Line, columns: int) -> str:
    """One printed line as text, padded to where the printer puts it (width multiplier counted)."""
    width = display_width(line.text) * line.width
    room = max(columns - width, 0) // line.width
    if line.align == 1:
        pad = room // 2
    elif line.align == 2:
        pad = room
    else:
        pad = 0
    shown = line.text if line.width == 1 else "".join(c + (" " if wcwidth(c) == 1 else "") for c in line.text).rstrip()
    return (" " * pad * line.width + shown).rstrip()


def job_text(job: ParsedJob, columns: int) -> str:
    return "\n".join(line_text(line, columns) for line in job.lines) + ("\n" if job.lines else "")


def find_font() -> str | None:
    for path in FONT_CANDIDATES:
        if os.path.exists(path):
            return path
    return None


def job_png(job: ParsedJob, columns: int, path: Path) -> None:
    lines_image(job.lines, columns).save(path, optimize=True)


def _qr_image(data: str, size_px: int):
    import qrcode  # noqa: PLC0415

    qr = qrcode.QRCode(border=1, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(data)
    qr.make(fit=True)
    return qr.make_image(fill_color="black", back_color="white").get_image().convert("L").resize((size_px, size_px))


def lines_image(lines: list[Line], columns: int, margin: bool = True):
    """Printed lines as a grayscale image ``columns * 12`` dots wide (QR codes drawn as QR codes)."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 - Pillow only when images are made

    width_px = columns * DOT

    qr_px = min(width_px, 16 * DOT)
    heights = [(qr_px + 6 if line.kind == "qr" else 2 * DOT * line.height + 6) for line in lines] or [2 * DOT]
    pad = DOT if margin else 0
    img = Image.new("L", (width_px + 2 * pad, sum(heights) + 2 * pad), 255)
    draw = ImageDraw.Draw(img)
    y = pad
    for line, h in zip(lines, heights):
        x = pad
        if line.kind == "qr" and line.text.startswith("[QR:"):
            img.paste(_qr_image(line.text[4:-1], qr_px), (pad + (width_px - qr_px) // 2, y))
            y += h
            continue
        cols = display_width(line.text) * line.width
        if line.align == 1:
            x += max(columns - cols, 0) * DOT // 2
        elif line.align == 2:
            x += max(columns - cols, 0) * DOT
        for ch in line.text:
            cw = max(wcwidth(ch), 0) * line.width
            if cw and not ch.isspace():
                img.paste(0, (x, y), _glyph(ch, line.width, line.height, line.bold))
            x += cw * DOT
        y += h
    return img


@functools.lru_cache(maxsize=8192)
def _glyph(ch: str, width: int, height: int, bold: bool):
    """A glyph's ink as a mask (255 = black), ``wcwidth * width`` columns wide; cached: receipts repeat glyphs."""
    from PIL import Image, ImageDraw  # noqa: PLC0415

    base = max(wcwidth(ch), 0)
    canvas = Image.new("L", (max(base * DOT * height, 1) + 1, 2 * DOT * height + 6), 0)
    d = ImageDraw.Draw(canvas)
    d.text((0, 0), ch, font=_font(height), fill=255)
    if bold:
        d.text((1, 0), ch, font=_font(height), fill=255)
    if width != height:  # rendered at the height's size, stretched to the width
        canvas = canvas.resize((max(base * DOT * width, 1) + 1, canvas.height))
    return canvas


@functools.lru_cache(maxsize=4)
def _font(h: int):
    from PIL import ImageFont  # noqa: PLC0415

    path = find_font()
    if not path:
        return ImageFont.load_default()
    # face 1 of wqy-microhei.ttc is its monospaced cut: half-width glyphs fill exactly one column
    return ImageFont.truetype(path, 2 * DOT * h, index=1 if path.endswith("microhei.ttc") else 0)


_counter_lock = threading.Lock()


def next_job_number(directory: Path) -> int:
    existing = [int(p.stem) for p in directory.glob("*.bin") if p.stem.isdigit()]
    return max(existing, default=0) + 1


def write_job_files(directory: Path, job: ParsedJob, columns: int, png: bool = True) -> Path:
    """Write ``NNNN.bin``/``.txt``/``.png`` for a job; returns the ``.bin`` path."""
    directory.mkdir(parents=True, exist_ok=True)
    with _counter_lock:
        for n in itertools.count(next_job_number(directory)):
            stem = directory / f"{n:04d}"
            try:
                fd = os.open(stem.with_suffix(".bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                continue
    with os.fdopen(fd, "wb") as f:
        f.write(job.raw)
    stem.with_suffix(".txt").write_text(job_text(job, columns) + ("" if job.cut else "[no cut: incomplete job]\n"), encoding="utf-8")
    if png:
        job_png(job, columns, stem.with_suffix(".png"))
    return stem.with_suffix(".bin")
