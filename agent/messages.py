"""Payload models of the MQTT contract (order events in, results out).

Validation happens here, where the value objects are made. ``parse_event``
never raises for bad input: it returns a ``Rejection`` whose ``reason`` names
the offending field.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Optional, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

EventType = Literal[
    "order.created",
    "order.modified",
    "order.cancelled",
    "order.reassigned",
    "order.urged",
    "order.dispatched",
    "order.completed",
    "rider.unassigned",
    "rider.cancelled",
    "delivery.late",
    "aftersale.requested",
    "aftersale.revoked",
    "logistics.exception",
    "stock.short",
    "rx.pending",
    "fever.registration",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
Platform = Literal["meituan", "eleme", "jddj", "youzan", "pdd", "web", "other"]
ResultStatus = Literal["queued", "printed", "failed", "rejected", "duplicate", "expired"]
MAX_TEXT = 65536  # the payload cap bounds every field; printing shortens long values (templating)


class _In(BaseModel):
    """Incoming payload part: unknown fields are ignored (forward compatible); types are strict
    (``"qty": "2"``, ``"qty": true`` and ``"price": 25.0`` are rejections, not guesses)."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True, strict=True)


class Window(_In):
    start: Optional[AwareDatetime] = None
    end: Optional[AwareDatetime] = None


class Delivery(_In):
    mode: Optional[str] = Field(None, max_length=32)
    window: Optional[Window] = None


class Customer(_In):
    name: Optional[str] = Field(None, max_length=MAX_TEXT)
    phone: Optional[str] = Field(None, max_length=40)
    address: Optional[str] = Field(None, max_length=MAX_TEXT)


class Flags(_In):
    no_price_list: bool = False
    invoice: bool = False
    reship_of: Optional[str] = Field(None, max_length=64)


class Item(_In):
    sku: Optional[str] = Field(None, max_length=64)
    name: str = Field(min_length=1, max_length=MAX_TEXT)
    spec: Optional[str] = Field(None, max_length=MAX_TEXT)
    qty: int = Field(ge=1, le=100000)
    price: int = Field(0, ge=0, description="unit price in fen")
    rx: bool = False
    fever: bool = False
    location: Optional[str] = Field(None, max_length=32)


class Amounts(_In):
    goods: int = Field(ge=0)
    delivery: int = Field(0, ge=0)
    packing: int = Field(0, ge=0)
    discount: int = 0
    paid: int = Field(ge=0)


class Order(_In):
    id: str = Field(min_length=1, max_length=64)
    platform: Optional[Platform] = None
    seq: Optional[int] = Field(None, ge=0)
    placed_at: Optional[AwareDatetime] = None
    expires_at: Optional[AwareDatetime] = None
    delivery: Optional[Delivery] = None
    customer: Optional[Customer] = None
    note: Optional[str] = Field(None, max_length=MAX_TEXT)
    flags: Flags = Flags()
    items: Optional[list[Item]] = None
    amounts: Optional[Amounts] = None


class OrderEvent(_In):
    v: Literal[1]
    id: str = Field(min_length=1, max_length=128)
    type: EventType
    at: Optional[AwareDatetime] = None
    order: Order
    detail: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _created_needs_full_order(self) -> "OrderEvent":
        if self.type == "order.created":
            missing = [k for k in ("platform", "items", "amounts") if getattr(self.order, k) is None]
            if missing:
                raise ValueError("order.created requires " + ", ".join(f"order.{k}" for k in missing))
            if not self.order.items:
                raise ValueError("order.items: order.created needs at least one item")
        return self


@dataclass(frozen=True)
class Rejection:
    reason: str
    payload_sha256: str
    event_id: Optional[str] = None
    order_id: Optional[str] = None


def sha256_hex(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        where = _loc(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    more = len(err.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _ids_from(obj: Any) -> tuple[Optional[str], Optional[str]]:
    """Best-effort ids from a payload that failed validation (for the result message)."""
    if not isinstance(obj, dict):
        return None, None
    eid = obj.get("id") if isinstance(obj.get("id"), str) else None
    order = obj.get("order")
    oid = order.get("id") if isinstance(order, dict) and isinstance(order.get("id"), str) else None
    return (eid[:128] if eid else None), (oid[:64] if oid else None)


def parse_event(payload: bytes, max_bytes: int) -> OrderEvent | Rejection:
    def reject(reason: str, eid: Optional[str] = None, oid: Optional[str] = None) -> Rejection:
        return Rejection(reason, sha256_hex(payload), eid, oid)  # hashed only for a rejection (its result names it)

    if len(payload) > max_bytes:
        return reject(f"payload too large: {len(payload)} bytes > limit {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        return reject(f"payload is not UTF-8: {e.reason} at byte {e.start}")
    try:
        obj = json.loads(text)
    except RecursionError:
        return reject("payload is not JSON: nested too deeply")
    except ValueError as e:  # JSONDecodeError, and e.g. integers longer than Python's digit limit
        return reject(f"payload is not JSON: {e}")
    if not isinstance(obj, dict):
        return reject(f"payload must be a JSON object, got {type(obj).__name__}")
    try:
        # the same parser the print worker uses later (parse_stored): what is accepted here prints
        return OrderEvent.model_validate_json(payload)
    except ValidationError as e:
        eid, oid = _ids_from(obj)
        return reject(_describe(e), eid, oid)
    except (RecursionError, ValueError) as e:
        eid, oid = _ids_from(obj)
        return reject(f"payload cannot be read: {e}", eid, oid)


def parse_stored(payload: bytes, memo: Optional["ParsedEvents"] = None) -> OrderEvent:
    """An event the journal accepted earlier (parse_event validated it with the same parser). With
    ``memo``: the event intake parsed from these very bytes, if it is still kept there."""
    ev = memo.get(payload) if memo is not None else None
    return ev if ev is not None else OrderEvent.model_validate_json(payload)


class ParsedEvents:
    """The last few events intake accepted, as it parsed them (issue 17: the print worker does not
    parse an order's JSON a second time). Keyed by the payload's exact bytes, so a hit is the value
    ``parse_stored`` would make of them (``OrderEvent`` is frozen, its parser deterministic); a miss
    (an older event, a restart, a reprint, a payload over ``max_bytes``) parses again. Bounded:
    ``size`` entries of at most ``max_bytes`` each (256 KiB of keys), oldest out first."""

    def __init__(self, size: int = 16, max_bytes: int = 16 * 1024) -> None:
        self.size, self.max_bytes = size, max_bytes
        self._items: OrderedDict[bytes, OrderEvent] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, payload: bytes, ev: OrderEvent) -> None:
        if len(payload) > self.max_bytes:
            return
        with self._lock:
            self._items[payload] = ev
            self._items.move_to_end(payload)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, payload: bytes) -> Optional[OrderEvent]:
        with self._lock:
            return self._items.get(payload)


class OrderResult(BaseModel):
    """Outcome of one order event, published on ``P/S/orders/result``."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    event_id: Optional[str]
    order_id: Optional[str]
    status: ResultStatus
    at: datetime
    printer: Optional[str] = None
    documents: list[str] = Field(default_factory=list)
    error: Optional[str] = None
    payload_sha256: Optional[str] = None
    reprint: bool = Field(False, description="true when a copy may already have been printed (marked 补打)")
    redelivered: bool = Field(False, description="the same event id arrived again: this is its current status, "
                                                 "answered again (not a new event, not a duplicate)")

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode()


class PrinterHealth(BaseModel):
    name: str
    role: str
    state: Literal["ready", "paper_low", "paper_out", "cover_open", "offline", "unreachable", "unknown"]
    since: Optional[datetime] = None
    detail: str = ""
    last_print_at: Optional[datetime] = None
    queue: int = 0
    capabilities: Optional["PrinterCapabilities"] = None
    paper: Optional["PaperForecast"] = None
    print_s: Optional[float] = Field(None, description="seconds per ticket, send to the printer's confirmation (confirming printers)")


class PrinterCapabilities(BaseModel):
    """What the printer does (probed) and how the agent lays tickets out for it."""

    confirm: Literal["gs_r", "unsupported", "undecided", "off", "unprobed"] = Field(
        description="gs_r: each ticket confirmed by GS r 1; unsupported: confirm=auto and the printer does not answer "
                    "GS r 1 (asked 3 times while idle), tickets print unconfirmed; undecided: not answered yet (a busy "
                    "printer holds it), asked again while idle; off: confirm=none or a write-only printer; unprobed: "
                    "not asked yet")
    status_answers: Optional[bool] = Field(None, description="answers DLE EOT status queries (None: not probed)")
    cutter: Optional[bool] = Field(None, description="GS I 2 type id says it has an autocutter (None: not said)")
    model: Optional[str] = Field(None, description="maker and model as the printer reports them (GS I 66/67)")
    profile: Optional[str] = Field(None, description="the escpos-printer-db profile in use")
    profile_source: Optional[Literal["config", "probe", "paper width"]] = None
    columns: Optional[int] = None
    qr: Optional[Literal["native", "image"]] = None
    cut: Optional[bool] = Field(None, description="false: tickets are fed to the tear bar")


class PaperForecast(BaseModel):
    """Paper left on the roll, counted from the tickets printed since it was loaded."""

    used_m: float
    left_m: float
    tickets_left: int
    roll_m: float = Field(description="the roll's usable length: learnt from the near-end sensor, else paper_roll_m")
    learnt: bool = False


PrinterHealth.model_rebuild()


class Health(BaseModel):
    """Health snapshot, retained on ``P/S/health``: on every change and every ``health.publish_s``."""

    v: Literal[1] = 1
    store_id: str
    at: datetime
    agent: dict[str, Any]
    mqtt: dict[str, Any] = Field(description="connected; last_error: the last connection problem (error, fix, at, "
                                        "failed_attempts, failing_now) or null")
    printers: list[PrinterHealth]
    audio: dict[str, str]
    queue: dict[str, Optional[float]]
    alerts_open: int
    disk: dict[str, int] = Field(default_factory=dict)


class PlatformFigures(BaseModel):
    orders: int
    paid_fen: int = Field(description="paid amount in fen (分)")


class OrderFigures(BaseModel):
    total: int
    paid_fen: int
    by_platform: dict[str, PlatformFigures]


class Spread(BaseModel):
    n: int
    p50: Optional[float] = None
    p95: Optional[float] = None
    max: Optional[float] = None


class Response(BaseModel):
    n: int
    median: Optional[float] = None
    max: Optional[float] = None


class FaultFigures(BaseModel):
    count: int
    minutes: float = Field(description="minutes in fault (of faults cleared in the period)")


class FollowupFigures(BaseModel):
    done: int
    reached: int
    no_answer: int
    declined: int
    due: Optional[int] = Field(None, description="orders due for a follow-up call now (today's figures only)")
    rate: Optional[float] = Field(None, description="reached / done")


class Report(BaseModel):
    """The store's figures for a period: retained ``P/S/stats`` (today, with ``store_id``), the ``report``
    request's ``data``, ``store-agent report --json``, the report slip."""

    v: Literal[1] = 1
    store_id: Optional[str] = None
    period: Literal["day", "week", "month"] = "day"
    from_day: str = Field(description="first local date, YYYY-MM-DD")
    to_day: str = Field(description="last local date, YYYY-MM-DD")
    days: int
    orders: OrderFigures
    events: dict[str, int] = Field(description="new events per type")
    tickets: dict[str, int] = Field(description="tickets printed per document (reprints included)")
    reprints: dict[str, int] = Field(description="person: asked for (reprint); uncertain: the first copy may have come out")
    results: dict[str, int] = Field(description="rejected, duplicate, expired, failed")
    to_paper_s: Spread = Field(description="seconds from an event's arrival to its last ticket out")
    faults: dict[str, FaultFigures] = Field(description="printer faults by kind")
    escalations: int
    alert_response_s: Response = Field(description="seconds from an alert raised to acknowledged")
    followups: FollowupFigures
