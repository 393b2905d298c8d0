"""TLS + username/password against a real mosquitto with a CA made for the test."""

import subprocess
import time

import pytest

from agent.devbroker import DevBroker
from conftest import HQ, agent_config, fresh, example, wait_until
from agent.app import Agent
from agent.config import parse_config


def make_pki(d):
    def run(*args):
        subprocess.run(args, cwd=d, check=True, capture_output=True)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    return d / "ca.pem", d / "server.pem", d / "server.key"


@pytest.fixture
def secure_broker(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, cert, key = make_pki(pki)
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "tls-store", "s3cret"], check=True, capture_output=True)
    b = DevBroker(tmp_path / "broker", tls=(ca, cert, key), password_file=pw).start()
    yield b, ca
    b.stop()


def test_agent_over_tls_with_password_file(secure_broker, vprinter, tmp_path):
    broker, ca = secure_broker
    (tmp_path / "mqtt.pass").write_text("s3cret\n")
    cfg = agent_config(tmp_path / "state", broker.port, vprinter.port, "tls-store",
                       mqtt={"host": "127.0.0.1", "port": broker.port, "tls": True, "ca_file": str(ca),
                             "username": "tls-store", "password_file": str(tmp_path / "mqtt.pass")})
    agent = Agent(parse_config(cfg))
    agent.start()
    try:
        assert wait_until(lambda: agent.link.subscribed, 15)
    finally:
        agent.stop()


def test_wrong_password_never_connects(secure_broker, vprinter, tmp_path, caplog):
    broker, ca = secure_broker
    cfg = agent_config(tmp_path / "state", broker.port, vprinter.port, "tls-store",
                       mqtt={"host": "127.0.0.1", "port": broker.port, "tls": True, "ca_file": str(ca),
                             "username": "tls-store", "password": "wrong", "reconnect_min_s": 0.2, "reconnect_max_s": 0.5})
    agent = Agent(parse_config(cfg))
    agent.start()
    try:
        time.sleep(2)
        assert not agent.link.connected
        assert "refused the connection" in caplog.text
    finally:
        agent.stop()


def test_untrusted_server_certificate_is_refused(secure_broker, vprinter, tmp_path):
    broker, _ = secure_broker
    other = tmp_path / "other"
    other.mkdir()
    wrong_ca, _, _ = make_pki(other)
    cfg = agent_config(tmp_path / "state", broker.port, vprinter.port, "tls-store",
                       mqtt={"host": "127.0.0.1", "port": broker.port, "tls": True, "ca_file": str(wrong_ca),
                             "username": "tls-store", "password": "s3cret"})
    agent = Agent(parse_config(cfg))
    agent.start()
    try:
        time.sleep(2)
        assert not agent.link.connected
    finally:
        agent.stop()
