"""Helpers for the pydantic-ai adapter tests: offline models that follow a plan of tool
calls (FunctionModel, streamed or not), tools that count their calls, event capture."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from llmspell.events.event import UniversalEvent
from llmspell.integrations.pydantic_ai import LlmspellCapability

Plan = list[list[tuple[str, dict[str, Any]]]]


def tool_results(messages: list[ModelMessage]) -> str:
    """What the last request told the model about its tool calls: ``name=content`` pairs."""
    last = messages[-1]
    if not isinstance(last, ModelRequest):
        return ""
    shown = []
    for part in last.parts:
        if isinstance(part, ToolReturnPart):
            shown.append(f"{part.tool_name}={part.model_response_str()}")
        elif isinstance(part, RetryPromptPart):
            shown.append(f"{part.tool_name}!{part.model_response()}")
    return "; ".join(shown)


def planned(plan: Plan, *, model_name: str = "gpt-4o",
            seen: list[list[ModelMessage]] | None = None,
            fail: Callable[[int], Exception | None] | None = None) -> FunctionModel:
    """A model that asks for ``plan[k]``'s tool calls at its k-th answer, then answers
    ``"done: <tool results>"``. ``seen`` collects each request's messages; ``fail(n)``
    may return an error to raise at the n-th request (1-based)."""
    requests = {"n": 0}

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        requests["n"] += 1
        if seen is not None:
            seen.append(list(messages))
        if fail is not None:
            error = fail(requests["n"])
            if error is not None:
                raise error
        step = sum(isinstance(m, ModelResponse) for m in messages)
        if step < len(plan):
            return ModelResponse(parts=[
                ToolCallPart(name, args, tool_call_id=f"call-{step}-{i}")
                for i, (name, args) in enumerate(plan[step])])
        return ModelResponse(parts=[TextPart(f"done: {tool_results(messages)}")])

    async def stream(messages: list[ModelMessage],
                     info: AgentInfo) -> AsyncIterator[str | dict[int, DeltaToolCall]]:
        response = answer(messages, info)
        for i, part in enumerate(response.parts):
            if isinstance(part, TextPart):
                words = part.content.split(" ")
                for k, word in enumerate(words):
                    yield word if k == len(words) - 1 else word + " "
            elif isinstance(part, ToolCallPart):
                yield {i: DeltaToolCall(name=part.tool_name,
                                        json_args=json.dumps(part.args),
                                        tool_call_id=part.tool_call_id)}

    return FunctionModel(answer, stream_function=stream, model_name=model_name)


class Calls:
    """Counts tool calls by name, with their arguments."""

    def __init__(self) -> None:
        self.log: list[tuple[str, dict[str, Any]]] = []

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.log if n == name)


def calc_agent(system: Any, plan: Plan, *, calls: Calls | None = None,
               name: str = "calc", **options: Any) -> Agent[None, str]:
    """An agent with two tools (``add``, ``shout``) and the llmspell capability."""
    model_options = {k: options.pop(k) for k in ("seen", "fail", "model_name")
                     if k in options}
    log = calls if calls is not None else Calls()
    agent: Agent[None, str] = Agent(planned(plan, **model_options), name=name,
                                    capabilities=[LlmspellCapability(system, **options)])

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        log.log.append(("add", {"a": a, "b": b}))
        return a + b

    @agent.tool_plain
    def shout(text: str) -> str:
        """Upper-case a text."""
        log.log.append(("shout", {"text": text}))
        return text.upper()

    return agent


def capture(system: Any, pattern: str = "**") -> list[UniversalEvent]:
    """Every event published on ``system.bus`` matching ``pattern`` (drain the bus before
    reading)."""
    seen: list[UniversalEvent] = []
    system.bus.subscribe(pattern, seen.append)
    return seen


def types(events: list[UniversalEvent], prefix: str = "") -> list[str]:
    """The event types, those starting with ``prefix``."""
    return [e.event_type for e in events if e.event_type.startswith(prefix)]
