"""Signed commands (issue 16): agent/signing.py, and a real agent with ``security.hq_public_key`` on a real
mosquitto: signed requests and config/set run; unsigned, badly signed, replayed, stale, other-store and
other-command ones are refused with the reason in the response or in config/state."""

import json
import uuid

import pytest

from agent.config import ConfigError, parse_config
from agent.signing import Signer, SigningError, Verifier, generate, parse_public_key
from conftest import agent_config, wait_until


@pytest.fixture(scope="module")
def keys():
    pem, pub = generate()
    pem2, pub2 = generate()
    return pem, pub, pem2, pub2


def test_sign_then_verify_and_every_way_to_be_refused(keys):
    pem, pub, pem2, pub2 = keys
    now = [1_000_000.0]
    s = Signer(pem, clock=lambda: now[0])
    v = Verifier([pub], "s1", window_s=300, clock=lambda: now[0])
    body = {"transaction": "t-1", "args": {"order_id": "MT-1"}}
    signed = s.sign(body, "s1", "request/reprint")
    assert signed["args"] == body["args"] and signed["sig"]["key"] == s.key_id
    assert v.check("request/reprint", signed) is None
    assert "replayed: this request" in v.check("request/reprint", signed)  # the same nonce again
    assert "unsigned request/reprint refused" in v.check("request/reprint", body)
    tampered = json.loads(json.dumps(s.sign(body, "s1", "request/reprint")))
    tampered["args"]["order_id"] = "MT-2"
    assert "bad signature" in v.check("request/reprint", tampered)
    assert "not this store (s1)" in v.check("request/reprint", s.sign(body, "s2", "request/reprint"))
    assert "not request/test_print" in v.check("request/test_print", s.sign(body, "s1", "request/reprint"))
    other = Signer(pem2, clock=lambda: now[0]).sign(body, "s1", "request/reprint")
    assert "which this store does not know" in v.check("request/reprint", other)
    forged = s.sign(body, "s1", "request/reprint")
    forged["sig"]["key"] = other["sig"]["key"]  # a known key id cannot make a signature good: second key known
    assert "bad signature" in Verifier([pub, pub2], "s1", clock=lambda: now[0]).check("request/reprint", forged)
    old = s.sign(body, "s1", "request/reprint")
    now[0] += 301
    assert "signed 301 s ago, the window is 300 s" in v.check("request/reprint", old)
    assert v.check("config/set", {**old, "sig": {**old["sig"], "command": "config/set"}}, replay=False) is not None
    cs = s.sign({"v": 1, "version": 3, "config": {}}, "s1", "config/set")
    now[0] += 86400 * 3  # a retained config/set read days later: its version guards it, not the clock
    assert v.check("config/set", cs, replay=False) is None
    for junk in ({"sig": "x"}, {"sig": {"key": 1}}, {"sig": {**cs["sig"], "at": "1"}}, {"sig": {**cs["sig"], "extra": 1}},
                 [], "s", None, {**cs, "sig": {**cs["sig"], "ed25519": "!!!"}}):
        assert v.check("config/set", junk, replay=False), junk
    # rotation: both keys listed, either signs
    v2 = Verifier([pub, pub2], "s1", clock=lambda: now[0])
    assert v2.check("request/status", Signer(pem2, clock=lambda: now[0]).sign({}, "s1", "request/status")) is None


def test_the_config_key_is_checked_and_file_only(tmp_path, keys):
    _, pub, _, pub2 = keys
    base = agent_config(tmp_path, 1883, 9100, "s1")
    with pytest.raises(ConfigError, match="security.hq_public_key"):
        parse_config({**base, "security": {"hq_public_key": "ed25519:AAAA"}})
    with pytest.raises(ConfigError, match="security.hq_public_key"):
        parse_config({**base, "security": {"hq_public_key": "rsa:AAAA"}})
    cfg = parse_config({**base, "security": {"hq_public_key": [pub, pub2]}})
    assert cfg.security.hq_public_keys == [pub, pub2]
    from agent.remote import RemoteConfig  # noqa: PLC0415
    r = RemoteConfig(cfg)
    with pytest.raises(ConfigError, match="security.hq_public_key: set in the config file only"):
        r.merged({"security": {"hq_public_key": ""}})
    with pytest.raises(SigningError):
        parse_public_key("ed25519:" + "A" * 44)


def _ask(hq, command, body, timeout=10):
    """Publish a request and return its response (matched by transaction)."""
    t = body.get("transaction")
    hq.publish(body, hq.topic("request", command))
    got = {}

    def answered():
        for topic, p, _ in list(hq.messages):
            if topic == hq.topic("response", command):
                r = json.loads(p)
                if r.get("transaction") == t:
                    got["r"] = r
                    return True
        return False

    assert wait_until(answered, timeout), f"no response to {command} {t}"
    return got["r"]


def _states(hq):
    return [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("config", "state")]


def test_an_agent_with_a_key_runs_only_signed_commands(broker, vprinter, make_agent, hq_factory, store_id, keys):
    pem, pub, pem2, _ = keys
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id, security={"hq_public_key": pub})
    s = Signer(pem)

    def tx():
        return f"t-{uuid.uuid4().hex[:8]}"

    r = _ask(hq, "status", {"transaction": (t := tx())})
    assert r["status"] == "error" and "unsigned request/status refused" in r["error"] and r["transaction"] == t
    ok = s.sign({"transaction": tx(), "args": {}}, store_id, "request/status")
    r = _ask(hq, "status", ok)
    assert r["status"] == "ok", r
    # the same signed request again: refused as a replay (and nothing run)
    hq.publish(ok, hq.topic("request", "status"))
    assert wait_until(lambda: sum(1 for t_, p, _ in list(hq.messages) if t_ == hq.topic("response", "status")
                                  and json.loads(p).get("transaction") == ok["transaction"]) == 2)
    again = [json.loads(p) for t_, p, _ in list(hq.messages) if t_ == hq.topic("response", "status")
             and json.loads(p).get("transaction") == ok["transaction"]][-1]
    assert again["status"] == "error" and "replayed" in again["error"]
    r = _ask(hq, "status", s.sign({"transaction": tx()}, "another-store", "request/status"))
    assert r["status"] == "error" and "not this store" in r["error"]
    r = _ask(hq, "status", Signer(pem2).sign({"transaction": tx()}, store_id, "request/status"))
    assert r["status"] == "error" and "does not know" in r["error"]
    pages = len(vprinter.jobs)
    r = _ask(hq, "test_print", s.sign({"transaction": tx()}, store_id, "request/status"))  # signed for another command
    assert r["status"] == "error" and "not request/test_print" in r["error"]
    assert len(vprinter.jobs) == pages  # nothing printed

    # config/set: unsigned refused in config/state, signed applied
    assert wait_until(lambda: _states(hq))
    hq.publish({"v": 1, "version": 1, "config": {"store": {"name": "改名店"}}}, hq.topic("config", "set"))
    assert wait_until(lambda: any((st["error"] or {}).get("version") == 1 for st in _states(hq)))
    st = _states(hq)[-1]
    assert st["version"] == 0 and "unsigned config/set refused" in st["error"]["message"]
    hq.publish(s.sign({"v": 1, "version": 2, "config": {"store": {"name": "改名店"}}}, store_id, "config/set"),
               hq.topic("config", "set"))
    assert wait_until(lambda: _states(hq)[-1]["version"] == 2)
    st = _states(hq)[-1]
    assert st["error"] is None and st["config"]["store"]["name"] == "改名店"
    forged = s.sign({"v": 1, "version": 3, "config": {"store": {"name": "x"}}}, store_id, "config/set")
    forged["config"]["store"]["name"] = "pwned"
    hq.publish(forged, hq.topic("config", "set"))
    assert wait_until(lambda: (_states(hq)[-1]["error"] or {}).get("version") == 3)
    st = _states(hq)[-1]
    assert st["version"] == 2 and "bad signature" in st["error"]["message"] and st["config"]["store"]["name"] == "改名店"


def test_an_agent_without_a_key_ignores_the_signature(broker, vprinter, make_agent, hq_factory, store_id, keys):
    pem = keys[0]
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id)
    assert _ask(hq, "status", {"transaction": "plain"})["status"] == "ok"
    assert _ask(hq, "status", Signer(pem).sign({"transaction": "signed"}, store_id, "request/status"))["status"] == "ok"
