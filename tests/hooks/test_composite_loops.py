"""A dispatch loop through a composite that runs its children in new tasks (ParallelHook,
VotingHook) ends with a typed :class:`OperationDepthError` naming the point(s), under the
policy of the hook that started the loop, once: each child runs on a fresh stack, so such
a loop never reaches Python's recursion limit and, unbounded, would grow (tasks, memory)
until the process dies.

The hooks below stop re-dispatching after ``RUNAWAY`` calls, far past the bound, so a
regression fails its assertions instead of hanging; one test runs the unguarded loop in a
child process with a kill timer."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

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
    Modified,
    ParallelHook,
    SequentialHook,
    VotingHook,
)
from llmspell.hooks.executor import MAX_COMPOSITE_DEPTH, MAX_COMPOSITE_RUNS, HookExecutor
from llmspell.runtime import System, SystemConfig
from tests.scripting.child import run_in_child

P = HookPoint
POINT = P.BEFORE_TOOL_EXECUTION
GUARD = 60  # seconds: only so a regression fails instead of hanging the suite
RUNAWAY = 1_000  # calls: far past the bound; a loop still going here was never stopped
COMP = ComponentId(type=ComponentType.TOOL, name="calculator")
HINT = "must not dispatch the point it is registered on"
Composite = Callable[..., ParallelHook | VotingHook]


@pytest.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    yield sys
    await sys.shutdown()


@pytest.fixture(autouse=True)
def _no_stray_warnings() -> Iterator[list[Any]]:
    """No "coroutine was never awaited" warning, no "Task exception was never retrieved"."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
        gc.collect()
    stray = [w for w in caught if "never awaited" in str(w.message)]
    assert not stray, stray


@pytest.fixture
async def unhandled() -> AsyncIterator[list[dict[str, Any]]]:
    """What the running loop's exception handler got (an unretrieved task exception)."""
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(None)


def _ctx(point: str, **data: Any) -> HookContext:
    return HookContext(point=point, component=COMP, data=dict(data))


def _loop_failure(failures: list[Any], *points: str) -> None:
    """Exactly one failure, the loop's, naming each point."""
    assert len(failures) == 1, failures
    failure = failures[0]
    assert failure.error_type == "OperationDepthError", failure
    assert "looped" in failure.message and "composite" in failure.message
    for point in points:
        assert repr(str(point)) in failure.message


async def _settled(unhandled: list[dict[str, Any]]) -> None:
    """Nothing of the loop is left running, and no task's error went unretrieved."""
    await asyncio.sleep(0)
    children = [t for t in asyncio.all_tasks()
                if "_run_concurrently" in t.get_coro().__qualname__]  # type: ignore[union-attr]
    assert not children, children
    gc.collect()
    await asyncio.sleep(0)
    assert not unhandled, unhandled


def _redispatching(calls: list[int], dispatch: Callable[[HookContext], Awaitable[Any]],
                   runaway: int = RUNAWAY) -> Callable[[HookContext], Awaitable[None]]:
    async def again(ctx: HookContext) -> None:
        calls.append(1)
        if len(calls) < runaway:
            await dispatch(ctx)

    return again


def _parallel(name: str, hooks: list[Any], **metadata: Any) -> ParallelHook:
    return ParallelHook(name, hooks, **metadata)


def _voting(name: str, hooks: list[Any], **metadata: Any) -> VotingHook:
    return VotingHook(name, hooks, **metadata)


@pytest.mark.parametrize("make", [_parallel, _voting], ids=["parallel", "voting"])
async def test_a_composite_child_dispatching_its_point_through_the_system_fails_open_typed(
        system: System, make: Composite, unhandled: list[dict[str, Any]],
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    again = _redispatching(calls, lambda ctx: system.dispatch(ctx.point, COMP, {}))
    system.registry.register(POINT, make("group", [again]))
    with caplog.at_level(logging.WARNING, logger="llmspell.hooks"):
        outcome, _ = await asyncio.wait_for(system.dispatch(POINT, COMP, {"n": 1}), GUARD)
    # Fail-open: the outer dispatch goes on with what it was given, the loop its one failure.
    assert outcome.result.kind == "continue"
    _loop_failure(list(outcome.failures), POINT)
    assert outcome.failures[0].hook == "group"
    assert f"nested {MAX_COMPOSITE_DEPTH + 1} deep" in outcome.failures[0].message
    assert len(calls) == MAX_COMPOSITE_DEPTH  # the innermost composite ran no child
    assert system.executor.failure_count == 1
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "OperationDepthError" in warned[0], warned
    await _settled(unhandled)


@pytest.mark.parametrize("make", [_parallel, _voting], ids=["parallel", "voting"])
async def test_a_fail_closed_composite_looping_through_execute_cancels(
        make: Composite, unhandled: list[dict[str, Any]]) -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    calls: list[int] = []
    again = _redispatching(calls, lambda ctx: executor.execute(_ctx(ctx.point)))
    registry.register(POINT, make("guard", [again], error_policy="fail_closed"))
    outcome = await asyncio.wait_for(executor.execute(_ctx(POINT)), GUARD)
    assert isinstance(outcome.result, Cancel) and outcome.decided_by == "guard"
    assert "looped" in outcome.result.reason
    _loop_failure(list(outcome.failures), POINT)
    _loop_failure(executor.failures(), POINT)
    assert len(calls) == MAX_COMPOSITE_DEPTH
    await _settled(unhandled)


@pytest.mark.parametrize("make", [_parallel, _voting], ids=["parallel", "voting"])
async def test_a_raising_composite_loop_is_its_hook_execution_error_from_the_loop(
        make: Composite, unhandled: list[dict[str, Any]]) -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    again = _redispatching([], lambda ctx: executor.execute(_ctx(ctx.point)))
    registry.register(POINT, make("strict", [again], error_policy=ErrorPolicy.RAISE))
    with pytest.raises(HookExecutionError) as caught:
        await asyncio.wait_for(executor.execute(_ctx(POINT)), GUARD)
    assert caught.value.hook == "strict"
    loop = caught.value.__cause__
    assert isinstance(loop, OperationDepthError)
    assert repr(str(POINT)) in str(loop)
    assert loop.hint is not None and HINT in loop.hint
    assert caught.value.hint is not None and HINT in caught.value.hint
    assert executor.failure_count == 1
    await _settled(unhandled)


@pytest.mark.parametrize("make", [_parallel, _voting], ids=["parallel", "voting"])
async def test_a_composite_whose_children_all_loop_ends_without_exponential_work(
        make: Composite, unhandled: list[dict[str, Any]]) -> None:
    # Three children each dispatching the point: the levels run breadth first (each task
    # after those queued before it), so a depth bound alone would run 3**32 children.
    registry = HookRegistry()
    executor = HookExecutor(registry)
    calls: list[int] = []
    children = [_redispatching(calls, lambda ctx: executor.execute(_ctx(ctx.point)),
                               runaway=20 * MAX_COMPOSITE_RUNS) for _ in range(3)]
    registry.register(POINT, make("fan", children))
    outcome = await asyncio.wait_for(executor.execute(_ctx(POINT)), GUARD)
    _loop_failure(list(outcome.failures), POINT)
    assert f"the limit is {MAX_COMPOSITE_RUNS}" in outcome.failures[0].message
    assert len(calls) <= 3 * (MAX_COMPOSITE_RUNS + 1)
    assert executor.failure_count == 1
    await _settled(unhandled)


async def test_a_ping_pong_through_a_composite_names_both_points(
        system: System, unhandled: list[dict[str, Any]]) -> None:
    ping, pong = P.custom("ping"), P.custom("pong")
    calls: list[int] = []
    to_pong = _redispatching(calls, lambda ctx: system.dispatch(pong, COMP, {}))

    async def to_ping(ctx: HookContext) -> None:  # a plain hook: the loop's other half
        await system.dispatch(ping, COMP, {})

    system.registry.register(ping, ParallelHook("to-pong", [to_pong]))
    system.registry.register(pong, to_ping, name="to-ping")
    outcome, _ = await asyncio.wait_for(system.dispatch(ping, COMP, {}), GUARD)
    assert outcome.result.kind == "continue"
    _loop_failure(list(outcome.failures), ping, pong)
    assert outcome.failures[0].hook == "to-pong"  # the hook that started the loop
    assert f"{str(ping)!r} -> {str(pong)!r} -> {str(ping)!r}" in outcome.failures[0].message
    assert system.executor.failure_count == 1
    await _settled(unhandled)


async def test_a_ping_pong_between_two_composites_is_decided_by_the_outermost(
        unhandled: list[dict[str, Any]]) -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    ping, pong = P.custom("ping"), P.custom("pong")
    calls: list[int] = []
    to_pong = _redispatching(calls, lambda ctx: executor.execute(_ctx(pong)))
    to_ping = _redispatching(calls, lambda ctx: executor.execute(_ctx(ping)))
    registry.register(ping, VotingHook("ping-vote", [to_pong], error_policy="fail_closed"))
    registry.register(pong, ParallelHook("pong-par", [to_ping]))  # fail-open: not its call
    outcome = await asyncio.wait_for(executor.execute(_ctx(ping)), GUARD)
    assert isinstance(outcome.result, Cancel) and outcome.decided_by == "ping-vote"
    _loop_failure(list(outcome.failures), ping, pong)
    assert len(calls) == MAX_COMPOSITE_DEPTH
    assert executor.failure_count == 1
    await _settled(unhandled)


async def test_a_loop_entered_from_a_legitimate_outer_composite_is_decided_where_it_starts(
        unhandled: list[dict[str, Any]]) -> None:
    # outer (at 'outer') -> child dispatches 'inner' once; 'inner' then loops on itself: the
    # loop's failure is the inner composite's (it started the loop), and 'outer' goes on.
    registry = HookRegistry()
    executor = HookExecutor(registry)
    outer, inner = P.custom("outer"), P.custom("inner")
    seen: list[Any] = []

    async def enter(ctx: HookContext) -> None:
        seen.append(await executor.execute(_ctx(inner)))

    registry.register(outer, ParallelHook("outer-par", [enter], error_policy="fail_closed"))
    again = _redispatching([], lambda ctx: executor.execute(_ctx(inner)))
    registry.register(inner, ParallelHook("inner-par", [again]))
    outcome = await asyncio.wait_for(executor.execute(_ctx(outer)), GUARD)
    assert outcome.result.kind == "continue" and not outcome.failures
    [inner_outcome] = seen
    _loop_failure(list(inner_outcome.failures), inner)
    assert inner_outcome.failures[0].hook == "inner-par"
    assert repr(str(outer)) not in inner_outcome.failures[0].message  # not part of the loop
    assert executor.failure_count == 1
    await _settled(unhandled)


async def test_a_sequential_group_inside_a_parallel_one_passes_the_loop_on(
        unhandled: list[dict[str, Any]]) -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    calls: list[int] = []
    again = _redispatching(calls, lambda ctx: executor.execute(_ctx(ctx.point)))
    group = ParallelHook("par", [SequentialHook("seq", [again])], error_policy="fail_closed")
    registry.register(POINT, group)
    outcome = await asyncio.wait_for(executor.execute(_ctx(POINT)), GUARD)
    assert isinstance(outcome.result, Cancel) and outcome.decided_by == "par"
    _loop_failure(list(outcome.failures), POINT)
    await _settled(unhandled)


async def test_a_composite_child_dispatching_another_point_once_still_works(
        system: System, unhandled: list[dict[str, Any]]) -> None:
    audit = P.custom("audit")
    inner_ran: list[str] = []

    async def note(ctx: HookContext) -> None:
        inner_ran.append(str(ctx.point))

    async def audited(ctx: HookContext) -> Modified:
        inner, _ = await system.dispatch(audit, COMP, {"of": "call"})
        assert not inner.failures
        return Modified({**ctx.data, "audited": True})

    system.registry.register(audit, VotingHook("audit-vote", [note, note]))
    system.registry.register(POINT, ParallelHook("par", [audited]))
    outcome, ctx = await asyncio.wait_for(system.dispatch(POINT, COMP, {"n": 1}), GUARD)
    assert isinstance(outcome.result, Modified) and not outcome.failures
    assert ctx is not None and ctx.data == {"n": 1, "audited": True}
    assert inner_ran == [str(audit), str(audit)]
    assert system.executor.failure_count == 0
    await _settled(unhandled)


async def test_a_guarded_re_entry_through_a_composite_still_works(
        unhandled: list[dict[str, Any]]) -> None:
    # Nesting a few levels through composites, each stopping itself, is no loop error.
    registry = HookRegistry()
    executor = HookExecutor(registry)
    levels: list[int] = []

    async def once_more(ctx: HookContext) -> None:
        level = int(ctx.metadata.get("level", 0))
        levels.append(level)
        if level < 3:
            inner = _ctx(ctx.point)
            inner.metadata["level"] = str(level + 1)
            assert not (await executor.execute(inner)).failures

    registry.register(POINT, ParallelHook("par", [once_more]))
    outcome = await asyncio.wait_for(executor.execute(_ctx(POINT)), GUARD)
    assert outcome.result.kind == "continue" and not outcome.failures
    assert levels == [0, 1, 2, 3]
    # Nothing carried over: the same dispatch runs again the same way.
    assert not (await executor.execute(_ctx(POINT))).failures
    assert levels == [0, 1, 2, 3] * 2
    await _settled(unhandled)


def _unguarded_loops() -> None:
    """A ParallelHook and a VotingHook child each dispatching its point with no guard."""
    async def main() -> None:
        for make in (_parallel, _voting):
            registry = HookRegistry()
            executor = HookExecutor(registry)

            async def again(ctx: HookContext, executor: HookExecutor = executor) -> None:
                await executor.execute(_ctx(ctx.point))

            registry.register(POINT, make("group", [again]))
            outcome = await executor.execute(_ctx(POINT))
            assert [f.error_type for f in outcome.failures] == ["OperationDepthError"]

    asyncio.run(main())


def test_an_unguarded_loop_through_composites_ends_instead_of_hanging() -> None:
    run_in_child(_unguarded_loops, seconds=GUARD,
                 failure="a hook loop through composites did not finish")
