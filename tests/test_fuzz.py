"""Property-based fuzzing of everything that arrives from outside: order payloads (through the real
intake and journal), config files and remote config overlays, and requests (through the real command
layer). The quick versions run in CI; the drill versions (-m slow) run >= 10,000 examples each.

Properties: nothing raises; an order payload is either committed and acknowledged once, or rejected
with a reason and acknowledged once; a config is a Config or a ConfigError naming a key; a request
always gets a reply with status ok/error and the transaction echoed.
"""

import json
import os
import string

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agent.app import Agent
from agent.config import Config, ConfigError, parse_config
from agent.intake import OrderIntake
from agent.journal import Journal
from agent.remote import RemoteConfig
from conftest import agent_config, example_events, fresh

QUICK = 300
DRILL = int(os.environ.get("FUZZ_EXAMPLES", "10000"))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.floats(allow_nan=True),
    st.text(max_size=40), st.text(alphabet="订单号药房布洛芬\u2028\u0000\U0001F600", max_size=20),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                            st.dictionaries(st.text(max_size=12), inner, max_size=6)),
                           max_leaves=30)


def _mutate(draw, base):
    """A real event with some fields replaced, removed or retyped."""
    ev = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(0, 4))):
        target = ev if draw(st.booleans()) else ev.get("order", ev)
        if not isinstance(target, dict) or not target:
            break
        key = draw(st.sampled_from(sorted(target)))
        action = draw(st.sampled_from(["drop", "replace", "huge", "deep"]))
        if action == "drop":
            target.pop(key)
        elif action == "replace":
            target[key] = draw(json_values)
        elif action == "huge":
            target[key] = "长" * draw(st.integers(1000, 200_000))
        else:
            target[key] = json.loads("[" * 300 + "]" * 300) if draw(st.booleans()) else {"a": {"b": {"c": [1] * 50}}}
    return ev


@st.composite
def order_payloads(draw):
    kind = draw(st.sampled_from(["event", "mutated", "json", "bytes", "nesting", "huge"]))
    if kind in ("event", "mutated"):
        ev = fresh(draw(st.sampled_from(example_events())))
        if draw(st.integers(0, 9)):  # mostly new events; sometimes a replay (duplicate)
            ev["id"] = f"evt-fz-{draw(st.integers(0, 10**12))}"
        if kind == "mutated":
            ev = _mutate(draw, ev)
        return json.dumps(ev, ensure_ascii=False).encode()
    if kind == "json":
        return json.dumps(draw(json_values), ensure_ascii=False).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "nesting":
        depth = draw(st.integers(50, 100_000))
        return (b"[" * depth + b"]" * depth) if draw(st.booleans()) else b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"v":1,"id":"' + b"x" * draw(st.integers(60_000, 2_000_000)) + b'"}'


def _intake(tmp_path_factory):
    journal = Journal(tmp_path_factory.mktemp("fuzz") / "journal.sqlite3")
    results = []
    intake = OrderIntake(journal, max_payload_bytes=65536, plan=lambda t: [("receipt", "counter")],
                         on_accepted=lambda ev: None, publish_result=results.append, wake=lambda: None,
                         on_store_failure=lambda e: pytest.fail(f"journal failure: {e}"))
    return journal, intake, results


def _order_property(intake, results, payload):
    acks = []
    before = len(results)
    intake.handle(payload, lambda: acks.append(1))
    intake.journal.flush()  # the acknowledgement comes with the commit
    assert len(acks) == 1, "every payload is acknowledged exactly once, after it is stored"
    assert len(results) == before + 1
    r = results[before]
    assert r.status in ("queued", "rejected", "duplicate", "expired", "printed"), r.status
    if r.status == "rejected":
        assert r.error and len(r.payload_sha256) == 64


def _run_orders(tmp_path_factory, n):
    journal, intake, results = _intake(tmp_path_factory)

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(order_payloads())
    def prop(payload):
        _order_property(intake, results, payload)

    try:
        prop()
    finally:
        journal.close()
    print(f"\nfuzz orders: {n} examples, {sum(r.status == 'rejected' for r in results)} rejected, "
          f"{sum(r.status == 'queued' for r in results)} queued, {sum(r.status == 'duplicate' for r in results)} duplicate")


config_keys = st.sampled_from(["store_id", "state_dir", "store", "mqtt", "printers", "health", "escalation", "journal",
                               "intake", "print", "templates", "sound", "timers", "gpio", "rules", "texts", "bogus"])


@st.composite
def configs(draw):
    base = agent_config(draw(st.sampled_from(["/tmp/x", "", "相对"])), 1883, 9100, "fuzz-1")
    for _ in range(draw(st.integers(0, 5))):
        key = draw(config_keys)
        base[key] = draw(json_values) if draw(st.booleans()) else (
            {k: draw(json_values) for k in draw(st.lists(st.text(string.ascii_lowercase + "_", max_size=15), max_size=4))})
    return base


def _config_property(cfg_data, remote, running):
    try:
        assert isinstance(parse_config(cfg_data), Config)
    except ConfigError as e:
        assert str(e)
    payload = json.dumps({"v": 1, "version": 10**6, "config": {k: v for k, v in cfg_data.items()
                                                                if k not in ("store_id", "state_dir")}}, ensure_ascii=False).encode()
    d = remote.propose(payload, running)
    assert d.kind in ("apply", "refused") and (d.kind == "apply" or d.message)


def _run_configs(tmp_path, n):
    base = parse_config(agent_config(tmp_path / "state", 1883, 9100, "fuzz-1"))
    (tmp_path / "state").mkdir()
    remote = RemoteConfig(base)

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(configs())
    def prop(cfg_data):
        _config_property(cfg_data, remote, base)

    prop()


commands = st.sampled_from(["reprint", "test_print", "chime", "ack", "silence", "diagnose", "queue", "status", "led",
                            "", "../etc", "x" * 300])


@st.composite
def requests(draw):
    kind = draw(st.sampled_from(["shaped", "json", "bytes", "nesting"]))
    if kind == "shaped":
        body = {"transaction": draw(st.one_of(st.text(max_size=20), json_values)), "args": draw(json_values)}
        return json.dumps(body, ensure_ascii=False).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    depth = draw(st.integers(100, 50_000))
    return b'{"args":' * depth + b"1" + b"}" * depth


def _run_requests(tmp_path, n):
    cfg = parse_config(agent_config(tmp_path / "state", 1, 1, "fuzz-2",
                                    printers=[{"name": "counter", "connection": "virtual", "status_query": False}]))
    agent = Agent(cfg)  # not started: commands run against its journal, alerts and (virtual) printer
    try:
        @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(commands, requests())
        def prop(command, payload):
            out = agent.desk.answer(command, payload)
            assert out["status"] in ("ok", "error") and set(out) == {"transaction", "status", "data", "error"}
            assert (out["status"] == "error") == bool(out["error"])
            json.dumps(out, default=str)

        prop()
    finally:
        agent.journal.close()


def test_fuzz_orders_quick(tmp_path_factory):
    _run_orders(tmp_path_factory, QUICK)


def test_fuzz_configs_quick(tmp_path):
    _run_configs(tmp_path, QUICK)


def test_fuzz_requests_quick(tmp_path):
    _run_requests(tmp_path, QUICK)


@pytest.mark.slow
def test_fuzz_orders_drill(tmp_path_factory):
    _run_orders(tmp_path_factory, DRILL)


@pytest.mark.slow
def test_fuzz_configs_drill(tmp_path):
    _run_configs(tmp_path, DRILL)


@pytest.mark.slow
def test_fuzz_requests_drill(tmp_path):
    _run_requests(tmp_path, DRILL)
