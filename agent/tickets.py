"""What goes on paper for each document: receipt, warm-tip card, exception slips, reminders, test page.

``TicketRenderer`` turns an order event into a ``render.Document`` through the Jinja2 templates
(``templates/``); it is pure apart from reading template files. Templates get plain data
(``templating.to_plain``) and the helpers of ``templating.helpers``, never the models.

A template that HQ or the store supplied (``templates.custom``, ``templates.dir``) renders in the
child process of ``templating.SandboxProcess``, and so does a built-in one that includes or extends
such a template; everything else renders here. A template that fails falls back to the built-in
one and the failure is reported through ``on_fallback`` (the ``agent.template_failed`` alert); a
custom template that had to be killed (time or memory limit) three times running is not tried
again by this renderer (a new config makes a new renderer), so later orders do not wait for it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Optional

from jinja2 import meta

from . import __version__
from .messages import OrderEvent, parse_event
from .preview import encode
from .render import Document, Text
from .rules import DEFAULT_RULES, Rule
from .samples import sample_events
from .templating import (
    SandboxProcess,
    TemplateFailure,
    builtin_dir,
    builtin_environment,
    fill,
    parse_markup,
    render_markup,
    to_plain,
)
from .wording import DEFAULT_TEXTS, Wording

log = logging.getLogger(__name__)
KILLED_BEFORE_SKIP = 3  # a custom template killed this often in a row is skipped (built-in used) by this renderer

__all__ = ["TicketRenderer", "documents_for", "fill"]


def documents_for(event_type: str, rules: Optional[Mapping[str, Rule]] = None) -> list[str]:
    """Which documents an event prints: its rule's (the defaults unless a store's rules are given)."""
    return list((rules or DEFAULT_RULES)[event_type].documents)


class TicketRenderer:
    def __init__(
        self,
        *,
        store_name: str,
        store_phone: str,
        texts: Optional[Mapping[str, Wording]] = None,
        template_dir: Optional[str] = None,
        template_overrides: Optional[Mapping[str, str]] = None,
        on_fallback: Callable[[str, str], None] = lambda name, error: None,
    ) -> None:
        self.store = {"name": store_name, "phone": store_phone}
        self.texts: dict[str, Wording] = {**DEFAULT_TEXTS, **(texts or {})}
        self._texts_plain = to_plain(self.texts)
        self._plain_of: tuple[Optional[OrderEvent], Any] = (None, None)  # the last event and its plain form
        self.builtin = builtin_environment()
        self.env = self.builtin  # the in-process environment: built-in templates only
        self.template_dir = template_dir or None
        self.overrides = dict(template_overrides or {})
        self.sandbox = SandboxProcess(self.overrides, self.template_dir) if (self.overrides or self.template_dir) else None
        self.on_fallback = on_fallback
        self._refs: dict[str, frozenset[str]] = {}
        self._killed: dict[str, int] = {}

    # -- which template, and where it renders
    def _builtin_exists(self, name: str) -> bool:
        return (builtin_dir() / f"{name}.j2").is_file()

    def _is_custom(self, name: str) -> bool:
        if name in self.overrides:
            return True
        return bool(self.template_dir) and os.path.isfile(os.path.join(self.template_dir, f"{name}.j2"))

    def _builtin_refs(self, name: str) -> frozenset[str]:
        """The templates a built-in one includes or extends, transitively (read from the shipped sources)."""
        if name not in self._refs:
            self._refs[name] = frozenset()  # a cycle ends here
            found: set[str] = set()
            try:
                source = (builtin_dir() / f"{name}.j2").read_text(encoding="utf-8")
                for ref in meta.find_referenced_templates(self.builtin.parse(source)):
                    if ref is None:  # a computed name: could be anything
                        found.add("*")
                        continue
                    ref = ref.removesuffix(".j2")
                    found |= {ref} | self._builtin_refs(ref)
            except OSError:
                pass
            self._refs[name] = frozenset(found)
        return self._refs[name]

    def _untrusted(self, name: str) -> bool:
        """Does rendering ``name`` load a template the store or HQ supplied?"""
        if self.sandbox is None:
            return False
        if self._is_custom(name):
            return True
        refs = self._builtin_refs(name)
        return "*" in refs or any(self._is_custom(r) for r in refs)

    def _template_for(self, document: str, ev: OrderEvent) -> str:
        if document != "slip":
            return document
        specific = "slip_" + ev.type.replace(".", "_")
        return specific if self._is_custom(specific) or self._builtin_exists(specific) else "slip"

    def warm(self, formats: Iterable[tuple[int, str, str]] = ()) -> int:
        """Pay now, before the agent says ``online``, what the first order would otherwise pay (issue 17).

        Compiles every built-in template; then, for each printer format ``(columns, render, qr)``,
        takes a sample order through the path of a real one: parsed from JSON (pydantic), its
        receipt and warm-tip card rendered (Jinja2, layout) and encoded (ESC/POS; in image mode
        the font and, with ``qr = "image"``, the QR code machinery get loaded). Starts the child
        process for custom templates without waiting for it (nothing untrusted compiles here, and
        a document whose template is custom is left out of the sample).
        Returns the number of tickets rendered. Nothing here fails the start: a problem is logged
        and the first order meets it again."""
        for path in sorted(builtin_dir().glob("*.j2")):
            try:
                self.builtin.get_template(path.name)
                self._untrusted(path.stem)  # which custom templates it pulls in: worked out once, here
            except Exception as e:  # noqa: BLE001 - shipped templates; a test would have caught it
                log.warning("built-in template %s does not load: %s", path.stem, e)
        if self.sandbox is not None:
            try:
                self.sandbox.start()
            except OSError as e:
                log.error("cannot start the template process (custom templates fall back): %s", e)
        rendered = 0
        formats = sorted(set(formats))
        if not formats:
            return rendered
        try:
            payload = json.dumps(sample_events(datetime.now(timezone.utc), tag="warm")[0], ensure_ascii=False).encode()
            ev = parse_event(payload, len(payload))
            if not isinstance(ev, OrderEvent):
                raise ValueError(ev.reason)
            for columns, render_mode, qr_mode in formats:
                for document in ("receipt", "warm_tip"):
                    if self._untrusted(self._template_for(document, ev)):
                        continue  # a custom one renders in the child process: the start does not wait for it
                    encode(self.render(document, ev, columns=columns), render_mode, qr_mode)
                    rendered += 1
        except Exception:  # noqa: BLE001 - the first order will show what is wrong, with the order's own data
            log.exception("warm-up: the sample order did not render")
        return rendered

    def close(self) -> None:
        """Stop the template process (it also stops when this renderer is garbage-collected)."""
        if self.sandbox is not None:
            self.sandbox.close()

    # -- rendering
    def data(self, ev: OrderEvent, *, columns: int, reprint: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """The template's context as plain data, and the spec its helper functions are built from.
        An event's plain form is made once for its tickets (the receipt and the card render the same
        event object one after the other); templates cannot change it (``DataSandbox`` allows no
        mutating method, and untrusted ones get a copy in their own process)."""
        last = self._plain_of
        if last[0] is ev:
            e = last[1]
        else:
            e = to_plain(ev)
            self._plain_of = (ev, e)
        detail = e.get("detail") or {}
        facts = {k: v for k, v in detail.items() if isinstance(v, (str, int, float, bool))}
        data = {
            "ev": e,
            "order": e["order"],
            "detail": detail,
            "store": dict(self.store),
            "t": self._texts_plain,
            "cols": columns,
            "reprint": reprint,
            "prices": not ev.order.flags.no_price_list,
            "version": __version__,
        }
        return data, {"text_key": ev.type.replace(".", "_"), "facts": facts}

    def _render(self, name: str, data: dict[str, Any], spec: dict[str, Any], columns: int, generic: str) -> Document:
        if self._untrusted(name):
            if self._killed.get(name, 0) >= KILLED_BEFORE_SKIP:
                self.on_fallback(name, f"template {name} was stopped {KILLED_BEFORE_SKIP} times (time or memory "
                                       "limit): the built-in one is used until the templates change")
            else:
                assert self.sandbox is not None
                try:
                    markup = self.sandbox.render(name, data, spec)
                    doc = parse_markup(name, markup, columns)
                    self._killed.pop(name, None)
                    return doc
                except TemplateFailure as e:
                    if any(w in str(e) for w in ("template process", "took longer", "out of memory")):
                        self._killed[name] = self._killed.get(name, 0) + 1
                    self.on_fallback(name, str(e))
            if not self._builtin_exists(name):
                name = generic
        return parse_markup(name, render_markup(self.builtin, name, data, spec), columns)

    def render(self, document: str, ev: OrderEvent, *, columns: int, reprint: bool = False) -> Document:
        name = self._template_for(document, ev)
        data, spec = self.data(ev, columns=columns, reprint=reprint)
        doc = self._render(name, data, spec, columns, document)
        banner = str(self.texts["reprint_banner"])
        if reprint and not any(isinstance(b, Text) and banner.strip() in b.text for b in doc.blocks):
            # a custom template forgot the mark: a reprint is never without it
            doc = replace(doc, blocks=(Text(banner, align="center", bold=True),) + doc.blocks)
        return doc

    def render_named(self, name: str, context: Mapping[str, Any], *, columns: int) -> Document:
        """Reminders, summaries and the test page: templates fed a context of their own."""
        data = to_plain({"store": self.store, "cols": columns, "version": __version__,
                         "now": datetime.now(timezone.utc), **context})
        data["t"] = self._texts_plain
        return self._render(name, data, {}, columns, name)
