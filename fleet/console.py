"""The composition root of the console: config -> state + history + MQTT link + signer. No module-level
state, so tests and the benchmark run several consoles in one process."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from agent.config import ConfigError
from agent.signing import Signer, SigningError

from .config import FleetConfig
from .history import History
from .link import FleetLink
from .state import STORE_ID, FleetState

log = logging.getLogger(__name__)
MAX_RESPONSE = 256 * 1024


def load_signer(cfg: FleetConfig) -> Optional[Signer]:
    if not cfg.signing.key_file:
        return None
    try:
        return Signer(Path(cfg.signing.key_file).read_bytes())
    except OSError as e:
        raise ConfigError(f"signing.key_file: cannot read {cfg.signing.key_file}: {e.strerror}") from None
    except SigningError as e:
        raise ConfigError(f"signing.key_file: {e}") from None


class Console:
    def __init__(self, cfg: FleetConfig, role: str = "console") -> None:
        self.cfg = cfg
        p = cfg.problems
        self.state = FleetState(cfg.prefix, queue_oldest_s=p.queue_oldest_s, health_stale_s=p.health_stale_s,
                                expect_version=p.version)
        self.history = History(cfg.history_path)
        self.history.prune()  # alert events and closed outages older than 90 days
        self.history.restore_into(self.state)
        self.state.listeners.append(self.history.on_change)
        self.signer = load_signer(cfg)
        self._responses: dict[str, dict[str, Any]] = {}  # transaction -> response (requests this console sent)
        self._waiting: set[str] = set()
        self._resp_cv = threading.Condition()
        self.link = FleetLink(cfg.settings(role), cfg.prefix, self._on_message)

    def start(self, settle: bool = True) -> "Console":
        self.link.start()
        if settle:
            self.link.settle()
        return self

    def stop(self) -> None:
        self.link.stop()
        self.history.close()

    def refresh_pushed(self) -> None:
        """What HQ last pushed, from the history: another console process (``store-fleet push`` beside a running
        ``serve``) may have pushed meanwhile."""
        versions = self.history.pushed_versions()
        with self.state.lock:
            self.state.pushed = versions

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if "/response/" in topic:
            self._response(topic, payload)
        else:
            self.state.ingest(topic, payload, retained)

    # -- sending (every config/set and request is signed when a key is configured)
    def _body(self, body: dict[str, Any], store: str, command: str) -> bytes:
        if self.signer is not None:
            body = self.signer.sign(body, store, command)
        return json.dumps(body, ensure_ascii=False).encode()

    def send_config(self, store: str, version: int, overlay: dict[str, Any]):  # noqa: ANN201 - paho MQTTMessageInfo
        """A config/set, retained so a store that is off gets it when it returns."""
        topic = f"{self.cfg.prefix}/{store}/config/set"
        return self.link.publish(topic, self._body({"v": 1, "version": version, "config": overlay}, store, "config/set"),
                                 retain=True)

    def _response(self, topic: str, payload: bytes) -> None:
        if len(payload) > MAX_RESPONSE:
            return
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError):
            return
        if not isinstance(body, dict):
            return
        t = body.get("transaction")
        with self._resp_cv:
            if isinstance(t, str) and t in self._waiting:
                store = topic.split("/")[-3] if topic.count("/") >= 3 else "?"
                body["_store"] = store
                self._responses[t] = body
                self._waiting.discard(t)
                self._resp_cv.notify_all()

    def request(self, command: str, stores: list[str], args: Optional[dict[str, Any]] = None,
                timeout: float = 10.0) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Send ``command`` to each store; -> (answers by store, stores that did not answer within ``timeout``)."""
        if not command or "/" in command or "+" in command or "#" in command:
            raise ValueError(f"not a command name: {command!r}")
        self.link.subscribe(f"{self.cfg.prefix}/+/response/{command}")
        run = uuid.uuid4().hex[:8]
        tx = {s: f"fleet-{run}-{s}" for s in stores}
        with self._resp_cv:
            self._waiting.update(tx.values())
        infos = {}
        for s in stores:
            body: dict[str, Any] = {"transaction": tx[s]}
            if args is not None:
                body["args"] = args
            infos[s] = self.link.publish(f"{self.cfg.prefix}/{s}/request/{command}", self._body(body, s, f"request/{command}"))
        deadline = time.monotonic() + timeout
        refused = {}
        for s, info in infos.items():
            why = self.link.rejected(info, max(0.1, deadline - time.monotonic()))
            if why:
                refused[s] = {"transaction": tx[s], "status": "error", "error": why, "data": None, "_store": s}
        with self._resp_cv:
            self._waiting.difference_update(tx[s] for s in refused)
            while self._waiting & set(tx.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._resp_cv.wait(left)
            answers = {s: self._responses.pop(t) for s, t in tx.items() if t in self._responses}
            self._waiting.difference_update(tx.values())
        answers.update(refused)
        return answers, [s for s in stores if s not in answers]

    # -- picking stores
    def match(self, pattern: str) -> list[str]:
        """Known stores matching a glob (``cq-*``), or a comma-separated list of globs / ids."""
        import fnmatch  # noqa: PLC0415

        pats = [p.strip() for p in pattern.split(",") if p.strip()]
        known = sorted(s.id for s in self.state.snapshot())
        out = [s for s in known if any(fnmatch.fnmatchcase(s, p) for p in pats)]
        # an exact id that is not known yet is still a target (it may be off and never seen)
        out += [p for p in pats if STORE_ID.match(p) and p not in out and not any(c in p for c in "*?[")]
        return out
