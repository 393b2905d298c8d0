"""The composition root: builds the drivers and wires journal, MQTT, intake and print workers.

No module-level state: several agents can run in one process (tests, fleet
simulation).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from drivers.printers import Printer, make_printer

from . import __version__
from .config import Config
from .intake import OrderIntake
from .journal import EventDone, Journal
from .messages import OrderResult
from .mqtt import Inbound, MqttLink, MqttSettings
from .alerts import Alert, AlertBook, iso
from .notify import Notifier, Webhook
from .commands import Commands
from .control import SOCKET_NAME, ControlServer
from .annunciator import Annunciator, SoundSettings
from .messages import Health, OrderEvent, PrinterHealth
from .printing import Inflight, PrintWorker
from .rules import CLOSING_EVENTS, alert_code, effective_rules
from .remote import RemoteConfig
from .requests import RequestDesk
from .timers import LocalTimers, TimerSettings, context_json
from .tickets import TicketRenderer
from .topics import Topics

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600
JOURNAL_ALERT = "agent:journal"
INTERNAL_PREFIX = "agent-"  # test pages and timer slips travel through the journal like orders, without results




def printer_settings(cfg: Config, index: int) -> dict:
    p = cfg.printers[index]
    settings = p.model_dump(exclude={"name", "connection", "paper_width_mm", "role", "render", "qr"})
    if p.connection in ("file", "virtual"):
        settings.pop("confirm", None)
    if p.connection == "virtual":
        settings["spool_dir"] = p.spool_dir or str(Path(cfg.state_dir) / "spool" / p.name)
        settings["columns"] = p.columns
    return settings


def build_printers(cfg: Config) -> dict[str, Printer]:
    return {p.name: make_printer(p.connection, p.name, **printer_settings(cfg, i)) for i, p in enumerate(cfg.printers)}


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
        state.mkdir(parents=True, exist_ok=True)
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
        self._outbox_flushed = False
        self._final = True
        self._reported: list[str] = []
        self._reported_lock = threading.Lock()
        self.renderer = self._make_renderer(cfg)
        self.inflight = Inflight()  # claims: a job is never on two printers at once
        self.workers = {p.name: self._make_worker(p) for p in cfg.printers}
        self.rules = effective_rules(cfg.rules)
        self.alerts = AlertBook(self.journal, self._publish_alert, clock, details_for=self._escalation_details,
                                renotify_s=cfg.escalation.renotify_s)
        self.notifier = Notifier([Webhook(n.kind, n.url, n.secret) for n in cfg.escalation.notifiers])
        self._fault_ok_since: dict[str, float] = {}
        self._gpio_devices: list = []
        self.annunciator = self._build_annunciator(cfg)
        self.intake = OrderIntake(
            self.journal,
            max_payload_bytes=cfg.intake.max_payload_bytes,
            plan=self._plan,
            on_accepted=self._on_accepted,
            publish_result=self._publish_result,
            wake=self._wake_all,
            on_store_failure=self._on_store_failure,
            ready=self._printer_ready,
            clock=clock,
        )
        t = cfg.timers
        self.timers = LocalTimers(self.journal, TimerSettings(t.prep_before_s, t.unshipped_after_s, t.summary_every_s),
                                  print_internal=self.print_internal, on_unshipped=self._on_unshipped, clock=clock)
        self._last_timers = 0.0
        self.commands = Commands(self)
        self.desk = RequestDesk(self)
        self.control = ControlServer(state / SOCKET_NAME, lambda command, args: self.commands.run(command, args, local=True))
        self._health_signature: tuple = ()
        self._health_sent = 0.0
        self._stop = threading.Event()
        self._last_prune = time.monotonic()
        self._housekeeper: Optional[threading.Thread] = None

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
        return PrintWorker(
            self.printers[p.name],
            columns=p.columns,
            describe={"name": p.name, "connection": _describe(p), "paper_width_mm": p.paper_width_mm},
            render_mode=p.render,
            qr_mode=p.qr,
            journal=self.journal,
            renderer=self.renderer,
            on_done=self._on_done,
            on_status=self._on_printer_status,
            retry_s=self.cfg.print.retry_s,
            poll_s=self.cfg.health.printer_poll_s,
            max_attempts=self.cfg.print.max_attempts,
            clock=self.clock,
            takeover=self._takeover if p.role == "backup" else (lambda: ()),
            inflight=self.inflight,
        )

    def _build_annunciator(self, cfg: Config) -> Annunciator:
        from drivers.audio import make_chime  # noqa: PLC0415

        exc_led = status_led = None
        if cfg.gpio.enabled:
            from drivers.gpio import AckButton, GpioError, Led, make_pin_factory  # noqa: PLC0415

            try:
                factory = make_pin_factory(cfg.gpio.pin_factory)
                if cfg.gpio.exception_led is not None:
                    exc_led = Led(cfg.gpio.exception_led, factory)
                if cfg.gpio.status_led is not None:
                    status_led = Led(cfg.gpio.status_led, factory)
                if cfg.gpio.button is not None:
                    self._gpio_devices.append(
                        AckButton(cfg.gpio.button, factory, on_press=self.acknowledge, on_hold=self.test_print, hold_s=cfg.gpio.hold_s)
                    )
                self._gpio_devices += [d for d in (exc_led, status_led) if d is not None]
                self.pin_factory = factory
            except GpioError as e:
                log.error("GPIO unavailable, running without LEDs and button: %s", e)
        chime = make_chime(cfg.sound.device) if cfg.sound.enabled else None
        s = cfg.sound
        return Annunciator(
            self.alerts,
            chime=chime,
            settings=SoundSettings(s.enabled, s.volume, s.quiet_hours, s.quiet_volume),
            exception_led=exc_led,
            status_led=status_led,
            link_up=lambda: self.link.connected,
            clock=self.clock,
        )

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
        if primaries and all(not w.status.printable and w.printer.queryable and w.status.state != "unknown" for w in primaries):
            return tuple(w.name for w in primaries)
        return ()

    def _printer_ready(self, name: str) -> bool:
        w = self.workers.get(name)
        return w is not None and w.ready()

    def _plan(self, event_type: str) -> list[tuple[str, str]]:
        rule = self.rules[event_type]
        printer = rule.printer or self._default_printer()
        return [(doc, printer) for _ in range(rule.copies) for doc in rule.documents]

    def _on_accepted(self, ev: OrderEvent) -> None:
        rule = self.rules[ev.type]
        self.annunciator.request(rule.sound)
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
        self.link.publish(self.topics.alerts, alert.payload())
        if alert.audience == "infodept" or (alert.state == "cleared" and alert.details.get("escalated")):
            title = f"[{self.cfg.store_id}] {alert.code} {alert.state}"
            lines = [f"### {title}", f"- 门店: {self.cfg.store.name} {self.cfg.store.phone}", f"- {alert.message}"]
            lines += [f"- {k}: {v}" for k, v in alert.details.items()]
            self.notifier.send(title, "\n".join(lines))

    # -- printer faults: store first, then the info department
    def _on_printer_status(self, name: str, st) -> None:  # noqa: ANN001 - drivers.escpos_proto.PrinterStatus
        now = self.clock()
        faulted = st.state not in ("ready", "paper_low", "unknown") or (st.state == "unknown" and self.printers[name].queryable)
        low_id = f"printer:{name}:paper_low"
        if st.state == "paper_low":
            self.alerts.raise_(low_id, "printer.paper_low", f"打印机 {name} 纸将用完,请备纸", severity="warning",
                               printer=name, needs_ack=False, sound="none")
        elif st.state == "ready" and self.alerts.get(low_id):
            self.alerts.clear(low_id, f"打印机 {name} 已换纸")
        open_faults = [a for a in self.alerts.open_alerts() if a.printer == name and a.code != "printer.paper_low"]
        if faulted:
            self._fault_ok_since.pop(name, None)
            aid = f"printer:{name}:{st.state}"
            if self.alerts.get(aid) is None:
                for a in open_faults:  # the cause changed (cover closed, now paper out): one open fault per printer
                    self.alerts.clear(a.id, f"打印机 {name}: {st.state}")
                self.annunciator.request("device_fault")
                self.alerts.raise_(aid, f"printer.{st.state}", f"打印机 {name}: {st.state} {st.detail}".strip(),
                                   severity="critical", printer=name, needs_ack=False, sound="device_fault",
                                   escalate_after_s=max(self.cfg.escalation.printer_fault_after_s, 1))
        elif open_faults:
            first_ok = self._fault_ok_since.setdefault(name, now)
            if now - first_ok >= self.cfg.health.clear_after_s:  # stable again: a loose cable gives one alert
                for a in open_faults:
                    self.alerts.clear(a.id, f"打印机 {name} 已恢复")
                self._fault_ok_since.pop(name, None)

    def _escalation_details(self, alert: Alert) -> dict:
        d: dict = {"store": self.cfg.store.name, "store_phone": self.cfg.store.phone, "escalated": True}
        w = self.workers.get(alert.printer or "")
        if w is not None:
            p = next(p for p in self.cfg.printers if p.name == alert.printer)
            d.update({
                "printer": p.name, "connection": _describe(p), "cause": f"{w.status.state} {w.status.detail}".strip(),
                "since": iso(alert.since), "last_good_print": iso(w.last_print_at) if w.last_print_at else None,
                "jobs_waiting": self.journal.open_job_counts().get(p.name, 0),
            })
        return d

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

    def _journal_ok(self) -> None:
        if self._journal_failing:
            self._journal_failing = False
            self.alerts.clear(JOURNAL_ALERT, "本地存储已恢复")

    def _publish_result(self, result: OrderResult) -> None:
        if result.status in ("queued", "rejected", "duplicate", "expired") or result.redelivered:  # intake stored it
            self._journal_ok()
        confirm = None
        if result.event_id and result.status in ("printed", "failed", "duplicate", "expired"):
            confirm = lambda: self._mark_reported(result.event_id)  # noqa: E731
        self.link.publish(self.topics.result, result.to_json(), on_delivered=confirm)

    def _mark_reported(self, event_id: str) -> None:
        with self._reported_lock:  # written in batches by housekeeping: no fsync on paho's thread
            self._reported.append(event_id)

    def _flush_reported(self) -> None:
        self.link.poll_delivered()
        with self._reported_lock:
            ids, self._reported = self._reported, []
        try:
            self.journal.mark_reported(ids)
        except Exception as e:  # noqa: BLE001 - at worst those results are sent again after a restart
            log.warning("cannot mark %d result(s) as delivered: %s", len(ids), e)

    def _on_connection(self, up: bool) -> None:
        if up:
            self.desk.publish_config_state()
        if up and not self._outbox_flushed:
            # final results the broker never confirmed before the last stop (at-least-once)
            self._outbox_flushed = True
            threading.Thread(target=self._flush_outbox, name="outbox", daemon=True).start()

    def _flush_outbox(self) -> None:
        try:
            pending = self.journal.unreported(limit=100_000)
        except Exception:  # noqa: BLE001
            log.exception("cannot read unreported results")
            return
        if pending:
            log.info("re-sending %d result(s) not confirmed before the last stop", len(pending))
        for done in pending:
            self._on_done(done, log_it=False)

    def _on_done(self, done: EventDone, log_it: bool = True) -> None:
        if done.event_id.startswith(INTERNAL_PREFIX):
            log.info("%s %s on %s", done.event_id, done.status, done.printer)
            self._mark_reported(done.event_id)
            return
        if log_it:
            log.info("event %s (order %s) %s: %s", done.event_id, done.order_id, done.status, ", ".join(done.documents))
        self._publish_result(
            OrderResult(
                event_id=done.event_id,
                order_id=done.order_id,
                status=done.status,
                at=datetime.fromtimestamp(self.clock(), timezone.utc),
                printer=done.printer,
                documents=done.documents,
                error=done.error,
                reprint=done.reprint,
            )
        )

    # -- lifecycle
    def start(self) -> None:
        log.info("store-agent %s starting for store %s (state in %s)", __version__, self.cfg.store_id, self.cfg.state_dir)
        moved = self.journal.reassign_orphans([p.name for p in self.cfg.printers], self._default_printer(), now=self.clock())
        if moved:
            log.warning("%d unfinished job(s) were for printers no longer configured: moved to %s", moved, self._default_printer())
        open_jobs = self.journal.open_jobs()
        if open_jobs:
            log.info("resuming %d unfinished print job(s)", len(open_jobs))
        self._prune()
        self.renderer.warm()
        for w in self.workers.values():
            w.start()
        self.annunciator.start()
        self.notifier.start()
        try:
            self.control.start()
        except OSError as e:  # e.g. a state_dir path too long for a Unix socket
            log.error("control socket unavailable (%s): the CLI cannot reach this agent", e)
        self.desk.start()
        self.link.start()
        self._housekeeper = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        self._housekeeper.start()

    def apply_live(self, cfg: Config) -> None:
        """Swap in a config that needs no restart; queued jobs stay in the journal and print afterwards."""
        try:
            self._apply_live(cfg)
        except Exception:  # noqa: BLE001 - the rest of the agent keeps running on what was swapped
            log.exception("applying the new config failed part-way")

    def _apply_live(self, cfg: Config) -> None:
        old, self.cfg = self.cfg, cfg
        self.renderer = self._make_renderer(cfg)
        self.renderer.warm()
        for a in self.alerts.open_alerts():
            if a.code == "agent.template_failed":  # new templates: a failure will be raised again if it recurs
                self.alerts.clear(a.id, "模板已更新")
        self.rules = effective_rules(cfg.rules)
        t = cfg.timers
        self.timers.settings = TimerSettings(t.prep_before_s, t.unshipped_after_s, t.summary_every_s)
        self.alerts.renotify_s = cfg.escalation.renotify_s
        if old.escalation.notifiers != cfg.escalation.notifiers:
            self.notifier.stop()
            self.notifier = Notifier([Webhook(n.kind, n.url, n.secret) for n in cfg.escalation.notifiers])
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
        self._publish_health(force=True)

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
            moved = self.journal.reassign_orphans(list(self.workers), self._default_printer(), now=self.clock())
            if moved:
                log.warning("%d job(s) of removed printers moved to %s", moved, self._default_printer())
        except Exception:  # noqa: BLE001 - e.g. a full disk: orphans move at the next start; printing goes on
            log.exception("cannot move the jobs of removed printers now")
        finally:
            for w in self.workers.values():
                w.start()
        log.info("printers reopened: %s", ", ".join(f"{p.name} ({_describe(p)})" for p in self.cfg.printers))

    def stop(self, final: bool = True) -> None:
        """``final=False``: an in-process restart follows (systemd is not told the service is stopping)."""
        log.info("stopping" if final else "stopping for an in-process restart")
        self._final = final
        self._stop.set()
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
        if self._housekeeper is not None:
            self._housekeeper.join(5)
        self._flush_reported()
        self.journal.close()

    def _prune(self) -> None:
        try:
            n = self.journal.prune(self.cfg.journal.keep_days, self.cfg.journal.max_mb * 1024 * 1024, now=self.clock())
            if n:
                log.info("journal: pruned %d old event(s)", n)
        except Exception:  # noqa: BLE001
            log.exception("journal pruning failed")

    def _housekeeping(self) -> None:
        notifier = _systemd_notifier()
        notifier("READY=1")
        self._last_prune = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                self._housekeeping_tick(notifier)
            except Exception:  # noqa: BLE001 - this thread feeds the watchdog: it must not die
                log.exception("housekeeping failed")
        if self._final:
            notifier("STOPPING=1")

    def health(self) -> Health:
        now = self.clock()
        utc = lambda ts: datetime.fromtimestamp(ts, timezone.utc) if ts else None  # noqa: E731
        waiting = self.journal.open_job_counts()
        printers = []
        workers = self.workers
        for p in self.cfg.printers:
            w = workers.get(p.name)
            if w is None:  # printers being reopened
                continue
            printers.append(PrinterHealth(
                name=p.name, role=p.role, state=w.status.state, since=utc(w.status_since), detail=w.status.detail,
                last_print_at=utc(w.last_print_at), queue=waiting.get(p.name, 0)))
        try:
            free_mb = shutil.disk_usage(self.cfg.state_dir).free // 2**20
        except OSError:
            free_mb = -1
        oldest = self.journal.oldest_open_age(now)
        return Health(
            store_id=self.cfg.store_id, at=utc(now),
            agent={"version": __version__, "uptime_s": int(now - self.started_at)},
            mqtt={"connected": self.link.connected},
            printers=printers,
            audio={"state": self.annunciator.audio_state},
            queue={"pending": sum(waiting.values()), "oldest_s": round(oldest, 1) if oldest is not None else None},
            alerts_open=len(self.alerts.open_alerts()),
            disk={"free_mb": free_mb},
        )

    def _publish_health(self, force: bool = False) -> None:
        """Retained health: whenever something a person would care about changes, and every publish_s."""
        signature = (
            tuple((w.name, w.status.state) for w in self.workers.values()),
            self.annunciator.audio_state, self.link.connected, len(self.alerts.open_alerts()),
        )
        due = time.monotonic() - self._health_sent >= self.cfg.health.publish_s
        if not (force or due or signature != self._health_signature) or not self.link.connected:
            return
        self._health_signature = signature
        self._health_sent = time.monotonic()
        self.link.publish(self.topics.health, self.health().model_dump_json().encode(), retain=True)

    def _housekeeping_tick(self, notifier: Callable[[str], None]) -> None:
        limit = self.cfg.health.stuck_after_s
        beats = {w.name: w.heartbeat for w in self.workers.values()}
        beats["annunciator"] = self.annunciator.heartbeat
        stale = [name for name, beat in beats.items() if time.monotonic() - beat > limit]
        if stale:
            log.error("print worker(s) stuck: %s; withholding the watchdog ping", ", ".join(stale))
        else:
            notifier("WATCHDOG=1")
        self._flush_reported()
        self.desk.check_probation()
        self.alerts.tick()
        self._publish_health()
        if time.monotonic() - self._last_timers >= self.cfg.timers.check_s:
            self._last_timers = time.monotonic()
            self.timers.tick()
        if time.monotonic() - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = time.monotonic()
            self._prune()


def run_supervised(base: Config, stop: threading.Event, poll_s: float = 0.5) -> None:
    """The daemon: one Agent at a time, restarted in-process when a remote change needs it.

    A restart keeps everything that matters: queued jobs are in the journal, orders wait in the
    MQTT session. If the agent cannot even be built with a change on probation, the change reverts.
    """
    while not stop.is_set():
        agent: Optional[Agent] = None
        try:
            agent = Agent(base)
            agent.start()
        except Exception as e:
            remote = RemoteConfig(base)
            if not remote.probation:
                raise
            log.exception("the agent cannot start with config version %d", remote.version)
            if agent is not None:
                try:
                    agent.stop()
                except Exception:  # noqa: BLE001 - half-started: release what can be released
                    log.exception("stopping the half-started agent failed")
            remote.revert(f"the agent could not start with config version {remote.version}: {e}")
            continue
        while not stop.wait(poll_s) and agent.restart_requested is None:
            pass
        if not stop.is_set():
            log.warning("restarting the agent in-process: %s", agent.restart_requested)
        agent.stop(final=stop.is_set())


def _describe(p) -> str:  # noqa: ANN001 - any printer config
    if p.connection == "network":
        return f"network {p.host}:{p.port}"
    if p.connection == "usb":
        return f"usb {p.vendor_id:04x}:{p.product_id:04x}"
    if p.connection == "serial":
        return f"serial {p.device} {p.baudrate}"
    if p.connection == "file":
        return f"file {p.path}"
    return "virtual"


def _systemd_notifier() -> Callable[[str], None]:
    if not os.environ.get("NOTIFY_SOCKET"):
        return lambda msg: None
    import sdnotify  # noqa: PLC0415 - only under systemd

    n = sdnotify.SystemdNotifier()
    return lambda msg: n.notify(msg)
