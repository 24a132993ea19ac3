"""What a replay does to hooks stays in the replay: its hook failures and slow calls never
reach the live circuit breakers, failure log or monitor (a what-if once opened the live
breaker of a fail-open guard, so live calls skipped the guard afterwards), and live breaker
state never changes a replay's outcome (an open live breaker made an exact replay skip a
hook that ran in the recording). Hooks run for event-handler errors see a what-if's hook
changes like every other dispatch: only inside the replay."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from typing import Any

from llmspell.core.run_scope import current_replay
from llmspell.errors import OperationCancelled
from llmspell.events import UniversalEvent
from llmspell.hooks import (
    BreakerConfig,
    BreakerState,
    Cancel,
    HookContext,
    HookExecutor,
    HookPoint,
)
from llmspell.runtime import System, tool

P = HookPoint


@tool()
def lookup(order: str) -> str:
    """Look an order up."""
    return f"order {order}"


@tool()
def refund(order: str) -> str:
    """Refund an order (a guard refuses it)."""
    return f"refunded {order}"


def guard(ctx: HookContext) -> Cancel | None:
    """A fail-open guard: refuses refunds, and chokes on a malformed order id."""
    order = ctx.data["params"]["order"]
    if not order.isalnum():
        raise ValueError(f"malformed order id {order!r}")
    return Cancel("refunds need approval") if ctx.data["tool"] == "refund" else None


async def try_refund(system: System, order: str) -> str:
    try:
        result: str = await system.tools.execute("refund", {"order": order})
    except OperationCancelled:
        return "refused"
    return result


async def test_a_what_if_whose_guard_fails_leaves_the_live_breaker_and_log_alone(
        system: System, events: list[UniversalEvent]) -> None:
    system.tools.register_all([lookup, refund])
    handle = system.registry.register(P.BEFORE_TOOL_EXECUTION, guard, name="guard")
    async with system.runs.start("job", "support", "A1") as run:
        run.output = await system.tools.execute("lookup", {"order": "A1"})
    failures = system.executor.failure_count
    monitor = system.executor.monitor
    assert monitor is not None
    before = monitor.stats_for("guard")
    assert before is not None

    own: list[HookExecutor] = []

    async def op(order: Any) -> Any:
        own.append(system.executor.for_replay(current_replay()))
        # The what-if's input makes the guard raise on every call: enough failures to open
        # a breaker three times over.
        return [await system.tools.execute("lookup", {"order": order}) for _ in range(9)]

    result = await system.runs.replay(run.run_id, mode="what-if", input="A-1", operation=op)
    assert result.error is None and result.output == ["order A-1"] * 9

    breaker = system.executor.breaker_for(handle.id)
    assert breaker is not None
    snap = breaker.snapshot()
    assert snap.state is BreakerState.CLOSED and snap.recent_failures == 0 and snap.trips == 0
    assert system.executor.failure_count == failures
    assert not [f for f in system.executor.failures() if f.hook == "guard"]
    after = monitor.stats_for("guard")
    assert after is not None and after.errors == 0 and after.count == before.count
    assert not [e for e in events if e.event_type.startswith("hook.breaker.")]
    # The guard still holds for live calls.
    assert await try_refund(system, "B2") == "refused"
    # The replay's own breaker took the failures (and opened: the guard was then skipped
    # in the replay, as it would be live).
    replay_executor = own.pop()
    replay_breaker = replay_executor.breaker_for(handle.id)
    assert replay_breaker is not None and replay_breaker.trips >= 1
    assert [f.hook for f in replay_executor.failures()][:3] == ["guard"] * 3


async def test_an_exact_replay_of_a_run_whose_hook_failed_leaves_live_state_alone(
        system: System) -> None:
    system.tools.register_all([lookup])
    handle = system.registry.register(P.BEFORE_TOOL_EXECUTION, guard, name="guard")
    async with system.runs.start("job", "support", "A-1") as run:
        # Two failures: one short of opening the (default) breaker.
        run.output = [await system.tools.execute("lookup", {"order": "A-1"})
                      for _ in range(2)]
    breaker = system.executor.breaker_for(handle.id)
    assert breaker is not None and breaker.snapshot().recent_failures == 2
    failures = system.executor.failure_count

    async def op(order: Any) -> Any:
        return [await system.tools.execute("lookup", {"order": order}) for _ in range(2)]

    for _ in range(2):
        result = await system.runs.replay(run.run_id, operation=op)
        assert result.error is None and not result.diverged
    snap = breaker.snapshot()
    assert snap.state is BreakerState.CLOSED and snap.recent_failures == 2
    assert system.executor.failure_count == failures


async def test_an_open_live_breaker_does_not_make_an_exact_replay_skip_the_guard(
        system: System) -> None:
    system.tools.register_all([refund])
    handle = system.registry.register(P.BEFORE_TOOL_EXECUTION, guard, name="guard")
    async with system.runs.start("job", "support", "A1") as run:
        run.output = await try_refund(system, "A1")
    assert run.output == "refused"
    breaker = system.executor.breaker_for(handle.id)
    assert breaker is not None
    for _ in range(3):  # live trouble opens the guard's breaker
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN

    async def op(order: Any) -> Any:
        return await try_refund(system, order)

    result = await system.runs.replay(run.run_id, operation=op)
    assert result.error is None and result.output == "refused"
    assert not result.diverged, result.divergences
    # ... and the replay's guard call neither probed nor closed the live breaker.
    snap = breaker.snapshot()
    assert snap.state is BreakerState.OPEN and snap.trips == 1


async def test_slow_hook_calls_in_a_replay_do_not_count_for_the_live_breaker(
        system: System) -> None:
    system.tools.register_all([lookup])
    # Every call is "slow" (over 1 ns); three slow calls within a minute open the breaker.
    system.executor.set_breaker_config(P.BEFORE_TOOL_EXECUTION, BreakerConfig(
        slow_call_threshold=1e-9, slow_call_count=3))
    handle = system.registry.register(P.BEFORE_TOOL_EXECUTION, lambda ctx: None,
                                      name="watch")
    async with system.runs.start("job", "support", "A1") as run:
        run.output = await system.tools.execute("lookup", {"order": "A1"})
    breaker = system.executor.breaker_for(handle.id)
    assert breaker is not None and breaker.snapshot().recent_slow_calls == 1

    async def op(order: Any) -> Any:
        return await system.tools.execute("lookup", {"order": order})

    for _ in range(3):
        result = await system.runs.replay(run.run_id, operation=op)
        assert result.error is None and not result.diverged
    snap = breaker.snapshot()
    assert snap.state is BreakerState.CLOSED and snap.recent_slow_calls == 1


async def test_a_replays_successful_hook_calls_are_not_counted_in_the_live_monitor(
        system: System) -> None:
    system.tools.register_all([lookup])
    system.registry.register(P.BEFORE_TOOL_EXECUTION, guard, name="guard")
    async with system.runs.start("job", "support", "A1") as run:
        run.output = await system.tools.execute("lookup", {"order": "A1"})
    monitor = system.executor.monitor
    assert monitor is not None
    before = monitor.stats_for("guard")
    assert before is not None and before.count == 1
    own: list[weakref.ref[HookExecutor]] = []

    async def op(order: Any) -> Any:
        own.append(weakref.ref(system.executor.for_replay(current_replay())))
        return await system.tools.execute("lookup", {"order": order})

    result = await system.runs.replay(run.run_id, operation=op)
    assert result.error is None and not result.diverged
    after = monitor.stats_for("guard")
    assert after is not None and after.count == 1
    # The replay's own executor went with the replay.
    for _ in range(2):  # the session's cycles, then the executor's (dropped with it)
        gc.collect()
    assert own and own[0]() is None


async def test_event_handler_error_hooks_follow_a_what_ifs_hook_changes(
        system: System) -> None:
    system.tools.register_all([lookup])
    seen: list[tuple[str, bool]] = []

    def alert(ctx: HookContext) -> None:
        seen.append(("alert", current_replay() is not None))

    def added(ctx: HookContext) -> None:
        seen.append(("added", current_replay() is not None))

    def broken_handler(event: UniversalEvent) -> None:
        raise RuntimeError("handler broke")

    system.registry.register(P.EVENT_HANDLER_ERROR, alert, name="alert")
    system.bus.subscribe("probe.*", broken_handler)
    async with system.runs.start("job", "support", "A1") as run:
        run.output = await system.tools.execute("lookup", {"order": "A1"})

    async def live_probe() -> None:
        system.bus.publish("probe.live", {})

    async def op(order: Any) -> Any:
        system.bus.publish("probe.replay", {})  # an inline handler fails inside the replay
        # Live traffic meanwhile: a task of its own, not part of the replay.
        await asyncio.get_running_loop().create_task(live_probe(),
                                                     context=contextvars.Context())
        return await system.tools.execute("lookup", {"order": order})

    result = await system.runs.replay(run.run_id, mode="what-if", remove_hooks=["alert"],
                                      hooks=[(P.EVENT_HANDLER_ERROR, added)], operation=op)
    assert result.error is None
    # The replay's handler failure ran its own hook only; the live one ran the live hook.
    assert seen == [("added", True), ("alert", False)]
    seen.clear()
    system.bus.publish("probe.after", {})
    assert seen == [("alert", False)]
