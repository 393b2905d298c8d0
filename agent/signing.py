"""Signed commands (issue 16): HQ's console signs every ``config/set`` and request with an Ed25519 key;
an agent whose config file names ``security.hq_public_key`` refuses what is unsigned, badly signed,
replayed, or meant for another store or another command. A stolen broker password alone then no
longer reconfigures a store or prints on it.

The signature travels inside the JSON payload, as one more top-level field (agents without a key,
and older agents, ignore it)::

    {"transaction": "t-1", "args": {...},
     "sig": {"key": "3f2a9c01d4e5b6a7", "store": "cq-0231", "command": "request/reprint",
             "at": 1764480000, "nonce": "9b1f...", "ed25519": "<base64 signature>"}}

What is signed: ``SIGNED_PREFIX`` + the canonical JSON (sorted keys, no spaces, UTF-8) of the whole
payload with ``sig`` minus its ``ed25519`` field, so the store, the command, the time and the nonce
are covered with the body.

Invariants:

* with a key configured, nothing unsigned or signed by an unknown key is run or applied (``Verifier.check``);
* a request is run once: signed within ``replay_window_s`` of the agent's clock, and its nonce not seen
  in that window (``Verifier._fresh``). Nonces are kept in memory, so a replay within the window right
  after an agent restart is not caught; the window bounds that;
* a ``config/set`` has no time window (a retained set reaches a store that was off for days): its
  ``version`` is the replay guard, as it already is (agent/remote.py refuses a version not greater than
  the applied one, and a re-sent applied one changes nothing).

No MQTT and no I/O here; ``cryptography`` is imported lazily so the CLI starts without it loaded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import threading
import time
from typing import Any, Callable, Iterable, Optional

SIGNED_PREFIX = b"store-agent signed command v1\n"
PUBLIC_PREFIX = "ed25519:"
NONCE_MEMORY = 100_000  # nonces remembered at most (a flood of valid signatures cannot exhaust memory)


class SigningError(Exception):
    """A key that cannot be used (the message says why)."""


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def key_id(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:16]


def _signed_bytes(body: dict[str, Any], meta: dict[str, Any]) -> bytes:
    return SIGNED_PREFIX + canonical({**{k: v for k, v in body.items() if k != "sig"}, "sig": meta})


def parse_public_key(text: str) -> tuple[str, Any]:
    """``ed25519:<base64 of the 32 raw bytes>`` -> (key id, key object)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415

    t = text.strip()
    if not t.startswith(PUBLIC_PREFIX):
        raise SigningError(f"a public key is written {PUBLIC_PREFIX}<base64> (store-fleet keygen prints it)")
    try:
        raw = base64.b64decode(t[len(PUBLIC_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise SigningError("the public key is not valid base64") from None
    if len(raw) != 32:
        raise SigningError(f"an Ed25519 public key has 32 bytes, this one {len(raw)}")
    return key_id(raw), Ed25519PublicKey.from_public_bytes(raw)


def public_text(raw_public: bytes) -> str:
    return PUBLIC_PREFIX + base64.b64encode(raw_public).decode()


def generate() -> tuple[bytes, str]:
    """A new key pair: (the private key as PEM (PKCS#8, unencrypted), the public key as ``ed25519:…``)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, public_text(raw)


class Signer:
    """HQ's side: ``sign(body, store, command)`` -> the body with its ``sig``."""

    def __init__(self, private_pem: bytes, clock: Callable[[], float] = time.time) -> None:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

        try:
            key = serialization.load_pem_private_key(private_pem, password=None)
        except (ValueError, TypeError) as e:
            raise SigningError(f"not a PEM private key without a passphrase: {e}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningError("the signing key is not an Ed25519 key (store-fleet keygen makes one)")
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id(raw)
        self.public = public_text(raw)
        self.clock = clock

    def sign(self, body: dict[str, Any], store: str, command: str) -> dict[str, Any]:
        meta = {"key": self.key_id, "store": store, "command": command, "at": int(self.clock()),
                "nonce": secrets.token_hex(16)}
        value = self._key.sign(_signed_bytes(body, meta))
        return {**{k: v for k, v in body.items() if k != "sig"}, "sig": {**meta, "ed25519": base64.b64encode(value).decode()}}


class Verifier:
    """The agent's side. ``check(command, body, replay=True)`` -> None (run it) or why it is refused."""

    def __init__(self, public_keys: Iterable[str], store_id: str, window_s: int = 300,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = dict(parse_public_key(k) for k in public_keys)
        if not self.keys:
            raise SigningError("no public key")
        self.store_id, self.window_s, self.clock = store_id, window_s, clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, command: str, body: Any, replay: bool = True) -> Optional[str]:
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

        sig = body.get("sig") if isinstance(body, dict) else None
        if sig is None:
            return (f"signature: unsigned {command} refused: this store runs only commands signed by HQ "
                    "(security.hq_public_key)")
        if not isinstance(sig, dict) or not all(isinstance(sig.get(k), str) for k in ("key", "store", "command", "nonce", "ed25519")) \
                or type(sig.get("at")) is not int or len(sig) != 6:
            return "signature: malformed sig (needs key, store, command, at, nonce, ed25519)"
        key = self.keys.get(sig["key"])
        if key is None:
            return (f"signature: signed with key {sig['key'][:16]!r}, which this store does not know "
                    "(security.hq_public_key)")
        try:
            value = base64.b64decode(sig["ed25519"], validate=True)
            key.verify(value, _signed_bytes(body, {k: v for k, v in sig.items() if k != "ed25519"}))
        except (InvalidSignature, binascii.Error, ValueError):
            return "signature: bad signature (the payload was changed, or not signed with that key)"
        if sig["store"] != self.store_id:
            return f"signature: signed for store {sig['store'][:64]!r}, not this store ({self.store_id})"
        if sig["command"] != command:
            return f"signature: signed for {sig['command'][:80]!r}, not {command}"
        if replay:
            return self._fresh(sig["nonce"], sig["at"])
        return None

    def _fresh(self, nonce: str, at: int) -> Optional[str]:
        now = self.clock()
        age = now - at
        if age > self.window_s:
            return f"signature: replayed or delayed: signed {age:.0f} s ago, the window is {self.window_s} s"
        if age < -self.window_s:
            return f"signature: signed {-age:.0f} s in the future (clocks apart? the window is {self.window_s} s)"
        with self._lock:
            if len(self._seen) >= NONCE_MEMORY or len(self._seen) % 1000 == 999:
                self._seen = {n: t for n, t in self._seen.items() if now - t <= self.window_s}
            if nonce in self._seen:
                return "signature: replayed: this request (its nonce) was run already"
            if len(self._seen) >= NONCE_MEMORY:
                return "signature: too many signed requests in the window; try again later"
            self._seen[nonce] = float(at)
        return None


def verifier_for(cfg: Any) -> Optional[Verifier]:
    """The agent's verifier from its config (``security.hq_public_key``); None when no key is set."""
    sec = getattr(cfg, "security", None)
    keys = [k for k in (sec.hq_public_keys if sec else []) if k]
    if not keys:
        return None
    return Verifier(keys, cfg.store_id, sec.replay_window_s)
