"""Remote configuration (CONTRACT §3): ``P/S/config/set`` in, ``P/S/config/state`` out.

A ``config/set`` carries the whole overlay HQ wants for this store. It replaces the previous
overlay (it is not cumulative), is merged onto the config file as an RFC 7396 merge patch
(``null`` removes a key, so the default applies again) and is validated by the same models as
the file.

Invariants (docs/SECURITY.md, issue 19):

* Only keys on the allow-list ``REMOTE_KEYS`` are ever taken from an overlay (``outside_allow_list``
  refuses the whole set otherwise, naming each key): wording, store name and phone, templates,
  rules, chime volume and quiet hours, timers, report times, escalation delays and notifiers (whose hosts the
  file's ``escalation.webhook_hosts`` allows), print retries, health intervals, and the paper and
  rendering settings of printers the file defines. Connection (``mqtt.*``), identity, devices,
  paths and transports (a printer's connection, host, port, USB ids, serial device, file path)
  belong to the config file; ``null`` is a value like any other there, so it removes nothing.
* A version may exceed the applied (or the highest reverted) one by at most ``MAX_VERSION_STEP``;
  raising ``remote.epoch`` in the config file drops the stored overlay and restarts the count.

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
BOOTS_BEFORE_REVERT = 3  # a change whose agent restarts this often without connecting is reverted at boot
MAX_VERSION_STEP = 1_000_000  # a version further ahead than this is refused (2**63-1 would lock HQ out)

ANY = "any"  # the whole subtree is remote (the models validate it)
# The allow-list: what HQ may set. Everything else is the config file's alone.
REMOTE_KEYS: dict[str, Any] = {
    "store": {"name": ANY, "phone": ANY},
    "texts": ANY,
    "templates": {"custom": ANY},  # rendered only in the template child process (agent/templating.py)
    "rules": ANY,
    "sound": {"enabled": ANY, "volume": ANY, "quiet_hours": ANY, "quiet_volume": ANY},  # not device
    "timers": ANY,
    "report": ANY,
    "voice": {"enabled": ANY, "speed": ANY, "phrases": ANY},  # not clips_dir (a path), not voice (an engine argument)
    "followup": ANY,
    "escalation": {"printer_fault_after_s": ANY, "renotify_s": ANY, "notifiers": ANY},  # not webhook_hosts
    "health": {"printer_poll_s": ANY, "publish_s": ANY, "clear_after_s": ANY},  # not stuck_after_s (watchdog)
    "print": {"retry_s": ANY, "max_attempts": ANY},
    "printers": "printers",  # see PRINTER_REMOTE_KEYS
}
# Of a printer the file defines (by name): these. Its transport keys may be repeated, unchanged.
PRINTER_REMOTE_KEYS = frozenset({"paper_width_mm", "role", "timeout_s", "status_query", "confirm", "render", "qr",
                                 "cut", "profile", "charset", "paper_roll_m"})


def _printers_outside(value: Any, base: Config) -> list[str]:
    if not isinstance(value, list):
        return ["printers"]
    file_printers = {p.name: p.model_dump(mode="json") for p in base.printers}
    bad: list[str] = []
    for i, entry in enumerate(value):
        where = f"printers[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            bad.append(f"{where}.name")
            continue
        mine = file_printers.get(entry["name"])
        if mine is None:
            bad.append(f"{where}.name (a printer is added in the config file)")
            continue
        for k, v in entry.items():
            if k != "name" and k not in PRINTER_REMOTE_KEYS and (k not in mine or mine[k] != v):
                bad.append(f"{where}.{k}")
    return bad


def outside_allow_list(overlay: dict[str, Any], base: Config) -> list[str]:
    """The keys of ``overlay`` that HQ may not set (empty: all of it is on the allow-list)."""

    def walk(obj: dict[str, Any], allowed: dict[str, Any], where: str) -> list[str]:
        bad: list[str] = []
        for k, v in obj.items():
            path = f"{where}.{k}" if where else str(k)
            rule = allowed.get(k)
            if rule == ANY:
                continue
            if rule == "printers" and not where:
                bad += _printers_outside(v, base)
            elif isinstance(rule, dict) and isinstance(v, dict):
                bad += walk(v, rule, path)
            elif rule is None and isinstance(v, dict) and v:  # a file-only section: name its keys
                bad += [f"{path}.{kk}" for kk in v]
            else:  # a file-only key, or null / a value replacing a section that is partly file-only
                bad.append(path)
        return bad

    return walk(overlay, REMOTE_KEYS, "")


def _expand_printers(overlay: dict[str, Any], base: Config) -> dict[str, Any]:
    """``printers`` entries name a file printer and the keys to change: merged into the file's printers
    by name. Every printer of the file stays (HQ cannot remove one), in the file's order."""
    if not isinstance(overlay.get("printers"), list):
        return overlay
    changes = {e["name"]: e for e in overlay["printers"]}
    return {**overlay, "printers": [{**p, **changes.get(p["name"], {})} for p in config_data(base)["printers"]]}


# What HQ may set, within these bounds (the file may go lower: tests, a technician on site). A
# value below them from HQ would print a slip, sound a chime or spin a thread every second.
REMOTE_MINIMUMS: tuple[tuple[str, float, bool], ...] = (
    # (dotted key, minimum, 0 allowed = off)
    ("timers.summary_every_s", 600, True),
    ("timers.check_s", 10, False),
    ("timers.prep_before_s", 60, True),
    ("health.publish_s", 10, False),
    ("health.printer_poll_s", 1, False),
    ("print.retry_s", 0.5, False),
    ("report.publish_s", 60, False),
)
RULE_REPEAT_MIN_S = 30


def below_remote_minimums(cfg: Config, base: Config) -> list[str]:
    """Values HQ changed to below ``REMOTE_MINIMUMS`` (a value the file itself sets is never refused)."""
    new, old = config_data(cfg), config_data(base)
    bad = []
    for key, low, zero_ok in REMOTE_MINIMUMS:
        section, name = key.split(".")
        v = new.get(section, {}).get(name)
        if v != old.get(section, {}).get(name) and v is not None and v < low and not (zero_ok and v == 0):
            bad.append(f"{key}: at least {low:g}{' (or 0: off)' if zero_ok else ''} when set remotely")
    for t, rule in (new.get("rules") or {}).items():
        v = (rule or {}).get("repeat_s")
        if v and v < RULE_REPEAT_MIN_S and v != ((old.get("rules") or {}).get(t) or {}).get("repeat_s"):
            bad.append(f"rules.{t}.repeat_s: at least {RULE_REPEAT_MIN_S} (or 0: off) when set remotely")
    return bad


def merged_config(base: Config, overlay: dict[str, Any]) -> Config:
    """``overlay`` applied to the config file ``base`` as a store applies it: the allow-list, the merge, the
    models, the remote minimums. ConfigError names what is wrong. (HQ's console checks a push with it.)"""
    fixed = outside_allow_list(overlay, base)
    if fixed:
        raise ConfigError("; ".join(f"{k}: set in the config file only, not remotely" for k in fixed))
    cfg = parse_config(merge_patch(config_data(base), _expand_printers(overlay, base)))
    low = below_remote_minimums(cfg, base)
    if low:
        raise ConfigError("; ".join(low))
    return cfg


def version_of(payload: bytes) -> Optional[int]:
    """The ``version`` of a config/set that may not validate (for its refusal); None when unreadable."""
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return raw["version"] if isinstance(raw, dict) and type(raw.get("version")) is int else None


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
        self.epoch = 0  # the config file's remote.epoch these versions count in
        self._lock = threading.RLock()  # the requests and housekeeping threads both change and save state
        self._load()
        if base.remote.epoch > self.epoch:
            self._new_epoch(base.remote.epoch)

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
            self.epoch = int(data.get("epoch") or 0)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("%s is unreadable (%s): running the config file alone", self.path, e)
            self.version, self.overlay = 0, {}
            self.error = {"version": None, "message": f"stored remote config unreadable, running the config file alone: {e}"}

    def _new_epoch(self, epoch: int) -> None:
        """The file raised ``remote.epoch``: the stored overlay goes, versions count from 0 again."""
        dropped = self.version

        def change() -> None:
            self.version, self.overlay, self.applied_at, self.previous = 0, {}, None, None
            self.probation, self.probation_boots, self.reverted, self.epoch = False, 0, 0, epoch
            self.error = {"version": None, "message": f"remote.epoch {epoch} in the config file: stored remote config "
                          f"version {dropped} dropped, versions count from 0"}

        try:
            self._change(change)
        except OSError as e:  # not stored: it happens again at the next start; run without the overlay now
            log.error("cannot store the new remote epoch: %s", e)
            change()
        log.warning("remote.epoch %d: stored remote config version %d dropped", epoch, dropped)

    def _fields(self) -> tuple:
        return (self.version, self.overlay, self.applied_at, self.error, self.previous, self.probation,
                self.probation_boots, self.reverted, self.epoch)

    def _restore(self, fields: tuple) -> None:
        (self.version, self.overlay, self.applied_at, self.error, self.previous, self.probation,
         self.probation_boots, self.reverted, self.epoch) = fields

    def _save(self) -> None:
        data = {"version": self.version, "overlay": self.overlay, "applied_at": self.applied_at, "error": self.error,
                "previous": self.previous, "probation": self.probation, "probation_boots": self.probation_boots,
                "reverted": self.reverted, "epoch": self.epoch}
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
        return merged_config(self.base, overlay)

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
            return Decision("refused", version_of(payload), f"bad config/set: {format_validation_error(e)}"[:500])
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
        if req.version > max(applied, reverted) + MAX_VERSION_STEP:
            return Decision("refused", req.version, f"version {req.version} is more than {MAX_VERSION_STEP} ahead of the "
                            f"applied version {applied}: refused (a larger jump needs remote.epoch raised in the config file)")
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
