"""The broker kit as shipped (deploy/mosquitto), in both of its modes: client certificates
(security.conf, recommended) and password logins (security-password.conf). Certificates and logins
are made by the kit's own scripts, mosquitto is started with the kit's file and acl as shipped, and
isolation is asserted on delivered messages."""

import json
import os
import re
import shutil
import subprocess
import threading
import time
import tomllib
import uuid
from pathlib import Path
from unittest import mock

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import devbroker
from agent.devbroker import KIT, DevBroker
from conftest import order, wait_until
from tickets_util import tickets

SECURITY_FILES = {"cert": KIT / "security.conf", "password": KIT / "security-password.conf"}


class Peer:
    """A TLS client with a login (a password, or a client certificate), recording what it receives
    (HQ, the info department, or a rogue store)."""

    def __init__(self, port, ca, username=None, password=None, client_id=None, reconnect=True, cert=None,
                 must_connect=True):
        self.messages = []
        self.disconnects = 0
        self.refused = None
        self._lock = threading.Lock()
        self._up = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"peer-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv5, reconnect_on_failure=reconnect)
        if username is not None:
            self.c.username_pw_set(username, password)
        certfile, keyfile = cert if cert else (None, None)
        self.c.tls_set(ca_certs=str(ca), certfile=certfile and str(certfile), keyfile=keyfile and str(keyfile))

        def on_connect(c, u, f, rc, p):
            if not rc.is_failure:
                self._up.set()
            else:
                self.refused = str(rc)

        def on_disconnect(c, u, f, rc, p):
            self.disconnects += 1
            if not self._up.is_set():
                self.refused = self.refused or f"dropped before CONNACK: {rc}"

        def on_message(c, u, m):
            with self._lock:
                self.messages.append((m.topic, m.payload))

        self.c.on_connect, self.c.on_disconnect, self.c.on_message = on_connect, on_disconnect, on_message
        try:
            self.c.connect("127.0.0.1", port)
        except OSError as e:  # the TLS handshake itself was refused (no certificate, a revoked one)
            self.refused = f"{type(e).__name__}: {e}"
            if must_connect:
                raise
            return
        self.c.loop_start()
        if must_connect:
            assert self._up.wait(10), f"{username or cert} could not log in"

    @property
    def connected(self):
        """Connected (waits for the CONNACK, or for the refusal: a TLS alert, a dropped connection)."""
        wait_until(lambda: self._up.is_set() or self.refused, 5)
        return self._up.is_set() and self.c.is_connected()

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


def script(name, *args, kit_dir, stdin=None):
    env = {**os.environ, "KIT_DIR": str(kit_dir), "RELOAD": "0"}
    return subprocess.run([str(KIT / name), *args], env=env, check=True, capture_output=True, text=True,
                          input=stdin if stdin is not None else "").stdout


class KitBroker(DevBroker):
    """DevBroker(kit_dir=...) with one of the kit's two security files as shipped."""

    def __init__(self, workdir, kit_dir, security):
        super().__init__(workdir, kit_dir=kit_dir)
        self.security = security

    def config_text(self):
        with mock.patch.object(devbroker, "SECURITY", self.security):
            return super().config_text()


class Kit:
    """A broker set up with the kit's scripts: stores kit-a and kit-b, logins hq and infodept."""

    def __init__(self, mode, d: Path, stores=("kit-a", "kit-b")):
        self.mode, self.d = mode, d
        script("make-certs.sh", "localhost", "127.0.0.1", kit_dir=d)
        flag = ("--password",) if mode == "password" else ()
        self.snippets = {s: script("add-store.sh", *flag, s, "localhost", kit_dir=d) for s in stores}
        shutil.copy(KIT / "acl", d / "acl")
        for login in ("hq", "infodept"):
            if mode == "password":
                subprocess.run(["mosquitto_passwd", "-b", str(d / "passwd"), login, f"{login}-pw"], check=True,
                               capture_output=True)
            else:
                script("make-certs.sh", "--client", login, kit_dir=d)
        self.broker = KitBroker(d / "broker", d, SECURITY_FILES[mode]).start()
        self.port = self.broker.port
        self.ca = d / "ca.crt"

    def login(self, name):
        """Peer keyword arguments that log in as ``name`` the way this kit's mode does."""
        if self.mode == "password":
            pw = f"{name}-pw" if name in ("hq", "infodept") else password(self.d, name)
            return {"username": name, "password": pw}
        sub = "clients" if name in ("hq", "infodept") else "stores"
        return {"cert": (self.d / sub / f"{name}.crt", self.d / sub / f"{name}.key")}

    def peer(self, name, **kw):
        return Peer(self.port, self.ca, **self.login(name), **kw)

    def store_mqtt(self, store):
        return store_mqtt(self.d, self.port, self.snippets[store])

    def reload(self):
        self.broker.proc.send_signal(1)  # SIGHUP: mosquitto re-reads passwd, acl and crl.pem
        time.sleep(0.5)

    def stop(self):
        self.broker.stop()


@pytest.fixture(scope="module", params=["cert", "password"])
def kit(request, tmp_path_factory):
    k = Kit(request.param, tmp_path_factory.mktemp(f"kit-{request.param}"))
    yield k
    k.stop()


def store_mqtt(kit_dir, port, snippet):
    """The [mqtt] section add-store.sh printed, with the files it names taken from the kit dir."""
    m = tomllib.loads(snippet)["mqtt"]
    assert m["tls"] is True and m["port"] == 8883 and m["ca_file"] == "/etc/store-agent/ca.crt"
    out = {**m, "host": "127.0.0.1", "port": port, "ca_file": str(kit_dir / "ca.crt"),
           "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    if "cert_file" in m:  # certificate mode: no username, no password
        assert "username" not in m and "password_file" not in m and "password" not in m
        store = re.search(r'store_id = "([^"]+)"', snippet).group(1)
        out.update(cert_file=str(kit_dir / "stores" / f"{store}.crt"), key_file=str(kit_dir / "stores" / f"{store}.key"))
    else:
        assert m["password_file"] == "/etc/store-agent/mqtt.pass"
        out["password_file"] = str(kit_dir / "stores" / f"{m['username']}.pass")
    return out


def password(kit_dir, store):
    return (kit_dir / "stores" / f"{store}.pass").read_text().strip()


def test_add_store_rejects_bad_and_reserved_ids(kit):
    for flag in ((), ("--password",)):
        for bad in ("hq", "infodept", "a/b", "#", ""):
            r = subprocess.run([str(KIT / "add-store.sh"), *flag, bad], env={**os.environ, "KIT_DIR": str(kit.d), "RELOAD": "0"},
                               capture_output=True, text=True, input="")
            assert r.returncode == 2, (flag, bad, r.stdout)


def test_a_store_reaches_only_its_own_topics(kit, vprinter, make_agent):
    agent_b = make_agent(kit.port, vprinter.port, "kit-b", mqtt=kit.store_mqtt("kit-b"))
    hq = kit.peer("hq")
    hq.subscribe("stores/#")
    rogue = kit.peer("kit-a")  # store A's login, not running an agent here
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
    info = kit.peer("infodept")
    info.subscribe("stores/+/health", "stores/+/alerts")
    info.publish("stores/kit-b/orders", order(4, "info"))
    hq.publish("stores/kit-b/request/status", {"transaction": "again", "args": {}})
    assert wait_until(lambda: any(json.loads(p)["transaction"] == "again" for _, p in hq.got("stores/kit-b/response/")))
    assert "MT-info00004" not in [o for o, _ in tickets(vprinter)]
    assert wait_until(lambda: info.got("stores/kit-b/health"))  # retained health
    for p in (hq, rogue, info):
        p.close()


def test_reusing_a_stores_client_id_cannot_kick_it_off(kit, vprinter, make_agent):
    agent_a = make_agent(kit.port, vprinter.port, "kit-a", mqtt=kit.store_mqtt("kit-a"))
    watcher = kit.peer("infodept")
    watcher.subscribe("stores/kit-a/status")
    connects = agent_a.link.connects
    others = [kit.peer(login, client_id=cid, reconnect=False)  # two per login: they kick each other
              for login in ("kit-b", "hq")
              for cid in ("store-agent-kit-a", "kit-a")]
    time.sleep(1.5)
    assert agent_a.link.connected and agent_a.link.connects == connects, "a client id reuse kicked the store off"
    assert b"lost" not in [p for _, p in watcher.got("stores/kit-a/status")]
    for p in others:
        p.close()
    hq = kit.peer("hq")
    hq.publish("stores/kit-a/orders", order(5, "stay"))
    assert wait_until(lambda: "MT-stay00005" in [o for o, _ in tickets(vprinter)])

    # control: the same check does see a take-over, by a client holding A's own login (its password,
    # or in certificate mode its private key)
    thief = kit.peer("kit-a", client_id="whatever")
    assert wait_until(lambda: agent_a.link.connects > connects or not agent_a.link.connected, 5)
    thief.close()
    for p in (hq, watcher):
        p.close()
