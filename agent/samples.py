"""Sample order events (for the demo and ``store-agent send --sample``), dated relative to now."""

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
