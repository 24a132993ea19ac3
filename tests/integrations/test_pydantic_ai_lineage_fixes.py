"""pydantic-ai adapter: a tool ``Redirect`` that crosses from the agent's own tools to
llmspell's tools counts against one redirect bound for the whole chain (the registry goes on
counting where the adapter left off), so a cycle ends with the redirect-loop error after as
many redirects as a cycle between the agent's own tools. Offline FunctionModel agents."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmspell.errors import ToolExecutionError
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Redirect
from llmspell.runtime.system import System
from llmspell.runtime.tools.base import tool
from tests.integrations.conftest_pydantic_ai import Calls, calc_agent

ADD = [[("add", {"a": 2, "b": 3})]]


def llmspell_tools(system: System, ran: list[str]) -> None:
    """``multiply`` and an ``add`` of llmspell's own (the agent has an ``add`` too)."""

    @tool(name="multiply")
    def multiply(a: int, b: int) -> int:
        """Multiply two numbers."""
        ran.append("multiply")
        return a * b

    @tool(name="add")
    def add(a: int, b: int) -> int:
        """Add two numbers (llmspell's)."""
        ran.append("add")
        return a + b

    system.tools.register(multiply)
    system.tools.register(add)


async def test_a_redirect_cycle_through_llmspell_tools_is_bounded_by_one_count(
        system: System) -> None:
    ran: list[str] = []
    llmspell_tools(system, ran)
    calls = Calls()
    agent = calc_agent(system, ADD, calls=calls)
    hops: list[str] = []

    def loop(ctx: HookContext) -> Redirect:
        hops.append(ctx.data["tool"])
        return Redirect("multiply" if ctx.data["tool"] == "add" else "add")

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, loop, name="loop")
    with pytest.raises(ToolExecutionError, match="redirects went 5 deep") as caught:
        await asyncio.wait_for(agent.run("go"), 30)
    assert "Redirect" in (caught.value.hint or "")
    # The model's call (the agent's add), then llmspell's multiply, add, multiply, add: the
    # fifth redirect is refused, as in a cycle between the agent's own tools.
    assert hops == ["add", "multiply", "add", "multiply", "add"]
    assert ran == [] and calls.log == []


async def test_a_single_redirect_to_an_llmspell_tool_still_runs_it(system: System) -> None:
    ran: list[str] = []
    llmspell_tools(system, ran)
    calls = Calls()
    agent = calc_agent(system, ADD, calls=calls)
    seen: list[Any] = []

    def route(ctx: HookContext) -> Redirect | None:
        seen.append((ctx.data["tool"], ctx.correlation_id))
        return Redirect("multiply") if ctx.data["tool"] == "add" else None

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, route, name="route")
    assert (await asyncio.wait_for(agent.run("go"), 30)).output == "done: add=6"
    assert ran == ["multiply"] and calls.log == []
    assert [tool for tool, _ in seen] == ["add", "multiply"]
    assert len({correlation for _, correlation in seen}) == 1


async def test_a_replay_leaves_no_alias_in_the_live_model_cache(tmp_path: Any) -> None:
    """An ``AfterModelCall`` ``Cache`` inside a replay caches in the replay's stand-in, the
    alias from the request to the entry included: the live cache gets neither (an alias
    left there would answer a later live request from another request's entry)."""
    from pydantic_ai import Agent

    from llmspell.hooks import Cache
    from llmspell.integrations.pydantic_ai import LlmspellCapability
    from llmspell.runtime import SystemConfig
    from tests.integrations.conftest_pydantic_ai import planned

    async with System(SystemConfig(store="memory")) as system:
        system.registry.register(HookPoint.AFTER_MODEL_CALL, lambda ctx: Cache("m", ttl=60),
                                 name="cache-answers")
        capability = LlmspellCapability(system)
        agent: Agent[None, str] = Agent(planned([]), name="calc", capabilities=[capability])

        async def op(prompt: Any) -> Any:
            return (await agent.run(str(prompt))).output

        async with system.runs.start("job", "calc", "go") as run:
            run.output = await op("go")
        assert capability.model_cache.aliased  # the live call cached its answer
        capability.model_cache.clear()  # entries and aliases, as in a fresh process
        result = await system.runs.replay(run.run_id, mode="what-if", operation=op)
        assert result.error is None
        assert len(capability.model_cache) == 0
        assert not capability.model_cache.aliased  # the replay's alias is its own
