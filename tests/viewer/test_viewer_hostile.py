"""A hostile web page in the operator's browser: requests another site's page makes to the
viewer (subresources, frames, fetches: the browser sends them, with ``Sec-Fetch-Site:
cross-site``, even though the page cannot read the answers) are refused before they open a
stream or read the store; a link to the viewer still opens it; WebSockets are refused
before any route runs. The headers used are the ones Debian's Chromium sends (recorded), and
one test checks it with the real browser."""

from __future__ import annotations

import asyncio
import http.server
import os
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ci import require_module, unavailable

require_module("starlette", install="llmspell[viewer]")
require_module("sse_starlette", install="llmspell[viewer]")
require_module("uvicorn", install="llmspell[viewer]")

from starlette.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from llmspell.events.event import UniversalEvent  # noqa: E402
from llmspell.events.store.sqlite import SQLiteStore  # noqa: E402
from llmspell.viewer import StoreSource, ViewerServer, create_app  # noqa: E402
from llmspell.viewer import app as viewer_app  # noqa: E402

TOKEN = "hostile-test-token-0123456789"
CHROMIUM = os.environ.get("LLMSPELL_TEST_CHROMIUM", "/usr/bin/chromium")

# (Sec-Fetch-Site, Sec-Fetch-Mode, Sec-Fetch-Dest) of what a cross-site page's elements and
# calls make Chromium send (seen from <script>, <img>, <audio>, <iframe>, <object>,
# <link rel=preload>, fetch(mode: "no-cors"), EventSource).
CROSS_SITE = [
    ("cross-site", "no-cors", "script"),
    ("cross-site", "no-cors", "image"),
    ("cross-site", "no-cors", "audio"),
    ("cross-site", "navigate", "iframe"),
    ("cross-site", "navigate", "object"),
    ("cross-site", "no-cors", "empty"),
    ("cross-site", "cors", "empty"),
    ("same-site", "no-cors", "empty"),  # another port of localhost: another program
]


def fetch_headers(site: str, mode: str, dest: str) -> dict[str, str]:
    return {"sec-fetch-site": site, "sec-fetch-mode": mode, "sec-fetch-dest": dest}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "events.db"
    store = SQLiteStore(path)
    store.append(UniversalEvent.create("viewer.test.ready", {"x": 1}))
    store.flush()
    store.close()
    return path


@pytest.fixture
def client(store_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(StoreSource(store_path)), base_url="http://127.0.0.1:8787") as c:
        yield c


@pytest.fixture(scope="module")
def served(store_path: Path) -> Iterator[ViewerServer]:
    server = ViewerServer(create_app(StoreSource(store_path, poll_interval=0.05)),
                          "127.0.0.1", 0, graceful_timeout=1)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(("site", "mode", "dest"), CROSS_SITE)
@pytest.mark.parametrize("path", ["events", "events?tail=5000", "api/state",
                                  "api/check?pattern=a", "static/app.js", ""])
def test_what_another_sites_page_asks_is_refused(served: ViewerServer, path: str, site: str,
                                                 mode: str, dest: str) -> None:
    # A stream answers at once with its headers: read them only (a refused one is short).
    with httpx.stream("GET", served.url + path, headers=fetch_headers(site, mode, dest),
                      timeout=10) as answer:
        status, headers = answer.status_code, answer.headers
        text = answer.read().decode() if status != 200 else ""
    assert status == 403, (path, site, mode, dest)
    assert "another site" in text
    assert headers["x-frame-options"] == "DENY"


def test_the_viewers_own_page_and_a_link_to_it_are_served(client: TestClient) -> None:
    own = fetch_headers("same-origin", "cors", "empty")
    assert client.get("/api/state", headers=own).status_code == 200
    assert client.get("/static/app.js",
                      headers=fetch_headers("same-origin", "no-cors", "script")).status_code == 200
    typed = fetch_headers("none", "navigate", "document")  # the address typed or pasted
    assert client.get("/", headers=typed).status_code == 200
    link = fetch_headers("cross-site", "navigate", "document")  # a link from elsewhere
    assert client.get("/", headers=link).status_code == 200
    assert client.get("/api/state", headers=link).status_code == 403  # only the page
    assert client.get("/api/state").status_code == 200  # a program: no browser headers


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:9999",
                                    "http://localhost:8787", "null", "file://", "garbage"])
def test_a_browser_without_fetch_metadata_is_judged_by_its_origin(client: TestClient,
                                                                  origin: str) -> None:
    assert client.get("/api/state", headers={"origin": origin}).status_code == 403


@pytest.mark.parametrize(("origin", "host"), [
    ("http://127.0.0.1:8787", "127.0.0.1:8787"),
    ("HTTP://127.0.0.1:8787", "127.0.0.1:8787"),
    ("http://localhost", "localhost:80"),
    ("http://[::1]:8787", "[::1]:8787"),
])
def test_the_pages_own_origin_is_served(origin: str, host: str) -> None:
    headers = {"origin": origin, "host": host}
    assert not viewer_app.cross_site({"path": "/api/state"}, headers)


def test_a_cross_site_request_is_refused_even_with_the_token(store_path: Path) -> None:
    app = create_app(StoreSource(store_path), token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1:8787") as client:
        hostile = fetch_headers("cross-site", "no-cors", "image")
        answer = client.get(f"/api/state?token={TOKEN}", headers=hostile)
        assert answer.status_code == 403 and "set-cookie" not in answer.headers
        link = fetch_headers("cross-site", "navigate", "document")
        answer = client.get(f"/?token={TOKEN}", headers=link)
        assert answer.status_code == 200 and "set-cookie" in answer.headers


def test_a_websocket_is_refused_before_any_route_runs(client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/events"):
        pass
    reached: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["type"])

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    scope = {"type": "websocket", "path": "/events", "headers": [(b"host", b"127.0.0.1")]}
    asyncio.run(viewer_app.Guard(inner, token=None)(scope, receive, send))
    assert reached == [] and sent == [{"type": "websocket.close", "code": 1008}]


# -- the real browser --------------------------------------------------------------------

def test_a_hostile_page_in_the_browser_is_refused(store_path: Path, tmp_path: Path) -> None:
    """A page served from another port of the machine makes Chromium ask the viewer for its
    stream in every way a page can without reading the answer: every request is refused,
    and the viewer's own page, opened afterwards in the same browser, is live."""
    require_module("playwright.sync_api", install="playwright (pip install 'llmspell[test]')")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium, or set "
                    "LLMSPELL_TEST_CHROMIUM")
    app = create_app(StoreSource(store_path, poll_interval=0.05))
    answers: list[tuple[str, int]] = []

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        async def noted(message: Any) -> None:
            if message["type"] == "http.response.start":
                answers.append((scope["path"] + "?" + scope["query_string"].decode(),
                                message["status"]))
            await send(message)
        await app(scope, receive, noted if scope["type"] == "http" else send)

    recording.state = app.state  # type: ignore[attr-defined]  # ViewerServer.stop's hub
    server = ViewerServer(recording, "127.0.0.1", 0, graceful_timeout=1)
    url = server.start()
    hostile = ("<html><body><script>const U = " + repr(url) + """; let n = 0;
      for (const tag of ["script", "img", "audio", "iframe", "object"]) {
        const e = document.createElement(tag); const src = U + "events?tail=" + (n++);
        if (tag === "object") e.data = src; else e.src = src;
        document.body.appendChild(e);
      }
      fetch(U + "events?tail=" + (n++), {mode: "no-cors"}).catch(() => {});
      fetch(U + "api/state?n=" + (n++), {mode: "no-cors"}).catch(() => {});
      new EventSource(U + "events?tail=" + (n++));
      window.asked = n;
    </script></body></html>""").encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(hostile)

        def log_message(self, *args: Any) -> None:
            pass

    elsewhere = socketserver.TCPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            try:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=["--headless", "--no-sandbox",
                                                    "--disable-gpu", "--no-first-run"])
            except PlaywrightError as exc:
                unavailable(f"Chromium at {CHROMIUM} does not start: {exc}")
            try:
                page = browser.new_page()
                page.goto(f"http://localhost:{elsewhere.server_address[1]}/")
                asked = int(page.evaluate("window.asked"))
                for _ in range(300):  # the requests arrive as the browser makes them
                    if len({path for path, _ in answers}) >= asked:
                        break
                    page.wait_for_timeout(50)
                hostile_answers = list(answers)
                assert len({path for path, _ in hostile_answers}) >= asked, hostile_answers
                assert all(status == 403 for _, status in hostile_answers), hostile_answers
                own = browser.new_page()
                own.goto(url)
                own.wait_for_selector("#status.pill-live", timeout=15_000)
                own.screenshot(path=str(tmp_path / "own.png"))
            finally:
                browser.close()
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()
        server.stop()
