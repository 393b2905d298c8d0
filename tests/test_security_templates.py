"""Issue 19, findings 1 and 5: templates get plain data, an allow-list sandbox, and untrusted ones run
in a child process under hard limits. Each test here failed on the code before the fix."""

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import templating
from agent.messages import OrderEvent
from agent.preview import preview_text
from agent.templating import SandboxProcess, TemplateFailure
from agent.tickets import TicketRenderer
from conftest import DATA, ROOT, example

STORE = dict(store_name="示例大药房(解放碑店)", store_phone="023-6000-0231")
PICKLE = """{% set _ = order.flags.parse_raw("cos\\nsystem\\n(S'touch CANARY'\\ntR.", proto='pickle', allow_pickle=True) %}{{ order.id }}\n@cut\n"""


def corpus() -> list[str]:
    text = (DATA / "jinja_sandbox_escapes.txt").read_text(encoding="utf-8")
    blocks = [b.strip("\n") for b in text.split("\n%%\n")]
    return [b for b in ("\n".join(l for l in b.splitlines() if not l.startswith("#")) for b in blocks) if b.strip()]


def the_order() -> OrderEvent:
    return OrderEvent.model_validate_json(json.dumps(example("order-created-meituan.json")))


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture
def fast_limits(monkeypatch):
    monkeypatch.setattr(templating, "MAX_RENDER_S", 0.5)


def test_templates_get_plain_data_only():
    r = TicketRenderer(**STORE)
    data, spec = r.data(the_order(), columns=48, reprint=False)

    def walk(v):
        assert type(v) in (dict, list, str, int, float, bool, type(None)), type(v)
        for x in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()):
            walk(x)

    walk(data)
    walk(spec)


def test_the_pickle_payload_of_the_review_runs_nothing(tmp_path):
    """Finding 1: order.flags.parse_raw(..., proto='pickle') ran pickle.loads -> os.system in the agent."""
    canary = tmp_path / "pwned"
    alerts = []
    r = TicketRenderer(**STORE, template_overrides={"receipt": PICKLE.replace("CANARY", str(canary))},
                       on_fallback=lambda n, e: alerts.append((n, e)))
    text = preview_text(r.render("receipt", the_order(), columns=48))
    time.sleep(0.2)
    assert not canary.exists()
    assert "布洛芬混悬液" in text  # the built-in receipt printed the order
    assert alerts and alerts[0][0] == "receipt" and "parse_raw" in alerts[0][1], alerts  # the data has no methods
    r.close()


def test_the_same_through_a_template_directory(tmp_path):
    canary = tmp_path / "pwned"
    d = tmp_path / "templates"
    d.mkdir()
    (d / "warm_tip.j2").write_text(PICKLE.replace("CANARY", str(canary)), encoding="utf-8")
    (d / "receipt.j2").write_text("{{ ev.parse_file('/etc/hostname') }}\n@cut\n", encoding="utf-8")
    alerts = []
    r = TicketRenderer(**STORE, template_dir=str(d), on_fallback=lambda n, e: alerts.append(n))
    assert "温馨提示" in preview_text(r.render("warm_tip", the_order(), columns=48))
    assert "布洛芬混悬液" in preview_text(r.render("receipt", the_order(), columns=48))
    assert not canary.exists() and alerts == ["warm_tip", "receipt"]
    r.close()


def test_the_escape_corpus_fails_closed(tmp_path, fast_limits):
    """Every known payload fails (the caller then prints the built-in), runs nothing, reads nothing,
    and costs the agent's own process no memory."""
    canary = tmp_path / "pwned"
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-42")
    payloads = [p.replace("CANARY", str(canary)).replace("SECRET_FILE", str(secret)) for p in corpus()]
    assert len(payloads) >= 60
    sandbox = SandboxProcess({f"p{i}": p for i, p in enumerate(payloads)})
    r = TicketRenderer(**STORE)
    data, spec = r.data(the_order(), columns=48, reprint=False)
    rss = maxrss_mb()
    failures = {}
    for i, p in enumerate(payloads):
        try:
            out = sandbox.render(f"p{i}", data, spec)
        except TemplateFailure as e:
            failures[i] = str(e)
            assert "TOP-SECRET" not in str(e)
            continue
        leaks = [m for m in ("<class", "<function", "<module", "<built-in", "<bound", "TOP-SECRET", "root:") if m in out]
        assert not leaks, f"payload {i} rendered: {p!r} -> {out[:200]!r}"  # harmless output only
    sandbox.close()
    assert not canary.exists()
    assert maxrss_mb() - rss < 100, "an untrusted template cost the agent's process memory"
    assert len(failures) >= len(payloads) - 2, [p for i, p in enumerate(payloads) if i not in failures]


def test_a_huge_string_is_stopped_by_the_child_process_limits(fast_limits):
    """Finding 5: ('a'*1500000000)|length took 5 s and 1.45 GiB in the agent."""
    rss = maxrss_mb()
    for source, why in (("{{ ('a'*1500000000)|length }}", "SecurityError"),  # refused before it is built
                        ("{{ 'a' | center(1500000000) | length }}", "out of memory"),  # RLIMIT_AS in the child
                        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took longer")):
        alerts = []
        r = TicketRenderer(**STORE, template_overrides={"receipt": source + "\n@cut\n"},
                           on_fallback=lambda n, e: alerts.append(e))
        t0 = time.monotonic()
        text = preview_text(r.render("receipt", the_order(), columns=48))
        assert time.monotonic() - t0 < 4.0
        assert "布洛芬混悬液" in text and alerts and why in alerts[0], alerts
        r.close()
    assert maxrss_mb() - rss < 100


def test_warm_compiles_nothing_untrusted_at_boot(tmp_path):
    """Finding 5: warm() compiled remote templates in the agent at boot, where Jinja folds constants
    without limits: a big enough one OOM-killed the agent at every start. Measured in a fresh process."""
    code = f"""
import resource, sys, time
sys.path.insert(0, {str(ROOT)!r})
from agent.tickets import TicketRenderer
src = "{{{{ 'a' | center(400000000) | length }}}}"
t0 = time.monotonic()
r = TicketRenderer(store_name="s", store_phone="", template_overrides={{"receipt": src, "warm_tip": src}})
r.warm()
# VmHWM, not ru_maxrss: Linux folds the forking parent's RSS (pytest's) into ru_maxrss at exec
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(time.monotonic() - t0, hwm_kb // 1024)
r.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    seconds, rss_mb = out.stdout.split()
    assert float(seconds) < 2.0 and int(rss_mb) < 200, out.stdout


def test_a_template_killed_three_times_is_skipped_until_the_templates_change(fast_limits):
    alerts = []
    r = TicketRenderer(**STORE, template_overrides={"receipt": "{% for i in range(100000) %}{% for j in range(100000) %}"
                                                                "{% endfor %}{% endfor %}"},
                       on_fallback=lambda n, e: alerts.append(e))
    for _ in range(3):
        r.render("receipt", the_order(), columns=48)
    t0 = time.monotonic()
    assert "布洛芬混悬液" in preview_text(r.render("receipt", the_order(), columns=48))
    assert time.monotonic() - t0 < 0.2 and "stopped 3 times" in alerts[-1]
    r.close()


def test_custom_templates_still_work_with_plain_data(tmp_path):
    """What docs/TEMPLATES.md shows a custom template doing keeps working in the child."""
    source = """@center,bold,big| {{ order.platform | platform_name }} #{{ order.seq }}
{{ t.order_no }}:{{ order.id }} {{ order.placed_at | hm("%m-%d %H:%M") }}
{% for it in order.items %}
@row {{ it.name | upper }} | x{{ it.qty }} {{ (it.price * it.qty) | money }}
{% endfor %}
{% for k, v in detail | items %}{{ k }}={{ v }}{% endfor %}
{{ detail.get("nope", "-") }} {{ order.customer.phone | mask_phone }} {{ text("title") }}
{% set ns = namespace(n=0) %}{% for it in order.items %}{% set ns.n = ns.n + it.qty %}{% endfor %}
total {{ ns.n }} {{ order.id.startswith("MT") }} {{ order.items | length }} {{ loop_ok | default("ok") }}
@cut
"""
    alerts = []
    r = TicketRenderer(**STORE, template_overrides={"receipt": source}, on_fallback=lambda n, e: alerts.append(e))
    text = preview_text(r.render("receipt", the_order(), columns=48))
    assert not alerts, alerts
    assert "美团" in text and "MT-8812345678901 11-22 11:31" in text and "¥" in text and "total" in text and "True" in text
    r.close()
