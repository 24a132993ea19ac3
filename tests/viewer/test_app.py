"""The web app: the page, read-only routes, access checks, and the SSE stream over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ci import require_module

require_module("starlette", install="llmspell[viewer]")
require_module("sse_starlette", install="llmspell[viewer]")
require_module("uvicorn", install="llmspell[viewer]")

from starlette.testclient import TestClient  # noqa: E402

from llmspell.errors import ConfigurationError  # noqa: E402
from llmspell.events.event import UniversalEvent  # noqa: E402
from llmspell.events.store.sqlite import SQLiteStore  # noqa: E402
from llmspell.viewer import StoreSource, ViewerServer, create_app  # noqa: E402
from llmspell.viewer.server import bind_socket  # noqa: E402
from tests.viewer.support import record_agent_run  # noqa: E402

TOKEN = "secret-token-0123456789"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_agent_run(tmp_path_factory.mktemp("viewer"))


@pytest.fixture
def client(store_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(StoreSource(store_path)), base_url="http://127.0.0.1") as c:
        yield c


def test_the_page_and_its_assets(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "llmspell view" in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "EventSource" in script.text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/nothing.js").status_code == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_it_only_reads(client: TestClient, method: str) -> None:
    for path in ("/", "/events", "/api/state", "/api/check"):
        assert client.request(method, path).status_code == 405


def test_state_runs_and_events(client: TestClient) -> None:
    state = client.get("/api/state").json()
    (run,) = state["runs"]
    assert run["name"] == "helper" and run["status"] == "completed"
    assert state["stats"]["source"]["kind"] == "store"
    whole = client.get(f"/api/runs/{run['run_id']}").json()
    assert any(step["status"] == "blocked" for step in whole["steps"])
    assert client.get("/api/runs/nope").status_code == 404
    first = client.get("/api/events/1").json()
    assert first["event_type"] == "system.started"
    assert client.get("/api/events/99999").status_code == 404
    assert client.get("/api/events/x").status_code == 404


def test_pattern_check(client: TestClient) -> None:
    assert client.get("/api/check", params={"pattern": "tool.**"}).json() == {
        "ok": True, "pattern": "tool.**"}
    bad = client.get("/api/check", params={"pattern": "tool..x"}).json()
    assert bad["ok"] is False and "empty segment" in bad["error"]
    assert client.get("/events", params={"pattern": "a..b"}).status_code == 400
    assert client.get("/events", params={"tail": "-1"}).status_code == 400


def test_only_loopback_host_names_without_a_token(store_path: Path) -> None:
    app = create_app(StoreSource(store_path))
    with TestClient(app, base_url="http://rebound.example") as c:
        assert c.get("/").status_code == 403
    with TestClient(app, base_url="http://localhost:8787") as c:
        assert c.get("/").status_code == 200
    with TestClient(app, base_url="http://[::1]:8787") as c:
        assert c.get("/api/check").status_code == 200


def test_with_a_token_every_request_needs_it(store_path: Path) -> None:
    app = create_app(StoreSource(store_path), token=TOKEN)
    with TestClient(app, base_url="http://viewer.example") as c:
        assert c.get("/").status_code == 401
        assert c.get("/api/state", params={"token": "wrong-token-0123456789"}).status_code == 401
        page = c.get("/", params={"token": TOKEN})
        assert page.status_code == 200
        assert "HttpOnly" in page.headers["set-cookie"]
        assert c.get("/static/app.js").status_code == 200  # the cookie
        c.cookies.clear()
        assert c.get("/static/app.js").status_code == 401
        assert c.get("/api/state", headers={"Authorization": f"Bearer {TOKEN}"}
                     ).status_code == 200
        assert c.get("/api/state", headers={"X-Llmspell-Token": TOKEN}).status_code == 200


def test_the_stream_over_http_resumes_by_last_event_id(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    store.append_many(UniversalEvent.create("e.x", {"i": i}) for i in range(5))
    store.flush()
    server = ViewerServer(create_app(StoreSource(store.path)))
    url = server.start()
    try:
        def events_until(last: int, headers: dict[str, str]) -> tuple[str, list[int]]:
            got: list[int] = []
            ident = ""
            with httpx.stream("GET", url + "events", headers=headers, timeout=10) as reply:
                assert reply.headers["content-type"].startswith("text/event-stream")
                for line in reply.iter_lines():
                    if line.startswith("id: "):
                        ident = line[4:]
                    if line.startswith("data: [") and ident:
                        got += [e["p"] for e in json.loads(line[6:])]
                        if got[-1] >= last:
                            return ident, got
            raise AssertionError(f"the stream ended after {got}")

        ident, got = events_until(5, {})
        assert got == [1, 2, 3, 4, 5] and ident == "5"
        store.append(UniversalEvent.create("e.y"))
        store.flush()
        ident, got = events_until(6, {"Last-Event-ID": "3"})
        assert got == [4, 5, 6] and ident == "6"
    finally:
        server.stop()
        store.close()


def test_a_port_in_use_is_a_clear_error() -> None:
    taken = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigurationError, match="cannot listen"):
            bind_socket("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
    with pytest.raises(ConfigurationError, match="out of range"):
        bind_socket("127.0.0.1", 70000)
