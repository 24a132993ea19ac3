"""Rollback inside Parallel branches is per branch (and per step): a branch's rollback undoes
what that branch wrote and never a sibling's work. And a Loop tells whether it was cut short
by max_iterations (``outputs["<name>.terminated"]``, ``on_max_iterations="fail"``).

Branches are interleaved with asyncio events, so every test is deterministic."""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any

import pytest

from llmspell.core.errors import WorkflowError
from llmspell.events import UniversalEvent
from llmspell.hooks import HookPoint, Modified
from llmspell.hooks.context import HookContext
from llmspell.runtime import System
from llmspell.runtime.workflows import (
    LOOP_TERMINATED,
    Branch,
    Loop,
    Parallel,
    Sequential,
    Step,
    WorkflowContext,
    WorkflowFailedError,
)
from tests.runtime.workflow_support import fails_first_try, rollbacks


# -- the reviewer's case: a retrying branch wiped a sibling's finished step and state --------
async def test_a_retrying_branch_keeps_a_siblings_finished_step_and_state(
        system: System) -> None:
    seen = rollbacks(system, "branch", "kept")
    b1_done, a_failed = asyncio.Event(), asyncio.Event()
    tries = {"n": 0}

    async def a1(ctx: WorkflowContext) -> str:
        await b1_done.wait()
        tries["n"] += 1
        if tries["n"] == 1:
            ctx.state["a"] = "dirty"
            a_failed.set()
            raise RuntimeError("first attempt fails")
        ctx.state["a"] = "clean"
        return "A"

    def b1(ctx: WorkflowContext) -> str:
        ctx.state["b"] = "B"
        b1_done.set()
        return "B"

    async def b2(ctx: WorkflowContext) -> str:
        await a_failed.wait()  # runs on after A rolled back
        return "b2"

    wf = Parallel("par", [
        Branch("A", steps=[Step("a1", fn=a1, on_error="retry", backoff=0)]),
        Branch("B", steps=[Step("b1", fn=b1), Step("b2", fn=b2)]),
    ], rollback=True)
    result = await wf.run(system)
    assert result.status == "completed"
    assert result.outputs["b1"] == "B" and result.outputs["b2"] == "b2"
    assert result.outputs["a1"] == "A"
    assert result.state == {"a": "clean", "b": "B"}
    assert [(r["step"], r["branch"], r["kept"]) for r in seen] == [("a1", "A", [])]
    assert seen[0]["state"]["b"] == "B" and "a" not in seen[0]["state"]


async def test_a_branch_rollback_undoes_every_kind_of_write_it_made(system: System) -> None:
    go, a_failed = asyncio.Event(), asyncio.Event()
    tries = {"n": 0}
    states: list[dict[str, Any]] = []

    async def messy(ctx: WorkflowContext) -> str:
        await go.wait()
        tries["n"] += 1
        states.append(dict(ctx.state))
        if tries["n"] == 1:
            ctx.state["new"] = 1
            ctx.state["seeded"] = "changed"
            del ctx.state["gone"]
            ctx.state.update(u=1, seeded2="changed")
            ctx.state.setdefault("sd", [])
            ctx.state.pop("popped")
            ctx.state |= {"ior": True}
            copy.deepcopy(ctx.state)["x"] = "a copy is a plain dict, not recorded"
            a_failed.set()
            raise RuntimeError("half-done")
        return "ok"

    async def sibling(ctx: WorkflowContext) -> str:
        ctx.state["sib"] = 1
        go.set()
        await a_failed.wait()
        ctx.state["sib"] = 2
        return "s"

    seed = {"seeded": "orig", "seeded2": "orig2", "gone": "here", "popped": "p"}
    wf = Parallel("kinds", [
        Branch("A", steps=[Step("messy", fn=messy, on_error="retry", backoff=0)]),
        Branch("B", steps=[Step("sibling", fn=sibling)]),
    ], rollback=True)
    result = await wf.run(system, state=seed)
    # the retry saw the state as before the failed attempt (and the sibling's writes)
    assert {k: v for k, v in states[1].items() if k != "sib"} == seed
    assert result.state == {**seed, "sib": 2}
    assert type(result.state) is dict
    assert result.outputs["messy"] == "ok" and result.outputs["sibling"] == "s"


async def test_an_earlier_step_of_the_branch_keeps_its_output_and_state(
        system: System) -> None:
    wf = Parallel("one", [[
        Step("s1", fn=lambda ctx: ctx.state.update(s1=True) or "one"),
        Step("s2", fn=fails_first_try("s2", "two"), on_error="retry", backoff=0),
    ]], rollback=True)
    result = await wf.run(system)
    assert result.outputs["s1"] == "one" and result.outputs["s2"] == "two"
    assert result.state == {"s1": True, "s2": 2}


async def test_a_nested_rollback_workflow_in_a_branch_keeps_sibling_state(
        system: System) -> None:
    b_wrote, n_failed = asyncio.Event(), asyncio.Event()
    tries = {"n": 0}

    async def flaky(ctx: WorkflowContext) -> str:
        await b_wrote.wait()
        tries["n"] += 1
        ctx.state["inner"] = tries["n"]
        if tries["n"] == 1:
            n_failed.set()
            raise RuntimeError("inner first")
        return "inner ok"

    async def b(ctx: WorkflowContext) -> str:
        ctx.state["b"] = "B"
        b_wrote.set()
        await n_failed.wait()
        ctx.state["b2"] = "B2"
        return "b"

    inner = Sequential("inner", [Step("i1", fn=flaky, on_error="retry", backoff=0)],
                       rollback=True)
    wf = Parallel("host", [
        Branch("A", steps=[Step("nested", workflow=inner)]),
        Branch("B", steps=[Step("b", fn=b)]),
    ])  # the Parallel itself does not roll back; the nested workflow does
    result = await wf.run(system)
    assert result.state == {"b": "B", "b2": "B2", "inner": 2}
    assert result.outputs["nested"]["i1"] == "inner ok"


async def test_an_outer_branch_rollback_undoes_what_a_nested_workflow_wrote(
        system: System) -> None:
    seen = rollbacks(system, "branch", "kept")
    tries = {"n": 0}

    def n2(ctx: WorkflowContext) -> str:
        tries["n"] += 1
        if tries["n"] == 1:
            raise RuntimeError("nested step fails")
        return "n2"

    inner = Sequential("inner2", [
        Step("n1", fn=lambda ctx: ctx.state.update(n1=ctx.state.get("n1", 0) + 1) or "n1"),
        Step("n2", fn=n2),
    ])
    wf = Parallel("outer", [
        Branch("A", steps=[Step("inner", workflow=inner, on_error="retry", backoff=0)]),
        Branch("B", steps=[Step("b", fn=lambda ctx: ctx.state.update(b=1) or "b")]),
    ], rollback=True)
    result = await wf.run(system, state={"n1": 10})
    # the failed attempt's n1 += 1 was undone, the retry's kept: 10 + 1, not 10 + 2
    assert result.state == {"n1": 11, "b": 1}
    assert [(r["step"], r["branch"]) for r in seen] == [("inner", "A")]
    assert seen[0]["state"]["n1"] == 10


# -- the same key written by two branches -------------------------------------------------------
async def test_a_sibling_write_after_the_branch_write_wins(system: System) -> None:
    seen = rollbacks(system, "branch", "kept")
    a_wrote, b_wrote = asyncio.Event(), asyncio.Event()

    async def a(ctx: WorkflowContext) -> None:
        ctx.state["k"] = "A"
        ctx.state["only_a"] = "A"
        a_wrote.set()
        await b_wrote.wait()
        raise RuntimeError("A fails after B wrote k")

    async def b(ctx: WorkflowContext) -> str:
        await a_wrote.wait()
        ctx.state["k"] = "B"
        b_wrote.set()
        return "b"

    wf = Parallel("race", [Branch("A", steps=[Step("a", fn=a)]),
                           Branch("B", steps=[Step("b", fn=b)])],
                  fail_fast=False, rollback=True)
    result = await wf.run(system, state={"k": "seed"})
    assert result.status == "completed_with_errors"
    assert result.outputs["race.branches"] == {"A": "failed", "B": "completed"}
    assert result.state == {"k": "B"}  # B's later write kept; A's own key undone
    assert seen[0]["kept"] == ["k"] and seen[0]["branch"] == "A"


async def test_a_branch_rollback_puts_back_the_siblings_earlier_write(
        system: System) -> None:
    b_wrote, a_failed = asyncio.Event(), asyncio.Event()

    async def a(ctx: WorkflowContext) -> None:
        await b_wrote.wait()
        ctx.state["k"] = "A"
        a_failed.set()
        raise RuntimeError("A fails")

    def b(ctx: WorkflowContext) -> str:
        ctx.state["k"] = "B"
        b_wrote.set()
        return "b"

    wf = Parallel("before", [Branch("A", steps=[Step("a", fn=a)]),
                             Branch("B", steps=[Step("b", fn=b),
                                                Step("b_wait", fn=lambda c: a_failed.wait())])],
                  fail_fast=False, rollback=True)
    result = await wf.run(system, state={"k": "seed"})
    assert result.state == {"k": "B"}  # what was there before A wrote: B's value


async def test_both_branches_roll_back_the_same_key_in_turn(system: System) -> None:
    b_wrote, a_done = asyncio.Event(), asyncio.Event()

    async def a(ctx: WorkflowContext) -> None:
        await b_wrote.wait()
        ctx.state["k"] = "A"
        a_done.set()
        raise RuntimeError("A fails")

    async def b(ctx: WorkflowContext) -> None:
        ctx.state["k"] = "B"
        b_wrote.set()
        await a_done.wait()
        raise RuntimeError("B fails too")

    wf = Parallel("turns", [Branch("A", steps=[Step("a", fn=a)]),
                            Branch("B", steps=[Step("b", fn=b)])],
                  fail_fast=False, rollback=True)
    result = await wf.run(system, state={"k": "seed"})
    assert result.state == {"k": "seed"}


async def test_fail_fast_rollback_keeps_the_siblings_finished_work(system: System) -> None:
    b_done = asyncio.Event()

    async def a(ctx: WorkflowContext) -> None:
        await b_done.wait()
        ctx.state["a"] = "dirty"
        raise RuntimeError("A fails")

    def b1(ctx: WorkflowContext) -> str:
        ctx.state["b"] = "B"
        b_done.set()
        return "B"

    never = asyncio.Event()
    wf = Parallel("ff", [Branch("A", steps=[Step("a", fn=a)]),
                         Branch("B", steps=[Step("b1", fn=b1),
                                            Step("b2", fn=lambda ctx: never.wait())])],
                  rollback=True)
    with pytest.raises(WorkflowFailedError) as info:
        await wf.run(system)
    assert info.value.step == "a"
    assert info.value.result.state == {"b": "B"}
    assert info.value.result.outputs["b1"] == "B"


async def test_a_hook_state_change_in_a_branch_keeps_a_concurrent_sibling_write(
        system: System) -> None:
    b_wrote = asyncio.Event()

    async def gate(ctx: HookContext) -> Any:
        if ctx.data["step"] != "a":
            return None
        state = dict(ctx.data["state"])  # the state as the step was about to start
        await b_wrote.wait()
        return Modified({**ctx.data, "state": {**state, "hooked": True}})

    def b(ctx: WorkflowContext) -> str:
        ctx.state["b"] = "B"
        b_wrote.set()
        return "b"

    system.registry.register(HookPoint.BEFORE_WORKFLOW_STAGE, gate, name="gate")
    wf = Parallel("hooked", [Branch("A", steps=[Step("a", fn=lambda ctx: "a")]),
                             Branch("B", steps=[Step("b", fn=b)])])
    result = await wf.run(system)
    assert result.state == {"b": "B", "hooked": True}


async def test_sequential_rollback_still_restores_the_whole_checkpoint(
        system: System) -> None:
    def dirty(ctx: WorkflowContext) -> None:
        ctx.state["log"].append("half")  # in place: outside Parallel it is undone too
        raise RuntimeError("fails")

    wf = Sequential("seq", [Step("a", fn=lambda ctx: ctx.state.update(log=["a"])),
                            Step("b", fn=dirty)], rollback=True)
    with pytest.raises(WorkflowFailedError) as info:
        await wf.run(system)
    assert info.value.result.state == {"log": ["a"]}


async def test_a_separate_run_started_in_a_branch_restores_its_whole_checkpoint(
        system: System) -> None:
    def dirty(ctx: WorkflowContext) -> None:
        ctx.state["log"].append("half")
        raise RuntimeError("fails")

    own = Sequential("own", [Step("a", fn=lambda ctx: ctx.state.update(log=["a"])),
                             Step("b", fn=dirty)], rollback=True)

    async def launch(ctx: WorkflowContext) -> Any:
        try:
            await own.run(system)
        except WorkflowFailedError as exc:
            return exc.result.state
        return None

    # its state is its own, not the branch's: rollback is the usual whole restore
    result = await Parallel("launcher", [[Step("launch", fn=launch)]]).run(system)
    assert result.outputs["launch"] == {"log": ["a"]}


async def test_state_is_still_a_dict_for_steps(system: System) -> None:
    seen: list[Any] = []

    def look(ctx: WorkflowContext) -> str:
        seen.extend([isinstance(ctx.state, dict), type(copy.copy(ctx.state)),
                     type(copy.deepcopy(ctx.state))])
        return "ok"

    wf = Parallel("types", [[Step("look", fn=look)]], rollback=True)
    result = await wf.run(system, state={"x": 1})
    assert seen == [True, dict, dict] and type(result.state) is dict


# -- Loop: cut short by max_iterations ----------------------------------------------------------
def counting() -> list[Step]:
    return [Step("inc", fn=lambda ctx: ctx.state.update(n=ctx.state.get("n", 0) + 1))]


async def test_the_loop_outcome_is_in_the_outputs(system: System) -> None:
    cap = Loop("cap", counting(), while_=lambda ctx: True, max_iterations=3)
    result = await cap.run(system)
    assert result.status == "completed" and result.state == {"n": 3}
    assert result.outputs["cap.terminated"] == "max_iterations"
    until = Loop("until", counting(), while_=lambda ctx: ctx.state.get("n", 0) < 2)
    assert (await until.run(system)).outputs["until.terminated"] == "condition"
    items = Loop("items", counting(), over=[1, 2])
    assert (await items.run(system)).outputs["items.terminated"] == "exhausted"
    brk = Loop("brk", counting(), over=[1, 2, 3], break_if=lambda ctx: ctx.item == 2)
    assert (await brk.run(system)).outputs["brk.terminated"] == "break"


async def test_on_max_iterations_fail_names_the_loop(system: System,
                                                     events: list[UniversalEvent]) -> None:
    terminated: list[Any] = []
    system.registry.register(LOOP_TERMINATED, lambda c: terminated.append(c.data["reason"]),
                             name="rec-term")
    cap = Loop("poller", counting(), while_=lambda ctx: True, max_iterations=2,
               on_max_iterations="fail")
    with pytest.raises(WorkflowFailedError, match="'poller' stopped at max_iterations=2") as info:
        await cap.run(system)
    err = info.value
    assert err.workflow == "poller" and err.hint and "max_iterations" in err.hint
    assert err.result.status == "failed"
    assert err.result.outputs["poller.terminated"] == "max_iterations"
    assert len(err.result.outputs["poller.iterations"]) == 2
    assert terminated == ["max_iterations"]
    assert "workflow.poller.failed" in [e.event_type for e in events]


async def test_a_loop_ending_exactly_at_max_iterations_is_not_cut_short(
        system: System) -> None:
    # while_ turns false just as the cap is reached: the loop ended by its condition
    done = Loop("done", counting(), while_=lambda ctx: ctx.state.get("n", 0) < 3,
                max_iterations=3, on_max_iterations="fail")
    result = await done.run(system)
    assert result.outputs["done.terminated"] == "condition" and result.state == {"n": 3}
    # exactly max_iterations items: exhausted; one more: cut short
    exact = Loop("exact", counting(), over=[1, 2, 3], max_iterations=3,
                 on_max_iterations="fail")
    assert (await exact.run(system)).outputs["exact.terminated"] == "exhausted"
    more = Loop("more", counting(), over=[1, 2, 3, 4], max_iterations=3)
    result = await more.run(system)
    assert result.outputs["more.terminated"] == "max_iterations"
    assert result.state == {"n": 3}
    endless = Loop("endless", counting(), over=lambda ctx: itertools.count(),
                   max_iterations=3, on_max_iterations="fail")
    with pytest.raises(WorkflowFailedError, match="items were left"):
        await endless.run(system)


async def test_a_huge_range_is_not_materialised(system: System) -> None:
    big = Loop("big", [Step("s", fn=lambda ctx: ctx.item)], range=(0, 10 ** 18),
               max_iterations=3)
    result = await big.run(system)
    assert [it["s"] for it in result.outputs["big.iterations"]] == [0, 1, 2]
    assert result.outputs["big.terminated"] == "max_iterations"


async def test_a_nested_loop_that_fails_at_max_iterations_fails_its_parent(
        system: System) -> None:
    inner = Loop("inner_loop", counting(), while_=lambda ctx: True, max_iterations=1,
                 on_max_iterations="fail")
    outer = Sequential("outer", [Step("poll", workflow=inner)])
    with pytest.raises(WorkflowFailedError, match="inner_loop") as info:
        await outer.run(system)
    assert info.value.step == "poll"


@pytest.mark.parametrize("bad", ["stop", "", None, True, 1])
def test_on_max_iterations_is_validated(bad: Any) -> None:
    with pytest.raises(WorkflowError, match="on_max_iterations must be") as info:
        Loop("bad", counting(), on_max_iterations=bad)
    assert info.value.hint and "fail" in info.value.hint
