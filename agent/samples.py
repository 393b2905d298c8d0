"""Sample order events (for the demo and ``store-agent send --sample``), dated relative to now; ``freshen``
re-dates an example file (``store-agent send --fresh``)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

CST = timezone(timedelta(hours=8))


def _iso(t: datetime) -> str:
    return t.astimezone(CST).isoformat(timespec="seconds")


def sample_events(now: datetime, tag: str = "demo") -> list[dict[str, Any]]:
    placed = now - timedelta(minutes=1)
    window = {"start": _iso(now + timedelta(minutes=30)), "end": _iso(now + timedelta(minutes=60))}
    mt = {
        "id": f"MT-{tag}-8812345678901",
        "platform": "meituan",
        "seq": 23,
        "placed_at": _iso(placed),
        "expires_at": _iso(now + timedelta(hours=2)),
        "delivery": {"mode": "rider", "window": window},
        "customer": {"name": "王*", "phone": "138****5678", "address": "渝中区民族路188号3栋1204"},
        "note": "麻烦快一点，孩子发烧",
        "flags": {"no_price_list": False, "invoice": False, "reship_of": None},
        "items": [
            {"sku": "6901234567892", "name": "布洛芬混悬液(美林)", "spec": "100ml:2g", "qty": 1, "price": 3280, "rx": False, "fever": True, "location": "A-03-2"},
            {"sku": "6920000000011", "name": "医用退热贴", "spec": "6贴/盒", "qty": 2, "price": 1590, "rx": False, "fever": False, "location": "C-11-1"},
            {"sku": "6920000000028", "name": "一次性医用口罩", "spec": "10只/袋", "qty": 1, "price": 990, "rx": False, "fever": False, "location": "D-01-4"},
        ],
        "amounts": {"goods": 7450, "delivery": 400, "packing": 100, "discount": 800, "paid": 7150},
    }
    el = {
        "id": f"EL-{tag}-5021998877",
        "platform": "eleme",
        "seq": 7,
        "placed_at": _iso(placed),
        "expires_at": _iso(now + timedelta(hours=2)),
        "delivery": {"mode": "rider", "window": window},
        "customer": {"name": "李*", "phone": "139****1234", "address": "渝中区解放碑步行街8号"},
        "note": "不要放清单",
        "flags": {"no_price_list": True, "invoice": True, "reship_of": None},
        "items": [{"sku": "6930000000105", "name": "阿莫西林胶囊", "spec": "0.25g×24粒", "qty": 2, "price": 1850, "rx": True, "fever": False, "location": "RX-02-5"}],
        "amounts": {"goods": 3700, "delivery": 0, "packing": 100, "discount": 0, "paid": 3800},
    }
    at = _iso(now)
    return [
        {"v": 1, "id": f"evt-{tag}-0001", "type": "order.created", "at": at, "order": mt, "detail": {}},
        {"v": 1, "id": f"evt-{tag}-0002", "type": "order.created", "at": at, "order": el, "detail": {}},
        {"v": 1, "id": f"evt-{tag}-0003", "type": "rider.unassigned", "at": at,
         "order": {"id": mt["id"], "platform": "meituan", "seq": 23}, "detail": {"minutes": 15}},
        {"v": 1, "id": f"evt-{tag}-0004", "type": "stock.short", "at": at,
         "order": {"id": el["id"], "platform": "eleme", "seq": 7},
         "detail": {"sku": "6930000000105", "name": "阿莫西林胶囊", "wanted": 2, "available": 1}},
        {"v": 1, "id": f"evt-{tag}-0005", "type": "order.urged", "at": at,
         "order": {"id": el["id"], "platform": "eleme", "seq": 7}, "detail": {}},
        {"v": 1, "id": f"evt-{tag}-0006", "type": "order.cancelled", "at": at,
         "order": {"id": mt["id"], "platform": "meituan", "seq": 23}, "detail": {"reason": "顾客取消"}},
    ]


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


# ``store-agent send --sample NAME``: name -> (index in sample_events, what it is)
_SAMPLES = {
    "order-meituan": (0, "order.created, meituan, rider delivery: receipt + warm-tip card"),
    "order-eleme-rx": (1, "order.created, eleme, a prescription item and an invoice"),
    "rider-unassigned": (2, "rider.unassigned for the meituan order: exception slip, alert, chime"),
    "stock-short": (3, "stock.short for the eleme order: exception slip, alert"),
    "order-urged": (4, "order.urged for the eleme order: urgent chime"),
    "order-cancelled": (5, "order.cancelled for the meituan order: cancellation slip"),
}
SAMPLE_NAMES = {name: what for name, (_, what) in _SAMPLES.items()}


def sample_event(name: str, now: datetime | None = None, tag: str | None = None) -> dict[str, Any]:
    """One built-in sample with new ids (so it is never a duplicate of an earlier send) and times from now.
    KeyError for an unknown name."""
    import uuid  # noqa: PLC0415

    index, _ = _SAMPLES[name]
    return sample_events(now or now_utc(), tag or f"tech{uuid.uuid4().hex[:6]}")[index]


def freshen(ev: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """An event file's copy dated from now: every time in it moves by the same amount (``at`` becomes now,
    ``expires_at`` and the delivery window keep their distance to it) and the event id gets a suffix, so
    the agent takes it as a new event rather than answering the old one's status (an ``order.created``'s
    order id too: the same order again is a ``duplicate``)."""
    import copy  # noqa: PLC0415
    import uuid  # noqa: PLC0415

    ev = copy.deepcopy(ev)
    if not isinstance(ev, dict):
        raise TypeError("the file is not a JSON object")
    now = now or now_utc()
    try:
        base = datetime.fromisoformat(ev["at"]) if isinstance(ev.get("at"), str) else None
    except ValueError:
        base = None
    shift = (now - base) if base is not None and base.tzinfo else None

    def move(value: Any) -> Any:
        if not isinstance(value, str) or shift is None:
            return value
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            return value
        return _iso(t + shift) if t.tzinfo else value

    if shift is not None:
        ev["at"] = move(ev["at"])
        order = ev.get("order")
        if isinstance(order, dict):
            for key in ("placed_at", "expires_at"):
                if key in order:
                    order[key] = move(order[key])
            window = (order.get("delivery") or {}).get("window") if isinstance(order.get("delivery"), dict) else None
            if isinstance(window, dict):
                for key in ("start", "end"):
                    if key in window:
                        window[key] = move(window[key])
    elif isinstance(ev.get("order"), dict) and "expires_at" in ev["order"]:  # no usable "at": two hours from now
        ev["order"]["expires_at"] = _iso(now + timedelta(hours=2))
    suffix = uuid.uuid4().hex[:6]
    if isinstance(ev.get("id"), str):
        ev["id"] = f"{ev['id'][:40]}-{suffix}"
    order = ev.get("order")
    if ev.get("type") == "order.created" and isinstance(order, dict) and isinstance(order.get("id"), str):
        order["id"] = f"{order['id'][:40]}-{suffix}"  # the same order again would be answered "duplicate"
    return ev


def example_dir():  # noqa: ANN201 - Path
    """Where the example event files are in a checkout (tests/data/examples)."""
    from pathlib import Path  # noqa: PLC0415

    return Path(__file__).resolve().parent.parent / "tests" / "data" / "examples"
