"""Hostile input and failure modes of workflows and of run recording and replay: raising
inputs and conditions, cancellation, endless iterators, clashing names, deep nesting, huge
recorded results, hand-edited recordings, replaying a run that is still open."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmspell.core.run_scope import enter_run_id, leave_run_id
from llmspell.errors import RecordingError, ReplayError, RunNotFoundError, WorkflowError
from llmspell.events import UniversalEvent
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.workflows import (
    MAX_NESTING,
    Branch,
    Conditional,
    Loop,
    Parallel,
    Sequential,
    Step,
    WorkflowFailedError,
)


@tool()
def big(n: int) -> str:
    """A text of n characters."""
    return "x" * n


@tool()
def echo(text: str) -> str:
    """The text given."""
    return text


@pytest.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory", record_content="full"))
    await sys.start()
    sys.tools.register_all([big, echo])
    yield sys
    await sys.shutdown()


@pytest.fixture
def events(system: System) -> list[UniversalEvent]:
    seen: list[UniversalEvent] = []
    system.bus.subscribe("workflow.**", seen.append)
    return seen


def kinds(events: list[UniversalEvent], workflow: str) -> list[tuple[str, Any]]:
    prefix = f"workflow.{workflow}."
    return [(e.event_type[len(prefix):], e.data.get("step")) for e in events
            if e.event_type.startswith(prefix)]


# -- workflows ----------------------------------------------------------------------------
async def test_a_raising_computed_input_fails_the_workflow_typed_naming_the_step(
        system: System, events: list[UniversalEvent]) -> None:
    wf = Sequential("inputs", [Step("a", fn=lambda ctx: 1),
                               Step("b", fn=lambda ctx: 2, input=lambda ctx: 1 / 0)])
    with pytest.raises(WorkflowFailedError, match="input of step 'b'") as caught:
        await wf.run(system)
    assert caught.value.step == "b" and caught.value.hint
    assert caught.value.result.outputs == {"a": 1}
    assert isinstance(caught.value.__cause__, WorkflowError)
    assert isinstance(caught.value.__cause__.__cause__, ZeroDivisionError)
    assert kinds(events, "inputs")[-2:] == [("error", "b"), ("failed", "b")]


async def test_a_condition_whose_truth_raises_and_a_raising_over_are_typed(
        system: System) -> None:
    class NoTruth:
        def __bool__(self) -> bool:
            raise ValueError("no truth")

    route = Conditional("route", [Branch("x", lambda ctx: NoTruth(),
                                         [Step("s", fn=lambda ctx: 1)])])
    with pytest.raises(WorkflowFailedError, match="condition of branch 'x' raised ValueError"):
        await route.run(system)

    def items(ctx: Any) -> Any:
        raise KeyError("gone")

    loop = Loop("items", [Step("s", fn=lambda ctx: 1)], over=items)
    with pytest.raises(WorkflowFailedError, match="items of loop 'items'"):
        await loop.run(system)

    def broken() -> Any:
        yield 1
        raise RuntimeError("half way")

    loop = Loop("half", [Step("s", fn=lambda ctx: ctx.item)], over=lambda ctx: broken())
    with pytest.raises(WorkflowFailedError, match="RuntimeError: half way"):
        await loop.run(system)


async def test_an_endless_iterator_stops_at_max_iterations(system: System) -> None:
    loop = Loop("endless", [Step("s", fn=lambda ctx: ctx.item)],
                over=lambda ctx: itertools.count(), max_iterations=5)
    result = await loop.run(system)
    assert [it["s"] for it in result.outputs["endless.iterations"]] == [0, 1, 2, 3, 4]


async def test_a_cancelled_workflow_ends_its_step_and_itself_with_events(
        system: System, events: list[UniversalEvent]) -> None:
    started = asyncio.Event()

    async def slow(ctx: Any) -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.ensure_future(Sequential("halted", [Step("a", fn=slow)]).run(system))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert kinds(events, "halted") == [("started", None), ("stage_started", "a"),
                                       ("stage_cancelled", "a"), ("cancelled", None)]
    assert system.runs.list(limit=1)[0].status == "cancelled"


async def test_a_failing_branch_ends_its_running_siblings_with_events(
        system: System, events: list[UniversalEvent]) -> None:
    ready = asyncio.Event()

    async def slow(ctx: Any) -> None:
        ready.set()
        await asyncio.sleep(3600)

    async def boom(ctx: Any) -> None:
        await ready.wait()
        raise RuntimeError("boom")

    fan = Parallel("fan", [[Step("slow", fn=slow)], [Step("bad", fn=boom)]])
    with pytest.raises(WorkflowFailedError, match="step 'bad'") as caught:
        await fan.run(system)
    assert caught.value.step == "bad"
    seen = kinds(events, "fan")
    assert ("stage_cancelled", "slow") in seen and seen[-1] == ("failed", "bad")
    started = {step for kind, step in seen if kind == "stage_started"}
    ended = {step for kind, step in seen
             if kind in ("stage_completed", "stage_failed", "stage_cancelled")}
    assert started == ended == {"slow", "bad"}


async def test_one_step_name_in_two_parallel_branches_is_refused() -> None:
    with pytest.raises(WorkflowError, match="both have a step called 'x'") as caught:
        Parallel("p", [[Step("x", fn=lambda ctx: "A")], [Step("x", fn=lambda ctx: "B")]])
    assert caught.value.hint


async def test_workflows_nested_too_deep_or_in_themselves_fail_typed(system: System) -> None:
    selfish = Sequential("selfish", [Step("a", fn=lambda ctx: 1)])
    selfish.steps.append(Step("again", workflow=selfish))
    with pytest.raises(WorkflowFailedError) as caught:
        await selfish.run(system)
    root: BaseException = caught.value
    while root.__cause__ is not None:
        root = root.__cause__
    assert isinstance(root, WorkflowError) and f"more than {MAX_NESTING} deep" in str(root)

    deep = Sequential("d0", [Step("leaf", fn=lambda ctx: "x")])
    for i in range(1, MAX_NESTING + 1):
        deep = Sequential(f"d{i}", [Step(f"s{i}", workflow=deep)])
    assert (await deep.run(system)).ok  # MAX_NESTING levels of nesting are fine


async def test_an_output_whose_repr_raises_does_not_fail_the_workflow(
        system: System, events: list[UniversalEvent]) -> None:
    class Opaque:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    result = await Sequential("opaque", [Step("a", fn=lambda ctx: Opaque())]).run(system)
    assert result.ok and isinstance(result.outputs["a"], Opaque)
    done = [e for e in events if e.event_type == "workflow.opaque.stage_completed"]
    assert done[0].data["output"] == "<Opaque object>"
    assert system.runs.list(limit=1)[0].status == "completed"


# -- runs ---------------------------------------------------------------------------------
async def test_a_huge_result_loses_neither_the_run_nor_its_other_steps(system: System) -> None:
    """Each result fits the store, the batch of steps and the run's output do not: every
    step is kept, the run ends, and the record too large even alone keeps its digest."""
    limit = system.bus.max_event_bytes
    assert limit is not None
    size = limit * 6 // 10
    wf = Sequential("huge", [Step("a", tool="echo", params={"text": "A"}),
                             Step("b", tool="big", params={"n": size}),
                             Step("c", tool="big", params={"n": size})])
    await wf.run(system)
    run_id = system.runs.list(limit=1)[0].run_id
    assert system.runs.get(run_id).status == "completed"
    recording = system.runs.recording(run_id)
    assert recording.ended is not None and recording.ended.output is None
    assert [s.key for s in recording.ordered] == ["", "tool:echo#0", "tool:big#0",
                                                  "tool:big#1"]
    assert recording.steps["tool:big#1"].result == "x" * size
    root = recording.steps[""]
    assert root.results_withheld and root.output_digest and root.output is None
    replay = await system.runs.replay(run_id, operation=wf)
    assert replay.status == "completed" and not replay.diverged
    assert replay.served == {"recording": 3}


async def test_a_run_still_open_in_this_process_is_not_replayed(system: System) -> None:
    async with system.runs.start("job", "open", 1) as run:
        await system.tools.execute("echo", {"text": "hi"})
        with pytest.raises(ReplayError, match="still running") as caught:
            await system.runs.replay(run.run_id, operation=lambda value: value)
        assert caught.value.hint


async def test_two_records_of_one_step_are_refused_as_damaged(system: System) -> None:
    async with system.runs.start("job", "edited", 1) as run:
        await system.tools.execute("echo", {"text": "hi"})
    recording = system.runs.recording(run.run_id)
    step = recording.steps["tool:echo#0"]
    forged = {"key": step.key, "index": 7, "kind": "tool", "name": "echo",
              "input_digest": step.input_digest, "started": step.started,
              "attempts": [{"output": "forged"}]}
    token = enter_run_id(run.run_id)
    try:
        system.bus.publish("run.steps", {"steps": [forged]})
    finally:
        leave_run_id(token)
    with pytest.raises(RecordingError, match="two records of step 'tool:echo#0'"):
        system.runs.recording(run.run_id)


@pytest.mark.parametrize("run_id", ["%", "*", "'", "run.*", "' OR '1'='1", "?", "[a-z]*"])
async def test_glob_and_sql_shaped_run_ids_match_nothing(system: System, run_id: str) -> None:
    await Sequential("w", [Step("a", tool="echo", params={"text": "A"})]).run(system)
    with pytest.raises(RunNotFoundError):
        system.runs.get(run_id)
    with pytest.raises(RunNotFoundError):
        system.runs.diff(run_id, run_id)
