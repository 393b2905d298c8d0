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
from collections import OrderedDict
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

    def check(self) -> str: ...


SCALED_CACHE_SIZE = 16  # (sound, volume) pairs kept: 4 sounds at a few volumes (normal, quiet hours)
_scaled: "OrderedDict[tuple, tuple[bytes, int, int, int]]" = OrderedDict()
_scaled_lock = threading.Lock()
scaled_stats = {"hits": 0, "misses": 0}  # for the tests: a chime is scaled once per (sound, volume)


def scaled_wav(path: Path, volume: float) -> tuple[bytes, int, int, int]:
    """(PCM frames, channels, bytes per sample, rate) of a 16-bit WAV at ``volume`` (0..1).

    Scaled once per (file, its size and mtime, volume) and kept in a small LRU cache (``SCALED_CACHE_SIZE``):
    a chime played again costs a dictionary look-up, not a pass over every sample."""
    v = round(max(0.0, min(float(volume), 1.0)), 3)
    try:
        st = Path(path).stat()
        key = (str(path), st.st_size, st.st_mtime_ns, v)
    except OSError as e:
        raise AudioError(f"cannot read {path}: {e.strerror or e}") from e
    with _scaled_lock:
        hit = _scaled.get(key)
        if hit is not None:
            _scaled.move_to_end(key)
            scaled_stats["hits"] += 1
            return hit
    out = _scale(path, v)
    with _scaled_lock:
        scaled_stats["misses"] += 1
        _scaled[key] = out
        while len(_scaled) > SCALED_CACHE_SIZE:
            _scaled.popitem(last=False)
    return out


def _scale(path: Path, v: float) -> tuple[bytes, int, int, int]:
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
    if v < 1.0:
        samples = array.array("h", [int(s * v) for s in samples])
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


_ALSA_PREFIX = re.compile(r"^(ALSA lib [^ ]+:\([^)]*\) |aplay: [a-z_]+:\d+: )")


def one_line(stderr: str) -> str:
    """aplay's and ALSA's stderr (often ten ``ALSA lib pcm.c:…`` lines) as the one line that says why:
    aplay's own verdict when there is one, else ALSA's last line, without the source-file prefixes."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return ""
    own = [ln for ln in lines if ln.startswith("aplay:")]
    pick = (own or lines)[-1]
    reason = _ALSA_PREFIX.sub("", pick)
    if "audio open error" in reason or "Unknown PCM" in reason or "No such file or directory" in reason:
        return f"the sound device cannot be opened ({reason}): no sound card, or sound.device names one that is not there"
    if "Device or resource busy" in reason:
        return f"the sound device is busy ({reason}): another program holds it"
    return reason[:200]


_alsa_handler = None  # keeps the ctypes callback alive


def quiet_alsa() -> None:
    """ALSA prints its errors (``ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM default`` and ten more)
    straight to the process's stderr, which is the journal: in-process (simpleaudio) its handler is set to one
    that says nothing. The reason still reaches the caller as AudioError, in one line."""
    global _alsa_handler
    if _alsa_handler is not None:
        return
    try:
        import ctypes  # noqa: PLC0415
        import ctypes.util  # noqa: PLC0415

        lib = ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
        handler_t = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
        _alsa_handler = handler_t(lambda *args: None)
        lib.snd_lib_error_set_handler(_alsa_handler)
    except (OSError, AttributeError) as e:
        log.debug("ALSA error handler not set: %s", e)


def silence_wav(ms: int = 20, rate: int = 16000) -> Path:
    """A short silent WAV (for the audio check: the same path as a chime, nothing audible)."""
    import tempfile  # noqa: PLC0415

    path = Path(tempfile.gettempdir()) / f"store-agent-silence-{ms}ms.wav"
    if not path.exists():
        tmp = path.with_suffix(f".{__import__('os').getpid()}.tmp")
        tmp.write_bytes(_wav_bytes(b"\0\0" * (rate * ms // 1000), 1, 2, rate))
        tmp.replace(path)
    return path


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

            quiet_alsa()
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
                    errors.append(f"aplay: {one_line(r.stderr.decode(errors='replace')) or f'exit {r.returncode}'}")
                except subprocess.TimeoutExpired:
                    errors.append(f"aplay: no end after {self.timeout_s}s")
                except OSError as e:
                    errors.append(f"aplay: {e}")
        # one line: aplay's verdict says it all when both tried (simpleaudio fails the same way, more verbosely)
        tried_aplay = [e for e in errors if e.startswith("aplay: ")]
        raise AudioError(tried_aplay[-1] if tried_aplay and len(errors) > 1 else "; ".join(errors))

    def check(self) -> str:
        """Play 20 ms of silence down the same path as a chime: the backend that works, else AudioError
        with the one-line reason. The one truth about audio for ``status`` and ``doctor``."""
        return self.play(silence_wav(), 1.0)


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
