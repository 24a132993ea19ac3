"""Replay of calls ended by a timeout, and of forks beside another decision.

A call cancelled by a timeout around it (a caller's ``asyncio.wait_for``, a workflow step's
``timeout``) is recorded as the step saw it (``CancelledError``); its replay waits for the
replay's own timeout to cancel the served call, so the caller sees the ``TimeoutError`` (or
the workflow's timeout error) it saw, and the replay does not diverge. A tool exceeding its
own ``timeout`` is recorded, and replayed, as :class:`ToolTimeoutError`.

A dispatch where one hook returns ``Modified`` and another ``Fork`` records the forks with
the decision: a what-if without the forking hook diverges at that step, and a recording
made before forks were recorded there still replays exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llmspell.errors import ToolTimeoutError, WorkflowError
from llmspell.hooks import Fork, ForkOperation, HookContext, HookPoint, Modified
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs import ReplayResult
from llmspell.runtime.workflows import Sequential, Step
from tests.runtime.test_replay_recent_features import cancels_hang

P = HookPoint
CALLS: list[tuple[str, Any]] = []
TIMEOUT = 0.05  # seconds: short, so the tests are fast; nothing checks how long they took


@tool(timeout=TIMEOUT)
async def stuck(x: int) -> int:
    """Never ends on its own (bounded by its own timeout)."""
    CALLS.append(("stuck", x))
    await asyncio.Event().wait()
    return x


@tool()
async def hang(x: int) -> int:
    """Never ends on its own (no timeout of its own)."""
    CALLS.append(("hang", x))
    await asyncio.Event().wait()
    return x


@tool()
def probe(x: int) -> int:
    """Ten times x."""
    CALLS.append(("probe", x))
    return x * 10


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    CALLS.clear()
    sys = System(SystemConfig(data_dir=str(tmp_path)))
    await sys.start()
    sys.tools.register_all([stuck, hang, probe])
    yield sys
    await sys.shutdown()


def never(messages: Any, tools: Any) -> Any:
    raise AssertionError("a replay called the model provider")


def exact(result: ReplayResult, output: Any) -> None:
    assert result.error is None, result.error
    assert not result.diverged, [d.describe() for d in result.divergences]
    assert result.output == output


def newest(system: System) -> str:
    return system.runs.list(limit=1)[0].run_id


# -- timeouts -----------------------------------------------------------------------------
async def test_a_tool_past_its_own_timeout_replays_its_timeout_error(system: System) -> None:
    async def op(value: Any) -> Any:
        try:
            await system.tools.execute("stuck", {"x": value})
        except ToolTimeoutError as exc:
            return f"timed out: {exc.message} [{exc.tool}; {exc.hint}]"
        return "ran"

    async with system.runs.start("job", "own-timeout", 1) as run:
        run.output = await op(1)
    assert run.output.startswith("timed out: tool 'stuck' timed out")
    step = next(s for s in system.runs.recording(run.run_id).ordered if s.name == "stuck")
    assert step.error is not None and step.error["type"] == "ToolTimeoutError"
    CALLS.clear()
    result = await system.runs.replay(run.run_id, operation=op)
    exact(result, run.output)
    assert CALLS == [] and result.served == {"recording": 1}


async def test_a_wait_for_around_an_agent_run_replays_its_timeout(system: System) -> None:
    system.agents.create("waiter", tools=["hang"], provider=ScriptedProvider([
        {"tool_calls": [{"name": "hang", "arguments": {"x": 1}}]}, "never read"]))

    async def op(value: Any) -> Any:
        try:
            return (await asyncio.wait_for(system.agents.get("waiter").run(value),
                                           TIMEOUT)).output
        except TimeoutError:
            return "gave up waiting"

    async with system.runs.start("job", "impatient", "go") as run:
        run.output = await op("go")
    assert run.output == "gave up waiting"
    steps = {s.name: s for s in system.runs.recording(run.run_id).ordered}
    assert steps["hang"].error == {"type": "CancelledError", "message": ""}
    system.agents.get("waiter").provider = ScriptedProvider(never)
    CALLS.clear()
    result = await system.runs.replay(run.run_id, operation=op)
    exact(result, "gave up waiting")  # (it was CancelledError out of the replay)
    assert CALLS == []


async def test_a_workflow_step_timeout_replays_as_the_timeout(system: System) -> None:
    flow = Sequential("bounded", [Step("slow", tool="hang", params={"x": 1},
                                       timeout=TIMEOUT)])
    with pytest.raises(WorkflowError, match="timed out"):
        await flow.run(system, None)
    run_id = newest(system)
    failed = system.runs.get(run_id)
    assert failed.status == "failed"
    CALLS.clear()
    result = await system.runs.replay(run_id, operation=flow)
    assert result.status == "failed" and result.error is not None
    assert result.error["type"] == "WorkflowFailedError", result.error
    assert "timed out" in result.error["message"]
    assert not result.diverged, [d.describe() for d in result.divergences]
    assert CALLS == []


async def test_a_call_cancelled_by_its_caller_still_replays_at_once(system: System) -> None:
    op = cancels_hang(system, yields=3)
    async with system.runs.start("job", "cancel", None) as run:
        run.output = await op(None)
    result = await system.runs.replay(run.run_id, operation=op)
    exact(result, "cancelled")


# -- a Modified with forks beside it ------------------------------------------------------
def tag_probe(ctx: HookContext) -> Modified | None:
    if ctx.data.get("tool") != "probe":
        return None
    return Modified({"params": {"x": ctx.data["params"]["x"] + 100}})


def fork_probe(ctx: HookContext) -> Fork | None:
    if ctx.data.get("tool") != "probe":
        return None
    return Fork((ForkOperation(type="tool", target="probe", parameters={"x": 7}),))


async def recorded_modified_and_fork(system: System) -> str:
    system.registry.register(P.BEFORE_TOOL_EXECUTION, fork_probe, name="forker")
    system.registry.register(P.BEFORE_TOOL_EXECUTION, tag_probe, name="tagger")

    async def op(value: Any) -> Any:
        return await system.tools.execute("probe", {"x": value})

    async with system.runs.start("job", "modfork", 1) as run:
        run.output = await op(1)
    assert run.output == 1010 and sorted(CALLS) == [("probe", 101), ("probe", 107)]
    step = system.runs.recording(run.run_id).steps["tool:probe#0"]
    decided = [d for d in step.dispatches if d.kind != "continue"]
    assert [(d.kind, d.hook) for d in decided] == [("modified", "tagger")]
    return run.run_id


async def probe_op(system: System) -> Any:
    async def op(value: Any) -> Any:
        return await system.tools.execute("probe", {"x": value})
    return op


async def test_a_modified_with_forks_beside_replays_exactly(system: System) -> None:
    run_id = await recorded_modified_and_fork(system)
    CALLS.clear()
    result = await system.runs.replay(run_id, operation=await probe_op(system))
    exact(result, 1010)
    assert CALLS == []


async def test_removing_the_forking_hook_diverges_at_the_forking_step(
        system: System) -> None:
    run_id = await recorded_modified_and_fork(system)
    changed = await system.runs.replay(run_id, mode="what-if", after="simulate",
                                       remove_hooks=["forker"],
                                       operation=await probe_op(system))
    first = changed.first_divergence
    assert first is not None, "removing the forking hook left no trace"
    assert first.what == "decision" and first.key == "tool:probe#0"
    assert first.point == str(P.BEFORE_TOOL_EXECUTION) and not first.nondeterministic
    assert (first.expected, first.got) == ("modified by 'tagger' with forks",
                                           "modified by 'tagger'")


async def test_a_recording_without_the_fork_detail_still_replays_exactly(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmspell.runtime.runs import records

    run_id = await recorded_modified_and_fork(system)
    # As an older llmspell stored it: the dispatch without its forks' digest.
    real = records.decode_step

    def older(data: Any, run: str) -> Any:
        step = real(data, run)
        dispatches = [msgspec.structs.replace(d, forks=None) for d in step.dispatches]
        return msgspec.structs.replace(step, dispatches=dispatches)

    monkeypatch.setattr("llmspell.runtime.runs.query.decode_step", older)
    step = system.runs.recording(run_id).steps["tool:probe#0"]
    assert all(d.forks is None for d in step.dispatches)
    CALLS.clear()
    result = await system.runs.replay(run_id, operation=await probe_op(system))
    exact(result, 1010)
    assert CALLS == []


def test_a_recorded_errors_attributes_are_plain_text_only() -> None:
    # A recording is data: only public names with text values become attributes.
    from llmspell.errors import ToolTimeoutError
    from llmspell.runtime.runs.replay import recorded_error

    exc = recorded_error({"type": "ToolTimeoutError", "message": "slow (retry)",
                          "hint": "retry", "attr:tool": "slow", "attr:__class__": "str",
                          "attr:_private": "x", "attr:bad name": "y"})
    assert type(exc) is ToolTimeoutError
    assert exc.tool == "slow" and exc.hint == "retry" and exc.message == "slow"
    assert not hasattr(exc, "_private")
