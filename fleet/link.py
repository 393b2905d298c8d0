"""The console's MQTT connection (the only fleet module that imports paho).

It subscribes to every store's retained topics and alerts (``P/+/status``, ``health``, ``stats``,
``config/state``, ``alerts``, ``orders/result``) and hands each message to ``on_message`` on paho's thread
(which must not block: FleetState.ingest only updates memory). Responses to requests are subscribed
on demand. Reconnects by itself; a refused login raises ``ConnectionError`` with the reason and its fix
(the agent's own wording, agent/mqtt.py)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt import MqttSettings, explain_exception, explain_reason

log = logging.getLogger(__name__)

PICTURE = ("status", "health", "stats", "config/state", "alerts", "orders/result")


class FleetLink:
    def __init__(self, s: MqttSettings, prefix: str, on_message: Callable[[str, bytes, bool], None],
                 extra: tuple[str, ...] = ()) -> None:
        self.s, self.prefix = s, prefix
        self.on_message = on_message
        self.topics = [f"{prefix}/+/{k}" for k in PICTURE] + list(extra)
        self.last_message = time.monotonic()
        self.subscribed = threading.Event()
        self.refused: Optional[str] = None
        self.connected = False
        self._acks: dict[int, object] = {}  # mid -> the PUBACK's reason code (MQTT 5: "Not authorized" = the ACL)
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=paho.MQTTv5)
        c.suppress_exceptions = True
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(100)
        if s.username:
            c.username_pw_set(s.username, s.password or None)
        if s.tls:
            c.tls_set(ca_certs=s.ca_file or None, certfile=s.cert_file or None, keyfile=s.key_file or None)
        c.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
        c.on_connect, c.on_subscribe, c.on_message, c.on_disconnect, c.on_publish = (
            self._on_connect, self._on_subscribe, self._on_message, self._on_disconnect, self._on_publish)
        self.c = c

    def start(self, timeout: float = 10.0) -> "FleetLink":
        try:
            self.c.connect(self.s.host, self.s.port, keepalive=self.s.keepalive_s)
        except (OSError, ValueError) as e:
            reason, fix = explain_exception(e, self.s)
            raise ConnectionError(f"{reason}; fix: {fix}") from None
        self.c.loop_start()
        deadline = time.monotonic() + timeout
        while not self.subscribed.is_set() and not self.refused and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.subscribed.is_set():
            self.stop()
            raise ConnectionError(self.refused or f"no answer from the broker at {self.s.host}:{self.s.port} within {timeout:g} s")
        return self

    def stop(self) -> None:
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()

    def settle(self, quiet_s: float = 0.5, max_s: float = 15.0) -> None:
        """Wait for the retained messages to arrive: until none came for ``quiet_s`` (at most ``max_s``)."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline and time.monotonic() - self.last_message < quiet_s:
            time.sleep(0.05)

    def subscribe(self, topic: str) -> None:
        """One more subscription, waited for (responses to requests)."""
        done = threading.Event()
        self._sub_done = done
        rc, mid = self.c.subscribe(topic, qos=1)
        self.topics.append(topic)
        done.wait(5)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> paho.MQTTMessageInfo:
        return self.c.publish(topic, payload, qos=1, retain=retain)

    def rejected(self, info: paho.MQTTMessageInfo, timeout: float = 10.0) -> Optional[str]:
        """Wait for a publish's PUBACK: None when the broker took it, else why not (the ACL refused it, or
        no PUBACK within ``timeout``)."""
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as e:
            return f"not sent: {e}"
        if not info.is_published():
            return f"the broker did not acknowledge it within {timeout:g} s"
        deadline = time.monotonic() + 1.0
        while info.mid not in self._acks and time.monotonic() < deadline:
            time.sleep(0.005)
        rc = self._acks.pop(info.mid, None)
        if rc is not None and getattr(rc, "is_failure", False):
            return f"the broker refused it: {rc} (the console's login may not publish there: see the ACL in docs/FLEET.md)"
        return None

    # -- paho callbacks (paho's thread: never raise, never block)
    def _on_publish(self, client, userdata, mid, rc, props) -> None:  # noqa: ANN001
        self._acks[mid] = rc
        if len(self._acks) > 100_000:
            self._acks.clear()

    def _on_connect(self, client, userdata, flags, rc, props) -> None:  # noqa: ANN001
        if rc.is_failure:
            reason, fix = explain_reason(rc)
            self.refused = f"{reason}; fix: {fix}"
            log.error("broker refused the console: %s", self.refused)
            return
        self.connected = True
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, rcs, props) -> None:  # noqa: ANN001
        bad = [r for r in rcs if getattr(r, "is_failure", False)]
        if bad:
            log.error("broker refused %d subscription(s) of the console (the login's ACL)", len(bad))
        self.last_message = time.monotonic()
        self.subscribed.set()
        done = getattr(self, "_sub_done", None)
        if done is not None:
            done.set()

    def _on_disconnect(self, client, userdata, flags, rc, props) -> None:  # noqa: ANN001
        self.connected = False
        if getattr(rc, "is_failure", False):
            log.warning("console disconnected from the broker: %s", rc)

    def _on_message(self, client, userdata, m) -> None:  # noqa: ANN001
        self.last_message = time.monotonic()
        try:
            self.on_message(m.topic, m.payload, bool(m.retain))
        except Exception:  # noqa: BLE001
            log.exception("console message handler failed")
