"""Spoken announcements: "美团 23 号新订单", "打印机缺纸" — after the chime, through the same audio path.

A phrase comes from a template per event type (``rules.<type>.voice``) or per device fault
(``voice.phrases``): ``{platform}{seq}号新订单``. It is spoken as **segments**: each placeholder's value
and each piece of fixed text. A segment is, in this order:

1. a recorded clip from ``voice.clips_dir``: ``<segment text>.wav`` (``美团.wav``, ``号新订单.wav``,
   ``打印机缺纸.wav``); a number also as a whole (``23.wav``) or digit by digit (``2.wav`` ``3.wav``);
2. espeak-ng's Mandarin voice (``voice.voice``, default ``cmn``), its output cached by segment in
   ``<state_dir>/voice-cache`` (bounded by ``voice.cache_mb``, oldest first), so a new order speaks
   cached segments and spawns no synthesiser once its platform, number and phrase were heard before.

Clips and synthesised segments are joined when their formats match (16-bit; the same rate and channels);
otherwise the whole phrase is synthesised. Text reaches espeak-ng on its standard input (never as an
argument: no option can be smuggled in), control characters removed, at most 120 characters. A missing or
broken engine is an ``AudioError``: the annunciator raises the audio alert; printing never waits for it.
"""

from __future__ import annotations

import array
import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from drivers.audio import AudioError

log = logging.getLogger(__name__)

PLATFORM_WORDS = {"meituan": "美团", "eleme": "饿了么", "jddj": "京东到家", "youzan": "有赞", "pdd": "拼多多",
                  "web": "网店", "other": ""}
PLACEHOLDER = re.compile(r"\{([a-z_]{1,20})\}")
MAX_CHARS = 60  # a whole phrase, at most (about 15 s of speech): a fact from an event can never hold the sound thread
PHRASE_FILES = 8  # the joined phrases kept (apart from the segment cache: they never evict what they are made of)
BACKOFF_S = 60.0  # after the engine failed, it is not started again for this long (what is cached still speaks)
GAP_MS = 60  # silence between joined segments

DEFAULT_PHRASES = {  # device faults (alert code -> phrase); event types have theirs in the rules
    "printer.paper_out": "打印机缺纸",
    "printer.cover_open": "打印机盖没有关好",
    "printer.offline": "打印机故障",
    "printer.unreachable": "打印机连接不上",
    "printer.error": "打印机出错",
    "printer.uncertain": "请查看打印机是否已出单",
}


@dataclass(frozen=True)
class VoiceSettings:
    enabled: bool = True
    clips_dir: str = ""
    voice: str = "cmn"
    speed: int = 190
    cache_mb: int = 16
    phrases: Mapping[str, str] = field(default_factory=dict)
    engine: str = "espeak-ng"  # the program (tests point it elsewhere)


@dataclass(frozen=True)
class Segment:
    text: str
    number: bool = False


def clean(text: str) -> str:
    return "".join(c for c in str(text) if c.isprintable()).strip()[:MAX_CHARS]


def segments(template: str, facts: Mapping[str, Any]) -> list[Segment]:
    """The template cut at its placeholders, filled from ``facts`` (unknown ones: empty); the whole phrase
    at most ``MAX_CHARS`` characters (the rest is not said)."""
    out: list[Segment] = []
    pos = 0
    for m in PLACEHOLDER.finditer(template):
        if m.start() > pos:
            out.append(Segment(clean(template[pos : m.start()])))
        value = clean(facts.get(m.group(1), "") if facts.get(m.group(1)) is not None else "")
        out.append(Segment(value, number=value.isdigit()))
        pos = m.end()
    if pos < len(template):
        out.append(Segment(clean(template[pos:])))
    bounded: list[Segment] = []
    room = MAX_CHARS
    for seg in out:
        if seg.text and room > 0:
            text = seg.text[:room]
            bounded.append(Segment(text, number=seg.number and text == seg.text))
            room -= len(text)
    return bounded


def facts_of(ev: Any) -> dict[str, Any]:
    """What an order event's phrase may say: platform (in words), seq, order id, and the event's detail."""
    order = getattr(ev, "order", None)
    facts = {k: v for k, v in (getattr(ev, "detail", None) or {}).items() if isinstance(v, (str, int, float))}
    facts.update({"platform": PLATFORM_WORDS.get(getattr(order, "platform", None) or "", ""),
                  "seq": getattr(order, "seq", None), "order_id": getattr(order, "id", None)})
    return facts


def _read(path: Path) -> tuple[bytes, tuple[int, int, int]]:
    try:
        with wave.open(str(path), "rb") as w:
            return w.readframes(w.getnframes()), (w.getnchannels(), w.getsampwidth(), w.getframerate())
    except (OSError, EOFError, wave.Error) as e:
        raise AudioError(f"cannot read {path.name}: {e}") from e


def _write(path: Path, pcm: bytes, fmt: tuple[int, int, int]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".voice-", suffix=".wav", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f, wave.open(f, "wb") as w:
            w.setnchannels(fmt[0])
            w.setsampwidth(fmt[1])
            w.setframerate(fmt[2])
            w.writeframes(pcm)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _keep_newest(directory: Path, n: int, keep: Path) -> None:
    try:
        files = sorted(directory.glob("phrase-*.wav"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for p in files[n:]:
        if p != keep:
            try:
                p.unlink()
            except OSError:
                pass


def _trim(pcm: bytes, fmt: tuple[int, int, int], threshold: int = 300, keep_ms: int = 20) -> bytes:
    """16-bit PCM without its silent start and end (``keep_ms`` of each kept)."""
    if fmt[1] != 2 or not pcm:
        return pcm
    samples = array.array("h", pcm[: len(pcm) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    first = next((i for i, v in enumerate(samples) if abs(v) > threshold), None)
    if first is None:
        return pcm
    last = next(i for i in range(len(samples) - 1, -1, -1) if abs(samples[i]) > threshold)
    keep = fmt[0] * fmt[2] * keep_ms // 1000
    start, end = max(first - keep, 0), min(last + keep, len(samples) - 1)
    return pcm[start * 2 : (end + 1) * 2]


class Voice:
    def __init__(self, settings: VoiceSettings, cache_dir: Path) -> None:
        self.settings = settings
        self.cache = cache_dir
        self._lock = threading.Lock()
        self.synthesised = 0  # segments the engine made (a cache miss each)
        self._down_until = 0.0  # monotonic: the engine failed; not started again before this
        self._clips: dict[str, Path] = {}
        if settings.clips_dir:
            try:  # a dictionary of names, so a phrase can never name a path
                self._clips = {p.stem: p for p in Path(settings.clips_dir).iterdir() if p.suffix.lower() == ".wav" and p.is_file()}
            except OSError as e:
                log.warning("voice: clips_dir %s: %s (every phrase is synthesised)", settings.clips_dir, e.strerror or e)

    # -- one segment
    def _clip(self, seg: Segment) -> Optional[list[Path]]:
        if seg.text in self._clips:
            return [self._clips[seg.text]]
        if seg.number and all(d in self._clips for d in seg.text):
            return [self._clips[d] for d in seg.text]
        return None

    def _synth(self, text: str) -> Path:
        s = self.settings
        key = hashlib.sha256(f"{s.engine}|{s.voice}|{s.speed}|{text}".encode()).hexdigest()[:32]
        path = self.cache / f"{key}.wav"
        if path.exists():
            try:
                os.utime(path)  # recently used: pruned last
            except OSError:
                pass
            return path
        wait = self._down_until - time.monotonic()
        if wait > 0:
            raise AudioError(f"{s.engine} failed a moment ago: not tried again for {wait:.0f} s")
        self.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".synth-", suffix=".wav", dir=self.cache)
        os.close(fd)
        try:
            r = subprocess.run([s.engine, "-v", s.voice, "-s", str(s.speed), "-w", tmp, "--stdin"], input=text.encode(),
                               capture_output=True, timeout=15)
            if r.returncode != 0 or os.path.getsize(tmp) < 100:
                raise AudioError(f"{s.engine} failed ({r.returncode}): "
                                 f"{r.stderr.decode(errors='replace').strip().splitlines()[-1:] or 'no audio'}")
            pcm, fmt = _read(Path(tmp))
            _write(path, _trim(pcm, fmt), fmt)  # without the engine's own lead-in and tail of silence
        except FileNotFoundError as e:
            self._down_until = time.monotonic() + BACKOFF_S
            raise AudioError(f"{s.engine} is not installed (sudo apt install espeak-ng)") from e
        except subprocess.TimeoutExpired as e:
            self._down_until = time.monotonic() + BACKOFF_S
            raise AudioError(f"{s.engine} took more than 15 s") from e
        except AudioError:
            self._down_until = time.monotonic() + BACKOFF_S
            raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.synthesised += 1
        self._bound(keep=path)
        return path

    def _bound(self, keep: Optional[Path] = None) -> None:
        limit = self.settings.cache_mb * 1024 * 1024
        try:
            files = sorted((p.stat().st_mtime, p.stat().st_size, p) for p in self.cache.glob("*.wav"))
        except OSError:
            return
        total = sum(size for _, size, _ in files)
        for _, size, p in files:
            if total <= limit:
                break
            if p == keep:
                continue
            try:
                p.unlink()
                total -= size
            except OSError:
                pass

    # -- a phrase
    def phrase(self, template: str, facts: Mapping[str, Any]) -> str:
        return "".join(s.text for s in segments(template, facts))

    def wav(self, template: str, facts: Mapping[str, Any]) -> Path:
        """The phrase as one WAV file in the cache (``AudioError`` when it cannot be made)."""
        segs = segments(template, facts)
        if not segs:
            raise AudioError("empty phrase")
        with self._lock:
            parts: list[tuple[bytes, tuple[int, int, int]]] = []
            for seg in segs:
                clips = self._clip(seg)
                for p in clips or [self._synth(seg.text)]:
                    parts.append(_read(p))
            formats = {fmt for _, fmt in parts}
            if len(formats) != 1 or next(iter(formats))[1] != 2:  # clips and the synthesiser disagree: all synthesised
                parts = [_read(self._synth("".join(s.text for s in segs)))]
            fmt = parts[0][1]
            gap = b"\x00" * (fmt[0] * fmt[1] * fmt[2] * GAP_MS // 1000)
            pcm = gap.join(p for p, _ in parts)
            name = hashlib.sha256(pcm).hexdigest()[:32]
            phrases = self.cache / "phrases"
            out = phrases / f"phrase-{name}.wav"
            phrases.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not out.exists():
                _write(out, pcm, fmt)
                _keep_newest(phrases, PHRASE_FILES, keep=out)
            return out

    def say(self, text: str) -> Path:
        """Free text (``store-agent say``)."""
        return self.wav(clean(text).replace("{", "(").replace("}", ")"), {})


def make_voice(cfg: Any) -> Voice:  # noqa: ANN401 - a Config
    v = cfg.voice
    return Voice(VoiceSettings(enabled=v.enabled, clips_dir=v.clips_dir, voice=v.voice, speed=v.speed, cache_mb=v.cache_mb,
                               phrases={**DEFAULT_PHRASES, **v.phrases}), Path(cfg.state_dir) / "voice-cache")
