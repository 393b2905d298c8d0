"""The independent security review of the issue-19 fixes: each finding as a test (real parts where
the finding is end to end: the dev broker, a running agent, the virtual printer)."""

import json
import subprocess
import sys

import pytest

from agent.config import parse_config
from agent.notify import md_text
from agent.remote import RemoteConfig
from agent.templating import MAX_TICKET_LINES, TemplateFailure, parse_markup
from conftest import ROOT, agent_config, order, wait_until
from test_remote_config import set_config, wait_state


def cfg(tmp_path, **over):
    return parse_config(agent_config(tmp_path / "state", 1883, 9100, "sec-1", **over))


def msg(version, overlay):
    return json.dumps({"v": 1, "version": version, "config": overlay}).encode()


# 1. image printers: a long ticket cost its whole page as one image in the agent's memory
def test_1_a_ticket_longer_than_the_bound_is_refused_and_image_mode_draws_in_strips():
    with pytest.raises(TemplateFailure, match="longer than"):
        parse_markup("receipt", "@feed 10\n" * 300 + "@cut\n", 48)
    # in a fresh process, its own peak (VmHWM): the longest ticket allowed, drawn in image mode
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from agent.preview import encode\nfrom agent.templating import parse_markup, MAX_TICKET_LINES\n"
            "base = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "doc = parse_markup('receipt', '行\\n' * (MAX_TICKET_LINES - 5) + '@cut\\n', 48)\n"
            "data = encode(doc, render='image')\n"
            "peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "print(data.count(b'\\x1dv0'), (peak - base) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    strips, grown_mb = map(int, out.stdout.split())
    assert strips >= (MAX_TICKET_LINES - 5) // 32 and grown_mb < 60, (strips, grown_mb)


# 2. QR / barcode data the printer commands cannot hold: a template failure (fallback + alert), not a failed receipt
@pytest.mark.parametrize("line", ["@qr " + "x" * 800, "@barcode " + "1" * 254, "@barcode A\x1bp\x00B", "@barcode {A"])
def test_2_qr_and_barcode_data_are_checked_when_the_ticket_is_parsed(line):
    with pytest.raises(TemplateFailure):
        parse_markup("receipt", line + "\n@cut\n", 48)
    assert parse_markup("receipt", "@barcode MT-8812345678901\n@qr " + "x" * 700 + "\n", 48)


# 3 and 5. timers, repeats and retries from HQ within sane bounds (the file may go lower)
@pytest.mark.parametrize("overlay, key", [
    ({"timers": {"summary_every_s": 1}}, "timers.summary_every_s"),
    ({"timers": {"check_s": 1}}, "timers.check_s"),
    ({"rules": {"stock.short": {"repeat_s": 1}}}, "rules.stock.short.repeat_s"),
    ({"print": {"retry_s": 0.1}}, "print.retry_s"),
    ({"health": {"publish_s": 1}}, "health.publish_s"),
])
def test_3_and_5_remote_values_that_would_print_chime_or_spin_every_second_are_refused(tmp_path, overlay, key):
    rc = RemoteConfig(cfg(tmp_path))
    d = rc.propose(msg(1, overlay), rc.base)
    assert d.kind == "refused" and key in d.message and "when set remotely" in d.message
    assert rc.propose(msg(1, {"timers": {"summary_every_s": 0, "check_s": 60}}), rc.base).kind == "apply"


def test_5_the_file_cannot_make_the_print_thread_spin(tmp_path):
    from agent.config import ConfigError
    with pytest.raises(ConfigError, match="retry_s"):
        cfg(tmp_path, print={"retry_s": 1e-9})


# 6. HQ could remove the file's printers
def test_6_a_printers_overlay_changes_printers_by_name_and_removes_none(tmp_path):
    base = cfg(tmp_path, printers=[
        {"name": "counter", "connection": "network", "host": "127.0.0.1", "port": 9100},
        {"name": "backup", "connection": "network", "host": "127.0.0.1", "port": 9101, "role": "backup"}])
    rc = RemoteConfig(base)
    d = rc.propose(msg(1, {"printers": [{"name": "backup", "render": "image"}]}), base)
    assert d.kind == "apply"
    assert [(p.name, p.render) for p in d.cfg.printers] == [("counter", "text"), ("backup", "image")]


# 7. order data reached the info department's markdown unescaped
def test_7_order_data_in_the_group_chat_is_plain_text():
    out = md_text("缺货 ![x](http://evil/p.png) [点我](http://evil) <b>\n### 标题")
    assert "](" not in out and "![" not in out and "<b>" not in out and "\n" not in out


# 4. a config/set flood: only the newest waiting one is kept (each replaces the whole overlay)
def test_4_a_flood_of_config_sets_keeps_only_the_newest_and_orders_print(broker, vprinter, make_agent, hq_factory, store_id):
    hq = hq_factory(broker.port, store_id)
    agent = make_agent(broker.port, vprinter.port, store_id)
    wait_state(hq, lambda s: s["version"] == 0)
    slow = "{{ order.id" + "|lower" * 15000 + " }}"  # slow to check (about 100 KB each), under the size limit
    big = {"templates": {"custom": {f"t{i}": slow for i in range(8)}}}
    for v in range(1, 41):
        set_config(hq, v, dict(big, store={"name": f"店{v}"}))
    set_config(hq, 41, {"store": {"name": "最后"}})
    hq.publish(order(1, "flood"))
    assert wait_until(lambda: hq.final().get("evt-flood00001"), 20)
    wait_state(hq, lambda s: s["version"] == 41, 60)
    assert agent.desk.superseded > 0 and agent.cfg.store.name == "最后"
