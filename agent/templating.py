"""Ticket templates: Jinja2 (sandboxed) text with one directive per line -> ``render.Document``.

A template writes one physical instruction per line::

    @center,bold,big| 美团 #23        styled text, wrapped to the paper (styles: left center right bold big wide tall)
    plain text                        left-aligned, wrapped
    @row 布洛芬混悬液 | x1 ¥32.80     left part wrapped, right part right-aligned on the last line (@row,bold too)
    @rule =                           a full-width rule of "=" (default "-")
    @blank                            an empty line
    @feed 3                           feed n lines
    @qr MT-8812345678901              QR code
    @barcode MT-8812345678901         CODE128 barcode
    @cut                              end of ticket (feed and cut)

Empty lines are ignored (Jinja's block tags leave many). Every ``{{ value }}`` has its newlines and
control characters flattened by ``finalize``, so order data can never start a directive of its own.
Templates come from ``templates/`` (built in), from a directory (``[templates] dir``) or from remote
config. Those from a directory or from remote config render in Jinja2's SandboxedEnvironment with
an output-size and a time limit; the built-in ones (shipped in the package, trusted) render directly,
with the output-size limit. A broken template raises ``TemplateFailure``; the caller falls back to the built-in one.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from datetime import datetime
from importlib import resources
from typing import Any, Callable, Mapping, Optional

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    DictLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
)
from jinja2.sandbox import SandboxedEnvironment

from .render import Barcode, Block, Cut, Document, Feed, QR, Text, columns_row, money, printable, wrap

STYLES = {"left", "center", "right", "bold", "big", "wide", "tall"}
MAX_OUTPUT_CHARS = 64 * 1024
MAX_RENDER_S = 2.0
MAX_VALUE_CHARS = 500  # longest single value printed; longer ones end in "…"

PLATFORM_NAMES = {
    "meituan": "美团",
    "eleme": "饿了么",
    "jddj": "京东到家",
    "youzan": "有赞",
    "pdd": "拼多多",
    "web": "官方商城",
    "other": "其他平台",
}


class TemplateFailure(Exception):
    """A template could not be rendered (syntax, runtime error, limit, bad directive)."""


def _flatten(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        text = printable(value)  # newlines -> spaces, controls dropped, unprintable -> fallback glyph
        if len(text) > MAX_VALUE_CHARS:  # a 10 000-character note must not empty the paper roll
            text = text[: MAX_VALUE_CHARS - 1] + "…"
        # a value at the start of a line must not become a directive: "@cut" -> "＠cut"
        return "＠" + text[1:] if text.startswith("@") else text
    return value


def _hm(value: Any, fmt: str = "%H:%M") -> str:
    if isinstance(value, datetime):
        return value.strftime(fmt)
    return "" if value is None else str(value)


_DIGITS = re.compile(r"\d")


def mask_phone(value: Any) -> str:
    """Only masked phone numbers reach paper: 13812345678 -> 138****5678 (already masked stays)."""
    text = "" if value is None else str(value)
    digits = _DIGITS.findall(text)
    if "*" in text or len(digits) < 7:
        return text
    d = "".join(digits)
    return d[:3] + "*" * (len(d) - 7) + d[-4:]


def builtin_loader() -> BaseLoader:
    root = resources.files("templates")
    return FileSystemLoader(str(root))


def make_environment(
    overrides: Optional[Mapping[str, str]] = None, directory: Optional[str] = None
) -> Environment:
    """Loaders in order: remote overrides (name -> source), a directory, the built-in templates."""
    loaders: list[BaseLoader] = []
    if overrides:
        loaders.append(DictLoader({f"{k}.j2": v for k, v in overrides.items()}))
    if directory:
        loaders.append(FileSystemLoader(directory))
    loaders.append(builtin_loader())
    trusted = not overrides and not directory
    # only the project's own templates (shipped in the package) skip the sandbox, the time-limit
    # thread and its trace hook (together ~4.5 ms of a receipt's 5); anything a store or HQ supplies
    # runs under all three. Order data is only ever data to them: no template evaluates it.
    env = (Environment if trusted else SandboxedEnvironment)(
        loader=ChoiceLoader(loaders),
        undefined=StrictUndefined,
        finalize=_flatten,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )
    env.filters["money"] = money
    env.filters["hm"] = _hm
    env.filters["mask_phone"] = mask_phone
    env.filters["platform_name"] = lambda p: PLATFORM_NAMES.get(p or "", p or "")
    env.globals_trusted = trusted  # type: ignore[attr-defined]
    return env


def builtin_environment() -> Environment:
    return make_environment()


def check_source(name: str, source: str) -> None:
    """Syntax-check a template supplied in the config (remote or local): ValueError names it and the line."""
    try:
        make_environment().parse(source, name=f"{name}.j2")
    except RecursionError:
        raise ValueError(f"template {name}: nested too deeply") from None
    except TemplateError as e:
        line = getattr(e, "lineno", None)
        raise ValueError(f"template {name}{f' line {line}' if line else ''}: {e.message or e}") from None


# ------------------------------------------------------------------ markup -> document


def _text_blocks(styles: set[str], content: str, columns: int) -> list[Block]:
    unknown = styles - STYLES
    if unknown:
        raise TemplateFailure(f"unknown style(s): {', '.join(sorted(unknown))}")
    width = 2 if styles & {"big", "wide"} else 1
    height = 2 if styles & {"big", "tall"} else 1
    align = "center" if "center" in styles else "right" if "right" in styles else "left"
    return [
        Text(line, align=align, bold="bold" in styles, width=width, height=height)
        for line in wrap(content.strip(), columns // width)
    ]


def parse_markup(name: str, markup: str, columns: int) -> Document:
    blocks: list[Block] = []
    for lineno, raw in enumerate(markup.split("\n"), 1):  # not splitlines(): U+2028 & co. are not line ends here
        line = raw.rstrip()
        if not line.strip():
            continue
        try:
            if not line.startswith("@"):
                blocks += _text_blocks(set(), line, columns)
                continue
            head, _, rest = line[1:].partition(" ")
            if "|" in head:  # @center,bold| text  (no space needed before the bar)
                head, _, more = line[1:].partition("|")
                blocks += _text_blocks({s.strip() for s in head.split(",") if s.strip()}, more, columns)
            elif head.split(",")[0] == "row":  # @row[,bold] left | right
                styles = set(head.split(",")[1:])
                if styles - {"bold"}:
                    raise TemplateFailure(f"@row takes only 'bold', not {','.join(sorted(styles - {'bold'}))}")
                left, bar, right = rest.rpartition("|")
                if not bar:
                    raise TemplateFailure("@row needs 'left | right'")
                blocks += [Text(x, bold="bold" in styles) for x in columns_row(left.strip(), right.strip(), columns)]
            elif head == "rule":
                ch = (rest.strip() or "-")[0]
                blocks.append(Text(ch * columns))
            elif head == "blank":
                blocks.append(Text(""))
            elif head == "feed":
                blocks.append(Feed(max(0, min(int(rest or "1"), 10))))
            elif head == "qr":
                if rest.strip():
                    blocks.append(QR(rest.strip()))
            elif head == "barcode":
                if rest.strip():
                    blocks.append(Barcode(rest.strip()))
            elif head == "cut":
                blocks.append(Cut())
            else:
                raise TemplateFailure(f"unknown directive @{head}")
        except (ValueError, TemplateFailure) as e:
            raise TemplateFailure(f"{name} line {lineno}: {e}") from None
    if not blocks or not isinstance(blocks[-1], Cut):
        blocks.append(Cut())
    return Document(name, columns, tuple(blocks))


# ------------------------------------------------------------------ rendering with limits


def render_markup(
    env: Environment,
    name: str,
    context: Mapping[str, Any],
    *,
    max_chars: Optional[int] = None,
    max_seconds: Optional[float] = None,
) -> str:
    """Render ``name`` within an output-size and time limit.

    The render runs on a helper thread whose trace hook aborts it at the deadline, so a runaway
    template stops instead of burning the CPU in the background.
    """
    max_chars = max_chars or MAX_OUTPUT_CHARS
    max_seconds = max_seconds or MAX_RENDER_S
    result: dict[str, Any] = {}
    deadline = time.monotonic() + max_seconds
    trusted = getattr(env, "globals_trusted", False)

    def tracer(frame, event, arg):  # noqa: ANN001 - sys.settrace signature
        if time.monotonic() > deadline:
            raise TemplateFailure(f"template {name} took longer than {max_seconds}s")
        return tracer

    def work() -> None:
        if not trusted:
            sys.settrace(tracer)
        try:
            tpl = env.get_template(f"{name}.j2")
            out: list[str] = []
            size = 0
            for chunk in tpl.generate(**context):
                size += len(chunk)
                if size > max_chars:
                    raise TemplateFailure(f"template {name} output exceeds {max_chars} characters")
                out.append(chunk)
            result["text"] = "".join(out)
        except TemplateNotFound:
            result["error"] = f"no template named {name}"
        except TemplateFailure as e:
            result["error"] = str(e)
        except TemplateError as e:
            result["error"] = f"template {name}: {type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - anything a template can raise
            result["error"] = f"template {name}: {type(e).__name__}: {e}"
        finally:
            if not trusted:
                sys.settrace(None)

    if trusted:
        work()
    else:
        t = threading.Thread(target=work, name=f"render-{name}", daemon=True)
        t.start()
        t.join(max_seconds + 1.0)
        if t.is_alive():
            raise TemplateFailure(f"template {name} took longer than {max_seconds}s")
    if "error" in result:
        raise TemplateFailure(result["error"])
    return result["text"]


def render_document(
    env: Environment,
    name: str,
    context: Mapping[str, Any],
    columns: int,
    *,
    fallback: Optional[Environment] = None,
    on_fallback: Callable[[str, str], None] = lambda name, error: None,
) -> Document:
    """Render a template to a document; on failure use ``fallback`` (the built-ins) and report it."""
    try:
        return parse_markup(name, render_markup(env, name, context), columns)
    except TemplateFailure as e:
        if fallback is None or fallback is env:
            raise
        on_fallback(name, str(e))
        return parse_markup(name, render_markup(fallback, name, context), columns)
