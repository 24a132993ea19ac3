"""An offline OpenAI Agents SDK ``Model`` for the adapter tests (a plain module the tests
import): it answers from a script function, calls tools, streams, and can fail."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import agents
import pytest
from agents import Agent, ModelResponse, ModelSettings, Usage, function_tool
from agents.models.interface import Model, ModelTracing
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

Step = Callable[[str | None, list[dict[str, Any]], list[str]], list[Any]]


def say(text: str) -> ResponseOutputMessage:
    """An assistant text item."""
    return ResponseOutputMessage(
        id="msg", type="message", role="assistant", status="completed",
        content=[ResponseOutputText(text=text, type="output_text", annotations=[],
                                    logprobs=[])])


def call(name: str, arguments: dict[str, Any], call_id: str) -> ResponseFunctionToolCall:
    """A function-call item."""
    return ResponseFunctionToolCall(id=call_id, call_id=call_id, type="function_call",
                                    name=name, arguments=json.dumps(arguments))


class HttpError(Exception):
    """A provider error with an HTTP status (what the retry hook looks at)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status_code = status


def outputs(items: list[Any]) -> list[dict[str, Any]]:
    """Tool outputs in a model input, as ``{call_id: output}`` dicts."""
    return [i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]


class ScriptModel(Model):
    """Answers each call with ``step(instructions, input_items, tool_names)`` (a list of
    output items); an ``Exception`` in ``failures`` is raised (once each) before answering.
    Records every call's instructions and input."""

    def __init__(self, step: Step, *, name: str = "gpt-4o-mini",
                 failures: list[Exception] | None = None) -> None:
        self.step = step
        self.model = name
        self.failures = list(failures or [])
        self.calls: list[dict[str, Any]] = []

    def _answer(self, system_instructions: str | None, input: Any, tools: list[Any],
                handoffs: list[Any]) -> list[Any]:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else [
            i if isinstance(i, dict) else i.model_dump(exclude_none=True) for i in input]
        names = [t.name for t in tools] + [h.tool_name for h in handoffs]
        self.calls.append({"instructions": system_instructions, "input": items,
                           "tools": names})
        if self.failures:
            raise self.failures.pop(0)
        return self.step(system_instructions, items, names)

    async def get_response(self, system_instructions: str | None, input: Any,
                           model_settings: ModelSettings, tools: list[Any],
                           output_schema: Any, handoffs: list[Any], tracing: ModelTracing,
                           *, previous_response_id: str | None, conversation_id: str | None,
                           prompt: Any) -> ModelResponse:
        output = self._answer(system_instructions, input, tools, handoffs)
        return ModelResponse(output=output, usage=Usage(requests=1, input_tokens=100,
                                                        output_tokens=20, total_tokens=120),
                             response_id=None)

    async def stream_response(self, system_instructions: str | None, input: Any,
                              model_settings: ModelSettings, tools: list[Any],
                              output_schema: Any, handoffs: list[Any],
                              tracing: ModelTracing, *, previous_response_id: str | None,
                              conversation_id: str | None, prompt: Any
                              ) -> AsyncIterator[Any]:
        output = self._answer(system_instructions, input, tools, handoffs)
        response = Response(
            id="resp", created_at=0, model=self.model, object="response", output=output,
            tool_choice="auto", tools=[], top_p=None, parallel_tool_calls=False,
            status="completed",
            usage=ResponseUsage(input_tokens=100, output_tokens=20, total_tokens=120,
                                input_tokens_details=InputTokensDetails(cached_tokens=0,
                                                                          cache_write_tokens=0),
                                output_tokens_details=OutputTokensDetails(
                                    reasoning_tokens=0)))
        yield ResponseCreatedEvent(type="response.created", response=response,
                                   sequence_number=0)
        yield ResponseCompletedEvent(type="response.completed", response=response,
                                     sequence_number=1)


def weather_agent(model: ScriptModel, *, dangerous: bool = False,
                  **kwargs: Any) -> tuple[Agent[Any], list[Any]]:
    """An agent with two tools (``weather``, ``forecast``), and ``wipe`` (a dangerous one)
    when ``dangerous``; returns it and the list the tools append their calls to. ``kwargs``
    go to the ``Agent`` (``tools=`` adds tools after these)."""
    seen: list[Any] = []

    @function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        seen.append(("weather", city))
        return f"sunny in {city}"

    @function_tool
    def forecast(city: str, days: int) -> str:
        """A forecast."""
        seen.append(("forecast", city, days))
        return f"{days} days of rain in {city}"

    @function_tool
    def wipe(path: str) -> str:
        """A dangerous tool."""
        seen.append(("wipe", path))
        return f"wiped {path}"

    tools = [weather, wipe, forecast] if dangerous else [weather, forecast]
    agent = Agent(name="weather", instructions="Answer about weather.", model=model,
                  tools=[*tools, *kwargs.pop("tools", ())], **kwargs)
    return agent, seen


def tool_then_answer(tool: str = "weather", args: dict[str, Any] | None = None) -> Step:
    """A step that calls ``tool`` first, then answers with the tool output it got."""
    def step(instructions: str | None, items: list[dict[str, Any]],
             tools: list[str]) -> list[Any]:
        done = outputs(items)
        if not done:
            return [call(tool, args or {"city": "Paris"}, "c1")]
        return [say("answer: " + str(done[-1]["output"]))]
    return step


@pytest.fixture(autouse=True)
def no_trace_export() -> Iterator[None]:
    """The SDK's default trace processor exports spans to api.openai.com in a background
    thread: the tests run with no processor at all (a test that wants spans adds its own).
    Autouse in every module that imports it."""
    agents.set_trace_processors([])
    yield
    agents.set_trace_processors([])


def stored_events(system: Any, pattern: str = "**") -> list[Any]:
    """The events of ``system``'s store matching ``pattern``, after a flush."""
    from llmspell.events.store.base import EventQuery

    assert system.store is not None
    system.store.flush()
    return list(system.store.query(EventQuery(pattern=pattern)))
