"""One document, three outputs: text preview, PNG preview, and image-mode ESC/POS bytes.

All three come from ``render.document_lines(doc)``, the same lines the text-mode bytes print, so
preview and paper agree line for line.
"""

from __future__ import annotations

from pathlib import Path

from drivers.escpos_proto import FEED_TO_TEAR, Line, ParsedJob
from drivers.preview import job_text, lines_image, _qr_image, DOT
from drivers.raster import image_to_escpos

from .render import _ALIGN, CUT, ESC_INIT, QR, Document, Text, document_lines, printable, to_escpos


def preview_text(doc: Document) -> str:
    return job_text(ParsedJob(lines=document_lines(doc), cut=True), doc.columns)


def preview_image(doc: Document):
    return lines_image(document_lines(doc), doc.columns)


def save_png(doc: Document, path: Path) -> None:
    preview_image(doc).save(path, optimize=True)


STRIP_LINES = 32  # image mode draws and converts this many lines at a time: memory stays that of a strip


def to_escpos_image(doc: Document, cut: bool = True) -> bytes:
    """Image mode: the ticket as raster images, for printers without a Chinese font. Drawn strip by
    strip, so a long ticket costs paper, never the memory of one page-sized image."""
    lines = document_lines(doc)
    out = bytearray(ESC_INIT)
    for i in range(0, max(len(lines), 1), STRIP_LINES):
        out += image_to_escpos(lines_image(lines[i : i + STRIP_LINES], doc.columns, margin=False))
    return bytes(out + b"\n" + (CUT if cut else FEED_TO_TEAR))


def qr_as_image(qr: QR) -> bytes:
    return image_to_escpos(_qr_image(qr.data, 16 * DOT))


def _line_as_image(columns: int):  # noqa: ANN202
    def draw(t: Text) -> bytes:
        """A text line the printer's font cannot hold, drawn as a raster image the width of the paper
        (so alignment and size stay those of the line)."""
        line = Line(printable(t.text), _ALIGN[t.align], t.width, t.height, t.bold)
        return image_to_escpos(lines_image([line], columns, margin=False)) + b"\x1ba\x00"
    return draw


def encode(doc: Document, render: str = "text", qr: str = "native", *, cut: bool = True, charset: str = "gb18030") -> bytes:
    """Bytes for a printer with ``render`` (text | image), ``qr`` (native | image), a cutter or not, and a
    font holding ``charset``: in text mode, a line the font cannot hold is drawn as an image."""
    if render == "image":
        return to_escpos_image(doc, cut)
    return to_escpos(doc, qr_encoder=qr_as_image if qr == "image" else None, cut=cut, charset=charset,
                     line_encoder=_line_as_image(doc.columns))


AGENT_SLIPS = ("report", "followups", "unshipped_summary", "prep_reminder", "test_page")


def sample_context(name: str, ev) -> dict:  # noqa: ANN001 - an OrderEvent
    """Data for previewing an agent-made slip from an order event file (``store-agent preview --template``)."""
    o = ev.order
    item = {"id": o.id, "platform": o.platform, "seq": o.seq, "age_min": 75,
            "window_start": o.delivery.window.start if o.delivery and o.delivery.window else None}
    if name == "report":
        paid = o.amounts.paid if o.amounts else 0
        platform = o.platform or "other"
        return {"report": {"period": "day", "v": 1, "from_day": ev.at.date().isoformat() if ev.at else "", "to_day":
                           ev.at.date().isoformat() if ev.at else "", "days": 1,
                           "orders": {"total": 1, "paid_fen": paid, "by_platform": {platform: {"orders": 1, "paid_fen": paid}}},
                           "events": {ev.type: 1}, "tickets": {"receipt": 1, "warm_tip": 1}, "reprints": {}, "results": {},
                           "to_paper_s": {"n": 1, "p50": 0.4, "p95": 0.4, "max": 0.4},
                           "faults": {"paper_out": {"count": 1, "minutes": 4.5}}, "escalations": 0,
                           "alert_response_s": {"n": 0, "median": None, "max": None},
                           "followups": {"done": 1, "reached": 1, "no_answer": 0, "declined": 0, "due": 1, "rate": 1.0}}}
    if name == "followups":
        items = [f"{i.name} x{i.qty}" for i in (o.items or [])][:2]
        return {"orders": [{"order_id": o.id, "platform": o.platform, "seq": o.seq,
                            "delivered_at": ev.at.astimezone().isoformat(timespec="minutes") if ev.at else "",
                            "delivered_by": "completed", "hours_ago": 30.0, "items": items,
                            "customer": o.customer.name if o.customer else None,
                            "phone": o.customer.phone if o.customer else None, "aftersale": False, "done": None}]}
    if name == "unshipped_summary":
        return {"orders": [item], "minutes": 60}
    if name == "prep_reminder":
        return {"orders": [item]}
    return {"printer": {"name": "counter", "connection": "network 192.168.1.50:9100", "paper_width_mm": 80}}
