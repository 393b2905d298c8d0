"""Images to ESC/POS raster bytes (``GS v 0``) for printers without a Chinese font.

python-escpos' ``EscposImage`` does the 1-bit conversion and the raster packing; the command
framing is written here because ``Escpos.image()`` prints warnings to stdout without a profile.
"""

from __future__ import annotations

from typing import Any

FRAGMENT_ROWS = 960  # printers buffer a limited image height: send tall images in slices


def image_to_escpos(img: Any) -> bytes:
    """A Pillow image (any mode) as ``GS v 0`` raster bit-image bytes; black where the image is dark."""
    from .printers import import_escpos_printers  # noqa: PLC0415 - neutralise escpos' import side effects first

    import_escpos_printers()
    from escpos.image import EscposImage  # noqa: PLC0415

    out = bytearray()
    for part in EscposImage(img.convert("RGB")).split(FRAGMENT_ROWS):
        frag = EscposImage(part)
        out += b"\x1dv0\x00" + frag.width_bytes.to_bytes(2, "little") + frag.height.to_bytes(2, "little")
        out += frag.to_raster_format()
    return bytes(out)
