"""The executor's async fast path (a chain with async hooks and no predicate): every fold
rule, failure, timeout, record and count is what the full loop gives, and a dispatch loop
through async hooks is still reported as one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmspell.errors import HookExecutionError, OperationDepthError
from llmspell.hooks import (
    Cancel,
    ComponentId,
    ComponentType,
    Continue,
    ErrorPolicy,
    HookContext,
    HookExecutor,
    HookPoint,
    HookRegistry,
    Modified,
    Skipped,
)

P = HookPoint.BEFORE_TOOL_EXECUTION


def ctx(n: int = 0) -> HookContext:
    return HookContext(point=P, component=ComponentId(type=ComponentType.TOOL, name="t"),
                       data={"n": n})


def run(executor: HookExecutor, context: HookContext, record: bool | None = None) -> Any:
    return asyncio.run(executor.execute(context, record))


async def async_continue(c: HookContext) -> Continue:
    await asyncio.sleep(0)
    return Continue()


async def async_none(c: HookContext) -> None:
    return None


def test_async_hooks_that_go_on_are_run_timed_and_recorded() -> None:
    registry = HookRegistry()
    registry.register(P, async_continue, name="a")
    registry.register(P, lambda c: None, name="sync")
    registry.register(P, async_none, name="b")
    executor = HookExecutor(registry)
    plain = run(executor, ctx())
    assert plain.kind == "continue" and plain.hooks_run == 3 and plain.records == ()
    recorded = run(executor, ctx(), record=True)
    assert recorded.hooks_run == 3
    assert [(r.hook, r.kind) for r in recorded.records] == [
        ("a", "continue"), ("sync", "continue"), ("b", "continue")]
    assert all(r.duration_ns >= 0 for r in recorded.records)
    monitor = executor.monitor
    assert monitor is not None
    assert [row.count for row in monitor.point_stats()] == [2]
    assert sorted(row.count for row in monitor.hook_stats(P)) == [2, 2, 2]


def test_a_decision_from_an_async_hook_is_folded_with_the_records_before_it() -> None:
    registry = HookRegistry()
    registry.register(P, async_continue, name="first")

    async def modify(c: HookContext) -> Modified:
        return Modified({"n": c.data["n"] + 1})

    async def cancel(c: HookContext) -> Cancel:
        return Cancel("no")

    registry.register(P, modify, name="modify")
    registry.register(P, lambda c: Continue(), name="after")
    registry.register(P, cancel, name="cancel")
    registry.register(P, async_none, name="never")
    executor = HookExecutor(registry)
    context = ctx(1)
    result = run(executor, context, record=True)
    assert result.kind == "cancel" and result.decided_by == "cancel"
    assert result.hooks_run == 4
    assert [(r.hook, r.kind) for r in result.records] == [
        ("first", "continue"), ("modify", "modified"), ("after", "continue"),
        ("cancel", "cancel")]
    assert context.data == {"n": 2}


def test_skipped_from_an_async_hook_goes_on_as_the_full_loop_folds_it() -> None:
    registry = HookRegistry()

    async def skip(c: HookContext) -> Skipped:
        return Skipped("not mine")

    registry.register(P, skip, name="skip")
    registry.register(P, async_none, name="next")
    result = run(HookExecutor(registry), ctx(), record=True)
    assert result.kind == "continue" and result.hooks_run == 2
    assert [r.kind for r in result.records] == ["skipped", "continue"]


def test_an_async_hook_returning_no_hook_result_fails_by_its_policy() -> None:
    registry = HookRegistry()

    async def wrong(c: HookContext) -> int:
        return 42

    registry.register(P, wrong, name="wrong")
    registry.register(P, async_none, name="next")
    executor = HookExecutor(registry)
    result = run(executor, ctx())
    assert result.kind == "continue" and result.hooks_run == 2
    assert [f.hook for f in result.failures] == ["wrong"]
    assert "returned int, not a HookResult or None" in result.failures[0].message

    strict = HookRegistry()
    strict.register(P, wrong, name="wrong", error_policy=ErrorPolicy.RAISE)
    with pytest.raises(HookExecutionError, match="returned int"):
        run(HookExecutor(strict), ctx())


def test_an_async_hook_returning_an_awaitable_is_a_wrong_result_not_awaited_twice() -> None:
    registry = HookRegistry()
    inner_awaited: list[bool] = []

    async def inner() -> Continue:
        inner_awaited.append(True)
        return Continue()

    async def nested(c: HookContext) -> Any:
        return asyncio.ensure_future(inner())

    registry.register(P, nested, name="nested")
    result = run(HookExecutor(registry), ctx())
    assert [f.hook for f in result.failures] == ["nested"]
    assert "not a HookResult or None" in result.failures[0].message


def test_a_sync_hook_returning_a_future_beside_async_hooks_is_settled() -> None:
    registry = HookRegistry()
    registry.register(P, async_none, name="async")

    def future_hook(c: HookContext) -> Any:
        future = asyncio.get_running_loop().create_future()
        future.set_result(Modified({"n": 7}))
        return future

    registry.register(P, future_hook, name="future")
    context = ctx()
    result = run(HookExecutor(registry), context)
    assert result.kind == "modified" and result.decided_by == "future"
    assert context.data == {"n": 7}


def test_a_failing_async_hook_is_counted_and_the_chain_goes_on() -> None:
    registry = HookRegistry()

    async def boom(c: HookContext) -> None:
        await asyncio.sleep(0)
        raise ValueError("broken")

    registry.register(P, async_continue, name="first")
    registry.register(P, boom, name="boom")
    registry.register(P, async_none, name="last")
    executor = HookExecutor(registry)
    result = run(executor, ctx(), record=True)
    assert result.kind == "continue" and result.hooks_run == 3
    assert [f.hook for f in result.failures] == ["boom"]
    assert [(r.hook, r.kind) for r in result.records] == [
        ("first", "continue"), ("boom", "error"), ("last", "continue")]
    assert executor.failure_count == 1


def test_an_async_hook_past_its_timeout_fails_as_a_timeout() -> None:
    registry = HookRegistry()

    async def slow(c: HookContext) -> None:
        await asyncio.sleep(5)

    registry.register(P, slow, name="slow", timeout=0.01)
    registry.register(P, async_none, name="next")
    result = run(HookExecutor(registry), ctx())
    assert [f.hook for f in result.failures] == ["slow"]
    assert result.failures[0].error_type == "HookTimeoutError"
    assert "timed out after 0.01 s" in result.failures[0].message
    assert result.hooks_run == 2


def test_a_timeout_the_async_hook_raises_itself_is_its_plain_failure() -> None:
    registry = HookRegistry()

    async def own_timeout(c: HookContext) -> None:
        raise TimeoutError("socket")

    registry.register(P, own_timeout, name="own", timeout=5)
    result = run(HookExecutor(registry), ctx())
    assert [f.hook for f in result.failures] == ["own"]
    assert result.failures[0].error_type == "TimeoutError"


def test_cancelling_the_dispatching_task_propagates_from_an_async_hook() -> None:
    registry = HookRegistry()

    async def waits(c: HookContext) -> None:
        await asyncio.sleep(5)

    registry.register(P, waits, name="waits")
    executor = HookExecutor(registry)

    async def main() -> None:
        task = asyncio.ensure_future(executor.execute(ctx()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert executor.failure_count == 0


def test_start_chain_gives_a_coroutine_for_an_async_chain() -> None:
    registry = HookRegistry()
    registry.register(P, async_continue, name="a")
    executor = HookExecutor(registry)
    chain = registry.chain(P)

    async def main() -> Any:
        started = executor.start_chain(chain, ctx())
        assert asyncio.iscoroutine(started)
        return await started

    result = asyncio.run(main())
    assert result.kind == "continue" and result.hooks_run == 1


def test_an_async_hook_dispatching_its_own_point_is_reported_as_a_loop() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)

    async def again(c: HookContext) -> None:
        await executor.execute(ctx())

    registry.register(P, again, name="again", error_policy=ErrorPolicy.RAISE)
    with pytest.raises((OperationDepthError, HookExecutionError)) as caught:
        run(executor, ctx())
    text = str(caught.value)
    assert "hook dispatch looped" in text and repr(str(P)) in text
