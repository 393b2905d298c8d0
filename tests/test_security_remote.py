"""Issue 19, findings 2, 3, 4, 8, 9, 10: what HQ's config channel may change, end to end and fuzzed.

Each test here failed on the code before the fix."""

import copy
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agent.config import ConfigError, _redact_url, parse_config
from agent.notify import Notifier, Webhook
from agent.remote import MAX_VERSION_STEP, STATE_FILE, RemoteConfig
from conftest import agent_config, order, wait_until
from test_escalation import Robot, https_context
from test_remote_config import set_config, states, wait_state

TOKEN = "access_token=SECRETTOKEN42"


def base(tmp_path, **over):
    cfg = agent_config(tmp_path / "state", 1883, 9100, "s1", **over)
    cfg["mqtt"].update({"tls": True, "ca_file": "/etc/store-agent/ca.pem", "username": "s1", "password": "pw"})
    cfg["printers"].append({"name": "back", "connection": "serial", "device": "/dev/ttyUSB0"})
    cfg["printers"].append({"name": "usb", "connection": "usb", "vendor_id": 0x0416, "product_id": 0x5011})
    return parse_config(cfg)


def propose(rc, cfg, overlay, version=1):
    return rc.propose(json.dumps({"v": 1, "version": version, "config": overlay}).encode(), cfg)


@pytest.fixture
def rc_cfg(tmp_path):
    cfg = base(tmp_path)
    (tmp_path / "state").mkdir()
    return RemoteConfig(cfg), cfg


# -- finding 3 / 10: the allow-list ------------------------------------------------------------------

@pytest.mark.parametrize("overlay, keys", [
    ({"mqtt": {"host": "evil.example", "tls": False, "ca_file": None}}, ["mqtt.host", "mqtt.tls", "mqtt.ca_file"]),
    ({"mqtt": {"password": "x"}}, ["mqtt.password"]),
    ({"mqtt": None}, ["mqtt"]),
    ({"mqtt": {"username": None}}, ["mqtt.username"]),
    ({"sound": {"device": "file:'|touch /tmp/x',raw"}}, ["sound.device"]),
    ({"sound": None}, ["sound"]),
    ({"gpio": {"enabled": True}}, ["gpio.enabled"]),
    ({"journal": {"max_mb": 1}}, ["journal.max_mb"]),
    ({"escalation": {"webhook_hosts": ["evil.example"]}}, ["escalation.webhook_hosts"]),
    ({"health": {"stuck_after_s": 3}}, ["health.stuck_after_s"]),
    ({"remote": {"epoch": 9}}, ["remote.epoch"]),
    ({"printers": [{"name": "counter", "host": "10.0.0.9", "port": 8080}]}, ["printers[0].host", "printers[0].port"]),
    ({"printers": [{"name": "back", "device": "/etc/shadow"}]}, ["printers[0].device"]),
    ({"printers": [{"name": "usb", "vendor_id": 1, "product_id": 2}]}, ["printers[0].vendor_id", "printers[0].product_id"]),
    ({"printers": [{"name": "new", "connection": "virtual"}]}, ["printers[0].name"]),
    ({"printers": [{"name": "counter", "connection": "file", "path": "/dev/sda"}]}, ["printers[0].connection", "printers[0].path"]),
])
def test_file_only_keys_are_refused_by_name(rc_cfg, overlay, keys):
    rc, cfg = rc_cfg
    d = propose(rc, cfg, overlay)
    assert d.kind == "refused", d
    for k in keys:
        assert f"{k}" in d.message and "set in the config file only" in d.message, d.message
    assert "/etc/shadow" not in d.message and "touch" not in d.message


def test_remote_keys_still_apply(rc_cfg):
    rc, cfg = rc_cfg
    overlay = {"store": {"name": "n", "phone": "1"}, "texts": {"paid": "付"}, "templates": {"custom": {"receipt": "x"}},
               "rules": {"order.cancelled": {"copies": 2}}, "sound": {"volume": 0.3, "quiet_hours": "22:00-07:00"},
               "timers": {"check_s": 10}, "escalation": {"renotify_s": 600, "notifiers": [
                   {"kind": "dingtalk", "url": f"https://oapi.dingtalk.com/robot/send?{TOKEN}"}]},
               "print": {"retry_s": 1.0}, "health": {"publish_s": 30},
               "printers": [{"name": "counter", "paper_width_mm": 58, "host": "127.0.0.1", "port": 9100}, {"name": "back"}]}
    d = propose(rc, cfg, overlay)
    assert d.kind == "apply", d.message
    assert d.cfg.printers[0].paper_width_mm == 58 and d.cfg.printers[0].host == "127.0.0.1"
    # merged by name: the file's printers all stay (HQ cannot remove one: the security review's finding 6)
    assert [p.name for p in d.cfg.printers] == ["counter", "back", "usb"] and d.cfg.printers[1].device == "/dev/ttyUSB0"
    assert d.cfg.mqtt == cfg.mqtt


# file-only paths, written from the issue (not from agent/remote.py): none of them ever changes
def file_only_view(cfg) -> dict:
    d = cfg.model_dump(mode="json")
    return {
        "store_id": d["store_id"], "state_dir": d["state_dir"], "mqtt": d["mqtt"], "gpio": d["gpio"],
        "journal": d["journal"], "intake": d["intake"], "remote": d["remote"],
        "sound.device": d["sound"]["device"], "templates.dir": d["templates"]["dir"],
        "webhook_hosts": d["escalation"]["webhook_hosts"], "stuck_after_s": d["health"]["stuck_after_s"],
    }


TRANSPORT = ("connection", "host", "port", "vendor_id", "product_id", "device", "baudrate", "path", "spool_dir")
NASTY = ["127.0.0.1", "evil.example", "/etc/shadow", "file:'|id',raw", "hw:0", "default", "https://evil.example/x",
         f"https://oapi.dingtalk.com/robot/send?{TOKEN}", "counter", "back", "usb", "network", "serial", "file", "virtual"]
leaf = st.one_of(st.none(), st.booleans(), st.integers(-2, 70000), st.sampled_from(NASTY), st.text(max_size=6))
SECTIONS = {
    "mqtt": ["host", "port", "tls", "ca_file", "cert_file", "key_file", "username", "password", "password_file",
             "client_id", "topic_prefix", "keepalive_s", "probation_s", "session_expiry_s"],
    "sound": ["enabled", "device", "volume", "quiet_hours", "quiet_volume"],
    "gpio": ["enabled", "pin_factory", "button"], "journal": ["keep_days", "max_mb"], "intake": ["max_payload_bytes"],
    "templates": ["dir", "custom"], "escalation": ["webhook_hosts", "renotify_s", "notifiers", "printer_fault_after_s"],
    "health": ["stuck_after_s", "publish_s"], "remote": ["epoch"], "store": ["name", "phone"], "timers": ["check_s"],
}
section = {k: st.one_of(leaf, st.dictionaries(st.sampled_from(v), leaf, max_size=4)) for k, v in SECTIONS.items()}
printer = st.dictionaries(st.sampled_from(["name", "paper_width_mm", "timeout_s", *TRANSPORT]), leaf, max_size=5)
random_overlays = st.fixed_dictionaries({}, optional={**section, "printers": st.lists(printer, max_size=3),
                                                      "store_id": leaf, "state_dir": leaf})
opt = lambda **kw: st.fixed_dictionaries({}, optional=kw)  # noqa: E731
# mostly valid overlays, so that many apply, with file-only keys mixed in now and then
plausible = opt(
    store=opt(name=st.text(max_size=8), phone=st.text(max_size=8)),
    sound=opt(volume=st.floats(0, 1), quiet_volume=st.floats(0, 1), enabled=st.booleans(),
              device=st.sampled_from(["default", "hw:0", "file:'|id',raw"])),
    timers=opt(check_s=st.integers(1, 3600)),
    printers=st.lists(st.fixed_dictionaries({"name": st.sampled_from(["counter", "back", "usb", "x"])}, optional={
        "paper_width_mm": st.sampled_from([58, 80]), "timeout_s": st.floats(0.1, 60),
        "host": st.sampled_from(["127.0.0.1", "10.0.0.1"]), "port": st.sampled_from([9100, 80]),
        "connection": st.sampled_from(["network", "serial", "file"]), "device": st.sampled_from(["/dev/ttyUSB0", "/etc/shadow"]),
        "vendor_id": st.sampled_from([0x0416, 1])}), max_size=3, unique_by=lambda p: p["name"]),
    mqtt=opt(host=st.sampled_from(["127.0.0.1", "evil.example"]), keepalive_s=st.integers(5, 60), ca_file=st.none()),
    escalation=opt(renotify_s=st.integers(60, 4000), webhook_hosts=st.just(["evil.example"])),
)
overlays = st.one_of(random_overlays, plausible)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overlay=overlays)
def test_fuzz_nothing_outside_the_allow_list_is_ever_applied(rc_cfg, overlay):
    rc, cfg = rc_cfg
    d = propose(rc, cfg, overlay)
    if d.kind != "apply":
        assert "SECRETTOKEN42" not in d.message
        return
    assert file_only_view(d.cfg) == file_only_view(cfg)
    mine = {p.name: p.model_dump(mode="json") for p in cfg.printers}
    for p in d.cfg.printers:
        assert p.name in mine
        got = p.model_dump(mode="json")
        assert {k: got.get(k) for k in TRANSPORT} == {k: mine[p.name].get(k) for k in TRANSPORT}


# -- finding 8: version lock-out -------------------------------------------------------------------------

def test_a_huge_version_cannot_lock_hq_out(rc_cfg, tmp_path):
    rc, cfg = rc_cfg
    d = propose(rc, cfg, {"store": {"name": "x"}}, version=2**63 - 1)
    assert d.kind == "refused" and "ahead of the applied version 0" in d.message
    rc.commit(propose(rc, cfg, {"store": {"name": "a"}}, version=MAX_VERSION_STEP))
    assert propose(rc, cfg, {"store": {"name": "b"}}, version=2 * MAX_VERSION_STEP).kind == "apply"
    assert propose(rc, cfg, {"store": {"name": "b"}}, version=2 * MAX_VERSION_STEP + 1).kind == "refused"


def test_remote_epoch_in_the_file_drops_a_stored_overlay(tmp_path):
    cfg = base(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / STATE_FILE).write_text(json.dumps({"version": 2**63 - 1, "overlay": {"store": {"name": "x"}}}))
    assert RemoteConfig(cfg).version == 2**63 - 1  # a lock-out stored by an older agent
    raw = agent_config(tmp_path / "state", 1883, 9100, "s1", remote={"epoch": 1})
    rc = RemoteConfig(parse_config(raw))
    assert rc.version == 0 and rc.overlay == {} and "remote.epoch 1" in rc.error["message"]
    assert RemoteConfig(parse_config(raw)).version == 0  # stored: not dropped again at every start
    assert propose(rc, parse_config(raw), {"store": {"name": "y"}}, version=1).kind == "apply"


# -- finding 2: sound.device in the file -------------------------------------------------------------------

@pytest.mark.parametrize("device", ["file:'|touch /tmp/x',raw", "plug:'file:|id'", "hw:0;id"])
def test_a_bad_sound_device_is_a_config_error_that_does_not_repeat_it(tmp_path, device):
    raw = agent_config(tmp_path / "state", 1883, 9100, "s1", sound={"device": device})
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert "sound.device" in str(e.value) and device not in str(e.value)
    assert parse_config(agent_config(tmp_path / "state", 1883, 9100, "s1", sound={"device": "plughw:1,0"}))


# -- findings 4, 9: webhooks and secrets -----------------------------------------------------------------

@pytest.mark.parametrize("url, why", [
    (f"http://oapi.dingtalk.com/robot/send?{TOKEN}", "https"),
    (f"https://127.0.0.1/admin?{TOKEN}", "host not allowed"),
    (f"https://evil.example/robot/send?{TOKEN}", "host not allowed"),
    (f"https://user:pw@oapi.dingtalk.com/robot/send?{TOKEN}", "without a login"),
])
def test_webhook_urls_https_and_allow_listed_and_never_echoed(rc_cfg, caplog, url, why):
    rc, cfg = rc_cfg
    d = propose(rc, cfg, {"escalation": {"notifiers": [{"kind": "dingtalk", "url": url}]}})
    assert d.kind == "refused" and why in d.message and "SECRETTOKEN42" not in d.message, d.message
    with caplog.at_level(logging.DEBUG):
        rc.refuse(d.version, d.message)
        n = Notifier([Webhook("dingtalk", url)], allowed_hosts=cfg.escalation.webhook_hosts)
    assert n.hooks == [] and "SECRETTOKEN42" not in caplog.text and "pw@" not in caplog.text
    assert "SECRETTOKEN42" not in rc.state(cfg).decode()


def test_more_webhook_hosts_only_in_the_file(tmp_path):
    raw = agent_config(tmp_path / "state", 1883, 9100, "s1", escalation={
        "webhook_hosts": ["robot.chain.example"], "notifiers": [{"kind": "wecom", "url": "https://robot.chain.example/x?key=k"}]})
    assert parse_config(raw).escalation.notifiers[0].host == "robot.chain.example"


def test_redact_url_drops_logins_and_tokens():
    shown = _redact_url(f"https://user:pass@oapi.dingtalk.com/robot/send?{TOKEN}")
    assert "pass" not in shown and "user" not in shown and "SECRETTOKEN42" not in shown
    assert shown.startswith("https://") and "oapi.dingtalk.com/robot/send" in shown


def test_notifier_never_follows_a_redirect_into_the_lan(tmp_path, monkeypatch):
    """Finding 4: the robot's answer 302 -> http://127.0.0.1:PORT/admin was followed."""
    hits = []

    class Admin(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *a):
            pass

    admin = HTTPServer(("127.0.0.1", 0), Admin)
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    ctx, cert = https_context(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    robot = Robot(ctx)
    robot.answer = (307, {"Location": f"http://127.0.0.1:{admin.server_port}/admin/reboot"}, b"")
    try:
        n = Notifier([Webhook("wecom", robot.url)], attempts=1, allowed_hosts=["localhost"])
        assert n._deliver(n.hooks[0], "t", "x") is False
        assert robot.posts and hits == []
        assert Notifier([Webhook("wecom", robot.url.replace("https", "http"))]).hooks == []  # http: refused
    finally:
        robot.close()
        admin.shutdown()


# -- end to end: a running agent, the broker, the virtual printer -------------------------------------------

@pytest.fixture
def setup(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id, mqtt={"password": "s3cret-pw", "host": "127.0.0.1"})
    wait_state(hq, lambda s: s["version"] == 0)
    return agent, hq


def alerts_of(hq):
    return [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("alerts")]


def test_e2e_exploits_fail_orders_print_and_the_refusals_say_why(setup, vprinter, tmp_path):
    agent, hq = setup
    exploits_fail(agent, hq, vprinter, tmp_path)


class KitHQ:
    """HQ on the shipped broker kit (TLS, client certificates, the kit's ACL): the same calls as conftest's HQ."""

    def __init__(self, kit, store):
        self.prefix, self.store = "stores", store
        self.peer = kit.peer("hq")
        self.c = self.peer.c  # raw publishes (floods)
        self._lock = threading.RLock()
        self.peer.subscribe(f"stores/{store}/#")

    def results(self):
        return [json.loads(p) for t, p, _ in self.messages if t == self.topic("orders", "result")]

    def topic(self, *parts):
        return "/".join([self.prefix, self.store, *parts])

    def publish(self, payload, topic=None):
        self.peer.publish(topic or self.topic("orders"), payload)

    @property
    def messages(self):
        return [(t, p, False) for t, p in self.peer.got(f"stores/{self.store}/")]

    def final(self, status="printed"):
        rs = [json.loads(p) for t, p, _ in self.messages if t == self.topic("orders", "result")]
        return {r["event_id"]: r for r in rs if r["status"] == status}

    def close(self):
        self.peer.close()


def test_e2e_exploits_fail_on_the_shipped_kit_broker(vprinter, make_agent, tmp_path_factory, tmp_path):
    """The same exploits as HQ's certificate login on the kit's broker (TLS, certificates, ACL)."""
    from test_broker_kit import Kit  # noqa: PLC0415
    kit = Kit("cert", tmp_path_factory.mktemp("kit-sec"), stores=("kit-a",))
    hq = None
    try:
        hq = KitHQ(kit, "kit-a")
        agent = make_agent(kit.port, vprinter.port, "kit-a", mqtt=kit.store_mqtt("kit-a"))
        wait_state(hq, lambda s: s["version"] == 0)
        exploits_fail(agent, hq, vprinter, tmp_path, host="127.0.0.1", secret=None)
    finally:
        if hq is not None:
            hq.close()
        kit.stop()


def exploits_fail(agent, hq, vprinter, tmp_path, host="127.0.0.1", secret="s3cret-pw"):
    canary = tmp_path / "pwned"
    # finding 3: redirect the store to another broker, TLS off, CA removed
    set_config(hq, 1, {"mqtt": {"host": "10.9.9.9", "tls": False, "ca_file": None}})
    s = wait_state(hq, lambda s: s["error"] and s["error"]["version"] == 1)
    assert "mqtt.host: set in the config file only" in s["error"]["message"] and s["version"] == 0
    # finding 2: a command through ALSA's file plugin
    set_config(hq, 2, {"sound": {"device": f"file:'|touch {canary}',raw"}})
    s = wait_state(hq, lambda s: s["error"] and s["error"]["version"] == 2)
    assert "sound.device: set in the config file only" in s["error"]["message"] and "touch" not in json.dumps(s)
    # finding 4 / 10: a printer aimed at a local web port
    set_config(hq, 3, {"printers": [{"name": "counter", "connection": "network", "host": "127.0.0.1", "port": 80}]})
    s = wait_state(hq, lambda s: s["error"] and s["error"]["version"] == 3)
    assert "printers[0].port: set in the config file only" in s["error"]["message"]
    # finding 8: a version that would lock HQ out
    set_config(hq, 2**63 - 1, {"store": {"name": "x"}})
    s = wait_state(hq, lambda s: s["error"] and s["error"]["version"] == 2**63 - 1)
    assert "ahead of the applied version" in s["error"]["message"]
    # finding 1: the pickle payload as the receipt template is accepted (it is only a template) ...
    payload = ("{% set _ = order.flags.parse_raw(\"cos\\nsystem\\n(S'touch " + str(canary) + "'\\ntR.\", proto='pickle', "
               "allow_pickle=True) %}{{ order.id }}\n@cut\n")
    set_config(hq, 4, {"templates": {"custom": {"receipt": payload}}})
    wait_state(hq, lambda s: s["version"] == 4)
    hq.publish(order(1, "sec"))  # ... and the order prints with the built-in receipt
    assert wait_until(lambda: hq.final().get("evt-sec00001"), 20)
    assert any("MT-sec00001" in j.text and "布洛芬混悬液" in j.text for j in vprinter.jobs)
    assert wait_until(lambda: any(a["code"] == "agent.template_failed" and "parse_raw" in a["message"]
                                  for a in alerts_of(hq)))
    time.sleep(0.3)
    assert not canary.exists()
    assert agent.cfg.mqtt.host == host and agent.cfg.sound.device == "default" and agent.link.connected
    if secret:
        assert secret not in json.dumps(states(hq))
