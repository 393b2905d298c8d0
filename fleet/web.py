"""``store-fleet serve``: the fleet as a page the info department leaves open (Starlette + Jinja2, no
JavaScript build step; live updates as server-sent events).

Invariants:

* never open: the app refuses to be built without ``web.token`` or ``[web.users]`` (``build_app``), and every
  route but none answers 401 without them (``_Auth``); credentials are compared in constant time;
* everything a store published is shown through Jinja2 autoescaping (a store can name a printer
  ``<script>``: it is text on the page);
* the page and ``/events`` render the same rows from the same ``FleetState.table()``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Optional

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from .state import KINDS, _age, store_dict, summary_line
from .view import clock

TEMPLATES = Path(__file__).parent / "templates"
COOKIE = "store_fleet_token"


class NotProtected(Exception):
    """serve without a login configured: refused."""


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))
    env.filters["clock"] = clock
    env.filters["age"] = _age
    return env


class _Auth:
    """ASGI middleware: a bearer token (header, ``?token=`` once -> an HttpOnly cookie, or the cookie) or HTTP basic."""

    def __init__(self, app: Any, token: str, users: dict[str, str]) -> None:  # noqa: ANN401
        self.app, self.token, self.users = app, token, users

    def _ok(self, request: Request) -> bool:
        if self.token:
            for given in (request.cookies.get(COOKIE, ""), request.query_params.get("token", "")):
                if given and secrets.compare_digest(given.encode(), self.token.encode()):
                    return True
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if self.token and scheme.lower() == "bearer" and secrets.compare_digest(value.strip().encode(), self.token.encode()):
            return True
        if self.users and scheme.lower() == "basic":
            try:
                user, _, pw = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return False
            want = self.users.get(user)
            # compare against something even for an unknown user: no timing hint of which names exist
            return secrets.compare_digest(pw.encode(), (want or secrets.token_hex(16)).encode()) and want is not None
        return False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if not self._ok(request):
            headers = {"WWW-Authenticate": 'Basic realm="store-fleet"'} if self.users else {}
            return await Response("login required\n", 401, headers=headers, media_type="text/plain")(scope, receive, send)
        if request.query_params.get("token") and self.token:  # swap the token in the URL for a cookie
            resp = RedirectResponse(request.url.remove_query_params("token"), 303)
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


def build_app(console: Any, poll_s: float = 0.1, min_interval_s: float = 0.5) -> Any:  # noqa: ANN401 - fleet.console.Console
    web = console.cfg.web
    if not web.token and not web.users:
        raise NotProtected("the page needs a login: set web.token or [web.users] in the console's config "
                           "(it is never served open)")
    env = _env()
    info = console.cfg.stores

    def picture() -> dict[str, Any]:
        console.refresh_pushed()
        rows, counts = console.state.table()
        stores = [store_dict(s, p, console.state.pushed.get(s.id), info.get(s.id)) for s, p in rows]
        return {"stores": stores, "summary": summary_line(counts), "counts": counts}

    def rows_html(pic: dict[str, Any]) -> str:
        return env.get_template("rows.html").render(stores=pic["stores"])

    def push_view() -> Optional[dict[str, Any]]:
        p = console.history.push(kind="push")
        rb = console.history.push(kind="rollback")
        if rb and (not p or rb["id"] > p["id"]):
            p = rb
        if p:
            p = {**p, "log": p["log"][-12:]}
        return p

    async def page(request: Request) -> HTMLResponse:
        pic = await asyncio.to_thread(picture)
        regions = sorted({s["region"] for s in pic["stores"] if s["region"]})
        return HTMLResponse(env.get_template("fleet.html").render(
            rows=rows_html(pic), summary=pic["summary"], regions=regions, kinds=KINDS, push=push_view(),
            push_html=env.get_template("push.html").render(push=push_view())))

    async def store_page(request: Request) -> Response:
        sid = request.path_params["store_id"]
        snap = {s.id: s for s in console.state.snapshot()}
        s = snap.get(sid)
        if s is None:
            return HTMLResponse(env.get_template("missing.html").render(store_id=sid), 404)
        d = store_dict(s, console.state.problems(s, console.state.newest_version(list(snap.values()))),
                       console.state.pushed.get(sid), info.get(sid))
        return HTMLResponse(env.get_template("store.html").render(
            s=d, alerts=console.history.alerts_of(sid, 30), outages=console.history.outages_of(sid, 20)))

    async def api(request: Request) -> JSONResponse:
        pic = await asyncio.to_thread(picture)
        return JSONResponse(json.loads(json.dumps(pic, default=str)))

    cache: dict[str, Any] = {"key": None, "data": "", "at": 0.0, "push": None, "push_at": 0.0}
    cache_lock = threading.Lock()

    def update() -> tuple[Any, str]:
        """The SSE message for the fleet now, rendered once for every open page and at most every
        ``min_interval_s`` (at 5,000 stores the table takes a few hundred ms to build)."""
        with cache_lock:
            now = time.monotonic()
            if now - cache["push_at"] >= 0.5:  # the history is read twice a second, not every tick
                cache["push"], cache["push_at"] = push_view(), now
            p = cache["push"]
            key = (console.state.generation,
                   (p["id"], p["state"], len(p["log"]), p["log"][-1]["at"] if p["log"] else 0) if p else None)
            if key != cache["key"] and now - cache["at"] >= min_interval_s:
                pic = picture()
                body = {"summary": pic["summary"], "rows": rows_html(pic),
                        "push": env.get_template("push.html").render(push=p), "at": time.time()}
                cache.update(key=key, at=now, data=f"event: fleet\ndata: {json.dumps(body, ensure_ascii=False)}\n\n")
            return cache["key"], cache["data"]

    async def events(request: Request) -> StreamingResponse:
        async def stream():  # noqa: ANN202
            seen, last_beat = None, 0.0
            while not await request.is_disconnected():
                key, data = await asyncio.to_thread(update)
                if key != seen and data:
                    seen = key
                    yield data
                    last_beat = time.monotonic()
                elif time.monotonic() - last_beat > 15:
                    yield ": keep-alive\n\n"
                    last_beat = time.monotonic()
                await asyncio.sleep(poll_s)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    app = Starlette(routes=[Route("/", page), Route("/store/{store_id}", store_page), Route("/api/fleet", api),
                            Route("/events", events)])
    return _Auth(app, web.token, dict(web.users))


class WebServer:
    """uvicorn on a thread (tests, the demo) or in the foreground (``serve``)."""

    def __init__(self, console: Any, listen: str) -> None:  # noqa: ANN401
        import uvicorn  # noqa: PLC0415

        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]") or "127.0.0.1", int(port)
        web = console.cfg.web
        self.config = uvicorn.Config(build_app(console), host=self.host, port=self.port, log_level="warning",
                                     ssl_certfile=web.tls_cert or None, ssl_keyfile=web.tls_key or None,
                                     timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(self.config)
        self.thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        scheme = "https" if self.config.ssl_certfile else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> "WebServer":
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError(f"the web page could not listen on {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread:
            self.thread.join(5)

    def run(self) -> None:
        self.server.run()
