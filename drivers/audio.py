"""Chimes: WAV playback through simpleaudio, falling back to ``aplay``.

A missing or broken audio stack raises ``AudioError`` (the caller turns it into an ``audio.*``
alert); it never takes the daemon down. simpleaudio is imported lazily and skipped on
Python >= 3.12 unless a patched build is installed (1.0.4 segfaults there).
"""

from __future__ import annotations

import array
import io
import logging
import re
import shutil
import subprocess
import sys
import threading
import wave
from pathlib import Path
from typing import Optional, Protocol

log = logging.getLogger(__name__)


class AudioError(Exception):
    """No sound came out: the message says why."""


# The only ALSA device names played to. ALSA's own syntax reaches plugins that run commands
# (``file:'|cmd'``) or open files, so anything else is refused before aplay sees it.
ALSA_DEVICE_PATTERN = r"^(default|sysdefault(:(\d{1,2}|[A-Za-z][A-Za-z0-9_]{0,31}))?|(plug)?hw:(\d{1,2}|[A-Za-z][A-Za-z0-9_]{0,31})(,\d{1,2})?)$"
_ALSA_DEVICE = re.compile(ALSA_DEVICE_PATTERN)


def check_device(device: str) -> str:
    """``device`` if it is ``default``, ``sysdefault[:CARD]`` or ``[plug]hw:CARD[,DEV]``; else AudioError."""
    if not isinstance(device, str) or not _ALSA_DEVICE.fullmatch(device):
        raise AudioError("sound device refused: only default, sysdefault[:N], hw:N[,M] or plughw:N[,M] are allowed")
    return device


class Chime(Protocol):
    def play(self, wav: Path, volume: float = 1.0) -> str: ...


def scaled_wav(path: Path, volume: float) -> tuple[bytes, int, int, int]:
    """(PCM frames, channels, bytes per sample, rate) of a 16-bit WAV at ``volume`` (0..1)."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (OSError, wave.Error, EOFError) as e:
        raise AudioError(f"cannot read {path}: {e}") from e
    if width != 2:
        raise AudioError(f"{path}: only 16-bit WAV is supported (got {8 * width}-bit)")
    samples = array.array("h", frames)
    if sys.byteorder == "big":
        samples.byteswap()
    v = max(0.0, min(volume, 1.0))
    if v < 1.0:
        samples = array.array("h", (int(s * v) for s in samples))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes(), channels, width, rate


def _wav_bytes(pcm: bytes, channels: int, width: int, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


class SystemChime:
    """simpleaudio first, ``aplay`` second. ``play`` blocks until the sound ends (call it off the hot path)."""

    def __init__(self, device: str = "default", use_simpleaudio: bool = True, timeout_s: float = 30.0) -> None:
        self.device = device
        self.use_simpleaudio = use_simpleaudio and device == "default"
        self.timeout_s = timeout_s
        self._lock = threading.Lock()

    def _simpleaudio(self):  # noqa: ANN202
        if not self.use_simpleaudio:
            return None
        if sys.version_info >= (3, 12):
            try:
                from importlib.metadata import version  # noqa: PLC0415

                version("simpleaudio-patched")
            except Exception:  # noqa: BLE001 - plain simpleaudio 1.0.4 crashes the process on 3.12+
                return None
        try:
            import simpleaudio  # noqa: PLC0415

            return simpleaudio
        except Exception as e:  # noqa: BLE001 - ImportError or a broken build
            log.info("simpleaudio unavailable (%s); using aplay", e)
            self.use_simpleaudio = False
            return None

    def play(self, wav: Path, volume: float = 1.0) -> str:
        """Play ``wav``; returns the backend that played it. Raises AudioError when nothing could."""
        check_device(self.device)  # before any backend: aplay -D must never see another name
        pcm, channels, width, rate = scaled_wav(wav, volume)
        errors = []
        with self._lock:
            sa = self._simpleaudio()
            if sa is not None:
                try:
                    sa.play_buffer(pcm, channels, width, rate).wait_done()
                    return "simpleaudio"
                except Exception as e:  # noqa: BLE001 - simpleaudio raises its own error types
                    errors.append(f"simpleaudio: {e}")
            aplay = shutil.which("aplay")
            if aplay is None:
                errors.append("aplay: not installed (apt-get install alsa-utils)")
            else:
                try:
                    r = subprocess.run(
                        [aplay, "-q", "-D", self.device, "-"],
                        input=_wav_bytes(pcm, channels, width, rate),
                        capture_output=True,
                        timeout=self.timeout_s,
                    )
                    if r.returncode == 0:
                        return "aplay"
                    errors.append(f"aplay: {r.stderr.decode(errors='replace').strip() or f'exit {r.returncode}'}")
                except subprocess.TimeoutExpired:
                    errors.append(f"aplay: no end after {self.timeout_s}s")
                except OSError as e:
                    errors.append(f"aplay: {e}")
        raise AudioError("; ".join(errors))


def make_chime(device: str = "default", use_simpleaudio: bool = True) -> Chime:
    return SystemChime(device, use_simpleaudio)


def synthesize(path: Path, notes: list[tuple[float, float]], rate: int = 16000, gain: float = 0.6) -> None:
    """Write a chime: ``notes`` is [(frequency Hz, seconds)], 0 Hz = silence. Soft attack and decay."""
    import math  # noqa: PLC0415

    samples = array.array("h")
    for freq, dur in notes:
        n = int(rate * dur)
        for i in range(n):
            env = min(1.0, i / (0.01 * rate)) * math.exp(-3.0 * i / n)
            value = math.sin(2 * math.pi * freq * i / rate) if freq else 0.0
            samples.append(int(32767 * gain * env * value))
    if sys.byteorder == "big":
        samples.byteswap()
    path.write_bytes(_wav_bytes(samples.tobytes(), 1, 2, rate))


SOUNDS = {
    # name: notes (Hz, s) — the project's own chimes, synthesized: python -m drivers.audio templates/sounds
    "new_order": [(880.0, 0.18), (1174.7, 0.18), (1568.0, 0.35)],
    "exception": [(659.3, 0.25), (0.0, 0.08), (659.3, 0.25), (0.0, 0.08), (523.3, 0.4)],
    "urgent": [(987.8, 0.15), (0.0, 0.05), (987.8, 0.15), (0.0, 0.05), (987.8, 0.15), (0.0, 0.05), (1318.5, 0.45)],
    "device_fault": [(392.0, 0.35), (0.0, 0.1), (261.6, 0.6)],
}


def sounds_dir() -> Path:
    from importlib import resources  # noqa: PLC0415

    return Path(str(resources.files("templates") / "sounds"))


def find_sound(name: str, directory: Optional[Path] = None) -> Path:
    base = directory or sounds_dir()
    path = base / f"{name}.wav"
    if not path.exists():
        raise AudioError(f"no sound named {name!r} in {base}")
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "templates/sounds")
    out.mkdir(parents=True, exist_ok=True)
    for sound, notes in SOUNDS.items():
        synthesize(out / f"{sound}.wav", notes)
        print(out / f"{sound}.wav")
