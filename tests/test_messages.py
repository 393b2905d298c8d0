import json

import pytest

from agent.messages import OrderEvent, Rejection, parse_event, sha256_hex
from conftest import example, example_events, fresh

CAP = 65536


def enc(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


@pytest.mark.parametrize("ev", example_events(), ids=lambda e: e["id"])
def test_every_example_is_valid(ev):
    parsed = parse_event(enc(ev), CAP)
    assert isinstance(parsed, OrderEvent), parsed
    assert parsed.id == ev["id"] and parsed.order.id == ev["order"]["id"]


def test_unknown_fields_are_ignored():
    ev = fresh(example("order-created-meituan.json"))
    ev["future_field"] = {"x": 1}
    ev["order"]["items"][0]["barcode_v2"] = "x"
    assert isinstance(parse_event(enc(ev), CAP), OrderEvent)


def _mut(fn):
    ev = fresh(example("order-created-meituan.json"))
    fn(ev)
    return enc(ev)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1,2,3]", "JSON object"),
        (b'"hello"', "JSON object"),
        (b"", "not JSON"),
        (_mut(lambda e: e.pop("id")), "id: Field required"),
        (_mut(lambda e: e["order"].pop("id")), "order.id"),
        (_mut(lambda e: e.update(type="order.exploded")), "type"),
        (_mut(lambda e: e.update(v=2)), "v"),
        (_mut(lambda e: e["order"]["items"][0].update(qty=0)), "order.items.0.qty"),
        (_mut(lambda e: e["order"]["items"][0].update(qty="two")), "order.items.0.qty"),
        (_mut(lambda e: e["order"]["items"][0].update(price=-1)), "order.items.0.price"),
        (_mut(lambda e: e["order"]["amounts"].update(paid=-5)), "order.amounts.paid"),
        (_mut(lambda e: e["order"].update(items=[])), "order.items"),
        (_mut(lambda e: e["order"].pop("amounts")), "order.amounts"),
        (_mut(lambda e: e["order"].update(platform="taobao")), "order.platform"),
        (_mut(lambda e: e["order"].update(placed_at="yesterday")), "order.placed_at"),
        (_mut(lambda e: e["order"].update(placed_at="2026-11-22T11:31:40")), "order.placed_at"),
        (b"[" * 100000 + b"]" * 100000, "not JSON"),
        (b'{"v":1,"id":"e","x":' + b"9" * 4400 + b"}", "not JSON"),
        (_mut(lambda e: e["order"]["items"][0].update(qty=True)), "order.items.0.qty"),
        (_mut(lambda e: e["order"]["items"][0].update(qty="2")), "order.items.0.qty"),
        (_mut(lambda e: e["order"]["items"][0].update(price=25.0)), "order.items.0.price"),
        (_mut(lambda e: e["order"]["flags"].update(no_price_list="yes")), "order.flags.no_price_list"),
        (_mut(lambda e: e["order"].update(expires_at=1795300000)), "order.expires_at"),
        (_mut(lambda e: e.update(deep=json.loads("[" * 300 + "]" * 300))), "recursion limit"),
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(payload, reason):
    r = parse_event(payload, CAP if len(payload) < CAP else 10**7)
    assert isinstance(r, Rejection)
    assert reason in r.reason, r.reason
    assert r.payload_sha256 == sha256_hex(payload)


def test_rejection_keeps_readable_ids():
    r = parse_event(_mut(lambda e: e["order"]["items"][0].update(qty=0)), CAP)
    assert isinstance(r, Rejection)
    assert (r.event_id, r.order_id) == ("evt-0001", "MT-8812345678901")


def test_negative_discount_is_allowed_but_other_amounts_are_not():
    assert isinstance(parse_event(_mut(lambda e: e["order"]["amounts"].update(discount=-100)), CAP), OrderEvent)


def test_oversized_payload_is_rejected_before_parsing():
    big = b'{"v":1,"id":"x","pad":"' + b"a" * (1024 * 1024) + b'"}'
    r = parse_event(big, CAP)
    assert isinstance(r, Rejection) and "too large" in r.reason and str(len(big)) in r.reason


def test_non_created_events_need_only_the_order_id():
    ev = parse_event(enc(example("rider-unassigned.json")), CAP)
    assert isinstance(ev, OrderEvent) and ev.detail == {"minutes": 15} and ev.order.items is None
