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

import hashlib
import json
import logging
import os
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
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("%s is unreadable (%s): running the config file alone", self.path, e)
            self.version, self.overlay = 0, {}
            self.error = {"version": None, "message": f"stored remote config unreadable, running the config file alone: {e}"}

    def _save(self) -> None:
        data = {"version": self.version, "overlay": self.overlay, "applied_at": self.applied_at,
                "error": self.error, "previous": self.previous, "probation": self.probation}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold the MQTT password
        try:
            os.write(fd, json.dumps(data, ensure_ascii=False, indent=1).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- the effective config
    def merged(self, overlay: dict[str, Any]) -> Config:
        fixed = [k for k in FILE_ONLY_KEYS if k in overlay]
        if fixed:
            raise ConfigError("; ".join(f"{k}: set in the config file only, not remotely" for k in fixed))
        return parse_config(merge_patch(config_data(self.base), overlay))

    def effective(self) -> Config:
        """At boot: the file plus the stored overlay; the file alone if the overlay no longer fits it."""
        if not self.overlay:
            return self.base
        try:
            return self.merged(self.overlay)
        except ConfigError as e:
            log.error("stored remote config version %d does not fit the config file, running the file alone: %s", self.version, e)
            self.error = {"version": self.version, "message": f"does not fit the config file, running the file alone: {e}"}
            return self.base

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
            except ValueError:
                pass
            return Decision("refused", version, f"bad config/set: {format_validation_error(e)}")
        if req.version <= self.version:
            if req.version == self.version and req.config == self.overlay:
                return Decision("same", req.version)  # a replay (HQ retains its config/set): nothing to do
            return Decision("refused", req.version,
                            f"version {req.version} is not greater than the applied version {self.version}: ignored")
        try:
            cfg = self.merged(req.config)
        except ConfigError as e:
            return Decision("refused", req.version, str(e))
        return Decision("apply", req.version, cfg=cfg, overlay=req.config, restart=restart_needed(current, cfg))

    def commit(self, d: Decision) -> None:
        """Persist an accepted overlay before it is applied (OSError: not persisted, do not apply)."""
        before = (self.version, self.overlay, self.applied_at, self.error, self.previous, self.probation)
        if d.restart:
            self.previous = {"version": self.version, "overlay": self.overlay, "applied_at": self.applied_at}
            self.probation = True
        else:
            self.previous, self.probation = None, False
        self.version, self.overlay, self.applied_at, self.error = d.version or 0, d.overlay, self.clock(), None
        try:
            self._save()
        except OSError:
            self.version, self.overlay, self.applied_at, self.error, self.previous, self.probation = before
            raise

    def refuse(self, version: Optional[int], message: str) -> None:
        self.error = {"version": version, "message": message}
        try:
            self._save()
        except OSError as e:  # the answer still goes out; it just does not survive a restart
            log.warning("cannot store the config error: %s", e)

    def confirm(self) -> None:
        """The restarted agent is connected and subscribed: the change stays."""
        self.probation, self.previous = False, None
        self._save()

    def revert(self, message: str) -> None:
        """The change did not come up: back to the overlay before it, with the reason in ``error``."""
        failed = self.version
        prev = self.previous or {"version": 0, "overlay": {}, "applied_at": None}
        self.version, self.overlay, self.applied_at = prev["version"], prev["overlay"], prev["applied_at"]
        self.error = {"version": failed, "message": message}
        self.previous, self.probation = None, False
        self._save()

    def state(self, running: Config) -> bytes:
        """The retained ``config/state`` payload: the running config with secrets redacted."""
        shown = redacted(running)
        digest = hashlib.sha256(json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
        body = ConfigState(version=self.version, applied_at=_iso(self.applied_at), sha256=digest, config=shown,
                           error=self.error)
        return body.model_dump_json().encode()
