"""Sound and light: plays chimes, repeats unacknowledged alerts, drives the LEDs.

Runs on its own thread: a slow or broken audio device never delays intake or printing. A chime
that cannot play raises an ``audio.failed`` device alert (cleared by the next good chime).

One audio truth: ``audio_state`` is ``ok`` only once sound has gone out through the device (20 ms of
silence at start, ``Chime.check``, then every chime), ``failed`` with ``audio_error`` (one line: why)
when it did not, ``disabled`` without sound; ``status``, ``doctor``, health and the alert all say it.

LEDs: the exception LED is solid while a device fault is open, blinks while store alerts wait for
acknowledgement, and is off otherwise; the status LED is steady while the broker is connected and
blinks slowly while it is not.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from drivers.audio import AudioError, Chime, find_sound
from drivers.gpio import Indicator

from .alerts import AlertBook

log = logging.getLogger(__name__)

SYNTH_WAIT_S = 3.0  # a phrase whose file is not ready by then is skipped (the engine keeps going, cached)


@dataclass(frozen=True)
class SoundSettings:
    enabled: bool = True
    volume: float = 0.8
    quiet_hours: str = ""  # "22:00-07:30": local time when chimes are muted (LEDs still show)
    quiet_volume: float = 0.0


def in_quiet_hours(spec: str, now: datetime) -> bool:
    if not spec:
        return False
    start_s, end_s = spec.split("-")
    start = int(start_s[:2]) * 60 + int(start_s[3:5])
    end = int(end_s[:2]) * 60 + int(end_s[3:5])
    minute = now.hour * 60 + now.minute
    return start <= minute < end if start <= end else (minute >= start or minute < end)


# With nothing queued, the sound thread looks at the alerts (repeats due, the LEDs, the broker link's LED)
# this often while an unacknowledged alert repeats its sound, and QUIET_LOOK_S otherwise. A sound request,
# an alert change and a change of the broker link (poke) wake it at once.
IDLE_LOOK_S = 1.0
QUIET_LOOK_S = 10.0
MAX_SOUNDS = 50  # chimes and phrases waiting to play; beyond it one is dropped (logged), never blocks the caller

class Annunciator:
    def __init__(
        self,
        alerts: AlertBook,
        *,
        chime: Optional[Chime],
        settings: SoundSettings,
        exception_led: Optional[Indicator] = None,
        status_led: Optional[Indicator] = None,
        link_up: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        local_now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.alerts = alerts
        self.chime = chime
        self.settings = settings
        self.exception_led = exception_led
        self.status_led = status_led
        self.link_up = link_up
        self.clock = clock
        self.local_now = local_now
        self.silenced_until = 0.0
        self.played: list[tuple[float, str, str]] = []  # (time, sound, backend or error) — the last 100
        self.audio_state = "unchecked" if chime else "disabled"
        self.audio_error = ""  # one line: why the last chime (or the check) did not play
        self.audio_since = clock()
        self.voice_state, self.voice_error = "unchecked", ""  # spoken announcements (agent/voice.py)
        self._synth: Optional[ThreadPoolExecutor] = None
        self._sounds: queue.Queue[tuple[str, Optional[Future], Optional[Callable[[], Path]]]] = queue.Queue(maxsize=MAX_SOUNDS + 1)
        self._poke_lock = threading.Lock()
        self._led_lock = threading.Lock()  # the alerts' look and a technician's LED test take turns
        self._led_tests = 0  # LED tests under way (each sets the patterns itself meanwhile); under _led_lock
        self._led_errors: dict[str, str] = {}  # LED -> its last error, logged once; the sound thread's
        self._poke_pending = False  # a poke ("") is in the queue
        self._last_played: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._beat = time.monotonic()
        self._waiting = False  # blocked on the queue: nothing it runs can hang, so it counts as alive
        self._repeats = False  # an open, unacknowledged alert repeats its sound: look every IDLE_LOOK_S

    # -- control
    def start(self) -> None:
        check = getattr(self.chime, "check", None)  # a Chime without one (the demo's) keeps its state
        if check is not None:
            try:
                check()
                self._audio_ok()
            except AudioError as e:
                self._audio_failed(f"sound check: {e}")
            except Exception as e:  # noqa: BLE001 - never stops the agent from starting
                self._audio_failed(f"sound check: {type(e).__name__}: {e}")
        self._thread = threading.Thread(target=self._run, name="annunciator", daemon=True)
        self.poke()  # the LEDs show the state at once, not after the first idle wait
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.poke()  # ends the idle wait
        if self._thread:
            self._thread.join(5)
        if self._synth is not None:
            self._synth.shutdown(wait=False, cancel_futures=True)

    def request(self, sound: str, done: Optional[Future] = None, wav: Optional[Callable[[], Path]] = None) -> None:
        """Queue a chime by name, or (``wav``) a spoken phrase: ``wav()`` makes its file on this thread,
        after what is queued before it (so a phrase follows its chime); ``sound`` then only names it."""
        if sound == "none":
            return
        if not self.settings.enabled or self.chime is None:  # nothing can sound: the sound thread is not woken
            outcome = self._muted(sound)
            if done is not None:
                done.set_result(outcome)
            return
        try:
            if self._sounds.qsize() - (1 if self._poke_pending else 0) >= MAX_SOUNDS:  # (the last slot is the poke's)
                raise queue.Full
            self._sounds.put_nowait((sound, done, wav))
        except queue.Full:
            log.warning("chime queue full; %s dropped", sound)
            if done is not None:
                done.set_result("error: the chime queue is full")

    def speak(self, phrase: str, make_wav: Callable[[], Path], done: Optional[Future] = None) -> None:
        """Say ``phrase`` after the chimes queued before it (quiet hours, volume and silence apply)."""
        self.request(f"voice: {phrase}", done, make_wav)

    def play_now(self, sound: str, timeout: float = 20.0) -> str:
        """Queue ``sound`` and wait until it played: the backend, ``muted: why``, or ``error: why``."""
        if self._thread is None or not self._thread.is_alive():
            return "error: the sound thread is not running"
        done: Future = Future()
        self.request(sound, done)
        try:
            return done.result(timeout)
        except Exception:  # noqa: BLE001 - a timeout: the sound thread is stuck on the device
            return f"error: no end of the chime within {timeout:g}s (the sound device hangs)"

    def silence(self, minutes: float) -> None:
        """Mute chimes for ``minutes``; 0 ends a silence."""
        self.silenced_until = self.clock() + minutes * 60 if minutes > 0 else 0.0

    def mute_reason(self) -> str:
        """Why a chime now would not sound ('' when it would)."""
        if not self.settings.enabled or self.chime is None:
            return "sound is disabled in the config (sound.enabled)"
        if self.clock() < self.silenced_until:
            return "chimes are silenced (store-agent silence --off ends it)"
        if in_quiet_hours(self.settings.quiet_hours, self.local_now()) and not self.settings.quiet_volume:
            return f"quiet hours {self.settings.quiet_hours} (sound.quiet_volume = 0)"
        return ""

    def led_test(self, step_s: float = 1.5, patterns: Optional[list[str]] = None) -> list[str]:
        """Cycle every LED through each pattern (or only ``patterns``) for a technician, then hand back to the alerts."""
        from drivers.gpio import PATTERNS  # noqa: PLC0415

        leds = [led for led in (self.exception_led, self.status_led) if led is not None]
        if not leds:
            return []
        with self._led_lock:  # a look at the alerts under way ends first: it cannot overwrite the first step
            self._led_tests += 1  # two technicians' tests at once: the LEDs go back to the alerts after both
        try:
            for pattern in patterns or ("on", "off", "blink", "slow_blink"):
                for led in leds:
                    led.show(pattern)
                self._stop.wait(step_s)
        finally:
            with self._led_lock:
                self._led_tests -= 1
            self.poke()  # back to what the alerts say at once
        return list(patterns) if patterns else [p for p in PATTERNS]

    @property
    def heartbeat(self) -> float:
        """When this thread last showed it was alive (the watchdog's view): now while it waits for work, else
        when its current step began (a chime or an engine that hangs makes it stale)."""
        return time.monotonic() if self._waiting else self._beat

    # -- loop
    def _run(self) -> None:
        while not self._stop.is_set():
            self._beat = time.monotonic()
            try:
                self._step()
            except Exception:  # noqa: BLE001 - this thread must not die
                log.exception("annunciator step failed")
                self._stop.wait(1.0)

    def poke(self) -> None:
        """Look at the alerts now (one was raised, cleared or acknowledged, or the broker link changed): the
        LEDs follow at once instead of at the next idle look (``QUIET_LOOK_S``, or ``IDLE_LOOK_S`` while an
        alert repeats). At most one poke waits in the queue (its one
        slot beyond ``MAX_SOUNDS``), so a burst of alert changes never crowds out a chime."""
        with self._poke_lock:
            if self._poke_pending:
                return
            self._poke_pending = True
        try:
            self._sounds.put_nowait(("", None, None))
        except queue.Full:  # cannot happen (its own slot); the thread looks at the alerts after each sound anyway
            with self._poke_lock:
                self._poke_pending = False

    def _step(self) -> None:
        self._waiting = True
        try:
            sound, done, wav = self._sounds.get(timeout=IDLE_LOOK_S if self._repeats else QUIET_LOOK_S)
        except queue.Empty:
            sound, done, wav = None, None, None
        finally:
            self._beat = time.monotonic()
            self._waiting = False
        if sound == "":
            with self._poke_lock:
                self._poke_pending = False
        if sound:
            outcome = self._play(sound, wav)
            if done is not None:
                done.set_result(outcome)
        now = self.clock()
        repeating = [a for a in self.alerts.open_alerts() if a.repeat_s and not a.acknowledged]
        self._repeats = bool(repeating)  # before any sound plays: a failing one cannot leave it stale
        for a in repeating:
            if now - self._last_played.get(a.id, a.since) >= a.repeat_s:
                self._last_played[a.id] = now
                self._play(a.sound)
        self._leds()

    def _volume(self) -> Optional[float]:
        if not self.settings.enabled or self.clock() < self.silenced_until:
            return None
        if in_quiet_hours(self.settings.quiet_hours, self.local_now()):
            return self.settings.quiet_volume or None
        return self.settings.volume

    def _voice_file(self, wav: Callable[[], Path]) -> Path:
        """Make a phrase's file on the synthesis thread, waiting at most ``SYNTH_WAIT_S``: a slow or hanging
        engine never holds up the chimes behind it (its segments are cached for the next time)."""
        if self._synth is None:
            self._synth = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voice")
        fut = self._synth.submit(wav)
        try:
            return fut.result(SYNTH_WAIT_S)
        except FutureTimeout:
            raise AudioError(f"the voice engine took more than {SYNTH_WAIT_S:g} s: this phrase is skipped") from None
        except AudioError:
            raise
        except Exception as e:  # noqa: BLE001 - a full card, an unusable cache: an answer, never a silent request
            raise AudioError(f"{type(e).__name__}: {e}") from e

    def _play(self, sound: str, wav: Optional[Callable[[], Path]] = None) -> str:
        volume = self._volume()
        if self.chime is None or volume is None:
            return self._muted(sound)
        if wav is not None:
            return self._speak(sound, wav, volume)
        try:
            backend = self.chime.play(find_sound(sound), volume)
        except AudioError as e:
            self._remember(sound, f"error: {e}")
            self._audio_failed(f"chime {sound}: {e}")
            return f"error: {e}"
        self._remember(sound, backend)
        self._audio_ok()
        return backend

    def _speak(self, label: str, wav: Callable[[], Path], volume: float) -> str:
        """A phrase: its own health (``voice_state``, alert ``audio.voice_failed``), so a broken engine is one
        alert, cleared by the next phrase that plays, never flapping with the chimes that do."""
        try:
            path = self._voice_file(wav)
        except AudioError as e:
            self._remember(label, f"error: {e}")
            self._voice_failed(str(e))
            return f"error: {e}"
        try:
            backend = self.chime.play(path, volume)  # type: ignore[union-attr]
        except AudioError as e:  # the sound device itself: the audio alert, as for a chime
            self._remember(label, f"error: {e}")
            self._audio_failed(f"{label}: {e}")
            return f"error: {e}"
        self._remember(label, backend)
        self._audio_ok()
        if self.voice_state == "failed":
            self.alerts.clear("audio:voice", "语音播报已恢复")
            log.info("voice: announcements play again")
        self.voice_state, self.voice_error = "ok", ""
        return backend

    def _voice_failed(self, why: str) -> None:
        if self.voice_state == "failed":  # one alert until a phrase plays again (the first reason stays its message)
            log.debug("voice: %s (again)", why)
            self.voice_error = why
            return
        log.error("voice: %s", why)
        self.voice_state, self.voice_error = "failed", why
        self.alerts.raise_("audio:voice", "audio.voice_failed", f"语音播报失败(提示音照常): {why}",
                           severity="warning", needs_ack=False, sound="none")

    def _audio_failed(self, why: str) -> None:
        if self.audio_state != "failed" or why != self.audio_error:
            log.error("audio: %s", why)
        if self.audio_state != "failed":
            self.audio_since = self.clock()
        self.audio_state, self.audio_error = "failed", why
        self.alerts.raise_("audio:default", "audio.failed", f"提示音无法播放: {why}", severity="critical",
                           needs_ack=False, sound="none", escalate_after_s=0)

    def _audio_ok(self) -> None:
        if self.audio_state == "failed":
            self.alerts.clear("audio:default", "提示音已恢复")
            log.info("audio: sound plays again")
        if self.audio_state != "ok":
            self.audio_since = self.clock()
        self.audio_state, self.audio_error = "ok", ""

    def _muted(self, sound: str) -> str:
        """A sound that does not play now: remembered as muted; the answer says why."""
        self._remember(sound, "muted")
        return f"muted: {self.mute_reason() or 'muted'}"

    def _remember(self, sound: str, outcome: str) -> None:
        self.played.append((self.clock(), sound, outcome))
        del self.played[:-100]

    @property
    def _led_test(self) -> bool:
        return self._led_tests > 0

    def _leds(self) -> None:
        with self._led_lock:
            if self._led_test:
                return
            self._leds_from(self.alerts.open_alerts())

    def _leds_from(self, open_: list) -> None:
        if self.exception_led is not None:
            if any(a.device_fault for a in open_):
                self._show(self.exception_led, "exception LED", "on")
            elif any(not a.device_fault and not a.acknowledged for a in open_):
                self._show(self.exception_led, "exception LED", "blink")
            else:
                self._show(self.exception_led, "exception LED", "off")
        if self.status_led is not None:
            self._show(self.status_led, "status LED", "on" if self.link_up() else "slow_blink")

    def _show(self, led: Indicator, which: str, pattern: str) -> None:
        """One LED's pattern; a failing LED is logged once per distinct error (it is tried again at each look)
        and never keeps the other LED from showing its state."""
        try:
            led.show(pattern)
        except Exception as e:  # noqa: BLE001 - a broken pin must not silence the sound thread
            text = f"{type(e).__name__}: {e}"
            if self._led_errors.get(which) != text:
                self._led_errors[which] = text
                log.warning("%s cannot show %s: %s", which, pattern, text)
        else:
            if self._led_errors.pop(which, None) is not None:
                log.info("%s works again (%s)", which, pattern)


@dataclass
class Hardware:
    chime: Optional[Chime] = None
    exception_led: Optional[Indicator] = None
    status_led: Optional[Indicator] = None
    devices: list = field(default_factory=list)  # to close at stop
    pin_factory: object = None


def build_hardware(cfg, on_press: Callable[[], object], on_hold: Callable[[], object]) -> Hardware:  # noqa: ANN001 - Config
    """The chime, the LEDs and the acknowledge button of a config (GPIO missing: logged, run without)."""
    from drivers.audio import make_chime  # noqa: PLC0415

    hw = Hardware()
    if cfg.gpio.enabled:
        from drivers.gpio import AckButton, GpioError, Led, make_pin_factory  # noqa: PLC0415

        try:
            factory = make_pin_factory(cfg.gpio.pin_factory)
            if cfg.gpio.exception_led is not None:
                hw.exception_led = Led(cfg.gpio.exception_led, factory)
            if cfg.gpio.status_led is not None:
                hw.status_led = Led(cfg.gpio.status_led, factory)
            if cfg.gpio.button is not None:
                hw.devices.append(AckButton(cfg.gpio.button, factory, on_press=on_press, on_hold=on_hold, hold_s=cfg.gpio.hold_s))
            hw.devices += [d for d in (hw.exception_led, hw.status_led) if d is not None]
            hw.pin_factory = factory
        except GpioError as e:
            log.error("GPIO unavailable, running without LEDs and button: %s", e)
    hw.chime = make_chime(cfg.sound.device) if cfg.sound.enabled else None
    return hw
