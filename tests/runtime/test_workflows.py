"""Workflows: the four patterns, the step boundary's hook results, events, checkpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmspell.core.errors import ConfigurationError, OperationCancelled, WorkflowError
from llmspell.events import UniversalEvent
from llmspell.hooks import Cancel, HookPoint, Modified, Redirect, Replace, Retry, Skipped
from llmspell.hooks.context import ComponentType, HookContext
from llmspell.hooks.result import Fork, ForkOperation
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider
from llmspell.runtime.workflows import (
    BRANCH_SELECTED,
    CHECKPOINT_KEY,
    CONDITION_EVALUATED,
    LOOP_ITERATION_COMPLETE,
    LOOP_ITERATION_START,
    LOOP_TERMINATED,
    PARALLEL_FORK,
    PARALLEL_JOIN,
    Branch,
    Conditional,
    Loop,
    Parallel,
    Sequential,
    Step,
    WorkflowContext,
    WorkflowFailedError,
)
from tests.runtime.workflow_support import CrashingSteps

WORKFLOW_POINTS = [
    HookPoint.BEFORE_WORKFLOW_START, HookPoint.WORKFLOW_STAGE_TRANSITION,
    HookPoint.BEFORE_WORKFLOW_STAGE, HookPoint.AFTER_WORKFLOW_STAGE,
    HookPoint.WORKFLOW_CHECKPOINT, HookPoint.WORKFLOW_ROLLBACK,
    HookPoint.AFTER_WORKFLOW_COMPLETE, HookPoint.WORKFLOW_ERROR,
    CONDITION_EVALUATED, BRANCH_SELECTED, LOOP_ITERATION_START, LOOP_ITERATION_COMPLETE,
    LOOP_TERMINATED, PARALLEL_FORK, PARALLEL_JOIN,
]


def record_all(system: System) -> list[HookContext]:
    seen: list[HookContext] = []
    for point in WORKFLOW_POINTS:
        system.registry.register(point, seen.append, name=f"rec-{point}")
    return seen


def types(events: list[UniversalEvent], prefix: str = "workflow.") -> list[str]:
    return [e.event_type for e in events if e.event_type.startswith(prefix)]


def pipeline() -> Sequential:
    return Sequential("pipeline", [
        Step("one", tool="add", params={"a": 1, "b": 2}),
        Step("two", tool="multiply", params={"a": "${steps.one.output}", "b": "${state.k}"}),
        Step("three", fn=lambda ctx: ctx.state.update(done=ctx.outputs["two"]) or "ok"),
    ])


# -- sequential ---------------------------------------------------------------------------
async def test_sequential_runs_steps_in_order_with_references(
        system: System, events: list[UniversalEvent]) -> None:
    result = await pipeline().run(system, state={"k": 10})
    assert result.status == "completed" and result.ok
    assert result.outputs == {"one": 3, "two": 30, "three": "ok"}
    assert result.state == {"k": 10, "done": 30}
    assert result.workflow == "pipeline" and result.errors == []
    assert types(events) == [
        "workflow.pipeline.started",
        "workflow.pipeline.stage_started", "workflow.pipeline.stage_completed",
        "workflow.pipeline.transition",
        "workflow.pipeline.stage_started", "workflow.pipeline.stage_completed",
        "workflow.pipeline.transition",
        "workflow.pipeline.stage_started", "workflow.pipeline.stage_completed",
        "workflow.pipeline.completed",
    ]
    wf_events = [e for e in events if e.event_type.startswith("workflow.")]
    assert {e.metadata.correlation_id for e in wf_events} == {result.correlation_id}
    # tool calls share the workflow's correlation id
    tool_events = [e for e in events if e.event_type.startswith("tool.")]
    assert tool_events
    assert {e.metadata.correlation_id for e in tool_events} == {result.correlation_id}
    completed = [e for e in wf_events if e.event_type.endswith("stage_completed")]
    assert [e.data["output"] for e in completed] == [3, 30, "ok"]


async def test_callable_inputs_and_async_fn(system: System) -> None:
    async def double(ctx: WorkflowContext) -> int:
        await asyncio.sleep(0)
        return int(ctx.step_input["n"]) * 2

    wf = Sequential("calc", [
        Step("a", tool="add", params=lambda ctx: {"a": ctx.input["x"], "b": 1}),
        Step("b", fn=double, input={"n": lambda ctx: ctx.outputs["a"]}),
        Step("c", fn=lambda ctx: ctx.step_input, input="${input.x}"),
    ])
    result = await wf.run(system, {"x": 4})
    assert result.outputs == {"a": 5, "b": 10, "c": 4}


async def test_sequential_error_fails_typed_with_partial_result(
        system: System, events: list[UniversalEvent]) -> None:
    seen = record_all(system)
    wf = Sequential("broken", [
        Step("ok", tool="add", params={"a": 1, "b": 1}),
        Step("bad", tool="fail", params={"message": "kaput"}),
        Step("never", tool="add", params={"a": 1, "b": 1}),
    ])
    with pytest.raises(WorkflowFailedError) as info:
        await wf.run(system)
    err = info.value
    assert isinstance(err, WorkflowError)
    assert err.workflow == "broken" and err.step == "bad" and err.hint
    assert "kaput" in str(err)
    assert err.result.status == "failed" and err.result.outputs == {"ok": 2}
    assert err.result.errors[-1]["step"] == "bad"
    assert "workflow.broken.stage_failed" in types(events)
    assert types(events)[-1] == "workflow.broken.failed"
    errors = [c for c in seen if c.point == HookPoint.WORKFLOW_ERROR]
    assert len(errors) == 1 and errors[0].data["step"] == "bad"
    assert errors[0].data["error_type"] and "kaput" in errors[0].data["error"]
    assert not any(c.data.get("step") == "never" for c in seen)


async def test_on_error_continue_and_retry(system: System) -> None:
    calls = {"n": 0}

    def flaky(ctx: WorkflowContext) -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError("not yet")
        return "finally"

    wf = Sequential("policies", [
        Step("skip", tool="fail", on_error="continue"),
        Step("flaky", fn=flaky, on_error="retry", retries=3, backoff=0),
    ])
    result = await wf.run(system)
    assert result.status == "completed_with_errors"
    assert result.outputs == {"skip": None, "flaky": "finally"}
    assert calls["n"] == 3
    assert [e["step"] for e in result.errors] == ["skip"]

    calls["n"] = -10
    with pytest.raises(WorkflowFailedError, match="not yet"):
        await Sequential("exhausted", [Step("f", fn=flaky, on_error="retry", retries=2,
                                            backoff=0)]).run(system)
    assert calls["n"] == -7  # 1 attempt + 2 retries


async def test_step_and_workflow_timeouts(system: System) -> None:
    async def slow(ctx: WorkflowContext) -> None:
        await asyncio.sleep(5)

    with pytest.raises(WorkflowFailedError, match=r"timed out after 0\.05s") as info:
        await Sequential("t1", [Step("slow", fn=slow, timeout=0.05)]).run(system)
    assert info.value.step == "slow"
    with pytest.raises(WorkflowFailedError, match="workflow 't2' timed out") as info2:
        await Sequential("t2", [Step("slow", fn=slow)], timeout=0.05).run(system)
    assert info2.value.step is None and info2.value.hint


async def test_agent_step_and_nested_workflow_share_state(system: System) -> None:
    system.agents.create("echo", provider=ScriptedProvider(
        lambda messages, tools: f"echo: {messages[-1].content}"))
    inner = Sequential("inner", [
        Step("bump", fn=lambda ctx: ctx.state.update(n=ctx.state["n"] + 1) or ctx.input),
    ])
    wf = Sequential("outer", [
        Step("ask", agent="echo", input="hi"),
        Step("nest", workflow=inner, input="${steps.ask.output}"),
    ])
    result = await wf.run(system, state={"n": 1})
    assert result.outputs["ask"] == "echo: hi"
    assert result.outputs["nest"] == {"bump": "echo: hi"}
    assert result.state == {"n": 2}


async def test_bad_references_and_definitions_are_typed(system: System) -> None:
    wf = Sequential("refs", [Step("x", tool="add", params={"a": "${steps.nope.output}",
                                                           "b": 1})])
    with pytest.raises(WorkflowError, match="nope") as info:
        await wf.run(system)
    assert info.value.hint
    with pytest.raises(ConfigurationError, match="exactly one"):
        Step("two", tool="add", fn=lambda ctx: 1)
    with pytest.raises(ConfigurationError):
        Step("x", fn=lambda ctx: 1, on_error="explode")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="fn must be a function"):
        Step("x", fn=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="tool must be a tool's name"):
        Step("x", tool=print)  # type: ignore[arg-type]
    for bad_range in ("0-10", (0, "10"), (0, 10, 0), (), (1, 2, 3, 4), (True, 3)):
        with pytest.raises(WorkflowError, match="range must be") as bad:
            Loop("l", [Step("b", fn=print)], range=bad_range)  # type: ignore[arg-type]
        assert bad.value.hint
    with pytest.raises(WorkflowError, match="max_iterations must be a whole number"):
        Loop("l", [Step("b", fn=print)], max_iterations=2.5)  # type: ignore[arg-type]
    with pytest.raises(WorkflowError, match="while_ must be a function"):
        Loop("l", [Step("b", fn=print)], while_=True)  # type: ignore[arg-type]
    with pytest.raises(WorkflowError, match="unique"):
        Sequential("dup", [Step("a", fn=print), Step("a", fn=print)])
    with pytest.raises(WorkflowError, match="invalid workflow name"):
        Sequential("bad name", [])
    with pytest.raises(WorkflowError, match="resume"):
        await Sequential("r", []).run(system, resume=True)


# -- conditional -------------------------------------------------------------------------
def router() -> Conditional:
    return Conditional("router", branches=[
        Branch("big", lambda ctx: ctx.input > 100, [Step("b", fn=lambda ctx: "big")]),
        Branch("mid", lambda ctx: ctx.input > 10, [Step("m", fn=lambda ctx: "mid")]),
    ], default=[Step("d", fn=lambda ctx: "small")])


async def test_conditional_selects_first_true_branch_or_default(
        system: System, events: list[UniversalEvent]) -> None:
    seen = record_all(system)
    result = await router().run(system, 50)
    assert result.outputs == {"router.branch": "mid", "m": "mid"}
    evaluated = [(c.data["branch"], c.data["result"]) for c in seen
                 if c.point == CONDITION_EVALUATED]
    assert evaluated == [("big", False), ("mid", True)]
    selected = [c.data["branch"] for c in seen if c.point == BRANCH_SELECTED]
    assert selected == ["mid"]
    assert "workflow.router.branch_selected" in types(events)
    assert types(events).count("workflow.router.condition_evaluated") == 2
    assert (await router().run(system, 1)).outputs == {"router.branch": "default", "d": "small"}
    no_default = Conditional("nd", [Branch("x", lambda ctx: False, [Step("x", fn=print)])])
    assert (await no_default.run(system)).outputs == {"nd.branch": None}


async def test_conditional_error_and_redirect(system: System) -> None:
    wf = Conditional("oops", [Branch("x", lambda ctx: 1 / 0, [Step("x", fn=print)])])
    with pytest.raises(WorkflowFailedError, match="condition of branch 'x' raised"):
        await wf.run(system)
    system.registry.register(BRANCH_SELECTED, lambda c: Redirect("big"), name="force")
    assert (await router().run(system, 1)).outputs == {"router.branch": "big", "b": "big"}
    system.registry.clear()
    # a step-level redirect jumps to another branch
    system.registry.register(HookPoint.BEFORE_WORKFLOW_STAGE,
                             lambda c: Redirect("mid") if c.data["step"] == "d" else None,
                             name="jump")
    result = await router().run(system, 1)
    assert result.outputs == {"router.branch": "mid", "m": "mid"}


# -- loop -----------------------------------------------------------------------------------
async def test_loop_over_items_exposes_item_and_index(system: System) -> None:
    seen = record_all(system)
    wf = Loop("squares", body=[
        Step("sq", fn=lambda ctx: ctx.item * ctx.item),
        Step("tag", fn=lambda ctx: f"{ctx.index}:{ctx.outputs['sq']}"),
    ], over=[2, 3, 4])
    result = await wf.run(system)
    assert result.outputs["squares.iterations"] == [
        {"sq": 4, "tag": "0:4"}, {"sq": 9, "tag": "1:9"}, {"sq": 16, "tag": "2:16"}]
    assert result.outputs["sq"] == 16
    starts = [(c.data["index"], c.data["item"]) for c in seen if c.point == LOOP_ITERATION_START]
    assert starts == [(0, 2), (1, 3), (2, 4)]
    assert len([c for c in seen if c.point == LOOP_ITERATION_COMPLETE]) == 3
    term = [c.data for c in seen if c.point == LOOP_TERMINATED]
    assert term[0]["reason"] == "exhausted" and term[0]["iterations"] == 3


async def test_loop_range_while_break_and_max(system: System,
                                              events: list[UniversalEvent]) -> None:
    body = [Step("acc", fn=lambda ctx: ctx.state.update(total=ctx.state.get("total", 0)
                                                        + (1 if ctx.item is None
                                                           else ctx.item)))]
    r = await Loop("rng", body=body, range=(0, 10, 3)).run(system)
    assert r.state["total"] == 0 + 3 + 6 + 9
    r = await Loop("wh", body=body, while_=lambda ctx: ctx.state.get("total", 0) < 5).run(
        system)
    assert r.state["total"] == 5
    r = await Loop("brk", body=body, over="${state.items}",
                   break_if=lambda ctx: ctx.state["total"] >= 3).run(
        system, state={"items": [1, 1, 1, 1, 1]})
    assert r.state["total"] == 3 and len(r.outputs["brk.iterations"]) == 3
    r = await Loop("cap", body=body, max_iterations=4).run(system)
    assert r.state["total"] == 4
    terminated = [e.data["reason"] for e in events if e.event_type.endswith("loop_terminated")]
    assert terminated == ["exhausted", "condition", "break", "max_iterations"]
    assert "workflow.rng.loop_iteration" in types(events)
    assert "workflow.rng.loop_iteration_completed" in types(events)


async def test_loop_error_fails_the_workflow(system: System) -> None:
    wf = Loop("lerr", body=[Step("inv", fn=lambda ctx: 1 / ctx.item)], over=[1, 0, 2])
    with pytest.raises(WorkflowFailedError, match="ZeroDivisionError") as info:
        await wf.run(system)
    assert info.value.result.outputs["lerr.iterations"] == [{"inv": 1.0}]
    with pytest.raises(WorkflowFailedError, match="cannot loop over"):
        await Loop("lbad", body=[Step("x", fn=print)], over=lambda ctx: 5).run(system)


# -- parallel ---------------------------------------------------------------------------------
async def test_parallel_runs_branches_concurrently(system: System,
                                                   events: list[UniversalEvent]) -> None:
    seen = record_all(system)
    active = {"now": 0, "max": 0}

    async def work(ctx: WorkflowContext) -> str:
        active["now"] += 1
        active["max"] = max(active["max"], active["now"])
        await asyncio.sleep(0.02)
        active["now"] -= 1
        return str(ctx.step)

    wf = Parallel("fan", branches=[
        Branch("left", steps=[Step("l1", fn=work), Step("l2", fn=work)]),
        [Step("r1", fn=work)],
        [Step("x1", fn=work)],
    ])
    result = await wf.run(system)
    assert result.outputs["fan.branches"] == {"left": "completed", "branch1": "completed",
                                              "branch2": "completed"}
    assert {k: v for k, v in result.outputs.items() if "." not in k} == {
        "l1": "l1", "l2": "l2", "r1": "r1", "x1": "x1"}
    assert active["max"] == 3
    fork = [c.data for c in seen if c.point == PARALLEL_FORK]
    assert fork[0]["branches"] == ["left", "branch1", "branch2"]
    assert [c.point for c in seen if c.point == PARALLEL_JOIN] == [PARALLEL_JOIN]
    assert "workflow.fan.parallel_fork" in types(events)
    assert "workflow.fan.parallel_join" in types(events)

    active["max"] = 0
    await Parallel("one", [[Step("a", fn=work)], [Step("b", fn=work)]],
                   max_concurrency=1).run(system)
    assert active["max"] == 1


async def test_parallel_fail_fast_and_collect_all(system: System) -> None:
    finished: list[str] = []

    async def slow(ctx: WorkflowContext) -> None:
        await asyncio.sleep(30)  # long past any machine's "boom": only a cancel ends it
        finished.append("slow")

    branches: list[Any] = [[Step("boom", tool="fail")], [Step("slow", fn=slow)]]
    with pytest.raises(WorkflowFailedError, match="boom"):
        await Parallel("ff", branches).run(system)
    assert finished == []  # the slow branch was cancelled

    quick = [[Step("boom", tool="fail")], [Step("fine", fn=lambda ctx: 1)]]
    result = await Parallel("all", quick, fail_fast=False).run(system)
    assert result.status == "completed_with_errors"
    assert result.outputs["all.branches"] == {"branch0": "failed", "branch1": "completed"}
    assert result.errors[0]["branch"] == "branch0" and result.errors[0]["step"] == "boom"
    assert result.outputs["fine"] == 1


# -- hook points -----------------------------------------------------------------------------
async def test_points_fire_with_component_data_and_correlation(system: System) -> None:
    seen = record_all(system)
    result = await pipeline().run(system, state={"k": 2}, workflow_id="wf-1")
    points = [c.point for c in seen]
    assert points == [
        HookPoint.BEFORE_WORKFLOW_START,
        HookPoint.BEFORE_WORKFLOW_STAGE, HookPoint.AFTER_WORKFLOW_STAGE,
        HookPoint.WORKFLOW_STAGE_TRANSITION,
        HookPoint.BEFORE_WORKFLOW_STAGE, HookPoint.AFTER_WORKFLOW_STAGE,
        HookPoint.WORKFLOW_STAGE_TRANSITION,
        HookPoint.BEFORE_WORKFLOW_STAGE, HookPoint.AFTER_WORKFLOW_STAGE,
        HookPoint.AFTER_WORKFLOW_COMPLETE,
    ]
    for ctx in seen:
        assert ctx.component.type is ComponentType.WORKFLOW
        assert ctx.component.name == "pipeline" and ctx.component.id == "wf-1"
        assert ctx.correlation_id == result.correlation_id
        assert ctx.data["workflow"] == "pipeline"
    before = seen[1].data
    assert before["step"] == "one" and before["input"] == {"a": 1, "b": 2}
    assert before["state"] == {"k": 2}
    after = seen[2].data
    assert after["output"] == 3
    transition = seen[3].data
    assert (transition["from"], transition["to"]) == ("one", "two")
    assert seen[-1].data["status"] == "completed"
    assert seen[-1].data["outputs"]["two"] == 6


async def test_parent_context_carries_correlation(system: System) -> None:
    parent = HookContext(point="x", component=pipeline_component(), correlation_id="corr-1")
    result = await pipeline().run(system, state={"k": 1}, parent=parent)
    assert result.correlation_id == "corr-1"


def pipeline_component() -> Any:
    from llmspell.hooks.context import ComponentId
    return ComponentId(type=ComponentType.CUSTOM, name="caller")


# -- results at the boundary -------------------------------------------------------------------
async def test_before_start_cancel_and_modified(system: System,
                                                events: list[UniversalEvent]) -> None:
    system.registry.register(HookPoint.BEFORE_WORKFLOW_START, lambda c: Cancel("closed"),
                             name="gate")
    with pytest.raises(OperationCancelled) as info:
        await pipeline().run(system, state={"k": 1})
    assert info.value.hook == "gate" and info.value.reason == "closed"
    assert types(events)[-1] == "workflow.pipeline.cancelled"
    system.registry.clear()
    system.registry.register(
        HookPoint.BEFORE_WORKFLOW_START,
        lambda c: Modified({**c.data, "input": "changed", "state": {"k": 7}}), name="seed")
    wf = Sequential("seeded", [Step("in", fn=lambda ctx: (ctx.input, ctx.state["k"]))])
    assert (await wf.run(system, "orig")).outputs["in"] == ("changed", 7)


async def test_stage_cancel_is_typed(system: System) -> None:
    system.registry.register(HookPoint.BEFORE_WORKFLOW_STAGE,
                             lambda c: Cancel("no two") if c.data["step"] == "two" else None,
                             name="guard")
    with pytest.raises(OperationCancelled) as info:
        await pipeline().run(system, state={"k": 1})
    assert info.value.hook == "guard" and info.value.reason == "no two"
    assert info.value.point == HookPoint.BEFORE_WORKFLOW_STAGE


async def test_stage_modified_changes_input_and_state(system: System) -> None:
    def hook(c: HookContext) -> Any:
        if c.data["step"] == "one":
            return Modified({**c.data, "input": {"a": 100, "b": 1},
                             "state": {**c.data["state"], "k": 3}})
        return None

    system.registry.register(HookPoint.BEFORE_WORKFLOW_STAGE, hook, name="mod")
    result = await pipeline().run(system, state={"k": 1})
    assert result.outputs["one"] == 101 and result.outputs["two"] == 303


async def test_stage_replace_supplies_output_without_running(system: System) -> None:
    ran: list[str] = []
    system.registry.register(HookPoint.BEFORE_WORKFLOW_STAGE,
                             lambda c: Replace(42) if c.data["step"] == "a" else None,
                             name="stub")
    wf = Sequential("rep", [Step("a", fn=lambda ctx: ran.append("a")),
                            Step("b", fn=lambda ctx: ctx.outputs["a"] + 1)])
    assert (await wf.run(system)).outputs == {"a": 42, "b": 43}
    assert ran == []


async def test_stage_redirect_jumps_to_a_step(system: System) -> None:
    ran: list[str] = []

    def note(ctx: WorkflowContext) -> str | None:
        ran.append(str(ctx.step))
        return ctx.step

    steps = [Step(n, fn=note) for n in ("a", "b", "c", "d")]
    system.registry.register(HookPoint.BEFORE_WORKFLOW_STAGE,
                             lambda c: Redirect("d") if c.data["step"] == "b" else None,
                             name="skip-ahead")
    result = await Sequential("jump", steps).run(system)
    assert ran == ["a", "d"] and set(result.outputs) == {"a", "d"}
    system.registry.clear()
    system.registry.register(HookPoint.BEFORE_WORKFLOW_STAGE, lambda c: Redirect("zzz"),
                             name="lost")
    with pytest.raises(WorkflowFailedError, match="zzz") as info:
        await Sequential("lost", steps).run(system)
    assert info.value.hint


async def test_stage_retry_before_after_and_on_error(system: System) -> None:
    asked = {"before": 0}

    def before(c: HookContext) -> Any:
        asked["before"] += 1
        return Retry(0, 3) if c.data["attempt"] < 3 else None

    system.registry.register(HookPoint.BEFORE_WORKFLOW_STAGE, before, name="again")
    runs = {"n": 0}

    def count(ctx: WorkflowContext) -> int:
        runs["n"] += 1
        return runs["n"]

    await Sequential("r1", [Step("s", fn=count)]).run(system)
    assert asked["before"] == 3 and runs["n"] == 1
    system.registry.clear()

    system.registry.register(HookPoint.AFTER_WORKFLOW_STAGE,
                             lambda c: Retry(0, 3) if c.data["output"] < 3 else None,
                             name="until3")
    runs["n"] = 0
    assert (await Sequential("r2", [Step("s", fn=count)]).run(system)).outputs["s"] == 3
    system.registry.clear()

    def flaky(ctx: WorkflowContext) -> str:
        runs["n"] += 1
        if runs["n"] < 2:
            raise RuntimeError("flaky")
        return "ok"

    system.registry.register(HookPoint.WORKFLOW_ERROR, lambda c: Retry(0, 2), name="retry")
    runs["n"] = 0
    assert (await Sequential("r3", [Step("s", fn=flaky)]).run(system)).outputs["s"] == "ok"
    system.registry.clear()
    system.registry.register(HookPoint.WORKFLOW_ERROR, lambda c: Replace("fallback"),
                             name="recover")
    result = await Sequential("r4", [Step("s", tool="fail")]).run(system)
    assert result.outputs["s"] == "fallback" and result.status == "completed"


async def test_stage_fork_runs_operations_alongside(system: System) -> None:
    fork = Fork((ForkOperation(type="tool", target="add", parameters={"a": 1, "b": 1}),
                 ForkOperation(type="tool", target="nope")))
    system.registry.register(HookPoint.BEFORE_WORKFLOW_STAGE,
                             lambda c: fork if c.data["step"] == "one" else None, name="fork")
    result = await pipeline().run(system, state={"k": 1})
    forks = result.outputs["one.forks"]
    assert forks[0] == {"type": "tool", "target": "add", "result": 2}
    assert "error" in forks[1]
    assert result.outputs["one"] == 3


async def test_stage_skipped_passes_and_after_modified_replaces_output(
        system: System) -> None:
    system.registry.register(HookPoint.BEFORE_WORKFLOW_STAGE, lambda c: Skipped("n/a"),
                             name="skip")
    system.registry.register(
        HookPoint.AFTER_WORKFLOW_STAGE,
        lambda c: Modified({**c.data, "output": c.data["output"] * 10})
        if c.data["step"] == "one" else None, name="scale")
    result = await pipeline().run(system, state={"k": 1})
    assert result.outputs["one"] == 30 and result.outputs["two"] == 30


async def test_transition_cancel_and_after_complete_modified(system: System) -> None:
    system.registry.register(HookPoint.WORKFLOW_STAGE_TRANSITION,
                             lambda c: Cancel("stop here"), name="halt")
    with pytest.raises(OperationCancelled, match="stop here"):
        await pipeline().run(system, state={"k": 1})
    system.registry.clear()
    system.registry.register(
        HookPoint.AFTER_WORKFLOW_COMPLETE,
        lambda c: Modified({**c.data, "outputs": {"summary": len(c.data["outputs"])}}),
        name="sum")
    assert (await pipeline().run(system, state={"k": 1})).outputs == {"summary": 3}


# -- checkpoint, rollback, resume ----------------------------------------------------------------
async def test_checkpoint_saved_per_step(system: System, events: list[UniversalEvent]) -> None:
    seen = record_all(system)
    wf = Sequential("cp", [Step("a", fn=lambda ctx: 1), Step("b", fn=lambda ctx: 2)],
                    checkpoint="step")
    await wf.run(system, workflow_id="cp-1")
    saved = await system.state.get(CHECKPOINT_KEY, scope="workflow", scope_id="cp-1")
    assert saved["position"] == {"index": 2} and saved["outputs"] == {"a": 1, "b": 2}
    points = [c.data["position"] for c in seen if c.point == HookPoint.WORKFLOW_CHECKPOINT]
    assert points == [{"index": 1}, {"index": 2}]
    assert types(events).count("workflow.cp.checkpoint") == 2


async def test_rollback_restores_the_last_checkpoint(system: System,
                                                     events: list[UniversalEvent]) -> None:
    seen = record_all(system)

    def mark_a(ctx: WorkflowContext) -> str:
        ctx.state["a"] = 1
        return "a"

    def dirty_then_fail(ctx: WorkflowContext) -> None:
        ctx.state["dirty"] = True
        raise RuntimeError("half-done")

    wf = Sequential("rb", [
        Step("a", fn=mark_a),
        Step("b", fn=dirty_then_fail),
    ], checkpoint="step", rollback=True)
    with pytest.raises(WorkflowFailedError) as info:
        await wf.run(system, workflow_id="rb-1")
    assert info.value.result.state == {"a": 1}
    rollbacks = [c.data for c in seen if c.point == HookPoint.WORKFLOW_ROLLBACK]
    assert rollbacks[0]["step"] == "b" and rollbacks[0]["position"] == {"index": 1}
    assert "workflow.rb.rollback" in types(events)

    # rollback before each retry: the state a failing attempt left is undone
    tries = {"n": 0}

    def once_dirty(ctx: WorkflowContext) -> int:
        tries["n"] += 1
        ctx.state["count"] = ctx.state.get("count", 0) + 1
        if tries["n"] == 1:
            raise RuntimeError("first")
        return int(ctx.state["count"])

    wf2 = Sequential("rb2", [Step("c", fn=once_dirty, on_error="retry", backoff=0)],
                     rollback=True)
    assert (await wf2.run(system)).outputs["c"] == 1


async def test_resume_continues_after_the_last_checkpoint(system: System) -> None:
    ran: list[str] = []
    fail = {"on": True}

    def step(name: str) -> Step:
        def fn(ctx: WorkflowContext) -> str:
            ran.append(name)
            if name == "c" and fail["on"]:
                raise RuntimeError("crash")
            ctx.state[name] = True
            return name
        return Step(name, fn=fn)

    wf = Sequential("res", [step("a"), step("b"), step("c"), step("d")], checkpoint="step")
    with pytest.raises(WorkflowFailedError):
        await wf.run(system, {"x": 1}, workflow_id="res-1")
    fail["on"] = False
    ran.clear()
    result = await wf.run(system, workflow_id="res-1", resume=True)
    assert ran == ["c", "d"]
    assert result.outputs == {"a": "a", "b": "b", "c": "c", "d": "d"}
    assert result.state == {"a": True, "b": True, "c": True, "d": True}


async def test_loop_resume_and_checkpoint_needs_state(system: System) -> None:
    ran: list[int] = []

    def body(ctx: WorkflowContext) -> int:
        ran.append(ctx.item)
        if ctx.item == 3 and len(ran) < 4:
            raise RuntimeError("crash")
        return int(ctx.item)

    wf = Loop("lr", body=[Step("b", fn=body)], over=[1, 2, 3, 4], checkpoint="step")
    with pytest.raises(WorkflowFailedError):
        await wf.run(system, workflow_id="lr-1")
    result = await wf.run(system, workflow_id="lr-1", resume=True)
    assert ran == [1, 2, 3, 3, 4]
    assert [it["b"] for it in result.outputs["lr.iterations"]] == [1, 2, 3, 4]


async def test_events_published_without_any_hooks() -> None:
    async with System(SystemConfig(store="memory")) as system:
        seen: list[str] = []
        system.bus.subscribe("workflow.**", lambda e: seen.append(e.event_type))
        await Conditional("c", [Branch("t", lambda ctx: True, [Step("s", fn=print)])]).run(
            system)
        assert seen == ["workflow.c.started", "workflow.c.condition_evaluated",
                        "workflow.c.branch_selected", "workflow.c.stage_started",
                        "workflow.c.stage_completed", "workflow.c.completed"]


async def test_non_step_failures_fire_workflow_error_once(system: System,
                                                          events: list[UniversalEvent]) -> None:
    seen = record_all(system)
    wf = Sequential("refs2", [Step("x", fn=print, input="${steps.missing.output}")])
    with pytest.raises(WorkflowFailedError, match="missing"):
        await wf.run(system)
    errors = [c.data for c in seen if c.point == HookPoint.WORKFLOW_ERROR]
    assert len(errors) == 1 and errors[0]["error_type"] == "WorkflowError"
    assert types(events)[-2:] == ["workflow.refs2.error", "workflow.refs2.failed"]
    seen.clear()
    with pytest.raises(WorkflowFailedError):
        await Sequential("once", [Step("f", tool="fail")]).run(system)
    assert len([c for c in seen if c.point == HookPoint.WORKFLOW_ERROR]) == 1


async def test_more_results_at_error_after_and_transition(system: System) -> None:
    reg = system.registry
    steps = [Step("a", fn=lambda ctx: "a"), Step("b", tool="fail"), Step("c", fn=lambda ctx: "c")]
    reg.register(HookPoint.WORKFLOW_ERROR, lambda c: Redirect("c"), name="fallback")
    result = await Sequential("fb", steps).run(system)
    assert result.outputs == {"a": "a", "c": "c"}
    reg.clear()
    reg.register(HookPoint.WORKFLOW_ERROR, lambda c: Cancel("give up"), name="quit")
    with pytest.raises(OperationCancelled, match="give up") as info:
        await Sequential("quit", steps).run(system)
    assert isinstance(info.value.__cause__, Exception)
    reg.clear()
    reg.register(HookPoint.AFTER_WORKFLOW_STAGE,
                 lambda c: Replace("R") if c.data["step"] == "a" else None, name="rep")
    reg.register(HookPoint.WORKFLOW_STAGE_TRANSITION,
                 lambda c: Redirect("c") if c.data["to"] == "b" else None, name="skip-b")
    assert (await Sequential("tr", steps).run(system)).outputs == {"a": "R", "c": "c"}
    reg.clear()
    reg.register(HookPoint.AFTER_WORKFLOW_STAGE,
                 lambda c: Redirect("c") if c.data["step"] == "a" else None, name="after-jump")
    assert (await Sequential("aj", steps).run(system)).outputs == {"a": "a", "c": "c"}
    reg.clear()
    reg.register(HookPoint.AFTER_WORKFLOW_STAGE, lambda c: Cancel("discard"), name="no")
    with pytest.raises(OperationCancelled, match="discard"):
        await Sequential("ac", steps[:1]).run(system)
    reg.clear()
    reg.register(HookPoint.BEFORE_WORKFLOW_STAGE,
                 lambda c: Redirect("a") if c.data["step"] == "c" else None, name="loop")
    loop_steps = [Step("a", fn=print), Step("c", fn=print)]
    with pytest.raises(WorkflowFailedError, match="redirects went over 100") as err:
        await Sequential("spin", loop_steps).run(system)
    assert err.value.hint
    reg.clear()
    reg.register(LOOP_ITERATION_START,
                 lambda c: Cancel("enough") if c.data["index"] == 1 else None, name="cap")
    with pytest.raises(OperationCancelled, match="enough"):
        await Loop("lc", body=[Step("x", fn=print)], over=[1, 2, 3]).run(system)


async def test_conditional_checkpoint_resume_keeps_the_branch(system: System) -> None:
    steps = CrashingSteps("y")
    flips = {"n": 0}

    def condition(ctx: WorkflowContext) -> bool:
        flips["n"] += 1
        return flips["n"] == 1  # true only the first time: resume must not re-evaluate

    wf = Conditional("cr", [Branch("first", condition, [steps.step("x"), steps.step("y")])],
                     default=[steps.step("z")], checkpoint="step")
    with pytest.raises(WorkflowFailedError):
        await wf.run(system, workflow_id="cr-1")
    steps.broken = False
    result = await wf.run(system, workflow_id="cr-1", resume=True)
    assert steps.runs == ["x", "y", "y"]
    assert result.outputs == {"cr.branch": "first", "x": "x", "y": "y"}


async def test_nested_failure_and_parallel_resume(system: System) -> None:
    inner = Sequential("inner2", [Step("boom", tool="fail")])
    with pytest.raises(WorkflowFailedError, match="inner2") as info:
        await Sequential("outer2", [Step("n", workflow=inner)]).run(system)
    assert info.value.step == "n"
    soft = Sequential("soft", [Step("boom", tool="fail", on_error="continue")])
    result = await Sequential("outer3", [Step("n", workflow=soft)]).run(system)
    assert result.status == "completed_with_errors" and result.errors[0]["step"] == "n"

    ran: list[str] = []
    fail = {"on": True}

    def work(ctx: WorkflowContext) -> str:
        ran.append(str(ctx.step))
        if ctx.step == "b" and fail["on"]:
            raise RuntimeError("b fails")
        return str(ctx.step)

    par = Parallel("pr", [[Step("a", fn=work)], [Step("b", fn=work)]], checkpoint="step")
    with pytest.raises(WorkflowFailedError):
        await par.run(system, workflow_id="pr-1")
    fail["on"] = False
    ran.clear()
    result = await par.run(system, workflow_id="pr-1", resume=True)
    assert ran == ["b"]
    assert result.outputs["pr.branches"] == {"branch0": "completed", "branch1": "completed"}


async def test_every_point_payload_names_the_workflow_first(system: System) -> None:
    seen = record_all(system)
    flow = Loop("looped", [Step("body", fn=lambda ctx: ctx.item)], over=[1, 2])
    await flow.run(system)
    points = {str(ctx.point) for ctx in seen}
    assert {str(HookPoint.BEFORE_WORKFLOW_STAGE), str(LOOP_ITERATION_START),
            str(HookPoint.AFTER_WORKFLOW_COMPLETE)} <= points
    for ctx in seen:
        assert next(iter(ctx.data)) == "workflow" and ctx.data["workflow"] == "looped"
    before = next(c for c in seen if c.point == HookPoint.BEFORE_WORKFLOW_STAGE)
    assert list(before.data) == ["workflow", "workflow_id", "step", "kind", "target", "input",
                                 "state", "attempt", "index"]
    start = next(c for c in seen if c.point == LOOP_ITERATION_START)
    assert start.data == {"workflow": "looped", "index": 0, "item": 1}
    # every context of the run is a child of its root: one correlation id
    assert len({ctx.correlation_id for ctx in seen}) == 1
