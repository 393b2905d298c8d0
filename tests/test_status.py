import pytest

from drivers.escpos_proto import dle_eot, fixed_bits_ok, interpret_status, status_bytes


def test_queries():
    assert dle_eot(1) == b"\x10\x04\x01" and dle_eot(4) == b"\x10\x04\x04"
    with pytest.raises(ValueError):
        dle_eot(5)


def test_fixed_bits():
    assert fixed_bits_ok(0x12) and fixed_bits_ok(0x7E)
    assert not fixed_bits_ok(0x00) and not fixed_bits_ok(0x13) and not fixed_bits_ok(0x92) and not fixed_bits_ok(0xFF)


@pytest.mark.parametrize("state", ["ready", "paper_low", "paper_out", "cover_open", "offline"])
def test_round_trip_of_each_state(state):
    assert interpret_status(status_bytes(state)).state == state


def test_silence_is_unreachable_never_ready():
    assert interpret_status({1: None, 2: None, 3: None, 4: None}).state == "unreachable"
    assert interpret_status({}).state == "unreachable"


def test_partial_answers_are_unknown():
    st = interpret_status({1: 0x12, 2: 0x12, 3: 0x12, 4: None})
    assert st.state == "unknown" and not st.printable


def test_garbage_is_unknown():
    st = interpret_status({1: 0x00, 2: 0x12, 3: 0x12, 4: 0x12})
    assert st.state == "unknown" and "malformed" in st.detail


def test_paper_end_bits_in_n2_or_n4():
    assert interpret_status({1: 0x1A, 2: 0x32, 3: 0x12, 4: 0x12}).state == "paper_out"
    assert interpret_status({1: 0x12, 2: 0x12, 3: 0x12, 4: 0x72}).state == "paper_out"


def test_cutter_error_is_offline_with_cause():
    st = interpret_status({1: 0x1A, 2: 0x52, 3: 0x1A, 4: 0x12})
    assert st.state == "offline" and "autocutter" in st.detail
