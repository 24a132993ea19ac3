"""Hostile input: the viewer's cookie is not its token, events nested thousands deep or
with huge types do not stop the stream, values an event sends are kept small and flat, and
more connections at once than the limit are refused even when they arrive together."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.ci import require_module

require_module("starlette", install="llmspell[viewer]")
require_module("sse_starlette", install="llmspell[viewer]")
require_module("uvicorn", install="llmspell[viewer]")

from starlette.testclient import TestClient  # noqa: E402

from llmspell.events import EventBus  # noqa: E402
from llmspell.events.event import MAX_EVENT_TYPE_LENGTH, UniversalEvent  # noqa: E402
from llmspell.events.store.sqlite import SQLiteStore  # noqa: E402
from llmspell.viewer import BusSource, HubLimits, StoreSource, ViewerServer, create_app  # noqa: E402
from llmspell.viewer.feed import encode_item  # noqa: E402
from llmspell.viewer.security import COOKIE, SessionCookie, cookie_name  # noqa: E402
from llmspell.viewer.summary import Summary  # noqa: E402

TOKEN = "hostile-test-token-0123456789"
DEPTH = 5000


def deep_json(depth: int = DEPTH) -> bytes:
    """``depth`` nested lists and objects, as JSON."""
    return b'{"k":[' * (depth // 2) + b"1" + b"]}" * (depth // 2)


def deep_value(depth: int = DEPTH) -> Any:
    """``depth`` nested lists and dicts, as Python objects (built without recursion)."""
    root: list[Any] = []
    node: Any = root
    for i in range(depth):
        child: Any = {} if i % 2 else []
        if isinstance(node, list):
            node.append(child)
        else:
            node["k"] = child
        node = child
    return root


def deep_event(event_type: str, run_id: str | None = None) -> UniversalEvent:
    """An event whose data is nested :data:`DEPTH` deep. An event refuses such data when
    built, so it is set afterwards, as a hostile or broken publisher could."""
    event = UniversalEvent.create(event_type, {"v": 1}, run_id=run_id)
    msgspec.structs.force_setattr(event, "data", {"v": deep_value(), "error": deep_value()})
    return event


def insert_raw(path: Path, event_type: str, payload: bytes, timestamp: float,
               run_id: str | None = None) -> str:
    """A row written as another writer could write it (no checks), its id."""
    event_id = uuid.uuid4().hex
    conn = sqlite3.connect(path, timeout=10)
    try:
        conn.execute("INSERT INTO events (id, sequence, event_type, correlation_id, timestamp, "
                     "payload, run_id, writer) VALUES (?, 0, ?, NULL, ?, ?, ?, NULL)",
                     [event_id, event_type, timestamp, payload, run_id])
        conn.commit()
    finally:
        conn.close()
    return event_id


def read_events(url: str, until: Callable[[list[dict[str, Any]]], bool],
                headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The events of an SSE stream (``url``) until ``until(events)`` holds."""
    got: list[dict[str, Any]] = []
    with httpx.stream("GET", url, headers=headers, timeout=15) as reply:
        assert reply.status_code == 200
        kind = ""
        for line in reply.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "events":
                got += json.loads(line[6:])
                if until(got):
                    return got
    raise AssertionError(f"the stream ended after {[e['t'] for e in got]}")


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.05)


# -- the cookie ---------------------------------------------------------------------------
VIEWER_COOKIE = cookie_name(80)  # the test client's server is viewer.example:80


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    store = SQLiteStore(tmp_path / "events.db")
    store.append(UniversalEvent.create("boot"))
    store.close()
    return store.path


def test_the_cookie_is_not_the_token_and_a_restart_invalidates_it(store_path: Path) -> None:
    with TestClient(create_app(StoreSource(store_path), token=TOKEN),
                    base_url="http://viewer.example") as c:
        page = c.get("/", params={"token": TOKEN})
        header = page.headers["set-cookie"]
        assert TOKEN not in header
        assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {p.strip() for p in
                                                              header.split(";")}
        cookie = c.cookies[VIEWER_COOKIE]
        assert cookie and cookie != TOKEN
        c.cookies.clear()
        c.cookies.set(VIEWER_COOKIE, cookie)
        assert c.get("/api/check").status_code == 200
        for forged in (TOKEN, cookie[:-1] + ("0" if cookie[-1] != "0" else "1"), "",
                       SessionCookie(TOKEN).value()):  # under another key
            c.cookies.clear()
            c.cookies.set(VIEWER_COOKIE, forged)
            assert c.get("/api/check").status_code == 401
    # A new viewer (a restart: a new process key) refuses the cookie the old one gave.
    with TestClient(create_app(StoreSource(store_path), token=TOKEN),
                    base_url="http://viewer.example") as c:
        c.cookies.set(VIEWER_COOKIE, cookie)
        assert c.get("/api/check").status_code == 401
        c.cookies.clear()
        assert c.get("/api/check", params={"token": TOKEN}).status_code == 200


def test_a_session_cookie_is_an_hmac_under_its_key() -> None:
    one = SessionCookie(TOKEN, key=b"k" * 32)
    assert one.value() == SessionCookie(TOKEN, key=b"k" * 32).value()
    assert one.value() != SessionCookie(TOKEN, key=b"j" * 32).value()
    assert one.value() != SessionCookie(TOKEN + "x", key=b"k" * 32).value()
    assert one.accepts(one.value()) and not one.accepts(None) and not one.accepts(TOKEN)
    assert one.header().startswith(f"{COOKIE}={one.value()};".encode())


# -- events nested too deeply -----------------------------------------------------------
def test_a_stored_event_nested_too_deeply_does_not_stop_the_stream(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    store.append(UniversalEvent.create("boot"))
    store.flush()
    server = ViewerServer(create_app(StoreSource(store.path, poll_interval=0.02)))
    url = server.start()
    try:
        wait_for(lambda: httpx.get(url + "api/state").json()["stats"]["events"] >= 1,
                 "the viewer reading the store")
        # Live: read by the hub's loop while a page is connected.
        at = time.time()
        deep_id = insert_raw(store.path, "deep.live", b"[" + deep_json() + b"]", at)
        store.append(UniversalEvent.create("after.live", {"ok": True}))
        store.flush()
        got = read_events(url + "events",
                          lambda events: any(e["t"] == "after.live" for e in events))
        deep = next(e for e in got if e["t"] == "deep.live")
        assert "unshown" in deep["d"] and "nested too deeply" in deep["d"]["unshown"]
        assert deep["ts"] == pytest.approx(at)
        whole = httpx.get(url + f"api/events/{deep['p']}").json()
        assert whole["id"] == deep_id and whole["event_type"] == "deep.live"
        assert "unshown" in whole["data"]
        assert httpx.get(url + "api/state").json()["stats"]["unshown"] == 1
        # A row that fails differently (data an event refuses: 100 deep) and a damaged one.
        insert_raw(store.path, "deep.shallower", b"[" + deep_json(100) + b"]", time.time())
        insert_raw(store.path, "damaged", b"[{", time.time())
        store.append(UniversalEvent.create("after.more"))
        store.flush()
        got = read_events(url + "events?tail=10",
                          lambda events: any(e["t"] == "after.more" for e in events))
        kinds = [e["t"] for e in got]
        assert kinds[-6:] == ["boot", "deep.live", "after.live", "deep.shallower", "damaged",
                              "after.more"][-6:]
        assert all("unshown" in e["d"] for e in got if e["t"] in ("deep.shallower", "damaged"))
        # Resuming after the deep event, and filtering (the pattern path of the reader).
        got = read_events(url + "events?pattern=deep.*&tail=5",
                          lambda events: len(events) >= 2)
        assert [e["t"] for e in got] == ["deep.live", "deep.shallower"]
    finally:
        server.stop()
        store.close()


def test_a_bus_event_nested_too_deeply_does_not_stop_the_stream() -> None:
    bus = EventBus()
    server = ViewerServer(create_app(BusSource(bus)))
    url = server.start()
    try:
        wait_for(lambda: bool(httpx.get(url + "api/state").json()["stats"]["source"]["status"]
                              == "subscribed"), "the viewer subscribing")
        bus.publish(UniversalEvent.create("run.started", {"kind": "agent", "name": "a"},
                                          run_id="r-deep"))
        bus.publish(deep_event("tool.deep.failed", run_id="r-deep"))
        bus.publish(deep_event("run.completed", run_id="r-deep"))
        bus.publish("after.deep", {"ok": True})
        got = read_events(url + "events",
                          lambda events: any(e["t"] == "after.deep" for e in events))
        deep = [e for e in got if e["t"] in ("tool.deep.failed", "run.completed")]
        assert len(deep) == 2 and all("unshown" in e["d"] for e in deep)
        state = httpx.get(url + "api/state").json()
        assert state["stats"]["unshown"] == 2
        (run,) = [r for r in state["runs"] if r["run_id"] == "r-deep"]
        assert run["status"] == "completed" and run["totals"] == {}
        (step,) = run["steps"]
        assert step["name"] == "deep" and "nested too deeply" in step["detail"]
        assert httpx.get(url + f"api/events/{got[-2]['p']}").status_code in (200, 404)
    finally:
        server.stop()
        asyncio.run(bus.close())


# -- other hostile values -----------------------------------------------------------------
def test_a_huge_event_type_is_cut(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    store.append(UniversalEvent.create("boot"))
    store.flush()
    huge = "tool." + "x" * 200_000 + ".started"
    insert_raw(store.path, huge, b"[null]", time.time())
    store.append(UniversalEvent.create("after.huge"))
    store.flush()
    server = ViewerServer(create_app(StoreSource(store.path, poll_interval=0.02)))
    url = server.start()
    try:
        got = read_events(url + "events?pattern=tool.**",
                          lambda events: any(len(e["t"]) > 100 for e in events))
        (cut,) = got
        assert len(cut["t"]) == MAX_EVENT_TYPE_LENGTH and cut["t"].endswith("...")
        got = read_events(url + "events",
                          lambda events: any(e["t"] == "after.huge" for e in events))
        state = httpx.get(url + "api/state").json()
        assert all(len(step["name"]) <= MAX_EVENT_TYPE_LENGTH
                   for run in state["runs"] for step in run["steps"])
    finally:
        server.stop()
        store.close()


def test_the_summary_keeps_only_small_flat_values() -> None:
    summary = Summary()
    deep = deep_value()
    events = [
        UniversalEvent.create("run.started", {"kind": "agent", "name": "n",
                                              "parent_run_id": "p" * 10_000,
                                              "replay_of": "q" * 10_000}, run_id="r1"),
        UniversalEvent.create("hook.before_tool_execution", {
            "hooks": ["h" * 10_000], "kinds": ["cancel"], "durations_ns": [1],
            "component_type": "tool", "component": "t", "point": "before_tool_execution"},
            run_id="r1"),
        UniversalEvent.create("model.p.completed", {"model": "m" * 10_000}, run_id="r1"),
        UniversalEvent.create("run.completed", {"duration_ms": "x" * 10_000, "steps": [1] * 50,
                                                "tokens_in": 7}, run_id="r1"),
        UniversalEvent.create("bus.backpressure.warning", {"depth": "d" * 10_000,
                                                           "capacity": {"a": 1}, "dropped": 3}),
    ]
    for event in events:
        summary.observe(event)
    failed = UniversalEvent.create("tool.t.failed", {"error": "x"}, run_id="r1")
    msgspec.structs.force_setattr(failed, "data", {"error": deep})
    summary.observe(failed)  # no RecursionError
    run = summary.run("r1")
    assert run is not None
    assert run["totals"] == {"tokens_in": 7, "replay_of": "q" * 117 + "..."}
    assert len(run["parent_run_id"]) == 120
    assert all(len(step["name"]) <= 300 for step in run["steps"])
    (hook,) = summary.hook_table()
    assert len(hook["hook"]) == 120
    (notice,) = summary.stats()["notices"]
    assert notice["depth"] is None and notice["capacity"] is None and notice["dropped"] == 3
    assert len(msgspec.json.encode(summary.runs_since(0))) < 10_000


def test_an_item_that_cannot_be_encoded_is_a_placeholder() -> None:
    item = encode_item(7, deep_event("deep.item"))
    wire = json.loads(item.wire)
    assert item.unshown and wire["p"] == 7 and wire["t"] == "deep.item"
    assert "unshown" in wire["d"]
    assert not encode_item(8, UniversalEvent.create("fine", {"a": 1})).unshown


def test_a_bus_source_keeps_a_deep_event(tmp_path: Path) -> None:
    bus = EventBus()
    source = BusSource(bus)

    async def main() -> list[str]:
        await source.start()
        bus.publish(deep_event("deep.bus"))
        bus.publish("after.bus")
        return [e.event_type for _, e in await source.read_after(0, 10)]

    try:
        assert asyncio.run(main()) == ["deep.bus", "after.bus"]
    finally:
        asyncio.run(source.close())


def test_connections_past_the_limit_are_refused_even_all_at_once(store_path: Path) -> None:
    server = ViewerServer(create_app(StoreSource(store_path), limits=HubLimits(max_clients=2)))
    url = server.start()

    async def burst(count: int) -> list[int]:
        async with httpx.AsyncClient(timeout=15) as client:
            async def one() -> int:
                async with client.stream("GET", url + "events") as reply:
                    status = reply.status_code
                    if status == 200:
                        await asyncio.sleep(0.5)  # hold the place while the others ask
                    return status

            return list(await asyncio.gather(*(one() for _ in range(count))))

    try:
        statuses = asyncio.run(burst(12))
        assert sorted(statuses) == [200, 200] + [503] * 10
        wait_for(lambda: server.config.app.state.hub.admitted == 0, "places given back")
        assert sorted(asyncio.run(burst(2))) == [200, 200]
    finally:
        server.stop()


@pytest.mark.parametrize("params", [
    {"pattern": "*" * 600}, {"pattern": ".".join(["**"] * 20)}, {"pattern": "a\x00b"},
    {"tail": "9" * 30}, {"tail": "1e3"}, {"tail": "٣"}, {"after": "x" * 5000},
])
def test_odd_query_parameters(store_path: Path, params: dict[str, str]) -> None:
    with TestClient(create_app(StoreSource(store_path)), base_url="http://127.0.0.1") as c:
        if "after" in params:
            with c.stream("GET", "/events", params={**params, "tail": "0"}) as reply:
                assert reply.status_code == 200
                for line in reply.iter_lines():
                    if line.startswith("data: {") and '"resumed"' in line:
                        assert json.loads(line[6:])["unknown_id"] is True
                        break
            return
        reply = c.get("/events", params=params)
        assert reply.status_code == 400 and reply.json()["error"]
        assert c.get("/api/check", params=params).status_code == 200


# -- markup in events, in a real browser ------------------------------------------------------
IMG = "<img src=x onerror=window.__xss=1>"
SCRIPT = "<script>window.__xss=1</script>"


def test_markup_in_events_is_shown_as_text(tmp_path: Path) -> None:
    """Event types, data keys and values, hook, tool and model names, error messages and
    notices holding markup are drawn as text: nothing runs, no element is made from them
    (the page's CSP would stop an inline handler anyway; the test checks that no ``img`` or
    ``script`` element appears, so it fails on markup parsed at all)."""
    require_module("playwright.sync_api", install="playwright (pip install 'llmspell[test]')")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    from tests.ci import unavailable
    from tests.viewer.test_browser import ARGS, CHROMIUM, WAIT_MS

    if not Path(CHROMIUM).is_file():
        unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    store = SQLiteStore(tmp_path / "events.db")
    run = "r-xss"
    now = time.time()

    def add(event_type: str, data: Any, run_id: str | None = run) -> None:
        insert_raw(store.path, event_type, msgspec.json.encode([data]), time.time(), run_id)

    store.append(UniversalEvent.create("run.started", {"kind": IMG, "name": SCRIPT},
                                       run_id=run))
    store.flush()
    add(IMG, {IMG: SCRIPT, "v": IMG}, None)
    add(SCRIPT, [SCRIPT], None)
    add(f"tool.{IMG}.started", {"arguments": {SCRIPT: IMG}})
    add(f"tool.{IMG}.failed", {"error": SCRIPT, "error_type": "ToolError"})
    add(f"tool.{SCRIPT}.failed", {"error": f"hook '{IMG}' cancelled the operation at "
                                           f"'before_tool_execution': {SCRIPT}",
                                  "error_type": "OperationCancelledError"})
    add("model.p.failed", {"model": IMG, "error": SCRIPT, "latency_ms": 5})
    add("hook.before_tool_execution", {
        "point": "before_tool_execution", "component_type": "tool", "component": IMG,
        "hooks": [IMG, SCRIPT], "kinds": ["cancel", "modified"], "durations_ns": [10, 20],
        "decided_by": IMG, "reason": SCRIPT})
    add("hook.breaker.open", {"hook": SCRIPT, "point": IMG, "old": IMG, "reason": SCRIPT,
                              "open_duration": 1.0, "at": now}, None)
    add("bus.backpressure.warning", {"subscription": IMG, "detail": SCRIPT, "depth": 1,
                                     "capacity": 2}, None)
    add("run.failed", {"error": {"type": IMG, "message": SCRIPT}})
    server = ViewerServer(create_app(StoreSource(store.path, poll_interval=0.05)),
                          graceful_timeout=1)
    url = server.start()
    try:
        with sync_playwright() as playwright:
            try:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            except PlaywrightError as exc:
                unavailable(f"Chromium at {CHROMIUM} does not start: {exc}")
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(url)
                page.wait_for_selector("#status.pill-live", timeout=WAIT_MS)
                page.wait_for_selector('#event-list tr[data-type="run.failed"]',
                                       timeout=WAIT_MS)
                page.wait_for_selector("#run-title:has-text('failed')", timeout=WAIT_MS)
                page.wait_for_selector("#hooks tbody tr", timeout=WAIT_MS)
                page.wait_for_selector("#breakers tbody tr", timeout=WAIT_MS)
                page.wait_for_selector("#notices .notice-warning", timeout=WAIT_MS)
                page.click(f'#event-list tr[data-type="{SCRIPT}"] td.type')
                page.wait_for_selector("#event-detail:not([hidden])", timeout=WAIT_MS)
                page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
                assert page.evaluate("() => window.__xss") is None
                assert page.evaluate(
                    "() => document.querySelectorAll('body img, main script').length") == 0
                texts = {box: page.inner_text(box) for box in (
                    "#event-list", "#run-list", "#run-title", "#run-meta", "#steps", "#hooks",
                    "#breakers", "#notices", "#event-detail")}
                for box in ("#event-list", "#steps", "#hooks", "#breakers", "#notices"):
                    assert IMG in texts[box] and SCRIPT in texts[box], box
                # (the title is upper-cased by CSS: its text, not its rendering)
                assert IMG in texts["#run-list"] and SCRIPT in (
                    page.text_content("#run-title") or "")
                assert SCRIPT in texts["#run-meta"] and SCRIPT in texts["#event-detail"]
                assert not errors, errors
            finally:
                browser.close()
    finally:
        server.stop()
        store.close()


def test_two_viewers_on_one_host_keep_their_own_cookies(store_path: Path) -> None:
    """Browsers scope cookies by host, not port: each viewer names its cookie after its
    port, so opening a second viewer does not log the first one's page out."""
    assert cookie_name(8765) != cookie_name(8766)
    first = create_app(StoreSource(store_path), token=TOKEN)
    second = create_app(StoreSource(store_path), token=TOKEN)
    with TestClient(first, base_url="http://127.0.0.1:8765") as a, \
            TestClient(second, base_url="http://127.0.0.1:8766") as b:
        a.get("/", params={"token": TOKEN})
        b.get("/", params={"token": TOKEN})
        jar = {**a.cookies, **b.cookies}  # one browser's jar for host 127.0.0.1
        assert set(jar) == {cookie_name(8765), cookie_name(8766)}
        a.cookies.clear()
        b.cookies.clear()
        for name, value in jar.items():
            a.cookies.set(name, value)
            b.cookies.set(name, value)
        assert a.get("/api/check").status_code == 200
        assert b.get("/api/check").status_code == 200
