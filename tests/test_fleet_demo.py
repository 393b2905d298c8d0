"""store-fleet demo (issue 16): five real agents, a fault, a staged push, one halted at the store with an old key,
a rollback; and the console script is installed beside store-agent."""

import subprocess
import sys
from pathlib import Path

from fleet.demo import run


def test_the_demo_shows_faults_a_staged_push_a_halt_and_a_rollback(tmp_path):
    out = []
    assert run(out.append, workdir=tmp_path) == 0
    text = "\n".join(out)
    assert "5 stores: 5 ok" in text
    assert "5 stores: 3 ok, 1 stopped, 1 printer faults" in text
    assert "cq-0231: v1 applied" in text and "wave 1: good (2 good" in text and "  -> done" in text
    assert "halted at cq-0235: rejected: signature: signed with key" in text and "2 store(s) not sent" in text
    assert "rollback #3" in text and "cq-0233: v2 applied" in text
    assert text.strip().endswith("5 stores: 3 ok, 1 stopped, 1 config errors")


def test_store_fleet_is_installed_beside_store_agent():
    here = Path(sys.executable).parent
    assert (here / "store-agent").exists() and (here / "store-fleet").exists(), "./install.sh --dev installs both"
    r = subprocess.run([str(here / "store-fleet"), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for cmd in ("status", "store", "push", "rollback", "request", "keygen", "serve", "watch", "demo"):
        assert f"  {cmd} " in r.stdout, cmd


def test_the_config_example_in_fleet_md_is_valid():
    import re  # noqa: PLC0415
    import tomllib  # noqa: PLC0415

    from fleet import config as fconfig  # noqa: PLC0415

    text = (Path(__file__).resolve().parent.parent / "docs" / "FLEET.md").read_text(encoding="utf-8")
    cfg = fconfig.parse(tomllib.loads(re.search(r"```toml\n(state_dir.*?)```", text, re.S).group(1)))
    assert cfg.mqtt.tls and cfg.signing.key_file and cfg.stores["cq-0231"].region == "渝中"
