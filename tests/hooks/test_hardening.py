"""Hardening of the hook engine: breakers never make a guard fail open, half-open admits
only its probes, hook results and contexts are validated, SystemExit from a hook is a hook
failure, custom point names are strict."""

from __future__ import annotations

import asyncio
import math
import sys
from typing import Any

import pytest

from llmspell.builtin.security import SecurityConfig, SecurityHook, SecurityRule
from llmspell.core import ManualClock
from llmspell.errors import (
    InvalidValueError,
    OperationCancelled,
    SerializationError,
    UnknownHookPointError,
)
from llmspell.hooks import (
    BreakerConfig,
    Cache,
    Cancel,
    CircuitBreaker,
    ComponentId,
    ComponentType,
    DictHookAdapter,
    Fork,
    ForkOperation,
    HookContext,
    HookExecutor,
    HookPoint,
    HookRegistry,
    Redirect,
    Retry,
    Skipped,
)
from llmspell.hooks.context import OperationContext
from llmspell.hooks.points import MAX_POINT_NAME_LENGTH
from llmspell.hooks.result import MAX_RETRY_ATTEMPTS, MAX_RETRY_DELAY
from llmspell.runtime import System, SystemConfig, tool

POINT = HookPoint.BEFORE_TOOL_EXECUTION
TOOL = ComponentId(type=ComponentType.TOOL, name="shell")


def ctx() -> HookContext:
    return HookContext(point=POINT, component=TOOL, data={"params": {"command": "ls"}})


def broken(ctx: HookContext) -> None:
    raise RuntimeError("rules file unreadable")


# -- item 1: an open breaker never turns a fail-closed hook into a fail-open one -------------
def test_open_breaker_on_a_fail_closed_hook_denies() -> None:
    clock = ManualClock()
    registry = HookRegistry()
    executor = HookExecutor(registry, clock=clock, record=True,
                            breaker=BreakerConfig(failure_threshold=3, open_duration=10))
    calls: list[int] = []
    failing = [True]

    def guard(c: HookContext) -> Cancel | None:
        calls.append(1)
        if failing[0]:
            raise RuntimeError("policy store down")
        return Cancel("rm -rf is forbidden") if "rm" in c.data["params"]["command"] else None

    registry.register(POINT, guard, name="guard", error_policy="fail_closed")
    for _ in range(3):
        assert executor.execute_sync(ctx()).cancelled
    assert len(calls) == 3
    failing[0] = False
    outcome = executor.execute_sync(ctx())  # the breaker is open now
    assert len(calls) == 3  # not called...
    assert outcome.cancelled  # ...and yet it denies
    assert outcome.decided_by == "guard"
    assert isinstance(outcome.result, Cancel)
    assert "breaker open" in outcome.result.reason and "'guard'" in outcome.result.reason
    assert outcome.records[0].kind == "cancel"
    with pytest.raises(OperationCancelled, match="breaker open"):
        outcome.raise_if_cancelled(POINT)
    # Once the open time is over the guard is probed; it works again and decides itself.
    clock.advance(10)
    assert executor.execute_sync(ctx()).kind == "continue"
    assert len(calls) == 4


def test_open_breaker_on_a_fail_open_hook_still_skips_it() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry, clock=ManualClock(), record=True)
    registry.register(POINT, broken, name="exporter")
    for _ in range(3):
        executor.execute_sync(ctx())
    outcome = executor.execute_sync(ctx())
    assert outcome.kind == "continue" and outcome.records[0].kind == "skipped"


async def test_timed_out_fail_closed_hook_denies_and_keeps_denying() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry, clock=ManualClock())

    async def slow_guard(c: HookContext) -> None:
        await asyncio.sleep(3600)

    registry.register(POINT, slow_guard, name="slow_guard", error_policy="fail_closed",
                      timeout=0.01)
    for _ in range(3):
        outcome = await executor.execute(ctx())
        assert isinstance(outcome.result, Cancel) and "timed out" in outcome.result.reason
    # Three timeouts opened the breaker: the guard still denies (without running).
    outcome = await executor.execute(ctx())
    assert isinstance(outcome.result, Cancel) and "breaker open" in outcome.result.reason
    assert executor.failure_count == 3


def test_timed_out_fail_closed_hook_denies_in_sync_dispatch() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)

    async def slow_guard(c: HookContext) -> None:
        await asyncio.sleep(3600)

    registry.register(POINT, slow_guard, name="slow_guard", error_policy="fail_closed",
                      timeout=0.01)
    outcome = executor.execute_sync(ctx())
    assert isinstance(outcome.result, Cancel) and "slow_guard" in outcome.result.reason


RUNS: list[str] = []


@tool("shell")
def shell_tool(command: str) -> str:
    """Pretend to run a shell command."""
    RUNS.append(command)
    return f"ran {command}"


async def test_security_hook_in_a_system_denies_rm_rf_after_its_breaker_opens() -> None:
    RUNS.clear()
    failing = [True]

    def flaky_condition(c: HookContext) -> bool:
        if failing[0]:
            raise RuntimeError("rule backend unavailable")
        return "rm -rf" in c.data["params"]["command"]

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(shell_tool)
        hook = SecurityHook(SecurityConfig(rules=(
            SecurityRule(name="no_rm", points=("BeforeToolExecution",),
                         condition=flaky_condition, action="block"),)))
        hook.install(system.registry)
        for _ in range(3):
            with pytest.raises(OperationCancelled, match="fail-closed"):
                await system.tools.execute("shell", {"command": "ls"})
        failing[0] = False
        # The breaker of the security hook is open now: the call is denied, not let through.
        with pytest.raises(OperationCancelled, match="breaker open") as info:
            await system.tools.execute("shell", {"command": "rm -rf /"})
        assert info.value.hook == "security"
        assert RUNS == []


# -- item 12: half-open admits only its probes -----------------------------------------------
def test_half_open_breaker_admits_the_configured_number_of_probes() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("h", "p", BreakerConfig(failure_threshold=1, open_duration=1,
                                                     half_open_max_calls=2), clock=clock)
    breaker.record_failure()
    assert not breaker.allow()
    clock.advance(1)
    assert [breaker.allow() for _ in range(20)].count(True) == 2
    breaker.record_success()  # one probe reported: its slot is free again
    assert breaker.allow() and not breaker.allow()
    breaker.release()  # a probe that was cancelled frees its slot too
    assert breaker.allow()
    with pytest.raises(InvalidValueError):
        BreakerConfig(half_open_max_calls=0)


async def _concurrent_probes(policy: str, max_calls: int) -> tuple[int, list[Any]]:
    clock = ManualClock()
    registry = HookRegistry()
    executor = HookExecutor(registry, clock=clock, record=True,
                            breaker=BreakerConfig(failure_threshold=1, open_duration=5,
                                                  half_open_max_calls=max_calls))
    entered = 0
    release = asyncio.Event()
    fail = [True]

    async def probe(c: HookContext) -> None:
        nonlocal entered
        if fail[0]:
            raise RuntimeError("down")
        entered += 1
        await release.wait()

    registry.register(POINT, probe, name="probe", error_policy=policy)
    await executor.execute(ctx())  # trips the breaker
    fail[0] = False
    clock.advance(5)
    tasks = [asyncio.ensure_future(executor.execute(ctx())) for _ in range(20)]
    for _ in range(5):
        await asyncio.sleep(0)
    admitted = entered
    release.set()
    outcomes = await asyncio.gather(*tasks)
    return admitted, outcomes


async def test_half_open_lets_one_of_twenty_concurrent_calls_probe() -> None:
    admitted, outcomes = await _concurrent_probes("fail_open", 1)
    assert admitted == 1
    kinds = [o.records[0].kind for o in outcomes]
    assert kinds.count("continue") == 1 and kinds.count("skipped") == 19


async def test_half_open_admits_half_open_max_calls_probes() -> None:
    admitted, _ = await _concurrent_probes("fail_open", 3)
    assert admitted == 3


async def test_half_open_denies_the_others_for_a_fail_closed_hook() -> None:
    admitted, outcomes = await _concurrent_probes("fail_closed", 1)
    assert admitted == 1
    denied = [o for o in outcomes if o.cancelled]
    assert len(denied) == 19
    assert all("breaker open" in o.result.reason for o in denied)


async def test_a_cancelled_probe_frees_its_slot() -> None:
    clock = ManualClock()
    registry = HookRegistry()
    executor = HookExecutor(registry, clock=clock,
                            breaker=BreakerConfig(failure_threshold=1, open_duration=5))
    mode = ["fail"]

    async def probe(c: HookContext) -> None:
        if mode[0] == "fail":
            raise RuntimeError("down")
        if mode[0] == "hang":
            await asyncio.sleep(3600)

    handle = registry.register(POINT, probe, name="probe")
    await executor.execute(ctx())
    clock.advance(5)
    mode[0] = "hang"
    task = asyncio.ensure_future(executor.execute(ctx()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    mode[0] = "ok"
    outcome = await executor.execute(ctx())  # the slot is free: this call probes
    assert outcome.kind == "continue"
    breaker = executor.breaker_for(handle.id)
    assert breaker is not None and breaker.snapshot().state == "half_open"


# -- item 14: results are validated ----------------------------------------------------------
@pytest.mark.parametrize("build", [
    lambda: Retry(float("nan")),
    lambda: Retry(float("inf")),
    lambda: Retry(1e12),
    lambda: Retry(MAX_RETRY_DELAY + 1),
    lambda: Retry(-1),
    lambda: Retry("5"),  # type: ignore[arg-type]
    lambda: Retry(0, 0),
    lambda: Retry(0, MAX_RETRY_ATTEMPTS + 1),
    lambda: Retry(0, True),
    lambda: Retry(0, 2.5),  # type: ignore[arg-type]
    lambda: Redirect(None),  # type: ignore[arg-type]
    lambda: Redirect(""),
    lambda: Cancel(None),  # type: ignore[arg-type]
    lambda: Skipped(3),  # type: ignore[arg-type]
    lambda: Cache(""),
    lambda: Cache(None),  # type: ignore[arg-type]
    lambda: Cache("k", float("nan")),
    lambda: Cache("k", float("inf")),
    lambda: Cache("k", shared="yes"),  # type: ignore[arg-type]
    lambda: Fork((ForkOperation(type="tool", target=""),)),
    lambda: Fork(("not an operation",)),  # type: ignore[arg-type]
    lambda: ForkOperation(type="tool", target="x", parameters=[]),  # type: ignore[arg-type]
], ids=lambda f: "")
def test_bad_results_are_refused_with_a_typed_error(build: Any) -> None:
    with pytest.raises(InvalidValueError):
        build()


def test_good_results_still_build() -> None:
    assert Retry(MAX_RETRY_DELAY, MAX_RETRY_ATTEMPTS).delay == 300
    assert Retry(1, 1).max_attempts == 1
    assert Fork([ForkOperation(type="tool", target="x")]).operations[0].target == "x"  # type: ignore[arg-type]
    assert Cache("k", 1, shared=True).shared


@pytest.mark.parametrize("value", [
    {"type": "retry", "delay_ms": 1e15},
    {"type": "retry", "delay": math.nan},
    {"type": "retry", "max_attempts": 10**9},
    {"type": "redirect", "target": None},
    {"type": "redirect", "target": 5},
    {"type": "cache", "key": "k", "ttl": -1},
])
def test_script_results_are_validated_too(value: dict[str, Any]) -> None:
    with pytest.raises(SerializationError):
        DictHookAdapter().adapt_result(value)


def test_a_hook_returning_a_bad_result_is_a_hook_failure() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    registry.register(POINT, lambda c: Retry(delay=math.nan), name="nan_retry")
    registry.register(POINT, lambda c: Redirect(None), name="no_target",  # type: ignore[arg-type]
                      error_policy="fail_closed")
    outcome = executor.execute_sync(ctx())
    assert [f.hook for f in outcome.failures] == ["nan_retry", "no_target"]
    assert all(f.error_type == "InvalidValueError" for f in outcome.failures)
    assert outcome.cancelled  # the fail-closed one denies


async def test_huge_retry_from_lua_does_not_hang_the_call() -> None:
    from llmspell.scripting import ScriptHost

    calls: list[int] = []

    @tool("once")
    def once(a: int) -> int:
        """Return a."""
        calls.append(a)
        return a

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(once)
        host = ScriptHost(system, time_budget=1.0)
        host.run_lua("Hook.register('AfterToolExecution', function(ctx) "
                     "return {type='retry', delay_ms=1e15, max_attempts=2} end)")
        # The bad result is a (fail-open) hook failure: the call completes at once.
        result = await asyncio.wait_for(system.tools.execute("once", {"a": 3}), 60)
        assert result == 3 and calls == [3]
        assert system.executor.failures()[-1].error_type == "SerializationError"


# -- item 17: contexts are type-checked; SystemExit is a hook failure ------------------------
@pytest.mark.parametrize("fields", [
    {"point": 5},
    {"component": "shell"},
    {"data": [1, 2]},
    {"data": None},
    {"metadata": {"a": 1}},
    {"metadata": {1: "a"}},
    {"metadata": ["a"]},
    {"parent": "me"},
    {"operation": {"type": "x"}},
    {"correlation_id": 7},
], ids=lambda f: next(iter(f)))
def test_hook_context_refuses_wrong_types(fields: dict[str, Any]) -> None:
    args: dict[str, Any] = {"point": POINT, "component": TOOL, "data": {}}
    args.update(fields)
    with pytest.raises(InvalidValueError, match=f"HookContext.{next(iter(fields))}"):
        HookContext(**args)


def test_hook_context_accepts_every_right_form() -> None:
    root = HookContext(point="custom:x", component=TOOL, metadata={"k": "v"},
                       operation=OperationContext(type="call"))
    child = root.child(HookPoint.custom("y"), data={"a": 1})
    assert child.parent is root and child.metadata == {"k": "v"}
    assert HookContext.from_json(child.to_json()) == child
    assert child.copy().data == {"a": 1}


def test_system_exit_from_a_hook_is_a_hook_failure() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    registry.register(POINT, lambda c: sys.exit(3), name="quitter")
    outcome = executor.execute_sync(ctx())
    assert outcome.kind == "continue"
    assert outcome.failures[0].error_type == "SystemExit"
    registry.register(POINT, lambda c: sys.exit(4), name="closed_quitter",
                      error_policy="fail_closed")
    assert executor.execute_sync(ctx()).cancelled


async def test_system_exit_from_an_async_hook_is_a_hook_failure() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)

    async def quitter(c: HookContext) -> None:
        raise SystemExit(1)

    registry.register(POINT, quitter, name="quitter", error_policy="fail_closed")
    outcome = await executor.execute(ctx())
    assert outcome.cancelled and "quitter" in outcome.result.reason


def test_keyboard_interrupt_from_a_hook_propagates() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)

    def interrupted(c: HookContext) -> None:
        raise KeyboardInterrupt

    registry.register(POINT, interrupted, name="interrupted")
    with pytest.raises(KeyboardInterrupt):
        executor.execute_sync(ctx())


# -- item 18: custom point names -------------------------------------------------------------
@pytest.mark.parametrize("name", ["user.saved\n", "user saved", "\nuser", "", "-x",
                                  "a" * (MAX_POINT_NAME_LENGTH + 1)])
def test_bad_custom_point_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidValueError):
        HookPoint.custom(name)
    with pytest.raises(InvalidValueError):
        HookPoint.parse("custom:" + name)


def test_custom_point_names_up_to_the_limit_are_fine() -> None:
    name = "a" * MAX_POINT_NAME_LENGTH
    assert HookPoint.custom(name).name == name
    assert HookPoint.custom("user.saved-v2_x") == "custom:user.saved-v2_x"


def test_a_huge_unknown_point_name_is_refused_without_suggestions() -> None:
    with pytest.raises(UnknownHookPointError) as info:
        HookPoint.parse("x" * 100_000)
    assert info.value.suggestions == ()


def test_retry_hook_config_stays_within_what_a_retry_may_ask_for() -> None:
    from llmspell.builtin.retry import RetryConfig

    with pytest.raises(InvalidValueError, match="max_delay"):
        RetryConfig(max_delay=MAX_RETRY_DELAY * 2)
    with pytest.raises(InvalidValueError, match="max_attempts"):
        RetryConfig(max_attempts=MAX_RETRY_ATTEMPTS + 1)
    RetryConfig(max_delay=MAX_RETRY_DELAY, max_attempts=MAX_RETRY_ATTEMPTS)


async def test_system_exit_in_a_parallel_child_is_the_composite_failure() -> None:
    from llmspell.hooks import ParallelHook

    def quitter(c: HookContext) -> None:
        sys.exit(2)

    registry = HookRegistry()
    executor = HookExecutor(registry)
    registry.register(POINT, ParallelHook("checks", [quitter, lambda c: None]),
                      error_policy="fail_closed")
    outcome = await executor.execute(ctx())
    assert outcome.cancelled and "quitter" in outcome.result.reason
    assert "SystemExit" in outcome.result.reason


def test_results_decoded_from_json_are_validated() -> None:
    from llmspell.hooks.result import result_from_dict, result_from_json

    with pytest.raises(SerializationError, match="Retry delay"):
        result_from_json('{"type": "retry", "delay": 1e15}')
    with pytest.raises(SerializationError, match="Redirect"):
        result_from_dict({"type": "redirect", "target": ""})


def test_probes_that_never_report_do_not_block_the_breaker_for_ever() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("h", "p", BreakerConfig(failure_threshold=1, open_duration=4),
                             clock=clock)
    breaker.record_failure()
    clock.advance(4)
    assert breaker.allow()  # a probe that will never report back
    assert not breaker.allow()
    clock.advance(3.9)
    assert not breaker.allow()
    clock.advance(0.1)  # a whole open time without a report: the slot is reused
    assert breaker.allow() and not breaker.allow()
