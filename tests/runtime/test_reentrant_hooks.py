"""A hook that dispatches the point it is registered on (directly, through ``emit`` or a
state write, or two hooks ping-ponging between two points) ends with a typed
:class:`OperationDepthError` naming the point(s), under the policy of the hook that
started the loop, once: never a bare ``RecursionError`` with a thousand frames of
traceback, never a hung process, and the outer operation keeps what it was given."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import warnings
from collections.abc import Iterator

import pytest

from llmspell.errors import HookExecutionError, OperationDepthError
from llmspell.hooks import (
    Cancel,
    ComponentId,
    ComponentType,
    ErrorPolicy,
    HookContext,
    HookPoint,
    HookRegistry,
)
from llmspell.hooks.executor import ChainResult, HookExecutor
from llmspell.runtime import System
from llmspell.scripting import ScriptHost
from tests.scripting.child import run_in_child

P = HookPoint
GUARD = 60  # seconds: only so a regression fails instead of hanging the suite
COMP = ComponentId(type=ComponentType.TOOL, name="calculator")
HINT = "must not dispatch the point it is registered on"


@pytest.fixture(autouse=True)
def _collect_abandoned_coroutines() -> Iterator[None]:
    """A loop that hits the recursion limit leaves coroutines it made but could not await;
    collect them here, so their "never awaited" warnings do not land in later tests."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gc.collect()


def _ctx(point: str) -> HookContext:
    return HookContext(point=point, component=COMP, data={})


def _loop_failure(failures: list[object], *points: str) -> None:
    """Exactly one failure, the loop's, naming each point."""
    assert len(failures) == 1, failures
    failure = failures[0]
    assert failure.error_type == "OperationDepthError", failure  # type: ignore[attr-defined]
    assert "looped" in failure.message  # type: ignore[attr-defined]
    for point in points:
        assert repr(str(point)) in failure.message  # type: ignore[attr-defined]


def _frames(exc: BaseException | None) -> int:
    """The traceback frames of ``exc`` and of every error it was raised from."""
    count = 0
    while exc is not None:
        tb = exc.__traceback__
        while tb is not None:
            count += 1
            tb = tb.tb_next
        exc = exc.__cause__ if exc.__cause__ is not None else (
            None if exc.__suppress_context__ else exc.__context__)
    return count


def test_a_sync_hook_calling_execute_sync_on_its_point_fails_typed(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    calls: list[int] = []

    def again(ctx: HookContext) -> None:
        calls.append(1)
        executor.execute_sync(_ctx(ctx.point))

    registry.register(P.BEFORE_TOOL_EXECUTION, again, name="again")
    with caplog.at_level(logging.WARNING, logger="llmspell.hooks"):
        outcome = executor.execute_sync(_ctx(P.BEFORE_TOOL_EXECUTION))
    assert len(calls) > 2
    # Fail-open: the outer dispatch goes on, with the loop as its one failure.
    assert outcome.result.kind == "continue"
    _loop_failure(list(outcome.failures), P.BEFORE_TOOL_EXECUTION)
    _loop_failure(executor.failures(), P.BEFORE_TOOL_EXECUTION)
    assert executor.failure_count == 1
    warned = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warned) == 1 and warned[0].exc_info is None  # no thousand-frame traceback
    assert "OperationDepthError" in warned[0].getMessage()
    # Nothing is left over: the next dispatches loop and fail the same way, once each, as
    # deep as the first or deeper (the first run's failure path does first-time work, which
    # takes stack: with the native fast path it can stop a few levels sooner), then alike.
    first = len(calls)
    again_outcome = executor.execute_sync(_ctx(P.BEFORE_TOOL_EXECUTION))
    second = len(calls) - first
    assert len(again_outcome.failures) == 1 and second >= first
    third_outcome = executor.execute_sync(_ctx(P.BEFORE_TOOL_EXECUTION))
    assert len(third_outcome.failures) == 1 and len(calls) - first - second == second


async def test_an_async_hook_awaiting_dispatch_of_its_point_raises_typed(
        system: System) -> None:
    async def again(ctx: HookContext) -> None:
        await system.dispatch(ctx.point, COMP, {})

    system.registry.register(P.BEFORE_TOOL_EXECUTION, again, name="again",
                             error_policy=ErrorPolicy.RAISE)
    with pytest.raises(HookExecutionError) as caught:
        await asyncio.wait_for(system.dispatch(P.BEFORE_TOOL_EXECUTION, COMP, {}), GUARD)
    error = caught.value
    assert error.hook == "again"
    loop = error.__cause__
    assert isinstance(loop, OperationDepthError)
    assert "'before_tool_execution'" in str(loop)
    assert loop.hint is not None and HINT in loop.hint
    assert _frames(error) < 100  # not the thousand frames of the recursion
    assert system.executor.failure_count == 1


async def test_a_fail_closed_hook_looping_through_execute_cancels(system: System) -> None:
    async def again(ctx: HookContext) -> None:
        await system.executor.execute(_ctx(ctx.point))

    system.registry.register(P.BEFORE_AGENT_EXECUTION, again, name="guard",
                             error_policy=ErrorPolicy.FAIL_CLOSED)
    outcome = await asyncio.wait_for(
        system.executor.execute(_ctx(P.BEFORE_AGENT_EXECUTION)), GUARD)
    assert isinstance(outcome.result, Cancel) and outcome.decided_by == "guard"
    assert "OperationDepthError" in outcome.result.reason or \
        "looped" in outcome.result.reason
    _loop_failure(list(outcome.failures), P.BEFORE_AGENT_EXECUTION)


async def test_two_hooks_ping_ponging_between_two_points_fail_typed(system: System) -> None:
    ping, pong = P.custom("ping"), P.custom("pong")

    async def to_pong(ctx: HookContext) -> None:
        await system.dispatch(pong, COMP, {})

    async def to_ping(ctx: HookContext) -> None:
        await system.dispatch(ping, COMP, {})

    system.registry.register(ping, to_pong, name="to-pong")
    system.registry.register(pong, to_ping, name="to-ping")
    outcome, _ = await asyncio.wait_for(system.dispatch(ping, COMP, {}), GUARD)
    assert outcome.result.kind == "continue"
    _loop_failure(list(outcome.failures), ping, pong)
    assert outcome.failures[0].hook == "to-pong"  # the hook that started the loop
    assert system.executor.failure_count == 1


def test_sync_hooks_ping_ponging_between_two_points_fail_typed() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    ping, pong = P.custom("ping"), P.custom("pong")
    registry.register(ping, lambda ctx: executor.execute_sync(_ctx(pong)) and None,
                      name="to-pong")
    registry.register(pong, lambda ctx: executor.execute_sync(_ctx(ping)) and None,
                      name="to-ping")
    outcome = executor.execute_sync(_ctx(ping))
    _loop_failure(list(outcome.failures), ping, pong)
    assert outcome.failures[0].hook == "to-pong"  # the hook that started the loop
    assert f"{str(ping)!r} -> {str(pong)!r} -> {str(ping)!r}" in outcome.failures[0].message


async def test_a_hook_emitting_inside_before_event_emit_keeps_the_outer_event(
        system: System) -> None:
    async def echo(ctx: HookContext) -> None:
        await system.emit("app.echo", {"n": 1})

    seen: list[str] = []
    system.bus.subscribe("app.*", lambda event: seen.append(event.event_type))
    system.registry.register(P.BEFORE_EVENT_EMIT, echo, name="echo")
    event = await asyncio.wait_for(system.emit("app.first", {"n": 0}), GUARD)
    assert event.event_type == "app.first" and seen == ["app.first"]
    _loop_failure(system.executor.failures(), P.BEFORE_EVENT_EMIT)


async def test_a_hook_writing_state_inside_before_state_write_keeps_the_outer_write(
        system: System) -> None:
    async def rewrite(ctx: HookContext) -> None:
        await system.state.set("inner", 1)

    system.registry.register(P.BEFORE_STATE_WRITE, rewrite, name="rewrite")
    await asyncio.wait_for(system.state.set("outer", 2), GUARD)
    assert await system.state.get("outer") == 2
    assert await system.state.get("inner") is None  # no inner write got past the loop
    _loop_failure(system.executor.failures(), P.BEFORE_STATE_WRITE)


def _branching_loop() -> None:
    """Two hooks at one point, each dispatching it again: without the loop ending at
    once, every level below the recursion limit would run twice (2**300 dispatches)."""
    registry = HookRegistry()
    executor = HookExecutor(registry)
    for name in ("a", "b"):
        registry.register(P.BEFORE_TOOL_EXECUTION,
                          lambda ctx: executor.execute_sync(_ctx(ctx.point)) and None,
                          name=name)
    outcome = executor.execute_sync(_ctx(P.BEFORE_TOOL_EXECUTION))
    assert isinstance(outcome, ChainResult) and outcome.hooks_run == 2
    assert [f.error_type for f in outcome.failures] == ["OperationDepthError"] * 2


def test_two_hooks_re_entering_one_point_end_instead_of_hanging() -> None:
    run_in_child(_branching_loop, seconds=GUARD,
                 failure="two re-entrant hooks at one point did not finish")


def test_a_hooks_own_recursion_keeps_its_recursion_error() -> None:
    # A hook at a point dispatched legitimately twice (nested once) whose own code
    # recurses without end: its RecursionError is its own, not a dispatch loop.
    registry = HookRegistry()
    executor = HookExecutor(registry)

    def deep(n: int) -> int:
        return deep(n + 1)

    def outer(ctx: HookContext) -> None:
        if ctx.data.get("level") is None:
            executor.execute_sync(HookContext(point=ctx.point, component=COMP,
                                              data={"level": 1}))
        else:
            deep(0)

    registry.register(P.BEFORE_TOOL_EXECUTION, outer, name="outer")
    executor.execute_sync(_ctx(P.BEFORE_TOOL_EXECUTION))
    assert [f.error_type for f in executor.failures()] == ["RecursionError"]


@pytest.mark.parametrize("language", ["lua", "js"])
async def test_a_script_hook_writing_state_inside_its_point_stops_typed(
        system: System, language: str) -> None:
    # Scripts are bounded before Python's limit (script callbacks nest at most 32 deep):
    # the loop is the hook's HookExecutionError naming the point, the outer write stands.
    source = {
        "lua": """
          Hook.register("BeforeStateWrite", function(ctx) State.set("inner", 1) end,
                        {name = "again"})
          State.set("outer", 2)
          return State.get("outer")""",
        "js": """
          Hook.register("BeforeStateWrite", async (ctx) => { await State.set("inner", 1); },
                        {name: "again"});
          await State.set("outer", 2);
          return await State.get("outer");""",
    }[language]
    host = ScriptHost(system)
    try:
        run = host.run_lua_async if language == "lua" else host.run_js_async
        assert await asyncio.wait_for(run(source), GUARD) == 2
    finally:
        host.close()
    failures = system.executor.failures()
    assert len(failures) == 1 and failures[0].error_type == "HookExecutionError"
    assert failures[0].point == "before_state_write" and "nested" in failures[0].message
    assert sys.getrecursionlimit() > 32
