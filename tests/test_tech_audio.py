"""Issue 18, findings 6 and 9 (one audio truth; silence that can be undone, shown on the clock), and the
chime scaling cache of issue 17: through the CLI against a running agent, ALSA's null/file plugins."""

import json
import os
import re
import time
from pathlib import Path

import pytest

from agent.devbroker import free_port
from conftest import agent_config
from drivers import audio
from test_tech_connect import RunningAgent

NO_CARD = "hw:63"  # an allowed device name; no such card on any machine


def sound_agent(tmp_path, broker, vprinter, **sound):
    cfg = agent_config(tmp_path / "state", broker.port, vprinter.port, f"au-{os.getpid()}-{time.monotonic_ns() % 10**6}",
                       sound={"enabled": True, **sound})
    return RunningAgent(tmp_path, cfg)


@pytest.fixture
def agents():
    started = []
    yield started
    for a in started:
        a.stop()


def no_alsa_noise(text):
    assert "ALSA lib" not in text, text


def test_no_sound_card_is_one_truth_everywhere(tmp_path, broker, vprinter, agents):
    agent = sound_agent(tmp_path, broker, vprinter, device=NO_CARD)
    agents.append(agent)
    says = "the sound device cannot be opened"
    # status: failed from the start (the agent checked at start), with the one-line reason
    st = agent.status()["audio"]
    assert st["state"] == "failed" and says in st["error"], st
    r = agent.cli("status")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("audio")][0]
    assert "failed since" in line and says in line, r.stdout
    # doctor agrees (it asks the agent), and exits 1
    r = agent.cli("doctor")
    audio_line = [ln for ln in r.stdout.splitlines() if "] audio" in ln][0]
    assert audio_line.startswith("[FAIL]") and says in audio_line and r.returncode == 1, r.stdout
    # chime: fails with the reason, exit 1, one line
    r = agent.cli("chime", "urgent")
    assert r.returncode == 1 and "urgent did not play" in r.stderr and says in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "playing" not in r.stdout
    # no raw ALSA text anywhere a technician looks: the journal (the agent's output), the alert, the CLI
    alerts = agent.status()["alerts"]
    assert any(a["code"] == "audio.failed" and says in a["message"] for a in alerts), alerts
    for text in (agent.log(), r.stderr, json.dumps(alerts, ensure_ascii=False)):
        no_alsa_noise(text)
    assert agent.log().count("audio: sound check") == 1  # logged once, not at every chime


def test_no_card_on_the_default_device_leaves_no_alsa_text_in_the_journal(tmp_path, broker, vprinter, agents):
    """The default device goes through simpleaudio, in the agent's own process: ALSA would print its ten lines to
    the agent's stderr (the journal) itself."""
    home = tmp_path / "home"
    home.mkdir()  # no .asoundrc: ALSA's default device, and this machine has no card
    cfg = agent_config(tmp_path / "state", broker.port, vprinter.port, "au-def", sound={"enabled": True})
    agent = RunningAgent(tmp_path, cfg, env={"HOME": str(home)})
    agents.append(agent)
    st = agent.status()["audio"]
    assert st["state"] == "failed" and "cannot be opened" in st["error"], st
    r = agent.cli("chime", "new_order", env={"HOME": str(home)})
    assert r.returncode == 1 and "cannot be opened" in r.stderr
    no_alsa_noise(agent.log() + r.stderr)


def test_doctor_without_the_agent_checks_the_device_itself(tmp_path):
    from test_tech_connect import cli  # noqa: PLC0415
    from conftest import write_toml  # noqa: PLC0415

    cfg = agent_config(tmp_path / "state", free_port(), free_port(), "au-doc", sound={"enabled": True, "device": NO_CARD})
    r = cli(write_toml(tmp_path / "c.toml", cfg), "doctor")
    line = [ln for ln in r.stdout.splitlines() if "] audio" in ln][0]
    assert line.startswith("[FAIL]") and f"sound device {NO_CARD}" in line and "cannot be opened" in line
    no_alsa_noise(r.stdout + r.stderr)


def test_a_working_device_plays_and_says_so(tmp_path, broker, vprinter, agents, alsa_file):
    alsa_file.write_bytes(b"")
    agent = sound_agent(tmp_path, broker, vprinter)
    agents.append(agent)
    assert agent.status()["audio"]["state"] == "ok"
    size = alsa_file.stat().st_size
    r = agent.cli("chime", "urgent")
    assert r.returncode == 0 and re.match(r"played urgent \((simpleaudio|aplay)\)", r.stdout), r.stdout + r.stderr
    assert alsa_file.stat().st_size > size + 8000  # the chime's samples reached ALSA
    r = agent.cli("doctor")
    assert "[ok  ] audio              agent audio ok" in r.stdout, r.stdout


def test_silence_shows_its_end_and_can_be_undone(tmp_path, broker, vprinter, agents, alsa_file):
    agent = sound_agent(tmp_path, broker, vprinter)
    agents.append(agent)
    before = time.time() + 600
    r = agent.cli("silence", "10")
    after = time.time() + 600
    assert r.returncode == 0, r.stderr
    # the minute may turn meanwhile; an end past midnight is shown with its date (YYYY-MM-DD HH:MM)
    ends = {time.strftime("%H:%M", time.localtime(t)) for t in (before, after)}
    shown = re.compile(r"silenced until (?:\d{4}-\d\d-\d\d )?(" + "|".join(ends) + ")")
    assert re.search("chimes " + shown.pattern, r.stdout), r.stdout
    assert "silence --off" in r.stdout
    st = agent.status()["audio"]
    assert st["silenced"] is True and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$", st["silenced_until"]), st
    assert shown.search(agent.cli("status").stdout)
    r = agent.cli("chime", "new_order")
    assert r.returncode == 1 and "not played: chimes are silenced" in r.stderr, r.stderr
    r = agent.cli("silence", "--off")
    assert r.returncode == 0 and "chimes on again" in r.stdout
    assert agent.status()["audio"]["silenced"] is False
    assert agent.cli("chime", "new_order").returncode == 0
    # usage errors are exit 2 (the contract), not 1
    for bad in ([], ["5", "--off"], ["721"], ["-5"], ["ten"]):
        r = agent.cli("silence", *bad)
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
    r = agent.cli("silence", "0")  # 0 ends a silence, like --off
    assert r.returncode == 0 and "chimes on again" in r.stdout


# -- issue 17: a chime is scaled once per (sound, volume), not sample by sample at every chime ----------------

def reference(path, volume):
    """The scaling as the spec says, computed here independently: int(sample * volume), 16-bit little-endian."""
    import array  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import wave  # noqa: PLC0415

    with wave.open(str(path), "rb") as w:
        frames = w.readframes(w.getnframes())
    a = array.array("h", frames)
    if sys.byteorder == "big":
        a.byteswap()
    out = array.array("h", [int(s * volume) for s in a])
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def test_chime_scaling_is_cached_per_sound_and_volume(tmp_path):
    audio._scaled.clear()
    wav = tmp_path / "c.wav"
    audio.synthesize(wav, [(440.0, 0.05)])
    before = dict(audio.scaled_stats)
    first = audio.scaled_wav(wav, 0.5)
    assert first[0] == reference(wav, 0.5)
    for _ in range(5):
        assert audio.scaled_wav(wav, 0.5) == first
    assert audio.scaled_stats["misses"] - before["misses"] == 1 and audio.scaled_stats["hits"] - before["hits"] == 5
    assert audio.scaled_wav(wav, 0.25)[0] == reference(wav, 0.25)  # another volume: scaled once more
    assert audio.scaled_stats["misses"] - before["misses"] == 2
    # a file replaced on disk (size or mtime) is scaled again, never served stale
    audio.synthesize(wav, [(880.0, 0.08)])
    os.utime(wav, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert audio.scaled_wav(wav, 0.5)[0] == reference(wav, 0.5)
    # bounded
    for i in range(audio.SCALED_CACHE_SIZE + 5):
        audio.scaled_wav(wav, i / 100)
    assert len(audio._scaled) == audio.SCALED_CACHE_SIZE
