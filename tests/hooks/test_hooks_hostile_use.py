"""The hook engine against hooks that misbehave: re-entrant registration, stray
cancellations, their own TimeoutErrors, absurd timeouts, async predicates, composites whose
children fail half-way, concurrent failures on one breaker."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from llmspell.core import ManualClock
from llmspell.errors import (
    HookExecutionError,
    HookNotFoundError,
    InvalidValueError,
    SyncDispatchError,
)
from llmspell.hooks import (
    BaseHook,
    BreakerConfig,
    Cancel,
    ComponentId,
    ComponentType,
    HookContext,
    HookExecutor,
    HookMetadata,
    HookPoint,
    HookRegistry,
    Modified,
    ParallelHook,
    SequentialHook,
    VotingHook,
)

POINT = HookPoint.BEFORE_TOOL_EXECUTION
TOOL = ComponentId(type=ComponentType.TOOL, name="calculator")


@pytest.fixture(autouse=True)
def _quiet_hook_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="llmspell.hooks")


def ctx(**data: Any) -> HookContext:
    return HookContext(point=POINT, component=TOOL, data=dict(data))


def dispatch(executor: HookExecutor, context: HookContext, mode: str) -> Any:
    if mode == "sync":
        return executor.execute_sync(context)
    return asyncio.run(executor.execute(context))


async def _cancelled_inside(context: HookContext) -> None:
    """An async hook whose own await is cancelled (a shared future someone cancelled)."""
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


# -- a TimeoutError the hook raises itself ----------------------------------------------------
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_hooks_own_timeout_error_without_a_timeout_is_its_failure(mode: str) -> None:
    # Was: formatting "timed out after {None:g} s" raised TypeError out of the dispatch,
    # whatever the hook's policy (a socket timeout in a fail-open hook broke the call).
    registry = HookRegistry()
    executor = HookExecutor(registry)

    def fetch(context: HookContext) -> None:
        raise TimeoutError("socket timed out")

    registry.register(POINT, fetch, name="fetch")
    outcome = dispatch(executor, ctx(), mode)
    assert outcome.kind == "continue"
    assert [(f.hook, f.error_type, f.message) for f in outcome.failures] == [
        ("fetch", "TimeoutError", "socket timed out")]


def test_a_hooks_own_timeout_error_is_not_reported_as_the_executors_timeout() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)

    def fetch(context: HookContext) -> None:
        raise TimeoutError("upstream timed out")

    registry.register(POINT, fetch, name="fetch", timeout=5)
    outcome = executor.execute_sync(ctx())
    assert [(f.error_type, f.message) for f in outcome.failures] == [
        ("TimeoutError", "upstream timed out")]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_async_hook_past_its_timeout_is_still_a_hook_timeout(mode: str) -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)

    async def hangs(context: HookContext) -> None:
        await asyncio.Event().wait()

    registry.register(POINT, hangs, name="hangs", timeout=0.01, error_policy="fail_closed")
    outcome = dispatch(executor, ctx(), mode)
    assert outcome.cancelled and outcome.failures[0].error_type == "HookTimeoutError"
    assert "timed out after 0.01 s" in outcome.failures[0].message


# -- absurd timeouts ------------------------------------------------------------------------
@pytest.mark.parametrize("timeout", [float("inf"), 1e300])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_unbounded_timeout_does_not_break_the_point(timeout: float, mode: str) -> None:
    # Was: the plan computed int(timeout * 1e9) -> OverflowError on every dispatch at the
    # point, so no hook there (a guard included) ever ran again.
    registry = HookRegistry()
    executor = HookExecutor(registry)

    async def slow_ok(context: HookContext) -> None:
        await asyncio.sleep(0)

    registry.register(POINT, lambda c: None, name="sync_one", timeout=timeout)
    registry.register(POINT, slow_ok, name="async_one", timeout=timeout)
    registry.register(POINT, lambda c: Cancel("guard says no"), name="guard")
    outcome = dispatch(executor, ctx(), mode)
    assert outcome.cancelled and outcome.decided_by == "guard"


@pytest.mark.parametrize("bad", ["5", True, float("nan"), 0, -1, [1]])
def test_a_timeout_that_is_not_a_number_of_seconds_is_refused(bad: object) -> None:
    # Was: "5" raised TypeError (untyped) and True was taken as one second.
    registry = HookRegistry()
    with pytest.raises(InvalidValueError):
        registry.register(POINT, lambda c: None, name="h", timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        HookMetadata(name="h", timeout=bad)  # type: ignore[arg-type]


# -- async predicates ------------------------------------------------------------------------
class _AsyncPredicate(BaseHook):
    async def should_execute(self, context: HookContext) -> bool:  # type: ignore[override]
        return False

    def execute(self, context: HookContext) -> Cancel:
        return Cancel("ran although should_execute said no")


def test_an_async_should_execute_is_refused_at_registration() -> None:
    # Was: the coroutine it returned is truthy, so the hook ran on every call (and the
    # coroutine was never awaited).
    registry = HookRegistry()
    with pytest.raises(InvalidValueError, match="should_execute is async"):
        registry.register(POINT, _AsyncPredicate(name="picky"))
    assert len(registry) == 0


def test_an_async_should_execute_is_refused_in_a_composite() -> None:
    with pytest.raises(InvalidValueError, match="should_execute is async"):
        SequentialHook("group", [_AsyncPredicate(name="picky")])


# -- composites whose children fail half-way -------------------------------------------------
def test_a_failed_sequential_group_leaves_the_data_as_it_found_it() -> None:
    # Was: the data of the children before the failing one stayed on ctx.data although the
    # fail-open group counted as "continue".
    registry = HookRegistry()
    executor = HookExecutor(registry)

    def boom(context: HookContext) -> None:
        raise RuntimeError("second child broke")

    registry.register(POINT, SequentialHook("group", [
        lambda c: Modified({"rewritten": True}), boom]))
    context = ctx(original=1)
    outcome = executor.execute_sync(context)
    assert outcome.kind == "continue" and outcome.failures[0].hook == "group"
    assert context.data == {"original": 1}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_timed_out_sequential_group_leaves_the_data_as_it_found_it(mode: str) -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)

    async def hangs(context: HookContext) -> None:
        await asyncio.Event().wait()

    registry.register(POINT, SequentialHook("group", [
        lambda c: Modified({"rewritten": True}), hangs]), timeout=0.01)
    context = ctx(original=1)
    outcome = dispatch(executor, context, mode)
    assert outcome.failures[0].error_type == "HookTimeoutError"
    assert context.data == {"original": 1}


def test_a_sequential_group_that_succeeds_still_chains_its_data() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    registry.register(POINT, SequentialHook("group", [
        lambda c: Modified({**c.data, "a": 1}), lambda c: Modified({**c.data, "b": 2})]))
    context = ctx(original=1)
    assert executor.execute_sync(context).result == Modified({"original": 1, "a": 1, "b": 2})
    assert context.data == {"original": 1, "a": 1, "b": 2}


# -- stray CancelledError ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_cancelled_await_inside_a_guard_is_its_failure_and_denies(mode: str) -> None:
    # Was: the CancelledError left the dispatch (execute_sync raised CancelledError; an
    # awaiting task looked cancelled) instead of following the hook's policy.
    registry = HookRegistry()
    executor = HookExecutor(registry)
    registry.register(POINT, _cancelled_inside, name="guard", error_policy="fail_closed")
    outcome = dispatch(executor, ctx(), mode)
    assert outcome.cancelled and outcome.decided_by == "guard"
    assert "CancelledError" in outcome.failures[0].message


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_sync_hook_raising_cancelled_error_is_its_failure(mode: str) -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)

    def odd(context: HookContext) -> None:
        raise asyncio.CancelledError

    registry.register(POINT, odd, name="odd")
    registry.register(POINT, lambda c: Modified({"after": True}), name="after")
    outcome = dispatch(executor, ctx(), mode)
    assert outcome.result == Modified({"after": True})
    assert [f.hook for f in outcome.failures] == ["odd"]


def test_a_cancelled_await_inside_a_voting_child_abstains() -> None:
    # Was: the child's CancelledError ended the whole vote (and the dispatch) instead of
    # abstaining like any other child failure.
    registry = HookRegistry()
    executor = HookExecutor(registry)
    registry.register(POINT, VotingHook("vote", [
        _cancelled_inside, lambda c: Cancel("no"), lambda c: Cancel("no either")]))
    outcome = executor.execute_sync(ctx())
    assert outcome.result == Cancel("no") and not outcome.failures


def test_a_cancelled_await_inside_a_sequential_child_is_the_groups_failure() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    registry.register(POINT, SequentialHook("group", [_cancelled_inside]),
                      error_policy="raise")
    with pytest.raises(HookExecutionError) as info:
        executor.execute_sync(ctx())
    assert "CancelledError" in str(info.value)


def test_cancelling_the_dispatching_task_still_propagates() -> None:
    registry = HookRegistry()
    clock = ManualClock()
    executor = HookExecutor(registry, clock=clock,
                            breaker=BreakerConfig(failure_threshold=1, open_duration=1))
    started = asyncio.Event()
    calls = []

    async def slow(context: HookContext) -> None:
        calls.append(1)
        started.set()
        await asyncio.Event().wait()

    def broken(context: HookContext) -> None:
        raise RuntimeError("down")

    registry.register(POINT, broken, name="broken")
    registry.register(POINT, slow, name="slow", error_policy="fail_closed")

    async def main() -> None:
        task = asyncio.ensure_future(executor.execute(ctx()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())
    assert executor.failure_count == 1  # only "broken"; the cancellation is nobody's failure
    assert {b.hook: b.state for b in executor.breakers()}["slow"] == "closed"


def test_a_nested_execute_sync_refused_inside_a_hook_is_that_hooks_failure() -> None:
    # Was: the SyncDispatchError a hook's own nested execute_sync raised left the awaited
    # dispatch whatever the hook's policy (a fail-open hook broke the operation).
    registry = HookRegistry()
    executor = HookExecutor(registry)

    async def notifier(context: HookContext) -> None:
        await asyncio.sleep(0)

    def nested(context: HookContext) -> None:
        executor.execute_sync(context.child(HookPoint.AFTER_TOOL_EXECUTION))

    registry.register(HookPoint.AFTER_TOOL_EXECUTION, notifier, name="notifier")
    registry.register(POINT, nested, name="nested")
    registry.register(POINT, lambda c: Modified({"after": True}), name="after")
    outcome = asyncio.run(executor.execute(ctx()))
    assert outcome.result == Modified({"after": True})
    assert [f.hook for f in outcome.failures] == ["nested"]
    assert "SyncDispatchError" in outcome.failures[0].message
    assert "'after_tool_execution' is async" in outcome.failures[0].message


def test_execute_sync_inside_a_running_loop_still_refuses_an_async_chain() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)

    async def notifier(context: HookContext) -> None:
        await asyncio.sleep(0)

    registry.register(POINT, notifier, name="notifier")

    async def main() -> None:
        with pytest.raises(SyncDispatchError):
            executor.execute_sync(ctx())

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_keyboard_interrupt_from_a_hook_propagates(mode: str) -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)

    def interrupted(context: HookContext) -> None:
        raise KeyboardInterrupt

    registry.register(POINT, interrupted, name="ki")
    with pytest.raises(KeyboardInterrupt):
        dispatch(executor, ctx(), mode)
    assert executor.failure_count == 0


# -- re-entrant registration -------------------------------------------------------------------
def test_unregistering_a_later_hook_mid_chain_leaves_no_ghost_figures() -> None:
    # Was: the full loop re-planned the old chain and gave the removed hook a latency series
    # again: the monitor reported a hook no longer registered (until the next change).
    registry = HookRegistry()
    executor = HookExecutor(registry)
    assert executor.monitor is not None
    ran = []

    def first(context: HookContext) -> Modified:
        registry.unregister("second", POINT)
        return Modified({"first": True})

    registry.register(POINT, first, name="first")
    registry.register(POINT, lambda c: ran.append("second"), name="second")
    executor.execute_sync(ctx())
    assert ran == ["second"]  # the running dispatch keeps the chain it started with
    assert [s.name for s in executor.monitor.hook_stats()] == ["first"]
    executor.execute_sync(ctx())
    assert ran == ["second"]
    assert [s.name for s in executor.monitor.hook_stats()] == ["first"]


def test_registering_at_the_running_point_takes_effect_at_the_next_dispatch() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    ran: list[str] = []

    def adds_one(context: HookContext) -> None:
        ran.append("adds_one")
        if "late" not in [h.name for h in registry.list(POINT)]:
            registry.register(POINT, lambda c: ran.append("late"), name="late",
                              priority="highest")

    registry.register(POINT, adds_one, name="adds_one")
    executor.execute_sync(ctx())
    assert ran == ["adds_one"]
    executor.execute_sync(ctx())
    assert ran == ["adds_one", "late", "adds_one"]


def test_unregistering_a_handle_twice_is_a_typed_error() -> None:
    registry = HookRegistry()
    handle = registry.register(POINT, lambda c: None, name="once")
    assert registry.unregister(handle) == 1
    with pytest.raises(HookNotFoundError):
        registry.unregister(handle)


def test_equal_priorities_keep_registration_order_through_disable_and_enable() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    order: list[str] = []
    for name in ("a", "b", "c"):
        registry.register(POINT, lambda c, n=name: order.append(n), name=name, priority=5)
    registry.disable("a", POINT)
    registry.enable("a", POINT)
    executor.execute_sync(ctx())
    assert order == ["a", "b", "c"]


# -- the breaker under concurrency -------------------------------------------------------------
def test_many_concurrent_failures_trip_the_breaker_once_and_half_open_admits_one_probe() -> None:
    clock = ManualClock()
    registry = HookRegistry()
    changes: list[str] = []
    executor = HookExecutor(registry, clock=clock,
                            on_breaker_change=lambda t: changes.append(t.new),
                            breaker=BreakerConfig(failure_threshold=3, open_duration=10))

    async def flaky(context: HookContext) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("down")

    registry.register(POINT, flaky, name="flaky", error_policy="fail_closed")

    async def burst() -> list[Any]:
        return list(await asyncio.gather(*(executor.execute(ctx()) for _ in range(50))))

    outcomes = asyncio.run(burst())
    assert all(o.cancelled for o in outcomes) and changes == ["open"]
    clock.advance(10)
    outcomes = asyncio.run(burst())
    assert sum(1 for o in outcomes if o.failures) == 1  # the one probe
    assert sum(1 for o in outcomes if o.circuit_open) == 49
    assert changes == ["open", "half_open", "open"]


def test_parallel_children_work_on_copies() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)

    def mutates(context: HookContext) -> None:
        context.data["inner"]["x"] = 99

    registry.register(POINT, ParallelHook("group", [mutates]))
    context = ctx(inner={"x": 1})
    executor.execute_sync(context)
    assert context.data == {"inner": {"x": 1}}


@pytest.mark.parametrize("threshold", [float("inf"), 1e300])
def test_an_unbounded_slow_call_threshold_does_not_break_the_point(threshold: float) -> None:
    # Was: the breaker computed int(threshold * 1e9) -> OverflowError on every dispatch.
    registry = HookRegistry()
    executor = HookExecutor(registry, breaker=BreakerConfig(slow_call_threshold=threshold))
    registry.register(POINT, lambda c: Cancel("guard says no"), name="guard")
    assert executor.execute_sync(ctx()).cancelled


@pytest.mark.parametrize("field", ["backoff_multiplier", "max_open_duration", "open_duration",
                                   "failure_window", "slow_call_threshold"])
@pytest.mark.parametrize("bad", [float("nan"), "5", True])
def test_a_breaker_setting_that_is_not_a_number_is_refused(field: str, bad: object) -> None:
    with pytest.raises(InvalidValueError):
        BreakerConfig(**{field: bad})


def test_a_childs_own_timeout_error_is_not_reported_as_its_timeout() -> None:
    class Fetch(BaseHook):
        async def execute(self, context: HookContext) -> None:
            raise TimeoutError("upstream timed out")

    registry = HookRegistry()
    executor = HookExecutor(registry)
    registry.register(POINT, SequentialHook("group", [Fetch(name="fetch", timeout=5)]))
    outcome = executor.execute_sync(ctx())
    assert "TimeoutError: upstream timed out" in outcome.failures[0].message
    assert "timed out after" not in outcome.failures[0].message
