"""The page in a real headless browser (Debian's Chromium, driven by Playwright): it loads,
shows a new event within a second, filters, draws a run's timeline with a blocked tool call
and a model call's tokens, resumes after a reconnect without gaps or duplicates, and asks
for its token when it has one. Each test leaves a screenshot in its temporary directory.

Chromium is found at ``LLMSPELL_TEST_CHROMIUM`` (default ``/usr/bin/chromium``; ``.ci/run``
installs Debian's package). Without it, or without Playwright, the tests skip locally and
fail in CI (tests/ci.py).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ci import require_module, unavailable

require_module("playwright.sync_api", install="playwright (pip install 'llmspell[test]')")
require_module("uvicorn", install="llmspell[viewer]")

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402
from playwright.sync_api import Error as PlaywrightError  # noqa: E402

from llmspell.events.event import UniversalEvent  # noqa: E402
from llmspell.events.store.sqlite import SQLiteStore  # noqa: E402
from llmspell.hooks.context import HookContext  # noqa: E402
from llmspell.runtime import System, SystemConfig, tool  # noqa: E402
from llmspell.runtime.providers.scripted import ScriptedProvider  # noqa: E402
from llmspell.viewer import StoreSource, ViewerServer, create_app  # noqa: E402
from tests.viewer.support import add, no_shell, shell  # noqa: E402

CHROMIUM = os.environ.get("LLMSPELL_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "browser-test-token-0123456789"
WAIT_MS = 15_000
"""How long a step may take to show up when the test does not measure it."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium, or set "
                    "LLMSPELL_TEST_CHROMIUM")
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except PlaywrightError as exc:
            unavailable(f"Chromium at {CHROMIUM} does not start: {exc}")
        try:
            yield launched
        finally:
            launched.close()


class Viewer:
    """A store the test writes to, and the viewer serving it."""

    def __init__(self, folder: Path, token: str | None = None) -> None:
        self.folder = folder
        self.store = SQLiteStore(folder / "events.db")
        self.publish("viewer.test.ready")
        self.token = token
        self.server = self._serve(0)
        self.url = self.server.url

    def _serve(self, port: int) -> ViewerServer:
        app = create_app(StoreSource(self.store.path, poll_interval=0.05), token=self.token)
        server = ViewerServer(app, "127.0.0.1", port, graceful_timeout=1)
        server.start()
        return server

    def publish(self, event_type: str, data: Any = None) -> None:
        self.store.append(UniversalEvent.create(event_type, data))
        self.store.flush()

    def restart(self, between: Any) -> None:
        """Stop the server, run ``between()``, serve again on the same port."""
        port = self.server.port
        self.server.stop()
        between()
        self.server = self._serve(port)

    def close(self) -> None:
        self.server.stop()
        self.store.close()


@pytest.fixture
def viewer(tmp_path: Path) -> Iterator[Viewer]:
    running = Viewer(tmp_path)
    yield running
    running.close()


@pytest.fixture
def page(browser: Browser, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    opened.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
    context.close()
    assert not errors, f"the page raised: {errors}"


def open_live(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#status.pill-live", timeout=WAIT_MS)


def rows(page: Page) -> list[tuple[int, str]]:
    found: list[list[Any]] = page.eval_on_selector_all(
        "#event-list tbody tr", "rows => rows.map(r => [Number(r.dataset.pos), r.dataset.type])")
    return [(int(pos), str(kind)) for pos, kind in found]


def test_the_page_loads_and_a_new_event_appears_within_a_second(
        viewer: Viewer, page: Page) -> None:
    open_live(page, viewer.url)
    assert page.title() == "llmspell view"
    page.wait_for_selector('#event-list tr[data-type="viewer.test.ready"]', timeout=WAIT_MS)
    assert "store" in page.inner_text("#source")
    began = time.monotonic()
    viewer.publish("demo.greeting", {"text": "hello from the test"})
    page.wait_for_selector('#event-list tr[data-type="demo.greeting"]', timeout=WAIT_MS)
    elapsed = time.monotonic() - began
    assert elapsed <= 1.0, f"the event took {elapsed:.2f} s to appear"
    assert "hello from the test" in page.inner_text("#event-list tbody tr:first-child")
    page.click('#event-list tr[data-type="demo.greeting"] td.type')
    page.wait_for_selector("#event-detail:not([hidden])", timeout=WAIT_MS)
    assert '"event_type": "demo.greeting"' in page.inner_text("#event-detail")


def test_the_tables(viewer: Viewer, page: Page) -> None:
    open_live(page, viewer.url)
    for ns in (1_000_000, 2_000_000, 40_000_000):
        viewer.publish("hook.before_tool_execution", {
            "point": "before_tool_execution", "component_type": "tool", "component": "shell",
            "result": "cancel", "decided_by": "guard", "reason": "no", "hooks": ["guard"],
            "kinds": ["cancel"], "durations_ns": [ns]})
    viewer.publish("hook.breaker.open", {
        "hook": "flaky", "point": "after_tool_execution", "old": "closed", "new": "open",
        "reason": "5 failures in 60 s", "open_duration": 30.0, "at": time.time()})
    viewer.publish("bus.backpressure.warning", {
        "kind": "warning", "subscription": "audit-log", "depth": 1024, "capacity": 1024,
        "dropped": 7, "rejected": 0, "at": time.time(), "detail": "queue full"})
    row = page.wait_for_selector("#hooks tbody tr", timeout=WAIT_MS)
    assert row is not None
    cells = row.inner_text().split("\t")
    assert cells[:3] == ["guard", "3", "2.000"] and cells[-1] == "blocked 3"
    breaker = page.wait_for_selector("#breakers tr.breaker-open", timeout=WAIT_MS)
    assert breaker is not None and "5 failures in 60 s" in breaker.inner_text()
    notice = page.wait_for_selector("#notices .notice-warning", timeout=WAIT_MS)
    assert notice is not None and "audit-log 1024/1024 dropped 7" in notice.inner_text()
    assert page.is_hidden("#hooks-empty") and page.is_hidden("#breakers-empty")


def test_the_filter(viewer: Viewer, page: Page) -> None:
    for kind in ("tool.a.started", "agent.b.moved", "tool.a.completed"):
        viewer.publish(kind)
    open_live(page, viewer.url)
    page.wait_for_selector('#event-list tr[data-type="agent.b.moved"]', timeout=WAIT_MS)
    page.fill("#pattern", "tool.**")
    page.press("#pattern", "Enter")
    page.wait_for_function(
        "() => { const r = [...document.querySelectorAll('#event-list tbody tr')];"
        " return r.length === 2 && r.every(x => x.dataset.type.startsWith('tool.')); }",
        timeout=WAIT_MS)
    viewer.publish("agent.c.moved")
    viewer.publish("tool.z.failed")
    page.wait_for_selector('#event-list tr[data-type="tool.z.failed"]', timeout=WAIT_MS)
    assert [kind for _, kind in rows(page)] == ["tool.z.failed", "tool.a.completed",
                                                "tool.a.started"]
    page.fill("#pattern", "tool..x")
    page.press("#pattern", "Enter")
    page.wait_for_selector("#pattern-error:not(:empty)", timeout=WAIT_MS)
    assert "empty segment" in page.inner_text("#pattern-error")


def test_a_run_timeline_shows_a_blocked_tool_and_a_model_call_with_tokens(
        viewer: Viewer, page: Page) -> None:
    open_live(page, viewer.url)
    release = threading.Event()

    @tool()
    def slow(seconds: float) -> str:
        """Waits until the test lets it finish."""
        release.wait(30)
        return "slept"

    def go() -> None:
        async def main() -> None:
            config = SystemConfig(data_dir=str(viewer.folder))
            async with System(config) as system:
                for each in (add, shell, slow):
                    system.tools.register(each)
                system.registry.register("before_tool_execution", _block_shell,
                                         name="no_shell")
                agent = system.agents.create("helper", tools=["add", "shell", "slow"],
                                             provider=ScriptedProvider([
                    {"tool_calls": [{"name": "slow", "arguments": {"seconds": 1}}]},
                    {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}},
                                    {"name": "shell", "arguments": {"cmd": "ls"}}]},
                    "5"]))
                await agent.run("2 + 3?")

        asyncio.run(main())

    runner = threading.Thread(target=go)
    runner.start()
    try:
        # The slow tool's step is there while it runs: steps appear when they start.
        page.wait_for_selector('.step[data-kind="tool"][data-name="slow"][data-status="running"]',
                               timeout=WAIT_MS)
        assert "running" in page.inner_text('.step[data-name="slow"] .duration')
    finally:
        release.set()
        runner.join(60)
    blocked = page.wait_for_selector(
        '.step[data-kind="tool"][data-name="shell"][data-status="blocked"] .mark-blocked',
        timeout=WAIT_MS)
    assert blocked is not None and "no_shell" in blocked.inner_text()
    page.wait_for_selector('.step[data-name="slow"][data-status="ok"]', timeout=WAIT_MS)
    tokens = page.inner_text('.step[data-kind="model"] .tokens')
    assert tokens == "1 in / 10 out tokens"
    assert page.inner_text('.step[data-kind="agent"] .step-name') == "helper"
    assert "agent helper" in page.inner_text("#run-list")
    page.wait_for_selector("#run-title:has-text('completed')", timeout=WAIT_MS)


def _block_shell(ctx: HookContext) -> Any:
    return no_shell(ctx)


def test_a_reconnect_resumes_without_gaps_or_duplicates(viewer: Viewer, page: Page) -> None:
    open_live(page, viewer.url)
    for i in range(10):
        viewer.publish("resume.before", {"i": i})
    page.wait_for_function(
        "() => document.querySelectorAll('#event-list tr[data-type=\"resume.before\"]')"
        ".length === 10", timeout=WAIT_MS)

    def while_down() -> None:
        page.wait_for_selector("#status.pill-reconnecting", timeout=WAIT_MS)
        for i in range(10):
            viewer.publish("resume.during", {"i": i})

    viewer.restart(while_down)
    for i in range(5):
        viewer.publish("resume.after", {"i": i})
    page.wait_for_function(
        "() => document.querySelectorAll('#event-list tr[data-type=\"resume.after\"]')"
        ".length === 5", timeout=WAIT_MS)
    page.wait_for_selector("#status.pill-live", timeout=WAIT_MS)
    shown = rows(page)
    positions = [pos for pos, _ in shown]
    assert len(positions) == len(set(positions)), "an event was shown twice"
    assert positions == list(range(positions[0], positions[-1] - 1, -1)), "a gap"
    kinds = [kind for _, kind in reversed(shown)]
    assert kinds == ["viewer.test.ready"] + ["resume.before"] * 10 + ["resume.during"] * 10 \
        + ["resume.after"] * 5


def test_with_a_token_the_page_needs_it(browser: Browser, tmp_path: Path) -> None:
    guarded = Viewer(tmp_path, token=TOKEN)
    context = browser.new_context()
    page = context.new_page()
    try:
        refused = page.goto(guarded.url)
        assert refused is not None and refused.status == 401
        urls: list[str] = []
        headers: dict[str, str] = {}
        page.on("request", lambda request: urls.append(request.url))
        page.on("request", lambda request: headers.update(
            {request.url: request.headers.get("authorization", "")}))
        open_live(page, guarded.url + "?token=" + TOKEN)
        guarded.publish("guarded.event")
        page.wait_for_selector('#event-list tr[data-type="guarded.event"]', timeout=WAIT_MS)
        page.click('#event-list tr[data-type="guarded.event"] td.type')
        page.wait_for_selector("#event-detail:not([hidden])", timeout=WAIT_MS)
        # A restarted viewer takes no old cookie: the page renews it with the token (in a
        # header) and goes on from the last event it had.
        guarded.restart(lambda: guarded.publish("guarded.while_down"))
        guarded.publish("guarded.after_restart")
        page.wait_for_selector('#event-list tr[data-type="guarded.after_restart"]',
                               timeout=WAIT_MS)
        assert page.inner_text("#status") == "live"
        shown = [kind for _, kind in rows(page)]
        assert shown.count("guarded.event") == 1 and "guarded.while_down" in shown
        # The token went only into the address the user opened, never into another.
        assert [u for u in urls if TOKEN in u] == [guarded.url + "?token=" + TOKEN]
        fetched = [u for u in headers if "/api/" in u]
        assert fetched and all(headers[u] == "Bearer " + TOKEN for u in fetched)
        page.screenshot(path=str(tmp_path / "viewer.png"))
    finally:
        context.close()
        guarded.close()
