"""Redirect and Fork loops end with a typed error instead of hanging (an agent holds its
run lock while it runs, so reaching it again inside its own run used to wait forever)."""

from __future__ import annotations

import asyncio

import pytest

from llmspell.errors import AgentCycleError, ToolExecutionError
from llmspell.hooks import Fork, ForkOperation, HookPoint, Redirect
from llmspell.runtime import System, tool
from llmspell.runtime.nesting import MAX_DEPTH, current_chain
from llmspell.runtime.providers.scripted import ScriptedProvider

P = HookPoint
GUARD = 30  # seconds: only so a regression fails instead of hanging the suite


async def test_agent_redirecting_to_itself_is_a_cycle(system: System) -> None:
    agent = system.agents.create("loop", provider=ScriptedProvider(["never"]))
    system.registry.register(P.BEFORE_AGENT_EXECUTION, lambda c: Redirect("loop"), name="r")
    with pytest.raises(AgentCycleError) as info:
        await asyncio.wait_for(agent.run("q"), GUARD)
    assert info.value.path == "agent 'loop' -> agent 'loop'"
    assert "reached again inside its own run" in str(info.value)
    # The lock was released: the agent runs again once the hook is gone.
    system.registry.unregister("r")
    assert (await asyncio.wait_for(agent.run("q"), GUARD)).output == "never"


async def test_two_agents_redirecting_to_each_other_is_a_cycle(system: System) -> None:
    a = system.agents.create("a", provider=ScriptedProvider(["from a"]))
    system.agents.create("b", provider=ScriptedProvider(["from b"]))
    system.registry.register(
        P.BEFORE_AGENT_EXECUTION,
        lambda c: Redirect("b" if c.data["agent"] == "a" else "a"), name="pingpong")
    with pytest.raises(AgentCycleError) as info:
        await asyncio.wait_for(a.run("q"), GUARD)
    assert info.value.path == "agent 'a' -> agent 'b' -> agent 'a'"


async def test_agent_forking_itself_reports_the_cycle_and_finishes(system: System) -> None:
    agent = system.agents.create("self_fork", provider=ScriptedProvider(["done"] * 3))
    fork = Fork((ForkOperation(type="agent", target="self_fork",
                               parameters={"input": "again"}),))
    system.registry.register(P.BEFORE_AGENT_EXECUTION, lambda c: fork, name="fork")
    response = await asyncio.wait_for(agent.run("q"), GUARD)
    assert response.output == "done"
    assert len(response.forks) == 1
    assert response.forks[0]["error"].startswith("AgentCycleError: ")


async def test_the_same_agent_in_independent_tasks_is_not_a_cycle(system: System) -> None:
    agent = system.agents.create("shared", provider=ScriptedProvider(["x", "y"]))
    first, second = await asyncio.wait_for(
        asyncio.gather(agent.run("1"), agent.run("2")), GUARD)
    assert {first.output, second.output} == {"x", "y"}
    assert current_chain() == ()


async def test_a_tool_fork_loop_stops_after_one_level(system: System, events) -> None:  # type: ignore[no-untyped-def]
    # A forked call does not fork again (it once went on to the depth limit, and a hook
    # forking two calls each time made 2 ** 16 of them).
    depths: list[int] = []

    def fork_again(ctx):  # type: ignore[no-untyped-def]
        depths.append(len(current_chain()))
        return Fork((ForkOperation(type="tool", target="add", parameters={"a": 1, "b": 1}),))

    system.registry.register(P.BEFORE_TOOL_EXECUTION, fork_again, name="forever")
    run = await asyncio.wait_for(system.tools.run("add", {"a": 1, "b": 2}), GUARD)
    assert run.result == 3
    assert run.forks == [{"type": "tool", "target": "add", "result": 2}]
    assert depths == [1, 2]  # the call's hooks, then the fork's (whose Fork is not run)
    assert not [e for e in events if e.event_type == "tool.add.failed"]


async def test_a_tool_that_calls_itself_stops_at_the_depth_limit(system: System,
                                                                   events) -> None:  # type: ignore[no-untyped-def]
    depths: list[int] = []

    @tool("down")
    async def down(n: int) -> int:
        """Call itself, one level deeper each time."""
        depths.append(len(current_chain()))
        return int(await system.tools.execute("down", {"n": n + 1}))

    system.tools.register(down)
    with pytest.raises(ToolExecutionError,
                       match=f"OperationDepthError: .* nested {MAX_DEPTH + 1} deep"):
        await asyncio.wait_for(system.tools.run("down", {"n": 0}), GUARD)
    assert depths == list(range(1, MAX_DEPTH + 1))  # one call per nesting level
    failed = [e.data for e in events if e.event_type == "tool.down.failed"]
    assert len(failed) == MAX_DEPTH + 1  # the refused 17th call included
    assert all(f"nested {MAX_DEPTH + 1} deep" in f["error"] for f in failed)


async def test_an_agent_reached_again_through_a_tool_is_a_cycle(system: System) -> None:
    def converse(messages, tools):  # type: ignore[no-untyped-def]
        if messages[-1].role == "tool":
            return "ok"
        return {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]}

    caller = system.agents.create("caller", provider=ScriptedProvider(converse), tools=["add"])
    fork = Fork((ForkOperation(type="agent", target="caller", parameters={"input": "go"}),))
    seen: list[object] = []
    system.registry.register(P.BEFORE_TOOL_EXECUTION, lambda c: fork, name="agent-again")
    system.registry.register(P.AFTER_TOOL_EXECUTION, lambda c: seen.append(c.data), name="see")
    response = await asyncio.wait_for(caller.run("go"), GUARD)
    assert response.output == "ok"
    assert seen, "the tool ran"
