"""What goes on paper for each document: receipt, warm-tip card, exception slips, reminders, test page.

``TicketRenderer`` turns an order event into a ``render.Document`` through the Jinja2 templates
(``templates/``); it is pure apart from reading template files. A template that fails falls back
to the built-in one and the failure is reported through ``on_fallback`` (an alert).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Optional

from . import __version__
from .messages import OrderEvent
from .render import Document, Text
from .rules import DEFAULT_RULES, Rule
from .templating import builtin_environment, make_environment, render_document
from .wording import DEFAULT_TEXTS, Wording

log = logging.getLogger(__name__)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
def documents_for(event_type: str, rules: Optional[Mapping[str, Rule]] = None) -> list[str]:
    """Which documents an event prints: its rule's (the defaults unless a store's rules are given)."""
    return list((rules or DEFAULT_RULES)[event_type].documents)


def fill(text: str, values: Mapping[str, Any]) -> str:
    """``{name}`` placeholders from event facts; unknown ones become '?'. (No str.format: no attribute access.)"""
    return _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), "?")), text)


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
        self.builtin = builtin_environment()
        custom = template_dir or template_overrides
        self.env = make_environment(template_overrides, template_dir) if custom else self.builtin
        self.on_fallback = on_fallback

    def warm(self) -> None:
        """Compile the common templates now, not while the first order waits."""
        for name in ("receipt", "warm_tip", "slip"):
            try:
                self.env.get_template(f"{name}.j2")
            except Exception as e:  # noqa: BLE001 - a broken override shows up (and falls back) when used
                log.warning("template %s does not load: %s", name, e)

    def _template_for(self, document: str, ev: OrderEvent) -> str:
        if document != "slip":
            return document
        specific = "slip_" + ev.type.replace(".", "_")
        try:
            self.env.get_template(specific + ".j2")
            return specific
        except Exception:  # noqa: BLE001 - TemplateNotFound or a broken override: the generic slip
            return "slip"

    def context(self, ev: OrderEvent, *, columns: int, reprint: bool) -> dict[str, Any]:
        key = ev.type.replace(".", "_")
        facts = {k: v for k, v in ev.detail.items() if isinstance(v, (str, int, float, bool))}

        def text(part: str) -> Wording:
            value = self.texts.get(f"{key}_{part}", "")
            if isinstance(value, list):
                return [fill(v, facts) for v in value]
            return fill(value, facts)

        return {
            "ev": ev,
            "order": ev.order,
            "detail": ev.detail,
            "store": self.store,
            "t": self.texts,
            "text": text,
            "cols": columns,
            "reprint": reprint,
            "prices": not ev.order.flags.no_price_list,
            "version": __version__,
        }

    def render(self, document: str, ev: OrderEvent, *, columns: int, reprint: bool = False) -> Document:
        name = self._template_for(document, ev)
        ctx = self.context(ev, columns=columns, reprint=reprint)
        doc = render_document(self.env, name, ctx, columns, fallback=self.builtin, on_fallback=self.on_fallback)
        banner = str(self.texts["reprint_banner"])
        if reprint and not any(isinstance(b, Text) and banner.strip() in b.text for b in doc.blocks):
            # a custom template forgot the mark: a reprint is never without it
            doc = replace(doc, blocks=(Text(banner, align="center", bold=True),) + doc.blocks)
        return doc

    def render_named(self, name: str, context: Mapping[str, Any], *, columns: int) -> Document:
        """Reminders, summaries and the test page: templates fed a context of their own."""
        ctx = {"store": self.store, "t": self.texts, "cols": columns, "version": __version__,
               "now": datetime.now(timezone.utc), **context}
        return render_document(self.env, name, ctx, columns, fallback=self.builtin, on_fallback=self.on_fallback)
