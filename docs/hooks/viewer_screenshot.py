"""MkDocs hook: before the pages are built, make docs/img/viewer.png, the live viewer's
screenshot that docs/observability.md shows.

It records one small agent run offline (a scripted provider, a tool call blocked by a guard
hook, model calls with tokens) into a temporary SQLite store, serves the viewer over that
store on 127.0.0.1 (a free port), opens the page in headless Chromium through Playwright,
waits until the run's timeline shows the blocked call and the tokens, and writes the PNG.

The image is generated, never committed (.gitignore). It needs Playwright
(``pip install 'llmspell[test]'``) and Chromium at ``LLMSPELL_TEST_CHROMIUM`` (default
``/usr/bin/chromium``, Debian's package; ``.ci/run`` installs it before the docs build):
without them the build stops with a message saying what to install. ``mkdocs serve`` makes
the image again only when it is missing or older than this file or the viewer's sources
(writing it otherwise would start another rebuild).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError

log = logging.getLogger("mkdocs.hooks.viewer_screenshot")

IMAGE = Path("img") / "viewer.png"
"""Where the screenshot goes, relative to docs_dir."""
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
"""Chromium's flags: headless, no sandbox (containers), nothing fetched from the network."""
VIEWPORT = {"width": 1440, "height": 800}
"""The browser window. The panels are sized to it; the screenshot is cut below the lowest."""
WAIT_MS = 15_000
"""How long the page may take to show the run (it usually takes well under a second)."""
TIMELINE_SHOWN = (
    "#status.pill-live",
    "#run-title:has-text('completed')",
    '.step[data-kind="agent"][data-name="helper"]',
    '.step[data-kind="tool"][data-name="shell"][data-status="blocked"] .mark-blocked',
    '.step[data-kind="tool"][data-name="add"][data-status="ok"]',
    '.step[data-kind="model"] .tokens',
    "#hooks tbody tr",
)
"""What the page must show before the screenshot is taken."""

_command = "build"


def on_startup(command: str, dirty: bool) -> None:
    """Remember whether this is ``mkdocs serve`` (see :func:`on_pre_build`)."""
    global _command
    _command = command


def on_pre_build(config: MkDocsConfig) -> None:
    """Write docs/img/viewer.png before MkDocs collects the files (so the page's link to
    it resolves, also in strict mode)."""
    target = Path(config.docs_dir) / IMAGE
    if _command == "serve" and _up_to_date(target):
        return
    began = time.monotonic()
    try:
        make_screenshot(target)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"viewer screenshot: could not make {target}: "
                          f"{type(exc).__name__}: {exc}") from exc
    log.info("viewer screenshot: wrote %s in %.1f s", target, time.monotonic() - began)


def _up_to_date(target: Path) -> bool:
    if not target.is_file():
        return False
    import llmspell.viewer  # noqa: PLC0415 - only when serving

    sources = [Path(__file__), *Path(llmspell.viewer.__file__).parent.rglob("*")]
    newest = max(p.stat().st_mtime for p in sources if p.is_file())
    return target.stat().st_mtime >= newest


def _chromium() -> str:
    path = os.environ.get("LLMSPELL_TEST_CHROMIUM", "/usr/bin/chromium")
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        raise PluginError(
            f"viewer screenshot: no Chromium at {path}; the docs build needs it to make "
            f"docs/{IMAGE.as_posix()} (install Debian's package: apt-get install chromium, "
            "or set LLMSPELL_TEST_CHROMIUM to a Chromium executable)")
    return path


def _require_modules() -> None:
    missing = []
    for name, extra in (("playwright", "test"), ("uvicorn", "viewer"),
                        ("starlette", "viewer"), ("sse_starlette", "viewer")):
        try:
            __import__(name)
        except ImportError:
            missing.append(f"{name} (llmspell[{extra}])")
    if missing:
        raise PluginError(
            f"viewer screenshot: the docs build needs {', '.join(missing)} to make "
            f"docs/{IMAGE.as_posix()}: pip install -e '.[dev]'")


def make_screenshot(target: Path) -> None:
    """Record a run, serve the viewer over it, and write the page's screenshot to
    ``target`` (atomically: another build running at the same time sees the old image or
    the new one)."""
    _require_modules()
    chromium = _chromium()
    folder = Path(tempfile.mkdtemp(prefix="llmspell-docs-viewer-"))
    try:
        store = _record_run(folder)
        shot = folder / "viewer.png"
        _photograph(store, chromium, shot)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(shot, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _record_run(folder: Path) -> Path:
    """One agent run into ``folder/events.db``: the model asks for ``add`` and ``shell``,
    the guard blocks ``shell``, the model answers. Hook events are stored too, so the
    page's hook latency table has rows."""
    from llmspell.hooks import Cancel  # noqa: PLC0415 - imported when the hook runs
    from llmspell.hooks.context import HookContext  # noqa: PLC0415
    from llmspell.runtime import System, SystemConfig, tool  # noqa: PLC0415
    from llmspell.runtime.providers.scripted import ScriptedProvider  # noqa: PLC0415

    @tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @tool()
    def shell(cmd: str) -> str:
        """Run a shell command (never reached: the guard blocks it)."""
        return f"ran {cmd}"

    def no_shell(ctx: HookContext) -> Cancel | None:
        """The guard: no agent runs shell commands."""
        if ctx.component.name == "shell":
            return Cancel("shell commands are not allowed")
        return None

    async def main() -> None:
        config = SystemConfig(data_dir=str(folder), store="sqlite", persist_hook_events=True)
        async with System(config) as system:
            system.tools.register(add)
            system.tools.register(shell)
            system.registry.register("before_tool_execution", no_shell, name="no_shell")
            agent = system.agents.create("helper", tools=["add", "shell"],
                                         provider=ScriptedProvider([
                {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}},
                                {"name": "shell", "arguments": {"cmd": "rm -rf /tmp/x"}}]},
                "2 + 3 = 5. I may not run shell commands."]))
            await agent.run("What is 2 + 3? Then clean /tmp/x.")

    asyncio.run(main())
    store = folder / "events.db"
    if not store.is_file():
        raise PluginError(f"viewer screenshot: the run wrote no store at {store}")
    return store


def _photograph(store: Path, chromium: str, shot: Path) -> None:
    """Serve the viewer over ``store`` and screenshot the page once the run is drawn."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - optional (test extra)

    from llmspell.viewer import StoreSource, ViewerServer, create_app  # noqa: PLC0415

    server = ViewerServer(create_app(StoreSource(store, poll_interval=0.05)), "127.0.0.1", 0,
                          graceful_timeout=1)
    server.start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=ARGS)
            try:
                context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
                page = context.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(server.url)
                for selector in TIMELINE_SHOWN:
                    _wait(page, selector)
                if errors:
                    raise PluginError(f"viewer screenshot: the page raised {errors}")
                bottom = page.evaluate(
                    "() => Math.max(...[...document.querySelectorAll('main section')]"
                    ".map(s => s.getBoundingClientRect().bottom))")
                clip = {"x": 0, "y": 0, "width": VIEWPORT["width"],
                        "height": min(VIEWPORT["height"], int(bottom) + 12)}
                page.screenshot(path=str(shot), clip=clip,  # type: ignore[arg-type]
                                animations="disabled", caret="hide")
                context.close()
            finally:
                browser.close()
    finally:
        server.stop()


def _wait(page: Any, selector: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: PLC0415

    try:
        page.wait_for_selector(selector, timeout=WAIT_MS)
    except PlaywrightTimeout:
        raise PluginError(f"viewer screenshot: the page did not show {selector!r} within "
                          f"{WAIT_MS / 1000:.0f} s") from None
