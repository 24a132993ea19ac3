"""A workflow with ``rollback=True`` whose task is cancelled (``task.cancel()``, an
``asyncio.timeout``/``wait_for`` around it, the workflow's own ``timeout=``, a failing
fail-fast ``Parallel`` sibling) rolls back the step that was running, as a failing step is
rolled back: its state writes and output undone, the ``rollback`` event published and
``WorkflowRollback`` fired (nested workflows innermost first), before ``cancelled`` and the
``CancelledError`` reaching the canceller. A rollback hook that fails or hangs never hides
or holds up the cancellation; a second cancellation does not cut the rollback short.

Every wait ends on an event (the timeouts used are the cancellers under test, never a
measure of speed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from llmspell.events import UniversalEvent
from llmspell.hooks import HookPoint
from llmspell.hooks.context import HookContext
from llmspell.runtime import System
from llmspell.runtime.workflows import (
    Branch,
    Conditional,
    Loop,
    Parallel,
    Sequential,
    Step,
    WorkflowContext,
    WorkflowFailedError,
)
from llmspell.runtime.workflows import engine as workflow_engine
from tests.runtime.cancel_support import cancel_at, leftover_tasks, settle

GUARD = 30.0  # a hang guard only


@pytest.fixture
def events(system: System) -> list[UniversalEvent]:
    seen: list[UniversalEvent] = []
    system.bus.subscribe("workflow.**", seen.append)
    return seen


def wf_events(events: list[UniversalEvent], name: str) -> list[tuple[str, Any]]:
    prefix = f"workflow.{name}."
    return [(e.event_type[len(prefix):], e.data.get("step")) for e in events
            if e.event_type.startswith(prefix)]


def rollback_data(events: list[UniversalEvent]) -> list[dict[str, Any]]:
    return [dict(e.data) for e in events if e.event_type.endswith(".rollback")]


class Gate:
    """A step that writes ``state["half"]`` and an output-ish key, then waits forever; it
    keeps the shared state object it ran on (``seen``) to look at after the cancellation."""

    def __init__(self, after: asyncio.Event | None = None) -> None:
        self.entered = asyncio.Event()
        self.after = after
        self.seen: dict[str, Any] | None = None

    async def __call__(self, ctx: WorkflowContext) -> str:
        if self.after is not None:
            await self.after.wait()
        self.seen = ctx.state
        ctx.state["half"] = True
        ctx.state["done"] = "overwritten"
        self.entered.set()
        await asyncio.Event().wait()
        return "never"


def first_fn(done: asyncio.Event) -> Callable[[WorkflowContext], str]:
    def fn(ctx: WorkflowContext) -> str:
        ctx.state["done"] = True
        done.set()
        return "first"
    return fn


def build(pattern: str, first: Step, gate: Step, *, rollback: bool = True) -> Any:
    if pattern == "sequential":
        return Sequential("w", [first, gate], rollback=rollback)
    if pattern == "conditional":
        return Conditional("w", branches=[Branch("yes", lambda ctx: True, [first, gate])],
                           rollback=rollback)
    if pattern == "loop":
        return Loop("w", body=[first, gate], over=[1, 2], rollback=rollback)
    return Parallel("w", branches=[[first], [gate]], fail_fast=False, rollback=rollback)


@pytest.mark.parametrize("pattern", ["sequential", "conditional", "loop", "parallel"])
async def test_a_cancelled_workflow_rolls_back_the_running_step(
        system: System, events: list[UniversalEvent], pattern: str) -> None:
    hooked: list[dict[str, Any]] = []
    system.registry.register(HookPoint.WORKFLOW_ROLLBACK, lambda c: hooked.append(c.data),
                             name="rec")
    done = asyncio.Event()
    gate = Gate(after=done)
    wf = build(pattern, Step("first", fn=first_fn(done)), Step("gate", fn=gate))
    before = set(asyncio.all_tasks())
    await cancel_at(wf.run(system), gate.entered)
    await settle()
    assert not leftover_tasks(before)
    # The completed step keeps its work; the cancelled step's writes are undone.
    assert gate.seen == {"done": True}
    assert [(h["step"], h["error_type"]) for h in hooked] == [("gate", "CancelledError")]
    assert hooked[0]["state"] == {"done": True}
    seen = wf_events(events, "w")
    kinds = [k for k, _ in seen]
    assert kinds.index("stage_cancelled") < kinds.index("rollback") < kinds.index("cancelled")
    assert seen[-1] == ("cancelled", None)
    (event,) = rollback_data(events)
    assert event["step"] == "gate" and event["error_type"] == "CancelledError"


async def test_without_rollback_a_cancelled_step_keeps_its_writes(
        system: System, events: list[UniversalEvent]) -> None:
    done = asyncio.Event()
    gate = Gate(after=done)
    wf = build("sequential", Step("first", fn=first_fn(done)), Step("gate", fn=gate),
               rollback=False)
    await cancel_at(wf.run(system), gate.entered)
    assert gate.seen == {"done": "overwritten", "half": True}
    assert rollback_data(events) == []


async def test_an_outer_timeout_rolls_back_and_stays_a_timeout(
        system: System, events: list[UniversalEvent]) -> None:
    done = asyncio.Event()
    gate = Gate(after=done)
    wf = build("sequential", Step("first", fn=first_fn(done)), Step("gate", fn=gate))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(wf.run(system), 0.05)
    assert gate.seen == {"done": True}
    assert [e["step"] for e in rollback_data(events)] == ["gate"]


async def test_the_workflow_timeout_rolls_back_the_running_step(
        system: System, events: list[UniversalEvent]) -> None:
    done = asyncio.Event()
    gate = Gate(after=done)
    wf = Sequential("w", [Step("first", fn=first_fn(done)), Step("gate", fn=gate)],
                    rollback=True, timeout=0.05)
    with pytest.raises(WorkflowFailedError) as info:
        await asyncio.wait_for(wf.run(system), GUARD)
    assert info.value.result.status == "failed"
    assert info.value.result.state == {"done": True}
    kinds = [k for k, _ in wf_events(events, "w")]
    assert kinds.index("rollback") < kinds.index("failed")


async def test_nested_workflows_roll_back_innermost_first(
        system: System, events: list[UniversalEvent]) -> None:
    done = asyncio.Event()
    gate = Gate(after=done)
    inner = Sequential("inner", [Step("in1", fn=lambda ctx: ctx.state.update(in1=1)),
                                 Step("gate", fn=gate)], rollback=True)
    outer = Sequential("outer", [Step("first", fn=first_fn(done)),
                                 Step("nest", workflow=inner)], rollback=True)
    await cancel_at(outer.run(system), gate.entered)
    # The inner step is rolled back first, then the outer step that ran the inner workflow
    # (which also undoes the inner workflow's completed step, as a failure would).
    assert [(e["workflow"], e["step"]) for e in rollback_data(events)] == [
        ("inner", "gate"), ("outer", "nest")]
    assert gate.seen == {"done": True}
    ends = [e.event_type for e in events if e.event_type.endswith(".cancelled")]
    assert ends == ["workflow.inner.cancelled", "workflow.outer.cancelled"]


async def test_a_fail_fast_sibling_s_running_step_is_rolled_back(
        system: System, events: list[UniversalEvent]) -> None:
    b_wrote = asyncio.Event()

    async def a(ctx: WorkflowContext) -> None:
        await b_wrote.wait()
        raise RuntimeError("A fails")

    async def b(ctx: WorkflowContext) -> None:
        ctx.state["b_half"] = True
        b_wrote.set()
        await asyncio.Event().wait()

    wf = Parallel("ff", [Branch("A", steps=[Step("a", fn=a)]),
                         Branch("B", steps=[Step("b1", fn=lambda ctx: ctx.state.update(b1=1)),
                                            Step("b2", fn=b)])], rollback=True)
    with pytest.raises(WorkflowFailedError) as info:
        await asyncio.wait_for(wf.run(system), GUARD)
    assert info.value.step == "a"
    assert info.value.result.state == {"b1": 1}
    assert sorted(e["step"] for e in rollback_data(events)) == ["a", "b2"]


async def test_a_failing_rollback_hook_does_not_hide_the_cancellation(
        system: System, events: list[UniversalEvent]) -> None:
    def broken(ctx: HookContext) -> None:
        raise RuntimeError("rollback hook broke")

    system.registry.register(HookPoint.WORKFLOW_ROLLBACK, broken, name="broken",
                             error_policy="raise")
    done = asyncio.Event()
    gate = Gate(after=done)
    wf = build("sequential", Step("first", fn=first_fn(done)), Step("gate", fn=gate))
    await cancel_at(wf.run(system), gate.entered)
    assert gate.seen == {"done": True}
    assert wf_events(events, "w")[-1] == ("cancelled", None)


async def test_a_hanging_rollback_hook_is_bounded(
        system: System, events: list[UniversalEvent], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workflow_engine, "CANCEL_ROLLBACK_GRACE", 0.05)
    hook_cancelled = asyncio.Event()

    async def hangs(ctx: HookContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            hook_cancelled.set()
            raise

    system.registry.register(HookPoint.WORKFLOW_ROLLBACK, hangs, name="hangs")
    done = asyncio.Event()
    gate = Gate(after=done)
    wf = build("sequential", Step("first", fn=first_fn(done)), Step("gate", fn=gate))
    before = set(asyncio.all_tasks())
    await cancel_at(wf.run(system), gate.entered)
    await settle()
    assert hook_cancelled.is_set()
    assert not leftover_tasks(before)
    assert gate.seen == {"done": True}
    assert wf_events(events, "w")[-1] == ("cancelled", None)


async def test_a_second_cancellation_does_not_cut_the_rollback_hooks_short(
        system: System, events: list[UniversalEvent]) -> None:
    in_hook, release = asyncio.Event(), asyncio.Event()
    finished: list[dict[str, Any]] = []

    async def slow(ctx: HookContext) -> None:
        in_hook.set()
        await release.wait()
        finished.append(ctx.data)

    system.registry.register(HookPoint.WORKFLOW_ROLLBACK, slow, name="slow")
    done = asyncio.Event()
    gate = Gate(after=done)
    wf = build("sequential", Step("first", fn=first_fn(done)), Step("gate", fn=gate))
    task = asyncio.ensure_future(wf.run(system))
    await asyncio.wait_for(gate.entered.wait(), GUARD)
    task.cancel()
    await asyncio.wait_for(in_hook.wait(), GUARD)
    task.cancel()  # again, while the rollback hook runs
    await settle()
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, GUARD)
    assert [f["step"] for f in finished] == ["gate"]
    assert wf_events(events, "w")[-1] == ("cancelled", None)


async def test_a_cancelled_top_level_run_is_recorded_as_cancelled(system: System) -> None:
    done = asyncio.Event()
    gate = Gate(after=done)
    wf = build("sequential", Step("first", fn=first_fn(done)), Step("gate", fn=gate))
    await cancel_at(wf.run(system), gate.entered)
    runs = system.runs.list(kind="workflow", name="w")
    assert runs and runs[0].status == "cancelled"
    recording = system.runs.recording(runs[0].run_id)
    assert recording.ended is not None and recording.ended.error is not None
    assert recording.ended.status == "cancelled"
    assert recording.ended.error["type"] == "CancelledError"
