import subprocess
import sys

import pytest

from agent.config import ConfigError, load_config, parse_config
from conftest import DATA, ROOT
from test_filecheck import with_real_files


def test_sample_config_loads():
    cfg = load_config(DATA / "examples" / "config.toml")
    assert cfg.store_id == "cq-0231"
    assert cfg.client_id == "store-agent-cq-0231"
    assert [p.name for p in cfg.printers] == ["counter", "backroom"]
    counter, backroom = cfg.printers
    assert (counter.connection, counter.vendor_id, counter.product_id, counter.columns) == ("usb", 0x0416, 0x5011, 48)
    assert (backroom.connection, backroom.host, backroom.port, backroom.role, backroom.columns) == ("network", "192.168.10.50", 9100, "backup", 32)
    assert cfg.mqtt.tls and cfg.mqtt.password_file == "/etc/store-agent/mqtt.pass"
    assert cfg.escalation.printer_fault_after_s == 120
    assert cfg.mqtt.session_expiry_s == 7 * 86400


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"store_id": "a", "colour": 1}, "colour: unknown key"),
        ({"store_id": "a", "mqtt": {"hots": "x"}}, "mqtt.hots: unknown key"),
        ({"store_id": "a", "printers": [{"name": "p", "connection": "network", "host": "h", "hsot": 1}]}, "printers[0].hsot: unknown key"),
        ({"store_id": "a", "printers": [{"name": "p", "connection": "bluetooth"}]}, "printers[0]"),
        ({"store_id": "a", "printers": [{"name": "p", "connection": "network", "host": "h", "paper_width_mm": 76}]}, "printers[0].paper_width_mm"),
        ({"store_id": "a b"}, "store_id"),
        ({}, "store_id: required key is missing"),
        ({"store_id": "a"}, "printers: required key is missing"),
        ({"store_id": "a", "printers": []}, "printers: List should have at least 1 item"),
        ({"store_id": "a", "mqtt": {"port": 0}}, "mqtt.port"),
        ({"store_id": "a", "mqtt": {"password": "x", "password_file": "/f"}}, "either password or password_file"),
        ({"store_id": "a", "health": {"printer_poll_s": "fast"}}, "health.printer_poll_s"),
        ({"store_id": "a", "printers": [{"name": "p", "connection": "usb"}]}, "printers[0].vendor_id: required key is missing"),
        ({"store_id": "a", "printers": [{"name": "p", "connection": "virtual"}, {"name": "p", "connection": "virtual"}]}, "unique"),
    ],
)
def test_bad_config_names_the_key(data, expected):
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert expected in str(e.value)


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("store_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_env_var_names_the_config(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text('store_id = "env-1"\n[[printers]]\nname = "v"\nconnection = "virtual"\n')
    monkeypatch.setenv("STORE_AGENT_CONFIG", str(f))
    assert load_config(None).store_id == "env-1"


def test_cli_config_check_exit_codes(tmp_path):
    good = DATA / "examples" / "config.toml"
    bad = tmp_path / "bad.toml"
    bad.write_text('store_id = "x"\n[mqtt]\nhots = "y"\n[[printers]]\nname = "v"\nconnection = "virtual"\n')
    run = lambda *a: subprocess.run([sys.executable, "-m", "agent.cli", *a], capture_output=True, text=True, cwd=ROOT)
    ok = run("config", "check", str(with_real_files(good, tmp_path)))
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr
    missing = run("config", "check", str(good))  # the shipped example names files this machine does not have
    assert missing.returncode == 2 and "mqtt.ca_file: /etc/store-agent/ca.pem: does not exist" in missing.stderr
    no = run("config", "check", str(bad))
    assert no.returncode == 2 and "mqtt.hots: unknown key" in no.stderr
    j = run("config", "check", "--json", str(bad))
    assert j.returncode == 2 and '"ok": false' in j.stdout
    r = run("run", "--config", str(bad))
    assert r.returncode == 2 and "mqtt.hots" in r.stderr


def test_shipped_example_config_loads():
    cfg = load_config(ROOT / "deploy" / "config.example.toml")
    assert cfg.store_id == "cq-0231" and cfg.printers[0].connection == "usb"
