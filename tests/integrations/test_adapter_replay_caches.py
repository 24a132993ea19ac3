"""A replay of an adapter run never reads or fills the adapter's own agent-level caches
(pydantic-ai's ``run_cache``, LangChain's agent cache), which are read and filled outside
``run_hooked``: inside a replay they are the replay's stand-ins (``scoped_cache``), so an
edited value is never served to a live run and a live entry never changes the replayed
path. Offline models only (FunctionModel, a scripted LangChain chat model)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from langchain.agents import create_agent
from pydantic_ai import Agent

from llmspell.hooks import Cache, HookPoint
from llmspell.integrations.langchain import LlmspellMiddleware
from llmspell.integrations.pydantic_ai import LlmspellCapability
from llmspell.runtime import System, SystemConfig
from tests.integrations.conftest_langchain import RAN, ScriptedChatModel, add, call
from tests.integrations.conftest_pydantic_ai import Calls, planned

P = HookPoint
PYDANTIC_ADD = "run:pydantic-ai:calc#0|tool:add#0"


@pytest.fixture
async def system() -> AsyncIterator[System]:
    RAN.clear()
    async with System(SystemConfig(store="memory")) as sys:
        sys.registry.register(P.BEFORE_AGENT_EXECUTION, lambda ctx: Cache("run", ttl=60),
                              name="cache-runs")
        yield sys


# -- pydantic-ai: run_cache ---------------------------------------------------------------------

def pydantic_calc(system: System, calls: Calls) -> tuple[Agent[None, str], LlmspellCapability]:
    capability = LlmspellCapability(system)
    agent: Agent[None, str] = Agent(planned([[("add", {"a": 2, "b": 3})]]), name="calc",
                                    capabilities=[capability])

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        calls.log.append(("add", {"a": a, "b": b}))
        return a + b

    return agent, capability


async def recorded(system: System, op: Any) -> str:
    async with system.runs.start("job", "calc", "go") as run:
        run.output = await op("go")
    return run.run_id


async def test_a_pydantic_ai_replay_leaves_the_live_run_cache_alone(system: System) -> None:
    calls = Calls()
    agent, capability = pydantic_calc(system, calls)

    async def op(prompt: Any) -> Any:
        return (await agent.run(str(prompt))).output

    run_id = await recorded(system, op)
    assert len(capability.run_cache) == 1  # the live run cached its output
    capability.run_cache.clear()  # as in a fresh process, or once the entry expired
    result = await system.runs.replay(run_id, mode="what-if", edits={PYDANTIC_ADD: 99},
                                      operation=op)
    assert result.error is None and result.output == "done: add=99"
    assert len(capability.run_cache) == 0  # the replay's entry is its own
    assert await op("go") == "done: add=5"  # a live run is never served the edited output
    assert calls.count("add") == 2  # the recorded run and the live one ran the tool


async def test_a_pydantic_ai_replay_is_not_served_a_live_entry(system: System) -> None:
    calls = Calls()
    agent, _ = pydantic_calc(system, calls)

    async def op(prompt: Any) -> Any:
        return (await agent.run(str(prompt))).output

    run_id = await recorded(system, op)  # it missed and cached "done: add=5" (live)
    result = await system.runs.replay(run_id, mode="what-if", edits={PYDANTIC_ADD: 99},
                                      operation=op)
    assert result.error is None
    assert result.output == "done: add=99"  # the edit reached the output: not the live entry
    assert await op("go") == "done: add=5"  # the live entry is still there, untouched
    assert calls.count("add") == 1  # only the recorded run ran the tool


# -- LangChain: the agent cache -----------------------------------------------------------------

async def test_a_langchain_replay_leaves_the_live_agent_cache_alone(system: System) -> None:
    middleware = LlmspellMiddleware(system)
    model = ScriptedChatModel(steps=[call("add", a=2, b=3),
                                     lambda messages: f"sum is {messages[-1].content}"])
    agent = create_agent(model, tools=[add], name="calc", middleware=[middleware])

    async def op(prompt: Any) -> Any:
        out = await agent.ainvoke({"messages": [{"role": "user", "content": str(prompt)}]})
        return str(out["messages"][-1].content)

    run_id = await recorded(system, op)
    assert len(middleware.agent_cache) == 1
    middleware.agent_cache.clear()
    tool_step = next(s.key for s in system.runs.recording(run_id).ordered
                     if s.kind == "tool")
    result = await system.runs.replay(run_id, mode="what-if", edits={tool_step: 99},
                                      operation=op, after="live")
    assert result.error is None, result.error
    assert result.output == "sum is 99"
    assert len(middleware.agent_cache) == 0  # the replay's entry is its own
    assert await op("go") == "sum is 5"  # a live run is never served the edited output
    assert [name for name, _ in RAN] == ["add", "add"]
