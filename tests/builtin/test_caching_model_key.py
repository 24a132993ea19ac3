"""CachingHook's model-call key covers the whole request: two calls that differ only in
the tools offered, or in one setting (temperature, max tokens, the output type / response
format, tool choice, top_p...), are two misses; identical calls hit; ``stream`` does not
split the key. Through the runtime's model calls and the framework adapters."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from llmspell.builtin import CachingConfig, CachingHook
from llmspell.builtin.caching import model_key_params
from llmspell.hooks import HookPoint
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers.base import Message, ToolSpec
from llmspell.runtime.providers.scripted import ScriptedProvider


@pytest.fixture
async def system() -> AsyncIterator[System]:
    async with System(SystemConfig(store="memory")) as started:
        yield started


def _caching(system: System) -> CachingHook:
    # Whole agent runs are not cached here: each model call reaches the model points.
    hook = CachingHook(CachingConfig(ttl=60, allow_agents=frozenset()))
    hook.install(system.registry)
    return hook


WEATHER = ToolSpec(name="weather", description="The weather.",
                   parameters={"type": "object", "properties": {"city": {"type": "string"}}})
CLOCK = ToolSpec(name="clock", description="The time.", parameters={"type": "object"})


# -- the key ------------------------------------------------------------------------------

BASE: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "tools": [],
                        "temperature": None, "max_tokens": None, "stream": False}


@pytest.mark.parametrize("change", [
    {"tools": [{"name": "weather", "description": "", "parameters": {}}]},
    {"temperature": 0.2}, {"max_tokens": 10},
    {"settings": {"tool_choice": "required"}},
    {"settings": {"output": {"mode": "tool", "tools": [{"name": "final_result"}]}}},
    {"settings": {"response_format": {"schema": {"type": "object"}}}},
    {"settings": {"top_p": 0.5}},
])
def test_every_field_but_stream_is_in_the_key(change: dict[str, Any]) -> None:
    assert model_key_params({**BASE, **change}) != model_key_params(BASE)
    assert model_key_params({**BASE, "stream": True}) == model_key_params(BASE)


# -- the runtime's model calls ------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"tools": [WEATHER]}, {"tools": [CLOCK]}, {"temperature": 0.9}, {"max_tokens": 7},
])
async def test_runtime_calls_differing_in_tools_or_a_setting_are_misses(
        system: System, kwargs: dict[str, Any]) -> None:
    hook = _caching(system)
    provider = ScriptedProvider(lambda messages, tools: f"answer {len(provider.calls)}")
    ask = [Message(role="user", content="hi")]
    first = await system.models.call(provider, ask)
    again = await system.models.call(provider, ask)
    assert again.completion.message.content == first.completion.message.content
    assert len(provider.calls) == 1  # identical: a hit
    other = await system.models.call(provider, ask, **kwargs)
    assert len(provider.calls) == 2 and not other.replaced  # differs: a miss
    same = await system.models.call(provider, ask, **kwargs)
    assert len(provider.calls) == 2 and same.replaced  # and that one is kept apart
    assert hook.stats().misses == 2 and hook.stats().hits == 2


# -- pydantic-ai ----------------------------------------------------------------------------

class Point(BaseModel):
    x: int


def _pydantic_agent(system: System, asked: list[Any], **kwargs: Any) -> Any:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from llmspell.integrations.pydantic_ai import LlmspellCapability

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        asked.append(info)
        if info.output_tools:
            return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"x": 7})])
        return ModelResponse(parts=[TextPart(f"text #{len(asked)}")])

    return Agent(FunctionModel(answer), capabilities=[LlmspellCapability(system)], **kwargs)


async def test_pydantic_ai_a_structured_request_is_not_served_a_text_answer(
        system: System) -> None:
    pytest.importorskip("pydantic_ai")
    _caching(system)
    asked: list[Any] = []
    agent = _pydantic_agent(system, asked)
    assert (await agent.run("hi")).output == "text #1"
    assert (await agent.run("hi")).output == "text #1"  # identical: served
    assert len(asked) == 1
    # Only the output tool differs: asked again, and answered with the output tool (not
    # served the cached text, which pydantic-ai would refuse and ask again about).
    structured = await agent.run("hi", output_type=Point)
    assert structured.output == Point(x=7)
    assert len(asked) == 2 and asked[-1].output_tools
    assert len(structured.all_messages()) == 3  # the prompt, the output call, its return
    assert (await agent.run("hi", output_type=Point)).output == Point(x=7)
    assert len(asked) == 2


@pytest.mark.parametrize("settings", [
    {"temperature": 0.3}, {"max_tokens": 9}, {"tool_choice": "none"}, {"top_p": 0.5},
    {"seed": 3},
])
async def test_pydantic_ai_requests_differing_in_a_setting_are_misses(
        system: System, settings: dict[str, Any]) -> None:
    pytest.importorskip("pydantic_ai")
    hook = _caching(system)
    asked: list[Any] = []
    agent = _pydantic_agent(system, asked)
    assert (await agent.run("hi")).output == "text #1"
    assert (await agent.run("hi", model_settings=settings)).output == "text #2"
    assert (await agent.run("hi", model_settings=settings)).output == "text #2"
    assert len(asked) == 2
    assert hook.stats().served >= 1


async def test_pydantic_ai_requests_differing_in_tools_are_misses(system: System) -> None:
    pytest.importorskip("pydantic_ai")
    _caching(system)
    asked: list[Any] = []
    plain = _pydantic_agent(system, asked)
    assert (await plain.run("hi")).output == "text #1"
    tooled = _pydantic_agent(system, asked)

    @tooled.tool_plain
    def clock() -> str:
        """The time."""
        return "noon"

    assert (await tooled.run("hi")).output == "text #2"
    assert asked[-1].function_tools


async def test_pydantic_ai_a_hook_cannot_change_params_settings(system: System) -> None:
    pytest.importorskip("pydantic_ai")
    from llmspell.errors import InvalidValueError
    from llmspell.hooks.result import Modified

    def tamper(ctx: Any) -> Modified:
        params = ctx.data["params"]
        return Modified({**ctx.data, "params": {**params, "settings": {"top_p": 0.1}}})

    system.registry.register(HookPoint.BEFORE_MODEL_CALL, tamper, name="tamper")
    agent = _pydantic_agent(system, [])
    with pytest.raises(InvalidValueError, match=r"params\.settings"):
        await agent.run("hi")


# -- what the other adapters' model points carry ----------------------------------------------

async def test_openai_agents_params_carry_the_settings_and_output_type(
        system: System) -> None:
    pytest.importorskip("agents")
    from agents import Agent, ModelSettings

    from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
    from tests.integrations.conftest_openai_agents import ScriptModel, say

    seen: list[dict[str, Any]] = []
    system.registry.register(HookPoint.BEFORE_MODEL_CALL,
                             lambda ctx: seen.append(ctx.data["params"]), name="look")
    model = ScriptModel(lambda instructions, items, tools: [say('{"x": 1}')])
    adapter = OpenAIAgentsAdapter(system)
    plain = Agent(name="a", model=model)
    await adapter.run(plain, "hi")
    tuned = Agent(name="a", model=model, output_type=Point, model_settings=ModelSettings(
        top_p=0.5, tool_choice="none", metadata={"request": "r-1"}))
    await adapter.run(tuned, "hi")
    first, second = (model_key_params(p) for p in seen)
    assert first != second
    settings = seen[1]["settings"]
    assert settings["top_p"] == 0.5 and settings["tool_choice"] == "none"
    assert settings["output"]["name"] == "Point"
    assert settings["output"]["schema"]["properties"]["x"]["type"] == "integer"
    assert "metadata" not in settings and "retry" not in settings  # never a key
    # The same agent again: the same key (no request id, no retry policy in it).
    await adapter.run(tuned, "hi")
    assert model_key_params(seen[2]) == second


async def test_langchain_params_carry_tool_choice_and_response_format(
        system: System) -> None:
    pytest.importorskip("langchain")
    from langchain.agents import create_agent
    from langchain.agents.structured_output import ToolStrategy
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from llmspell.integrations.langchain import LlmspellMiddleware

    seen: list[dict[str, Any]] = []
    system.registry.register(HookPoint.BEFORE_MODEL_CALL,
                             lambda ctx: seen.append(ctx.data["params"]), name="look")

    def model() -> Any:
        return GenericFakeChatModel(messages=iter([AIMessage(content="hello")] * 4))

    plain = create_agent(model(), middleware=[LlmspellMiddleware(system)])
    await plain.ainvoke({"messages": [("user", "hi")]})
    first = seen[-1]
    assert model_key_params(first).get("settings") is None
    shaped = create_agent(model(), middleware=[LlmspellMiddleware(system)],
                          response_format=ToolStrategy(Point))
    # The fake model answers text, not the output tool: only the request matters here.
    with contextlib.suppress(Exception):
        await shaped.ainvoke({"messages": [("user", "hi")]})
    second = seen[-1]
    assert second["settings"]["response_format"]["schemas"][0]["name"] == "Point"
    assert model_key_params(first) != model_key_params(second)
