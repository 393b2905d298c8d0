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

Invariants (docs/SECURITY.md, issue 19):

* Templates see plain data only: dicts, lists, strings, numbers, booleans, None (``to_plain``
  refuses anything else) and the helper functions of ``helpers()``. No pydantic model, datetime or
  other object with methods ever reaches a template.
* Every template renders in ``DataSandbox``: an attribute is reachable only if it is on the
  allow-list (``_ALLOWED``: a few pure ``str`` methods, ``dict.get/items/keys/values``, Jinja's
  loop/namespace/cycler); a dict's keys come before its methods (``order.items`` is the items).
* Untrusted templates (``templates.custom`` from HQ, ``templates.dir``) are compiled and rendered
  only in a child process (``SandboxProcess``) with ``RLIMIT_AS``, a per-render ``RLIMIT_CPU``, no
  forks and no file writes, and a wall-clock deadline after which the parent kills it. Nothing
  of theirs is compiled in the agent's process (not even at boot: Jinja folds constants at compile
  time). ``check_source`` only parses (no code generation, no constant folding).
* Built-in templates (``templates/``, shipped with the package) render in-process: they are
  trusted, and the receipt stays well under a millisecond.

A broken template raises ``TemplateFailure``; the caller falls back to the built-in one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from datetime import date, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    DictLoader,
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
)
from jinja2.runtime import LoopContext
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from jinja2.utils import Cycler, Joiner, Namespace

from .render import MEMO_CHARS, Barcode, Block, Cut, Document, Feed, QR, Text, columns_row, money, printable, width_of, wrap

log = logging.getLogger(__name__)

STYLES = {"left", "center", "right", "bold", "big", "wide", "tall"}
MAX_OUTPUT_CHARS = 64 * 1024
MAX_RENDER_S = 2.0  # CPU seconds (RLIMIT_CPU) and, plus a grace second, wall seconds of an untrusted render
MAX_WORKER_MEMORY = 256 * 1024 * 1024  # RLIMIT_AS of the template child (it needs ~30 MiB)
MAX_VALUE_CHARS = 500  # longest single value printed; longer ones end in "…"
MAX_REPEAT = 4 * MAX_OUTPUT_CHARS  # "x" * n and [..] * n beyond this are refused before they are built

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


# ------------------------------------------------------------------ plain data


def to_plain(value: Any) -> Any:
    """What a template may see: JSON-like data. Models are dumped, times become ISO 8601 strings,
    anything else is a TypeError (so no object with methods slips into a template by accident)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    dump = getattr(type(value), "model_dump", None)  # a pydantic model
    if dump is not None:
        return to_plain(value.model_dump(mode="json"))
    raise TypeError(f"not template data: {type(value).__name__}")


# Memoised layout (issue 17): most of a ticket's values and lines are the same on every order (the
# store, the wording, headings, rules), and printable()/wrap() go character by character. Only short
# strings are kept (MEMO_CHARS, agent/render.py, whose printable() and to_escpos() memoise them too) and few
# of them (MEMO_ENTRIES here, 1024 there), so the caches stay small: about 5.5 MiB in the worst case (every
# entry a distinct 200-character CJK line in large print; a review measured it), well under 1 MiB in a store.
MEMO_ENTRIES = 512  # the fixed lines of every ticket stay (used on each order); an order's own lines pass through


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
    """A time (ISO 8601 string, as templates get them) in its own offset, formatted."""
    if isinstance(value, str) and value:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, (datetime, date)):
        return value.strftime(str(fmt)[:64])
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


def _money(fen: Any) -> str:
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError(f"money takes integer fen, not {type(fen).__name__}")
    return money(fen)


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def fill(text: str, values: Mapping[str, Any]) -> str:
    """``{name}`` placeholders from event facts; unknown ones become '?'. (No str.format: no attribute access.)"""
    return _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), "?")), text)


def helpers(data: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Callable[..., Any]]:
    """The functions a template may call, rebuilt from plain data (so the child process can too).

    ``text(part)``: the wording ``t["<event type>_<part>"]`` with ``{minutes}``-style facts filled in."""
    texts = data.get("t") or {}
    key = str(spec.get("text_key") or "")
    facts = {k: v for k, v in (spec.get("facts") or {}).items() if isinstance(v, (str, int, float, bool))}

    def text(part: str) -> Any:
        value = texts.get(f"{key}_{part}", "")
        if isinstance(value, list):
            return [fill(str(v), facts) for v in value]
        return fill(str(value), facts)

    return {"text": text}


# ------------------------------------------------------------------ the sandbox


_ANY = object()
_STR_METHODS = frozenset({
    "capitalize", "center", "count", "endswith", "find", "isalnum", "isalpha", "isdigit", "islower",
    "isnumeric", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "partition",
    "removeprefix", "removesuffix", "replace", "rfind", "rjust", "rpartition", "rsplit", "rstrip",
    "split", "splitlines", "startswith", "strip", "swapcase", "title", "upper", "zfill",
})
_ALLOWED: tuple[tuple[type | tuple[type, ...], Any], ...] = (
    (str, _STR_METHODS),  # not format/format_map/encode/maketrans
    (dict, frozenset({"get", "items", "keys", "values"})),
    ((list, tuple), frozenset({"count", "index"})),
    (LoopContext, frozenset({"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth",
                             "depth0", "previtem", "nextitem", "cycle", "changed"})),
    (Namespace, _ANY),  # its attributes are the values the template itself set
    (Cycler, frozenset({"current", "next", "reset"})),
)


class DataSandbox(SandboxedEnvironment):
    """Jinja2's sandbox with an allow-list of attributes instead of its deny-list.

    Plain data only reaches templates, so the list is short: what is not on it is a SecurityError."""

    intercepted_binops = frozenset({"*", "**"})  # also keeps them from being folded at compile time

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr.startswith("_"):
            return False
        for types, names in _ALLOWED:
            if isinstance(obj, types):
                return names is _ANY or attr in names
        return False  # numbers, functions, macros, ranges, anything else: no attributes at all

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:  # records: order.items is the order's items
            return obj[attribute]
        try:
            value = getattr(obj, attribute)
        except AttributeError:
            return super().getattr(obj, attribute)  # an item, or undefined
        except Exception:  # noqa: BLE001 - a property that raises
            return self.undefined(obj=obj, name=attribute)
        if self.is_safe_attribute(obj, attribute, value):  # checked first: no str.format wrapper either
            return value
        return self.unsafe_undefined(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        try:
            return obj[argument]
        except (TypeError, LookupError):
            pass
        if isinstance(argument, str):
            return self.getattr(obj, argument)
        return self.undefined(obj=obj, name=argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT:
                    raise SecurityError(f"repetition to {len(seq) * n} items exceeds {MAX_REPEAT}")
        elif operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise SecurityError("exponent larger than 64")
        return super().call_binop(context, operator, left, right)


def builtin_dir() -> Path:
    return Path(str(resources.files("templates")))


def builtin_loader() -> BaseLoader:
    return FileSystemLoader(str(builtin_dir()))


def make_environment(
    overrides: Optional[Mapping[str, str]] = None, directory: Optional[str] = None
) -> DataSandbox:
    """Loaders in order: remote overrides (name -> source), a directory, the built-in templates.

    With overrides or a directory this environment compiles untrusted sources: only
    ``SandboxProcess``'s child uses it that way."""
    loaders: list[BaseLoader] = []
    if overrides:
        loaders.append(DictLoader({f"{k}.j2": v for k, v in overrides.items()}))
    if directory:
        loaders.append(FileSystemLoader(directory))
    loaders.append(builtin_loader())
    env = DataSandbox(
        loader=ChoiceLoader(loaders),
        undefined=StrictUndefined,
        finalize=_flatten,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )
    env.globals.pop("lipsum", None)
    env.filters["money"] = _money
    env.filters["hm"] = _hm
    env.filters["mask_phone"] = mask_phone
    env.filters["platform_name"] = lambda p: PLATFORM_NAMES.get(p or "", p or "")
    return env


def builtin_environment() -> DataSandbox:
    return make_environment()


def check_source(name: str, source: str) -> None:
    """Syntax-check a template supplied in the config (remote or local): ValueError names it and the line.

    Parsing only: nothing is compiled or evaluated here (that happens in the child process)."""
    try:
        make_environment().parse(source, name=f"{name}.j2")
    except RecursionError:
        raise ValueError(f"template {name}: nested too deeply") from None
    except TemplateError as e:
        line = getattr(e, "lineno", None)
        raise ValueError(f"template {name}{f' line {line}' if line else ''}: {e.message or e}") from None


# ------------------------------------------------------------------ markup -> document


def _lines(content: str, columns: int) -> tuple[str, ...]:
    """``wrap(content, columns)``; a line that fits is returned as it is, without the walk of ``wrap``."""
    text = printable(content)
    if width_of(text) <= columns:
        return (text.rstrip(),)  # what wrap() returns for it
    return tuple(wrap(text, columns))


@lru_cache(maxsize=MEMO_ENTRIES)
def _text_blocks_memo(styles: frozenset[str], content: str, columns: int) -> tuple[Block, ...]:
    unknown = styles - STYLES
    if unknown:
        raise TemplateFailure(f"unknown style(s): {', '.join(sorted(unknown))}")
    width = 2 if styles & {"big", "wide"} else 1
    height = 2 if styles & {"big", "tall"} else 1
    align = "center" if "center" in styles else "right" if "right" in styles else "left"
    return tuple(
        Text(line, align=align, bold="bold" in styles, width=width, height=height)
        for line in _lines(content.strip(), columns // width)
    )


def _text_blocks(styles: set[str], content: str, columns: int) -> tuple[Block, ...]:
    """The Text blocks of one styled line (frozen dataclasses: a memoised tuple is shared safely)."""
    if len(content) > MEMO_CHARS:
        return _text_blocks_memo.__wrapped__(frozenset(styles), content, columns)
    return _text_blocks_memo(frozenset(styles), content, columns)


@lru_cache(maxsize=MEMO_ENTRIES)
def _row_memo(left: str, right: str, columns: int, bold: bool) -> tuple[Block, ...]:
    return tuple(Text(x, bold=bold) for x in columns_row(left, right, columns))


def _row_blocks(left: str, right: str, columns: int, bold: bool) -> tuple[Block, ...]:
    if len(left) + len(right) > MEMO_CHARS:
        return _row_memo.__wrapped__(left, right, columns, bold)
    return _row_memo(left, right, columns, bold)


MAX_TICKET_LINES = 1000  # about 300 items on a receipt; beyond it a ticket is a roll of paper, or an attack
MAX_QR_BYTES = 700  # what the native QR command stores; an image QR of it always fits (version <= 40)
MAX_BARCODE_CHARS = 253  # CODE128 set B: the length byte holds len + 2


def _paper_lines(blocks: list[Block]) -> int:
    """Lines of paper the blocks take (a QR code about 12, a barcode about 6)."""
    n = 0
    for b in blocks:
        n += (b.height if isinstance(b, Text) else b.lines if isinstance(b, Feed)
              else 12 if isinstance(b, QR) else 6 if isinstance(b, Barcode) else 0)
    return n


def _parse_line(line: str, columns: int) -> tuple[Block, ...]:
    """The blocks of one markup line (not blank, right-stripped); raises ``TemplateFailure`` or ``ValueError``."""
    if not line.startswith("@"):
        return _text_blocks(set(), line, columns)
    head, _, rest = line[1:].partition(" ")
    if "|" in head:  # @center,bold| text  (no space needed before the bar)
        head, _, more = line[1:].partition("|")
        return _text_blocks({s.strip() for s in head.split(",") if s.strip()}, more, columns)
    if head.split(",")[0] == "row":  # @row[,bold] left | right
        styles = set(head.split(",")[1:])
        if styles - {"bold"}:
            raise TemplateFailure(f"@row takes only 'bold', not {','.join(sorted(styles - {'bold'}))}")
        left, bar, right = rest.rpartition("|")
        if not bar:
            raise TemplateFailure("@row needs 'left | right'")
        return _row_blocks(left.strip(), right.strip(), columns, "bold" in styles)
    if head == "rule":
        ch = (rest.strip() or "-")[0]
        return (Text(ch * columns),)
    if head == "blank":
        return (Text(""),)
    if head == "feed":
        return (Feed(max(0, min(int(rest or "1"), 10))),)
    if head == "qr":
        if not rest.strip():
            return ()
        if len(rest.strip().encode("utf-8")) > MAX_QR_BYTES:
            raise TemplateFailure(f"@qr data longer than {MAX_QR_BYTES} bytes")
        return (QR(rest.strip()),)
    if head == "barcode":
        data = rest.strip()
        if not data:
            return ()
        if len(data) > MAX_BARCODE_CHARS or not all(" " <= c <= "~" and c != "{" for c in data):
            raise TemplateFailure(f"@barcode takes up to {MAX_BARCODE_CHARS} printable ASCII characters (no '{{')")
        return (Barcode(data),)
    if head == "cut":
        return (Cut(),)
    raise TemplateFailure(f"unknown directive @{head}")


@lru_cache(maxsize=MEMO_ENTRIES)
def _line_memo(line: str, columns: int) -> tuple[tuple[Block, ...], int]:
    """A ticket's fixed lines (headings, rules, wording, the store) are parsed once: the same line and
    width give the same blocks (frozen dataclasses, shared safely). Errors are not kept: they raise again."""
    blocks = _parse_line(line, columns)
    return blocks, _paper_lines(blocks)


def parse_markup(name: str, markup: str, columns: int) -> Document:
    blocks: list[Block] = []
    paper = 0
    for lineno, raw in enumerate(markup.split("\n"), 1):  # not splitlines(): U+2028 & co. are not line ends here
        line = raw.rstrip()
        if not line.strip():
            continue
        try:
            if len(line) <= MEMO_CHARS:
                got, lines = _line_memo(line, columns)
            else:
                got = _parse_line(line, columns)
                lines = _paper_lines(got)
        except (ValueError, TemplateFailure) as e:
            raise TemplateFailure(f"{name} line {lineno}: {e}") from None
        blocks += got
        paper += lines
        if paper > MAX_TICKET_LINES:
            raise TemplateFailure(f"{name}: a ticket longer than {MAX_TICKET_LINES} lines (paper and, in image mode, memory)")
    if not blocks or not isinstance(blocks[-1], Cut):
        blocks.append(Cut())
    return Document(name, columns, tuple(blocks))


# ------------------------------------------------------------------ rendering


def render_markup(
    env: DataSandbox,
    name: str,
    data: Mapping[str, Any],
    spec: Optional[Mapping[str, Any]] = None,
    *,
    max_chars: Optional[int] = None,
) -> str:
    """Render ``name`` in this process with an output-size limit: built-in (trusted) templates, and
    everything inside the child process. ``data`` must be plain (``to_plain``)."""
    max_chars = max_chars or MAX_OUTPUT_CHARS
    try:
        tpl = env.get_template(f"{name}.j2")
        out: list[str] = []
        size = 0
        for chunk in tpl.generate(**data, **helpers(data, spec or {})):
            size += len(chunk)
            if size > max_chars:
                raise TemplateFailure(f"template {name} output exceeds {max_chars} characters")
            out.append(chunk)
        return "".join(out)
    except TemplateNotFound:
        raise TemplateFailure(f"no template named {name}") from None
    except TemplateFailure:
        raise
    except MemoryError:
        raise TemplateFailure(f"template {name}: out of memory (limit {MAX_WORKER_MEMORY >> 20} MiB)") from None
    except Exception as e:  # noqa: BLE001 - anything a template can raise
        raise TemplateFailure(f"template {name}: {type(e).__name__}: {e}"[:500]) from None


# ------------------------------------------------------------------ the child process for untrusted templates

_FRAME = struct.Struct(">I")
_WORKER_CODE = "from agent.templating import _worker_main; _worker_main()"


def _write_frame(f: Any, obj: Any) -> None:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    f.write(_FRAME.pack(len(body)) + body)
    f.flush()


def _read_exact(f: Any, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _worker_main() -> None:  # pragma: no cover - runs in the child (covered by the tests through SandboxProcess)
    """The child: limits first, then one render per request, one answer each, until stdin closes."""
    import resource  # noqa: PLC0415

    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # nothing but answers on the answer pipe
    init = json.loads(_read_exact(inp, _FRAME.unpack(_read_exact(inp, 4))[0]))
    memory = int(init.get("memory") or MAX_WORKER_MEMORY)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # writes no file
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # starts no process (not enforced for root)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    env = make_environment(init.get("overrides") or None, init.get("dir") or None)
    while True:
        try:
            (n,) = _FRAME.unpack(_read_exact(inp, 4))
            req = json.loads(_read_exact(inp, n))
        except EOFError:
            return
        seconds = float(req.get("max_seconds") or MAX_RENDER_S)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))  # SIGXCPU kills a runaway render
        fatal = False
        try:
            answer: dict[str, Any] = {"text": render_markup(env, req["name"], req["data"], req.get("spec"),
                                                            max_chars=int(req.get("max_chars") or MAX_OUTPUT_CHARS))}
        except TemplateFailure as e:
            answer = {"error": str(e)}
            fatal = "out of memory" in str(e)
        except BaseException as e:  # noqa: BLE001 - a RecursionError deep in Jinja, anything
            answer = {"error": f"template {req.get('name')}: {type(e).__name__}"}
            fatal = True
        try:
            _write_frame(out, answer)
        except (OSError, MemoryError):
            return
        if fatal:  # a process that ran out of memory is not trusted with the next order
            return


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:
        pass
    for f in (proc.stdin, proc.stdout):
        try:
            if f:
                f.close()
        except OSError:
            pass


class SandboxProcess:
    """Untrusted templates, compiled and rendered in a child process under hard limits.

    One persistent child (started lazily, or by ``start()`` without waiting); a render is one
    request and one answer over pipes. A child that exceeds its limits, dies or does not answer
    within ``max_seconds`` + 1 s is killed, the render fails (the caller falls back to the built-in
    template), and the next render starts a new child. Renders are serialised (one child)."""

    def __init__(self, overrides: Optional[Mapping[str, str]] = None, directory: Optional[str] = None, *,
                 memory: int = MAX_WORKER_MEMORY) -> None:
        self.init = {"overrides": dict(overrides or {}), "dir": directory or "", "memory": memory}
        self._proc: Optional[subprocess.Popen] = None
        self._lock = threading.Lock()
        self._finalizer: Optional[weakref.finalize] = None
        self.spawned = 0

    def _spawn(self) -> subprocess.Popen:
        root = str(Path(__file__).resolve().parent.parent)
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONPATH": root, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, cwd="/", close_fds=True)
        self.spawned += 1
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _kill, proc)
        try:
            _write_frame(proc.stdin, self.init)
        except OSError:
            pass  # it died already: the render finds out
        return proc

    def start(self) -> None:
        """Start the child now (it imports Jinja2 while the agent goes on); returns at once."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._spawn()

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                _kill(self._proc)
                self._proc = None

    def _died(self, proc: subprocess.Popen, name: str, max_seconds: float) -> str:
        try:
            rc = proc.wait(1)
        except subprocess.TimeoutExpired:
            return f"template {name}: the template process stopped answering"
        if rc == -signal.SIGXCPU:
            return f"template {name} took longer than {max_seconds}s of CPU: the template process was stopped"
        if rc < 0:
            return f"template {name}: the template process was stopped ({signal.Signals(-rc).name})"
        return f"template {name}: the template process ended (exit {rc})"

    def render(self, name: str, data: Mapping[str, Any], spec: Optional[Mapping[str, Any]] = None, *,
               max_chars: Optional[int] = None, max_seconds: Optional[float] = None) -> str:
        max_chars = max_chars or MAX_OUTPUT_CHARS
        max_seconds = max_seconds or MAX_RENDER_S
        req = {"name": name, "data": data, "spec": dict(spec or {}), "max_chars": max_chars, "max_seconds": max_seconds}
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._spawn()
            proc = self._proc
            deadline = time.monotonic() + max_seconds + 1.0 + (0.0 if self.spawned > 1 else 2.0)  # a first start imports Jinja2
            try:
                _write_frame(proc.stdin, req)
                head = self._read(proc, 4, deadline)
                (n,) = _FRAME.unpack(head)
                if n > 4 * max_chars + 4096:
                    raise TemplateFailure(f"template {name}: answer too large")
                answer = json.loads(self._read(proc, n, deadline))
            except TemplateFailure:
                _kill(proc)
                self._proc = None
                raise
            except TimeoutError:
                _kill(proc)
                self._proc = None
                raise TemplateFailure(f"template {name} took longer than {max_seconds}s: the template process was stopped") from None
            except (OSError, EOFError, ValueError):
                why = self._died(proc, name, max_seconds)
                _kill(proc)
                self._proc = None
                raise TemplateFailure(why) from None
        if "error" in answer:
            raise TemplateFailure(str(answer["error"])[:500])
        return str(answer["text"])

    @staticmethod
    def _read(proc: subprocess.Popen, n: int, deadline: float) -> bytes:
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf
