"""Receipts rendered per second: template -> document -> ESC/POS bytes, in text and image mode.

    .venv/bin/python bench/render.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.messages import OrderEvent  # noqa: E402
from agent.preview import encode, save_png  # noqa: E402
from agent.tickets import TicketRenderer  # noqa: E402

EVENT = json.loads((ROOT / "tests" / "data" / "examples" / "order-created-meituan.json").read_text(encoding="utf-8"))


def rate(fn, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--png-dir", type=Path, default=None, help="also write receipt-58mm.png / receipt-80mm.png here")
    a = ap.parse_args()
    ev = OrderEvent.model_validate_json(json.dumps(EVENT))
    r = TicketRenderer(store_name="示例大药房(解放碑店)", store_phone="023-6000-0231")
    for columns, mm in ((32, 58), (48, 80)):
        for mode in ("text", "image"):
            per_s = rate(lambda: encode(r.render("receipt", ev, columns=columns), mode), a.seconds)
            print(f"{mm} mm  {mode:<5}  {per_s:8.1f} receipts/s  ({1000 / per_s:6.2f} ms each)")
        if a.png_dir:
            a.png_dir.mkdir(parents=True, exist_ok=True)
            save_png(r.render("receipt", ev, columns=columns), a.png_dir / f"receipt-{mm}mm.png")
            save_png(r.render("warm_tip", ev, columns=columns), a.png_dir / f"warm-tip-{mm}mm.png")


if __name__ == "__main__":
    main()
