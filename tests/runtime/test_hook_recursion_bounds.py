"""Recursion through hooks, handlers and scripts ends with a typed error at a small depth,
never at Python's recursion limit: a hook calling the tool it hooks (Python, Lua,
JavaScript) stops at the runtime's nesting bound; an inline event handler whose publish
reaches it again ends at Python's recursion limit as it did, reported as the loop it is
(OperationDepthError naming the events) instead of a bare RecursionError with hundreds of
frames of traceback."""

from __future__ import annotations

import asyncio

import pytest

from llmspell.errors import OperationDepthError
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext, HookPoint
from llmspell.runtime import System
from llmspell.runtime.nesting import MAX_DEPTH, current_chain
from llmspell.scripting import ScriptHost

P = HookPoint
GUARD = 30  # seconds: only so a regression fails instead of hanging the suite


async def test_a_python_hook_calling_its_own_tool_stops_at_the_nesting_bound(
        system: System) -> None:
    depths: list[int] = []
    failures: list[str] = []

    async def again(ctx: HookContext) -> None:
        depths.append(len(current_chain()))
        try:
            await system.tools.execute("add", {"a": 1, "b": 1})
        except OperationDepthError as exc:
            failures.append(str(exc))
            raise

    system.registry.register(P.BEFORE_TOOL_EXECUTION, again, name="again")
    assert await asyncio.wait_for(system.tools.execute("add", {"a": 1, "b": 2}), GUARD) == 3
    assert depths == list(range(1, MAX_DEPTH + 1))
    assert len(failures) == 1 and f"nested {MAX_DEPTH + 1} deep" in failures[0]


@pytest.mark.parametrize("language", ["lua", "js"])
async def test_a_script_hook_calling_its_own_tool_stops_at_the_nesting_bound(
        system: System, language: str) -> None:
    source = {
        "lua": """
          local n = 0
          Hook.register("BeforeToolExecution", function(ctx)
            n = n + 1; Tool.invoke("add", {a = 1, b = 1}) end, {name = "again"})
          return {result = Tool.invoke("add", {a = 1, b = 2}), calls = n}""",
        "js": """
          let n = 0;
          Hook.register("BeforeToolExecution", async (ctx) => {
            n++; await Tool.invoke("add", {a: 1, b: 1}); }, {name: "again"});
          return {result: await Tool.invoke("add", {a: 1, b: 2}), calls: n};""",
    }[language]
    host = ScriptHost(system)
    try:
        run = host.run_lua_async if language == "lua" else host.run_js_async
        out = await asyncio.wait_for(run(source), GUARD)
    finally:
        host.close()
    assert out == {"result": 3, "calls": MAX_DEPTH}


def _looped(errors: list[Exception], event_type: str) -> None:
    assert [type(e) for e in errors] == [OperationDepthError], errors
    error = errors[0]
    assert "looped" in str(error) and f"{event_type!r} -> {event_type!r}" in str(error)
    assert error.hint is not None and "break the loop" in error.hint


async def test_an_inline_handler_republishing_its_event_fails_typed(system: System) -> None:
    calls: list[int] = []
    errors: list[Exception] = []

    def echo(event: UniversalEvent) -> None:
        calls.append(1)
        system.bus.publish("loop.ping", {})

    system.bus.subscribe("loop.*", echo, on_error=lambda ev, exc: errors.append(exc))
    system.bus.publish("loop.ping", {})
    _looped(errors, "loop.ping")  # once, the innermost handler's: the others returned
    # Nothing is left over: the next publish delivers again from the top.
    first = len(calls)
    system.bus.publish("loop.ping", {})
    assert len(calls) == 2 * first and len(errors) == 2


async def test_a_handler_with_a_recursion_of_its_own_keeps_its_recursion_error(
        system: System) -> None:
    errors: list[Exception] = []

    def deep(n: int) -> int:
        return deep(n + 1)

    system.bus.subscribe("deep.*", lambda event: deep(0),
                         on_error=lambda ev, exc: errors.append(exc))
    system.bus.publish("deep.one", {})
    assert [type(e) for e in errors] == [RecursionError]


async def test_an_async_inline_loop_through_publish_async_fails_typed(system: System) -> None:
    errors: list[Exception] = []

    async def echo(event: UniversalEvent) -> None:
        await system.bus.publish_async("loop.pong", {})

    system.bus.subscribe("loop.*", echo, mode="inline",
                         on_error=lambda ev, exc: errors.append(exc))
    await asyncio.wait_for(system.bus.publish_async("loop.pong", {}), GUARD)
    _looped(errors, "loop.pong")


async def test_a_handler_republishing_a_tool_event_fails_typed(system: System) -> None:
    # A tool's own event starts the loop; the tool's caller gets its result.
    errors: list[Exception] = []

    def republish(event: UniversalEvent) -> None:
        system.bus.publish("tool.add.completed", {"result": 2})

    system.bus.subscribe("tool.add.completed", republish,
                         on_error=lambda ev, exc: errors.append(exc))
    assert await asyncio.wait_for(system.tools.execute("add", {"a": 1, "b": 2}), GUARD) == 3
    _looped(errors, "tool.add.completed")
