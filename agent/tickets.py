"""What goes on paper for each document: receipt, warm-tip card and event slips.

Pure functions from an order event (+ store facts) to a ``render.Document``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from .messages import OrderEvent
from .render import Block, Cut, Document, Feed, QR, Text, columns_row, money, rule, wrap

PLATFORM_NAMES = {
    "meituan": "美团",
    "eleme": "饿了么",
    "jddj": "京东到家",
    "youzan": "有赞",
    "pdd": "拼多多",
    "web": "官方商城",
    "other": "其他平台",
}

EVENT_TITLES = {
    "order.created": "新订单",
    "order.modified": "订单已修改",
    "order.cancelled": "订单已取消 作废",
    "order.reassigned": "订单已改派",
    "order.urged": "顾客催单",
    "order.dispatched": "订单已出库",
    "order.completed": "订单已完成",
    "rider.unassigned": "长时间无骑手接单",
    "rider.cancelled": "骑手取消接单",
    "delivery.late": "配送超时",
    "aftersale.requested": "售后申请",
    "aftersale.revoked": "售后已撤销",
    "logistics.exception": "物流异常",
    "stock.short": "缺货",
    "rx.pending": "处方待处理",
    "fever.registration": "发热药品登记",
}

REPRINT_BANNER = "** 补打 REPRINT **"


def _hm(t: Optional[datetime]) -> str:
    return t.strftime("%m-%d %H:%M") if t else ""


def _lines(text: str, columns: int, **style) -> list[Text]:
    w = style.get("width", 1)
    return [Text(line, **style) for line in wrap(text, columns // w)]


def _head(ev: OrderEvent, columns: int, title: str, reprint: bool) -> list[Block]:
    o = ev.order
    blocks: list[Block] = []
    if reprint:
        blocks += [Text(REPRINT_BANNER, align="center", bold=True, width=2, height=2)]
    platform = PLATFORM_NAMES.get(o.platform or "", "")
    number = f"#{o.seq}" if o.seq is not None else ""
    big = " ".join(x for x in (platform, number) if x)
    if big:
        blocks += _lines(big, columns, align="center", bold=True, width=2, height=2)
    blocks += _lines(title, columns, align="center", bold=True, height=2)
    blocks.append(Text(f"订单号:{o.id}"))
    return blocks


def receipt(ev: OrderEvent, *, store_name: str, store_phone: str, columns: int, reprint: bool = False) -> Document:
    o = ev.order
    b: list[Block] = _head(ev, columns, store_name or "订单小票", reprint)
    if o.placed_at:
        b.append(Text(f"下单时间:{_hm(o.placed_at)}"))
    if o.delivery and o.delivery.window and o.delivery.window.start:
        end = o.delivery.window.end.strftime("%H:%M") if o.delivery.window.end else ""
        b += _lines(f"期望送达:{_hm(o.delivery.window.start)}-{end}", columns, bold=True)
    if o.flags.reship_of:
        b += _lines(f"补发单 原订单:{o.flags.reship_of}", columns, bold=True, height=2)
    if o.flags.invoice:
        b.append(Text("顾客需要发票", bold=True))
    if o.note:
        b.append(rule(columns, "="))
        b += _lines(f"备注:{o.note}", columns, bold=True, width=2, height=2)
    b.append(rule(columns, "="))
    prices = not o.flags.no_price_list
    b.append(Text("商品" + (" " * (columns - 4 - 10) + "数量  金额" if prices else " " * (columns - 4 - 4) + "数量")))
    b.append(rule(columns))
    for it in o.items or []:
        marks = "".join(m for m, on in (("[处方]", it.rx), ("[发热]", it.fever)) if on)
        name = f"{marks}{it.name}"
        right = f"x{it.qty}" + (f" {money(it.price * it.qty)}" if prices else "")
        b += [Text(line) for line in columns_row(name, right, columns)]
        sub = " ".join(x for x in (it.spec and f"规格:{it.spec}", it.location and f"储位:{it.location}") if x)
        if sub:
            b += _lines("  " + sub, columns)
        if it.sku:
            b.append(Text(f"  条码:{it.sku}"))
    b.append(rule(columns))
    if prices and o.amounts:
        a = o.amounts
        for label, fen in (("商品金额", a.goods), ("配送费", a.delivery), ("包装费", a.packing), ("优惠", -a.discount)):
            if fen:
                b += [Text(line) for line in columns_row(label, money(fen), columns)]
        b += [Text(line, bold=True) for line in columns_row("实付", money(a.paid), columns)]
        b.append(rule(columns))
    elif not prices:
        b.append(Text("顾客要求不放价格清单", bold=True))
    c = o.customer
    if c:
        who = " ".join(x for x in (c.name, c.phone) if x)
        if who:
            b += _lines(f"顾客:{who}", columns)
        if c.address:
            b += _lines(f"地址:{c.address}", columns)
    b.append(rule(columns))
    b.append(Text("核对:品名[ ] 规格[ ] 数量[ ] 效期[ ]"))
    b.append(Text("     包装[ ] 备注[ ]  核对人:______"))
    if store_phone:
        b.append(Text(f"门店电话:{store_phone}", align="center"))
    b += [QR(o.id, 5), Feed(1), Cut()]
    return Document("receipt", columns, tuple(b))


WARM_TIP = (
    "感谢您的信任!请核对药品名称、规格和数量。",
    "用药前请仔细阅读说明书,按说明或遵医嘱使用;儿童用药请遵医嘱。",
    "服药期间如有不适,请立即停药并咨询医生或药师。",
    "我们的药师将在24至48小时内回访,解答您的用药问题。",
)


def warm_tip(ev: OrderEvent, *, store_name: str, store_phone: str, columns: int, reprint: bool = False) -> Document:
    b: list[Block] = []
    if reprint:
        b.append(Text(REPRINT_BANNER, align="center", bold=True))
    b += _lines("温馨提示", columns, align="center", bold=True, width=2, height=2)
    if store_name:
        b += _lines(store_name, columns, align="center", bold=True)
    b.append(rule(columns))
    for tip in WARM_TIP:
        b += _lines(tip, columns)
    b.append(rule(columns))
    if store_phone:
        b += _lines(f"门店电话:{store_phone}", columns, align="center", bold=True)
    b.append(Text(f"订单号:{ev.order.id}", align="center"))
    b += [Feed(1), Cut()]
    return Document("warm_tip", columns, tuple(b))


def slip(ev: OrderEvent, *, store_name: str, store_phone: str, columns: int, reprint: bool = False) -> Document:
    """A slip for an order exception: what happened and for which order."""
    title = EVENT_TITLES.get(ev.type, ev.type)
    b: list[Block] = _head(ev, columns, title, reprint)
    if ev.at:
        b.append(Text(f"时间:{_hm(ev.at)}"))
    for key, value in sorted(ev.detail.items()):
        if isinstance(value, (str, int, float, bool)):
            b += _lines(f"{key}:{value}", columns)
    b += [Feed(1), Cut()]
    return Document("slip", columns, tuple(b))


BUILDERS = {"receipt": receipt, "warm_tip": warm_tip, "slip": slip}


def documents_for(event_type: str) -> list[str]:
    """Which documents an event prints (rules of a later issue refine this per store)."""
    if event_type == "order.created":
        return ["receipt", "warm_tip"]
    if event_type in ("order.dispatched", "order.completed"):
        return []
    return ["slip"]


def build(document: str, ev: OrderEvent, *, store_name: str, store_phone: str, columns: int, reprint: bool) -> Document:
    try:
        fn = BUILDERS[document]
    except KeyError:
        raise ValueError(f"unknown document {document!r}") from None
    return fn(ev, store_name=store_name, store_phone=store_phone, columns=columns, reprint=reprint)
