import json
from hypothesis import given, settings, strategies as st

from agent.messages import OrderEvent
from agent.render import FALLBACK, Cut, Document, Text, columns_row, encode_text, money, printable, to_escpos, width_of, wrap
from agent.tickets import TicketRenderer
from conftest import example, fresh
from drivers.escpos_proto import EscPosParser


def test_chinese_is_fs_ampersand_plus_gb18030():
    data = to_escpos(Document("t", 32, (Text("药品A"), Cut())))
    assert data.startswith(b"\x1b@\x1c&")
    assert "药品A".encode("gb18030") + b"\n" in data
    assert data.endswith(b"\x1dVA\x03")


def test_styles_exact_bytes():
    data = to_escpos(Document("t", 32, (Text("X", align="center", bold=True, width=2, height=2),)))
    assert data == b"\x1b@\x1c&" + b"\x1ba\x01" + b"\x1d!\x11" + b"\x1bE\x01" + b"X\n"


def test_mixed_text_round_trips():
    s = "布洛芬ABC１２３（全角）￥12.50㐀"  # CJK, Latin, full-width, yen sign, Extension A
    assert encode_text(s).decode("gb18030") == s


def test_unprintable_characters_get_the_fallback():
    assert printable("退热贴😷𠀀") == "退热贴" + FALLBACK * 2
    assert printable("a\x07b") == "ab"
    assert encode_text("😷").decode("gb18030") == FALLBACK


def test_money():
    assert money(1250) == "¥12.50" and money(5) == "¥0.05" and money(-800) == "-¥8.00"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), st.text(max_size=20), st.sampled_from([32, 48]))
def test_no_line_exceeds_the_paper(left, right, cols):
    for line in wrap(left, cols):
        assert width_of(line) <= cols
    right = right[:10]
    for line in columns_row(left, right, cols):
        assert width_of(line) <= cols


def test_receipt_carries_every_order_fact():
    ev = OrderEvent.model_validate_json(json.dumps(fresh(example("order-created-meituan.json"))))
    jobs = []
    r = TicketRenderer(store_name="示例大药房", store_phone="023-1")
    EscPosParser(jobs.append).feed(to_escpos(r.render("receipt", ev, columns=48)))
    text = jobs[0].text()
    for fact in ("美团", "#23", "MT-8812345678901", "麻烦快一点", "布洛芬混悬液(美林)", "100ml:2g", "A-03-2", "[发热]",
                 "x1", "¥32.80", "x2", "¥31.80", "¥74.50", "¥4.00", "¥1.00", "-¥8.00", "¥71.50", "王*", "138****5678",
                 "渝中区民族路188号3栋1204", "023-1", "示例大药房"):
        assert fact in text, fact


def test_no_price_list_receipt_has_no_price():
    ev = OrderEvent.model_validate_json(json.dumps(fresh(example("order-created-eleme-rx.json"))))
    jobs = []
    EscPosParser(jobs.append).feed(to_escpos(TicketRenderer(store_name="s", store_phone="").render("receipt", ev, columns=32)))
    text = jobs[0].text()
    assert "¥" not in text and "[处方]" in text and "发票" in text and "x2" in text


def test_charsets_keep_text_mode_text_and_draw_only_what_the_font_lacks():
    """A receipt of ordinary Chinese stays text in every charset (bytes per receipt printed for the record);
    a name the font lacks is drawn as an image line, alone; emoji become the placeholder, never an image."""
    from agent.messages import parse_stored
    from agent.preview import encode
    from agent.render import FALLBACK, Document, Text
    from agent.tickets import TicketRenderer
    from conftest import DATA

    raw = (DATA / "examples" / "order-created-meituan.json").read_bytes()
    doc = TicketRenderer(store_name="示例大药房", store_phone="1").render("receipt", parse_stored(raw), columns=48)
    sizes = {cs: encode(doc, charset=cs) for cs in ("gb18030", "gbk", "gb2312", "big5")}
    print("bytes per receipt:", {cs: len(b) for cs, b in sizes.items()})
    for cs in ("gb18030", "gbk", "gb2312"):
        assert b"\x1dv0" not in sizes[cs], cs  # no raster: text mode stayed text mode
    # big5 fonts hold traditional characters: this receipt's simplified ones are drawn (README: charset)
    assert sizes["big5"].count(b"\x1dv0") > 10
    assert len(sizes["gbk"]) <= len(sizes["gb18030"]) * 1.05
    names = Document("t", 48, (Text("顾客: 王䶮"), Text("顾客: 喆"), Text("备注: 🎉 谢谢")))
    for cs, images in (("gb18030", 0), ("gbk", 1), ("gb2312", 2)):
        b = encode(names, charset=cs)
        assert b.count(b"\x1dv0") == images, cs
    b = encode(names, charset="gb18030")
    assert FALLBACK.encode("gb18030") in b and "🎉".encode("gb18030") not in b
