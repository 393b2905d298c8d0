"""Escalation notifiers: DingTalk and WeCom group robots (webhooks), with retries.

Sent from one background thread so a slow webhook never delays anything else. DingTalk's
"加签" (signed) robots get ``timestamp`` and ``sign`` (HMAC-SHA256 of ``timestamp\\nsecret``).

Invariants (issue 19, finding 4): only ``https://`` URLs are requested (``allowed``), to the hosts
of ``allowed_hosts`` when given (the config validated them against ``escalation.webhook_hosts``),
and a redirect is never followed (``_NoRedirect``): a robot URL cannot be bent into a request to
the store's LAN or the Pi itself. Logs and ``sent`` never hold a URL's token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable, Collection, Optional

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Webhook:
    kind: str  # dingtalk | wecom
    url: str
    secret: str = ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - urllib's signature
        return None  # a 3xx is an HTTPError, never a second request


_OPENER = urllib.request.build_opener(_NoRedirect())


def allowed(url: str, hosts: Optional[Collection[str]] = None) -> bool:
    """https only, no login in the URL, and the host on the list (when one is given)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError:
        return False
    if parts.scheme != "https" or not parts.hostname or "@" in parts.netloc:
        return False
    return hosts is None or parts.hostname.lower() in {h.lower() for h in hosts}


def redact(url: str) -> str:
    """scheme://host/path: no login, no query (DingTalk access_token=, WeCom key=)."""
    try:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or ''}{parts.path}" + ("?***" if parts.query else "")
    except ValueError:
        return "***"


def dingtalk_url(url: str, secret: str, now_ms: Optional[int] = None) -> str:
    if not secret:
        return url
    ts = str(now_ms if now_ms is not None else int(time.time() * 1000))
    digest = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    sign = urllib.parse.quote_plus(base64.b64encode(digest))
    return f"{url}{'&' if '?' in url else '?'}timestamp={ts}&sign={sign}"


def body_for(kind: str, title: str, text: str) -> bytes:
    if kind == "dingtalk":
        return json.dumps({"msgtype": "markdown", "markdown": {"title": title, "text": text}}, ensure_ascii=False).encode()
    return json.dumps({"msgtype": "markdown", "markdown": {"content": text}}, ensure_ascii=False).encode()


class Notifier:
    def __init__(self, hooks: list[Webhook], *, attempts: int = 5, backoff_s: float = 2.0, timeout_s: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep, allowed_hosts: Optional[Collection[str]] = None,
                 opener: Optional[urllib.request.OpenerDirector] = None) -> None:
        self.allowed_hosts = allowed_hosts
        self.hooks = []
        for hook in hooks:
            if allowed(hook.url, allowed_hosts):
                self.hooks.append(hook)
            else:
                log.error("%s notifier %s refused: https only, to an allowed host", hook.kind, redact(hook.url))
        self.opener = opener or _OPENER
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.sent: list[tuple[str, int]] = []  # (redacted url, HTTP status) of the last 100 deliveries
        self._q: "queue.Queue[tuple[str, str]]" = queue.Queue(maxsize=200)
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def start(self) -> None:
        if self.hooks:
            self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def send(self, title: str, text: str) -> None:
        if not self.hooks:
            return
        try:
            self._q.put_nowait((title, text))
        except queue.Full:
            log.error("notification queue full: %s dropped", title)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                title, text = self._q.get(timeout=0.5)
            except queue.Empty:
                continue
            for hook in self.hooks:
                self._deliver(hook, title, text)

    def _deliver(self, hook: Webhook, title: str, text: str) -> bool:
        for attempt in range(1, self.attempts + 1):
            url = dingtalk_url(hook.url, hook.secret) if hook.kind == "dingtalk" else hook.url
            req = urllib.request.Request(url, data=body_for(hook.kind, title, text), headers={"Content-Type": "application/json"})
            try:
                with self.opener.open(req, timeout=self.timeout_s) as r:  # https, allowed host, no redirects
                    answer = json.loads(r.read() or b"{}")
                    status = r.status
                if answer.get("errcode", 0) == 0:
                    self.sent.append((redact(hook.url), status))
                    del self.sent[:-100]
                    return True
                problem = f"robot said {answer}"
            except urllib.error.HTTPError as e:
                problem = f"HTTP {e.code}" + (" (redirects are not followed)" if 300 <= e.code < 400 else "")
            except (urllib.error.URLError, OSError, ValueError) as e:
                problem = type(e).__name__ + (f": {e.reason}" if isinstance(e, urllib.error.URLError) else "")
            log.warning("%s notification attempt %d/%d failed: %s", hook.kind, attempt, self.attempts, problem)
            if attempt < self.attempts and not self._stop.is_set():
                self.sleep(self.backoff_s * 2 ** (attempt - 1))
        log.error("%s notification gave up after %d attempts: %s", hook.kind, self.attempts, title)
        return False


_MD = str.maketrans({"[": "［", "]": "］", "(": "（", ")": "）", "!": "！", "<": "＜", ">": "＞", "`": "｀",
                     "\\": "＼", "\n": " ", "\r": " "})


def md_text(value: object) -> str:
    """A value as plain text inside DingTalk/WeCom markdown: no link, image, HTML or line of its own
    (order data from the OMS reaches the info department's group chat through it)."""
    return str(value).translate(_MD)
