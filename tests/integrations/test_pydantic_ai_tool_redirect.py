"""A tool ``Redirect`` to one of the pydantic-ai agent's own tools: the target runs through
its own tool points (its hooks see ``tool`` = the target) with its arguments validated as
pydantic-ai validates a call's, publishes its own ``tool.<target>.*`` events, carries the
run's user and correlation, and a loop of redirects ends; a name the agent has no tool for
still runs the llmspell tool. Offline FunctionModel agents only."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.exceptions import CallDeferred

from llmspell.errors import ToolExecutionError, ToolValidationError
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Modified, Redirect, Replace
from llmspell.integrations.pydantic_ai import LlmspellCapability
from llmspell.runtime.calls import current_context
from llmspell.runtime.system import System
from tests.integrations.conftest_pydantic_ai import Calls, calc_agent, capture, planned, types

P = HookPoint
ADD = [[("add", {"a": 2, "b": 3})]]


def hook(system: System, point: str, fn: Any, name: str = "test-hook") -> None:
    system.registry.register(point, fn, name=name)


def watch(system: System, point: str) -> list[dict[str, Any]]:
    """What each dispatch of ``point`` saw: tool, params, user, correlation (first in the
    chain: a hook deciding the dispatch ends it)."""
    seen: list[dict[str, Any]] = []

    def record(ctx: HookContext) -> None:
        seen.append({"tool": ctx.data.get("tool"), "params": ctx.data.get("params"),
                     "user": ctx.metadata.get("user"), "correlation": ctx.correlation_id})

    system.registry.register(point, record, name=f"watch-{point}", priority="highest")
    return seen


def with_multiply(agent: Agent[None, str], calls: Calls,
                  users: list[Any] | None = None) -> Agent[None, str]:
    """``agent`` with a third tool of its own, ``multiply`` (``users`` collects the user
    the context it runs under names)."""

    @agent.tool_plain
    def multiply(a: int, b: int) -> int:
        """Multiply two numbers."""
        calls.log.append(("multiply", {"a": a, "b": b}))
        if users is not None:
            ctx = current_context()
            users.append(ctx.metadata.get("user") if ctx is not None else None)
        return a * b

    return agent


async def finished(awaitable: Any) -> Any:
    """A guard so a loop the adapter failed to bound fails the test instead of hanging."""
    return await asyncio.wait_for(awaitable, 30)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_redirect_to_an_own_tool_runs_it_through_its_own_points(
        system: System, stream: bool) -> None:
    calls = Calls()
    agent = with_multiply(calc_agent(system, ADD, calls=calls), calls)
    hook(system, P.BEFORE_TOOL_EXECUTION,
         lambda ctx: Redirect("multiply") if ctx.data["tool"] == "add" else None)
    before = watch(system, P.BEFORE_TOOL_EXECUTION)
    after = watch(system, P.AFTER_TOOL_EXECUTION)
    events = capture(system, "tool.**")
    if stream:
        async with agent.run_stream("go") as result:
            output = await finished(result.get_output())
    else:
        output = (await finished(agent.run("go"))).output
    await system.bus.drain()
    assert output == "done: add=6"  # the target's result answered the model's call
    assert calls.log == [("multiply", {"a": 2, "b": 3})]
    assert [(b["tool"], b["params"]) for b in before] == [
        ("add", {"a": 2, "b": 3}), ("multiply", {"a": 2, "b": 3})]
    assert [a["tool"] for a in after] == ["multiply"]  # the redirected call's After: none
    assert types(events) == ["tool.multiply.started", "tool.multiply.completed",
                             "tool.add.completed"]
    completed = [e for e in events if e.event_type == "tool.multiply.completed"]
    assert completed[0].data["result"] == 6
    assert len({e.metadata.correlation_id for e in events}) == 1


async def test_the_targets_own_hooks_apply_to_it(system: System) -> None:
    calls = Calls()
    agent = with_multiply(calc_agent(system, ADD, calls=calls), calls)

    def before(ctx: HookContext) -> Any:
        if ctx.data["tool"] == "add":
            return Redirect("multiply")
        return Modified({**ctx.data, "params": {"a": 7, "b": 6}})

    hook(system, P.BEFORE_TOOL_EXECUTION, before)
    hook(system, P.AFTER_TOOL_EXECUTION, lambda ctx: Replace(f"{ctx.data['result']}!")
         if ctx.data["tool"] == "multiply" else None, name="after")
    assert (await finished(agent.run("go"))).output == "done: add=42!"
    assert calls.log == [("multiply", {"a": 7, "b": 6})]


async def test_an_after_redirect_to_an_own_tool(system: System) -> None:
    calls = Calls()
    agent = with_multiply(calc_agent(system, ADD, calls=calls), calls)
    hook(system, P.AFTER_TOOL_EXECUTION,
         lambda ctx: Redirect("multiply") if ctx.data["tool"] == "add" else None)
    assert (await finished(agent.run("go"))).output == "done: add=6"
    assert [name for name, _ in calls.log] == ["add", "multiply"]


async def test_a_name_the_agent_has_no_tool_for_runs_the_llmspell_tool(
        system: System) -> None:
    def power(a: int, b: int) -> int:
        """Raise a to b."""
        return int(a ** b)

    def multiply(a: int, b: int) -> str:
        """The llmspell tool of the same name as the agent's: the agent's own wins."""
        return "llmspell multiply"

    system.tools.register(power)
    system.tools.register(multiply)
    calls = Calls()
    agent = with_multiply(calc_agent(system, ADD, calls=calls), calls)
    hook(system, P.BEFORE_TOOL_EXECUTION,
         lambda ctx: Redirect("power") if ctx.data["tool"] == "add" else None)
    assert (await finished(agent.run("go"))).output == "done: add=8"
    assert calls.log == []

    system.registry.clear()
    hook(system, P.BEFORE_TOOL_EXECUTION,
         lambda ctx: Redirect("multiply") if ctx.data["tool"] == "add" else None)
    assert (await finished(agent.run("go"))).output == "done: add=6"
    assert calls.count("multiply") == 1


async def test_arguments_the_target_refuses_raise_tool_validation_error(
        system: System) -> None:
    calls = Calls()
    agent = calc_agent(system, ADD, calls=calls)  # shout(text: str) cannot take a and b
    hook(system, P.BEFORE_TOOL_EXECUTION,
         lambda ctx: Redirect("shout") if ctx.data["tool"] == "add" else None)
    before = watch(system, P.BEFORE_TOOL_EXECUTION)
    with pytest.raises(ToolValidationError, match="'shout'") as caught:
        await finished(agent.run("go"))
    assert caught.value.tool == "shout" and caught.value.path == "params.text"
    assert "Field required" in caught.value.message
    assert caught.value.hint and "ToolValidation" in caught.value.hint
    assert calls.log == []
    assert [b["tool"] for b in before] == ["add"]  # the target never got to run


async def test_the_targets_tool_validation_can_repair_its_arguments(system: System) -> None:
    seen: list[dict[str, Any]] = []

    def repair(ctx: HookContext) -> Any:
        seen.append({"tool": ctx.data["tool"], "valid": ctx.data["valid"]})
        return Modified({"params": {"text": "fixed"}}) if ctx.data["tool"] == "shout" \
            else None

    calls = Calls()
    agent = calc_agent(system, ADD, calls=calls)
    hook(system, P.TOOL_VALIDATION, repair, name="repair")
    hook(system, P.BEFORE_TOOL_EXECUTION,
         lambda ctx: Redirect("shout") if ctx.data["tool"] == "add" else None)
    assert (await finished(agent.run("go"))).output == "done: add=FIXED"
    assert seen == [{"tool": "add", "valid": True}, {"tool": "shout", "valid": False}]
    assert calls.log == [("shout", {"text": "fixed"})]


async def test_a_redirect_loop_between_own_tools_ends_with_tool_execution_error(
        system: System) -> None:
    calls = Calls()
    agent = with_multiply(calc_agent(system, ADD, calls=calls), calls)
    hops = {"add": "multiply", "multiply": "add"}
    hook(system, P.BEFORE_TOOL_EXECUTION, lambda ctx: Redirect(hops[ctx.data["tool"]]))
    before = watch(system, P.BEFORE_TOOL_EXECUTION)
    events = capture(system)
    with pytest.raises(ToolExecutionError, match="redirects went 5 deep") as caught:
        await finished(agent.run("go"))
    assert "add -> multiply -> add -> multiply -> add -> multiply" in caught.value.message
    assert caught.value.hint
    assert [b["tool"] for b in before] == ["add", "multiply", "add", "multiply", "add"]
    assert calls.log == []
    await system.bus.drain()
    assert types(events, "agent.") == ["agent.calc.started", "agent.calc.failed"]


async def test_a_tool_error_falls_back_to_an_own_tool(system: System) -> None:
    agent = calc_agent(system, [[("flaky", {"x": 1})]])

    @agent.tool_plain
    def flaky(x: int) -> str:
        """Always down."""
        raise ConnectionError("down")

    @agent.tool_plain
    def steady(x: int) -> str:
        """The fallback."""
        return f"steady:{x}"

    hook(system, P.TOOL_ERROR,
         lambda ctx: Redirect("steady") if ctx.data["tool"] == "flaky" else None)
    after = watch(system, P.AFTER_TOOL_EXECUTION)
    events = capture(system, "tool.**")
    assert (await finished(agent.run("go"))).output == "done: flaky=steady:1"
    assert [a["tool"] for a in after] == ["steady"]
    await system.bus.drain()
    assert types(events) == ["tool.flaky.started", "tool.steady.started",
                             "tool.steady.completed", "tool.flaky.completed"]


async def test_the_run_s_user_and_correlation_reach_the_target(system: System) -> None:
    named: list[str] = []

    def who(ctx: HookContext) -> None:
        ctx.metadata.update(user="alice")
        named.append(ctx.correlation_id)

    hook(system, P.BEFORE_AGENT_EXECUTION, who, name="who")
    calls = Calls()
    users: list[Any] = []
    agent = with_multiply(calc_agent(system, ADD, calls=calls), calls, users)
    hook(system, P.BEFORE_TOOL_EXECUTION,
         lambda ctx: Redirect("multiply") if ctx.data["tool"] == "add" else None)
    seen = {point: watch(system, point) for point in (
        P.TOOL_VALIDATION, P.BEFORE_TOOL_EXECUTION, P.AFTER_TOOL_EXECUTION)}
    assert (await finished(agent.run("go"))).output == "done: add=6"
    targets = [s for dispatches in seen.values() for s in dispatches
               if s["tool"] == "multiply"]
    assert len(targets) == 3  # its ToolValidation, BeforeToolExecution, AfterToolExecution
    assert {(s["user"], s["correlation"]) for s in targets} == {("alice", named[0])}
    assert users == ["alice"]  # what the target's code starts inherits the user too


async def test_a_target_that_defers_or_is_not_a_function_tool_is_refused(
        system: System) -> None:
    class Sum(BaseModel):
        total: int

    agent: Agent[None, Sum] = Agent(planned(ADD), name="typed", output_type=Sum,
                                    capabilities=[LlmspellCapability(system)])

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    @agent.tool_plain
    def later(a: int, b: int) -> int:
        """Deferred."""
        raise CallDeferred()

    target = {"to": "final_result"}
    hook(system, P.BEFORE_TOOL_EXECUTION,
         lambda ctx: Redirect(target["to"]) if ctx.data["tool"] == "add" else None)
    with pytest.raises(ToolExecutionError, match="'output' tool") as caught:
        await finished(agent.run("go"))
    assert caught.value.hint
    target["to"] = "later"
    with pytest.raises(ToolExecutionError, match="defer") as caught:
        await finished(agent.run("go"))
    assert caught.value.tool == "later" and caught.value.hint
