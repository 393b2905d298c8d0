"""The commands of the contract, one implementation for MQTT requests and the local CLI.

Every reply has one shape: ``{"transaction", "status": "ok"|"error", "data", "error"}``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import __version__

if TYPE_CHECKING:
    from .app import Agent

log = logging.getLogger(__name__)

# Agent-made tickets waiting to print (test pages, reprints, timer slips), at most, before a test_print
# or reprint is refused: orders never queue behind more than these (issue 19, finding 6).
MAX_PENDING_INTERNAL = 4
INTERNAL_TYPE = "agent."  # Job.type of agent-made tickets: agent.test_page, agent.reprint, ...


class CommandError(Exception):
    pass


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ReprintArgs(_Args):
    order_id: str = Field(min_length=1, max_length=64)


class TestPrintArgs(_Args):
    printer: Optional[str] = None


class ChimeArgs(_Args):
    sound: str


class AckArgs(_Args):
    alert_id: Optional[str] = None


class SilenceArgs(_Args):
    minutes: float = Field(ge=0, le=720, description="0 ends a silence")


class NoArgs(_Args):
    pass


class LedArgs(_Args):
    step_s: float = Field(1.5, gt=0, le=10)
    pattern: Optional[str] = Field(None, description="show only this pattern for step_s (the CLI says each step)")


class ReportArgs(_Args):
    period: Literal["day", "week", "month"] = "day"
    day: Optional[str] = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$", description="YYYY-MM-DD (default: today)")
    print: bool = False


class FollowupDoneArgs(_Args):
    order_id: str = Field(min_length=1, max_length=64)
    outcome: Literal["reached", "no_answer", "declined"] = "reached"


ARGS: dict[str, type[_Args]] = {
    "reprint": ReprintArgs,
    "test_print": TestPrintArgs,
    "chime": ChimeArgs,
    "ack": AckArgs,
    "silence": SilenceArgs,
    "diagnose": NoArgs,
    "queue": NoArgs,
    "status": NoArgs,
    "report": ReportArgs,
    "followups": NoArgs,
    "followup_done": FollowupDoneArgs,
}
class SayArgs(_Args):
    text: str = Field(min_length=1, max_length=120)


class PrinterArgs(_Args):
    printer: Optional[str] = Field(None, max_length=32)


# local (CLI) only: not part of the MQTT command set of the contract
LOCAL_ARGS: dict[str, type[_Args]] = {"led": LedArgs, "probe": PrinterArgs, "paper_loaded": PrinterArgs, "say": SayArgs}


def local_iso(epoch: float) -> Optional[str]:
    """An epoch as ISO 8601 with the machine's UTC offset (what a person reads), None for 0."""
    from datetime import datetime  # noqa: PLC0415

    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds") if epoch else None


def reply(transaction: Any, data: Optional[dict] = None, error: Optional[str] = None) -> dict:
    return {"transaction": transaction, "status": "error" if error else "ok", "data": data or {}, "error": error}


class Commands:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self._queueing = threading.Lock()  # MQTT requests and CLI clients: check-then-queue is atomic

    def _room_for(self, n: int) -> list:
        """The open jobs; CommandError when ``n`` more agent-made tickets would pass MAX_PENDING_INTERNAL
        (one is always allowed when none waits)."""
        jobs = self.agent.journal.open_jobs()
        internal = [j for j in jobs if j.type.startswith(INTERNAL_TYPE)]
        if internal and len(internal) + n > MAX_PENDING_INTERNAL:
            raise CommandError(f"busy: {len(internal)} agent-made tickets are waiting to print "
                               f"(at most {MAX_PENDING_INTERNAL}); try again when they are out")
        return jobs

    def run(self, command: str, args: Any, transaction: Any = None, *, local: bool = False) -> dict:
        """Validate and run; never raises (bad input and failures are an error reply)."""
        model = ARGS.get(command) or (LOCAL_ARGS.get(command) if local else None)
        if model is None:
            return reply(transaction, error=f"unknown command {command!r}; one of {', '.join(sorted(ARGS))}")
        try:
            parsed = model.model_validate(args if args is not None else {})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "args"
            return reply(transaction, error=f"bad arguments for {command}: {where}: {first['msg']}")
        try:
            fn: Callable[[Any], dict] = getattr(self, f"_{command}")
            return reply(transaction, fn(parsed))
        except CommandError as e:
            return reply(transaction, error=str(e))
        except Exception as e:  # noqa: BLE001 - a failing command is an answer, not a crash
            log.exception("command %s failed", command)
            return reply(transaction, error=f"{command} failed: {type(e).__name__}: {e}")

    # -- the commands
    def _reprint(self, a: ReprintArgs) -> dict:
        with self._queueing:
            jobs = self._room_for(len(self.agent.rules["order.created"].documents))
            if any(j.type == "agent.reprint" and j.order_id == a.order_id for j in jobs):
                raise CommandError(f"a reprint of order {a.order_id} is already waiting to print")
            ids = self.agent.reprint(a.order_id)
        if not ids:
            raise CommandError(f"no order {a.order_id} in the journal")
        printer = self.agent._default_printer()
        return {"order_id": a.order_id, "jobs": ids, "printer": printer, **self._printer_state(printer)}

    def _test_print(self, a: TestPrintArgs) -> dict:
        names = [p.name for p in self.agent.cfg.printers]
        if a.printer is not None and a.printer not in names:
            raise CommandError(f"no printer named {a.printer!r}; configured: {', '.join(names)}")
        name = a.printer or self.agent._default_printer()
        with self._queueing:
            jobs = self._room_for(1)
            if any(j.type == "agent.test_page" and j.printer == name for j in jobs):
                raise CommandError(f"a test page for {name} is already waiting to print")
            self.agent.test_print(a.printer)
        return {"printer": name, **self._printer_state(name)}

    def _printer_state(self, name: str) -> dict:
        """The printer's state now, so that "queued" never hides a printer that cannot print (issue 18, finding 12)."""
        w = self.agent.workers.get(name)
        if w is None:
            return {"state": "unknown", "detail": "", "waiting": 0}
        waiting = self.agent.journal.open_job_counts().get(name, 0)
        return {"state": w.status.state, "detail": w.status.detail, "waiting": waiting}

    def _chime(self, a: ChimeArgs) -> dict:
        from drivers.audio import SOUNDS  # noqa: PLC0415

        if a.sound not in SOUNDS:
            raise CommandError(f"unknown sound {a.sound!r}; one of {', '.join(SOUNDS)}")
        ann = self.agent.annunciator
        outcome = ann.play_now(a.sound)
        if outcome.startswith("muted: "):
            raise CommandError(f"{a.sound} not played: {outcome[len('muted: '):]}")
        if outcome.startswith("error: "):
            raise CommandError(f"{a.sound} did not play: {outcome[len('error: '):]}; fix: plug in the speaker or USB "
                               "sound card, check sound.device and alsamixer (store-agent doctor)")
        return {"sound": a.sound, "played": outcome}

    def _say(self, a: SayArgs) -> dict:
        """Speak ``text`` through the agent's audio path and wait until it was heard (or say why not)."""
        from concurrent.futures import Future  # noqa: PLC0415

        from .voice import clean  # noqa: PLC0415

        text = clean(a.text).replace("{", "(").replace("}", ")")
        if not text:
            raise CommandError("nothing to say")
        done: Future = Future()
        ann = self.agent.annunciator
        voice = self.agent.voice
        ann.speak(text, lambda: voice.wav(text, {}), done)
        try:
            outcome = done.result(60)
        except Exception:  # noqa: BLE001
            raise CommandError("no end of the announcement within 60 s (the sound device hangs)") from None
        if outcome.startswith("muted: "):
            raise CommandError(f"not spoken: {outcome[len('muted: '):]}")
        if outcome.startswith("error: "):
            raise CommandError(f"not spoken: {outcome[len('error: '):]}")
        return {"text": text, "played": outcome}

    def _ack(self, a: AckArgs) -> dict:
        if a.alert_id is not None and self.agent.alerts.get(a.alert_id) is None:
            raise CommandError(f"no open alert {a.alert_id!r}")
        changed = self.agent.acknowledge(a.alert_id)
        return {"acknowledged": [x.id for x in changed]}

    def _silence(self, a: SilenceArgs) -> dict:
        self.agent.annunciator.silence(a.minutes)
        return {"silenced_until": local_iso(self.agent.annunciator.silenced_until) if a.minutes > 0 else None}

    def _led(self, a: LedArgs) -> dict:
        if self.agent.annunciator.exception_led is None and self.agent.annunciator.status_led is None:
            raise CommandError("no LEDs configured ([gpio] enabled = true)")
        from drivers.gpio import PATTERNS  # noqa: PLC0415

        if a.pattern is not None and a.pattern not in PATTERNS:
            raise CommandError(f"bad arguments for led: pattern: one of {', '.join(PATTERNS)}")
        return {"patterns": self.agent.annunciator.led_test(a.step_s, [a.pattern] if a.pattern else None)}

    def _printer_name(self, name: Optional[str]) -> str:
        names = [p.name for p in self.agent.cfg.printers]
        if name is None:
            return names[0]
        if name not in names:
            raise CommandError(f"no printer {name!r}; configured: {', '.join(names)}")
        return name

    def _probe(self, a: PrinterArgs) -> dict:
        """Ask the printer what it does now (through the agent's own connection: never a second one)."""
        from .profiles import choose, suggest  # noqa: PLC0415

        name = self._printer_name(a.printer)
        drv = self.agent.printers[name]
        p = next(p for p in self.agent.cfg.printers if p.name == name)
        if not hasattr(drv, "probe"):
            raise CommandError(f"printer {name} ({p.connection}) cannot be asked anything: it has no status channel")
        caps = drv.probe()
        profile, why = suggest(caps, p.paper_width_mm)
        return {"printer": name, "caps": caps, "suggested_profile": profile, "why": why,
                "output": choose(p, caps).as_dict(), **self.agent.printer_facts.view(name)}

    def _paper_loaded(self, a: PrinterArgs) -> dict:
        name = self._printer_name(a.printer)
        last_m = self.agent.printer_facts.loaded(name)
        return {"printer": name, "last_roll_m": round(last_m, 2), "paper": self.agent.printer_facts.forecast(name)}

    def _report(self, a: ReportArgs) -> dict:
        """The figures of a day, the 7 days ending with it, or its month; printed as a slip with ``print``."""
        from datetime import date  # noqa: PLC0415

        try:
            day = date.fromisoformat(a.day) if a.day else None
        except ValueError as e:
            raise CommandError(f"bad arguments for report: day: {e}") from None
        try:
            body = self.agent.report(a.period, day)
        except (OverflowError, ValueError):  # a week or month past the calendar's ends
            raise CommandError(f"bad arguments for report: day: {a.day} is out of range for a {a.period}") from None
        if a.print:
            with self._queueing:
                self._room_for(1)
                self.agent.print_report(a.period, date.fromisoformat(body["from_day"]), date.fromisoformat(body["to_day"]))
        return body

    def _followups(self, _: NoArgs) -> dict:
        due = self.agent.followups.due()
        s = self.agent.cfg.followup
        return {"due": due, "count": len(due), "after_h": s.after_h, "before_h": s.before_h}

    def _followup_done(self, a: FollowupDoneArgs) -> dict:
        from .followups import FollowupError  # noqa: PLC0415

        try:
            return self.agent.followups.record(a.order_id, a.outcome)
        except FollowupError as e:
            raise CommandError(str(e)) from None

    def _queue(self, _: NoArgs) -> dict:
        now = self.agent.clock()
        jobs = self.agent.journal.open_jobs()
        # each job's age (the journal's read connection; created_at is when the order was committed)
        created = dict(self.agent.journal._read(  # noqa: SLF001 - one column Job does not carry
            "SELECT id, created_at FROM jobs WHERE state IN ('queued','printing')"))
        return {"jobs": [{"job": j.id, "event_id": j.event_id, "order_id": j.order_id, "document": j.document,
                          "printer": j.printer, "state": j.state, "attempts": j.attempts, "reprint": j.reprint,
                          "age_s": round(now - created[j.id], 1) if j.id in created else None,
                          "printer_state": self._printer_state(j.printer)["state"]}
                         for j in jobs],
                "pending": len(jobs), "oldest_s": self.agent.journal.oldest_open_age(now)}

    def _status(self, _: NoArgs) -> dict:
        a = self.agent
        return {
            "store_id": a.cfg.store_id,
            "version": __version__,
            "uptime_s": int(a.clock() - a.started_at),
            "mqtt": {"connected": a.link.connected, "subscribed": a.link.subscribed,
                     "broker": f"{a.cfg.mqtt.host}:{a.cfg.mqtt.port}", "last_error": a.link.error_info()},
            "printers": [{"name": w.name, "state": w.status.state, "detail": w.status.detail,
                          "last_print_at": local_iso(w.last_print_at) if w.last_print_at else None,
                          **a.printer_facts.view(w.name)} for w in a.workers.values()],
            "audio": {"state": a.annunciator.audio_state, "error": a.annunciator.audio_error or None,
                      "since": local_iso(a.annunciator.audio_since),
                      "silenced": a.annunciator.silenced_until > a.clock(),
                      "silenced_until": local_iso(a.annunciator.silenced_until) if a.annunciator.silenced_until > a.clock() else None},
            "alerts": [{"id": x.id, "code": x.code, "state": x.state, "message": x.message} for x in a.alerts.open_alerts()],
            "queue": {"pending": sum(a.journal.open_job_counts().values()), "oldest_s": a.journal.oldest_open_age(a.clock())},
        }

    def _diagnose(self, _: NoArgs) -> dict:
        a = self.agent
        printers = []
        for p in a.cfg.printers:
            t0 = time.monotonic()
            st = a.printers[p.name].status()
            printers.append({"name": p.name, "state": st.state, "detail": st.detail, "answer_ms": round(1000 * (time.monotonic() - t0), 1),
                             **a.printer_facts.view(p.name)})
        disk = shutil.disk_usage(a.cfg.state_dir)
        return {
            **self._status(NoArgs()),
            "printers": printers,
            "disk": {"free_mb": disk.free // 2**20, "total_mb": disk.total // 2**20},
            "journal": {"bytes": a.journal.size_bytes(), "events": a.journal.counts()},
        }
