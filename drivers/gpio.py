"""LEDs and the acknowledge button through gpiozero (optional hardware).

Each agent gets its own pin factory (no module-level device state), so tests run several with
gpiozero's ``MockFactory``. On a machine without GPIO, pass ``factory="mock"``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Optional, Protocol

log = logging.getLogger(__name__)

# pattern name -> (on seconds, off seconds); None = steady
PATTERNS: dict[str, Optional[tuple[float, float]]] = {
    "off": None,
    "on": None,
    "blink": (0.25, 0.25),
    "slow_blink": (1.0, 1.0),
}


class GpioError(Exception):
    pass


class Indicator(Protocol):
    def show(self, pattern: str) -> None: ...

    @property
    def pattern(self) -> str: ...


def make_pin_factory(kind: str = "") -> Any:
    """``mock`` (tests, laptops), ``lgpio`` (Pi 5 / bookworm) or "" for gpiozero's default choice."""
    kind = kind or os.environ.get("GPIOZERO_PIN_FACTORY", "")
    try:
        if kind == "mock":
            from gpiozero.pins.mock import MockFactory  # noqa: PLC0415

            return MockFactory()
        if kind == "lgpio":
            from gpiozero.pins.lgpio import LGPIOFactory  # noqa: PLC0415

            return LGPIOFactory()
        from gpiozero import Device  # noqa: PLC0415

        return Device._default_pin_factory()
    except Exception as e:  # noqa: BLE001 - BadPinFactory, ImportError, permission errors
        raise GpioError(f"no GPIO pin factory ({kind or 'default'}): {e}") from e


class Led:
    """One LED showing a named pattern. Thread-safe: the sound thread shows the alerts, a technician's
    ``led`` test runs on a control thread, and the agent closes it while stopping. gpiozero's ``blink`` is
    not safe to call from two threads (one call can stop the other's blink thread before it starts, or leave
    it blinking unowned, writing to the pin after ``close``); a lock makes each change whole, and a closed
    LED ignores later patterns."""

    def __init__(self, pin: int, factory: Any) -> None:
        from gpiozero import LED  # noqa: PLC0415

        try:
            self._led = LED(pin, pin_factory=factory)
        except Exception as e:  # noqa: BLE001
            raise GpioError(f"LED on GPIO{pin}: {e}") from e
        self._pattern = "off"
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pattern(self) -> str:
        return self._pattern

    def show(self, pattern: str) -> None:
        if pattern not in PATTERNS:
            raise ValueError(f"unknown LED pattern {pattern!r}")
        with self._lock:
            if pattern == self._pattern or self._closed:
                return
            timing = PATTERNS[pattern]
            self._pattern = ""  # gpiozero stops the old pattern first: if the new one fails, none is shown
            if timing:
                self._led.blink(on_time=timing[0], off_time=timing[1], background=True)
            elif pattern == "on":
                self._led.on()
            else:
                self._led.off()
            self._pattern = pattern  # after the pin took it: a failed change is tried again at the next look

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._led.close()


class AckButton:
    """Short press -> ``on_press``; held for ``hold_s`` -> ``on_hold`` (and no press on release)."""

    def __init__(self, pin: int, factory: Any, on_press: Callable[[], None], on_hold: Callable[[], None], hold_s: float = 2.0) -> None:
        from gpiozero import Button  # noqa: PLC0415

        try:
            self._btn = Button(pin, pull_up=True, bounce_time=None, hold_time=hold_s, pin_factory=factory)
        except Exception as e:  # noqa: BLE001
            raise GpioError(f"button on GPIO{pin}: {e}") from e
        self._held = False

        def held() -> None:
            self._held = True
            _safe(on_hold, "button hold")

        def released() -> None:
            if not self._held:
                _safe(on_press, "button press")
            self._held = False

        self._btn.when_held = held
        self._btn.when_released = released

    def close(self) -> None:
        self._btn.close()


def _safe(fn: Callable[[], None], what: str) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - gpiozero calls back on its own thread
        log.exception("%s handler failed", what)
