"""Staged config pushes: check the overlay with the agent's own rules, canaries, soak, waves; halt at the
first store that rejects, reverts or degrades; roll a push back.

Invariants:

* nothing is sent before the overlay passed ``agent.remote.merged_config`` (the allow-list, the merge, the
  agent's config models, the remote minimums) against each target's running config as its config/state
  shows it (else ``push.base_file``, else a minimal store): ``check_overlay``;
* a wave starts only when every store of the waves before it answered with the new version, no error,
  and stayed good through the soak (online, no printer fault it did not have before, no failed order
  result, the version not reverted): ``Rollout._batch``; the first store that fails halts the push and
  nothing more is sent;
* every config/set sent is in the history before it goes out (``History.step``), with the version and
  overlay the store ran before, which is what ``rollback`` sends back (under a new, higher version:
  versions only go up).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from agent.config import Config, ConfigError, load_config, parse_config
from agent.remote import MAX_VERSION_STEP, merged_config

from .state import FAULTS, Store

MINIMAL_BASE = {"store_id": "representative", "printers": [{"name": "counter", "connection": "virtual"}]}


def _base_for(st: Optional[Store], fallback: Config) -> Config:
    if st is not None and st.config is not None:
        try:
            return parse_config(st.config.config)
        except ConfigError:
            pass
    return fallback


def check_overlay(overlay: dict[str, Any], stores: list[Store], base_file: str = "") -> list[str]:
    """Why the overlay would be refused, per store (empty: every target would take it)."""
    if not isinstance(overlay, dict):
        return ["the overlay must be a table"]
    fallback = load_config(base_file) if base_file else parse_config(MINIMAL_BASE)
    errors: list[str] = []
    seen: dict[str, Optional[str]] = {}  # by the store's config sha256: 1,000 stores alike are checked once
    targets = stores or [None]
    for st in targets:
        key = st.config.sha256 if st is not None and st.config is not None else "fallback"
        if key not in seen:
            try:
                merged_config(_base_for(st, fallback), overlay)
                seen[key] = None
            except ConfigError as e:
                seen[key] = str(e)[:400]
            except RecursionError:
                seen[key] = "nested too deeply"
        if seen[key]:
            errors.append(f"{st.id if st else 'representative store'}: {seen[key]}")
    return errors


@dataclass
class Step:
    store: str
    version: int
    overlay: dict[str, Any]
    before_faults: set[str] = field(default_factory=set)
    before_failed: int = 0
    outcome: str = "sent"
    detail: str = ""
    info: Any = None  # paho's MQTTMessageInfo of the config/set
    pushed_before: Optional[tuple[int, dict[str, Any]]] = None


class Halted(Exception):
    def __init__(self, store: str, why: str) -> None:
        super().__init__(f"{store}: {why}")
        self.store, self.why = store, why


class Rollout:
    """``run()`` -> the push record. ``overlays``: per store (a rollback); else ``overlay`` for all."""

    def __init__(self, console: Any, stores: list[str], overlay: Optional[dict[str, Any]] = None, *,  # noqa: ANN401
                 overlays: Optional[dict[str, dict[str, Any]]] = None, canary: int = 2, wave: int = 50,
                 soak: float = 60, answer_s: Optional[float] = None, kind: str = "push", pattern: str = "",
                 on_event: Callable[[dict[str, Any]], None] = lambda e: None, poll_s: float = 0.1) -> None:
        self.c, self.stores, self.overlay, self.overlays = console, stores, overlay or {}, overlays
        self.canary, self.wave, self.soak = max(0, canary), max(1, wave), max(0.0, soak)
        self.answer_s = answer_s if answer_s is not None else console.cfg.push.answer_s
        self.kind, self.pattern, self.on_event, self.poll_s = kind, pattern, on_event, poll_s
        self.push_id: Optional[int] = None
        self.steps: dict[str, Step] = {}

    def _say(self, text: str, **kw: Any) -> None:
        if self.push_id is not None:
            self.c.history.log(self.push_id, text)
        self.on_event({"text": text, "push_id": self.push_id, **kw})

    def _store(self, sid: str) -> Optional[Store]:
        with self.c.state.lock:
            st = self.c.state.stores.get(sid)
            return self.c.state._copy(st) if st else None

    def plan(self) -> list[list[str]]:
        """Canaries (online stores first, by id), then waves of ``wave``."""
        snap = {s: self._store(s) for s in self.stores}
        online = [s for s in self.stores if snap[s] is not None and snap[s].status == "online"]
        canaries = online[: self.canary]
        rest = [s for s in self.stores if s not in canaries]
        waves = [canaries] if canaries else []
        waves += [rest[i:i + self.wave] for i in range(0, len(rest), self.wave)]
        return waves

    def run(self) -> dict[str, Any]:
        h = self.c.history
        self.push_id = h.start_push(self.kind, self.pattern, self.overlay if self.overlays is None else {"per_store": True})
        if not self.stores:
            h.end_push(self.push_id, "done", "no store matches")
            self._say("no store matches: nothing sent")
            return h.push(self.push_id)
        waves = self.plan()
        self._say(f"{self.kind} #{self.push_id}: {len(self.stores)} stores in {len(waves)} steps "
                  f"({len(waves[0]) if self.canary and waves else 0} canaries, waves of {self.wave}, soak {self.soak:g} s)")
        try:
            for i, batch in enumerate(waves):
                name = "canaries" if i == 0 and self.canary else f"wave {i + (0 if self.canary else 1)}"
                self._say(f"{name}: {', '.join(batch[:8])}{' …' if len(batch) > 8 else ''} ({len(batch)})", phase=name)
                self._batch(batch)
                self._say(f"{name}: good ({sum(1 for s in batch if self.steps[s].outcome == 'good')} good, "
                          f"{sum(1 for s in batch if self.steps[s].outcome == 'pending')} pending: offline)", phase=name)
        except Halted as e:
            rest = len(self.stores) - len(self.steps)
            result = f"halted at {e.store}: {e.why}; {rest} store(s) not sent"
            self._say(result, halted=e.store)
            h.end_push(self.push_id, "halted", result)
            return h.push(self.push_id)
        result = f"done: {len(self.stores)} stores"
        pending = [s for s, st in self.steps.items() if st.outcome == "pending"]
        if pending:
            result += f" ({len(pending)} offline, they get it when they return: {', '.join(pending[:10])})"
        self._say(result)
        h.end_push(self.push_id, "done", result)
        return h.push(self.push_id)

    def _send(self, sid: str) -> Step:
        st = self._store(sid)
        overlay = self.overlays[sid] if self.overlays is not None else self.overlay
        pushed = self.c.history.pushed_of(sid)
        running = st.config.version if st and st.config else None
        # a reverted version is never applied again: go above it (a merely refused one does not count, and a
        # version far ahead is someone's junk: the agent takes at most MAX_VERSION_STEP above what it runs)
        err = st.config.error if st and st.config else None
        err_v = err.version if err and err.version and "revert" in err.message.lower() else 0
        if err_v > (running or 0) + MAX_VERSION_STEP // 2:
            err_v = 0
        version = max(running or 0, pushed[0] if pushed else 0, err_v) + 1
        if running is None:
            prev_overlay = None
        elif running == 0:
            prev_overlay = {}
        else:
            prev_overlay = pushed[1] if pushed and pushed[0] == running else None
        step = Step(sid, version, overlay, pushed_before=pushed)
        if st is not None and st.health is not None:
            step.before_faults = {p.name for p in st.health.printers if p.state in FAULTS}
        step.before_failed = st.failed_results if st else 0
        self.c.history.step(self.push_id, sid, running, prev_overlay, version, overlay)
        with self.c.state.lock:
            self.c.state.pushed[sid] = version
        step.info = self.c.send_config(sid, version, overlay)
        self.steps[sid] = step
        return step

    def _set(self, step: Step, outcome: str, detail: str = "") -> None:
        step.outcome, step.detail = outcome, detail
        self.c.history.outcome(self.push_id, step.store, outcome, detail)

    def _answer(self, step: Step) -> Optional[str]:
        """None while waiting; 'applied' or a failure text once the store has answered."""
        st = self._store(step.store)
        if st is None or st.config is None:
            return None
        cs = st.config
        if cs.error is not None and cs.error.version == step.version:
            if cs.version == step.version:
                return None
            return ("reverted: " if "revert" in cs.error.message else "rejected: ") + cs.error.message
        if cs.version == step.version and cs.error is None:
            return "applied"
        if cs.version > step.version:
            return f"runs v{cs.version}, newer than v{step.version}: someone else pushed meanwhile"
        return None

    def _degraded(self, step: Step) -> Optional[str]:
        st = self._store(step.store)
        if st is None:
            return "gone from the picture"
        if st.status != "online":
            return f"agent {st.status} during the soak"
        if st.config is not None and st.config.version != step.version:
            why = st.config.error.message if st.config.error else ""
            return f"config went from v{step.version} to v{st.config.version}" + (f": {why}" if why else "")
        if st.health is not None:
            new = sorted({p.name + " " + p.state for p in st.health.printers if p.state in FAULTS and p.name not in step.before_faults})
            if new:
                return "printer fault after the change: " + ", ".join(new)
        if st.failed_results > step.before_failed:
            return f"{st.failed_results - step.before_failed} failed order result(s) after the change"
        return None

    def _batch(self, batch: list[str]) -> None:
        live: list[Step] = []
        sent = [(self._store(sid), self._send(sid)) for sid in batch]
        refused = [(step, self.c.link.rejected(step.info)) for _, step in sent]
        for step, why in refused:
            if why:  # never reached its store: what HQ pushed to it is as before
                self.c.history.unpush(step.store, step.pushed_before)
                with self.c.state.lock:
                    if step.pushed_before:
                        self.c.state.pushed[step.store] = step.pushed_before[0]
                    else:
                        self.c.state.pushed.pop(step.store, None)
        for step, why in refused:
            if why:
                self._set(step, "failed", why)
                raise Halted(step.store, why)
        for st, step in sent:
            sid = step.store
            if st is None or st.status != "online":
                self._set(step, "pending", f"agent {st.status if st else 'never seen'}: retained config/set waits for it")
                self._say(f"{sid}: {step.detail}", store=sid)
            else:
                live.append(step)
        deadline = time.monotonic() + self.answer_s
        waiting = list(live)
        while waiting:
            for step in list(waiting):
                a = self._answer(step)
                if a is None:
                    continue
                waiting.remove(step)
                if a != "applied":
                    self._set(step, "rejected" if a.startswith("rejected") else "failed", a)
                    raise Halted(step.store, a)
                cs = self._store(step.store).config
                self._set(step, "applied", f"v{step.version} sha256 {cs.sha256[:12]}")
                self._say(f"{step.store}: v{step.version} applied (sha256 {cs.sha256[:12]})", store=step.store)
            if waiting and time.monotonic() > deadline:
                step = waiting[0]
                self._set(step, "no answer", f"no config/state with v{step.version} within {self.answer_s:g} s")
                raise Halted(step.store, step.detail)
            if waiting:
                time.sleep(self.poll_s)
        end = time.monotonic() + self.soak
        while True:
            for step in live:
                why = self._degraded(step)
                if why:
                    self._set(step, "degraded", why)
                    raise Halted(step.store, why)
            if time.monotonic() >= end:
                break
            time.sleep(min(self.poll_s * 5, max(0.0, end - time.monotonic())) or self.poll_s)
        for step in live:
            self._set(step, "good", step.detail)


def rollback_plan(history: Any, push_id: Optional[int] = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:  # noqa: ANN401
    """(the push, overlays to send back per store, stores that cannot be rolled back and why)."""
    push = history.push(push_id) if push_id else history.push(kind="push")
    if push is None:
        raise ValueError("no push in the history")
    overlays: dict[str, dict[str, Any]] = {}
    cannot: list[str] = []
    for s in push["steps"]:
        if s["prev_overlay"] is not None:
            overlays[s["store"]] = s["prev_overlay"]
        elif s["prev_version"] is None:
            cannot.append(f"{s['store']}: its config/state was never seen, so what it ran before is unknown")
        else:
            cannot.append(f"{s['store']}: ran v{s['prev_version']}, which this console did not push (its overlay is unknown)")
    return push, overlays, cannot
