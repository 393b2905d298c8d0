"""store-fleet on the broker kit as shipped (TLS, client certificates, the kit's ACL), logged in as
``infodept``, against real agents that trust HQ's signing key (issue 16)."""

import json

from click.testing import CliRunner

from agent.app import Agent
from agent.config import parse_config
from agent.signing import generate
from conftest import agent_config, wait_until, write_toml
from fleet.cli import main
from test_broker_kit import Kit


def test_the_console_on_the_kit_broker(vprinter, tmp_path_factory, tmp_path):
    pem, pub = generate()
    key = tmp_path / "hq.key"
    key.write_bytes(pem)
    kit = Kit("cert", tmp_path_factory.mktemp("kit-fleet"), stores=("kit-a", "kit-b"))
    agents = {}
    try:
        for s in ("kit-a", "kit-b"):
            a = Agent(parse_config(agent_config(tmp_path / s, kit.port, vprinter.port, s, mqtt=kit.store_mqtt(s),
                                                security={"hq_public_key": pub})))
            a.start()
            agents[s] = a
        crt, crt_key = kit.login("infodept")["cert"]
        cfg = {"mqtt": {"host": "127.0.0.1", "port": kit.port, "tls": True, "ca_file": str(kit.ca),
                        "cert_file": str(crt), "key_file": str(crt_key)},
               "state_dir": str(tmp_path / "fleet"), "signing": {"key_file": str(key)}, "push": {"answer_s": 15}}
        path = write_toml(tmp_path / "fleet.toml", cfg)
        run = CliRunner().invoke

        def status():
            r = run(main, ["status", "--json", "--config", str(path)])
            return json.loads(r.output) if r.exit_code in (0, 1) else {"stores": []}

        assert wait_until(lambda: {s["store_id"] for s in status()["stores"] if s["config"] and s["printers"]}
                          >= {"kit-a", "kit-b"}, 30)
        # the kit's ACL as shipped lets infodept push config (signed: the agents have the console's key)
        overlay = tmp_path / "o.toml"
        overlay.write_text('[store]\nname = "解放碑店"\n', encoding="utf-8")
        r = run(main, ["push", str(overlay), "--stores", "kit-*", "--canary", "1", "--soak", "0.2", "--config", str(path)])
        assert r.exit_code == 0, r.output
        assert all(a.cfg.store.name == "解放碑店" for a in agents.values())
        r = run(main, ["request", "status", "--stores", "kit-a,kit-b", "--timeout", "10", "--config", str(path)])
        assert r.exit_code == 0 and "2 stores: 2 ok, 0 error, 0 no answer" in r.output, r.output
        # the same login without the signing key: the agents refuse, and say why
        unsigned = write_toml(tmp_path / "unsigned.toml", {**cfg, "signing": {"key_file": ""}})
        r = run(main, ["request", "status", "--stores", "kit-a", "--timeout", "10", "--config", str(unsigned)])
        assert r.exit_code == 1 and "unsigned request/status refused" in r.output, r.output
    finally:
        for a in agents.values():
            a.stop()
        kit.stop()
