"""Rules: what each order event type makes happen in the store.

For every event type of the contract: which tickets (and copies, on which printer), which
sound, whether it needs acknowledging (the alert keeps calling until a person presses the button
or acks it), how often an unacknowledged alert repeats its sound, and after how long it is
escalated. Defaults below; any field can be changed per type in the config's ``[rules."<type>"]``.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Sound = Literal["new_order", "exception", "urgent", "device_fault", "none"]
Severity = Literal["info", "warning", "critical"]


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    documents: tuple[str, ...] = Field(("slip",), max_length=8, description="receipt, warm_tip, slip (per-type slip template)")
    copies: int = Field(1, ge=1, le=5)
    printer: Optional[str] = Field(None, description="printer name; default: the first primary printer")
    sound: Sound = "exception"
    ack: bool = Field(True, description="raise a store alert that repeats until acknowledged")
    severity: Severity = "warning"
    repeat_s: int = Field(0, ge=0, description="replay the sound every N s until acknowledged (0 = once)")
    escalate_after_s: int = Field(0, ge=0, description="unacknowledged this long -> escalated to the info department (0 = never)")
    voice: str = Field("", max_length=60, description="spoken after the chime: a phrase with {platform} {seq} {order_id} "
                                                      "and the event's detail facts ({minutes} ...); \"\" = none")


class RuleOverride(BaseModel):
    """A partial rule from the config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    documents: Optional[tuple[Literal["receipt", "warm_tip", "slip"], ...]] = Field(
        None, max_length=8, description="at most 8 (× copies ≤ 5: an event has at most 40 tickets)")
    copies: Optional[int] = Field(None, ge=1, le=5)
    printer: Optional[str] = None
    sound: Optional[Sound] = None
    ack: Optional[bool] = None
    severity: Optional[Severity] = None
    repeat_s: Optional[int] = Field(None, ge=0)
    escalate_after_s: Optional[int] = Field(None, ge=0)
    voice: Optional[str] = Field(None, max_length=60)


_SLIP = dict(documents=("slip",), sound="exception", ack=True, severity="warning")
_URGENT = dict(documents=("slip",), sound="urgent", ack=True, severity="critical", repeat_s=60, escalate_after_s=900)

DEFAULT_RULES: dict[str, Rule] = {
    "order.created": Rule(documents=("receipt", "warm_tip"), sound="new_order", ack=False, severity="info",
                          voice="{platform}{seq}号新订单"),
    "order.modified": Rule(**_SLIP, repeat_s=120, voice="{platform}{seq}号订单已修改"),
    "order.cancelled": Rule(**{**_URGENT, "escalate_after_s": 0}, voice="{platform}{seq}号订单已取消"),
    "order.reassigned": Rule(**_SLIP, voice="{platform}{seq}号订单已转单"),
    "order.urged": Rule(**{**_SLIP, "repeat_s": 120}, voice="{platform}{seq}号顾客催单"),
    "order.dispatched": Rule(documents=(), sound="none", ack=False, severity="info"),
    "order.completed": Rule(documents=(), sound="none", ack=False, severity="info"),
    "rider.unassigned": Rule(**_URGENT, voice="{platform}{seq}号长时间无骑手接单"),
    "rider.cancelled": Rule(**_URGENT, voice="{platform}{seq}号骑手已取消"),
    "delivery.late": Rule(**{**_SLIP, "repeat_s": 180}, voice="{platform}{seq}号配送超时"),
    "aftersale.requested": Rule(**_SLIP, voice="{platform}{seq}号申请售后"),
    "aftersale.revoked": Rule(documents=("slip",), sound="none", ack=False, severity="info"),
    "logistics.exception": Rule(**{**_SLIP, "repeat_s": 300}, voice="{platform}{seq}号物流异常"),
    "stock.short": Rule(**_URGENT, voice="{platform}{seq}号缺货"),
    "rx.pending": Rule(**{**_URGENT, "escalate_after_s": 1200}, voice="{platform}{seq}号处方待审核"),
    "fever.registration": Rule(**{**_URGENT, "escalate_after_s": 600}, voice="{platform}{seq}号发热药品需登记"),
}

# events that end an order's open exception alerts (the store no longer needs to act on them)
CLOSING_EVENTS = ("order.dispatched", "order.completed", "order.cancelled", "order.reassigned")


def effective_rules(overrides: dict[str, RuleOverride]) -> dict[str, Rule]:
    rules = dict(DEFAULT_RULES)
    for type_, o in overrides.items():
        rules[type_] = rules[type_].model_copy(update=o.model_dump(exclude_none=True))
    return rules


def alert_code(event_type: str) -> str:
    """Order exception alert codes are named after the event type: rider.unassigned -> order.rider_unassigned."""
    if event_type.startswith("order."):
        return event_type
    return "order." + event_type.replace(".", "_")
