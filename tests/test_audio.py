"""Chimes through ALSA's file plugin (an asoundrc made here): the bytes that reached ALSA are checked."""

import os
from pathlib import Path

import pytest

from drivers.audio import SOUNDS, AudioError, SystemChime, check_device, find_sound, scaled_wav


def test_every_shipped_sound_exists_and_is_16_bit():
    for name in SOUNDS:
        pcm, channels, width, rate = scaled_wav(find_sound(name), 1.0)
        assert width == 2 and channels == 1 and rate == 16000 and len(pcm) > 8000


@pytest.mark.parametrize("use_simpleaudio, backend", [(True, "simpleaudio"), (False, "aplay")])
def test_chime_reaches_alsa(alsa_file, use_simpleaudio, backend):
    wav = find_sound("new_order")
    expected, *_ = scaled_wav(wav, 1.0)
    assert SystemChime(use_simpleaudio=use_simpleaudio).play(wav, 1.0) == backend
    got = alsa_file.read_bytes()
    assert got[: len(expected)] == expected  # the PCM that reached the device, sample for sample


def test_volume_scales_the_samples(alsa_file):
    wav = find_sound("exception")
    half, *_ = scaled_wav(wav, 0.5)
    full, *_ = scaled_wav(wav, 1.0)
    SystemChime(use_simpleaudio=False, device="default").play(wav, 0.5)
    got = alsa_file.read_bytes()[: len(half)]
    assert got == half and got != full


def test_broken_audio_is_an_error_not_a_crash(alsa_file, tmp_path):
    with pytest.raises(AudioError, match="aplay"):
        SystemChime(device="hw:63").play(find_sound("urgent"))  # an allowed name, no such card
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not a wav")
    with pytest.raises(AudioError, match="cannot read"):
        SystemChime().play(bad)
    with pytest.raises(AudioError, match="no sound named"):
        find_sound("trumpet")


@pytest.mark.parametrize("device", ["default", "sysdefault", "sysdefault:0", "sysdefault:Headphones", "hw:0", "hw:1,0",
                                    "plughw:0", "plughw:2,1", "hw:vc4hdmi0"])
def test_alsa_device_names_that_are_allowed(device):
    assert check_device(device) == device


@pytest.mark.parametrize("device", ["file:'|touch /tmp/x',raw", "capture_file", "null", "plug:file", "hw:0,0,0",
                                    "hw:0;id", "default ", "-Dhw:0", "hw:0\n", "sysdefault:CARD=x", ""])
def test_other_alsa_device_names_are_refused(device):
    with pytest.raises(AudioError, match="refused"):
        check_device(device)


def test_a_command_in_the_device_name_never_runs(alsa_file, tmp_path):
    """Issue 19 finding 2: ALSA's file plugin popen()s '|cmd'; the name must never reach aplay."""
    canary = tmp_path / "pwned"
    chime = SystemChime(device=f"file:'|touch {canary}',raw", use_simpleaudio=False)
    with pytest.raises(AudioError, match="sound device refused"):
        chime.play(find_sound("new_order"))
    assert not canary.exists()
