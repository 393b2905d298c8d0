"""Printer faults: the store first (alert, LED, chime), then the info department (escalated alert,
DingTalk / WeCom robots on a loopback HTTP server), cleared when fixed; flapping gives one alert."""

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from agent.notify import dingtalk_url
from conftest import wait_until


def https_context(d):
    """A self-signed certificate for localhost (webhooks are https only: issue 19)."""
    import ssl
    import subprocess

    cert, key = d / "robot.pem", d / "robot.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx, cert


class Robot:
    def __init__(self, tls=None):
        """``tls``: (server SSLContext) -> https://localhost:PORT; robots accept nothing else."""
        self.posts = []
        self.answer = (200, {"Content-Type": "application/json"}, b'{"errcode":0,"errmsg":"ok"}')
        self.fail_first = 0
        robot = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                robot.posts.append((self.path, json.loads(body)))
                if robot.fail_first > 0:
                    robot.fail_first -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                code, headers, body = robot.answer
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), H)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme, host = ("https", "localhost") if tls is not None else ("http", "127.0.0.1")
        self.url = f"{scheme}://{host}:{self.server.server_port}/robot/send?access_token=t"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def robot(tmp_path, monkeypatch):
    ctx, cert = https_context(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the agent's https requests trust this robot
    r = Robot(ctx)
    yield r
    r.close()


def alerts_of(hq):
    return [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("alerts")]


def test_printer_fault_goes_to_store_then_infodept_then_clears(broker, vprinter, make_agent, hq_factory, store_id, robot):
    hq = hq_factory(broker.port, store_id)
    robot.fail_first = 1  # the first delivery fails: retried
    agent = make_agent(broker.port, vprinter.port, store_id,
                       health={"printer_poll_s": 1, "clear_after_s": 1},
                       escalation={"printer_fault_after_s": 2, "renotify_s": 600, "webhook_hosts": ["localhost"],
                                   "notifiers": [{"kind": "dingtalk", "url": robot.url, "secret": "SEC"},
                                                 {"kind": "wecom", "url": robot.url}]})
    agent.notifier.backoff_s = 0.1
    vprinter.set_mode("paper_out")
    t0 = time.monotonic()
    assert wait_until(lambda: any(a["code"] == "printer.paper_out" and a["state"] == "raised" for a in alerts_of(hq)), 5)
    print(f"paper_out alert after {time.monotonic() - t0:.2f}s (poll 1s)")
    raised = [a for a in alerts_of(hq) if a["state"] == "raised"][0]
    assert raised["id"] == "printer:counter:paper_out" and raised["audience"] == "store" and raised["printer"] == "counter"
    assert wait_until(lambda: any(a["state"] == "escalated" for a in alerts_of(hq)), 10)
    esc = [a for a in alerts_of(hq) if a["state"] == "escalated"][0]
    assert esc["audience"] == "infodept"
    d = esc["details"]
    assert d["printer"] == "counter" and d["connection"].startswith("network 127.0.0.1:") and "paper_out" in d["cause"]
    assert d["store"] == "示例大药房(解放碑店)" and d["store_phone"] == "023-6000-0231" and "jobs_waiting" in d
    assert wait_until(lambda: len([p for p in robot.posts]) >= 3, 10)  # one failure + dingtalk + wecom
    ding = [p for p in robot.posts if "sign=" in p[0]]
    assert ding and ding[-1][1]["msgtype"] == "markdown" and "printer.paper_out" in ding[-1][1]["markdown"]["title"]
    wecom = [p for p in robot.posts if "sign=" not in p[0]]
    assert wecom and "paper_out" in wecom[-1][1]["markdown"]["content"]
    vprinter.set_mode("ready")
    assert wait_until(lambda: any(a["state"] == "cleared" for a in alerts_of(hq)), 10)
    assert agent.alerts.open_alerts() == []


def test_flapping_cable_gives_one_alert(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    make_agent(broker.port, vprinter.port, store_id, health={"printer_poll_s": 1, "clear_after_s": 5},
               escalation={"printer_fault_after_s": 600})
    for _ in range(4):
        vprinter.set_mode("offline")
        time.sleep(1.2)
        vprinter.set_mode("ready")
        time.sleep(1.2)
    raised = [a for a in alerts_of(hq) if a["state"] == "raised"]
    assert len(raised) == 1 and raised[0]["code"] == "printer.offline"
    assert wait_until(lambda: any(a["state"] == "cleared" for a in alerts_of(hq)), 10)


def test_dingtalk_signature():
    url = dingtalk_url("https://oapi.dingtalk.com/robot/send?access_token=x", "SECabc", now_ms=1700000000000)
    q = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    assert q["timestamp"] == ["1700000000000"]
    import base64, hashlib, hmac

    expected = base64.b64encode(hmac.new(b"SECabc", b"1700000000000\nSECabc", hashlib.sha256).digest()).decode()
    assert q["sign"] == [expected]


@pytest.mark.parametrize("mode, state", [("paper_out", "paper_out"), ("cover_open", "cover_open"), ("offline", "offline"),
                                         ("hang", "unreachable"), ("down", "unreachable")])
def test_each_fault_kind_alerts_shows_in_health_and_recovers(broker, vprinter, make_agent, hq_factory, store_id, mode, state):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id, health={"printer_poll_s": 1, "clear_after_s": 1},
                       escalation={"printer_fault_after_s": 600})
    health = lambda: [json.loads(p) for t, p, _ in list(hq.messages) if t == hq.topic("health")]
    t0 = time.monotonic()
    vprinter.set_mode(mode)
    assert wait_until(lambda: any(a["code"] == f"printer.{state}" and a["state"] == "raised" for a in alerts_of(hq)), 10)
    took = time.monotonic() - t0
    print(f"\n{mode}: alert after {took:.2f}s (poll 1s, timeout 1s)")
    assert wait_until(lambda: health() and health()[-1]["printers"][0]["state"] == state, 5)
    assert agent.annunciator.exception_led is None or agent.annunciator.exception_led.pattern == "on"
    vprinter.set_mode("ready")
    assert wait_until(lambda: any(a["code"] == f"printer.{state}" and a["state"] == "cleared" for a in alerts_of(hq)), 15)
    assert wait_until(lambda: health()[-1]["printers"][0]["state"] == "ready", 5)
