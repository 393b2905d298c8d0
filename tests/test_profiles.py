"""Layout from escpos-printer-db profiles, the probe and the config (agent/profiles.py; docs/PRINTERS.md)."""

import pytest

from agent.config import ConfigError, parse_config
from agent.profiles import choose, suggest


def printer(**over):  # noqa: ANN003, ANN201
    cfg = parse_config({"store_id": "s", "printers": [{"name": "p", "connection": "network", "host": "h", **over}]})
    return cfg.printers[0]


EPSON = {"dle_eot": True, "gs_r": True, "cutter": True, "ident": {"maker": "EPSON", "model": "TM-T88V"}}
CLONE_58 = {"dle_eot": True, "gs_r": False, "cutter": False, "ident": {"model_id": 32, "type_id": 0}}


@pytest.mark.parametrize("over, caps, want", [
    ({}, None, dict(profile="default", source="paper width", columns=48, qr="native", cut=True)),
    ({"paper_width_mm": 58}, None, dict(profile="simple", columns=32, qr="image", cut=False)),
    ({"paper_width_mm": 58}, {"cutter": True}, dict(profile="simple", cut=True)),  # the printer's word wins
    ({}, CLONE_58, dict(profile="default", cut=False)),
    ({}, EPSON, dict(profile="TM-T88V", source="probe", columns=42, qr="native", cut=True)),
    ({"profile": "ZJ-5870"}, EPSON, dict(profile="ZJ-5870", source="config", columns=32, qr="image", cut=True)),
    ({"profile": "TM-U220"}, None, dict(columns=33, qr="image", cut=False)),  # 400 dots / 12: drawn lines fit
    ({"qr": "image", "cut": "feed"}, EPSON, dict(qr="image", cut=False)),
    ({"charset": "gbk", "render": "image"}, None, dict(charset="gbk", render="image")),
])
def test_choose(over, caps, want):
    out = choose(printer(**over), caps).as_dict()
    assert {k: out[k] for k in want} == want, out


def test_suggest_names_the_reported_model_or_the_generic_one():
    assert suggest(EPSON, 80) == ("TM-T88V", "the printer reports model 'TM-T88V'")
    assert suggest({"ident": {"model": "EPSON TM-T20II  "}}, 80)[0] == "TM-T20II"
    assert suggest(CLONE_58, 58) == ("simple", "no model the database knows: generic 58 mm")


@pytest.mark.parametrize("over, error", [
    ({"profile": "XP-58"}, "printers[0].profile: unknown profile 'XP-58'; one of: AF-240"),
    ({"confirm": "maybe"}, "printers[0].confirm"),
    ({"charset": "utf8"}, "printers[0].charset"),
    ({"paper_roll_m": -1}, "printers[0].paper_roll_m"),
])
def test_bad_printer_settings_name_the_key(over, error):
    with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace("[", r"\[").replace("]", r"\]")):
        printer(**over)


def test_confirm_booleans_keep_meaning():
    assert printer(confirm=True).confirm == "gs_r" and printer(confirm=False).confirm == "none"
    assert printer().confirm == "auto"
