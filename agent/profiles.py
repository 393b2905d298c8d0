"""How tickets are laid out for one printer: its escpos-printer-db profile, its probe, its config.

python-escpos ships the community printer database (escpos-printer-db): per model, the font columns, the
paper width in dots, and whether it has a cutter and native QR codes. A printer's ``profile`` names one;
without it the probe's model string (``GS I 67``) picks one where it matches, else a generic one for the
paper width: ``default`` for 80 mm (cutter, native QR), ``simple`` for 58 mm (the cheap clones: no
cutter, QR drawn as an image). What the printer itself says wins over the profile: a type id (``GS I 2``)
with the autocutter bit decides cut or feed-to-tear. Config keys set to anything but ``auto`` win over both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

from drivers.escpos_caps import CapabilitiesError, profiles
from drivers.preview import DOT

GENERIC = {58: "simple", 80: "default"}
DOTS = {58: 384, 80: 576}


@dataclass(frozen=True)
class Output:
    profile: str  # the profile in use
    source: str  # config | probe | paper width
    columns: int
    qr: str  # native | image
    cut: bool  # False: feed to the tear bar
    render: str  # text | image
    charset: str
    dots: int  # printable width in dots (image mode, drawn lines)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def match(caps: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The database profile whose name is the model the printer reports (``GS I 67``), if any."""
    ident = (caps or {}).get("ident") or {}
    model = str(ident.get("model") or "").strip().upper()
    if not model:
        return None
    try:
        names = profiles()
    except CapabilitiesError:
        return None
    for name in names:
        if name.upper() == model:
            return name
    for name in sorted(names, key=len, reverse=True):  # "TM-T88V" reported as "TM-T88V  " or "EPSON TM-T88V"
        if name not in ("default", "simple") and name.upper() in model:
            return name
    return None


def suggest(caps: Optional[Mapping[str, Any]], paper_width_mm: int) -> tuple[str, str]:
    """The profile to use and why (``printers probe`` prints it)."""
    found = match(caps)
    if found:
        return found, f"the printer reports model {((caps or {}).get('ident') or {}).get('model')!r}"
    return GENERIC[paper_width_mm], f"no model the database knows: generic {paper_width_mm} mm"


def choose(p: Any, caps: Optional[Mapping[str, Any]] = None) -> Output:
    """The output for printer config ``p`` given what its probe found (``caps``; None: not probed)."""
    if p.profile:
        name, source = p.profile, "config"
    else:
        found = match(caps)
        name, source = (found, "probe") if found else (GENERIC[p.paper_width_mm], "paper width")
    try:
        prof = profiles().get(name, {})
    except CapabilitiesError:
        prof = {}
    features = prof.get("features") or {}
    columns = p.columns
    if source != "paper width":  # a named model: its own font A columns (a 42-column Epson is not a 48-column clone)
        columns = _int(((prof.get("fonts") or {}).get("0") or {}).get("columns")) or columns
    dots = _int(((prof.get("media") or {}).get("width") or {}).get("pixels")) or DOTS[p.paper_width_mm]
    columns = max(16, min(columns, dots // DOT))  # a drawn line (image mode, a glyph the font lacks) fits the head
    if p.qr != "auto":
        qr = p.qr
    else:
        qr = "native" if features.get("qrCode", True) else "image"
    if p.cut != "auto":
        cut = p.cut == "cut"
    elif caps and caps.get("cutter") is not None:
        cut = bool(caps["cutter"])
    else:
        cut = bool(features.get("paperFullCut") or features.get("paperPartCut")) if features else True
    return Output(profile=name, source=source, columns=columns, qr=qr, cut=cut, render=p.render,
                  charset=p.charset, dots=dots)
