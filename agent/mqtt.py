"""The MQTT session: the only module that imports paho-mqtt.

MQTT 5 with a stable client id, ``clean_start=False`` and a session expiry, so
orders published while the agent is down wait at the broker. QoS 1 with
``manual_ack``: a message is acknowledged only when the handler says so (after
the journal commit). ReceiveMaximum bounds un-acked messages in flight. A
retained ``status`` (``online``/``stopped``, last will ``lost``). Reconnects use
exponential backoff with full jitter. Every callback catches everything: an
exception must never kill paho's network thread.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    client_id: str
    keepalive_s: int = 30
    username: str = ""
    password: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    session_expiry_s: int = 7 * 86400
    receive_maximum: int = 16
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool


def _acknowledged(info: paho.MQTTMessageInfo) -> bool:
    """True once the broker acknowledged the message. A message queued while disconnected carries
    rc NO_CONN for good and paho's ``is_published()`` raises for it, although paho sends it after
    reconnecting and then marks it published: read that mark."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return bool(getattr(info, "_published", False))


class Backoff:
    """Exponential backoff with full jitter: each wait is uniform in [min, current cap]."""

    def __init__(self, low: float, high: float, rng: random.Random | None = None) -> None:
        self.low, self.high = low, high
        self._cap = low
        self._rng = rng or random.Random()

    def next(self) -> float:
        wait = self._rng.uniform(self.low, self._cap)
        self._cap = min(self._cap * 2, self.high)
        return wait

    def reset(self) -> None:
        self._cap = self.low


class _Client(paho.Client):
    """paho's reconnect wait has no jitter; this one takes it from ``Backoff``."""

    backoff: Backoff

    def _reconnect_wait(self) -> None:  # paho calls this between attempts in loop_forever
        target = time.monotonic() + self.backoff.next()
        while not self._thread_terminate and time.monotonic() < target:
            time.sleep(min(0.2, max(target - time.monotonic(), 0)))


class MqttLink:
    """One broker session. ``handler`` receives every inbound message and calls ``ack`` itself."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        subscriptions: list[str],
        status_topic: str,
        handler: Callable[[Inbound], None],
        on_connection: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        self.status_topic = status_topic
        self.handler = handler
        self.on_connection = on_connection
        self.connected = False
        self.subscribed = False  # SUBACK granted every subscription on the current connection
        self.connects = 0
        self._stopping = False
        self._redeliver_lock = threading.Lock()
        self._redeliver_timer: Optional[threading.Timer] = None
        self._pending: list[tuple[paho.MQTTMessageInfo, Callable[[], None]]] = []
        self._pending_lock = threading.Lock()
        c = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=True,
        )
        c.backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        c.suppress_exceptions = True
        c.max_queued_messages_set(10000)
        c.max_inflight_messages_set(20)
        if settings.username:
            c.username_pw_set(settings.username, settings.password or None)
        if settings.tls:
            c.tls_set(
                ca_certs=settings.ca_file or None,
                certfile=settings.cert_file or None,
                keyfile=settings.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        c.will_set(status_topic, b"lost", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self._client = c

    # -- lifecycle
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.ReceiveMaximum = self.settings.receive_maximum
        self._client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Clean stop: retained ``stopped``, then DISCONNECT (the session and its queue stay at the broker)."""
        self._stopping = True
        if self._redeliver_timer is not None:
            self._redeliver_timer.cancel()
        if self.connected:
            info = self._client.publish(self.status_topic, b"stopped", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as e:
                log.warning("could not publish stopped status: %s", e)
        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        self._client.disconnect(properties=props)
        self._client.loop_stop()

    def kill_connection(self) -> None:
        """Drop the TCP connection without DISCONNECT, so the broker redelivers what was not acked."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def redeliver_later(self, delay_s: float = 10.0) -> None:
        """Ask the broker to resend what is not acked: drop the connection after ``delay_s`` (once at a time)."""
        with self._redeliver_lock:
            if self._redeliver_timer is not None and self._redeliver_timer.is_alive():
                return
            self._redeliver_timer = threading.Timer(delay_s * random.uniform(0.8, 1.2), self.kill_connection)
            self._redeliver_timer.daemon = True
            self._redeliver_timer.start()

    # -- I/O
    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1, on_delivered: Optional[Callable[[], None]] = None
    ) -> None:
        """Queue a message (paho keeps it across reconnects).

        ``on_delivered`` runs from ``poll_delivered()`` once the broker has acknowledged it. (No lock of
        ours is held around paho calls, and nothing runs inside paho's callbacks: no deadlock with its
        internal mutexes.)
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("publish to %s not queued: %s", topic, paho.error_string(info.rc))
        elif on_delivered is not None:
            with self._pending_lock:
                self._pending.append((info, on_delivered))

    def poll_delivered(self) -> int:
        """Run the ``on_delivered`` callbacks of messages the broker has acknowledged since the last poll."""
        with self._pending_lock:
            done = [cb for info, cb in self._pending if _acknowledged(info)]
            self._pending = [(i, cb) for i, cb in self._pending if not _acknowledged(i)]
        for cb in done:
            try:
                cb()
            except Exception:  # noqa: BLE001
                log.exception("delivery callback failed")
        return len(done)

    def ack(self, msg: Inbound) -> None:
        if msg.qos > 0:
            self._client.ack(msg.mid, msg.qos)

    # -- callbacks (paho's thread; nothing may escape)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            if reason_code.is_failure:
                log.error("broker %s:%s refused the connection: %s", self.settings.host, self.settings.port, reason_code)
                return
            self.connected = True
            self.connects += 1
            client.backoff.reset()
            log.info(
                "connected to %s:%s as %s (session present: %s)",
                self.settings.host, self.settings.port, self.settings.client_id, flags.session_present,
            )
            opts = SubscribeOptions(qos=1)
            client.subscribe([(t, opts) for t in self.subscriptions])
            client.publish(self.status_topic, b"online", qos=1, retain=True)
            self.on_connection(True)
        except Exception:  # noqa: BLE001
            log.exception("on_connect failed")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        try:
            failed = [(t, rc) for t, rc in zip(self.subscriptions, reason_codes) if rc.is_failure]
            if failed:
                log.error("broker refused subscription(s): %s (check the broker ACL for this store)",
                          ", ".join(f"{t}: {rc}" for t, rc in failed))
            self.subscribed = not failed
        except Exception:  # noqa: BLE001
            log.exception("on_subscribe failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            was = self.connected
            self.connected = False
            self.subscribed = False
            if not self._stopping:
                log.warning("disconnected from broker: %s; reconnecting with backoff", reason_code)
            if was:
                self.on_connection(False)
        except Exception:  # noqa: BLE001
            log.exception("on_disconnect failed")

    def _on_message(self, client, userdata, message) -> None:
        try:
            self.handler(Inbound(message.topic, message.payload, message.mid, message.qos, bool(message.dup)))
        except Exception:  # noqa: BLE001 - the message stays un-acked; the broker redelivers it
            log.exception("handling a message on %s failed; it stays un-acknowledged", message.topic)
            self.redeliver_later()


class ToolClient:
    """A short-lived client for tools (demo, ``send``): publish and collect messages, blocking."""

    def __init__(self, settings: MqttSettings, subscriptions: list[str] = (), *, keep_session: bool = False) -> None:
        """``keep_session``: connect as the store itself without harming its session (doctor's broker probe):
        ``clean_start=False`` with the store's expiry, and nothing delivered is acknowledged, so the
        broker hands it to the agent later. A clean start would discard the store's queued orders."""
        self.received: list[tuple[str, bytes]] = []
        self._cv = threading.Condition()
        self._ready = threading.Event()
        self.keep_session = keep_session
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=paho.MQTTv5,
                        manual_ack=keep_session)
        c.suppress_exceptions = True
        if settings.username:
            c.username_pw_set(settings.username, settings.password or None)
        if settings.tls:
            c.tls_set(ca_certs=settings.ca_file or None, certfile=settings.cert_file or None, keyfile=settings.key_file or None)

        def on_connect(client, userdata, flags, rc, props):
            if not rc.is_failure:
                for t in subscriptions:
                    client.subscribe(t, qos=1)
                self._ready.set()

        def on_message(client, userdata, msg):
            with self._cv:
                self.received.append((msg.topic, msg.payload))
                self._cv.notify_all()

        c.on_connect = on_connect
        c.on_message = on_message
        self._client = c
        self.settings = settings

    def _session_props(self, packet: int) -> Optional[Properties]:
        if not self.keep_session:
            return None
        props = Properties(packet)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        return props

    def __enter__(self) -> "ToolClient":
        self._client.connect(self.settings.host, self.settings.port, keepalive=30,
                             clean_start=False if self.keep_session else paho.MQTT_CLEAN_START_FIRST_ONLY,
                             properties=self._session_props(PacketTypes.CONNECT))
        self._client.loop_start()
        if not self._ready.wait(10):
            self._client.loop_stop()
            raise ConnectionError(f"broker {self.settings.host}:{self.settings.port} did not accept the connection")
        time.sleep(0.1)  # let SUBACKs arrive
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect(properties=self._session_props(PacketTypes.DISCONNECT))
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True
