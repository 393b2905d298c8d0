"""Templates and the renderer: golden previews, paper == preview, limits of remote templates."""

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agent.messages import EVENT_TYPES, OrderEvent
from agent.preview import encode, preview_text, save_png
from agent.render import FALLBACK, Text, to_escpos, width_of
from agent.templating import TemplateFailure, make_environment, render_markup
from agent.tickets import TicketRenderer, documents_for
from conftest import DATA, ROOT, example, example_events, wait_until
from drivers.escpos_proto import EscPosParser

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
STORE = dict(store_name="示例大药房(解放碑店)", store_phone="023-6000-0231")
FIXED_NOW = datetime(2026, 11, 22, 4, 0, tzinfo=timezone.utc)


def event_of_type(t: str) -> OrderEvent:
    base = example("order-created-meituan.json") if t == "order.created" else example("rider-unassigned.json")
    base = dict(base, type=t, id=f"evt-{t}")
    base["detail"] = {
        "rider.unassigned": {"minutes": 15},
        "delivery.late": {"minutes": 12},
        "stock.short": {"sku": "6930000000105", "name": "阿莫西林胶囊", "wanted": 2, "available": 1},
        "order.modified": {"changes": {"地址": "渝中区民族路190号", "数量": "布洛芬 x2"}},
        "logistics.exception": {"reason": "揽收超时", "carrier": "顺丰", "waybill": "SF1234567890"},
        "rx.pending": {"stage": "开方中"},
    }.get(t, {})
    return OrderEvent.model_validate_json(json.dumps(base))


def cases():
    for ev in example_events():
        e = OrderEvent.model_validate_json(json.dumps(ev))
        for doc in documents_for(e.type):
            yield f"{ev['id']}-{doc}", doc, e
    for t in EVENT_TYPES:
        if t != "order.created" and documents_for(t):
            yield f"type-{t}", "slip", event_of_type(t)


CASES = list(cases())


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if UPDATE or not path.exists():
        if not UPDATE and os.environ.get("CI"):
            pytest.fail(f"golden file {path.name} missing: run UPDATE_GOLDEN=1 pytest tests/test_templates.py")
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{path.name} differs (UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("columns", [32, 48])
@pytest.mark.parametrize("name, doc, ev", CASES, ids=[c[0] for c in CASES])
def test_golden_previews(name, doc, ev, columns):
    d = TicketRenderer(**STORE).render(doc, ev, columns=columns)
    check_golden(f"{name}-{columns}", preview_text(d))


@pytest.mark.parametrize("columns", [32, 48])
@pytest.mark.parametrize("name, doc, ev", CASES, ids=[c[0] for c in CASES])
def test_paper_agrees_with_preview(name, doc, ev, columns):
    d = TicketRenderer(**STORE).render(doc, ev, columns=columns, reprint=True)
    jobs = []
    EscPosParser(jobs.append).feed(to_escpos(d))
    assert len(jobs) == 1 and jobs[0].cut
    from agent.render import document_lines

    printed = [(l.text, l.align, l.width, l.height, l.bold, l.kind) for l in jobs[0].lines]
    previewed = [(l.text, l.align, l.width, l.height, l.bold, l.kind) for l in document_lines(d)]
    assert printed == previewed
    for line in jobs[0].lines:  # nothing overflows the paper
        assert width_of(line.text) * line.width <= columns, line


def named_context():
    return {
        "now": FIXED_NOW,
        "printer": {"name": "counter", "connection": "network 127.0.0.1:9100", "paper_width_mm": 80},
        "orders": [{"platform": "meituan", "seq": 23, "id": "MT-8812345678901", "window_start": FIXED_NOW, "age_min": 95},
                   {"platform": "eleme", "seq": 7, "id": "EL-5021998877", "window_start": FIXED_NOW, "age_min": 130}],
        "minutes": 90,
        "version": "0.0.0-test",
    }


@pytest.mark.parametrize("columns", [32, 48])
@pytest.mark.parametrize("name", ["test_page", "prep_reminder", "unshipped_summary"])
def test_golden_other_templates(name, columns):
    d = TicketRenderer(**STORE).render_named(name, named_context(), columns=columns)
    check_golden(f"{name}-{columns}", preview_text(d))


def test_every_slip_says_what_to_do():
    r = TicketRenderer(**STORE)
    for t in EVENT_TYPES:
        if t == "order.created" or not documents_for(t):
            continue
        text = preview_text(r.render("slip", event_of_type(t), columns=48))
        assert "请这样处理" in text and "1. " in text, t
    cancelled = preview_text(r.render("slip", event_of_type("order.cancelled"), columns=48))
    assert "作废" in cancelled and "停止拣货" in cancelled
    fever = preview_text(r.render("slip", event_of_type("fever.registration"), columns=48))
    assert "身份证号:____" in fever and "手机号:____" in fever


def test_reprint_is_marked_on_every_document():
    r = TicketRenderer(**STORE)
    ev = OrderEvent.model_validate_json(json.dumps(example("order-created-meituan.json")))
    for doc in ("receipt", "warm_tip"):
        assert "补打" in preview_text(r.render(doc, ev, columns=32, reprint=True))
        assert "补打" not in preview_text(r.render(doc, ev, columns=32))


def test_wording_overrides_from_config():
    r = TicketRenderer(**STORE, texts={"warm_tip_title": "用药小贴士", "warm_tip_qr": "https://example.invalid/wx"})
    text = preview_text(r.render("warm_tip", OrderEvent.model_validate_json(json.dumps(example("order-created-meituan.json"))), columns=48))
    assert "用药小贴士" in text and "[QR:https://example.invalid/wx]" in text


def test_unknown_wording_key_is_a_config_error():
    from agent.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="texts.*unknown text key"):
        parse_config({"store_id": "a", "texts": {"no_such": "x"}})
    with pytest.raises(ConfigError, match="list of strings"):
        parse_config({"store_id": "a", "texts": {"warm_tip_lines": "one string"}})


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names, st.text(max_size=300), st.integers(1, 999), st.integers(0, 10**7), st.sampled_from([32, 48]))
def test_no_receipt_line_exceeds_the_paper(name, note, qty, price, columns):
    ev = example("order-created-meituan.json")
    ev["order"]["items"][0].update(name=name.strip() or "x", qty=qty, price=price)
    ev["order"]["note"] = note
    e = OrderEvent.model_validate_json(json.dumps(ev))
    d = TicketRenderer(**STORE).render("receipt", e, columns=columns)
    for b in d.blocks:
        if isinstance(b, Text):
            assert width_of(b.text) * b.width <= columns, b
    data = to_escpos(d)
    jobs = []
    EscPosParser(jobs.append).feed(data)
    assert len(jobs) == 1  # order data can never cut the ticket early or inject commands


def test_unprintable_characters_become_the_fallback_glyph():
    ev = example("order-created-meituan.json")
    ev["order"]["note"] = "请快点😷𠀀谢谢"
    d = TicketRenderer(**STORE).render("receipt", OrderEvent.model_validate_json(json.dumps(ev)), columns=48)
    text = to_escpos(d).decode("gb18030", errors="strict")
    assert "请快点" + FALLBACK * 2 + "谢谢" in text
    assert all(ord(c) <= 0xFFFF for c in text)


def test_data_cannot_inject_directives():
    ev = example("order-created-meituan.json")
    ev["order"]["items"][0]["name"] = "0\u20280\u2029@cut\r@qr x"  # found by hypothesis: U+2028 split the line
    ev["order"]["note"] = "x\n@cut\n@qr evil"
    ev["order"]["customer"]["address"] = "@cut"
    d = TicketRenderer(**STORE).render("receipt", OrderEvent.model_validate_json(json.dumps(ev)), columns=48)
    jobs = []
    EscPosParser(jobs.append).feed(to_escpos(d))
    assert len(jobs) == 1 and "[QR:evil]" not in jobs[0].text() and "＠cut" in jobs[0].text()


def test_png_preview_renders(tmp_path):
    ev = OrderEvent.model_validate_json(json.dumps(example("order-created-meituan.json")))
    for columns in (32, 48):
        d = TicketRenderer(**STORE).render("receipt", ev, columns=columns)
        save_png(d, tmp_path / f"r{columns}.png")
        from PIL import Image

        with Image.open(tmp_path / f"r{columns}.png") as im:
            assert im.width == columns * 12 + 24 and im.height > 600
            assert im.convert("L").getextrema()[0] == 0  # something black was drawn


def test_image_mode_prints_a_raster_not_text():
    ev = OrderEvent.model_validate_json(json.dumps(example("order-created-meituan.json")))
    d = TicketRenderer(**STORE).render("receipt", ev, columns=32)
    data = encode(d, "image")
    assert b"\x1dv0\x00" in data and "布洛芬".encode("gb18030") not in data
    jobs = []
    EscPosParser(jobs.append).feed(data)
    assert len(jobs) == 1 and jobs[0].cut and all(l.kind == "image" for l in jobs[0].lines if l.text)
    width_bytes = int.from_bytes(data[6:8], "little")
    assert width_bytes * 8 == 32 * 12  # exactly the 58 mm print width (384 dots)


def test_qr_as_image_for_printers_without_native_qr():
    ev = OrderEvent.model_validate_json(json.dumps(example("order-created-meituan.json")))
    d = TicketRenderer(**STORE).render("receipt", ev, columns=48)
    native, image = encode(d, "text", "native"), encode(d, "text", "image")
    assert b"\x1d(k" in native and b"\x1d(k" not in image and b"\x1dv0\x00" in image


# ---- remote / directory templates: sandbox and limits; the order always prints


@pytest.mark.parametrize(
    "source, error",
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "longer than"),
        ("{% for i in range(100000) %}xxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}", "exceeds"),
        ("{% if %}", "TemplateSyntaxError"),
        ("@explode now", "unknown directive"),
        ("{{ order.no_such_field.x }}", "Undefined"),
    ],
)
def test_broken_remote_template_falls_back_and_alerts(source, error):
    alerts = []
    r = TicketRenderer(**STORE, template_overrides={"receipt": source}, on_fallback=lambda n, e: alerts.append((n, e)))
    ev = OrderEvent.model_validate_json(json.dumps(example("order-created-meituan.json")))
    from agent import templating

    old = templating.MAX_RENDER_S
    templating.MAX_RENDER_S = 0.5
    try:
        d = r.render("receipt", ev, columns=48)
    finally:
        templating.MAX_RENDER_S = old
    assert "布洛芬混悬液" in preview_text(d)  # the built-in receipt printed the order
    assert alerts and alerts[0][0] == "receipt" and error in alerts[0][1], alerts
    import threading

    assert wait_until(lambda: not any(t.name == "render-receipt" and t.is_alive() for t in threading.enumerate()), 3)


def test_template_directory_overrides_by_name(tmp_path):
    (tmp_path / "warm_tip.j2").write_text("@center,big| 谢谢惠顾\n{{ store.name }}\n@cut\n", encoding="utf-8")
    r = TicketRenderer(**STORE, template_dir=str(tmp_path))
    ev = OrderEvent.model_validate_json(json.dumps(example("order-created-meituan.json")))
    assert "谢谢惠顾" in preview_text(r.render("warm_tip", ev, columns=48))
    assert "布洛芬" in preview_text(r.render("receipt", ev, columns=48))  # others stay built-in


def test_preview_cli(tmp_path):
    ev = DATA / "examples" / "order-created-meituan.json"
    run = lambda *a: subprocess.run([sys.executable, "-m", "agent.cli", "preview", *a], capture_output=True, text=True, cwd=ROOT)
    r = run(str(ev), "--width", "58")
    assert r.returncode == 0 and "布洛芬混悬液" in r.stdout and "温馨提示" in r.stdout
    r = run(str(ev), "--template", "receipt", "--out", str(tmp_path / "r.png"))
    assert r.returncode == 0 and (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    r = run(str(ev), "--template", "warm_tip", "--out", str(tmp_path / "w.txt"))
    assert "温馨提示" in (tmp_path / "w.txt").read_text(encoding="utf-8")
    bad = tmp_path / "bad.json"
    bad.write_text('{"v": 1}')
    r = run(str(bad))
    assert r.returncode == 2 and "not a valid order event" in r.stderr


def test_only_masked_phones_reach_paper():
    from agent.templating import mask_phone

    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("138****5678") == "138****5678"
    assert mask_phone("+86 138 1234 5678") == "861******5678"
    ev = example("order-created-meituan.json")
    ev["order"]["customer"]["phone"] = "13812345678"
    text = preview_text(TicketRenderer(**STORE).render("receipt", OrderEvent.model_validate_json(json.dumps(ev)), columns=48))
    assert "13812345678" not in text and "138****5678" in text


def test_reprint_mark_survives_a_template_without_it(tmp_path):
    (tmp_path / "receipt.j2").write_text("{{ order.id }}\n@cut\n", encoding="utf-8")
    r = TicketRenderer(**STORE, template_dir=str(tmp_path))
    ev = OrderEvent.model_validate_json(json.dumps(example("order-created-meituan.json")))
    assert "补打" in preview_text(r.render("receipt", ev, columns=48, reprint=True))
    assert "补打" not in preview_text(r.render("receipt", ev, columns=48))


def test_very_long_values_are_shortened_on_paper():
    ev = example("order-created-meituan.json")
    ev["order"]["note"] = "长" * 5000
    d = TicketRenderer(**STORE).render("receipt", OrderEvent.model_validate_json(json.dumps(ev)), columns=48)
    text = preview_text(d)
    assert text.count("长") < 600 and "…" in text


@pytest.mark.parametrize("t", [t for t in EVENT_TYPES if documents_for(t) == ["slip"]])
def test_every_slip_renders_with_an_empty_detail(t):
    ev = example("rider-unassigned.json")
    ev.update(type=t, detail={})
    alerts = []
    r = TicketRenderer(**STORE, on_fallback=lambda n, e: alerts.append(e))
    text = preview_text(r.render("slip", OrderEvent.model_validate_json(json.dumps(ev)), columns=32))
    assert "MT-8812345678901" in text and not alerts
