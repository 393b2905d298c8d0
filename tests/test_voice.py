"""Spoken announcements (issue 15): clips, espeak-ng, the cache, the audio path, a broken engine."""

from __future__ import annotations

import wave
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path

import pytest

from agent.annunciator import Annunciator, SoundSettings
from agent.voice import GAP_MS, Voice, VoiceSettings, segments
from conftest import agent_config, order, spawn_agent, wait_until, write_toml
from drivers.audio import AudioError, find_sound, scaled_wav, synthesize


def pcm(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


def test_segments_fill_placeholders_and_keep_numbers_whole():
    segs = segments("{platform}{seq}号新订单", {"platform": "美团", "seq": 23})
    assert [(s.text, s.number) for s in segs] == [("美团", False), ("23", True), ("号新订单", False)]
    assert [s.text for s in segments("{platform}{seq}号新订单{nope}", {"platform": "", "seq": None})] == ["号新订单"]
    assert segments("打印机\x07缺纸\n", {})[0].text == "打印机缺纸"  # control characters never reach the engine


def test_a_phrase_with_clips_uses_the_clips_sample_exact(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name, hz in (("美团", 440), ("2", 500), ("3", 600), ("号新订单", 700)):
        synthesize(clips / f"{name}.wav", [(hz, 0.2)])
    v = Voice(VoiceSettings(clips_dir=str(clips), engine="/nonexistent/espeak-ng"), tmp_path / "cache")
    out = v.wav("{platform}{seq}号新订单", {"platform": "美团", "seq": 23})
    gap = b"\x00" * (2 * 16000 * GAP_MS // 1000)
    assert pcm(out) == gap.join(pcm(clips / f"{n}.wav") for n in ("美团", "2", "3", "号新订单"))
    assert v.synthesised == 0  # no synthesiser for a phrase that has every clip
    synthesize(clips / "23.wav", [(800, 0.3)])  # a whole-number clip wins over its digits
    v2 = Voice(VoiceSettings(clips_dir=str(clips), engine="/nonexistent/espeak-ng"), tmp_path / "cache")
    assert pcm(v2.wav("{seq}", {"seq": 23})) == pcm(clips / "23.wav")


def test_synthesised_segments_are_cached_so_a_new_order_spawns_no_synthesiser(tmp_path):
    v = Voice(VoiceSettings(), tmp_path / "cache")
    first = v.wav("{platform}{seq}号新订单", {"platform": "美团", "seq": 23})
    assert v.synthesised == 3 and pcm(first)
    v.wav("{platform}{seq}号新订单", {"platform": "美团", "seq": 24})
    assert v.synthesised == 4  # only the new number
    v.wav("{platform}{seq}号新订单", {"platform": "美团", "seq": 23})
    assert v.synthesised == 4  # heard before: nothing spawned


def test_the_cache_bounds_itself(tmp_path):
    v = Voice(VoiceSettings(cache_mb=1), tmp_path / "cache")
    for n in range(40):
        v.wav("{seq}号", {"seq": n * 7919})
    total = sum(p.stat().st_size for p in (tmp_path / "cache").glob("*.wav"))
    assert total <= 1024 * 1024 and v.synthesised >= 40


def test_a_missing_engine_is_an_audio_error(tmp_path):
    v = Voice(VoiceSettings(engine="/nonexistent/espeak-ng"), tmp_path / "cache")
    with pytest.raises(AudioError, match="not installed"):
        v.wav("打印机缺纸", {})


class FakeChime:
    def __init__(self) -> None:
        self.played: list[tuple[Path, float]] = []

    def play(self, wav: Path, volume: float = 1.0) -> str:
        self.played.append((wav, volume))
        return "fake"


def test_quiet_hours_mute_the_voice_too(tmp_path):
    class Alerts:
        def open_alerts(self):  # noqa: ANN201
            return []

    chime = FakeChime()
    ann = Annunciator(Alerts(), chime=chime, settings=SoundSettings(True, 0.8, "00:00-23:59", 0.0),  # type: ignore[arg-type]
                      local_now=lambda: datetime(2026, 11, 30, 12, 0))
    ann.start()
    try:
        made = []
        done: Future = Future()
        ann.speak("美团23号新订单", lambda: made.append(1) or tmp_path / "x.wav", done)
        assert done.result(5).startswith("muted: quiet hours") and not chime.played and not made  # not even synthesised
    finally:
        ann.stop()


def test_an_order_is_chimed_then_spoken_and_both_reach_alsa(tmp_path, broker, vprinter, hq_factory, store_id):
    """A separate agent process with its own asoundrc whose file plugin appends (``|cat >> F``)."""
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "alsa.raw"
    (home / ".asoundrc").write_text('pcm.!default { type file; slave.pcm "null"; file "|cat >> %s"; format "raw" }\n' % out)
    hq = hq_factory(broker.port, store_id)
    cfg = agent_config(tmp_path / "state", broker.port, vprinter.port, store_id, sound={"enabled": True, "volume": 1.0})
    proc = spawn_agent(write_toml(tmp_path / "c.toml", cfg), tmp_path / "agent.log", env={"HOME": str(home)})
    try:
        assert wait_until(lambda: "online" in hq.statuses(), 20), (tmp_path / "agent.log").read_text()
        out.write_bytes(b"")
        hq.publish(order(23))
        assert vprinter.wait_jobs(2, 20)
        chime, *_ = scaled_wav(find_sound("new_order"), 1.0)
        phrases = lambda: list((tmp_path / "state" / "voice-cache" / "phrases").glob("phrase-*.wav"))  # noqa: E731
        assert wait_until(lambda: phrases() and out.stat().st_size >= len(chime) + len(pcm(phrases()[0])), 30), \
            (tmp_path / "agent.log").read_text()
        got = out.read_bytes()
        spoken = pcm(phrases()[0])
        assert got[: len(chime)] == chime  # the chime first, sample for sample
        assert got[len(chime):].endswith(spoken) or spoken in got[len(chime):]  # then the phrase, sample for sample
        assert len(spoken) > len(chime)  # longer than the chime alone
        assert "voice: 美团23号新订单" in (tmp_path / "agent.log").read_text()
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_broken_engine_raises_the_audio_alert_and_orders_still_print(broker, vprinter, make_agent, hq_factory, store_id, alsa_file):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id, start=False, sound={"enabled": True, "volume": 1.0})
    agent.voice = Voice(VoiceSettings(engine="/nonexistent/espeak-ng"), Path(agent.cfg.state_dir) / "voice-cache")
    agent.start()
    assert wait_until(lambda: agent.link.subscribed, 10)
    hq.publish(order(7))
    assert vprinter.wait_jobs(2, 15)
    assert wait_until(lambda: any(a.code == "audio.voice_failed" for a in agent.alerts.open_alerts()), 15)
    a = next(a for a in agent.alerts.open_alerts() if a.code == "audio.voice_failed")
    assert "espeak-ng is not installed" in a.message and agent.annunciator.voice_state == "failed"
    assert agent.annunciator.audio_state == "ok"  # the chime played: the sound card is fine
