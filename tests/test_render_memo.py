"""The layout memos of issue 17: a memoised line gives exactly what laying it out again gives, errors
are never kept, and a line a printer's font cannot hold still goes to the line encoder."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import render
from agent.render import CHINESE_ON, ESC_INIT, FALLBACK, Cut, Document, Text, to_escpos
from agent.templating import TemplateFailure, _line_memo, parse_markup

import pytest

CHARSETS = ("gb18030", "gbk", "big5")
texts = st.text(alphabet=st.sampled_from(list("ab 1@|¥€中文，。😀\u200b\x07ＡＢ") + ["𠀀", "é", "々", "ก", "ẞ"]), max_size=60)
blocks = st.builds(Text, texts, st.sampled_from(["left", "center", "right"]), st.booleans(),
                   st.integers(1, 2), st.integers(1, 2))


def reference_line(b: Text, charset: str) -> bytes:
    """The text line as to_escpos laid it out before the memo (no line encoder)."""
    text = render.printable(b.text)
    for ch in render.missing_in(text, charset):
        text = text.replace(ch, FALLBACK)
    size = ((b.width - 1) << 4) | (b.height - 1)
    return (b"\x1ba" + bytes((render._ALIGN[b.align],)) + b"\x1d!" + bytes((size,)) + b"\x1bE"
            + bytes((1 if b.bold else 0,)) + render._encode_line(text, charset) + b"\n")


@settings(max_examples=300, deadline=None)
@given(st.lists(blocks, max_size=8), st.sampled_from(CHARSETS))
def test_memoised_bytes_are_the_bytes_laid_out_afresh(bs, charset):
    doc = Document("t", 48, tuple(bs))
    want = ESC_INIT + CHINESE_ON + b"".join(reference_line(b, charset) for b in bs)
    assert to_escpos(doc, charset=charset) == want
    assert to_escpos(doc, charset=charset) == want  # the second time from the memo


def test_a_line_the_font_lacks_still_goes_to_the_line_encoder_each_time():
    drawn = []
    doc = Document("t", 48, (Text("店名 ก"), Text("店名"), Cut()))
    for _ in range(2):
        out = to_escpos(doc, charset="gbk", line_encoder=lambda b: drawn.append(b.text) or b"<img>")
        assert out.count(b"<img>") == 1
    assert drawn == ["店名 ก", "店名 ก"]  # the plain line came from the memo, the other was drawn again


def test_the_memo_is_used_for_short_lines_only():
    render._text_memo.cache_clear()
    long = Text("中" * (render.MEMO_CHARS + 1))
    to_escpos(Document("t", 48, (Text("短"), long)))
    to_escpos(Document("t", 48, (Text("短"), long)))
    info = render._text_memo.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 1, 1)


def test_a_parsed_line_is_memoised_and_errors_are_not_kept():
    _line_memo.cache_clear()
    a = parse_markup("r", "@center,bold|店\n@rule =\n@row 合计 | 12.00\n", 32)
    b = parse_markup("r", "@center,bold|店\n@rule =\n@row 合计 | 12.00\n", 32)
    assert a == b and _line_memo.cache_info().hits == 3
    for lineno, markup in ((1, "@nope x\n"), (3, "ok\nok\n@nope x\n")):  # the same bad line, its own line number
        with pytest.raises(TemplateFailure, match=f"r line {lineno}: unknown directive @nope"):
            parse_markup("r", markup, 32)
    assert parse_markup("r", "@feed 2\n", 32).blocks[0].lines == 2
    with pytest.raises(TemplateFailure, match="line 1"):
        parse_markup("r", "@feed x\n", 32)


def test_the_same_line_under_two_charsets_gets_each_its_own_bytes():
    line = Document("t", 48, (Text("中文 ¥"),))
    gbk, big5 = to_escpos(line, charset="gbk"), to_escpos(line, charset="big5")
    assert gbk != big5
    assert "中文".encode("gbk") in gbk and "中文".encode("big5") in big5
    assert to_escpos(line, charset="gbk") == gbk and to_escpos(line, charset="big5") == big5
