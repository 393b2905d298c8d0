"""Remote configuration (CONTRACT §3): ``P/S/config/set`` in, ``P/S/config/state`` out.

A ``config/set`` carries the whole overlay HQ wants for this store. It replaces the previous
overlay (it is not cumulative), is merged onto the config file as an RFC 7396 merge patch
(``null`` removes a key, so the file's value or the default applies again) and is validated
by the same models as the file. ``store_id`` and ``state_dir`` belong to the file alone.

The applied overlay is kept in ``<state_dir>/remote-config.json`` (0600, written atomically
and fsynced before anything is applied), so a store boots with it even when the broker is
unreachable. A change that needs a restart (``requires_restart`` in the schema) is applied
by restarting the agent in-process; it is on probation until the agent has reconnected and
subscribed, and is reverted by itself when that does not happen within ``mqtt.probation_s``.

No MQTT here: the agent hands payloads in and publishes what ``state()`` returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from .config import Config, ConfigError, config_data, format_validation_error, merge_patch, parse_config, redacted, restart_needed

log = logging.getLogger(__name__)

STATE_FILE = "remote-config.json"
MAX_SET_BYTES = 1024 * 1024
FILE_ONLY_KEYS = ("store_id", "state_dir")
# Keys HQ may not set anywhere in an overlay: local paths (a remote login must not point the agent at
# arbitrary files), and the session identity (a new prefix, client id or login would strand the orders
# queued in the old session at the broker).
FILE_ONLY_ANYWHERE = {"path", "spool_dir", "dir", "password_file", "ca_file", "cert_file", "key_file",
                      "topic_prefix", "client_id", "username"}
BOOTS_BEFORE_REVERT = 3  # a change whose agent restarts this often without connecting is reverted at boot


def _file_only(overlay: dict[str, Any]) -> list[str]:
    found = [k for k in FILE_ONLY_KEYS if k in overlay]

    def walk(obj: Any, where: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                path = f"{where}.{k}" if where else str(k)
                if k in FILE_ONLY_ANYWHERE and v is not None and where != "texts" and not where.startswith("rules"):
                    found.append(path)
                walk(v, path)
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")

    walk(overlay, "")
    return found


class ConfigSet(BaseModel):
    """The ``config/set`` payload. Unknown top-level fields are ignored (forward compatible)."""

    model_config = ConfigDict(extra="ignore")
    v: Literal[1]
    version: StrictInt = Field(ge=1, le=2**63 - 1)
    config: dict[str, Any]


class StateError(BaseModel):
    version: Optional[int] = Field(description="the refused or reverted version; null when it could not be read")
    message: str


class ConfigState(BaseModel):
    """The retained ``config/state`` payload."""

    v: Literal[1] = 1
    version: int = Field(description="the applied overlay's version; 0 = the config file alone")
    applied_at: Optional[str] = Field(description="when that version was applied (ISO 8601, UTC)")
    sha256: str = Field(description="SHA-256 of `config` as canonical JSON (sorted keys, no spaces, UTF-8)")
    config: dict[str, Any] = Field(description="the running config, secrets replaced by \"***\"")
    error: Optional[StateError] = Field(description="the last refused or reverted config/set; null after a success")


@dataclass
class Decision:
    kind: Literal["apply", "same", "refused"]
    version: Optional[int] = None
    message: str = ""
    cfg: Optional[Config] = None
    overlay: dict[str, Any] = field(default_factory=dict)
    restart: list[str] = field(default_factory=list)


def _iso(ts: Optional[float]) -> Optional[str]:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts else None


class RemoteConfig:
    def __init__(self, base: Config, clock: Callable[[], float] = time.time) -> None:
        self.base = base
        self.clock = clock
        self.path = Path(base.state_dir) / STATE_FILE
        self.version = 0
        self.overlay: dict[str, Any] = {}
        self.applied_at: Optional[float] = None
        self.error: Optional[dict[str, Any]] = None
        self.previous: Optional[dict[str, Any]] = None  # what to go back to while on probation
        self.probation = False
        self.probation_boots = 0
        self.reverted = 0  # the highest version ever reverted: a retained replay of it is not applied again
        self._lock = threading.RLock()  # the requests and housekeeping threads both change and save state
        self._load()

    # -- persistence
    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.version = int(data["version"])
            self.overlay = dict(data["overlay"])
            self.applied_at = data.get("applied_at")
            self.error = data.get("error")
            self.previous = data.get("previous")
            self.probation = bool(data.get("probation"))
            self.probation_boots = int(data.get("probation_boots") or 0)
            self.reverted = int(data.get("reverted") or 0)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("%s is unreadable (%s): running the config file alone", self.path, e)
            self.version, self.overlay = 0, {}
            self.error = {"version": None, "message": f"stored remote config unreadable, running the config file alone: {e}"}

    def _fields(self) -> tuple:
        return (self.version, self.overlay, self.applied_at, self.error, self.previous, self.probation,
                self.probation_boots, self.reverted)

    def _restore(self, fields: tuple) -> None:
        (self.version, self.overlay, self.applied_at, self.error, self.previous, self.probation,
         self.probation_boots, self.reverted) = fields

    def _save(self) -> None:
        data = {"version": self.version, "overlay": self.overlay, "applied_at": self.applied_at, "error": self.error,
                "previous": self.previous, "probation": self.probation, "probation_boots": self.probation_boots,
                "reverted": self.reverted}
        # a unique temp file in the same directory, written whole, fsynced, renamed over the old one
        fd, tmp = tempfile.mkstemp(prefix=".remote-config.", dir=self.path.parent)  # mode 0600: it may hold secrets
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(data, ensure_ascii=False, indent=1).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _change(self, fn: Callable[[], None]) -> None:
        """Apply ``fn`` to the state and persist it; on a failed save the state is as before (OSError raised)."""
        with self._lock:
            before = self._fields()
            fn()
            try:
                self._save()
            except OSError:
                self._restore(before)
                raise

    # -- the effective config
    def merged(self, overlay: dict[str, Any]) -> Config:
        fixed = _file_only(overlay)
        if fixed:
            raise ConfigError("; ".join(f"{k}: set in the config file only, not remotely" for k in fixed))
        return parse_config(merge_patch(config_data(self.base), overlay))

    def effective(self, boot: bool = False) -> Config:
        """At boot: the file plus the stored overlay; the file alone if the overlay no longer fits it.

        ``boot``: an agent is starting (the CLI only looks). A change on probation whose agent has
        started BOOTS_BEFORE_REVERT times without ever
        connecting (it crashed, or the watchdog killed it) is reverted here, before it runs again."""
        if self.probation and boot:
            try:
                if self.probation_boots >= BOOTS_BEFORE_REVERT:
                    self.revert(f"config version {self.version}: the agent started {self.probation_boots} times "
                                "without connecting: reverted")
                else:
                    self._change(lambda: setattr(self, "probation_boots", self.probation_boots + 1))
            except OSError as e:
                log.error("cannot update the remote config state: %s", e)
        if not self.overlay:
            return self.base
        try:
            return self.merged(self.overlay)
        except (ConfigError, RecursionError) as e:
            log.error("stored remote config version %d does not fit the config file, running the file alone: %s", self.version, e)
            self.error = {"version": self.version, "message": f"does not fit the config file, running the file alone: {e}"[:500]}
            return self.base

    @property
    def probation_s(self) -> int:
        """From the config file, never from the change on probation (it could not lengthen its own trial)."""
        return self.base.mqtt.probation_s

    # -- config/set
    def propose(self, payload: bytes, current: Config) -> Decision:
        """Check a ``config/set`` payload against the running config; nothing changes yet."""
        if len(payload) > MAX_SET_BYTES:
            return Decision("refused", None, f"payload too large ({len(payload)} bytes, limit {MAX_SET_BYTES})")
        try:
            req = ConfigSet.model_validate_json(payload)
        except ValidationError as e:
            version = None
            try:
                raw = json.loads(payload)
                if isinstance(raw, dict) and type(raw.get("version")) is int:
                    version = raw["version"]
            except (ValueError, RecursionError):
                pass
            return Decision("refused", version, f"bad config/set: {format_validation_error(e)}"[:500])
        with self._lock:
            applied, overlay, reverted = self.version, self.overlay, self.reverted
        if req.version <= applied:
            if req.version == applied and req.config == overlay:
                return Decision("same", req.version)  # a replay (HQ retains its config/set): nothing to do
            return Decision("refused", req.version,
                            f"version {req.version} is not greater than the applied version {applied}: ignored")
        if req.version <= reverted:
            return Decision("refused", req.version, f"version {req.version} was tried and reverted "
                            f"(version {reverted} is the latest reverted one): send a higher version")
        try:
            cfg = self.merged(req.config)
        except ConfigError as e:
            return Decision("refused", req.version, str(e)[:500])
        except RecursionError:
            return Decision("refused", req.version, "config nested too deeply")
        return Decision("apply", req.version, cfg=cfg, overlay=req.config, restart=restart_needed(current, cfg))

    def commit(self, d: Decision) -> None:
        """Persist an accepted overlay before it is applied (OSError: not persisted, do not apply)."""

        def change() -> None:
            if d.restart:
                if not self.probation:  # keep the known-good version if one is already on trial
                    self.previous = {"version": self.version, "overlay": self.overlay, "applied_at": self.applied_at}
                self.probation, self.probation_boots = True, 0
            else:
                self.previous, self.probation, self.probation_boots = None, False, 0
            self.version, self.overlay, self.applied_at, self.error = d.version or 0, d.overlay, self.clock(), None

        self._change(change)

    def refuse(self, version: Optional[int], message: str) -> None:
        try:
            self._change(lambda: setattr(self, "error", {"version": version, "message": message[:500]}))
        except OSError as e:  # the answer still goes out; it just does not survive a restart
            log.warning("cannot store the config error: %s", e)
            with self._lock:
                self.error = {"version": version, "message": message[:500]}

    def confirm(self) -> None:
        """The restarted agent is connected and subscribed: the change stays."""

        def change() -> None:
            self.probation, self.previous, self.probation_boots = False, None, 0

        self._change(change)

    def revert(self, message: str) -> None:
        """The change did not come up: back to the overlay before it, with the reason in ``error``."""

        def change() -> None:
            failed = self.version
            prev = self.previous or {"version": 0, "overlay": {}, "applied_at": None}
            self.version, self.overlay, self.applied_at = prev["version"], prev["overlay"], prev["applied_at"]
            self.error = {"version": failed, "message": message[:500]}
            self.reverted = max(self.reverted, failed)
            self.previous, self.probation, self.probation_boots = None, False, 0

        self._change(change)

    def state(self, running: Config) -> bytes:
        """The retained ``config/state`` payload: the running config with secrets redacted."""
        shown = redacted(running)
        with self._lock:
            version, applied_at, error = self.version, self.applied_at, self.error
        digest = hashlib.sha256(json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
        body = ConfigState(version=version, applied_at=_iso(applied_at), sha256=digest, config=shown, error=error)
        return body.model_dump_json().encode()
