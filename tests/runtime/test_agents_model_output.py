"""What the model sends that an agent must survive: tool-call arguments that are not valid
JSON (or not an object) are answered so the model can try again, huge tool results are cut
before the model reads them, and the tool calls of the last turn are not run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from llmspell.errors import InvalidValueError, ProviderError, ScriptError
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext, HookPoint, Modified
from llmspell.runtime import System, tool
from llmspell.runtime.agents.agent import DEFAULT_MAX_TOOL_RESULT_CHARS
from llmspell.runtime.providers import (
    AnthropicProvider,
    Completion,
    Message,
    OpenAICompatibleProvider,
    StreamDelta,
    ToolCall,
    tool_call_from_text,
)
from llmspell.runtime.providers.base import MAX_RAW_ARGUMENTS_CHARS
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.scripting import ScriptHost
from tests.runtime.llm_wire_server import (
    LLMWireServer,
    Plan,
    _wire,
    anthropic_sse,
    openai_sse,
    wire,
)
from tests.runtime.test_agents_hostile import spy_tool

__all__ = ["_wire", "wire"]  # fixtures

HELLO = [Message(role="user", content="hello")]


def body(answer: dict[str, Any]) -> Plan:
    return Plan(parts=[json.dumps(answer).encode()], content_type="application/json",
                framing="length")


def openai_call(arguments: Any, call_id: str = "c1") -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function",
         "function": {"name": "spy", "arguments": arguments}}]},
        "finish_reason": "tool_calls"}]}


def openai_text(text: str) -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}]}


def stream_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"model": "gpt-test", "choices": [{"index": 0, "delta": delta,
                                              "finish_reason": finish}]}


@pytest.fixture
async def openai(wire: LLMWireServer) -> AsyncIterator[OpenAICompatibleProvider]:
    made = OpenAICompatibleProvider("gpt-test", base_url=wire.url + "/v1", api_key="k")
    yield made
    await made.aclose()


@pytest.fixture
async def anthropic(wire: LLMWireServer) -> AsyncIterator[AnthropicProvider]:
    made = AnthropicProvider("claude-test", base_url=wire.url, api_key="k")
    yield made
    await made.aclose()


# -- 1. arguments that are not a JSON object ----------------------------------------------

@pytest.mark.parametrize(("text", "arguments", "problem"), [
    ('{"a": 1}', {"a": 1}, None),
    ("", {}, None),
    ("  \n", {}, None),
    (None, {}, None),
    ('{"a": 1', {}, "not valid JSON ("),
    ("[1, 2]", {}, "a JSON array, not an object"),
    ('"hi"', {}, "a JSON string, not an object"),
    ("3", {}, "a JSON number, not an object"),
    ("null", {}, "a JSON null, not an object"),
    ("[" * 100_000 + "]" * 100_000, {}, "not valid JSON (nested too deeply)"),
])
def test_arguments_text_is_read_like_a_provider_reads_it(
        text: str | None, arguments: dict[str, Any], problem: str | None) -> None:
    call = tool_call_from_text("c", "spy", text)
    assert call.arguments == arguments
    if problem is None:
        assert call.argument_error is None and call.raw_arguments is None
    else:
        assert call.argument_error is not None and call.argument_error.startswith(problem)
        assert call.raw_arguments is not None and call.raw_arguments[:20] == (text or "")[:20]
    # The call (problem and all) serializes, for events, recordings and responses.
    assert msgspec.json.decode(msgspec.json.encode(call), type=ToolCall) == call


def test_a_usable_call_encodes_as_it_always_did() -> None:
    """Recorded runs digest the conversation's JSON: new fields left unset must not change
    it, or every run recorded before would no longer replay."""
    call = ToolCall(id="c", name="spy", arguments={"a": 1})
    assert msgspec.json.encode(call) == b'{"id":"c","name":"spy","arguments":{"a":1}}'
    assert msgspec.to_builtins(call) == {"id": "c", "name": "spy", "arguments": {"a": 1}}


def test_the_raw_arguments_kept_are_bounded() -> None:
    call = tool_call_from_text("c", "spy", "{" + "x" * (2 * MAX_RAW_ARGUMENTS_CHARS))
    assert call.raw_arguments is not None
    assert len(call.raw_arguments) < MAX_RAW_ARGUMENTS_CHARS + 100
    assert call.raw_arguments.endswith(f"[{MAX_RAW_ARGUMENTS_CHARS + 1} more characters]")


@pytest.mark.parametrize(("arguments", "problem"), [
    ("{not json", "not valid JSON"), ("[1]", "a JSON array, not an object")])
async def test_openai_keeps_a_call_with_broken_arguments(
        openai: OpenAICompatibleProvider, wire: LLMWireServer, arguments: str,
        problem: str) -> None:
    wire.plans.append(body(openai_call(arguments)))
    completion = await openai.complete(HELLO)
    (call,) = completion.message.tool_calls
    assert (call.id, call.name, call.arguments, call.raw_arguments) == \
        ("c1", "spy", {}, arguments)
    assert call.argument_error is not None and problem in call.argument_error
    assert completion.finish_reason == "tool_calls"


async def test_openai_arguments_of_a_wrong_wire_type_are_still_a_provider_error(
        openai: OpenAICompatibleProvider, wire: LLMWireServer) -> None:
    wire.plans.append(body(openai_call(5)))
    with pytest.raises(ProviderError, match="not a JSON string") as info:
        await openai.complete(HELLO)
    assert info.value.hint


async def test_openai_streamed_broken_arguments_are_kept_on_the_call(
        openai: OpenAICompatibleProvider, wire: LLMWireServer) -> None:
    wire.plans.append(Plan(parts=openai_sse([
        stream_chunk({"tool_calls": [{"index": 0, "id": "s1", "function": {
            "name": "spy", "arguments": '{"a": '}}]}),
        stream_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "tru"}}]},
                     "tool_calls"),
    ])))
    items = [item async for item in openai.stream(HELLO)]
    assert "".join(i.arguments_text for i in items if isinstance(i, StreamDelta)) == \
        '{"a": tru'
    completion = items[-1]
    assert isinstance(completion, Completion)
    (call,) = completion.message.tool_calls
    assert (call.id, call.arguments, call.raw_arguments) == ("s1", {}, '{"a": tru')
    assert call.argument_error is not None and "not valid JSON" in call.argument_error


async def test_anthropic_keeps_a_call_whose_input_is_not_an_object(
        anthropic: AnthropicProvider, wire: LLMWireServer) -> None:
    wire.plans.append(body({"content": [
        {"type": "tool_use", "id": "t1", "name": "spy", "input": [1, 2]}],
        "stop_reason": "tool_use"}))
    (call,) = (await anthropic.complete(HELLO)).message.tool_calls
    assert (call.id, call.arguments, call.raw_arguments) == ("t1", {}, "[1,2]")
    assert call.argument_error == "a JSON array, not an object"


@pytest.mark.parametrize(("start_input", "partial", "raw", "problem"), [
    ({}, '{"a": tru', '{"a": tru', "not valid JSON"),
    ({}, "[1]", "[1]", "a JSON array, not an object"),
    ("oops", None, '"oops"', "a JSON string, not an object"),
])
async def test_anthropic_streamed_input_that_is_not_an_object_is_kept(
        anthropic: AnthropicProvider, wire: LLMWireServer, start_input: Any,
        partial: str | None, raw: str, problem: str) -> None:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"model": "claude-test", "usage": {}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "t1", "name": "spy",
                           "input": start_input}}]
    if partial is not None:
        events.append({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "input_json_delta", "partial_json": partial}})
    events.append({"type": "message_stop"})
    wire.plans.append(Plan(parts=anthropic_sse(events)))
    completion = [item async for item in anthropic.stream(HELLO)][-1]
    assert isinstance(completion, Completion)
    (call,) = completion.message.tool_calls
    assert (call.arguments, call.raw_arguments) == ({}, raw)
    assert call.argument_error is not None and problem in call.argument_error


async def test_an_agent_answers_broken_arguments_and_the_model_retries(
        system: System, openai: OpenAICompatibleProvider, wire: LLMWireServer) -> None:
    ran = spy_tool(system)
    wire.plans.extend([body(openai_call('{"a": 1,, "b": 2}', "bad")),
                       body(openai_call('{"a": 1, "b": 2}', "good")),
                       body(openai_text("done"))])
    agent = system.agents.create("retrier", provider=openai, tools=["spy"], max_turns=3)
    response = await agent.run("go")
    assert ran == [{"a": 1, "b": 2}]  # the broken call never ran; the retry did
    assert response.output == "done" and response.stop_reason == "final_answer"
    first = response.tool_calls[0]
    assert first["arguments"] == {} and first["raw_arguments"] == '{"a": 1,, "b": 2}'
    assert "not valid JSON" in first["error"] and "was not run" in first["error"]
    assert response.tool_calls[1]["result"] == "spied"
    # What the model was told, and how its broken call went back on the wire.
    second = wire.requests[1].body["messages"]
    assert second[-2]["tool_calls"][0]["function"]["arguments"] == "{}"
    answer = second[-1]
    assert answer["role"] == "tool" and answer["tool_call_id"] == "bad"
    assert "not valid JSON" in answer["content"]
    assert "send the arguments again as one JSON object" in answer["content"]
    assert '1,, ' in answer["content"]  # the broken text is quoted for the model
    msgspec.json.encode(response)  # the response (raw text and all) serializes


async def test_a_streamed_run_answers_broken_arguments_too(
        system: System, openai: OpenAICompatibleProvider, wire: LLMWireServer) -> None:
    ran = spy_tool(system)
    wire.plans.extend([
        Plan(parts=openai_sse([stream_chunk({"tool_calls": [{"index": 0, "id": "x", "function": {
            "name": "spy", "arguments": "{oops"}}]}, "tool_calls")])),
        Plan(parts=openai_sse([stream_chunk({"content": "gave up"}, "stop")]))])
    agent = system.agents.create("streamer", provider=openai, tools=["spy"])
    pieces = [piece async for piece in agent.stream("go")]
    response = pieces[-1]
    assert ran == [] and getattr(response, "output", None) == "gave up"
    assert "not valid JSON" in response.tool_calls[0]["error"]  # type: ignore[union-attr]


async def test_scripted_string_arguments_behave_like_a_real_provider(system: System) -> None:
    ran = spy_tool(system)
    provider = ScriptedProvider([
        {"tool_calls": [{"name": "spy", "arguments": "{broken", "id": "s1"},
                        {"name": "spy", "arguments": "[3]", "id": "s2"},
                        {"name": "spy", "arguments": '{"a": 7}', "id": "s3"}]},
        Message(role="assistant", tool_calls=(
            ToolCall(id="m1", name="spy", arguments='{"b": 8}'),  # type: ignore[arg-type]
            ToolCall(id="m2", name="spy", arguments="nope"))),  # type: ignore[arg-type]
        "done"])
    agent = system.agents.create("scripted", provider=provider, tools=["spy"])
    response = await agent.run("go")
    assert ran == [{"a": 7, "b": 0}, {"a": 0, "b": 8}]
    errors = [c.get("error", "") for c in response.tool_calls]
    assert "not valid JSON" in errors[0] and "a JSON array, not an object" in errors[1]
    assert "not valid JSON" in errors[4]
    assert [c.get("raw_arguments") for c in response.tool_calls] == \
        ["{broken", "[3]", None, None, "nope"]
    # Streaming plays back the text the script gave, as a real stream would.
    streamed = ScriptedProvider([{"tool_calls": [{"name": "spy", "arguments": "{broken"}]}])
    items = [item async for item in streamed.stream(HELLO)]
    assert [i.arguments_text for i in items if isinstance(i, StreamDelta)] == ["{broken"]
    with pytest.raises(InvalidValueError, match="arguments"):
        ScriptedProvider([{"tool_calls": [{"name": "spy", "arguments": [1]}]}])


async def test_events_and_rewriting_hooks_keep_the_problem(
        system: System, events: list[UniversalEvent]) -> None:
    ran = spy_tool(system)
    seen: list[dict[str, Any]] = []

    def rewrite(ctx: HookContext) -> Modified:
        result = ctx.data["result"]
        seen.extend(result["message"]["tool_calls"])
        return Modified({**ctx.data, "result": {**result, "message": dict(result["message"])}})

    system.registry.register(HookPoint.AFTER_MODEL_CALL, rewrite, name="rewrite")
    secret = "sk-" + "a1b2c3d4" * 4
    provider = ScriptedProvider([{"tool_calls": [
        {"name": "spy", "arguments": f'{{"key": "{secret}"', "id": "p"}]}, "done"])
    agent = system.agents.create("watched", provider=provider, tools=["spy"])
    response = await agent.run("go")
    assert ran == []  # the rewritten answer still carries the problem: the call is not run
    assert "not valid JSON" in response.tool_calls[0]["error"]
    assert seen[0]["argument_error"].startswith("not valid JSON")  # hooks see it all
    assert seen[0]["raw_arguments"] == f'{{"key": "{secret}"'
    completed = [e for e in events if e.event_type.endswith(".completed")
                 and e.event_type.startswith("model.")]
    recorded = completed[0].data["response"]["tool_calls"][0]
    assert recorded["argument_error"].startswith("not valid JSON")
    assert "raw_arguments" not in recorded  # the unmasked text stays out of events
    assert secret not in json.dumps([e.data for e in completed])


# -- 2. tool results the model reads are bounded ------------------------------------------

async def test_a_huge_tool_result_is_cut_before_the_model_reads_it(system: System) -> None:
    big = "x" * 5_000_000

    @tool()
    def dump() -> str:
        """Returns five megabytes."""
        return big

    system.tools.register(dump)
    provider = ScriptedProvider([{"tool_calls": [{"name": "dump", "arguments": {}}]},
                                 {"tool_calls": [{"name": "dump", "arguments": {}}]}, "done"])
    agent = system.agents.create("reader", provider=provider, tools=["dump"])
    assert agent.max_tool_result_chars == DEFAULT_MAX_TOOL_RESULT_CHARS == 100_000
    response = await agent.run("go")
    assert response.tool_calls[0]["result"] == big  # the tool's own result is whole
    last_request = provider.calls[-1][0]
    fed_back = [m.content or "" for m in last_request if m.role == "tool"]
    assert len(fed_back) == 2
    for content in fed_back:
        assert content.startswith('"xxx') and len(content) < 100_200
        assert f"the first 100000 of {len(big) + 2} characters are shown" in content
        assert f"{len(big) + 2 - 100_000} were cut" in content


async def test_the_limit_can_be_set_or_lifted(system: System) -> None:
    @tool()
    def word() -> str:
        """A short result."""
        return "abcdefghij"

    system.tools.register(word)

    async def fed_back(limit: int | None, name: str) -> str:
        provider = ScriptedProvider([{"tool_calls": [{"name": "word", "arguments": {}}]},
                                     "done"])
        agent = system.agents.create(name, provider=provider, tools=["word"],
                                     max_tool_result_chars=limit)
        await agent.run("go")
        return provider.calls[-1][0][-1].content or ""

    assert (await fed_back(None, "unbounded")) == '"abcdefghij"'
    assert (await fed_back(12, "exact")) == '"abcdefghij"'
    cut = await fed_back(5, "short")
    assert cut.startswith('"abcd\n[tool result cut: the first 5 of 12 characters')


@pytest.mark.parametrize("bad", [0, -1, True, "100", 1.5])
def test_a_bad_limit_is_refused(system: System, bad: Any) -> None:
    with pytest.raises(InvalidValueError, match="max_tool_result_chars") as info:
        system.agents.create("bad", provider=ScriptedProvider(["x"]),
                             max_tool_result_chars=bad)
    assert info.value.hint and "None: unbounded" in info.value.hint
    assert "bad" not in system.agents


# -- 3. the last turn ---------------------------------------------------------------------

@pytest.mark.parametrize("max_turns", [1, 2])
async def test_tool_calls_whose_results_cannot_be_seen_are_not_run(
        system: System, max_turns: int) -> None:
    ran = spy_tool(system)
    provider = ScriptedProvider(lambda m, t: {"content": "thinking", "tool_calls": [
        {"name": "spy", "arguments": {"a": len(m)}}]})
    agent = system.agents.create("limited", provider=provider, tools=["spy"],
                                 max_turns=max_turns)
    response = await agent.run("go")
    assert response.stop_reason == "turn_limit" and response.turns == max_turns
    assert len(ran) == max_turns - 1 == len(response.tool_calls)
    (unrun,) = response.unrun_tool_calls
    assert unrun["tool"] == "spy" and unrun["id"] and isinstance(unrun["arguments"], dict)
    assert response.output == "thinking"
    assert provider.call_count == max_turns


async def test_a_final_answer_at_the_last_turn_reports_nothing_unrun(system: System) -> None:
    agent = system.agents.create("quick", provider=ScriptedProvider(["hi"]), max_turns=1)
    response = await agent.run("go")
    assert (response.stop_reason, response.unrun_tool_calls) == ("final_answer", [])


# -- 4. scripts -----------------------------------------------------------------------------

async def test_scripts_pass_the_limits_through(system: System) -> None:
    host = ScriptHost(system)
    try:
        await host.run_lua_async("""
          Agent.create({name = "lua", model = "scripted/x", replies = {"a"},
                        max_tool_calls = 3, max_tool_result_chars = 1e3})
          Agent.create({name = "lua_unbounded", model = "scripted/x", replies = {"a"},
                        max_tool_result_chars = false})
        """)
        await host.run_js_async("""
          await Agent.create({name: "js", model: "scripted/x", replies: ["a"],
                              max_tool_calls: 4, max_tool_result_chars: null});
        """)
        limits = {name: (system.agents.get(name).max_tool_calls,
                         system.agents.get(name).max_tool_result_chars)
                  for name in ("lua", "lua_unbounded", "js")}
        assert limits == {"lua": (3, 1000), "lua_unbounded": (32, None), "js": (4, None)}
        for bad in ("max_tool_calls = 0", "max_tool_calls = false",
                    "max_tool_result_chars = 2.5", "max_tool_result_chars = 'big'"):
            with pytest.raises(ScriptError, match="must be a whole number >= 1"):
                await host.run_lua_async(
                    f'Agent.create({{name = "bad", model = "scripted/x", replies = {{"a"}}, '
                    f"{bad}}})")
            assert "bad" not in system.agents
        out = await host.run_lua_async("""
          local agent = Agent.create({name = "looper", model = "scripted/x", max_turns = 1,
              replies = {{tool_calls = {{name = "add", arguments = {a = 1, b = 2}}}}}})
          local answer = agent:execute({text = "go"})
          return {answer.stop_reason, answer.unrun_tool_calls[1].tool}
        """)
        assert out == ["turn_limit", "add"]
    finally:
        host.close()
