"""Rollback outside Parallel is per step too: a failing step's rollback puts back the state
and outputs as they were when THAT step started, never the work of steps that completed
before it (a Loop's earlier body steps of the same iteration, a Conditional's branch
choice). And scripts' loops take ``on_max_iterations``."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.core.errors import ScriptError, WorkflowError
from llmspell.hooks import HookPoint, Retry
from llmspell.runtime import System
from llmspell.runtime.workflows import (
    CHECKPOINT_KEY,
    Branch,
    Conditional,
    Loop,
    Parallel,
    Sequential,
    Step,
    WorkflowContext,
    WorkflowFailedError,
)
from llmspell.scripting import ScriptHost
from llmspell.scripting.workflow_spec import build_workflow
from tests.runtime.workflow_support import CrashingSteps, fails_first_try, rollbacks


def fails_once_on(index: int, log: list[Any]) -> Any:
    """A body step that leaves a half-done write and fails on its first attempt at loop
    iteration ``index``; otherwise it records what it saw and succeeds."""
    tried: set[int] = set()

    def second(ctx: WorkflowContext) -> Any:
        assert ctx.index is not None
        log.append((ctx.index, ctx.outputs.get("first"), ctx.state.get(f"first{ctx.index}")))
        if ctx.index == index and ctx.index not in tried:
            tried.add(ctx.index)
            ctx.state["half"] = "done"
            ctx.state[f"first{ctx.index}"] = "clobbered"
            raise RuntimeError("second step fails once")
        return f"second-{ctx.item}"

    return second


def first_step(ctx: WorkflowContext) -> str:
    ctx.state[f"first{ctx.index}"] = f"ran-{ctx.item}"
    return f"first-{ctx.item}"


# -- 1. Loop: a later body step's retry keeps the earlier body step's work ------------------
async def test_a_loop_body_retry_keeps_the_earlier_body_step_of_the_same_iteration(
        system: System) -> None:
    seen = rollbacks(system)
    log: list[Any] = []
    wf = Loop("loop", [Step("first", fn=first_step),
                       Step("second", fn=fails_once_on(1, log), on_error="retry",
                            backoff=0)], over=["a", "b", "c"], rollback=True)
    result = await wf.run(system)
    assert result.status == "completed", result.errors
    # the retry of iteration 1 sees iteration 1's "first" output and state, not iteration 0's
    assert log == [(0, "first-a", "ran-a"), (1, "first-b", "ran-b"),
                   (1, "first-b", "ran-b"), (2, "first-c", "ran-c")]
    assert result.outputs["loop.iterations"] == [
        {"first": "first-a", "second": "second-a"},
        {"first": "first-b", "second": "second-b"},
        {"first": "first-c", "second": "second-c"}]
    assert result.state == {"first0": "ran-a", "first1": "ran-b", "first2": "ran-c"}
    assert [r["step"] for r in seen] == ["second"]
    assert seen[0]["state"] == {"first0": "ran-a", "first1": "ran-b"}


async def test_a_failing_loop_body_step_keeps_the_iterations_earlier_steps(
        system: System) -> None:
    def second(ctx: WorkflowContext) -> None:
        if ctx.index == 1:
            ctx.state["log"].append("half")  # in place: outside Parallel it is undone too
            raise RuntimeError("fails")

    def first(ctx: WorkflowContext) -> str:
        ctx.state["log"] = [*ctx.state.get("log", []), f"first{ctx.index}"]
        return f"first{ctx.index}"

    wf = Loop("loop", [Step("first", fn=first), Step("second", fn=second)],
              range=(0, 3), rollback=True)
    with pytest.raises(WorkflowFailedError) as info:
        await wf.run(system)
    result = info.value.result
    assert result.state == {"log": ["first0", "first1"]}
    assert result.outputs["first"] == "first1"
    assert result.outputs["loop.iterations"] == [{"first": "first0", "second": None}]


async def test_a_retry_through_the_error_hook_keeps_the_earlier_body_step(
        system: System) -> None:
    system.registry.register(HookPoint.WORKFLOW_ERROR, lambda ctx: Retry(max_attempts=2),
                             name="again")
    log: list[Any] = []
    wf = Loop("loop", [Step("first", fn=first_step), Step("second", fn=fails_once_on(0, log))],
              over=["a"], rollback=True)
    result = await wf.run(system)
    assert result.ok, result.errors
    assert log == [(0, "first-a", "ran-a"), (0, "first-a", "ran-a")]
    assert result.state == {"first0": "ran-a"}


# -- 2. Conditional: a branch step's retry keeps the branch choice ---------------------------
async def test_a_conditional_branch_retry_keeps_the_selected_branch(system: System) -> None:
    seen = rollbacks(system)
    wf = Conditional("cond", [
        Branch("big", condition=lambda ctx: True,
               steps=[Step("flaky", fn=fails_first_try("dirty", "yes"), on_error="retry",
                           backoff=0),
                      Step("after", fn=lambda ctx: ctx.outputs.get("cond.branch"))]),
    ], rollback=True)
    result = await wf.run(system)
    assert result.ok, result.errors
    assert result.outputs == {"cond.branch": "big", "flaky": "yes", "after": "big"}
    assert result.state == {"dirty": 2}
    assert [r["step"] for r in seen] == ["flaky"] and seen[0]["state"] == {}


async def test_a_failing_second_branch_step_keeps_the_first(system: System) -> None:
    def first(ctx: WorkflowContext) -> str:
        ctx.state["first"] = True
        return "one"

    def second(ctx: WorkflowContext) -> None:
        ctx.state["second"] = "half"
        raise RuntimeError("fails")

    wf = Conditional("cond", [], default=[Step("first", fn=first), Step("second", fn=second)],
                     rollback=True)
    with pytest.raises(WorkflowFailedError) as info:
        await wf.run(system)
    assert info.value.result.outputs == {"cond.branch": "default", "first": "one"}
    assert info.value.result.state == {"first": True}


# -- the rest of rollback is as before --------------------------------------------------------
async def test_a_nested_loop_retry_keeps_the_outer_and_inner_earlier_work(
        system: System) -> None:
    log: list[Any] = []
    inner = Loop("inner", [Step("first", fn=first_step),
                           Step("second", fn=fails_once_on(0, log), on_error="retry",
                                backoff=0)], over=["x"], rollback=True)
    outer = Sequential("outer", [
        Step("before", fn=lambda ctx: ctx.state.update(before=1) or "b"),
        Step("loop", workflow=inner),
    ], rollback=True)
    result = await outer.run(system)
    assert result.ok, result.errors
    assert result.outputs["before"] == "b"
    assert result.outputs["loop"]["inner.iterations"] == [{"first": "first-x",
                                                           "second": "second-x"}]
    assert result.state == {"before": 1, "first0": "ran-x"}


async def test_an_outer_rollback_undoes_a_whole_nested_step(system: System) -> None:
    def boom(ctx: WorkflowContext) -> None:
        raise RuntimeError("inner fails")

    inner = Sequential("inner", [Step("w", fn=lambda ctx: ctx.state.update(inner=1)),
                                 Step("boom", fn=boom)])
    outer = Sequential("outer", [Step("a", fn=lambda ctx: ctx.state.update(a=1) or "a"),
                                 Step("nested", workflow=inner)], rollback=True)
    with pytest.raises(WorkflowFailedError) as info:
        await outer.run(system)
    assert info.value.result.state == {"a": 1}
    assert info.value.result.outputs == {"a": "a"}


async def test_without_rollback_nothing_is_undone(system: System) -> None:
    seen = rollbacks(system)
    log: list[Any] = []
    wf = Loop("loop", [Step("first", fn=first_step),
                       Step("second", fn=fails_once_on(0, log), on_error="retry",
                            backoff=0)], over=["a"])
    result = await wf.run(system)
    assert result.state == {"first0": "clobbered", "half": "done"}
    assert seen == []


async def test_state_that_cannot_be_copied_is_a_typed_failure(system: System) -> None:
    class Stubborn:
        def __deepcopy__(self, memo: dict[int, Any]) -> Any:
            raise TypeError("no copies")

    wf = Sequential("seq", [Step("a", fn=lambda ctx: "a")], rollback=True)
    with pytest.raises(WorkflowFailedError) as info:
        await wf.run(system, state={"held": Stubborn()})
    assert "cannot copy the state" in str(info.value) and info.value.step == "a"
    assert info.value.hint is not None and "rollback=False" in info.value.hint

    # without rollback nothing is copied; in a Parallel branch the writes are journaled
    held = Stubborn()
    plain = Loop("plain", [Step("a", fn=lambda ctx: ctx.index)], range=(0, 2))
    assert (await plain.run(system, state={"held": held})).state == {"held": held}
    branch = Parallel("par", [[Step("p", fn=lambda ctx: ctx.state.update(p=1) or "p")]],
                      rollback=True)
    assert (await branch.run(system, state={"held": held})).state == {"held": held, "p": 1}


async def test_the_rollback_reports_the_last_checkpoint_position(system: System) -> None:
    seen = rollbacks(system)
    log: list[Any] = []
    wf = Loop("loop", [Step("first", fn=first_step),
                       Step("second", fn=fails_once_on(1, log), on_error="retry",
                            backoff=0)], over=["a", "b"], rollback=True)
    await wf.run(system)
    assert [r["position"] for r in seen] == [{"index": 1, "break": False}]


# -- checkpoints and resume --------------------------------------------------------------------
async def test_a_loop_resumes_from_its_last_iteration_after_a_failure(system: System) -> None:
    runs: list[tuple[str, int]] = []
    broken = {"on": True}

    def first(ctx: WorkflowContext) -> str:
        assert ctx.index is not None
        runs.append(("first", ctx.index))
        ctx.state["total"] = ctx.state.get("total", 0) + 1
        return f"first{ctx.index}"

    def second(ctx: WorkflowContext) -> str:
        assert ctx.index is not None
        runs.append(("second", ctx.index))
        if ctx.index == 1 and broken["on"]:
            ctx.state["total"] = 1000
            raise RuntimeError("crash")
        return f"second{ctx.index}"

    wf = Loop("loop", [Step("first", fn=first), Step("second", fn=second)], range=(0, 3),
              checkpoint="step", rollback=True)
    with pytest.raises(WorkflowFailedError) as info:
        await wf.run(system, workflow_id="loop-1")
    # rolled back to the failing step's start: the iteration's first step is kept
    assert info.value.result.state == {"total": 2}
    saved = await system.state.get(CHECKPOINT_KEY, scope="workflow", scope_id="loop-1")
    assert saved["position"] == {"index": 1, "break": False}
    assert saved["state"] == {"total": 1}

    broken["on"] = False
    runs.clear()
    result = await wf.run(system, workflow_id="loop-1", resume=True)
    assert runs == [("first", 1), ("second", 1), ("first", 2), ("second", 2)]
    assert result.state == {"total": 3}
    assert result.outputs["loop.iterations"] == [
        {"first": f"first{i}", "second": f"second{i}"} for i in range(3)]


async def test_a_conditional_resumes_in_its_branch_after_a_failure(system: System) -> None:
    steps = CrashingSteps("s2")
    wf = Conditional("cond", [Branch("b", condition=lambda ctx: True,
                                     steps=[steps.step("s1"), steps.step("s2")])],
                     checkpoint="step", rollback=True)
    with pytest.raises(WorkflowFailedError) as info:
        await wf.run(system, workflow_id="cond-1")
    assert info.value.result.outputs == {"cond.branch": "b", "s1": "s1"}
    steps.broken = False
    steps.runs.clear()
    result = await wf.run(system, workflow_id="cond-1", resume=True)
    assert steps.runs == ["s2"]
    assert result.outputs == {"cond.branch": "b", "s1": "s1", "s2": "s2"}


# -- 3. scripts: Workflow.loop takes on_max_iterations --------------------------------------------
LUA_LOOP = """
  local wf = Workflow.loop({name = "capped", max_iterations = 2, %s
    iterator = {collection = {1, 2, 3}},
    body = {{name = "item", execute = function(ctx) return ctx.item end}}})
  return wf:execute()
"""


@pytest.mark.parametrize(("option", "success", "terminated"), [
    ("", True, "max_iterations"),
    ("on_max_iterations = 'complete',", True, "max_iterations"),
    ("on_max_iterations = 'fail',", False, "max_iterations"),
])
async def test_lua_loops_take_on_max_iterations(system: System, option: str, success: bool,
                                                terminated: str) -> None:
    host = ScriptHost(system)
    try:
        out = await host.run_lua_async(LUA_LOOP % option)
    finally:
        host.close()
    assert out["success"] is success
    assert out["outputs"]["capped.terminated"] == terminated
    assert out["output"] == [{"item": 1}, {"item": 2}]
    if not success:
        assert "loop 'capped' stopped at max_iterations=2" in out["error"]


async def test_a_lua_loop_that_runs_out_completes_either_way(system: System) -> None:
    host = ScriptHost(system)
    try:
        out = await host.run_lua_async("""
          local wf = Workflow.loop({name = "short", max_iterations = 5,
            on_max_iterations = "fail", iterator = {range = {start = 0, ["end"] = 2}},
            body = {{name = "i", execute = function(ctx) return ctx.index end}}})
          return wf:execute()""")
    finally:
        host.close()
    assert out["success"] is True and out["outputs"]["short.terminated"] == "exhausted"


async def test_js_loops_take_on_max_iterations(system: System) -> None:
    host = ScriptHost(system)
    try:
        out = await host.run_js_async("""
          const make = async (name, option) => Workflow.loop({name, max_iterations: 1,
            on_max_iterations: option, state: {n: 0},
            iterator: {while_condition: (ctx) => true},
            body: [{name: "tick", execute: (ctx) => ctx.index}]});
          const failing = await (await make("strict", "fail")).execute();
          const lenient = await (await make("lenient", "complete")).execute();
          let error = null;
          try { await make("bad", "explode"); }
          catch (e) { error = [e.name, e.message]; }
          return {failing, lenient, error};
        """)
    finally:
        host.close()
    assert out["failing"]["success"] is False
    assert out["failing"]["outputs"]["strict.terminated"] == "max_iterations"
    assert "it has no other end" not in out["failing"]["error"]
    assert "its while_ condition was still true" in out["failing"]["error"]
    assert out["lenient"]["success"] is True
    assert out["lenient"]["outputs"]["lenient.terminated"] == "max_iterations"
    assert out["error"][0] == "WorkflowError"
    assert "on_max_iterations must be 'complete' or 'fail', got 'explode'" in out["error"][1]


@pytest.mark.parametrize("value", ["'explode'", "42", "true", "{}"])
async def test_a_bad_lua_on_max_iterations_is_a_clear_error(system: System,
                                                            value: str) -> None:
    host = ScriptHost(system)
    try:
        with pytest.raises(ScriptError, match="on_max_iterations must be 'complete' or 'fail'"):
            await host.run_lua_async(
                f"Workflow.loop({{name = 'x', on_max_iterations = {value}, "
                "iterator = {collection = {1}}, body = {{execute = function() end}}})")
    finally:
        host.close()


def test_the_python_builder_raises_a_workflow_error_with_a_hint() -> None:
    with pytest.raises(WorkflowError) as info:
        build_workflow("loop", {"name": "x", "on_max_iterations": "never",
                                "iterator": {"collection": [1]}, "body": []}, {})
    assert info.value.hint is not None and "on_max_iterations" in info.value.hint
    loop = build_workflow("loop", {"name": "y", "on_max_iterations": "fail", "body": []}, {})
    assert isinstance(loop, Loop) and loop.on_max_iterations == "fail"
