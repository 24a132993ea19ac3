"""Replay of calls cancelled while their hooks ran, before (or after) the call itself.

A cancellation (a timeout around the call, ``task.cancel()`` of the run from outside) that
arrives while a hook of a tool or model call awaits something is recorded as the step's
error with no attempt made (or, in an after hook, with the attempt that was made). Its
replay ends the same way with no divergence: the call is never made (not even a tool with
side effects, which once failed the replay with ``ReplayError``), a timeout's caller sees
its ``TimeoutError`` again, and a run cancelled from outside ends cancelled again, even
when the hook would wait for ever in the replay (nobody cancels it there)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from llmspell.hooks import HookContext, HookPoint
from llmspell.runtime import SideEffect, System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs import ReplayResult

P = HookPoint
CALLS: list[tuple[str, Any]] = []
TIMEOUT = 0.05  # seconds: short, so the tests are fast; nothing checks how long they took
BOUND = 30.0  # a replay that would wait for ever fails the test instead of hanging it


@tool()
def probe(x: int) -> int:
    """Ten times x."""
    CALLS.append(("probe", x))
    return x * 10


@tool(side_effects=[SideEffect.FILE_WRITE])
def write(x: int) -> str:
    """Pretends to write a file."""
    CALLS.append(("write", x))
    return f"wrote {x}"


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    CALLS.clear()
    sys = System(SystemConfig(data_dir=str(tmp_path)))
    await sys.start()
    sys.tools.register_all([probe, write])
    yield sys
    await sys.shutdown()


class Gate:
    """A hook that waits at its gate while it is shut (``entered`` says it got there)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered = asyncio.Event()

    async def __call__(self, ctx: HookContext) -> None:
        self.entered.set()
        await self.open.wait()


def exact(result: ReplayResult, output: Any = None, error: str | None = None) -> None:
    assert not result.diverged, [d.describe() for d in result.divergences]
    if error is None:
        assert result.error is None, result.error
        assert result.output == output
    else:
        assert result.error is not None and result.error["type"] == error, result.error


def timed_out(system: System, name: str) -> Callable[[Any], Awaitable[Any]]:
    async def op(value: Any) -> Any:
        try:
            return await asyncio.wait_for(system.tools.execute(name, {"x": value}), TIMEOUT)
        except TimeoutError:
            return "timed out"
    return op


async def cancelled_from_outside(system: System, gate: Gate, op: Callable[[Any], Any],
                                 value: Any) -> str:
    """Run ``op`` in a run of its own task, cancel that task once the gate's hook waits;
    the run's id."""
    async def whole() -> None:
        async with system.runs.start("job", "outside", value) as run:
            run.output = await op(value)

    task = asyncio.ensure_future(whole())
    await gate.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.entered.clear()
    run_id = system.runs.list(limit=1)[0].run_id
    assert system.runs.get(run_id).status == "cancelled"
    return run_id


def step(system: System, run_id: str, name: str) -> Any:
    return next(s for s in system.runs.recording(run_id).ordered if s.name == name)


async def test_a_timeout_in_a_before_hook_replays_its_timeout(system: System) -> None:
    gate = Gate()
    system.registry.register(P.BEFORE_TOOL_EXECUTION, gate, name="slow")
    op = timed_out(system, "probe")
    async with system.runs.start("job", "bounded", 1) as run:
        run.output = await op(1)
    assert run.output == "timed out" and CALLS == []
    recorded = step(system, run.run_id, "probe")
    assert recorded.error["type"] == "CancelledError" and recorded.attempts == []

    gate.open.set()  # the hook is quick now: the call is still not made
    result = await system.runs.replay(run.run_id, operation=op)
    exact(result, "timed out")
    assert CALLS == []
    gate.open.clear()  # ... nor when the hook is slow again
    exact(await system.runs.replay(run.run_id, operation=op), "timed out")
    assert CALLS == []


async def test_a_side_effecting_tool_cancelled_in_its_hooks_replays(system: System) -> None:
    gate = Gate()
    system.registry.register(P.BEFORE_TOOL_EXECUTION, gate, name="slow")
    op = timed_out(system, "write")
    async with system.runs.start("job", "bounded-write", 1) as run:
        run.output = await op(1)
    assert run.output == "timed out"
    gate.open.set()
    result = await system.runs.replay(run.run_id, operation=op)
    exact(result, "timed out")  # (was ReplayError: no recorded result for a side effect)
    assert CALLS == [] and result.side_effects_skipped == []


async def test_a_run_cancelled_from_outside_in_a_hook_replays_cancelled(
        system: System) -> None:
    gate = Gate()
    system.registry.register(P.BEFORE_TOOL_EXECUTION, gate, name="slow")

    async def op(value: Any) -> Any:
        return await system.tools.execute("probe", {"x": value})

    run_id = await cancelled_from_outside(system, gate, op, 2)
    assert step(system, run_id, "probe").error["type"] == "CancelledError"

    gate.open.set()  # the hook does not wait now: the call is not made all the same
    exact(await asyncio.wait_for(system.runs.replay(run_id, operation=op), BOUND),
          error="CancelledError")
    assert CALLS == []
    gate.open.clear()  # the hook waits for ever: the recorded cancellation ends it
    result = await asyncio.wait_for(system.runs.replay(run_id, operation=op), BOUND)
    exact(result, error="CancelledError")
    assert CALLS == [] and gate.entered.is_set()
    # The replay's task was not left cancelling: what runs next in it is not cancelled.
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    gate.open.set()
    await asyncio.sleep(0)
    assert await system.tools.execute("probe", {"x": 3}) == 30


async def test_a_run_cancelled_from_outside_in_an_after_hook_replays(
        system: System) -> None:
    gate = Gate()
    system.registry.register(P.AFTER_TOOL_EXECUTION, gate, name="slow-after")

    async def op(value: Any) -> Any:
        return await system.tools.execute("probe", {"x": value})

    run_id = await cancelled_from_outside(system, gate, op, 4)
    recorded = step(system, run_id, "probe")
    assert recorded.error["type"] == "CancelledError" and len(recorded.attempts) == 1
    CALLS.clear()
    result = await asyncio.wait_for(system.runs.replay(run_id, operation=op), BOUND)
    exact(result, error="CancelledError")
    assert CALLS == [] and result.served == {"recording": 1}


async def test_a_model_call_timed_out_in_its_hook_replays(system: System) -> None:
    gate = Gate()
    system.registry.register(P.BEFORE_MODEL_CALL, gate, name="slow-model-hook")
    system.agents.create("asker", provider=ScriptedProvider(["an answer"]))

    async def op(value: Any) -> Any:
        try:
            return (await asyncio.wait_for(system.agents.get("asker").run(value),
                                           TIMEOUT)).output
        except TimeoutError:
            return "gave up"

    async with system.runs.start("job", "ask", "hi") as run:
        run.output = await op("hi")
    assert run.output == "gave up"

    def never(messages: Any, tools: Any) -> Any:
        raise AssertionError("a replay called the model provider")

    system.agents.get("asker").provider = ScriptedProvider(never)
    gate.open.set()
    exact(await system.runs.replay(run.run_id, operation=op), "gave up")


async def test_a_run_cancelled_from_outside_between_steps_replays_cancelled(
        system: System) -> None:
    gate = Gate()  # not a hook here: the operation's own wait

    async def op(value: Any) -> Any:
        first = await system.tools.execute("probe", {"x": value})
        await gate(None)  # type: ignore[arg-type]
        return first

    run_id = await cancelled_from_outside(system, gate, op, 5)
    CALLS.clear()
    result = await asyncio.wait_for(system.runs.replay(run_id, operation=op), BOUND)
    exact(result, error="CancelledError")
    assert CALLS == [] and result.served == {"recording": 1}
