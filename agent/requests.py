"""MQTT requests (``P/S/request/<command>``) and remote config (``P/S/config/set``), served off paho's thread.

paho's thread only acknowledges and queues (``offer``); one thread (``_serve``) answers requests in
order, because some (``diagnose``) wait for printers. Requests are not journaled: a lost one is
simply asked again. A ``config/set`` is not acknowledged while the agent is restarting, so the
broker hands it to the restarted agent (same session).

Invariants (issue 19, finding 6: a request flood must not starve orders nor lose configuration):
- acknowledged ``config/set`` ⇒ applied or refused in ``config/state``: it has its own queue, never
  bounded by requests and served before them (``offer``, ``_next``).
- every request gets an answer: run, or refused with the reason (``rate limited``, ``busy``); none is
  dropped silently (``offer``, ``_refuse``). Only refusal *replies* beyond ``REFUSALS_SIZE`` waiting
  are dropped (counted in the log): the request was not run either way.
- per command a token bucket (``RATE_LIMITS``: burst, then one every N seconds) bounds how much work
  HQ or the info department can queue; ``Commands`` adds at most one pending test page per printer,
  one pending reprint per order and ``MAX_PENDING_INTERNAL`` agent-made tickets in all, so an order
  never waits behind more than a few of them.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

from .commands import reply
from .remote import MAX_SET_BYTES, Decision, version_of
from .mqtt import Inbound
from .signing import verifier_for

if TYPE_CHECKING:
    from .app import Agent

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 65536
QUEUE_SIZE = 100  # requests waiting to be served; more are answered "busy"
REFUSALS_SIZE = 200  # refusal replies waiting to be published; more are dropped (the requests were not run)

# MQTT requests per command: (burst, seconds per further one). A flood of 500 test_print requests
# prints 3 test pages, not 500; the rest are answered "rate limited". The local CLI is not limited
# (its group is the store's technicians), but the pending limits in Commands apply to it too.
RATE_LIMITS: dict[str, tuple[int, float]] = {
    "test_print": (3, 20.0),
    "reprint": (10, 6.0),
    "chime": (5, 5.0),
    "diagnose": (2, 30.0),
    "ack": (20, 1.0),
    "silence": (20, 1.0),
    "queue": (20, 0.5),
    "status": (20, 0.5),
}
OTHER_LIMIT = (20, 1.0)  # unknown commands (answered with an error, but the answer costs too)


class TokenBucket:
    """``burst`` at once, then one every ``every_s``."""

    def __init__(self, burst: int, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.every_s, self._clock = burst, every_s, clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> float:
        """0 when allowed (a token is used); else the seconds until the next token."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) / self.every_s)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) * self.every_s


class RateLimits:
    def __init__(self, limits: Optional[dict[str, tuple[int, float]]] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = RATE_LIMITS if limits is None else limits
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, command: str) -> Optional[str]:
        """None when ``command`` may run now; else why not."""
        key = command if command in self._limits else "*"
        burst, every = self._limits.get(command, OTHER_LIMIT)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(burst, every, self._clock)
            wait = bucket.take()
        if not wait:
            return None
        return (f"rate limited: {command or 'requests'} at most {burst} at once and one every {every:g} s; "
                f"try again in {wait:.0f} s")


def _transaction(payload: bytes) -> object:
    """The transaction of a request payload, for a refusal; None when unreadable."""
    if len(payload) > MAX_REQUEST_BYTES:
        return None
    try:
        body = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    t = body.get("transaction") if isinstance(body, dict) else None
    return t if isinstance(t, (str, int)) else None


class RequestDesk:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self.limits = RateLimits()
        # security.hq_public_key (file only): requests and config/set must carry HQ's signature (agent/signing.py)
        self.verifier = verifier_for(getattr(agent, "cfg", None))
        self._configs: "collections.deque[Inbound]" = collections.deque()  # at most the newest (acked) one
        self.superseded = 0
        self._requests: "collections.deque[Inbound]" = collections.deque()
        self._refusals: "collections.deque[tuple[str, bytes, str]]" = collections.deque()
        self._refusals_dropped = 0
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="requests", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    def offer(self, msg: Inbound) -> None:
        """paho's thread: acknowledge and queue a config/set or a request (or its refusal). Nothing is
        published here: paho's callbacks only queue."""
        a = self.agent
        if a.restart_requested:
            return  # not acked: the broker hands it to the restarted agent (same session)
        a.link.ack(msg)
        if msg.topic == a.topics.config_set:
            with self._cv:
                # each config/set carries HQ's whole overlay: only the newest waiting one matters
                if self._configs:
                    self._configs.clear()
                    self.superseded += 1
                    log.warning("config/set superseded by a newer one before it was applied (%d so far)", self.superseded)
                self._configs.append(msg)
                self._cv.notify()
            return
        command = msg.topic[len(a.topics.request("")):]
        why = self.limits.check(command)
        if why is None and len(msg.payload) > MAX_REQUEST_BYTES:  # refused at once: never kept in memory
            why = f"bad request: payload too large ({len(msg.payload)} bytes, limit {MAX_REQUEST_BYTES})"
            msg = Inbound(msg.topic, b"", msg.mid, msg.qos, msg.dup)
        with self._cv:
            if why is None and len(self._requests) >= QUEUE_SIZE:
                why = f"busy: {QUEUE_SIZE} requests are waiting; try again later"
            if why is None:
                self._requests.append(msg)
            elif len(self._refusals) < REFUSALS_SIZE:
                self._refusals.append((command, msg.payload if len(msg.payload) <= MAX_REQUEST_BYTES else b"", why))
            else:
                self._refusals_dropped += 1
                if self._refusals_dropped in (1, 10, 100) or self._refusals_dropped % 1000 == 0:
                    log.warning("request flood: %d refused requests left unanswered", self._refusals_dropped)
                return
            self._cv.notify()

    def _next(self) -> tuple[str, object]:
        """The next thing to serve: a config/set first, then a refusal (cheap), then a request."""
        with self._cv:
            while not (self._configs or self._refusals or self._requests) and not self._stop.is_set():
                self._cv.wait()  # offer() and stop() notify under the lock: no timed wake-ups when idle
            if self._stop.is_set() and not self._configs:
                return "stop", None  # stopping: acknowledged config/set are still served, requests are not
            if self._configs:
                return "config", self._configs.popleft()
            if self._refusals:
                return "refusal", self._refusals.popleft()
            return "request", self._requests.popleft()

    def pending(self) -> dict[str, int]:
        with self._cv:
            return {"config": len(self._configs), "requests": len(self._requests), "refusals": len(self._refusals)}

    def _serve(self) -> None:
        topics = self.agent.topics
        while True:
            kind, item = self._next()
            if kind == "stop":
                return
            if kind == "config":
                try:
                    self.config_set(item.payload)  # type: ignore[union-attr]
                except Exception:  # noqa: BLE001 - this thread serves every request
                    log.exception("config/set failed")
                continue
            if kind == "refusal":
                command, payload, why = item  # type: ignore[misc]
                out = reply(_transaction(payload), error=why)
            else:
                command = item.topic[len(topics.request("")):]  # type: ignore[union-attr]
                out = self.answer(command, item.payload)  # type: ignore[union-attr]
            try:
                self.agent.link.publish(topics.response(command or "unknown"),
                                        json.dumps(out, ensure_ascii=False, default=str).encode())
            except Exception:  # noqa: BLE001
                log.exception("cannot answer request %s", command)

    def answer(self, command: str, payload: bytes) -> dict:
        """A ``P/S/request/<command>`` payload -> the response body; never raises."""
        transaction = None
        try:
            if len(payload) > MAX_REQUEST_BYTES:
                raise ValueError(f"payload too large ({len(payload)} bytes, limit {MAX_REQUEST_BYTES})")
            body = json.loads(payload.decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError("the request must be a JSON object")
            transaction = body.get("transaction")
            if transaction is not None and not isinstance(transaction, (str, int)):
                transaction = None
                raise ValueError("transaction must be a string")
            if self.verifier is not None:
                why = self.verifier.check(f"request/{command}", body)
                if why:
                    log.warning("request %s refused: %s", command, why)
                    return reply(transaction, error=why)
            return self.agent.commands.run(command, body.get("args"), transaction)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            return reply(transaction, error=f"bad request: {str(e)[:300]}")
        except Exception as e:  # noqa: BLE001 - a request must never take the agent down
            log.exception("request %s failed", command)
            return reply(transaction, error=f"agent error: {type(e).__name__}")

    # -- remote configuration
    def publish_config_state(self) -> None:
        a = self.agent
        a.link.publish(a.topics.config_state, a.remote.state(a.cfg), retain=True)

    def config_set(self, payload: bytes) -> None:
        a = self.agent
        if a.restart_requested:
            a.remote.refuse(None, f"not applied: the agent is restarting for {a.restart_requested}; send it again")
            return
        why = self.unsigned_config_set(payload)
        d = a.remote.propose(payload, a.cfg) if why is None else Decision("refused", version_of(payload), why)
        if d.kind == "refused":
            log.warning("config/set refused: %s", d.message)
            a.remote.refuse(d.version, d.message)
        elif d.kind == "apply":
            try:
                a.remote.commit(d)
            except OSError as e:
                log.error("config version %s not applied: cannot store it: %s", d.version, e)
                a.remote.refuse(d.version, f"not applied: cannot store it in state_dir: {e}")
            else:
                if d.restart:
                    log.warning("config version %s changes %s: restarting the agent", d.version, ", ".join(d.restart))
                    a.restart_requested = f"config version {d.version} changes {', '.join(d.restart)}"
                    return  # the restarted agent publishes config/state once it is connected
                log.info("config version %s applied", d.version)
                a.apply_live(d.cfg)
        self.publish_config_state()

    def unsigned_config_set(self, payload: bytes) -> Optional[str]:
        """With security.hq_public_key: why this config/set is not HQ's (None: signed by HQ, or no key set).
        No time window: a config/set's version is its replay guard (agent/signing.py)."""
        if self.verifier is None:
            return None
        if len(payload) > MAX_SET_BYTES:
            return None  # propose refuses it by its size
        try:
            body = json.loads(payload.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None  # propose refuses it as unreadable
        return self.verifier.check("config/set", body, replay=False)

    def check_probation(self) -> None:
        """After a restart for a remote change: keep it once subscribed, revert it if that does not happen."""
        a = self.agent
        if not a.remote.probation or a.restart_requested:
            return
        limit = a.remote.probation_s
        try:
            if a.link.subscribed:
                log.info("config version %d is connected and subscribed: kept", a.remote.version)
                a.remote.confirm()
                self.publish_config_state()
            elif time.monotonic() - a.started_mono > limit:
                failed = a.remote.version
                a.remote.revert(f"not connected and subscribed within {limit} s with config version {failed}: reverted")
                log.error("config version %d did not reconnect within %d s: reverting to version %d",
                          failed, limit, a.remote.version)
                a.restart_requested = f"revert config version {failed}"
        except OSError as e:  # not stored: still on probation, tried again next second
            log.error("cannot store the probation outcome: %s", e)
