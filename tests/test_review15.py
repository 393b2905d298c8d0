"""Review of issue 15 (the store's day: voice, figures, follow-ups): each test shows one defect and is
marked xfail(strict) until it is fixed."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import wave
from concurrent.futures import Future
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.alerts import Alert, AlertBook
from agent.annunciator import Annunciator, SoundSettings
from agent.config import FollowupConfig, parse_config
from agent.followups import Followups
from agent.journal import Journal
from agent.stats import ReportSchedule, Stats
from agent.voice import MAX_CHARS, Voice, VoiceSettings
from conftest import ROOT, agent_config, order, wait_until, write_toml

QUIET = dict(followup={"print_at": ""}, report={"daily_at": ""}, timers={"check_s": 1, "prep_before_s": 0, "summary_every_s": 0})


def cli(cfg_file, *args):  # noqa: ANN001, ANN201
    return subprocess.run([sys.executable, "-m", "agent.cli", *args, "--config", str(cfg_file)], capture_output=True,
                          text=True, cwd=ROOT, timeout=90)


def delivered(n: int, hours_ago: float, tag: str) -> tuple[dict, dict]:
    created = order(n, tag)
    done = json.loads(json.dumps(created))
    done["type"], done["id"] = "order.completed", f"evt-{tag}-done-{n}"
    done["at"] = (datetime.now(timezone.utc) - timedelta(hours=hours_ago)).isoformat()
    return created, done


def duration(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def fake_engine(tmp_path: Path, *, seconds: float = 0.5, sleep_s: float = 0.0) -> str:
    """An espeak-ng stand-in with the same command line: a loud 16 kHz tone of ``seconds`` (after ``sleep_s``)."""
    script = tmp_path / "fake-espeak"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, time, wave, struct\n"
        f"time.sleep({sleep_s})\n"
        "out = sys.argv[sys.argv.index('-w') + 1]\n"
        "import zlib; half = 4 + zlib.crc32(sys.stdin.buffer.read()) % 40  # each text its own tone\n"
        f"n = int(16000 * {seconds})\n"
        "with wave.open(out, 'wb') as w:\n"
        "    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)\n"
        "    w.writeframes(b''.join(struct.pack('<h', 12000 if (i // half) % 2 else -12000) for i in range(n)))\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


class FakeChime:
    def __init__(self) -> None:
        self.played: list[tuple[float, Path]] = []

    def play(self, wav: Path, volume: float = 1.0) -> str:
        self.played.append((time.monotonic(), Path(wav)))
        return "fake"


class NoAlerts:
    def open_alerts(self):  # noqa: ANN201
        return []

    def raise_(self, *a, **k):  # noqa: ANN002, ANN003, ANN201
        return None

    def clear(self, *a, **k):  # noqa: ANN002, ANN003, ANN201
        return None


# -- figures ---------------------------------------------------------------------------------------------

def test_an_outcome_changed_on_a_later_day_never_makes_a_days_figures_negative(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    try:
        now = [datetime(2026, 11, 10, 10, 0).timestamp()]
        clock = lambda: now[0]  # noqa: E731
        st = Stats(j, clock)
        fu = Followups(j, FollowupConfig(print_at=""), st, clock)
        ev = order(1, "rv")
        j.record_event(ev["id"], ev["order"]["id"], "order.created", json.dumps(ev).encode(), [], now=now[0])
        fu.record(ev["order"]["id"], "no_answer")  # day 1: no answer
        now[0] += 86400
        fu.record(ev["order"]["id"], "reached")  # day 2: called again, reached
        j.flush()
        day2 = date(2026, 11, 11)
        f = st.report(day2, day2)["followups"]
        assert min(f["reached"], f["no_answer"], f["declined"], f["done"]) >= 0, f
        assert f["reached"] == 1 and f["rate"] is not None, f
    finally:
        j.close()


class AlertDay:
    """A journal, its stats and an alert book on a clock that starts 2026-11-10 10:00 (``now[0]``)."""

    DAY = date(2026, 11, 10)

    def __init__(self, path: Path) -> None:
        self.j = Journal(path)
        self.now = [datetime(2026, 11, 10, 10, 0).timestamp()]
        self.stats = Stats(self.j, lambda: self.now[0])
        self.book = AlertBook(self.j, self.stats.on_alert, clock=lambda: self.now[0])

    def response(self) -> dict:
        """That day's alert-response figures, once everything is in the journal."""
        self.j.flush()
        return self.stats.report(self.DAY, self.DAY)["alert_response_s"]


@pytest.fixture
def alert_day(tmp_path):
    d = AlertDay(tmp_path / "j.sqlite3")
    yield d
    d.j.close()


def test_an_alert_acknowledged_after_its_escalation_counts_in_the_alert_response(alert_day):
    book, now = alert_day.book, alert_day.now
    book.raise_("order:MT-1:rider.unassigned", "order.rider_unassigned", "无骑手接单: MT-1", severity="critical",
                order_id="MT-1", needs_ack=True, escalate_after_s=900)
    now[0] += 1000
    assert book.tick()  # escalated to the info department
    now[0] += 200
    assert book.acknowledge()  # the clerk finally presses the button, 1200 s after it was raised
    r = alert_day.response()
    assert r["n"] == 1 and r["max"] == 1200.0, r


def test_a_refreshed_acknowledged_alert_is_one_response(alert_day):
    book, now = alert_day.book, alert_day.now
    book.raise_("timer:unshipped", "order.unshipped", "2 单超时未出库", needs_ack=True, sound="exception")
    now[0] += 30
    book.acknowledge()
    now[0] += 1800  # the next summary: one more order late, the message changes
    book.raise_("timer:unshipped", "order.unshipped", "3 单超时未出库", needs_ack=True, sound="exception")
    r = alert_day.response()
    assert r["n"] == 1 and r["max"] == 30.0, r


def test_fault_minutes_belong_to_the_days_the_printer_was_down(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    try:
        raised = datetime(2026, 11, 9, 10, 0).timestamp()  # Monday 10:00 .. Wednesday 10:00
        st = Stats(j, lambda: raised)
        a = Alert("printer:counter:offline", "printer.offline", "critical", "打印机 counter: offline", since=raised, at=raised)
        st.on_alert(a)
        st.on_alert(Alert(a.id, a.code, a.severity, a.message, since=raised, at=raised + 2 * 86400, state="cleared"))
        j.flush()
        tue, wed = date(2026, 11, 10), date(2026, 11, 11)
        tue_min = st.report(tue, tue)["faults"].get("offline", {}).get("minutes", 0)
        wed_min = st.report(wed, wed)["faults"]["offline"]["minutes"]
        assert tue_min == 1440 and wed_min <= 1440, (tue_min, wed_min)
    finally:
        j.close()


def test_a_monthly_slip_missed_while_the_agent_was_off_still_prints():
    class Timers:
        def __init__(self) -> None:
            self.marks: dict[str, float] = {}

        def timer_fired(self, key, default=None):  # noqa: ANN001, ANN201
            return self.marks.get(key, default)

        def mark_timer(self, key, at):  # noqa: ANN001, ANN201
            self.marks[key] = at

    printed: list[tuple] = []
    now = [datetime(2026, 12, 2, 22, 1).timestamp()]  # off from 1 Dec 21:00 (power cut) to 2 Dec
    sched = ReportSchedule(Timers(), daily_at="22:00", weekly_on="sun", monthly=True,
                           print_report=lambda *a: printed.append(a), clock=lambda: now[0])
    sched.tick()
    assert ("month", date(2026, 11, 1), date(2026, 11, 30)) in printed, printed


def test_a_result_resent_after_a_restart_is_not_counted_again(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id, **QUIET)
    agent.outbox._mark_reported = lambda event_id: None  # the results' PUBACKs never come back (the link dropped)
    first = order(1, "rs")
    dup = order(1, "rs")
    dup["id"] = "evt-rs-dup"  # the same order under a new event id: a duplicate
    hq.publish(first)
    hq.publish(dup)
    dups = lambda: [r for r in hq.results() if r.get("event_id") == "evt-rs-dup" and r["status"] == "duplicate"]  # noqa: E731
    assert wait_until(lambda: first["id"] in hq.final() and dups(), 20), hq.results()
    agent.stop()
    again = make_agent(broker.port, vprinter.port, store_id, **QUIET)
    assert wait_until(lambda: len(dups()) == 2, 20), hq.results()  # the unconfirmed result is sent again: right
    time.sleep(0.3)
    again.journal.flush()
    assert again.report("day")["results"] == {"duplicate": 1}


# -- follow-ups ------------------------------------------------------------------------------------------

def test_an_order_on_the_list_can_be_marked_done(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id, **QUIET)
    _, done = delivered(1, 30, "nc")  # its order.created came before this journal (new agent, salvage, pruned)
    hq.publish(done)
    assert wait_until(lambda: done["id"] in hq.final(), 15), hq.results()
    listed = agent.commands.run("followups", {}, local=True)["data"]["due"]
    assert [d["order_id"] for d in listed] == ["MT-nc00001"]
    r = agent.commands.run("followup_done", {"order_id": "MT-nc00001", "outcome": "reached"})
    assert r["status"] == "ok", r


def test_a_live_followup_window_change_applies(tmp_path, broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id, **QUIET)
    created, done = delivered(1, 30, "lv")
    hq.publish(created)
    hq.publish(done)
    assert wait_until(lambda: done["id"] in hq.final() and created["id"] in hq.final(), 20), hq.results()
    assert agent.commands.run("followups", {}, local=True)["data"]["count"] == 1
    over = {**QUIET, "followup": {"print_at": "", "after_h": 40, "before_h": 60}}
    agent.apply_live(parse_config(agent_config(tmp_path / "state", broker.port, vprinter.port, store_id, **over)))
    data = agent.commands.run("followups", {}, local=True)["data"]
    assert data["after_h"] == 40 and data["count"] == 0, data  # delivered 30 h ago: not due in a 40-60 h window


def test_followup_rows_do_not_outlive_everything_else(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    try:
        t0 = time.time() - 3 * 86400
        st = Stats(j, lambda: t0)
        fu = Followups(j, FollowupConfig(print_at=""), st, lambda: t0)
        ev = order(1, "pr")
        j.record_event(ev["id"], ev["order"]["id"], "order.created", json.dumps(ev).encode(), [], now=t0)
        fu.record(ev["order"]["id"], "reached")
        later = t0 + 800 * 86400  # two years on: the order, its dedupe key and its day's figures are gone
        j.prune(30, 1 << 30, now=later)
        Stats(j, lambda: later).prune(400)
        j.flush()
        assert j._read("SELECT COUNT(*) FROM events")[0][0] == 0
        assert j._read("SELECT COUNT(*) FROM followups")[0][0] == 0
    finally:
        j.close()


# -- voice ---------------------------------------------------------------------------------------------

def test_phrase_files_do_not_evict_the_segments_they_are_made_of(tmp_path):
    v = Voice(VoiceSettings(cache_mb=1, engine=fake_engine(tmp_path)), tmp_path / "cache")
    for seq in range(40):  # 40 orders: 42 segments of 16 KB fit in 1 MB with room to spare
        v.wav("{platform}{seq}号新订单", {"platform": "美团", "seq": seq})
    made = v.synthesised
    assert made == 42
    v.wav("{platform}{seq}号新订单", {"platform": "美团", "seq": 0})  # #0 again the next day: every part heard before
    assert v.synthesised == made, f"{v.synthesised - made} segment(s) synthesised again"


def test_a_broken_engine_is_one_alert_not_one_per_order(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    published: list[Alert] = []
    book = AlertBook(j, published.append)
    ann = Annunciator(book, chime=FakeChime(), settings=SoundSettings(True, 0.8, "", 0.0))  # type: ignore[arg-type]
    voice = Voice(VoiceSettings(engine=str(tmp_path / "no-such-espeak-ng")), tmp_path / "cache")
    ann.start()
    try:
        for seq in (1, 2, 3):
            done: Future = Future()
            ann.request("new_order")
            ann.speak(f"美团{seq}号新订单", lambda seq=seq: voice.wav("{platform}{seq}号新订单", {"platform": "美团", "seq": seq}), done)
            assert done.result(10).startswith("error:")
            assert ann.voice_state == "failed" and ann.audio_state == "ok"  # the chimes play: audio is fine
        states = [a.state for a in published if a.code == "audio.voice_failed"]
        assert states == ["raised"], states  # one alert, not a raise/clear pair per order
        assert not [a for a in published if a.code == "audio.failed"]
    finally:
        ann.stop()
        j.close()


def test_a_hanging_engine_does_not_hold_up_the_next_chime(tmp_path):
    chime = FakeChime()
    ann = Annunciator(NoAlerts(), chime=chime, settings=SoundSettings(True, 0.8, "", 0.0))  # type: ignore[arg-type]
    voice = Voice(VoiceSettings(engine=fake_engine(tmp_path, sleep_s=20)), tmp_path / "cache")
    ann.start()
    try:
        ann.request("new_order")
        ann.speak("打印机缺纸", lambda: voice.wav("打印机缺纸", {}))
        assert wait_until(lambda: len(chime.played) == 1, 5)
        t0 = time.monotonic()
        ann.request("new_order")  # the next order, a second later
        assert wait_until(lambda: len(chime.played) == 2, 5), "the next order's chime waited for the synthesiser"
        assert chime.played[1][0] - t0 < 5
    finally:
        ann.stop()
        if ann._thread is not None:
            ann._thread.join(20)  # the stand-in's 15 s timeout ends: no thread of this test outlives it


def test_a_spoken_phrase_is_bounded(tmp_path):
    v = Voice(VoiceSettings(), tmp_path / "cache")  # the real espeak-ng
    note = "请尽快处理本订单的药品核对与配送事宜" * 7  # a detail fact of an event (rules.<type>.voice = "{note}...")
    out = v.wav("{platform}{seq}号{note}{note}{note}", {"platform": "美团", "seq": 7, "note": note})
    spoken = v.phrase("{platform}{seq}号{note}{note}{note}", {"platform": "美团", "seq": 7, "note": note})
    assert len(spoken) <= MAX_CHARS and duration(out) <= 30, (len(spoken), duration(out))


def test_say_with_an_unusable_cache_is_answered_at_once(tmp_path):
    (tmp_path / "cache").write_text("not a directory")  # stands in for ENOSPC / a read-only card under state_dir
    voice = Voice(VoiceSettings(engine=fake_engine(tmp_path)), tmp_path / "cache")
    ann = Annunciator(NoAlerts(), chime=FakeChime(), settings=SoundSettings(True, 0.8, "", 0.0))  # type: ignore[arg-type]
    ann.start()
    try:
        done: Future = Future()
        ann.speak("测试", lambda: voice.wav("测试", {}), done)  # exactly what Commands._say queues
        assert done.result(5).startswith("error:")
    finally:
        ann.stop()


# -- requests and CLI -----------------------------------------------------------------------------------

def test_report_day_out_of_range_is_a_clear_error(broker, vprinter, make_agent, store_id):
    agent = make_agent(broker.port, vprinter.port, store_id, **QUIET)
    for args in ({"period": "week", "day": "0001-01-01"}, {"period": "month", "day": "9999-12-31"}):
        r = agent.commands.run("report", args, "tx")
        assert r["status"] == "error" and not r["error"].startswith("report failed"), r


def test_report_with_an_impossible_day_is_a_usage_error(tmp_path, broker, vprinter, make_agent, store_id):
    make_agent(broker.port, vprinter.port, store_id, **QUIET)
    cfg = write_toml(tmp_path / "c.toml", agent_config(tmp_path / "state", broker.port, vprinter.port, store_id, **QUIET))
    bad_pattern = cli(cfg, "report", "--day", "yesterday")
    assert bad_pattern.returncode == 2, bad_pattern.stderr
    r = cli(cfg, "report", "--day", "2026-02-30")
    assert r.returncode == 2, (r.returncode, r.stderr)
