"""store-fleet serve: login required (token or basic), everything a store says is escaped, and the page in a
real headless Chromium (Debian's chromium + chromium-driver, Selenium) shows a printer fault injected on a
real agent's virtual printer, live over server-sent events (issue 16).

The Chromium test is skipped when chromium, chromedriver or selenium is missing (``./install.sh --dev``
installs them); it says so in the skip reason."""

import base64
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.devbroker import free_port
from conftest import wait_until, write_toml
from fleet import config as fconfig
from fleet.cli import main
from fleet.console import Console
from fleet.web import NotProtected, WebServer, build_app
from test_fleet_console import Fleet


def _get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        r = opener.open(req, timeout=5)
        return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


def offline_console(tmp_path, **web):
    cfg = fconfig.parse({"state_dir": str(tmp_path / "fleet"), "web": web})
    return Console(cfg)  # not connected: the state is fed by hand


def test_the_page_is_never_open_and_takes_a_token_or_basic_login(tmp_path):
    with pytest.raises(NotProtected):
        build_app(offline_console(tmp_path))
    r = CliRunner().invoke(main, ["serve", "--config", str(write_toml(tmp_path / "f.toml", {"state_dir": str(tmp_path)}))])
    assert r.exit_code == 2 and "serve needs a login" in r.output
    c = offline_console(tmp_path, token="t0ken-123", users={"wang": "pw-1"})
    srv = WebServer(c, f"127.0.0.1:{free_port()}").start()
    try:
        u = srv.url
        assert _get(u + "/")[0] == 401 and _get(u + "/events")[0] == 401 and _get(u + "/api/fleet")[0] == 401
        status, headers, _ = _get(u + "/", {"Authorization": "Basic " + base64.b64encode(b"wang:nope").decode()})
        assert status == 401 and "Basic" in headers.get("www-authenticate", "")
        assert _get(u + "/", {"Authorization": "Basic " + base64.b64encode(b"li:pw-1").decode()})[0] == 401
        assert _get(u + "/", {"Authorization": "Basic " + base64.b64encode(b"wang:pw-1").decode()})[0] == 200
        assert _get(u + "/api/fleet", {"Authorization": "Bearer t0ken-123"})[0] == 200
        assert _get(u + "/", {"Authorization": "Bearer t0ken-12"})[0] == 401
        status, headers, _ = _get(u + "/?token=t0ken-123")
        assert status == 303 and "store_fleet_token=t0ken-123" in headers["set-cookie"] and "HttpOnly" in headers["set-cookie"]
        assert "token" not in headers["location"]
        assert _get(u + "/", {"Cookie": "store_fleet_token=t0ken-123"})[0] == 200
    finally:
        srv.stop()
        c.history.close()


def test_what_a_store_says_is_text_on_the_page(tmp_path):
    c = offline_console(tmp_path, token="t")
    evil = "<img src=x onerror=alert(1)>"
    health = {"v": 1, "store_id": "cq-0001", "at": "2026-11-30T03:00:00Z", "agent": {"version": "0.1.0"}, "mqtt": {},
              "printers": [{"name": evil, "role": "primary", "state": "paper_out", "detail": evil}],
              "audio": {"state": "ok"}, "queue": {"pending": 0}, "alerts_open": 1}
    c.state.ingest("stores/cq-0001/status", b"online")
    c.state.ingest("stores/cq-0001/health", json.dumps(health).encode())
    c.state.ingest("stores/cq-0001/alerts", json.dumps({"id": "a", "code": "printer.paper_out", "state": "escalated",
                                                          "message": evil}).encode())
    srv = WebServer(c, f"127.0.0.1:{free_port()}").start()
    try:
        for path in ("/", "/store/cq-0001"):
            status, _, body = _get(srv.url + path, {"Authorization": "Bearer t"})
            assert status == 200 and "cq-0001" in body and "paper_out" in body
            assert evil not in body and "&lt;img src=x onerror=alert(1)&gt;" in body
        assert _get(srv.url + "/store/%3Cscript%3E", {"Authorization": "Bearer t"})[0] == 404
    finally:
        srv.stop()
        c.history.close()


def _chromium():
    try:
        from selenium import webdriver  # noqa: F401, PLC0415
    except ImportError:
        return None, "selenium is not installed (./install.sh --dev installs it)"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    if not browser or not driver:
        return None, "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    return (browser, driver), ""


def test_a_printer_fault_shows_on_the_page_in_headless_chromium(broker, tmp_path):
    found, why = _chromium()
    if not found:
        pytest.skip(why)
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    f = Fleet(broker, tmp_path, 3)
    c = Console(fconfig.parse(f.console_cfg(web={"token": "s3cret"},
                                            stores={"cq-0001": {"name": "解放碑店", "region": "渝中"},
                                                    "cq-0002": {"name": "观音桥店", "region": "江北"},
                                                    "cq-0003": {"name": "南坪店", "region": "南岸"}}))).start()
    srv = WebServer(c, f"127.0.0.1:{free_port()}").start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,700"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(found[1]), options=opts)
    try:
        assert wait_until(lambda: all(c.state.stores.get(s) and c.state.stores[s].health for s in f.ids), 15)
        drv.get(srv.url + "/?token=s3cret")  # the token becomes an HttpOnly cookie; the URL loses it
        assert "token" not in drv.current_url
        # The page re-renders its rows on every update, so an element handle can go stale between finding it
        # and reading it: every read below is one script run in the page, which sees one consistent DOM.
        def text(selector):
            return drv.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                                      selector) or ""

        def row(sid, what="innerText"):
            return drv.execute_script(
                "const e = document.querySelector(arguments[0]); return e ? String(e[arguments[1]]) : '';",
                f'#rows tr[data-id="{sid}"]', what)

        def shown():
            return drv.execute_script("return Array.from(document.querySelectorAll('#rows tr'))"
                                      ".filter(r => r.offsetParent !== null).map(r => r.dataset.id);")

        assert wait_until(lambda: "3 stores: 3 ok" in text("#summary"), 10)
        assert wait_until(lambda: text("#conn") == "● live", 10)
        assert "ready" in row("cq-0002")
        f.printers["cq-0002"].set_mode("paper_out")
        assert wait_until(lambda: c.state.stores["cq-0002"].health.printers[0].state == "paper_out", 15)
        health_seen = time.monotonic()  # the console has the agent's health message
        assert wait_until(lambda: "paper_out" in row("cq-0002"), 10, 0.01)
        shown_after = time.monotonic() - health_seen
        print(f"\nfault on the page {shown_after * 1000:.0f} ms after the console received the health message")
        assert "problem printer" in row("cq-0002", "className")
        assert text("#summary") == "3 stores: 2 ok, 1 printer faults"
        assert drv.execute_script("return document.querySelector('#rows tr').dataset.id;") == "cq-0002"  # problems on top
        # the filters: by region, by state
        from selenium.webdriver.support.ui import Select  # noqa: PLC0415

        Select(drv.find_element(By.ID, "kind")).select_by_value("problems")
        assert wait_until(lambda: shown() == ["cq-0002"], 5), shown()
        Select(drv.find_element(By.ID, "kind")).select_by_value("")
        Select(drv.find_element(By.ID, "region")).select_by_visible_text("南岸")
        assert wait_until(lambda: shown() == ["cq-0003"], 5), shown()
        Select(drv.find_element(By.ID, "region")).select_by_value("")
        assert wait_until(lambda: len(shown()) == 3, 5)
        shot = Path(os.environ.get("FLEET_SCREENSHOT") or tmp_path / "fleet.png")
        drv.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        # a store's detail
        drv.get(srv.url + "/store/cq-0002")
        assert "paper_out" in drv.find_element(By.TAG_NAME, "body").text
        # a page without the cookie is refused
        drv.delete_all_cookies()
        drv.get(srv.url + "/")
        assert "login required" in drv.find_element(By.TAG_NAME, "body").text
    finally:
        drv.quit()
        srv.stop()
        c.stop()
        f.close()
