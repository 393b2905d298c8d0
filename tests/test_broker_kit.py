"""The broker kit as shipped (deploy/mosquitto): certificates and store logins made by its own scripts,
mosquitto started with its security.conf and acl. Isolation is asserted on delivered messages."""

import json
import os
import shutil
import subprocess
import threading
import time
import tomllib
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.devbroker import KIT, DevBroker
from conftest import order, wait_until
from tickets_util import tickets


class Peer:
    """A TLS client with a login, recording what it receives (HQ, info department, or a rogue store)."""

    def __init__(self, port, ca, username, password, client_id=None, reconnect=True):
        self.messages = []
        self.disconnects = 0
        self._lock = threading.Lock()
        self._up = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"peer-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv5, reconnect_on_failure=reconnect)
        self.c.username_pw_set(username, password)
        self.c.tls_set(ca_certs=str(ca))

        def on_connect(c, u, f, rc, p):
            if not rc.is_failure:
                self._up.set()

        def on_disconnect(c, u, f, rc, p):
            self.disconnects += 1

        def on_message(c, u, m):
            with self._lock:
                self.messages.append((m.topic, m.payload))

        self.c.on_connect, self.c.on_disconnect, self.c.on_message = on_connect, on_disconnect, on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self._up.wait(10), f"{username} could not log in"

    def subscribe(self, *topics):
        for t in topics:
            self.c.subscribe(t, qos=1)
        time.sleep(0.3)

    def publish(self, topic, payload):
        body = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        info = self.c.publish(topic, body, qos=1)
        info.wait_for_publish(10)

    def got(self, prefix):
        with self._lock:
            return [(t, p) for t, p in self.messages if t.startswith(prefix)]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def script(name, *args, kit_dir):
    env = {**os.environ, "KIT_DIR": str(kit_dir), "RELOAD": "0"}
    return subprocess.run([str(KIT / name), *args], env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("kit")
    script("make-certs.sh", "localhost", "127.0.0.1", kit_dir=d)
    snippets = {s: script("add-store.sh", s, "localhost", kit_dir=d) for s in ("kit-a", "kit-b")}
    shutil.copy(KIT / "acl", d / "acl")
    for login in ("hq", "infodept"):
        subprocess.run(["mosquitto_passwd", "-b", str(d / "passwd"), login, f"{login}-pw"], check=True, capture_output=True)
    broker = DevBroker(d / "broker", kit_dir=d).start()
    yield broker, d, snippets
    broker.stop()


def store_mqtt(kit_dir, port, snippet):
    """The [mqtt] section add-store.sh printed, with the files it names taken from the kit dir."""
    m = tomllib.loads(snippet)["mqtt"]
    store = m["username"]
    assert m["tls"] is True and m["port"] == 8883 and m["password_file"] == "/etc/store-agent/mqtt.pass"
    return {**m, "host": "127.0.0.1", "port": port, "password_file": str(kit_dir / "stores" / f"{store}.pass"),
            "ca_file": str(kit_dir / "ca.crt"), "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}


def password(kit_dir, store):
    return (kit_dir / "stores" / f"{store}.pass").read_text().strip()


def test_add_store_rejects_bad_and_reserved_ids(kit):
    _, d, _ = kit
    for bad in ("hq", "a/b", "#", ""):
        r = subprocess.run([str(KIT / "add-store.sh"), bad], env={**os.environ, "KIT_DIR": str(d), "RELOAD": "0"},
                           capture_output=True, text=True)
        assert r.returncode == 2, (bad, r.stdout)


def test_a_store_reaches_only_its_own_topics(kit, vprinter, make_agent):
    broker, d, snippets = kit
    ca = d / "ca.crt"
    agent_b = make_agent(broker.port, vprinter.port, "kit-b", mqtt=store_mqtt(d, broker.port, snippets["kit-b"]))
    hq = Peer(broker.port, ca, "hq", "hq-pw")
    hq.subscribe("stores/#")
    rogue = Peer(broker.port, ca, "kit-a", password(d, "kit-a"))  # store A's login, not running an agent here
    rogue.subscribe("stores/kit-b/#", "stores/+/orders", "stores/#", "stores/kit-a/orders")

    hq.publish("stores/kit-b/orders", order(1, "kb"))
    hq.publish("stores/kit-a/orders", order(2, "ka"))
    assert wait_until(lambda: any(json.loads(p).get("status") == "printed" for _, p in hq.got("stores/kit-b/orders/result")))
    assert wait_until(lambda: rogue.got("stores/kit-a/orders"))  # A's own orders reach it: the reader works
    time.sleep(0.5)
    assert rogue.got("stores/kit-b/") == [], "store A read store B's topics"

    # A tries to command, configure, feed and impersonate B: nothing reaches B's agent
    rogue.publish("stores/kit-b/request/status", {"transaction": "evil", "args": {}})
    rogue.publish("stores/kit-b/config/set", {"v": 1, "version": 99, "config": {"store": {"name": "pwned"}}})
    rogue.publish("stores/kit-b/orders", order(3, "evil"))
    rogue.publish("stores/kit-b/health", b'{"fake": true}')
    hq.publish("stores/kit-b/request/status", {"transaction": "legit", "args": {}})  # positive control
    assert wait_until(lambda: any(json.loads(p)["transaction"] == "legit" for _, p in hq.got("stores/kit-b/response/")))
    time.sleep(0.5)
    answers = [json.loads(p)["transaction"] for _, p in hq.got("stores/kit-b/response/")]
    assert "evil" not in answers
    assert agent_b.remote.version == 0 and agent_b.cfg.store.name != "pwned"
    assert "MT-evil00003" not in [o for o, _ in tickets(vprinter)]
    assert b'{"fake": true}' not in [p for _, p in hq.got("stores/kit-b/health")]

    # the info department reads everything but cannot inject orders
    info = Peer(broker.port, ca, "infodept", "infodept-pw")
    info.subscribe("stores/+/health", "stores/+/alerts")
    info.publish("stores/kit-b/orders", order(4, "info"))
    hq.publish("stores/kit-b/request/status", {"transaction": "again", "args": {}})
    assert wait_until(lambda: any(json.loads(p)["transaction"] == "again" for _, p in hq.got("stores/kit-b/response/")))
    assert "MT-info00004" not in [o for o, _ in tickets(vprinter)]
    assert wait_until(lambda: info.got("stores/kit-b/health"))  # retained health
    for p in (hq, rogue, info):
        p.close()


def test_reusing_a_stores_client_id_cannot_kick_it_off(kit, vprinter, make_agent):
    broker, d, snippets = kit
    ca = d / "ca.crt"
    agent_a = make_agent(broker.port, vprinter.port, "kit-a", mqtt=store_mqtt(d, broker.port, snippets["kit-a"]))
    watcher = Peer(broker.port, ca, "infodept", "infodept-pw")
    watcher.subscribe("stores/kit-a/status")
    connects = agent_a.link.connects
    others = [Peer(broker.port, ca, login, pw, client_id=cid, reconnect=False)  # two per login: they kick each other
              for login, pw in (("kit-b", password(d, "kit-b")), ("hq", "hq-pw"))
              for cid in ("store-agent-kit-a", "kit-a")]
    time.sleep(1.5)
    assert agent_a.link.connected and agent_a.link.connects == connects, "a client id reuse kicked the store off"
    assert b"lost" not in [p for _, p in watcher.got("stores/kit-a/status")]
    for p in others:
        p.close()
    hq = Peer(broker.port, ca, "hq", "hq-pw")
    hq.publish("stores/kit-a/orders", order(5, "stay"))
    assert wait_until(lambda: "MT-stay00005" in [o for o, _ in tickets(vprinter)])

    # control: the same check does see a take-over, by a client holding A's own login
    thief = Peer(broker.port, ca, "kit-a", password(d, "kit-a"), client_id="whatever")
    assert wait_until(lambda: agent_a.link.connects > connects or not agent_a.link.connected, 5)
    thief.close()
    for p in (hq, watcher):
        p.close()
