"""Text for the terminal: one line per store, a store in full, a push's progress. Pure functions of data."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Optional

from wcwidth import wcwidth

from .state import FleetState, Problem, Store, _age, store_dict, summary_line


def clock(ts: Optional[float]) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "?"


def _printers(s: Store) -> str:
    if not s.health:
        return "-"
    out = []
    for p in s.health.printers:
        t = f"{p.name}={p.state}"
        if p.paper:
            t += f" ({p.paper.tickets_left} tickets left)"
        out.append(t)
    return " ".join(out)


def pad(text: str, width: int) -> str:
    """``text`` cut or padded to ``width`` terminal columns (a Chinese character takes two)."""
    out, used = "", 0
    for ch in text:
        w = max(0, wcwidth(ch))
        if used + w > width:
            break
        out, used = out + ch, used + w
    return out + " " * (width - used)


def store_line(s: Store, problems: list[Problem], cfg_names: dict[str, Any], pushed: Optional[int]) -> str:
    agent = (s.status or "?").upper() if s.status != "online" else "online"
    since = f" since {clock(s.status_since)}" if s.status_since and s.status != "online" else ""
    h = s.health
    q = f"queue {int(h.queue.get('pending') or 0)}" if h else "queue -"
    cfg = f"cfg v{s.config.version}" if s.config else "cfg -"
    if pushed is not None and s.config and s.config.version != pushed:
        cfg += f"/v{pushed}"
    today = f"today {s.stats.orders.total}" if s.stats else ""
    name = getattr(cfg_names.get(s.id), "name", "") if cfg_names else ""
    head = (f"{pad(s.id, 14)} {pad(name or '', 10)} {pad(agent + since, 22)} {pad(_printers(s), 36)} {q:<9} {cfg:<11} "
            f"{s.version or '-':<8} {today}")
    flag = ("  ! " + "; ".join(p.text for p in problems)) if problems else ""
    return head.rstrip() + flag


def status_text(state: FleetState, problems_only: bool, names: dict[str, Any]) -> str:
    rows, counts = state.table()
    lines = [store_line(s, probs, names, state.pushed.get(s.id)) for s, probs in rows if probs or not problems_only]
    return "\n".join(lines + [summary_line(counts)])


def store_text(d: dict[str, Any], alerts: list[dict[str, Any]], outages: list[dict[str, Any]]) -> str:
    L = [f"store {d['store_id']}" + (f"  {d['name']}" if d["name"] else "") + (f"  ({d['region']})" if d["region"] else "")]
    since = f" since {clock(d['status_since'])}" if d["status_since"] else ""
    L.append(f"  agent      {d['status'] or 'never seen'}{since}, version {d['version'] or '?'}"
             + (f", up {_age(d['uptime_s'])}" if isinstance(d.get("uptime_s"), (int, float)) else ""))
    L.append(f"  problems   " + ("; ".join(p["text"] for p in d["problems"]) or "none"))
    L.append(f"  health at  {d['health_at'] or '-'}")
    for p in d["printers"]:
        paper = ""
        if p["paper"]:
            paper = f", paper {p['paper']['left_m']:.1f} m / {p['paper']['tickets_left']} tickets left"
        L.append(f"  printer    {p['name']} ({p['role']}): {p['state']}" + (f" {p['detail']}" if p["detail"] else "")
                 + (f" since {p['since']}" if p["since"] and p["state"] != "ready" else "")
                 + f", queue {p['queue']}{paper}, last print {p['last_print_at'] or '-'}")
    if d["queue"]:
        L.append(f"  queue      {int(d['queue'].get('pending') or 0)} waiting"
                 + (f", oldest {_age(d['queue']['oldest_s'])}" if d["queue"].get("oldest_s") else ""))
    if d["audio"]:
        L.append(f"  audio      {d['audio'].get('state')}" + (f": {d['audio'].get('error')}" if d["audio"].get("error") else ""))
    c = d["config"]
    if c:
        L.append(f"  config     v{c['version']} sha256 {c['sha256'][:12]} applied {c['applied_at'] or '-'}"
                 + (f"; HQ pushed v{d['config_pushed']}" if d["config_pushed"] is not None else "")
                 + (f"; error (v{c['error']['version']}): {c['error']['message']}" if c["error"] else ""))
    else:
        L.append("  config     no config/state seen" + (f"; HQ pushed v{d['config_pushed']}" if d["config_pushed"] is not None else ""))
    L.append(f"  last print {d['last_print_at'] or '-'}" + (f" (order {d['last_order_printed']})" if d.get("last_order_printed") else ""))
    t = d["today"]
    if t:
        L.append(f"  today      {t['day']}: {t['orders']} orders, {t['paid_fen'] / 100:.2f} yuan, tickets "
                 + (", ".join(f"{k} {v}" for k, v in sorted(t["tickets"].items())) or "0")
                 + (", results " + ", ".join(f"{k} {v}" for k, v in sorted(t["results"].items())) if t["results"] else ""))
    L.append(f"  alerts     {d['alerts_open']} open, {d['escalated']} escalated")
    for a in d["alerts"]:
        L.append(f"    {a.get('state', ''):<12} {a.get('code', '')}: {a.get('message', '')[:100]}")
    if alerts:
        L.append("  history (alerts, newest first):")
        for a in alerts[:10]:
            L.append(f"    {clock(a['seen'])} {a['state']:<12} {a['code']}")
    if outages:
        L.append("  outages:")
        for o in outages[:10]:
            L.append(f"    {o['state']:<8} {clock(o['since'])} - {clock(o['until']) if o['until'] else 'now'}")
    if d["garbage"]:
        L.append(f"  garbage    {d['garbage']} unreadable message(s), last: {d['garbage_last']}")
    return "\n".join(L)


def push_line(ev: dict[str, Any]) -> str:
    return f"{time.strftime('%H:%M:%S')} {ev['text']}"
