"""The MQTT session: the only module that imports paho-mqtt.

MQTT 5 with a stable client id, ``clean_start=False`` and a session expiry, so
orders published while the agent is down wait at the broker. QoS 1 with
``manual_ack``: a message is acknowledged only when the handler says so (after
the journal commit). ReceiveMaximum bounds un-acked messages in flight. A
retained ``status`` (``online``/``stopped``, last will ``lost``). Reconnects use
exponential backoff with full jitter. Every callback catches everything: an
exception must never kill paho's network thread.

Why a connection fails is said in words a technician can act on (``explain_exception``,
``explain_reason``: DNS, refused port, TLS verification, CONNACK reason codes, a session taken
over) and logged rate-limited (``ConnectTrouble``: the first failure, every change of reason,
and the same reason again every ``LOG_EVERY_S``); the last error and its time stay readable
(``MqttLink.trouble``) for ``status``, ``doctor`` and health.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
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


LOG_EVERY_S = 300.0  # the same connection failure is logged again after this long (a change of reason at once)
SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason: another client connected with this client id

_CREDENTIALS_FIX = ("check mqtt.username and the password in mqtt.password_file (the info department re-issues it: "
                    "add-store.sh --password STORE)")
# MQTT 5 CONNACK / DISCONNECT reason codes a technician meets, in words, with the fix
_REASONS: dict[int, tuple[str, str]] = {
    133: ("client id rejected by the broker", "leave mqtt.client_id empty (the default store-agent-<store_id>) or ask "
          "the info department which client ids the broker allows"),
    134: ("wrong username or password", _CREDENTIALS_FIX),
    135: ("not authorised: wrong username or password, or a login the broker does not know (mosquitto answers both "
          "this way)", "check mqtt.username and the password in mqtt.password_file (or mqtt.cert_file / key_file); "
          "the info department re-issues them with add-store.sh for this store_id"),
    136: ("the broker is unavailable", "the broker is starting or overloaded: wait; tell the info department if it lasts"),
    137: ("the broker is busy", "wait; tell the info department if it lasts"),
    138: ("this login is banned on the broker", "ask the info department"),
    140: ("the broker does not accept this way of logging in", "check mqtt.username / password vs certificate login "
          "with the info department"),
    149: ("the broker refused a packet as too large", "raise max_packet_size on the broker (docs/BROKER.md)"),
    151: ("the broker's quota for this client is exceeded", "ask the info department"),
    159: ("the broker refuses connections this fast", "wait; check for a second device logging in as this store"),
    SESSION_TAKEN_OVER: ("session taken over by another client with this login",
                         "another device or tool is logged in as this store (a second Pi with this store's config, "
                         "or store-agent doctor/send or mosquitto_sub with the store's login): find it and stop it"),
}


def explain_reason(code: object) -> tuple[str, str]:
    """(reason, fix) for a CONNACK or DISCONNECT reason code (a paho ReasonCode or its value)."""
    value = getattr(code, "value", code)
    if isinstance(value, int) and value in _REASONS:
        reason, fix = _REASONS[value]
        return f"{reason} (MQTT reason {value:#04x})", fix
    return f"broker said: {code}", "see the broker's log (journalctl -u mosquitto) with the info department"


# The TLS alerts by which the broker refuses this store's certificate, in the order they are told apart:
# (names in the alert text, reason, fix). One table: what explain_tls_alert says and what the link keeps.
_CERT_ALERTS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "UNSUPPORTED_CERTIFICATE"),
     "TLS: the broker does not accept this store's certificate mqtt.cert_file {cert} ({text})",
     "install the certificate add-store.sh issued for this store (client.crt, client.key)"),
    (("CERTIFICATE_EXPIRED",),  # the store's own certificate (the broker's is checked by us, not alerted)
     "TLS: this store's certificate mqtt.cert_file {cert} has expired ({text})",
     "the info department issues a new one (add-store.sh STORE): install its client.crt and client.key"),
    (("REVOKED",),
     "TLS: this store's certificate mqtt.cert_file {cert} has been revoked ({text})",
     "the store was re-keyed: install its new client.crt and client.key from the info department"),
    (("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE"),
     "TLS: the broker wants a client certificate (mqtt.cert_file / key_file) ({text})",
     "set mqtt.cert_file and mqtt.key_file to the store's client.crt and client.key"),
)


def _certificate_alert(text: str) -> Optional[tuple[str, str]]:
    upper = text.upper()
    return next(((reason, fix) for names, reason, fix in _CERT_ALERTS if any(n in upper for n in names)), None)


def is_certificate_alert(text: str) -> bool:
    """A TLS alert by which the broker refuses this store's certificate (not an EOF, not a wrong port)."""
    return _certificate_alert(text) is not None


def explain_tls_alert(text: str, s: "MqttSettings") -> tuple[str, str]:
    """(reason, fix) for a TLS error or alert, from its text (raised at the handshake, or read later: a revoked
    certificate's alert may come with the first read)."""
    where = f"{s.host}:{s.port}"
    found = _certificate_alert(text)
    if found:
        return found[0].format(cert=s.cert_file or "(none)", text=text), found[1]
    if "WRONG_VERSION_NUMBER" in text.upper() or "RECORD_LAYER" in text.upper():
        return (f"TLS: {where} does not speak TLS ({text})", "check mqtt.port (8883 is TLS) and mqtt.tls")
    return f"TLS with {where} failed: {text}", "check mqtt.ca_file, cert_file, key_file with the info department"


def explain_exception(e: BaseException, s: "MqttSettings") -> tuple[str, str]:
    """(reason, fix) for an error raised while connecting (DNS, TCP, TLS), naming the host, port and files."""
    where = f"{s.host}:{s.port}"
    if isinstance(e, ssl.SSLCertVerificationError):
        msg = getattr(e, "verify_message", "") or str(e)
        code = getattr(e, "verify_code", None)
        if code == 62 or "hostname" in msg.lower() or "ip address mismatch" in msg.lower():
            return (f"TLS: the broker's certificate is not for {s.host} ({msg})",
                    "mqtt.host must be the name (or IP) in the broker's certificate, as add-store.sh printed it")
        if code == 10 or "expired" in msg.lower():
            return (f"TLS: the broker's certificate has expired ({msg})", "the info department renews it (make-certs.sh HOSTNAME)")
        return (f"TLS: the broker's certificate is not signed by the CA in mqtt.ca_file {s.ca_file or '(system CAs)'} ({msg})",
                "install the kit's ca.crt from the info department as mqtt.ca_file")
    if isinstance(e, ssl.SSLError):
        return explain_tls_alert((getattr(e, "reason", None) or str(e)), s)
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the broker's name {s.host!r} ({e.strerror or e})", "check mqtt.host, the network and DNS (ping it)"
    if isinstance(e, ConnectionRefusedError):
        return f"nothing listens on {where} (connection refused)", f"is the broker up, and is mqtt.port right? (nc -vz {s.host} {s.port})"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return f"no answer from {where} (timed out)", f"network or firewall: nc -vz {s.host} {s.port}"
    if isinstance(e, FileNotFoundError):
        return f"a TLS file is missing: {e.filename or e}", "store-agent config check names the key and the path"
    if isinstance(e, OSError):
        return f"cannot reach {where}: {e.strerror or e}", "check the network (ip addr, ping the broker)"
    return f"cannot connect to {where}: {type(e).__name__}: {e}", "store-agent doctor"


@dataclass(frozen=True)
class ConnectProblem:
    reason: str
    fix: str
    at: float  # epoch seconds
    attempts: int  # failed attempts in a row (so far)

    def as_dict(self) -> dict:
        return {"error": self.reason, "fix": self.fix, "at": datetime.fromtimestamp(self.at, timezone.utc).isoformat(),
                "failed_attempts": self.attempts}


class ConnectTrouble:
    """The last connection problem, logged rate-limited: the first, each change of reason, and the same
    reason again every ``every_s`` (with how many attempts failed). Thread-safe."""

    def __init__(self, where: str, every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.time,
                 logger: logging.Logger = log) -> None:
        self.where = where
        self.every_s = every_s
        self.clock = clock
        self.log = logger
        self.last: Optional[ConnectProblem] = None
        self.failing = 0  # failed attempts since the last good connection
        self._logged_reason = ""
        self._logged_at = 0.0
        self._lock = threading.Lock()

    def failed(self, reason: str, fix: str, level: int = logging.ERROR) -> None:
        with self._lock:
            self.failing += 1
            now = self.clock()
            self.last = ConnectProblem(reason, fix, now, self.failing)
            if reason != self._logged_reason or now - self._logged_at >= self.every_s:
                again = f" ({self.failing} failed attempts so far)" if self.failing > 1 else ""
                self.log.log(level, "cannot connect to the broker %s: %s%s; fix: %s; retrying with backoff",
                             self.where, reason, again, fix)
                self._logged_reason, self._logged_at = reason, now

    def taken_over(self, reason: str, fix: str) -> None:
        """The session was taken over (the agent is connected again): a warning, rate-limited like ``failed``
        (two clients with one login take it from each other again and again)."""
        with self._lock:
            now = self.clock()
            repeat = self.last is not None and self.last.reason == reason
            self.last = ConnectProblem(reason, fix, now, 0)
            if not repeat or now - self._logged_at >= self.every_s:
                self.log.warning("the broker %s: %s; fix: %s", self.where, reason, fix)
                self._logged_at = now

    def lost(self, reason: str, fix: str, level: int = logging.WARNING) -> None:
        """A working connection ended: always logged (it is one event, not a retry loop)."""
        with self._lock:
            now = self.clock()
            self.last = ConnectProblem(reason, fix, now, self.failing)
            self.log.log(level, "disconnected from the broker %s: %s; fix: %s; reconnecting with backoff",
                         self.where, reason, fix)
            self._logged_reason, self._logged_at = reason, now

    def connected(self) -> None:
        with self._lock:
            if self.failing:
                self.log.info("connected to the broker %s after %d failed attempt(s); last error: %s",
                              self.where, self.failing, self.last.reason if self.last else "?")
            self.failing = 0
            self._logged_reason = ""


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
    on_connect_error: Callable[[BaseException], None] = staticmethod(lambda e: None)

    def reconnect(self):  # noqa: ANN201 - paho calls this for every attempt; it swallows the OSError's text
        try:
            return super().reconnect()
        except Exception as e:
            try:
                self.on_connect_error(e)
            except Exception:  # noqa: BLE001 - paho's thread must survive
                log.exception("recording a connection error failed")
            raise

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
        self.trouble = ConnectTrouble(f"{settings.host}:{settings.port}")
        self._refused = False  # this attempt already explained (a CONNACK refusal): its disconnect says nothing new
        self._socket_error = ""  # paho's last socket error text (it reports a lost connection as "Unspecified error")
        # The TLS reason the broker gave at an earlier attempt of this failing streak (see _explain_disconnect)
        self._tls_refusal: Optional[tuple[str, str]] = None
        self._self_closed = False  # kill_connection: the next disconnect is ours  # monotonic time the broker closed a working connection
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
        c.on_connect_error = self._on_connect_error
        c.on_log = self._on_log
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
        log.info("connecting to the broker %s:%s as %s%s%s", self.settings.host, self.settings.port, self.settings.client_id,
                 f", login {self.settings.username}" if self.settings.username else "",
                 ", TLS" if self.settings.tls else "")
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
            self._self_closed = True
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
    def error_info(self) -> Optional[dict]:
        """The last connection problem (reason, fix, UTC time, failed attempts in a row), or None: for
        ``status``, ``doctor`` and health."""
        last = self.trouble.last
        return None if last is None else {**last.as_dict(), "failing_now": not self.connected}

    def _on_log(self, client, userdata, level, buf) -> None:
        try:
            if level == paho.MQTT_LOG_ERR and "socket" in buf:
                self._socket_error = buf
            log.debug("paho: %s", buf)
        except Exception:  # noqa: BLE001
            pass

    def _on_connect_error(self, e: BaseException) -> None:
        """A connection attempt failed before CONNACK (DNS, TCP, TLS): say why."""
        if self._stopping:
            return
        reason, fix = explain_exception(e, self.settings)
        if (isinstance(e, ssl.SSLError) and not isinstance(e, ssl.SSLCertVerificationError)
                and is_certificate_alert(getattr(e, "reason", None) or str(e))):  # the broker refused the certificate
            self._tls_refusal = (reason, fix)
        else:  # refused port, DNS, timeout, another TLS failure: what the broker said before may no longer hold
            self._tls_refusal = None
        self.trouble.failed(reason, fix)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            if reason_code.is_failure:
                self._refused = True
                self._tls_refusal = None  # the broker took the certificate and answered the login
                reason, fix = explain_reason(reason_code)
                self.trouble.failed(f"the broker refused the connection: {reason}", fix)
                return
            self._refused = False
            self._socket_error = ""
            self._tls_refusal = None
            self.trouble.connected()
            self.connected = True
            self.connects += 1
            client.backoff.reset()
            log.info(
                "connected to %s:%s as %s (session present: %s)",
                self.settings.host, self.settings.port, self.settings.client_id, flags.session_present,
            )
            try:
                opts = SubscribeOptions(qos=1)
                client.subscribe([(t, opts) for t in self.subscriptions])
                client.publish(self.status_topic, b"online", qos=1, retain=True)
            finally:  # the agent hears of every change of `connected` (the status LED follows it)
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
            try:
                if not self._stopping:
                    self._explain_disconnect(was, reason_code)
            finally:
                if was:
                    self.on_connection(False)
        except Exception:  # noqa: BLE001
            log.exception("on_disconnect failed")

    def _explain_disconnect(self, was: bool, reason_code) -> None:  # noqa: ANN001
        if not was and self._refused:  # the refusal was already explained
            self._refused = False
            return
        self._refused = False
        self_closed, self._self_closed = self._self_closed, False
        text = self._socket_error.replace("failed to receive on socket: ", "")  # paho's words around the error
        if getattr(reason_code, "value", None) == SESSION_TAKEN_OVER:
            reason, fix = _REASONS[SESSION_TAKEN_OVER]
            reason = f"{reason} ({self._login()}); the agent takes it back when it reconnects"
        elif getattr(reason_code, "value", 0) >= 0x80 and str(reason_code) != "Unspecified error":
            reason, fix = explain_reason(reason_code)
        elif self_closed:
            reason = "the agent dropped the connection so that the broker resends what is not acknowledged"
            fix = "nothing: see the journal alert (agent.journal_failed) for why"
        elif was and not self._socket_error:  # a clean close by the broker: a take-over, a kick, or a restart
            # mosquitto 2.0.11 (Debian, Raspberry Pi OS) ends the old connection of a taken-over session without a
            # DISCONNECT reason. A broker that is stopping closes its port too: still listening = taken over.
            if self._broker_listening():
                reason, fix = _REASONS[SESSION_TAKEN_OVER]
                self.trouble.taken_over(f"{reason} ({self._login()}): the broker closed this connection and is up; "
                                        "the agent takes the session back when it reconnects", fix)
                return
            reason = "the broker closed the connection and is not listening (restarting or stopped)"
            fix = "nothing if it is a restart: the agent reconnects by itself; tell the info department if it lasts"
        elif not was and "SSL" in self._socket_error:  # a TLS alert read after the handshake (a revoked certificate)
            reason, fix = explain_tls_alert(text, self.settings)
            self._tls_refusal = (reason, fix) if is_certificate_alert(text) else None
        elif not was and self._tls_refusal and self.settings.tls:
            # With TLS 1.3 the broker checks the store's certificate after the client's handshake is done; its alert
            # (revoked, unknown CA) crosses our CONNECT and the broker's reset can drop it unread: the attempt ends
            # in a bare EOF or reset (1 attempt in 3 to 8 here). The broker said why at an earlier attempt of this
            # streak: that reason stays (and is not logged again), rather than alternating with a vaguer one.
            reason, fix = self._tls_refusal
        elif not was:  # closed (or reset) before any CONNACK: most often plain MQTT to a TLS port
            reason = "the broker closed the connection before answering the login" + (
                f" ({text})" if text else "")
            if self.settings.tls and self.settings.cert_file:  # TLS is on: most often the certificate, unsaid
                fix = (f"the broker may refuse this store's certificate mqtt.cert_file {self.settings.cert_file} (revoked, "
                       "or from another CA): the next attempts usually say which; else the broker's log says why")
            else:
                fix = (f"mqtt.tls must be true for a TLS port (the broker kit's is 8883; mqtt.tls = "
                       f"{str(self.settings.tls).lower()}, mqtt.port = {self.settings.port}); else the broker's log says why")
        else:
            reason = f"connection lost ({self._socket_error or reason_code})"
            fix = "check the network and the broker; the agent reconnects by itself"
        self._socket_error = ""
        if was:
            self.trouble.lost(reason, fix)
        else:
            self.trouble.failed(reason, fix)

    def _broker_listening(self) -> bool:
        """A TCP connection to the broker's port, opened and closed at once (no MQTT: no session touched)."""
        try:
            with socket.create_connection((self.settings.host, self.settings.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _login(self) -> str:
        s = self.settings
        return f"login {s.username}" if s.username else (f"certificate {s.cert_file}" if s.cert_file else f"client id {s.client_id}")

    def _on_message(self, client, userdata, message) -> None:
        try:
            self.handler(Inbound(message.topic, message.payload, message.mid, message.qos, bool(message.dup)))
        except Exception:  # noqa: BLE001 - the message stays un-acked; the broker redelivers it
            log.exception("handling a message on %s failed; it stays un-acknowledged", message.topic)
            self.redeliver_later()


class ToolClient:
    """A short-lived client for tools (demo, ``send``, ``doctor``): publish and collect messages, blocking.

    A refused login or a failed TLS handshake raises ``ConnectionError`` with the reason in words and
    its fix; ``taken_over`` is set when another client logs in with the same login meanwhile."""

    def __init__(self, settings: MqttSettings, subscriptions: list[str] = (), *, keep_session: bool = False) -> None:
        """``keep_session``: connect as the store itself without harming its session (doctor's broker probe):
        ``clean_start=False`` with the store's expiry, and nothing delivered is acknowledged, so the
        broker hands it to the agent later. A clean start would discard the store's queued orders."""
        self.received: list[tuple[str, bytes]] = []
        self._cv = threading.Condition()
        self._ready = threading.Event()
        self.refused: Optional[tuple[str, str]] = None
        self.taken_over = False
        self.keep_session = keep_session
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=paho.MQTTv5,
                        manual_ack=keep_session, reconnect_on_failure=False)
        c.suppress_exceptions = True
        if settings.username:
            c.username_pw_set(settings.username, settings.password or None)
        if settings.tls:
            c.tls_set(ca_certs=settings.ca_file or None, certfile=settings.cert_file or None, keyfile=settings.key_file or None)

        def on_connect(client, userdata, flags, rc, props):
            try:
                if rc.is_failure:
                    self.refused = explain_reason(rc)
                else:
                    for t in subscriptions:
                        client.subscribe(t, qos=1)
                self._ready.set()
            except Exception:  # noqa: BLE001
                log.exception("tool on_connect failed")

        def on_disconnect(client, userdata, flags, rc, props):
            if getattr(rc, "value", None) == SESSION_TAKEN_OVER:
                self.taken_over = True
            if not self._ready.is_set():
                self.refused = self.refused or (f"the broker closed the connection before accepting it ({rc})",
                                                "check the login (mqtt.username / password_file, or the certificate)")
                self._ready.set()

        def on_message(client, userdata, msg):
            with self._cv:
                self.received.append((msg.topic, msg.payload))
                self._cv.notify_all()

        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
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
        where = f"{self.settings.host}:{self.settings.port}"
        try:
            self._client.connect(self.settings.host, self.settings.port, keepalive=30,
                                 clean_start=False if self.keep_session else paho.MQTT_CLEAN_START_FIRST_ONLY,
                                 properties=self._session_props(PacketTypes.CONNECT))
        except (OSError, ValueError) as e:
            reason, fix = explain_exception(e, self.settings)
            raise ConnectionError(f"{reason}; fix: {fix}") from None
        self._client.loop_start()
        if not self._ready.wait(10) or self.refused:
            self._client.loop_stop()
            reason, fix = self.refused or (f"no answer from the broker at {where} within 10 s", "check the network and mqtt.port")
            raise ConnectionError(f"{reason}; fix: {fix}")
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


def tls_probe(s: MqttSettings, timeout: float = 5.0) -> dict:
    """Reach the broker and, with ``s.tls``, complete the TLS handshake (the CA, the client certificate),
    without sending CONNECT: no login, so no session is touched. Returns ``{"detail", "server_cert_days"}``
    (days until the broker's own certificate expires); raises ``ConnectionError`` with the reason in words
    and its fix."""
    try:
        with socket.create_connection((s.host, s.port), timeout=timeout) as raw:
            if not s.tls:
                return {"detail": f"{s.host}:{s.port} reachable (no TLS)", "server_cert_days": None}
            ctx = ssl.create_default_context(cafile=s.ca_file or None)
            if s.cert_file:
                ctx.load_cert_chain(s.cert_file, s.key_file or None)
            with ctx.wrap_socket(raw, server_hostname=s.host) as tls:
                tls.settimeout(0.3)
                try:  # TLS 1.3: the server's verdict on a client certificate arrives after the handshake
                    tls.recv(1)
                except (socket.timeout, TimeoutError):
                    pass
                days = None
                not_after = (tls.getpeercert() or {}).get("notAfter")
                if not_after:
                    days = (ssl.cert_time_to_seconds(not_after) - time.time()) / 86400
                return {"detail": f"{s.host}:{s.port} reachable, TLS verified ({tls.version()})", "server_cert_days": days}
    except (OSError, ValueError) as e:
        reason, fix = explain_exception(e, s)
        raise ConnectionError(f"{reason}; fix: {fix}") from None


def read_retained(s: MqttSettings, topic: str, wait_s: float = 2.0) -> Optional[bytes]:
    """The retained message on ``topic`` (None: nothing retained), read with a login that is not the store's."""
    with ToolClient(s, [topic]) as c:
        c.wait_for(lambda msgs: any(t == topic for t, _ in msgs), wait_s)
        got = [p for t, p in c.received if t == topic]
    return got[-1] if got else None
