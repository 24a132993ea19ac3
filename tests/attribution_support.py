"""What tests/test_user_attribution.py and tests/test_user_attribution_threads.py share (a
plain module they import): the system, the SDK's trace export turned off, the hook that
records what each dispatch of a point saw, a tool, and the offline pieces of each
framework, loaded on demand."""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmspell.hooks import HookContext
from llmspell.runtime.config import SystemConfig
from llmspell.runtime.system import System
from llmspell.runtime.tools.base import tool
from tests.integrations.conftest_openai_agents import no_trace_export

__all__ = ["USER", "ask", "langchain", "no_trace_export", "openai_agents", "plus",
           "pydantic_ai", "system", "watch"]

USER = re.compile(r"user\d\d")
"""A user's name in a run's input or a call's data: ``user`` and two digits."""


@pytest.fixture
async def system() -> AsyncIterator[System]:
    async with System(SystemConfig(store="memory")) as started:
        yield started


def watch(system: Any, point: str) -> list[dict[str, Any]]:
    """What each dispatch of ``point`` saw: the component, the user in the metadata, the
    users its own data names, the correlation, the data, and the thread it ran on."""
    seen: list[dict[str, Any]] = []

    def record(ctx: HookContext) -> None:
        seen.append({"name": ctx.component.name, "user": ctx.metadata.get("user"),
                     "named": sorted(set(USER.findall(str(ctx.data)))),
                     "correlation": ctx.correlation_id, "data": dict(ctx.data),
                     "thread": threading.get_ident()})

    system.registry.register(point, record, name=f"watch-{point}", priority="lowest")
    return seen


@tool()
def plus(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def ask(text: str) -> Any:
    """A LangChain agent's input: one user message."""
    return {"messages": [{"role": "user", "content": text}]}


def langchain() -> Any:
    """``create_agent``, the middleware, the scripted chat model and its ``call`` step."""
    pytest.importorskip("langchain")
    from langchain.agents import create_agent

    from llmspell.integrations.langchain import LlmspellMiddleware
    from tests.integrations.conftest_langchain import ScriptedChatModel, call

    return create_agent, LlmspellMiddleware, ScriptedChatModel, call


def pydantic_ai() -> Any:
    """pydantic-ai's ``Agent``, the capability, and ``answering(text, model_name)``: a
    model that always answers ``text``."""
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, TextPart
    from pydantic_ai.models.function import FunctionModel

    from llmspell.integrations.pydantic_ai import LlmspellCapability

    def answering(text: str, name: str) -> Any:
        return FunctionModel(lambda messages, info: ModelResponse(parts=[TextPart(text)]),
                             model_name=name)

    return Agent, LlmspellCapability, answering


def openai_agents() -> Any:
    """The SDK's ``Agent``, the adapter, tests/integrations/conftest_openai_agents.py and
    ``answering(text)``: a model that always answers ``text``. (The SDK is imported above
    already, for ``no_trace_export``.)"""
    from agents import Agent

    from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
    from tests.integrations import conftest_openai_agents as sdk

    def answering(text: str) -> Any:
        return sdk.ScriptModel(lambda instructions, items, tools: [sdk.say(text)])

    return Agent, OpenAIAgentsAdapter, sdk, answering
