"""Reading tickets back from the virtual printer."""

import re

from drivers.vprinter import VirtualPrinter

ORDER_RE = re.compile(r"订单号:(\S+)")


def tickets(vp: VirtualPrinter, kind: str = "receipt") -> list[tuple[str, bool]]:
    """(order id, marked reprint) of each complete ticket of ``kind`` that came out, in paper order."""
    out = []
    for j in list(vp.jobs):
        t = j.text
        is_tip = "温馨提示" in t
        if (kind == "warm_tip") != is_tip or (kind == "receipt" and "实付" not in t and "不放价格" not in t):
            continue
        m = ORDER_RE.search(t)
        if m and (j.job.cut or j.job.torn):  # complete: cut, or fed to the tear bar (no cutter)
            out.append((m.group(1), "补打" in t))
    return out


def check_exactly_once(vp: VirtualPrinter, order_ids: list[str], kind: str = "receipt") -> dict[str, int]:
    """Every order came out at least once; never twice unless the extra copies are marked 补打."""
    seen: dict[str, list[bool]] = {}
    for oid, reprint in tickets(vp, kind):
        seen.setdefault(oid, []).append(reprint)
    missing = [o for o in order_ids if o not in seen]
    unmarked_dupes = {o: marks for o, marks in seen.items() if marks.count(False) > 1}
    assert not missing, f"{kind}: never printed: {missing[:10]} ({len(missing)})"
    assert not unmarked_dupes, f"{kind}: printed twice without 补打: {unmarked_dupes}"
    return {
        "orders": len(order_ids),
        "printed": len(seen),
        "extra_marked_copies": sum(len(m) - 1 for m in seen.values()),
        "marked": sum(m.count(True) for m in seen.values()),  # every ticket marked 补打
        "first_copies_marked": sum(1 for m in seen.values() if m[0]),  # a false 补打: the first copy marked
    }
