"""Streaming through the model points: agent.stream yields deltas in order, AfterModelCall
runs on the assembled answer, deltas are published coalesced only when someone listens,
and a stream the provider cuts off is a typed error (never a half answer)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from llmspell.errors import AgentError, ProviderStreamError
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext, HookPoint, Modified
from llmspell.runtime import AgentDelta, AgentResponse, System, SystemConfig, tool
from llmspell.runtime.models import DELTA_FLUSH_CHARS
from llmspell.runtime.providers.anthropic import AnthropicProvider
from llmspell.runtime.providers.openai_compat import OpenAICompatibleProvider
from llmspell.runtime.providers.scripted import ScriptedProvider

from .llm_wire_server import LLMWireServer, Plan, openai_sse, openai_stream_chunks

P = HookPoint


@pytest_asyncio.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    yield sys
    await sys.shutdown()


@pytest.fixture
def wire() -> Iterator[LLMWireServer]:
    with LLMWireServer() as server:
        yield server


@tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def _collect(agent: Any, text: str) -> tuple[list[AgentDelta], AgentResponse]:
    items = [item async for item in agent.stream(text)]
    *deltas, response = items
    assert isinstance(response, AgentResponse)
    assert all(isinstance(d, AgentDelta) for d in deltas)
    return deltas, response


async def test_agent_stream_yields_the_deltas_in_order(system: System) -> None:
    agent = system.agents.create("poet", provider=ScriptedProvider(
        ["roses are red and violets are blue"]))
    deltas, response = await _collect(agent, "a poem")
    assert len(deltas) > 3
    assert "".join(d.text for d in deltas) == response.output
    assert response.output == "roses are red and violets are blue"
    assert {d.turn for d in deltas} == {1}


async def test_tool_call_turns_stream_too(system: System) -> None:
    system.tools.register(add)
    agent = system.agents.create("calc", provider=ScriptedProvider([
        {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
        "the sum is 5"]), tools=["add"])
    deltas, response = await _collect(agent, "2+3?")
    assert response.output == "the sum is 5" and response.turns == 2
    calls = [d for d in deltas if d.delta.tool_call_index is not None]
    assert calls and calls[0].turn == 1 and calls[0].delta.tool_name == "add"
    assert "".join(d.text for d in deltas if d.turn == 2) == "the sum is 5"


async def test_after_model_call_applies_to_the_assembled_answer(system: System) -> None:
    def shout(ctx: HookContext) -> Modified:
        result = ctx.data["result"]
        message = {**result["message"], "content": result["message"]["content"].upper()}
        return Modified({"result": {**result, "message": message}})

    system.registry.register(P.AFTER_MODEL_CALL, shout, name="shout")
    seen: list[dict[str, Any]] = []
    system.registry.register(P.BEFORE_MODEL_CALL, lambda c: seen.append(c.data["params"]),
                             name="see")
    agent = system.agents.create("a", provider=ScriptedProvider(["quiet words here"]))
    deltas, response = await _collect(agent, "q")
    assert "".join(d.text for d in deltas) == "quiet words here"  # as it streamed
    assert response.output == "QUIET WORDS HERE"  # what the hook made of the whole answer
    assert seen[0]["stream"] is True


async def test_delta_events_are_coalesced_and_only_when_someone_listens(
        system: System) -> None:
    words = " ".join(f"word{i}" for i in range(400))
    agent = system.agents.create("long", provider=ScriptedProvider([words, words]))
    assert system.store is not None
    await agent.run("nobody listens")  # not streamed: no subscriber, no on_delta
    assert not [e for e in system.store.query() if e.event_type.endswith(".delta")]
    events: list[UniversalEvent] = []
    system.bus.subscribe("model.*.delta", events.append)
    response = await agent.run("someone listens")
    assert events, "deltas were published"
    assert len(events) < 400  # coalesced: far fewer events than words
    assert all(len(e.data["text"]) >= DELTA_FLUSH_CHARS for e in events[:-1])
    assert "".join(e.data["text"] for e in events) == response.output
    assert [e.data["seq"] for e in events] == list(range(len(events)))
    # Deltas are not stored: the completed event carries the answer.
    assert not [e for e in system.store.query() if e.event_type.endswith(".delta")]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_agent_streams_from_a_real_http_provider(
        system: System, wire: LLMWireServer, api: str) -> None:
    provider: Any = (OpenAICompatibleProvider("gpt-x", base_url=wire.url + "/v1")
                     if api == "openai" else
                     AnthropicProvider("claude-x", base_url=wire.url))
    agent = system.agents.create("remote", provider=provider)
    deltas, response = await _collect(agent, "hello there")
    assert response.output == "echo: hello there"
    assert "".join(d.text for d in deltas) == "echo: hello there"
    assert wire.requests[-1].body["stream"] is True
    await provider.aclose()


async def test_a_cut_stream_is_a_typed_error_not_a_half_answer(
        system: System, wire: LLMWireServer) -> None:
    body = {"model": "gpt-x", "messages": [{"role": "user", "content": "hello there"}]}
    parts = openai_sse(openai_stream_chunks(body))
    wire.plans.append(Plan(parts=parts[:-3], end="cut"))
    provider = OpenAICompatibleProvider("gpt-x", base_url=wire.url + "/v1")
    agent = system.agents.create("remote", provider=provider)
    received: list[AgentDelta] = []
    with pytest.raises(AgentError) as info:
        async for item in agent.stream("hello there"):
            if isinstance(item, AgentDelta):
                received.append(item)  # noqa: PERF401 - the loop raises midway
    assert isinstance(info.value.__cause__, ProviderStreamError)
    assert received, "some deltas had arrived before the cut"
    await provider.aclose()


async def test_a_consumer_that_stops_early_cancels_the_run(system: System) -> None:
    agent = system.agents.create("chatty", provider=ScriptedProvider(
        [" ".join(["blah"] * 50), "done"]))
    stream = agent.stream("talk")
    first = await stream.__anext__()
    assert isinstance(first, AgentDelta)
    await stream.aclose()
    assert (await agent.run("again")).output  # the agent is usable afterwards
