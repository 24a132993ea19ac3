"""Streaming in the providers (issue 13 part B), against a raw-socket server on 127.0.0.1
that speaks both wire protocols with and without ``stream: true`` and can cut a stream
anywhere: deltas in order, tool calls assembled, usage (cached and reasoning tokens),
Retry-After, a cut or malformed stream raising ProviderStreamError (never a partial
Completion), the size bound, and a property test of the SSE parser."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.errors import (
    ProviderError,
    ProviderResponseTooLargeError,
    ProviderStreamError,
)
from llmspell.runtime.providers import (
    AnthropicProvider,
    Completion,
    Message,
    OpenAICompatibleProvider,
    ScriptedProvider,
    StreamDelta,
    StreamingProvider,
    TokenUsage,
    ToolCall,
    ToolSpec,
)
from llmspell.runtime.providers.openai_compat import _retry_after
from llmspell.runtime.providers.sse import SSEEvent, SSEParser
from tests.runtime.llm_wire_server import (
    LLMWireServer,
    Plan,
    _wire,
    anthropic_sse,
    anthropic_stream_events,
    openai_sse,
    wire,
)

__all__ = ["_wire", "wire"]  # fixtures

CALCULATOR = ToolSpec(
    name="calculator",
    description="Evaluate an arithmetic expression.",
    parameters={"type": "object", "properties": {"expression": {"type": "string"}}},
)
HELLO = [Message(role="user", content="hello there")]
TOOL_PLEASE = [Message(role="user", content="use the tool to compute 6*7")]

# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def openai(wire: LLMWireServer) -> AsyncIterator[OpenAICompatibleProvider]:
    provider = OpenAICompatibleProvider("gpt-test", base_url=wire.url + "/v1", api_key="sk")
    yield provider
    await provider.aclose()


@pytest.fixture
async def anthropic(wire: LLMWireServer) -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider("claude-test", base_url=wire.url, api_key="ak")
    yield provider
    await provider.aclose()


async def collect(stream: AsyncIterator[StreamDelta | Completion]) -> list[Any]:
    return [item async for item in stream]


async def collect_until_error(
    stream: AsyncIterator[StreamDelta | Completion],
) -> tuple[list[Any], ProviderError]:
    items: list[Any] = []
    with pytest.raises(ProviderError) as info:
        async for item in stream:
            items.append(item)  # noqa: PERF401 (keep what arrived before the error)
    return items, info.value


def split(items: list[Any]) -> tuple[list[StreamDelta], Completion]:
    """The deltas and the one Completion, which must come last and only once."""
    *deltas, last = items
    assert isinstance(last, Completion)
    assert all(isinstance(d, StreamDelta) for d in deltas)
    return deltas, last


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"model": "gpt-test-0613", "choices": choices, **extra}


# -- the protocol --------------------------------------------------------------------------


async def test_every_provider_is_a_streaming_provider(
    openai: OpenAICompatibleProvider, anthropic: AnthropicProvider
) -> None:
    for provider in (openai, anthropic, ScriptedProvider(["x"])):
        assert isinstance(provider, StreamingProvider)


# -- OpenAI-compatible ---------------------------------------------------------------------


async def test_openai_streams_text_deltas_in_order(
    openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    deltas, completion = split(await collect(openai.stream(HELLO, temperature=0.5,
                                                           max_tokens=50)))

    assert [d.text for d in deltas] == ["echo: ", "hello ", "there"]
    assert all(d.tool_call_index is None for d in deltas)
    assert completion.message == Message(role="assistant", content="echo: hello there")
    assert completion.finish_reason == "stop"
    assert completion.model == "gpt-test-0613"
    assert completion.usage == TokenUsage(
        input_tokens=11, output_tokens=7, total_tokens=18, model="gpt-test-0613",
        provider="openai", cached_tokens=4, reasoning_tokens=2,
    )
    request = wire.requests[0]
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.body["temperature"] == 0.5 and request.body["max_tokens"] == 50
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["authorization"] == "Bearer sk"


async def test_openai_streamed_and_complete_answers_agree(
    openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    for conversation, tools in ((HELLO, ()), (TOOL_PLEASE, (CALCULATOR,))):
        whole = await openai.complete(conversation, tools=tools)
        _, streamed = split(await collect(openai.stream(conversation, tools=tools)))
        assert streamed == whole
    assert [r.body["stream"] for r in wire.requests] == [False, True, False, True]
    assert "stream_options" not in wire.requests[0].body


async def test_openai_stream_usage_can_be_left_out(wire: LLMWireServer) -> None:
    """For servers that reject stream_options: not sent, and the answer has no usage."""
    wire.plans.append(Plan(parts=_openai_parts()))
    async with OpenAICompatibleProvider("m", base_url=wire.url + "/v1",
                                        stream_usage=False) as provider:
        _, completion = split(await collect(provider.stream(HELLO)))
    assert "stream_options" not in wire.requests[0].body
    assert wire.requests[0].body["stream"] is True and completion.usage is None


async def test_openai_assembles_interleaved_tool_calls_by_index(
    openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    def call(index: int, arguments: str, **first: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
        if first:
            entry["id"] = first["id"]
            entry["type"] = "function"
            entry["function"]["name"] = first["name"]
        return chunk({"tool_calls": [entry]})

    wire.plans.append(Plan(parts=openai_sse([
        chunk({"role": "assistant", "content": None}),
        chunk({"content": "Computing."}),
        call(0, "", id="call_a", name="calculator"),
        call(0, '{"expr'),
        call(1, '{"expression"', id="call_b", name="calculator"),
        call(0, 'ession": "1+1"}'),
        call(1, ': "2*3"}'),
        chunk({}, "tool_calls"),
        chunk(usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}),
    ])))
    deltas, completion = split(await collect(openai.stream(TOOL_PLEASE, tools=[CALCULATOR])))

    assert deltas == [
        StreamDelta(text="Computing."),
        StreamDelta(tool_call_index=0, tool_call_id="call_a", tool_name="calculator"),
        StreamDelta(tool_call_index=0, arguments_text='{"expr'),
        StreamDelta(tool_call_index=1, tool_call_id="call_b", tool_name="calculator",
                    arguments_text='{"expression"'),
        StreamDelta(tool_call_index=0, arguments_text='ession": "1+1"}'),
        StreamDelta(tool_call_index=1, arguments_text=': "2*3"}'),
    ]
    assert completion.message.content == "Computing."
    assert completion.message.tool_calls == (
        ToolCall(id="call_a", name="calculator", arguments={"expression": "1+1"}),
        ToolCall(id="call_b", name="calculator", arguments={"expression": "2*3"}),
    )
    assert completion.finish_reason == "tool_calls"
    assert completion.usage is not None and completion.usage.total_tokens == 8
    assert completion.usage.cached_tokens == 0 and completion.usage.reasoning_tokens == 0
    for index, call_ in enumerate(completion.message.tool_calls):
        fragments = "".join(d.arguments_text for d in deltas if d.tool_call_index == index)
        assert json.loads(fragments) == call_.arguments


async def test_openai_lenient_stream_shapes(
    openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    """Servers that leave out tool-call indexes and ids, send whole argument objects,
    content parts, keep-alive comments, CRLF line ends, other choices, no usage."""
    parts = [
        b": keep-alive\r\n\r\n",
        *[p.replace(b"\n", b"\r\n") for p in openai_sse([
            chunk({"content": [{"type": "text", "text": "a"}, {"type": "image"}]}),
            {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
            chunk({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"x": 1}}}]}),
            chunk({"tool_calls": [{"function": {"name": "g"}}]}),
            chunk({"tool_calls": [{"id": "c2", "function": {"name": "h", "arguments": "{}"}}]}),
            chunk({"tool_calls": [{"id": "c1"}]}),
            {"choices": [{"index": 0, "delta": None}]},
        ], done=False)],
        b"data: [DONE]\r\n\r\n",
    ]
    wire.plans.append(Plan(parts=parts))
    deltas, completion = split(await collect(openai.stream(HELLO)))

    assert completion.model == "gpt-test-0613"
    assert completion.message.content == "a"
    assert completion.message.tool_calls == (
        ToolCall(id="c1", name="f", arguments={"x": 1}),
        ToolCall(id="c2", name="h", arguments={}),
    )
    assert completion.finish_reason == "tool_calls"
    assert completion.usage is None
    assert deltas[1] == StreamDelta(tool_call_index=0, tool_call_id="c1", tool_name="f",
                                    arguments_text='{"x":1}')


async def test_openai_stream_tool_call_without_a_name_is_refused(
    openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(parts=openai_sse([
        chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"arguments": "{}"}}]}),
    ])))
    items, error = await collect_until_error(openai.stream(HELLO))
    assert "without a function name" in str(error)
    assert not isinstance(error, ProviderStreamError) and not error.retryable
    assert not any(isinstance(i, Completion) for i in items)


async def test_openai_stream_broken_tool_arguments_are_kept_on_the_call(
    openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(parts=openai_sse([
        chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f",
                                                                   "arguments": "{nope"}}]}),
    ])))
    # The model's mistake, for the agent to answer: not a failed call.
    items = [item async for item in openai.stream(HELLO)]
    call = split(items)[1].message.tool_calls[0]
    assert (call.arguments, call.raw_arguments) == ({}, "{nope")
    assert call.argument_error is not None and "not valid JSON" in call.argument_error


async def test_usage_details_from_complete(
    openai: OpenAICompatibleProvider, anthropic: AnthropicProvider
) -> None:
    """Cached and reasoning tokens are read from non-streamed answers too; Anthropic's
    cache writes count as input, its cache reads are the cached tokens."""
    answer = await openai.complete(HELLO)
    assert answer.usage is not None
    assert (answer.usage.cached_tokens, answer.usage.reasoning_tokens) == (4, 2)
    answer = await anthropic.complete(HELLO)
    assert answer.usage == TokenUsage(input_tokens=25, output_tokens=5, total_tokens=30,
                                      model="claude-test", provider="anthropic",
                                      cached_tokens=3)


# -- Anthropic -----------------------------------------------------------------------------


async def test_anthropic_streams_text_and_tool_calls(
    anthropic: AnthropicProvider, wire: LLMWireServer
) -> None:
    deltas, completion = split(await collect(anthropic.stream(
        [Message(role="system", content="terse"), *TOOL_PLEASE], tools=[CALCULATOR],
        temperature=0.1, max_tokens=77,
    )))

    assert [d.text for d in deltas if d.text] == ["Let ", "me ", "compute ", "that."]
    tool_deltas = [d for d in deltas if d.tool_call_index is not None]
    assert tool_deltas[0] == StreamDelta(tool_call_index=0, tool_call_id="toolu_01",
                                         tool_name="calculator")
    assert json.loads("".join(d.arguments_text for d in tool_deltas)) == {"expression": "6*7"}
    assert all(d.tool_call_id is None for d in tool_deltas[1:])
    assert completion.message == Message(
        role="assistant", content="Let me compute that.",
        tool_calls=(ToolCall(id="toolu_01", name="calculator",
                             arguments={"expression": "6*7"}),),
    )
    assert completion.finish_reason == "tool_calls"
    assert completion.model == "claude-test"
    # input from message_start (cache reads and writes included), output from message_delta
    assert completion.usage == TokenUsage(input_tokens=25, output_tokens=5, total_tokens=30,
                                          model="claude-test", provider="anthropic",
                                          cached_tokens=3)
    body = wire.requests[0].body
    assert body["stream"] is True and body["system"] == "terse"
    assert body["max_tokens"] == 77 and body["temperature"] == 0.1
    assert await anthropic.complete(TOOL_PLEASE, tools=[CALCULATOR]) == completion


async def test_anthropic_stream_skips_what_it_does_not_hold(
    anthropic: AnthropicProvider, wire: LLMWireServer
) -> None:
    """Thinking blocks, signature deltas, pings, unknown events are skipped; a tool_use
    block that starts with its whole input keeps it; a stop reason passes through."""
    wire.plans.append(Plan(parts=anthropic_sse([
        {"type": "message_start", "message": {"model": "claude-x", "usage": {
            "input_tokens": 9, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "signature_delta", "signature": "sig"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "ping"},
        {"type": "future_event", "anything": [1, 2]},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "text", "text": "Hi"}},
        {"type": "content_block_start", "index": 2,
         "content_block": {"type": "tool_use", "id": "t1", "name": "calc",
                           "input": {"a": 1}}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "refusal"},
         "usage": {"output_tokens": 4, "input_tokens": None}},
        {"type": "message_stop"},
    ])))
    deltas, completion = split(await collect(anthropic.stream(HELLO)))
    assert deltas == [
        StreamDelta(text="Hi"),
        StreamDelta(tool_call_index=0, tool_call_id="t1", tool_name="calc",
                    arguments_text='{"a":1}'),
    ]
    assert completion.message.tool_calls == (ToolCall(id="t1", name="calc",
                                                      arguments={"a": 1}),)
    assert completion.finish_reason == "refusal"
    assert completion.model == "claude-x"
    assert completion.usage == TokenUsage(input_tokens=9, output_tokens=4, total_tokens=13,
                                          model="claude-x", provider="anthropic")


async def test_anthropic_stream_without_usage_or_stop_reason(
    anthropic: AnthropicProvider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(parts=anthropic_sse([
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "t", "name": "n", "input": {}}},
        {"type": "message_stop"},
    ])))
    _, completion = split(await collect(anthropic.stream(HELLO)))
    assert completion.finish_reason == "tool_calls" and completion.usage is None
    assert completion.message.tool_calls == (ToolCall(id="t", name="n", arguments={}),)


# -- cut and malformed streams -------------------------------------------------------------


def _openai_parts() -> list[bytes]:
    return openai_sse([chunk({"content": w}) for w in ("one ", "two ", "three")])


def _anthropic_parts() -> list[bytes]:
    return anthropic_sse(anthropic_stream_events(
        {"model": "claude-test", "messages": [{"role": "user", "content": "one two three"}]}
    ))


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("framing", "end", "drop"),
    [
        ("chunked", "cut", 2),               # closed between events, no chunked terminator
        ("chunked", "cut_inside_chunk", 2),  # closed inside a chunk
        ("chunked", "reset", 2),             # abortive close (RST)
        ("close", "complete", 2),            # close-delimited body: EOF before the marker
        ("chunked", "complete", 1),          # a whole HTTP body that lacks the end marker
    ],
)
async def test_a_cut_stream_raises_a_stream_error_not_a_completion(
    api: str, framing: str, end: str, drop: int, wire: LLMWireServer,
    openai: OpenAICompatibleProvider, anthropic: AnthropicProvider,
) -> None:
    parts = _openai_parts() if api == "openai" else _anthropic_parts()
    sent = parts[:-drop]
    if end == "cut_inside_chunk":
        sent = [*sent, parts[-drop][:9]]
    wire.plans.append(Plan(parts=sent, framing=framing, end=end))
    provider: OpenAICompatibleProvider | AnthropicProvider = (
        openai if api == "openai" else anthropic
    )

    items, error = await collect_until_error(provider.stream(HELLO))

    assert isinstance(error, ProviderStreamError)
    assert error.retryable and error.provider == api
    assert all(isinstance(item, StreamDelta) for item in items)  # never a Completion
    assert error.received_deltas == len(items) > 0
    assert 0 < error.received_bytes <= sum(len(p) for p in sent)
    assert f"after {error.received_bytes} bytes and {len(items)} deltas" in str(error)
    # the provider is still usable afterwards
    _, completion = split(await collect(provider.stream(HELLO)))
    assert completion.message.content == "echo: hello there"


@pytest.mark.parametrize(
    ("after", "end"),
    [
        ([], "stall"),                               # the body never ends after [DONE]
        ([b": " + b"x" * 70_000 + b"\n\n"], "complete"),  # a lot follows [DONE]
        ([b'data: {"not": "read"}\n\n'], "cut"),     # the connection breaks after it
    ],
)
async def test_what_follows_the_end_marker_does_not_matter(
    openai: OpenAICompatibleProvider, wire: LLMWireServer, after: list[bytes], end: str
) -> None:
    wire.plans.append(Plan(parts=[*_openai_parts(), *after], end=end))
    deltas, completion = split(await collect(openai.stream(HELLO)))
    assert completion.message.content == "one two three" and len(deltas) == 3


async def test_a_close_delimited_stream_may_end_without_its_last_blank_line(
    openai: OpenAICompatibleProvider, anthropic: AnthropicProvider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(parts=[*_openai_parts()[:-1], b"data: [DONE]"], framing="close"))
    _, completion = split(await collect(openai.stream(HELLO)))
    assert completion.message.content == "one two three"
    parts = _anthropic_parts()
    wire.plans.append(Plan(parts=[*parts[:-1], parts[-1].rstrip(b"\n")], framing="close"))
    _, completion = split(await collect(anthropic.stream(HELLO)))
    assert completion.message.content == "echo: one two three"


async def test_an_error_body_cut_short_still_gives_the_status(
    openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(status=503, content_type="application/json", framing="chunked",
                           end="cut", parts=[b'{"error": {"message": "over']))
    with pytest.raises(ProviderError) as info:
        await collect(openai.stream(HELLO))
    assert info.value.status == 503 and info.value.retryable
    assert not isinstance(info.value, ProviderStreamError)


async def test_a_stalled_stream_raises_a_stream_error(wire: LLMWireServer) -> None:
    wire.plans.append(Plan(parts=_openai_parts()[:2], end="stall"))
    async with OpenAICompatibleProvider("m", base_url=wire.url + "/v1",
                                        timeout=0.3) as provider:
        items, error = await collect_until_error(provider.stream(HELLO))
    assert isinstance(error, ProviderStreamError) and error.retryable
    assert "no data within the timeout" in str(error)
    assert [i.text for i in items] == ["one ", "two "]


@pytest.mark.parametrize(
    ("parts", "needle", "retryable"),
    [
        ([b"data: {not json\n\n"], "malformed chunk", True),
        ([b'data: {"choices": 5}\n\n'], "malformed chunk", True),
        ([b'data: {"choices": [{"delta": {"content": 7}}]}\n\n'], "malformed chunk", True),
        ([b'data: {"error": {"type": "server_error", "message": "model crashed"}}\n\n'],
         "server_error: model crashed", True),
        ([b'data: {"error": "plain"}\n\n'], "plain", True),
        ([b'data: {"error": [1]}\n\n'], "[1]", True),
        ([b'event: error\ndata: {"message": "boom"}\n\n'], "error event", True),
        ([b"data: \xff\xfe\n\n"], "malformed chunk", True),
    ],
)
async def test_openai_malformed_stream(
    openai: OpenAICompatibleProvider, wire: LLMWireServer, parts: list[bytes], needle: str,
    retryable: bool,
) -> None:
    wire.plans.append(Plan(parts=[*_openai_parts()[:1], *parts, b"data: [DONE]\n\n"]))
    items, error = await collect_until_error(openai.stream(HELLO))
    assert isinstance(error, ProviderStreamError)
    assert needle in str(error) and error.retryable is retryable
    assert items == [StreamDelta(text="one ")]


@pytest.mark.parametrize(
    ("event", "needle", "retryable"),
    [
        ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
         "overloaded_error: Overloaded", True),
        ({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}},
         "invalid_request_error: bad", False),
        ({"type": "content_block_delta", "index": 5,
          "delta": {"type": "input_json_delta", "partial_json": "{"}}, "no tool_use", True),
        ({"type": "content_block_delta", "delta": {"type": "text_delta"}}, "without index",
         True),
        ({"type": "content_block_start", "index": 3}, "without index or block", True),
        ({"type": "content_block_start", "index": 3,
          "content_block": {"type": "tool_use", "name": "x"}}, "without id or name", True),
        ({"type": "content_block_delta", "index": "zero"}, "malformed", True),
    ],
)
async def test_anthropic_error_and_malformed_events(
    anthropic: AnthropicProvider, wire: LLMWireServer, event: dict[str, Any], needle: str,
    retryable: bool,
) -> None:
    parts = _anthropic_parts()
    wire.plans.append(Plan(parts=[*parts[:4], *anthropic_sse([event]), *parts[4:]]))
    items, error = await collect_until_error(anthropic.stream(HELLO))
    assert isinstance(error, ProviderStreamError)
    assert needle in str(error) and error.retryable is retryable
    assert ("retry the call" in str(error)) is retryable
    assert [i.text for i in items] == ["echo: "]


async def test_anthropic_malformed_event_data(
    anthropic: AnthropicProvider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(parts=[b"event: message_start\ndata: {oops\n\n"]))
    _, error = await collect_until_error(anthropic.stream(HELLO))
    assert isinstance(error, ProviderStreamError)
    assert "malformed 'message_start' event" in str(error)


# -- errors before the stream starts -------------------------------------------------------


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (429, {"Retry-After": "2"}, 2.0),
        (503, {"Retry-After": "1.5"}, 1.5),
        (429, {"retry-after-ms": "250", "Retry-After": "1"}, 0.25),
        (408, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        (529, {"Retry-After": "soon"}, None),
        (500, {"Retry-After": "-3"}, None),
        (429, {"retry-after-ms": "nan", "Retry-After": "inf"}, None),
        (502, {}, None),
        (400, {"Retry-After": "5"}, None),  # not retryable: nothing to wait for
    ],
)
async def test_retry_after_is_parsed_into_the_error(
    api: str, streamed: bool, status: int, headers: dict[str, str],
    retry_after: float | None, wire: LLMWireServer,
    openai: OpenAICompatibleProvider, anthropic: AnthropicProvider,
) -> None:
    wire.plans.append(Plan(status=status, headers=headers, content_type="application/json",
                           framing="length",
                           parts=[b'{"error": {"type": "x", "message": "busy"}}']))
    provider: OpenAICompatibleProvider | AnthropicProvider = (
        openai if api == "openai" else anthropic
    )
    with pytest.raises(ProviderError) as info:
        if streamed:
            await collect(provider.stream(HELLO))
        else:
            await provider.complete(HELLO)
    error = info.value
    assert not isinstance(error, ProviderStreamError)
    assert error.status == status and error.retry_after == retry_after
    assert error.retryable is (status != 400)
    assert "busy" in str(error)
    if retry_after is not None:
        assert f"retry after {retry_after:g} s" in str(error)


def test_retry_after_http_date_counts_from_now() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    headers = httpx.Headers({"Retry-After": format_datetime(
        datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)})
    assert _retry_after(headers, now=now) == 30.0
    naive = httpx.Headers({"Retry-After": "Thu, 01 Jan 2026 12:01:00 -0000"})
    assert _retry_after(naive, now=now) == 60.0
    assert _retry_after(httpx.Headers({"retry-after-ms": "x", "Retry-After": "7"}),
                        now=now) == 7.0
    assert _retry_after(httpx.Headers({}), now=now) is None


async def test_a_json_answer_to_a_stream_request_is_a_clear_error(
    openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(content_type="application/json; charset=utf-8", framing="length",
                           parts=[b'{"message": "streaming unsupported"}']))
    with pytest.raises(ProviderError) as info:
        await collect(openai.stream(HELLO))
    assert "JSON instead of an event stream: streaming unsupported" in str(info.value)
    assert "complete()" in str(info.value) and not info.value.retryable


async def test_connection_refused_on_stream_is_a_plain_retryable_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with OpenAICompatibleProvider("m", base_url=f"http://127.0.0.1:{port}/v1") as p:
        with pytest.raises(ProviderError) as info:
            await collect(p.stream(HELLO))
    assert info.value.retryable and not isinstance(info.value, ProviderStreamError)


async def test_a_closed_provider_refuses_to_stream(wire: LLMWireServer) -> None:
    provider = OpenAICompatibleProvider("m", base_url=wire.url + "/v1")
    await provider.aclose()
    with pytest.raises(ProviderError, match="is closed"):
        await collect(provider.stream(HELLO))
    assert wire.requests == []


# -- bounds and resources ------------------------------------------------------------------


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_answers_are_bounded(api: str, wire: LLMWireServer) -> None:
    provider: OpenAICompatibleProvider | AnthropicProvider
    if api == "openai":
        provider = OpenAICompatibleProvider("m", base_url=wire.url + "/v1",
                                            max_response_bytes=300)
    else:
        provider = AnthropicProvider("m", base_url=wire.url, max_response_bytes=300)
    async with provider:
        # a stream that goes on and on: stopped at the limit, not read to its end
        words = [chunk({"content": "word "}) for _ in range(200)]
        events = [{"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": "word "}} for _ in range(200)]
        parts = openai_sse(words) if api == "openai" else anthropic_sse(
            [{"type": "content_block_start", "index": 0,
              "content_block": {"type": "text", "text": ""}}, *events])
        wire.plans.append(Plan(parts=parts))
        items, error = await collect_until_error(provider.stream(HELLO))
        assert isinstance(error, ProviderResponseTooLargeError) and error.limit == 300
        assert not error.retryable and "300-byte limit" in str(error)
        assert len(items) < 200 and all(isinstance(i, StreamDelta) for i in items)
        # a JSON body past the limit
        wire.plans.append(Plan(content_type="application/json", framing="length",
                               parts=[b'{"pad": "' + b"x" * 1000 + b'"}']))
        with pytest.raises(ProviderResponseTooLargeError):
            await provider.complete(HELLO)
        # an error body is quoted only in part, and never counts against the limit
        wire.plans.append(Plan(status=500, content_type="text/plain", framing="length",
                               parts=[b"e" * 200_000]))
        with pytest.raises(ProviderError) as info:
            await provider.complete(HELLO)
        assert info.value.status == 500 and len(str(info.value)) < 1000


def test_max_response_bytes_must_be_positive() -> None:
    from llmspell.errors import InvalidValueError

    for bad in (0, -1, True, 1.5):
        with pytest.raises(InvalidValueError, match="max_response_bytes"):
            OpenAICompatibleProvider("m", max_response_bytes=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError, match="max_response_bytes"):
            AnthropicProvider("m", max_response_bytes=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_stopping_early_hangs_up_at_once(
    api: str, wire: LLMWireServer, openai: OpenAICompatibleProvider,
    anthropic: AnthropicProvider,
) -> None:
    """A consumer that stops after the first delta and closes the stream releases the
    connection: the server sees the hang-up while it is still sending."""
    many = (openai_sse([chunk({"content": f"{i} "}) for i in range(300)]) if api == "openai"
            else anthropic_sse([{"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}},
                                *({"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": f"{i} "}}
                                  for i in range(300))]))
    wire.plans.append(Plan(parts=many, delay=0.01))
    provider: OpenAICompatibleProvider | AnthropicProvider = (
        openai if api == "openai" else anthropic
    )
    async with aclosing(provider.stream(HELLO)) as stream:  # type: ignore[type-var]
        first = await anext(stream)
    assert first == StreamDelta(text="0 ")
    assert wire.wait_for_abort(1)


async def test_the_connection_is_reused_after_a_stream(
    openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    before = wire.connections
    for _ in range(3):
        await collect(openai.stream(HELLO))
    await openai.complete(HELLO)
    assert len(wire.requests) == 4
    assert wire.connections - before <= 2  # not one connection per call


# -- the scripted provider -----------------------------------------------------------------


async def test_scripted_streams_words_then_tool_calls_then_the_completion() -> None:
    script: list[Any] = [
        "  Hello, streaming   world!\n",
        {"content": "Let me look.", "tool_calls": [
            {"name": "search", "arguments": {"q": "x"}},
            {"name": "calc", "arguments": {"e": "1+1"}, "id": "own"},
        ]},
        Completion(message=Message(role="assistant", content="fixed"), finish_reason="length",
                   model="m2"),
    ]
    streaming, plain = ScriptedProvider(list(script)), ScriptedProvider(list(script))

    deltas, first = split(await collect(streaming.stream(HELLO, tools=[CALCULATOR])))
    assert [d.text for d in deltas] == ["  Hello, ", "streaming   ", "world!\n"]
    assert first == await plain.complete(HELLO, tools=[CALCULATOR])

    deltas, second = split(await collect(streaming.stream(HELLO)))
    assert [d.text for d in deltas[:3]] == ["Let ", "me ", "look."]
    assert deltas[3:] == [
        StreamDelta(tool_call_index=0, tool_call_id="call_1", tool_name="search",
                    arguments_text='{"q":"x"}'),
        StreamDelta(tool_call_index=1, tool_call_id="own", tool_name="calc",
                    arguments_text='{"e":"1+1"}'),
    ]
    assert second == await plain.complete(HELLO)

    deltas, third = split(await collect(streaming.stream(HELLO)))
    assert [d.text for d in deltas] == ["fixed"] and third.finish_reason == "length"
    assert third == await plain.complete(HELLO)
    assert len(streaming.calls) == 3 and streaming.remaining == 0


async def test_scripted_stream_of_an_empty_reply_is_just_the_completion() -> None:
    provider = ScriptedProvider([Message(role="assistant")])
    items = await collect(provider.stream(HELLO))
    assert len(items) == 1 and isinstance(items[0], Completion)
    with pytest.raises(ProviderError, match="ran out of replies"):
        await collect(provider.stream(HELLO))


# -- the SSE parser ------------------------------------------------------------------------


def test_sse_parser_follows_the_event_stream_rules() -> None:
    parser = SSEParser()
    stream = (
        b": a comment\n"
        b"data: one\n\n"
        b"event: named\ndata:two\ndata:  three\nid: 7\nretry: 100\nunknown: x\n\n"
        b"data\n\n"                         # a data field without a colon: empty data
        b"event: nodata\n\n"                 # no data: not dispatched, the name resets
        b"data: after\n\n"
        b"data: \xc3\xa9t\xc3\xa9\r\n\r\n"   # UTF-8 and CRLF
        b"data: cr\r\rdata: tail"            # CR line ends; a tail without its blank line
    )
    events = parser.feed(stream)
    assert events == [
        SSEEvent("message", b"one"),
        SSEEvent("named", b"two\n three"),
        SSEEvent("message", b""),
        SSEEvent("message", b"after"),
        SSEEvent("message", "été".encode()),
        SSEEvent("message", b"cr"),
    ]
    assert parser.pending == len(b"data: tail")
    assert parser.close() == [SSEEvent("message", b"tail")]
    assert parser.close() == []


def test_sse_parser_joins_a_crlf_split_across_chunks() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []          # the \n completes the line end, no blank line
    assert parser.feed(b"\r\n") == [SSEEvent("message", b"a")]
    assert parser.feed(b"") == []


_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=12,
)


@st.composite
def _event_streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """A valid event stream (one line-end style, comments, ids, multi-line data,
    multi-byte characters) and the events it holds."""
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    lines: list[str] = []
    expected: list[SSEEvent] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            lines.append(":" + draw(_TEXT))
        name = draw(st.one_of(st.none(), _TEXT.filter(lambda t: t[:1] != " ")))
        if name is not None:
            lines.append("event: " + name)
        data = draw(st.lists(_TEXT, min_size=1, max_size=3))
        for value in data:
            # one optional space after the colon is dropped: a value starting with a
            # space needs it
            space = " " if value[:1] == " " else draw(st.sampled_from(["", " "]))
            lines.append("data:" + space + value)
        if draw(st.booleans()):
            lines.append("id: " + draw(_TEXT))
        lines.append("")
        expected.append(SSEEvent(name or "message", "\n".join(data).encode()))
    return "".join(line + end for line in lines).encode(), expected


@settings(max_examples=300, deadline=None)
@given(stream=_event_streams(), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_sse_parser_gives_the_same_events_for_any_split(
    stream: tuple[bytes, list[SSEEvent]], cuts: list[int]
) -> None:
    raw, expected = stream
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    parser = SSEParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    events += parser.close()
    assert events == expected
    whole = SSEParser()
    assert [*whole.feed(raw), *whole.close()] == expected
