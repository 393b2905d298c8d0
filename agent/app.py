"""The composition root: builds the drivers and wires journal, MQTT, intake and print workers.

No module-level state: several agents can run in one process (tests, fleet
simulation).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from datetime import date, datetime
from pathlib import Path
from typing import Callable, Optional

from drivers.audio import AudioError
from drivers.escpos_proto import PrinterStatus
from drivers.printers import Printer

from . import __version__
from .alerts import Alert, AlertBook
from .annunciator import Annunciator, SoundSettings, build_hardware
from .commands import Commands
from .config import Config
from .control import SOCKET_NAME, ControlServer
from .faults import FAULT_CODES, PrinterFaults, describe
from .followups import FollowupSchedule, Followups
from .housekeeping import Housekeeper
from .intake import OrderIntake
from .journal import Job, Journal
from .messages import OrderEvent, ParsedEvents
from .mqtt import Inbound, MqttLink, MqttSettings
from .notify import Notifier, Webhook, md_text
from .outbox import INTERNAL_PREFIX, Outbox
from .printerfacts import PrinterFacts
from .printing import Inflight, PrintWorker, build_printers
from .profiles import choose
from .remote import RemoteConfig
from .requests import RequestDesk
from .rules import CLOSING_EVENTS, alert_code, effective_rules
from .stats import ReportSchedule, Stats, period
from .tickets import TicketRenderer
from .voice import facts_of, make_voice
from .timers import LocalTimers, TimerSettings, context_json
from .topics import Topics

log = logging.getLogger(__name__)

JOURNAL_ALERT = "agent:journal"
# At start, `online` waits this long at most for the printers' first status (issue 17: start ->
# subscribed stays well under 1 s; a printer answers a status query in milliseconds).
WARM_PRINTER_WAIT_S = 0.5




class Agent:
    def __init__(
        self,
        cfg: Config,
        *,
        printers: Optional[dict[str, Printer]] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.remote = RemoteConfig(cfg, clock)  # the info department's overlay, kept in state_dir
        cfg = self.remote.effective(boot=True)
        self.cfg = cfg
        self.clock = clock
        self.started_at = clock()
        self.started_mono = time.monotonic()
        self.restart_requested: Optional[str] = None  # why the supervisor should restart this agent
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.store_id)
        state = Path(cfg.state_dir)
        if not (state / "journal.sqlite3").exists():  # issue 18, finding 14: a deleted state_dir is not silent
            log.warning("no journal in %s%s: a new journal starts. Expected at a first start; otherwise the history "
                        "is gone: queued tickets, open alerts, and the ids of orders already printed (an order HQ sends "
                        "again may print again)", state, "" if state.exists() else " (the directory did not exist)")
        state.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._journal_failing = False
        self.journal = Journal(state / "journal.sqlite3", max_rejected_bytes=cfg.intake.max_payload_bytes,
                               dedupe_days=cfg.journal.dedupe_days, on_commit=self._journal_commit)
        self.printers = printers if printers is not None else build_printers(cfg)
        self.link = MqttLink(
            MqttSettings(
                host=cfg.mqtt.host,
                port=cfg.mqtt.port,
                client_id=cfg.client_id,
                keepalive_s=cfg.mqtt.keepalive_s,
                username=cfg.mqtt.username,
                password=cfg.mqtt_password(),
                tls=cfg.mqtt.tls,
                ca_file=cfg.mqtt.ca_file,
                cert_file=cfg.mqtt.cert_file,
                key_file=cfg.mqtt.key_file,
                session_expiry_s=cfg.mqtt.session_expiry_s,
                receive_maximum=cfg.mqtt.receive_maximum,
                reconnect_min_s=cfg.mqtt.reconnect_min_s,
                reconnect_max_s=cfg.mqtt.reconnect_max_s,
            ),
            subscriptions=[self.topics.orders, self.topics.requests, self.topics.config_set],
            status_topic=self.topics.status,
            handler=self._on_inbound,
            on_connection=self._on_connection,
        )
        self.outbox = Outbox(self)
        self.faults = PrinterFaults(self)
        self.renderer = self._make_renderer(cfg)
        self.inflight = Inflight()  # claims: a job is never on two printers at once
        self.parsed = ParsedEvents()  # events as intake parsed them, for the print workers
        self.stats = Stats(self.journal, clock)  # the day's figures (reports, P/S/stats)
        self.followups = Followups(self.journal, cfg.followup, self.stats, clock)  # the follow-up call list
        self.voice = make_voice(cfg)  # spoken announcements after the chime
        self.printer_facts = PrinterFacts(self)  # probe, layout, paper left, speed
        self.workers = {p.name: self._make_worker(p) for p in cfg.printers}
        self.rules = effective_rules(cfg.rules)
        self.alerts = AlertBook(self.journal, self._publish_alert, clock, details_for=self.faults.escalation_details,
                                renotify_s=cfg.escalation.renotify_s)
        self.stats.already_counted(self.alerts.open_alerts())
        self.notifier = _notifier(cfg)
        self._gpio_devices: list = []
        self.annunciator = self._build_annunciator(cfg)
        self.intake = OrderIntake(
            self.journal,
            max_payload_bytes=cfg.intake.max_payload_bytes,
            plan=self._plan,
            on_accepted=self._on_accepted,
            publish_result=self.outbox.publish,
            wake=self._wake_all,
            on_store_failure=self._on_store_failure,
            ready=self._printer_ready,
            clock=clock,
            parsed=self.parsed,
        )
        t = cfg.timers
        self.timers = LocalTimers(self.journal, TimerSettings(t.prep_before_s, t.unshipped_after_s, t.summary_every_s),
                                  print_internal=self.print_internal, on_unshipped=self._on_unshipped, clock=clock)
        self.commands = Commands(self)
        self.desk = RequestDesk(self)
        self.control = ControlServer(state / SOCKET_NAME, lambda command, args: self.commands.run(command, args, local=True))
        self.housekeeper = Housekeeper(self)

    def _make_renderer(self, cfg: Config) -> TicketRenderer:
        return TicketRenderer(
            store_name=cfg.store.name,
            store_phone=cfg.store.phone,
            texts=cfg.texts,
            template_dir=cfg.templates.dir or None,
            template_overrides=cfg.templates.custom or None,
            on_fallback=self._on_template_fallback,
        )

    def _make_worker(self, p) -> PrintWorker:  # noqa: ANN001 - any printer config
        w = PrintWorker(
            self.printers[p.name],
            columns=p.columns,
            describe={"name": p.name, "connection": describe(p), "paper_width_mm": p.paper_width_mm},
            render_mode=p.render,
            qr_mode=p.qr,
            journal=self.journal,
            renderer=self.renderer,
            on_done=self.outbox.on_done,
            on_status=self._on_printer_status,
            on_printed=self._on_printed,
            on_uncertain=self.printer_facts.on_uncertain,
            retry_s=self.cfg.print.retry_s,
            poll_s=self.cfg.health.printer_poll_s,
            max_attempts=self.cfg.print.max_attempts,
            clock=self.clock,
            takeover=self._takeover if p.role == "backup" else (lambda: ()),
            inflight=self.inflight,
            parsed=self.parsed,
        )
        self.printer_facts.attach(p, w)
        return w

    def _on_printed(self, name: str, mm: float, job: Job) -> None:
        self.printer_facts.on_printed(name, mm)
        self.stats.on_printed(job)

    # -- reports (agent/stats.py)
    def report(self, kind: str = "day", day: Optional[date] = None) -> dict:
        """The figures of a period (``day``, ``week``, ``month``) around ``day`` (default: today)."""
        today = datetime.fromtimestamp(self.clock()).date()
        first, last = period(kind, day, today=today)
        due = None
        if last >= today:  # the follow-ups due now belong to a period that includes today
            try:
                due = len(self.followups.due())
            except Exception as e:  # noqa: BLE001 - the figures still come
                log.warning("cannot list the follow-ups due: %s", e)
        return {"period": kind, **self.stats.report(first, last, due_followups=due, open_faults=self._open_faults())}

    def _open_faults(self) -> list[tuple[str, float]]:
        """(kind, since) of the printer faults open now: their minutes so far count in the figures."""
        return [(a.code.split(".", 1)[1], a.since) for a in self.alerts.open_alerts() if a.code in FAULT_CODES]

    def speak(self, template: str, facts: dict, done: Optional[Future] = None) -> str:
        """Say a phrase after the chime queued before it (agent/voice.py); never waits for it."""
        if not self.cfg.voice.enabled or not template:
            return ""
        voice = self.voice
        phrase = voice.phrase(template, facts)
        muted = self.annunciator.mute_reason()
        if not muted:
            log.info("voice: %s", phrase)
        else:  # nothing is said (sound off, no device, silenced, quiet hours): not in the store's log at every order
            log.debug("voice (%s): %s", muted, phrase)

        def make() -> Path:
            try:
                return voice.wav(template, facts)
            except OSError as e:  # the cache directory: full card, permissions
                raise AudioError(f"voice cache {voice.cache}: {e.strerror or e}") from e

        self.annunciator.speak(phrase, make, done)
        return phrase

    def print_followups(self, orders: list[dict]) -> None:
        self.print_internal(f"followups-{self.clock():.6f}", "followups", {"orders": orders})

    def followup_schedule(self) -> FollowupSchedule:
        return FollowupSchedule(self.journal, self.cfg.followup.print_at, self.print_followups, self.followups, self.clock)

    def print_report(self, kind: str, first: date, last: date) -> None:
        body = {"period": kind, **self.stats.report(first, last, open_faults=self._open_faults())}
        self.print_internal(f"report-{kind}-{first}-{self.clock():.6f}", "report", {"report": body})

    def report_schedule(self) -> ReportSchedule:
        r = self.cfg.report
        return ReportSchedule(self.journal, daily_at=r.daily_at, weekly_on=r.weekly_on, monthly=r.monthly,
                              print_report=self.print_report, clock=self.clock)

    def _on_printer_status(self, name: str, st: PrinterStatus) -> None:
        self.printer_facts.on_status(name, st)
        self.faults.on_status(name, st)

    def _build_annunciator(self, cfg: Config) -> Annunciator:
        hw = build_hardware(cfg, on_press=self.acknowledge, on_hold=self.test_print)
        self._gpio_devices, self.pin_factory = hw.devices, hw.pin_factory
        s = cfg.sound
        return Annunciator(self.alerts, chime=hw.chime, settings=SoundSettings(s.enabled, s.volume, s.quiet_hours, s.quiet_volume),
                           exception_led=hw.exception_led, status_led=hw.status_led,
                           link_up=lambda: self.link.connected, clock=self.clock)

    # -- wiring
    def _default_printer(self) -> str:
        for p in self.cfg.printers:
            if p.role == "primary":
                return p.name
        return self.cfg.printers[0].name

    def _takeover(self) -> tuple[str, ...]:
        """For a backup printer: every primary, while every primary is faulted; else nothing."""
        workers = self.workers
        primaries = [workers[p.name] for p in self.cfg.printers if p.role == "primary" and p.name in workers]
        if primaries and all(w.status.error or (not w.status.printable and w.printer.queryable and w.status.state != "unknown")
                                  for w in primaries):
            return tuple(w.name for w in primaries)
        return ()

    def adopt_orphans(self) -> None:
        """Open jobs for printers no longer configured move to the default printer."""
        names = [p.name for p in self.cfg.printers]
        if self.journal.orphaned(names):
            moved = self.journal.reassign_orphans(names, self._default_printer(), now=self.clock())
            log.warning("%d unfinished job(s) were for printers no longer configured: moved to %s", moved, self._default_printer())

    def _printer_ready(self, name: str) -> bool:
        w = self.workers.get(name)
        return w is not None and w.ready()

    def _plan(self, event_type: str) -> list[tuple[str, str]]:
        rule = self.rules[event_type]
        printer = rule.printer or self._default_printer()
        return [(doc, printer) for _ in range(rule.copies) for doc in rule.documents]

    def _on_accepted(self, ev: OrderEvent) -> None:
        self.stats.on_accepted(ev)
        rule = self.rules[ev.type]
        self.annunciator.request(rule.sound)
        if rule.voice and rule.sound != "none":
            self.speak(rule.voice, facts_of(ev))
        keep = None
        if rule.ack:
            keep = f"order:{ev.order.id}:{ev.type}"
            facts = ", ".join(f"{k}={v}" for k, v in ev.detail.items() if isinstance(v, (str, int, float)))
            self.alerts.raise_(
                keep, alert_code(ev.type), f"{self.renderer.texts.get(ev.type.replace('.', '_') + '_title', ev.type)}: {ev.order.id}" + (f" ({facts})" if facts else ""),
                severity=rule.severity, order_id=ev.order.id, needs_ack=True, sound=rule.sound,
                repeat_s=rule.repeat_s, escalate_after_s=rule.escalate_after_s,
            )
        if ev.type in CLOSING_EVENTS:
            self.alerts.clear_order(ev.order.id, keep=keep)

    def _publish_alert(self, alert: Alert) -> None:
        self.annunciator.poke()  # the LEDs follow the alerts at once
        self.stats.on_alert(alert)
        self.link.publish(self.topics.alerts, alert.payload())
        if alert.audience == "infodept" or (alert.state == "cleared" and alert.details.get("escalated")):
            title = f"[{self.cfg.store_id}] {alert.code} {alert.state}"
            lines = [f"### {title}", f"- 门店: {md_text(self.cfg.store.name)} {md_text(self.cfg.store.phone)}",
                     f"- {md_text(alert.message)}"]
            lines += [f"- {md_text(k)}: {md_text(v)}" for k, v in alert.details.items()]
            self.notifier.send(title, "\n".join(lines))

    def acknowledge(self, alert_id: Optional[str] = None) -> list[Alert]:
        """Button, CLI and the ``ack`` request: acknowledge one or all open alerts; stops repeats."""
        return self.alerts.acknowledge(alert_id)

    def test_print(self, printer: Optional[str] = None) -> None:
        """Long press / ``test_print``: queue a test page (printed by that printer's worker)."""
        name = printer or self._default_printer()
        log.info("test page requested for %s", name)
        self.print_internal(f"test-page-{self.clock():.6f}", "test_page", {}, name)

    def print_internal(self, key: str, template: str, context: dict, printer: Optional[str] = None) -> None:
        """Queue an agent-made ticket (test page, prep reminder, summary) through the journal."""
        self.journal.record_event(f"{INTERNAL_PREFIX}{key}", None, f"agent.{template}", context_json(context),
                                  [(template, printer or self._default_printer())], now=self.clock())
        self._wake_all()

    def reprint(self, order_id: str) -> list[str]:
        """``reprint``: the order's receipt and warm-tip card again, marked 补打; [] when unknown."""
        payload = self.journal.order_payload(order_id)
        if payload is None:
            return []
        printer = self._default_printer()
        key = f"{INTERNAL_PREFIX}reprint-{order_id}-{self.clock():.6f}"
        docs = [(d, printer) for d in self.rules["order.created"].documents]
        self.journal.record_event(key, order_id, "agent.reprint", payload, docs, reprint=True, now=self.clock())
        self._wake_all()
        reprinted = {d for d, _ in docs}
        for x in self.alerts.open_alerts():  # a person looked and chose to reprint: those questions are answered
            if x.code == "printer.uncertain" and x.order_id == order_id and x.id.rsplit(":", 1)[-1] in reprinted:
                self.alerts.clear(x.id, f"已补打 {order_id}")
        return [d for d, _ in docs]

    def _on_unshipped(self, orders: list[dict]) -> None:
        self.annunciator.request("exception")
        ids = ", ".join(f"#{o['seq']} {o['id']}" for o in orders[:5])
        self.alerts.raise_("timer:unshipped", "order.unshipped", f"{len(orders)} 单超时未出库: {ids}",
                           severity="warning", needs_ack=True, sound="exception")

    def _wake_all(self) -> None:
        for w in self.workers.values():
            w.wake()

    def _on_inbound(self, msg: Inbound) -> None:
        if msg.topic == self.topics.orders:
            self.intake.handle(msg.payload, lambda: self.link.ack(msg))
            return
        if msg.topic.startswith(self.topics.request("")) or msg.topic == self.topics.config_set:
            self.desk.offer(msg)
        else:
            log.warning("message on unexpected topic %s ignored", msg.topic)
            self.link.ack(msg)

    def _on_template_fallback(self, name: str, error: str) -> None:
        # the order still prints (built-in template); whoever supplied the template must hear of it
        log.error("template %s failed, printed with the built-in one: %s", name, error)
        self.alerts.raise_(f"agent:template:{name}", "agent.template_failed",
                           f"模板 {name} 出错,已用内置模板打印: {error}"[:300], severity="warning",
                           needs_ack=False, sound="none", escalate_after_s=1)

    def _on_store_failure(self, error: str) -> None:
        # not acked: have the broker redeliver after a pause (disk full, I/O error)
        self.link.redeliver_later(self.cfg.intake.redeliver_s)

    def _journal_commit(self, error: Optional[str]) -> None:
        """Every failed journal commit (writer thread) raises agent.journal_failed; an order stored again clears it."""
        if error is not None and not self._journal_failing:
            self._journal_failing = True
            self.alerts.raise_(JOURNAL_ALERT, "agent.journal_failed",
                               f"本地存储写入失败,新订单暂存在服务器,未丢失: {error}"[:300], severity="critical",
                               needs_ack=False, sound="device_fault", escalate_after_s=1)

    def journal_ok(self) -> None:
        if self._journal_failing:
            self._journal_failing = False
            self.alerts.clear(JOURNAL_ALERT, "本地存储已恢复")

    def _on_connection(self, up: bool) -> None:
        self.annunciator.poke()  # the broker link's LED follows at once
        if up:
            self.desk.publish_config_state()
            self.outbox.on_connection()

    # -- lifecycle
    def start(self) -> None:
        log.info("store-agent %s starting for store %s (state in %s)", __version__, self.cfg.store_id, self.cfg.state_dir)
        self.adopt_orphans()
        open_jobs = self.journal.open_jobs()
        if open_jobs:
            log.info("resuming %d unfinished print job(s)", len(open_jobs))
        self.housekeeper.prune()
        for w in self.workers.values():
            w.start()  # each connects to its printer and asks its status while the rest starts
        self.renderer.warm(self._formats())
        self.annunciator.start()
        self.notifier.start()
        try:
            self.control.start()
        except OSError as e:  # e.g. a state_dir path too long for a Unix socket
            log.error("control socket unavailable (%s): the CLI cannot reach this agent", e)
        self.desk.start()
        self._await_printers(WARM_PRINTER_WAIT_S)
        self.link.start()  # `online` follows the subscription: the first order finds all of the above done
        self.housekeeper.start()

    def _formats(self, cfg: Optional[Config] = None) -> set[tuple[int, str, str]]:
        """(columns, render, qr) of each printer as its profile and probe lay it out: what the warm-up
        renders a sample order for."""
        outs = [choose(p, self.printer_facts.caps(p.name)) for p in (cfg or self.cfg).printers]
        return {(o.columns, o.render, o.qr) for o in outs}

    def _await_printers(self, budget_s: float) -> None:
        """Warm start (issue 17): wait, at most ``budget_s``, for each printer's first status answer
        and for it to be settled (``Printer.settled``: a restart checks the remembered ids, a new
        install probes once; the worker does either at its first idle moment), so the first order
        finds the printer's state known and nothing left to ask before its bytes (a printer that is down
        is settled only once it can print: its known state ends the wait; and an idle, ready
        printer lets intake arm its jobs in the order's own commit). A printer that does not answer
        in time is left to its worker (its state shows in health once known); the subscription does
        not wait for it."""
        deadline = time.monotonic() + budget_s
        waiting = [w for w in self.workers.values() if w.printer.queryable]
        while waiting and time.monotonic() < deadline:
            waiting = [w for w in waiting if w.status.state == "unknown"  # a printer that cannot print now is
                       or (w.status.printable and not getattr(w.printer, "settled", True))]  # not probed: no wait
            if waiting:
                time.sleep(0.005)
        if waiting:
            log.info("printer(s) %s not answered or not identified yet after %.1f s: subscribing anyway", ", ".join(w.name for w in waiting), budget_s)

    def apply_live(self, cfg: Config) -> None:
        """Swap in a config that needs no restart; queued jobs stay in the journal and print afterwards."""
        try:
            self._apply_live(cfg)
        except Exception:  # noqa: BLE001 - the rest of the agent keeps running on what was swapped
            log.exception("applying the new config failed part-way")

    def _apply_live(self, cfg: Config) -> None:
        old, self.cfg = self.cfg, cfg
        old_renderer, self.renderer = self.renderer, self._make_renderer(cfg)
        self.voice = make_voice(cfg)
        self.followups.settings = cfg.followup
        self.renderer.warm(self._formats(cfg))
        for a in self.alerts.open_alerts():
            if a.code == "agent.template_failed":  # new templates: a failure will be raised again if it recurs
                self.alerts.clear(a.id, "模板已更新")
        self.rules = effective_rules(cfg.rules)
        t = cfg.timers
        self.timers.settings = TimerSettings(t.prep_before_s, t.unshipped_after_s, t.summary_every_s)
        self.alerts.renotify_s = cfg.escalation.renotify_s
        if old.escalation.notifiers != cfg.escalation.notifiers:
            self.notifier.stop()
            self.notifier = _notifier(cfg)
            self.notifier.start()
        self.intake.max_payload_bytes = self.journal.max_rejected_bytes = cfg.intake.max_payload_bytes
        s = cfg.sound
        self.annunciator.settings = SoundSettings(s.enabled, s.volume, s.quiet_hours, s.quiet_volume)
        if old.printers != cfg.printers:
            self._reopen_printers()
        else:
            for w in self.workers.values():
                w.renderer, w.retry_s, w.poll_s = self.renderer, cfg.print.retry_s, cfg.health.printer_poll_s
                w.max_attempts = cfg.print.max_attempts
            self._wake_all()
        old_renderer.close()  # its template process, if it had one
        self.housekeeper.publish_health(force=True)

    def _reopen_printers(self) -> None:
        old = self.workers
        for w in old.values():
            w.stop()  # an attempt under way finishes (or times out) first; its job stays claimed meanwhile
        self.printers = build_printers(self.cfg)
        self.workers = {p.name: self._make_worker(p) for p in self.cfg.printers}
        try:
            for a in self.alerts.open_alerts():
                if a.printer and a.printer not in self.workers:
                    self.alerts.clear(a.id, f"打印机 {a.printer} 已从配置中移除")
            for name in set(old) - set(self.workers):
                self.journal.unarm(name)  # armed for a removed printer: nothing of them was sent
            self.adopt_orphans()
        except Exception:  # noqa: BLE001 - e.g. a full disk: orphans move at the next start; printing goes on
            log.exception("cannot move the jobs of removed printers now")
        finally:
            for w in self.workers.values():
                w.start()
        log.info("printers reopened: %s", ", ".join(f"{p.name} ({describe(p)})" for p in self.cfg.printers))

    def stop(self, final: bool = True) -> None:
        """``final=False``: an in-process restart follows (systemd is not told the service is stopping)."""
        log.info("stopping" if final else "stopping for an in-process restart")
        self.desk.stop()
        self.control.stop()
        for w in self.workers.values():
            w.stop()  # after the job under way; what was armed and not sent goes back to queued
        try:
            self.journal.flush()  # events waiting for their commit: stored and acknowledged before we go
        except Exception:  # noqa: BLE001 - not acked: the broker sends them again
            log.exception("the last commit before stopping failed")
        self.link.stop()
        self.annunciator.stop()
        self.notifier.stop()
        for d in self._gpio_devices:
            d.close()
        self.housekeeper.stop(final)
        self.outbox.flush_reported()
        self.journal.close()

def _notifier(cfg: Config) -> Notifier:
    return Notifier([Webhook(n.kind, n.url, n.secret) for n in cfg.escalation.notifiers],
                    allowed_hosts=cfg.escalation.webhook_hosts)
