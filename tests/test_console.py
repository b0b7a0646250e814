"""The web console (/console on the management port): its JSON API always, the page in headless Chromium.

The browser tests drive the system's Chromium (Debian's ``chromium`` package, or MODELSERVE_CHROMIUM)
through Playwright's Python package; they skip, saying why, where either is missing. A screenshot is
saved under the test's tmp_path; with MODELSERVE_UPDATE_SCREENSHOT=1 it is also copied to docs/console.png.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import requests

from conftest import ROOT, Server, make_archive

ECHO = """
def handle(data, context):
    if data is None:
        return None
    out = []
    for row in data:
        body = row.get("data") if row.get("data") is not None else row.get("body")
        if isinstance(body, (bytes, bytearray)):
            out.append({"bytes": len(body), "head": bytes(body[:16]).decode("latin-1")})
        else:
            out.append({"echo": body})
    return out
"""

SQUARES = """
import time

def handle(data, context):
    if data is None:
        return None
    time.sleep(0.01)
    out = []
    for row in data:
        body = row.get("data") or row.get("body") or b"0"
        n = float(body.decode() if isinstance(body, (bytes, bytearray)) else body)
        out.append({"square": n * n})
    return out
"""

# a 1x1 PNG
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2d2bb9f0000000049454e44ae426082")


def _store(root: Path) -> Path:
    store = root / "model_store"
    store.mkdir()
    make_archive(store, "echo", ECHO)
    make_archive(store, "squares", SQUARES, config_yaml="batchSize: 4\nmaxBatchDelay: 20\n")
    return store


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("console")
    store = _store(root)
    (root / "srv").mkdir()
    srv = Server(root / "srv", store, ["echo=echo.mar", "squares=squares.mar"], args=["--enable-model-api"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Token auth on, the model API off (unregister answers 405)."""
    root = tmp_path_factory.mktemp("console-auth")
    store = root / "model_store"
    store.mkdir()
    make_archive(store, "echo", ECHO)
    (root / "srv").mkdir()
    srv = Server(root / "srv", store, ["echo=echo.mar"], auth=True)
    srv.start()
    yield srv
    srv.stop()


class Load:
    """Light load on one model from a background thread, bounded in time and in requests."""

    def __init__(self, url: str, seconds: float = 120, max_requests: int = 2000) -> None:
        self.url, self.seconds, self.max_requests = url, seconds, max_requests
        self.sent = 0
        self.bursts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, i: int) -> None:
        try:
            requests.post(self.url, data=str(i % 10), timeout=10)
        except requests.RequestException:
            pass

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        with ThreadPoolExecutor(3) as pool:  # bursts of 1-3 requests, so batches of several sizes form
            while not self._stop.is_set() and time.monotonic() < deadline and self.sent < self.max_requests:
                n = 1 + self.bursts % 3
                list(pool.map(self._one, range(self.sent, self.sent + n)))
                self.sent += n
                self.bursts += 1
                self._stop.wait(0.08)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture(scope="module")
def load(console_server: Server) -> Iterator[Load]:
    with Load(console_server.url + "/predictions/squares") as bg:
        yield bg


def stats(srv: Server, headers: Optional[dict[str, str]] = None) -> dict[str, Any]:
    r = requests.get(srv.mgmt + "/console/api/stats", timeout=10, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def version(doc: dict[str, Any], name: str, ver: str = "1.0") -> dict[str, Any]:
    return next(m for m in doc["models"] if m["modelName"] == name and m["modelVersion"] == ver)


# -- the JSON API (always runs) ------------------------------------------------------------------------
def test_stats_endpoint(console_server: Server) -> None:
    srv = console_server
    before = version(stats(srv), "echo")["stats"]
    for i in range(5):
        assert requests.post(srv.url + "/predictions/echo", data=f"hello {i}", timeout=30).status_code == 200
    doc = stats(srv)
    assert doc["inferenceAddress"] == srv.url and doc["modelApi"] is True and doc["auth"] is False
    assert isinstance(doc["time"], float) and abs(doc["time"] - time.time()) < 60
    assert {(m["modelName"], m["modelVersion"]) for m in doc["models"]} >= {("echo", "1.0"), ("squares", "1.0")}
    echo = version(doc, "echo")
    assert echo["isDefault"] is True and echo["minWorkers"] == 1 and echo["batchSize"] == 1
    assert version(doc, "squares")["batchSize"] == 4 and version(doc, "squares")["maxBatchDelay"] == 20
    [worker] = echo["workers"]
    assert worker["status"] == "READY" and worker["pid"] > 0 and worker["memoryUsage"] > 0 and worker["restarts"] == 0
    assert echo["queue"] == {"pending": 0, "capacity": 100, "remainingCapacity": 100}
    s = echo["stats"]
    assert s["requests"] - before["requests"] == 5 and s["ok"] - before["ok"] == 5
    nb = len(doc["latencyBuckets"])
    for key in ("latency", "queueWait", "handler"):
        assert len(s[key]["counts"]) == nb + 1 and sum(s[key]["counts"]) == s[key]["count"]
    assert s["latency"]["count"] == s["requests"] and s["latency"]["sum"] > 0
    assert len(s["batchSize"]["counts"]) == len(doc["batchBuckets"]) + 1
    assert s["batchSize"]["counts"][0] == s["batchSize"]["count"] >= 5  # batch size 1: all in the first bucket


def test_predict_proxy(console_server: Server) -> None:
    m = console_server.mgmt
    r = requests.post(m + "/console/api/predict/echo", data="hi there", headers={"Content-Type": "text/plain"},
                      timeout=30)
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["status"] == 200 and a["contentType"].startswith("application/json") and a["bodyEncoding"] == "text"
    assert "hi there" in a["body"] and a["latencyMs"] > 0 and a["requestId"] == a["headers"]["x-request-id"]
    r = requests.post(m + "/console/api/predict/echo/1.0", data=PNG, headers={"Content-Type": "image/png"}, timeout=30)
    assert r.json()["status"] == 200 and f'"bytes":{len(PNG)}' in r.json()["body"].replace(" ", "")
    big = b"x" * (2 * 1024 * 1024)  # above the management app's own body limit, below max_request_size
    r = requests.post(m + "/console/api/predict/echo", data=big, headers={"Content-Type": "application/octet-stream"},
                      timeout=30)
    assert r.json()["status"] == 200 and f'"bytes":{len(big)}' in r.json()["body"].replace(" ", "")
    r = requests.post(m + "/console/api/predict/squares", json=3, timeout=30)
    assert r.json()["status"] == 200 and "9.0" in r.json()["body"]
    missing = requests.post(m + "/console/api/predict/nope", data="x", timeout=30).json()
    assert missing["status"] == 404 and "nope" in missing["body"]
    assert requests.post(m + "/console/api/predict/echo/9.9", data="x", timeout=30).json()["status"] == 404
    assert requests.get(m + "/console/api/predict/echo", timeout=30).status_code == 405


def test_page_static_files_and_inference_proxy(console_server: Server) -> None:
    m = console_server.mgmt
    page = requests.get(m + "/console", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert "/console/static/app.js" in page.text
    assert requests.get(m + "/console/", timeout=10).status_code == 200
    for name, ctype in (("app.js", "text/javascript"), ("charts.js", "text/javascript"), ("style.css", "text/css")):
        r = requests.get(f"{m}/console/static/{name}", timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(ctype), name
    for name in ("index.html", "app.js", "charts.js", "style.css"):  # everything ships in the package: no CDN
        text = requests.get(f"{m}/console/static/{name}", timeout=10).text
        assert not re.search(r"""(src|href)=["']?(https?:)?//|from\s+["'](https?:)?//|@import|url\(""", text), name
    for bad in ("nope.js", "..%2F__init__.py", "%2E%2E%2Fconsole", ".hidden.js", "__init__.py"):
        assert requests.get(f"{m}/console/static/{bad}", timeout=10).status_code == 404, bad
    ping = requests.get(m + "/console/api/inference", params={"path": "/ping"}, timeout=10)
    assert ping.status_code == 200 and ping.json() == {"status": "Healthy"}
    doc = requests.get(m + "/console/api/inference", params={"path": "/api-description"}, timeout=10).json()
    assert "/predictions/{model_name}" in doc["paths"]
    for bad in ("http://example.com/", "//example.com/x", "ping"):
        assert requests.get(m + "/console/api/inference", params={"path": bad}, timeout=10).status_code == 400


def test_console_routes_need_the_management_key(auth_server: Server) -> None:
    srv = auth_server
    m = srv.mgmt
    assert requests.get(m + "/console", timeout=10).status_code == 200  # the page holds no data: it asks for the key
    assert requests.get(m + "/console/static/app.js", timeout=10).status_code == 200
    inference = srv.auth_headers("inference")
    for method, path in (("GET", "/console/api/stats"), ("POST", "/console/api/predict/echo"),
                         ("GET", "/console/api/inference?path=/ping")):
        assert requests.request(method, m + path, data="x", timeout=10).status_code == 401, path
        assert requests.request(method, m + path, data="x", headers=inference, timeout=10).status_code == 401, path
    doc = stats(srv, srv.auth_headers("management"))
    assert doc["auth"] is True and doc["modelApi"] is False and version(doc, "echo")["workers"]
    r = requests.post(m + "/console/api/predict/echo", data="k", headers=srv.auth_headers("management"), timeout=30)
    assert r.json()["status"] == 200
    # the console's inference proxy brings the inference key itself
    r = requests.get(m + "/console/api/inference", params={"path": "/api-description"},
                     headers=srv.auth_headers("management"), timeout=10)
    assert r.status_code == 200 and "paths" in r.json()


def test_console_off(server_factory: Any, model_store: Path) -> None:
    srv = server_factory(model_store, [], extra_config="enable_console=false\n").start()
    for path in ("/console", "/console/static/app.js", "/console/api/stats"):
        r = requests.get(srv.mgmt + path, timeout=10)
        assert r.status_code == 404 and r.json()["code"] == 404, path
    assert requests.get(srv.mgmt + "/models", timeout=10).status_code == 200


# -- in a browser ------------------------------------------------------------------------------------
def _chromium() -> Optional[str]:
    for cand in (os.environ.get("MODELSERVE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need the playwright Python package (pip install playwright)")
    exe = _chromium()
    if exe is None:
        pytest.skip("browser tests need Chromium: apt-get install chromium (or set MODELSERVE_CHROMIUM)")
    with sync_playwright() as p:
        # launch() gives the browser a fresh temporary profile (its --user-data-dir) and --headless
        try:
            b = p.chromium.launch(executable_path=exe, headless=True, args=CHROME_ARGS)
        except Exception as exc:  # noqa: BLE001 - e.g. a Chromium too old for this Playwright
            pytest.skip(f"browser tests: could not start {exe} through Playwright: {str(exc).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.set_default_timeout(30_000)
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors in the console page: {errors}"


def card(page: Any, name: str, ver: str = "1.0") -> Any:
    return page.locator(f'article.card[data-key="{name}/{ver}"]')


def test_browser_models_workers_and_charts(console_server: Server, load: Load, page: Any, tmp_path: Path) -> None:
    page.goto(console_server.mgmt + "/console")
    echo, squares = card(page, "echo"), card(page, "squares")
    echo.wait_for()
    squares.wait_for()
    assert echo.locator(".badge").is_visible() and echo.locator("h2").inner_text().startswith("echo")
    row = squares.locator("tbody tr").first
    assert "READY" in row.inner_text()
    pid = version(stats(console_server), "squares")["workers"][0]["pid"]
    assert str(pid) in row.inner_text() and "MiB" in row.inner_text()
    assert "size 4, max delay 20 ms" in squares.locator('[data-fact="batch"]').inner_text()
    assert "/ 100" in squares.locator('[data-fact="queue"]').inner_text()
    # the background load shows up in the request counter and, after a few samples, in the charts
    page.wait_for_function("""() => {
        const t = document.querySelector('article[data-key="squares/1.0"] [data-fact="requests"]').textContent;
        return parseInt(t, 10) > 20; }""")
    assert load.sent > 0
    update_docs = os.environ.get("MODELSERVE_UPDATE_SCREENSHOT") == "1"
    # five samples or so: rates and percentiles come from deltas (longer for the docs' screenshot)
    page.wait_for_timeout(40_000 if update_docs else 10_000)
    # count the blue pixels of each chart's plot area (below its legend, above its axis labels)
    drawn = page.evaluate("""() => [...document.querySelectorAll('article[data-key="squares/1.0"] canvas')]
        .map((c) => { const r = window.devicePixelRatio || 1, top = Math.ceil(16 * r), h = c.height - Math.ceil(34 * r);
                      const d = c.getContext('2d').getImageData(0, top, c.width, h).data;
                      let blue = 0; for (let i = 0; i < d.length; i += 4) if (d[i+2] > 180 && d[i] < 100) blue++;
                      return blue; })""")
    assert len(drawn) == 4 and all(n > 20 for n in drawn), drawn  # each chart has its blue line or bars
    shot = tmp_path / "console.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if update_docs:
        shutil.copyfile(shot, ROOT / "docs" / "console.png")


def test_browser_scale(console_server: Server, page: Any) -> None:
    srv = console_server
    page.goto(srv.mgmt + "/console")
    echo = card(page, "echo")
    echo.wait_for()
    try:
        echo.locator(".scale-n").fill("2")
        echo.locator("button.scale").click()
        page.wait_for_function("""() => /Workers scaled to 2/.test(
            document.querySelector('article[data-key="echo/1.0"] .msg').textContent)""")
        page.wait_for_function("""() => [...document.querySelectorAll('article[data-key="echo/1.0"] tbody tr')]
            .filter((r) => r.textContent.includes('READY')).length === 2""")
        assert "min 2, max 2" in echo.locator('[data-fact="workers"]').inner_text()
        assert len(srv.describe("echo")[0]["workers"]) == 2
    finally:
        requests.put(srv.mgmt + "/models/echo?min_worker=1&synchronous=true", timeout=60)


def test_browser_predict_and_api_docs(console_server: Server, page: Any) -> None:
    srv = console_server
    page.goto(srv.mgmt + "/console#try")
    page.wait_for_selector('#try-model option[value="echo/1.0"]', state="attached")
    page.select_option("#try-model", "echo/1.0")
    page.check('input[name=mode][value=json]')
    page.fill("#try-text", '{"greeting": "hello console"}')
    page.click("#try-send")
    page.wait_for_function("() => document.querySelector('#try-status').textContent === 'HTTP 200'")
    assert "hello console" in page.inner_text("#try-body")
    assert re.search(r"\d+\.\d ms in the server", page.inner_text("#try-meta"))
    curl = page.inner_text("#try-curl")
    assert f"'{srv.url}/predictions/echo/1.0'" in curl and "application/json" in curl
    # a file, dropped on the drop zone
    page.check('input[name=mode][value=file]')
    page.select_option("#try-model", "echo")
    dt = page.evaluate_handle("""(bytes) => { const d = new DataTransfer();
        d.items.add(new File([new Uint8Array(bytes)], 'pixel.png', {type: 'image/png'})); return d; }""", list(PNG))
    page.dispatch_event("#drop", "drop", {"dataTransfer": dt})
    assert "pixel.png" in page.inner_text("#drop-label")
    page.evaluate("() => { document.querySelector('#try-status').textContent = ''; }")
    page.click("#try-send")
    page.wait_for_function("() => document.querySelector('#try-status').textContent === 'HTTP 200'")
    assert f'"bytes": {len(PNG)}' in page.inner_text("#try-body")
    assert "-T 'pixel.png'" in page.inner_text("#try-curl") and "/predictions/echo'" in page.inner_text("#try-curl")
    # the API docs of both ports, with a try form on GET routes
    page.goto(srv.mgmt + "/console#api")
    page.wait_for_selector("details.op")
    docs = page.inner_text("#api-docs")
    assert "Management API" in docs and "Inference API" in docs and "/models/{model_name}/{model_version}/set-default" in docs
    ping = page.locator("details.op", has=page.locator("code", has_text=re.compile(r"^/ping$")))
    ping.locator("summary").click()
    ping.locator("button", has_text="Try").click()
    page.wait_for_function("() => [...document.querySelectorAll('.try-out')].some((e) => /HTTP 200/.test(e.textContent))")
    assert "Healthy" in ping.locator(".try-out").inner_text()


def test_browser_default_and_unregister(console_server: Server, tmp_path: Path, page: Any) -> None:
    srv = console_server
    make_archive(srv.store, "echo2", ECHO, version="2.0")
    r = requests.post(srv.mgmt + "/models", params={"url": "echo2.mar", "model_name": "echo", "initial_workers": 1},
                      timeout=120)
    assert r.status_code == 200, r.text
    try:
        page.goto(srv.mgmt + "/console")
        v2 = card(page, "echo", "2.0")
        v2.wait_for()
        assert not v2.locator(".badge").is_visible()
        v2.locator("button.set-default").click()
        page.wait_for_function("""() => !document.querySelector('article[data-key="echo/2.0"] .badge').hidden
            && document.querySelector('article[data-key="echo/1.0"] .badge').hidden""")
        card(page, "echo", "1.0").locator("button.set-default").click()  # back to 1.0 before unregistering 2.0
        page.wait_for_function("() => document.querySelector('article[data-key=\"echo/2.0\"] .badge').hidden")
        page.once("dialog", lambda d: d.accept())
        v2.locator("button.unregister").click()
        v2.wait_for(state="detached")
        assert [m["modelVersion"] for m in srv.describe("echo", "all")] == ["1.0"]
    finally:
        requests.delete(srv.mgmt + "/models/echo/2.0", timeout=60)


def test_browser_key_prompt_and_405(auth_server: Server, page: Any) -> None:
    srv = auth_server
    page.goto(srv.mgmt + "/console")
    page.wait_for_selector("#login", state="visible")
    page.fill("#key", "not-the-key")
    page.click("#login button")
    page.wait_for_function("() => /invalid management key/.test(document.querySelector('#login-error').textContent)")
    page.fill("#key", srv.keys()["management"])
    page.click("#login button")
    echo = card(page, "echo")
    echo.wait_for()
    assert page.locator("#login").is_hidden()
    assert page.evaluate("() => sessionStorage.getItem('modelserve.managementKey')") == srv.keys()["management"]
    page.once("dialog", lambda d: d.accept())
    echo.locator("button.unregister").click()
    page.wait_for_function("""() => /405: Model API is disabled/.test(
        document.querySelector('article[data-key="echo/1.0"] .msg').textContent)""")
