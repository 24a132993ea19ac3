"""The framework adapters' ``Cache`` result under hostile use, as the runtime's
(tests/runtime/test_cache_result_hostile.py): an after point's alias never serves one
user's result to another user's identical call, and a fallback an error point recovered
with (``Replace`` at ``ToolError``, ``AgentError``, ``ModelCallError``) is never stored by
a before point's ``Cache`` (the next call runs again and gets the real answer)."""

from __future__ import annotations

from typing import Any

import pytest
from agents import function_tool
from langchain.agents import create_agent
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from llmspell.hooks import Cache, HookPoint, Replace
from llmspell.integrations.langchain import LlmspellMiddleware
from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
from llmspell.integrations.pydantic_ai import LlmspellCapability
from llmspell.runtime.system import System

from .conftest_langchain import RAN, ScriptedChatModel, add, call
from .conftest_openai_agents import ScriptModel, no_trace_export, say, tool_then_answer

__all__ = ["no_trace_export"]  # fixtures

ASK: Any = {"messages": [{"role": "user", "content": "my orders?"}]}


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    RAN.clear()


def as_user(system: System, who: dict[str, str]) -> None:
    """Each run is made for ``who["user"]`` (its ``BeforeAgentExecution`` context's
    metadata, which every later context of the run inherits)."""
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION,
                             lambda ctx: ctx.metadata.update(user=who["user"]),
                             name="who", priority="highest")


def cache_per_user(system: System, *points: HookPoint) -> None:
    """After-point hooks caching each result under a key of the caller's own (an alias
    is made for it: the next identical call of that caller is served)."""
    for point in points:
        system.registry.register(
            point, lambda ctx: Cache(f"{ctx.point}:{ctx.metadata.get('user')}",
                                     ttl=600), name=f"cache-{point.value}")


# -- pydantic-ai --------------------------------------------------------------------------
def pai_model(state: dict[str, Any], asked: list[int]) -> FunctionModel:
    """Fails while ``state["down"]``; calls ``orders`` once, then answers with its result."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        asked.append(len(messages))
        if state.get("down"):
            raise RuntimeError("provider down")
        returned = [p for m in messages for p in getattr(m, "parts", ())
                    if getattr(p, "part_kind", None) == "tool-return"]
        if info.function_tools and not returned:
            return ModelResponse(parts=[ToolCallPart("orders", {})])
        return ModelResponse(parts=[TextPart(
            f"real: {returned[-1].content}" if returned else "real")])

    return FunctionModel(answer)


async def test_pydantic_ai_model_error_fallback_is_not_cached(system: System) -> None:
    state = {"down": True}
    asked: list[int] = []
    system.registry.register(HookPoint.BEFORE_MODEL_CALL, lambda ctx: Cache("m", ttl=600),
                             name="cache")
    system.registry.register(HookPoint.MODEL_CALL_ERROR, lambda ctx: Replace("fallback"),
                             name="fallback")
    agent = Agent(pai_model(state, asked), capabilities=[LlmspellCapability(system)])
    assert (await agent.run("q")).output == "fallback"
    state["down"] = False
    assert (await agent.run("q")).output == "real"  # asked again: the service is back
    assert (await agent.run("q")).output == "real"  # the real answer is cached
    assert len(asked) == 2


async def test_pydantic_ai_model_error_fallback_is_not_cached_by_an_after_cache(
        system: System) -> None:
    # pydantic-ai runs after_model_request on the recovered response too: an
    # AfterModelCall Cache there stored it and its alias served it to the next request.
    state = {"down": True}
    asked: list[int] = []
    system.registry.register(HookPoint.AFTER_MODEL_CALL, lambda ctx: Cache("m", ttl=600),
                             name="cache")
    system.registry.register(HookPoint.MODEL_CALL_ERROR, lambda ctx: Replace("fallback"),
                             name="fallback")
    agent = Agent(pai_model(state, asked), capabilities=[LlmspellCapability(system)])
    assert (await agent.run("q")).output == "fallback"
    state["down"] = False
    assert (await agent.run("q")).output == "real"
    assert (await agent.run("q")).output == "real"  # the real answer is cached
    assert len(asked) == 2


async def test_pydantic_ai_agent_error_fallback_is_not_cached(system: System) -> None:
    state = {"down": True}
    asked: list[int] = []
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION,
                             lambda ctx: Cache("a", ttl=600), name="cache")
    system.registry.register(HookPoint.AGENT_ERROR, lambda ctx: Replace("fallback"),
                             name="fallback")
    agent = Agent(pai_model(state, asked), capabilities=[LlmspellCapability(system)])
    assert (await agent.run("q")).output == "fallback"
    state["down"] = False
    assert (await agent.run("q")).output == "real"
    assert (await agent.run("q")).output == "real"
    assert len(asked) == 2


async def test_pydantic_ai_tool_error_fallback_is_not_cached(system: System) -> None:
    state = {"down": True}
    ran: list[int] = []
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                             lambda ctx: Cache("t", ttl=600), name="cache")
    system.registry.register(HookPoint.TOOL_ERROR, lambda ctx: Replace("fallback"),
                             name="fallback")
    agent = Agent(pai_model({}, []), capabilities=[LlmspellCapability(system)])

    @agent.tool_plain
    def orders() -> str:
        """The caller's orders."""
        ran.append(1)
        if state["down"]:
            raise RuntimeError("orders service down")
        return "o-1"

    assert (await agent.run("q")).output == "real: fallback"
    state["down"] = False
    assert (await agent.run("q")).output == "real: o-1"
    assert (await agent.run("q")).output == "real: o-1"
    assert len(ran) == 2


async def test_pydantic_ai_after_point_aliases_are_per_user(system: System) -> None:
    who = {"user": "ann"}
    ran: list[str] = []
    as_user(system, who)
    cache_per_user(system, HookPoint.AFTER_TOOL_EXECUTION, HookPoint.AFTER_AGENT_EXECUTION)
    agent = Agent(pai_model({}, []), capabilities=[LlmspellCapability(system)])

    @agent.tool_plain
    def orders() -> str:
        """The caller's orders."""
        ran.append(who["user"])
        return f"{who['user']}-1"

    assert (await agent.run("my orders?")).output == "real: ann-1"
    who["user"] = "bob"
    assert (await agent.run("my orders?")).output == "real: bob-1"
    who["user"] = "ann"
    assert (await agent.run("my orders?")).output == "real: ann-1"  # hers: served
    assert ran == ["ann", "bob"]


# -- OpenAI Agents SDK --------------------------------------------------------------------
async def test_openai_agents_tool_error_fallback_is_not_cached(system: System) -> None:
    from agents import Agent as SdkAgent

    state = {"down": True}
    ran: list[int] = []

    @function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        ran.append(1)
        if state["down"]:
            raise RuntimeError("weather service down")
        return f"sunny in {city}"

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                             lambda ctx: Cache("t", ttl=600), name="cache")
    system.registry.register(HookPoint.TOOL_ERROR, lambda ctx: Replace("fallback"),
                             name="fallback")
    agent = SdkAgent(name="weather", instructions="Answer.",
                     model=ScriptModel(tool_then_answer()), tools=[weather])
    adapter = OpenAIAgentsAdapter(system)
    assert (await adapter.run(agent, "weather?")).final_output == "answer: fallback"
    state["down"] = False
    assert (await adapter.run(agent, "weather?")).final_output == "answer: sunny in Paris"
    assert (await adapter.run(agent, "weather?")).final_output == "answer: sunny in Paris"
    assert len(ran) == 2


async def test_openai_agents_agent_error_fallback_is_not_cached(system: System) -> None:
    from agents import Agent as SdkAgent

    state = {"down": True}

    def step(instructions: Any, items: Any, tools: Any) -> list[Any]:
        if state["down"]:
            raise RuntimeError("provider down")
        return [say("real")]

    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION,
                             lambda ctx: Cache("a", ttl=600), name="cache")
    system.registry.register(HookPoint.AGENT_ERROR, lambda ctx: Replace("fallback"),
                             name="fallback")
    agent = SdkAgent(name="plain", instructions="Answer.", model=ScriptModel(step))
    adapter = OpenAIAgentsAdapter(system)
    assert (await adapter.run(agent, "q")).final_output == "fallback"
    state["down"] = False
    assert (await adapter.run(agent, "q")).final_output == "real"


async def test_openai_agents_after_point_aliases_are_per_user(system: System) -> None:
    from agents import Agent as SdkAgent

    who = {"user": "ann"}
    ran: list[str] = []

    @function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        ran.append(who["user"])
        return f"{who['user']}-1"

    as_user(system, who)
    cache_per_user(system, HookPoint.AFTER_TOOL_EXECUTION, HookPoint.AFTER_AGENT_EXECUTION)
    agent = SdkAgent(name="weather", instructions="Answer.",
                     model=ScriptModel(tool_then_answer()), tools=[weather])
    adapter = OpenAIAgentsAdapter(system)
    assert (await adapter.run(agent, "weather?")).final_output == "answer: ann-1"
    who["user"] = "bob"
    assert (await adapter.run(agent, "weather?")).final_output == "answer: bob-1"
    who["user"] = "ann"
    served = await adapter.run(agent, "weather?")
    assert served.final_output == "answer: ann-1" and served.cached  # hers: served
    assert ran == ["ann", "bob"]


# -- LangChain ----------------------------------------------------------------------------
def lc_agent(system: System, steps: list[Any]) -> tuple[Any, ScriptedChatModel]:
    model = ScriptedChatModel(steps=steps)
    return create_agent(model, tools=[add], name="calc",
                        middleware=[LlmspellMiddleware(system)]), model


def final(out: dict[str, Any]) -> str:
    return str(out["messages"][-1].content)


async def test_langchain_agent_error_fallback_is_not_cached(system: System) -> None:
    state = {"down": True}

    def answer(messages: Any) -> str:
        if state["down"]:
            raise RuntimeError("provider down")
        return "real"

    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION,
                             lambda ctx: Cache("a", ttl=600), name="cache")
    system.registry.register(HookPoint.AGENT_ERROR, lambda ctx: Replace("fallback"),
                             name="fallback")
    agent, model = lc_agent(system, [answer])
    assert final(await agent.ainvoke(ASK)) == "fallback"
    state["down"] = False
    assert final(await agent.ainvoke(ASK)) == "real"  # asked again: the service is back
    assert final(await agent.ainvoke(ASK)) == "real"  # the real answer is cached
    assert len(model.seen) == 2


async def test_langchain_model_and_tool_error_fallbacks_are_not_cached(
        system: System) -> None:
    state = {"down": True}

    def answer(messages: Any) -> str:
        if state["down"]:
            raise RuntimeError("provider down")
        return "real"

    system.registry.register(HookPoint.BEFORE_MODEL_CALL, lambda ctx: Cache("m", ttl=600),
                             name="cache")
    system.registry.register(HookPoint.MODEL_CALL_ERROR, lambda ctx: Replace("fallback"),
                             name="fallback")
    agent, model = lc_agent(system, [answer])
    assert final(await agent.ainvoke(ASK)) == "fallback"
    state["down"] = False
    assert final(await agent.ainvoke(ASK)) == "real"
    assert len(model.seen) == 2


async def test_langchain_after_point_aliases_are_per_user(system: System) -> None:
    who = {"user": "ann"}
    as_user(system, who)
    cache_per_user(system, HookPoint.AFTER_TOOL_EXECUTION, HookPoint.AFTER_MODEL_CALL,
                   HookPoint.AFTER_AGENT_EXECUTION)
    agent, model = lc_agent(system, [call("add", a=1, b=2),
                                     lambda messages: f"for {who['user']}"])
    assert final(await agent.ainvoke(ASK)) == "for ann"
    who["user"] = "bob"
    assert final(await agent.ainvoke(ASK)) == "for bob"
    who["user"] = "ann"
    assert final(await agent.ainvoke(ASK)) == "for ann"  # hers: served
    assert len(RAN) == 2 and len(model.seen) == 4
