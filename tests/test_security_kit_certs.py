"""Issue 19, finding 7: a stolen store login must not own the store.

Against the kit's broker as shipped in its recommended mode (security.conf: a client certificate per
store, the certificate's CN is the login): a store's password, a certificate from another CA, a
revoked certificate or a certificate of another store get nobody into a store's topics, and the
agent connects and prints with its own certificate. The control at the end of each attack shows that
the same attack works against a password login (security-password.conf), where the password is all
there is."""

import json
import subprocess
import time

import pytest

from conftest import order, wait_until
from test_broker_kit import Kit, Peer, password, script
from tickets_util import tickets


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Certificate mode; store kit-a had a password login first (an older setup), then its certificate."""
    d = tmp_path_factory.mktemp("kit-cert")
    script("make-certs.sh", "localhost", "127.0.0.1", kit_dir=d)
    script("add-store.sh", "--password", "kit-a", "localhost", kit_dir=d, stdin="old-store-password\n")
    assert password(d, "kit-a") == "old-store-password"
    k = Kit("cert", d)  # add-store.sh kit-a again, now with a certificate
    yield k
    k.stop()


@pytest.fixture(scope="module")
def pw_kit(tmp_path_factory):
    k = Kit("password", tmp_path_factory.mktemp("kit-pw"))
    yield k
    k.stop()


def foreign_cert(tmp_path, cn):
    """A self-made certificate with the store's name in it, not signed by the kit's CA."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={cn}",
                    "-keyout", str(tmp_path / "f.key"), "-out", str(tmp_path / "f.crt")], check=True, capture_output=True)
    return tmp_path / "f.crt", tmp_path / "f.key"


def test_the_cert_snippet_carries_no_password_and_the_old_password_is_gone(kit):
    snippet = kit.snippets["kit-a"]
    assert "cert_file" in snippet and "key_file" in snippet and "password" not in snippet.split("[mqtt]")[1]
    assert not (kit.d / "stores" / "kit-a.pass").exists()
    assert "kit-a:" not in (kit.d / "passwd").read_text()  # re-keyed to a certificate: the password login is removed


def test_a_password_alone_cannot_connect(kit, pw_kit, vprinter, make_agent, tmp_path):
    agent = make_agent(kit.port, vprinter.port, "kit-a", mqtt=kit.store_mqtt("kit-a"))
    connects = agent.link.connects
    attempts = {
        "the store's password": Peer(kit.port, kit.ca, "kit-a", "old-store-password", reconnect=False, must_connect=False),
        "a client id and password": Peer(kit.port, kit.ca, "kit-a", "old-store-password", client_id="store-agent-kit-a",
                                         reconnect=False, must_connect=False),
        "another CA's certificate": Peer(kit.port, kit.ca, cert=foreign_cert(tmp_path, "kit-a"), reconnect=False,
                                         must_connect=False),
    }
    for what, p in attempts.items():
        assert not p.connected, f"{what} got in"
        assert p.refused, what
    time.sleep(0.5)
    assert agent.link.connected and agent.link.connects == connects, "the attempts disturbed the agent's session"
    hq = kit.peer("hq")
    hq.publish("stores/kit-a/orders", order(1, "cert"))
    assert wait_until(lambda: "MT-cert00001" in [o for o, _ in tickets(vprinter)])
    hq.close()

    # control: against a password login the password is the store
    pw_agent = make_agent(pw_kit.port, vprinter.port, "kit-b", mqtt=pw_kit.store_mqtt("kit-b"))
    before = pw_agent.link.connects
    thief = Peer(pw_kit.port, pw_kit.ca, "kit-b", password(pw_kit.d, "kit-b"), reconnect=False)
    assert thief.connected
    assert wait_until(lambda: pw_agent.link.connects > before or not pw_agent.link.connected, 5)
    thief.close()


def test_a_stores_certificate_cannot_reach_another_store(kit, vprinter, make_agent):
    agent_b = make_agent(kit.port, vprinter.port, "kit-b", mqtt=kit.store_mqtt("kit-b"))
    hq = kit.peer("hq")
    hq.subscribe("stores/kit-b/#")
    # A's certificate, claiming to be B by username, password and client id: the broker takes the CN
    rogue = Peer(kit.port, kit.ca, "kit-b", "anything", client_id="store-agent-kit-b", cert=kit.login("kit-a")["cert"])
    rogue.subscribe("stores/kit-b/#", "stores/#")
    hq.publish("stores/kit-b/orders", order(2, "kb"))
    hq.publish("stores/kit-b/config/set", b'{"v":1,"version":1,"config":{}}')  # HQ may retain it
    assert wait_until(lambda: any(json.loads(p).get("status") == "printed" for _, p in hq.got("stores/kit-b/orders/result")))
    time.sleep(0.5)
    assert rogue.got("stores/kit-b/") == [], "store A's certificate read store B's orders"
    assert agent_b.link.connected
    rogue.publish("stores/kit-b/request/test_print", {"transaction": "evil", "args": {}})
    rogue.publish("stores/kit-b/orders/result", b'{"fake": true}')
    time.sleep(0.5)
    assert not [p for _, p in hq.got("stores/kit-b/response/") if json.loads(p)["transaction"] == "evil"]
    assert b'{"fake": true}' not in [p for _, p in hq.got("stores/kit-b/orders/result")]
    for p in (hq, rogue):
        p.close()


def test_rekeying_a_store_revokes_its_old_certificate(kit, vprinter, make_agent, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    script("add-store.sh", "kit-c", "localhost", kit_dir=kit.d)
    kit.reload()
    for ext in ("crt", "key"):
        (old / f"kit-c.{ext}").write_bytes((kit.d / "stores" / f"kit-c.{ext}").read_bytes())
    first = Peer(kit.port, kit.ca, cert=(old / "kit-c.crt", old / "kit-c.key"), reconnect=False)
    assert first.connected
    first.close()

    script("add-store.sh", "kit-c", "localhost", kit_dir=kit.d)  # the Pi was stolen: a new certificate
    kit.reload()
    stolen = Peer(kit.port, kit.ca, cert=(old / "kit-c.crt", old / "kit-c.key"), reconnect=False, must_connect=False)
    assert not stolen.connected, "a revoked certificate still connects"
    new = kit.peer("kit-c", reconnect=False)
    assert new.connected
    new.close()

    script("make-certs.sh", "--revoke", "kit-c", kit_dir=kit.d)  # the store closes
    kit.reload()
    assert not kit.peer("kit-c", reconnect=False, must_connect=False).connected
