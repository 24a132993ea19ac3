"""The pydantic-ai adapter's model cache: a response an ``AfterModelCall`` ``Cache`` stored
is served only to a request that asks for the same thing (same output type and tools, same
settings such as ``seed`` or ``top_p``) for the same user and session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from llmspell.hooks import Cache, ComponentId, ComponentType, HookPoint
from llmspell.integrations.pydantic_ai import LlmspellCapability, _fingerprint
from llmspell.runtime import System, SystemConfig


class Point(BaseModel):
    x: int


def answering(asked: list[Any]) -> FunctionModel:
    """A model answering text, or with its output tool when it offers one."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        asked.append(len(messages))
        if info.output_tools:
            return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"x": 7})])
        return ModelResponse(parts=[TextPart(f"text #{len(asked)}")])

    return FunctionModel(answer)


@pytest.fixture
async def system() -> AsyncIterator[System]:
    """A started System whose ``AfterModelCall`` caches every response (one key per user)."""
    async with System(SystemConfig(store="memory")) as started:
        started.registry.register(HookPoint.AFTER_MODEL_CALL,
                                  lambda ctx: Cache(f"k:{ctx.metadata.get('user')}", ttl=60),
                                  name="cache")
        yield started


async def test_a_structured_output_request_is_not_served_a_text_answer(system: System) -> None:
    asked: list[Any] = []
    agent = Agent(answering(asked), capabilities=[LlmspellCapability(system)])
    assert (await agent.run("hi")).output == "text #1"
    assert (await agent.run("hi")).output == "text #1"  # the same request: served
    assert asked == [1]
    structured = await agent.run("hi", output_type=Point)
    assert structured.output == Point(x=7)
    # asked once, with the prompt only: no cached text answer, no retry after it
    # (the prompt, the output tool call, its return)
    assert asked == [1, 1] and len(structured.all_messages()) == 3


@pytest.mark.parametrize("settings", [{"seed": 3}, {"top_p": 0.5},
                                      {"stop_sequences": ["\n"]}])
async def test_other_settings_are_other_requests(system: System,
                                         settings: dict[str, Any]) -> None:
    asked: list[Any] = []
    agent = Agent(answering(asked), capabilities=[LlmspellCapability(system)])
    assert (await agent.run("hi")).output == "text #1"
    assert (await agent.run("hi", model_settings=settings)).output == "text #2"
    assert (await agent.run("hi", model_settings=settings)).output == "text #2"
    assert len(asked) == 2


async def test_one_users_cached_answer_is_not_served_to_another(system: System) -> None:
    asked: list[Any] = []
    who = {"user": "ann"}
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION,
                             lambda ctx: ctx.metadata.update(user=who["user"]),
                             name="who", priority="highest")
    agent = Agent(answering(asked), capabilities=[LlmspellCapability(system)])
    assert (await agent.run("my orders?")).output == "text #1"
    who["user"] = "bob"
    assert (await agent.run("my orders?")).output == "text #2"
    who["user"] = "ann"
    assert (await agent.run("my orders?")).output == "text #1"  # her own: served


def test_an_unencodable_request_is_not_aliased_and_callers_are_apart() -> None:
    # A request whose settings cannot be encoded is not aliased at all (never a wrong hit).
    component = ComponentId(type=ComponentType.MODEL, name="p/m")
    assert _fingerprint(component, {"a": 1}, (None, None, None)) is None
    assert (_fingerprint(component, {"a": 1}, ("d", "ann", None))
            != _fingerprint(component, {"a": 1}, ("d", "bob", None)))
