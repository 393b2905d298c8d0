"""LEDs and the button on gpiozero's MockFactory: asserted on pin state histories."""

import threading
import time

import pytest

from drivers.gpio import AckButton, Led, make_pin_factory
from conftest import wait_until


def test_led_patterns_on_mock_pins():
    f = make_pin_factory("mock")
    led = Led(17, f)
    pin = f.pin(17)
    led.show("on")
    assert pin.state
    led.show("off")
    assert not pin.state
    pin.clear_states()
    led.show("blink")
    time.sleep(1.1)
    led.show("off")
    changes = [s.state for s in pin.states]
    assert changes.count(True) >= 2 and changes.count(False) >= 2  # it really blinked
    led.close()


def test_led_changed_from_several_threads_and_closed_leaves_no_blinking_behind():
    """The sound thread, a technician's led test and the agent's stop use one LED at once. gpiozero's blink()
    from two threads raised (one stopped the other's blink thread before it started) or left a blink thread
    nobody owned, writing to the pin after close (seen in CI as an unhandled thread exception)."""
    from gpiozero import threads as gpio_threads  # noqa: PLC0415

    f = make_pin_factory("mock")
    led = Led(17, f)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def change(i):  # noqa: ANN001, ANN202
        start.wait()
        try:
            for k in range(300):
                led.show(("blink", "slow_blink", "on", "blink")[(k + i) % 4])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=change, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    led.close()
    led.show("blink")  # after close: ignored, no thread started
    assert [t for t in list(gpio_threads._THREADS) if t.is_alive()] == []  # noqa: SLF001


def test_a_failed_led_change_shows_no_pattern_and_is_tried_again(monkeypatch):
    """gpiozero stops the old blink before it starts the new pattern: if that fails, the LED shows nothing, so
    the LED must not keep the old pattern's name (a later wish for it would be skipped, the LED stuck dark)."""
    f = make_pin_factory("mock")
    led = Led(17, f)
    led.show("blink")

    def broken(**kw):  # noqa: ANN003, ANN202
        raise RuntimeError("pin busy")

    monkeypatch.setattr(led._led, "on", lambda: broken())  # noqa: SLF001
    with pytest.raises(RuntimeError):
        led.show("on")
    assert led.pattern == ""
    monkeypatch.undo()
    led.show("blink")  # asked again: shown, not skipped
    assert led.pattern == "blink" and led._led._blink_thread is not None  # noqa: SLF001
    led.close()


def test_a_failing_led_is_logged_once_and_the_other_led_still_shows(caplog):
    from types import SimpleNamespace  # noqa: PLC0415

    from agent.annunciator import Annunciator, SoundSettings  # noqa: PLC0415

    class BrokenLed:
        pattern = ""

        def show(self, pattern):  # noqa: ANN001, ANN202
            raise OSError("GPIO17 busy")

    f = make_pin_factory("mock")
    status = Led(18, f)
    ann = Annunciator(SimpleNamespace(open_alerts=lambda: []), chime=None,  # type: ignore[arg-type]
                      settings=SoundSettings(False, 0.8, "", 0.0), exception_led=BrokenLed(), status_led=status,
                      link_up=lambda: False)
    with caplog.at_level("WARNING", logger="agent.annunciator"):
        for _ in range(5):
            ann._leds()  # noqa: SLF001
    assert status.pattern == "slow_blink"  # the broken exception LED did not keep the status LED dark
    said = [r.getMessage() for r in caplog.records if "exception LED" in r.getMessage()]
    assert said == ["exception LED cannot show off: OSError: GPIO17 busy"], said
    status.close()


def test_a_look_at_the_alerts_under_way_cannot_overwrite_the_led_tests_first_step():
    """The sound thread past its 'no LED test' check while a technician's test starts: it used to finish its
    look after the test's first step and leave the status LED showing the link, not the step."""
    from types import SimpleNamespace  # noqa: PLC0415

    from agent.annunciator import Annunciator, SoundSettings  # noqa: PLC0415

    inside, release = threading.Event(), threading.Event()

    class HeldLed:  # the exception LED: the alerts' look holds in it
        pattern = "off"

        def show(self, pattern):  # noqa: ANN001, ANN202
            if threading.current_thread().name == "look":
                inside.set()
                release.wait(5)
            self.pattern = pattern

    f = make_pin_factory("mock")
    status = Led(18, f)
    ann = Annunciator(SimpleNamespace(open_alerts=lambda: []), chime=None,  # type: ignore[arg-type]
                      settings=SoundSettings(False, 0.8, "", 0.0), exception_led=HeldLed(), status_led=status,
                      link_up=lambda: False)
    look = threading.Thread(target=ann._leds, name="look")  # noqa: SLF001
    look.start()
    assert inside.wait(5)
    tester = threading.Thread(target=ann.led_test, kwargs={"step_s": 3.0, "patterns": ["on"]})
    tester.start()
    time.sleep(0.2)
    release.set()
    look.join(5)
    # within the test's three-second step: the step, not the link's slow blink (it was shown last before the fix)
    assert wait_until(lambda: status.pattern == "on" and ann._led_test, 2)  # noqa: SLF001
    time.sleep(0.3)
    assert status.pattern == "on" and ann._led_test  # noqa: SLF001
    tester.join(10)
    status.close()


def test_two_led_tests_at_once_hand_back_to_the_alerts_only_after_both():
    from types import SimpleNamespace  # noqa: PLC0415

    from agent.annunciator import Annunciator, SoundSettings  # noqa: PLC0415

    f = make_pin_factory("mock")
    status = Led(18, f)
    ann = Annunciator(SimpleNamespace(open_alerts=lambda: []), chime=None,  # type: ignore[arg-type]
                      settings=SoundSettings(False, 0.8, "", 0.0), status_led=status, link_up=lambda: False)
    long = threading.Thread(target=ann.led_test, kwargs={"step_s": 3.0, "patterns": ["blink"]})
    long.start()
    assert wait_until(lambda: status.pattern == "blink", 2)
    ann.led_test(step_s=0.1, patterns=["on"])  # a second technician's short test ends first
    ann._leds()  # noqa: SLF001 - a look at the alerts now must leave the LEDs to the test still running
    assert status.pattern == "on"
    long.join(10)
    ann._leds()  # noqa: SLF001
    assert status.pattern == "slow_blink"  # both ended: the alerts (here: no broker) show again
    status.close()


def test_button_press_and_hold():
    f = make_pin_factory("mock")
    presses, holds = [], []
    btn = AckButton(27, f, on_press=lambda: presses.append(1), on_hold=lambda: holds.append(1), hold_s=0.3)
    pin = f.pin(27)
    pin.drive_low()
    time.sleep(0.05)
    pin.drive_high()
    assert wait_until(lambda: presses == [1], 2)
    pin.drive_low()
    assert wait_until(lambda: holds == [1], 2)
    pin.drive_high()
    time.sleep(0.1)
    assert presses == [1]  # a long press is not also a short press
    btn.close()


def test_button_handler_errors_do_not_escape():
    f = make_pin_factory("mock")

    def boom():
        raise RuntimeError("handler bug")

    btn = AckButton(22, f, on_press=boom, on_hold=boom, hold_s=0.2)
    pin = f.pin(22)
    pin.drive_low()
    time.sleep(0.05)
    pin.drive_high()
    time.sleep(0.1)
    pin.drive_low()
    time.sleep(0.05)
    pin.drive_high()
    btn.close()
