"""The HTTP providers against a hostile or broken server (or proxy) on 127.0.0.1: event
streams cut and framed in odd ways, chunks of the wrong shape, JSON nested past the
recursion limit, absurd usage, compression bombs, redirects to another host, answers
trickled within the read timeout, and secrets (the API key, credentials in base_url)
echoed back into errors, logs and reprs."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import socket
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from llmspell.errors import (
    ConfigurationError,
    InvalidValueError,
    ProviderError,
    ProviderResponseTooLargeError,
    ProviderStreamError,
)
from llmspell.runtime.providers import (
    AnthropicProvider,
    Completion,
    Message,
    OpenAICompatibleProvider,
    ProviderConfig,
    StreamDelta,
    provider_from_config,
    provider_from_env,
)
from tests.runtime.llm_wire_server import (
    LLMWireServer,
    Plan,
    _wire,
    anthropic_sse,
    openai_sse,
    wire,
)

__all__ = ["_wire", "wire"]  # fixtures

HELLO = [Message(role="user", content="hello")]
KEY = "sk-hostile-test-key-0123456789"
DEEP = b"[" * 100_000 + b"]" * 100_000  # past msgspec's recursion limit
MIB = 1024 * 1024

Provider = OpenAICompatibleProvider | AnthropicProvider


def make(api: str, wire: LLMWireServer, **options: Any) -> Provider:
    if api == "openai":
        return OpenAICompatibleProvider("gpt-test", base_url=wire.url + "/v1", **options)
    return AnthropicProvider("claude-test", base_url=wire.url, **options)


@pytest.fixture(params=["openai", "anthropic"])
async def provider(request: pytest.FixtureRequest, wire: LLMWireServer
                   ) -> AsyncIterator[Provider]:
    made = make(request.param, wire, api_key=KEY)
    yield made
    await made.aclose()


@pytest.fixture
async def openai(wire: LLMWireServer) -> AsyncIterator[OpenAICompatibleProvider]:
    made = OpenAICompatibleProvider("gpt-test", base_url=wire.url + "/v1", api_key=KEY)
    yield made
    await made.aclose()


async def collect(stream: AsyncIterator[StreamDelta | Completion]) -> list[Any]:
    return [item async for item in stream]


def body(answer: dict[str, Any], **options: Any) -> Plan:
    return Plan(parts=[json.dumps(answer).encode()], content_type="application/json",
                framing="length", **options)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"model": "gpt-test", "choices": choices, **extra}


def is_openai(provider: Provider) -> bool:
    return isinstance(provider, OpenAICompatibleProvider)


def good_stream(provider: Provider, text: str = "héllo wörld ✓") -> list[bytes]:
    """A whole, well-formed stream answering ``text``."""
    if is_openai(provider):
        return openai_sse([chunk({"content": text}), chunk({}, "stop")])
    return anthropic_sse([
        {"type": "message_start", "message": {"model": "claude-test", "usage": {}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": text}},
        {"type": "message_stop"},
    ])


def good_body(provider: Provider, text: str = "hi") -> dict[str, Any]:
    if is_openai(provider):
        return {"choices": [{"message": {"role": "assistant", "content": text}}]}
    return {"content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}


# -- event streams: framing ----------------------------------------------------------------


async def test_a_stream_split_at_every_byte_still_assembles(
    provider: Provider, wire: LLMWireServer
) -> None:
    # One byte per chunk: splits inside "data:", inside a multi-byte UTF-8 character and
    # between the \r and \n of a line end.
    raw = b"".join(good_stream(provider)).replace(b"\n", b"\r\n")
    wire.plans.append(Plan(parts=[raw[i:i + 1] for i in range(len(raw))]))
    items = await collect(provider.stream(HELLO))
    assert isinstance(items[-1], Completion)
    assert items[-1].message.content == "héllo wörld ✓"


async def test_cr_only_line_ends_comments_and_empty_events_are_read(
    provider: Provider, wire: LLMWireServer
) -> None:
    noise = b": keep-alive\r" + b"\r" * 5000 + b"id: 7\rretry: 10\rnonsense\r\r"
    raw = noise + b"".join(good_stream(provider)).replace(b"\n", b"\r")
    wire.plans.append(Plan(parts=[raw]))
    items = await collect(provider.stream(HELLO))
    assert items[-1].message.content == "héllo wörld ✓"


async def test_a_line_that_never_ends_is_bounded(wire: LLMWireServer) -> None:
    provider = OpenAICompatibleProvider("m", base_url=wire.url + "/v1",
                                        max_response_bytes=MIB)
    wire.plans.append(Plan(parts=[b"data: " + b"x" * (256 * 1024)] * 8))
    with pytest.raises(ProviderResponseTooLargeError):
        await collect(provider.stream(HELLO))
    await provider.aclose()


async def test_a_stream_without_its_end_marker_is_an_error_not_an_answer(
    provider: Provider, wire: LLMWireServer
) -> None:
    parts = good_stream(provider)[:-1]  # drop [DONE] / message_stop
    wire.plans.append(Plan(parts=parts))
    with pytest.raises(ProviderStreamError) as info:
        await collect(provider.stream(HELLO))
    assert info.value.retryable


@pytest.mark.parametrize("data", [
    {"choices": None},
    {"choices": [{"index": 0, "delta": None}]},
    {"choices": [{"index": 0, "delta": {"content": None}}]},
    {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
    {"choices": [], "usage": None},
])
async def test_openai_chunks_of_odd_but_harmless_shape_are_skipped(
    data: dict[str, Any], openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(parts=openai_sse([data, chunk({"content": "ok"})])))
    items = await collect(openai.stream(HELLO))
    assert items[-1].message.content == "ok"


@pytest.mark.parametrize("data", [
    {"choices": [{"index": 0, "delta": {"content": 42}}]},
    {"choices": {"0": {}}},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "x"}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"name": "f", "arguments": 5}}]}}]},
    [1, 2],
])
async def test_openai_chunks_of_the_wrong_shape_are_a_stream_error(
    data: Any, openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(parts=[b"data: " + json.dumps(data).encode() + b"\n\n"]))
    with pytest.raises(ProviderStreamError, match="malformed chunk"):
        await collect(openai.stream(HELLO))


async def test_tool_call_indices_huge_negative_and_out_of_order(
    openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    def call(index: int, **fields: Any) -> dict[str, Any]:
        return chunk({"tool_calls": [{"index": index, **fields}]})

    wire.plans.append(Plan(parts=openai_sse([
        call(10**9, id="a", function={"name": "first", "arguments": '{"x"'}),
        call(-3, id="b", function={"name": "second", "arguments": "{}"}),
        call(10**9, function={"arguments": ": 1}"}),
    ])))
    items = await collect(openai.stream(HELLO))
    calls = items[-1].message.tool_calls
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("a", "first", {"x": 1}), ("b", "second", {})]
    assert {d.tool_call_index for d in items[:-1]} == {0, 1}


async def test_arguments_that_never_become_json_are_kept_with_their_error(
    provider: Provider, wire: LLMWireServer
) -> None:
    if is_openai(provider):
        parts = openai_sse([chunk({"tool_calls": [
            {"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"a": tru'}}]})])
    else:
        parts = anthropic_sse([
            {"type": "content_block_start", "index": 0,
             "content_block": {"type": "tool_use", "id": "c", "name": "f", "input": {}}},
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "input_json_delta", "partial_json": '{"a": tru'}},
            {"type": "message_stop"},
        ])
    wire.plans.append(Plan(parts=parts))
    call = (await collect(provider.stream(HELLO)))[-1].message.tool_calls[0]
    assert (call.arguments, call.raw_arguments) == ({}, '{"a": tru')
    assert call.argument_error is not None and "not valid JSON" in call.argument_error


# -- JSON nested past the recursion limit ---------------------------------------------------


async def test_a_deeply_nested_stream_event_is_a_stream_error(
    provider: Provider, wire: LLMWireServer
) -> None:
    event = b"event: message_delta\n" if not is_openai(provider) else b""
    wire.plans.append(Plan(parts=[event + b'data: {"usage": {"a": ' + DEEP + b"}}\n\n"]))
    with pytest.raises(ProviderStreamError, match="malformed"):
        await collect(provider.stream(HELLO))


async def test_a_deeply_nested_body_is_a_provider_error(
    provider: Provider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(parts=[b'{"choices": ' + DEEP + b"}"],
                           content_type="application/json", framing="length"))
    with pytest.raises(ProviderError, match="nested too deeply") as info:
        await provider.complete(HELLO)
    assert not info.value.retryable and info.value.status == 200


async def test_a_deeply_nested_error_body_still_gives_the_status(
    provider: Provider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(status=503, parts=[b'{"error": ' + DEEP + b"}"],
                           content_type="application/json", framing="length"))
    with pytest.raises(ProviderError) as info:
        await provider.complete(HELLO)
    assert info.value.status == 503 and info.value.retryable


async def test_deeply_nested_tool_arguments_are_kept_with_their_error(
    openai: OpenAICompatibleProvider, wire: LLMWireServer
) -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function",
         "function": {"name": "f", "arguments": DEEP.decode()}}]}
    wire.plans.append(body({"choices": [{"message": message}]}))
    call = (await openai.complete(HELLO)).message.tool_calls[0]
    assert call.arguments == {}
    assert call.argument_error == "not valid JSON (nested too deeply)"


# -- absurd usage, empty tool names, huge error messages ------------------------------------


@pytest.mark.parametrize(("reported", "expected"), [
    (-1000, 0),
    (10**30, 2**63 - 1),
    (12.0, 12),
    (12.5, 0),
    ("12", 0),
    (True, 0),
    (None, 0),
])
async def test_usage_counts_are_never_negative_or_unbounded(
    reported: Any, expected: int, provider: Provider, wire: LLMWireServer
) -> None:
    answer = good_body(provider)
    if is_openai(provider):
        answer["usage"] = {"prompt_tokens": reported, "completion_tokens": reported,
                           "prompt_tokens_details": {"cached_tokens": reported}}
    else:
        answer["usage"] = {"input_tokens": reported, "output_tokens": reported,
                           "cache_read_input_tokens": reported}
    wire.plans.append(body(answer))
    usage = (await provider.complete(HELLO)).usage
    assert usage is not None
    assert 0 <= usage.input_tokens <= 2**63 - 1 and 0 <= usage.total_tokens <= 2**63 - 1
    assert usage.output_tokens == expected and usage.cached_tokens == expected
    assert usage.total_tokens == min(usage.input_tokens + usage.output_tokens, 2**63 - 1)


async def test_a_tool_call_with_an_empty_name_is_refused(
    provider: Provider, wire: LLMWireServer
) -> None:
    if is_openai(provider):
        answer: dict[str, Any] = {"choices": [{"message": {"content": None, "tool_calls": [
            {"id": "c", "function": {"name": "", "arguments": "{}"}}]}}]}
    else:
        answer = {"content": [{"type": "tool_use", "id": "c", "name": "", "input": {}}]}
    wire.plans.append(body(answer))
    with pytest.raises(ProviderError, match="malformed"):
        await provider.complete(HELLO)


async def test_an_error_message_is_quoted_not_copied_whole(
    provider: Provider, wire: LLMWireServer
) -> None:
    huge = "spam " * 10_000
    wire.plans.append(body({"error": {"type": "x", "message": huge}}, status=400))
    with pytest.raises(ProviderError) as info:
        await provider.complete(HELLO)
    assert "spam" in str(info.value) and len(str(info.value)) < 1000
    wire.plans.append(Plan(parts=[b"event: error\ndata: " + json.dumps(
        {"type": "error", "error": {"type": "x", "message": huge}}).encode() + b"\n\n"]))
    with pytest.raises(ProviderStreamError) as stream_info:
        await collect(provider.stream(HELLO))
    assert "spam" in str(stream_info.value) and len(str(stream_info.value)) < 1000


# -- bodies that are not what they say -------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"<html><body>Sign in</body></html>", b"null", b"[]"])
async def test_a_body_that_is_not_an_answer_is_a_final_error(
    raw: bytes, provider: Provider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(parts=[raw] if raw else [], content_type="text/html",
                           framing="length"))
    with pytest.raises(ProviderError) as info:
        await provider.complete(HELLO)
    assert not info.value.retryable


async def test_a_web_page_answering_a_stream_is_a_final_error(
    provider: Provider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(parts=[b"<html><body>Sign in to the proxy</body></html>"],
                           content_type="text/html; charset=utf-8"))
    with pytest.raises(ProviderError, match="web page") as info:
        await collect(provider.stream(HELLO))
    assert not isinstance(info.value, ProviderStreamError)
    assert not info.value.retryable and "Sign in" in str(info.value)


# -- compression -----------------------------------------------------------------------------


def _deflate(data: bytes, *, raw: bool) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate", "identity"])
async def test_compressed_answers_are_read(
    coding: str, provider: Provider, wire: LLMWireServer
) -> None:
    def pack(data: bytes) -> bytes:
        if coding == "gzip":
            return gzip.compress(data)
        if coding == "identity":
            return data
        return _deflate(data, raw=coding == "raw-deflate")

    header = {"Content-Encoding": coding.removeprefix("raw-")}
    wire.plans.append(Plan(parts=[pack(json.dumps(good_body(provider)).encode())],
                           headers=header, content_type="application/json",
                           framing="length"))
    assert (await provider.complete(HELLO)).message.content == "hi"
    raw = pack(b"".join(good_stream(provider)))
    wire.plans.append(Plan(parts=[raw[i:i + 7] for i in range(0, len(raw), 7)],
                           headers=header))
    items = await collect(provider.stream(HELLO))
    assert items[-1].message.content == "héllo wörld ✓"


async def test_only_codings_that_can_be_undone_in_bounded_pieces_are_asked_for(
    provider: Provider, wire: LLMWireServer
) -> None:
    client = httpx.AsyncClient(headers={"Accept-Encoding": "br, zstd, gzip"})
    provider._client, provider._owns_client = client, True
    wire.plans.append(body(good_body(provider)))
    await provider.complete(HELLO)
    assert wire.requests[-1].headers["accept-encoding"] == "gzip, deflate"


def _zstd_bomb(size: int) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    packed: bytes = zstandard.ZstdCompressor().compress(b"\0" * size)
    return packed


@pytest.mark.parametrize("bomb", ["gzip", "gzip, gzip", "zstd"])
async def test_a_compression_bomb_never_expands_in_memory(
    bomb: str, wire: LLMWireServer
) -> None:
    size = 24 * MIB
    if bomb == "zstd":
        packed = _zstd_bomb(size)
    else:
        packed = gzip.compress(b"\0" * size)
        if bomb == "gzip, gzip":
            packed = gzip.compress(packed)
    provider = OpenAICompatibleProvider("m", base_url=wire.url + "/v1",
                                        max_response_bytes=MIB)
    wire.plans.append(Plan(parts=[packed], headers={"Content-Encoding": bomb},
                           content_type="application/json", framing="length"))
    tracemalloc.start()
    try:
        with pytest.raises(ProviderError) as info:
            await provider.complete(HELLO)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        await provider.aclose()
    assert peak < 8 * MIB
    if bomb == "gzip":
        assert isinstance(info.value, ProviderResponseTooLargeError)
    else:
        assert "content-encoding" in str(info.value) and not info.value.retryable


async def test_a_compression_bomb_in_a_stream_is_bounded(wire: LLMWireServer) -> None:
    provider = AnthropicProvider("m", base_url=wire.url, max_response_bytes=MIB)
    packed = gzip.compress(b": " + b"\0" * (24 * MIB))
    wire.plans.append(Plan(parts=[packed], headers={"Content-Encoding": "gzip"}))
    tracemalloc.start()
    try:
        with pytest.raises(ProviderResponseTooLargeError):
            await collect(provider.stream(HELLO))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        await provider.aclose()
    assert peak < 8 * MIB


async def test_a_corrupt_compressed_body_is_a_provider_error(
    provider: Provider, wire: LLMWireServer
) -> None:
    wire.plans.append(Plan(parts=[b"\x1f\x8b\x08\x00garbage-garbage"],
                           headers={"Content-Encoding": "gzip"},
                           content_type="application/json", framing="length"))
    with pytest.raises(ProviderError, match="DecodingError"):
        await provider.complete(HELLO)


# -- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_redirect_to_another_host_is_not_followed_with_the_key(
    api: str, streamed: bool, wire: LLMWireServer
) -> None:
    # Even a client that follows redirects must not take the key along: httpx drops only
    # Authorization on a cross-origin redirect, not x-api-key or a custom key header.
    with LLMWireServer() as elsewhere:
        target = elsewhere.url + "/v1/x?token=abc"
        wire.plans.append(Plan(status=307, headers={"Location": target}, framing="length"))
        client = httpx.AsyncClient(follow_redirects=True)
        options: dict[str, Any] = {"client": client}
        if api == "openai":
            options["extra_headers"] = {"api-key": KEY}
        else:
            options["api_key"] = KEY
        provider = make(api, wire, **options)
        with pytest.raises(ProviderError, match="redirect") as info:
            if streamed:
                await collect(provider.stream(HELLO))
            else:
                await provider.complete(HELLO)
        await client.aclose()
        assert elsewhere.requests == []
    assert info.value.status == 307 and not info.value.retryable
    assert target in str(info.value)


@pytest.fixture(params=["openai", "anthropic"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- time: deadlines -------------------------------------------------------------------------


async def test_a_trickled_answer_hits_the_deadline(
    api: str, wire: LLMWireServer
) -> None:
    # Each byte arrives well within the read timeout; only a total deadline ends it.
    provider = make(api, wire, timeout=5.0, deadline=0.3)
    wire.plans.append(Plan(parts=[b" "] * 200, delay=0.02, content_type="application/json",
                           framing="length"))
    with pytest.raises(ProviderError, match="deadline") as info:
        await provider.complete(HELLO)
    assert info.value.retryable and not isinstance(info.value, ProviderStreamError)
    wire.plans.append(Plan(parts=[b": keep-alive\n"] * 200, delay=0.02))
    with pytest.raises(ProviderStreamError, match="deadline") as stream_info:
        await collect(provider.stream(HELLO))
    assert stream_info.value.retryable
    await provider.aclose()


async def test_a_server_that_never_answers_hits_the_deadline(api: str) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(listener.accept()[0]),
                                 daemon=True)
    accepting.start()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    provider = (OpenAICompatibleProvider("m", base_url=base + "/v1", timeout=30,
                                         deadline=0.2)
                if api == "openai" else
                AnthropicProvider("m", base_url=base, timeout=30, deadline=0.2))
    try:
        with pytest.raises(ProviderError, match="deadline") as info:
            await collect(provider.stream(HELLO))
        assert info.value.retryable
    finally:
        await provider.aclose()
        accepting.join(5)
        for conn in held:
            conn.close()
        listener.close()


async def test_the_deadline_can_be_turned_off(wire: LLMWireServer) -> None:
    provider = OpenAICompatibleProvider("m", base_url=wire.url + "/v1", deadline=None)
    assert (await provider.complete(HELLO)).message.content == "echo: hello"
    await provider.aclose()


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "10"])
def test_bad_deadlines_are_refused(bad: Any) -> None:
    with pytest.raises(InvalidValueError, match="deadline"):
        OpenAICompatibleProvider("m", deadline=bad)
    with pytest.raises(InvalidValueError, match="deadline"):
        AnthropicProvider("m", deadline=bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_timeouts_that_are_not_finite_are_refused(bad: float) -> None:
    with pytest.raises(InvalidValueError, match="timeout"):
        OpenAICompatibleProvider("m", timeout=bad)
    with pytest.raises(InvalidValueError, match="timeout"):
        AnthropicProvider("m", timeout=bad)


async def test_the_deadline_is_configurable() -> None:
    env = {"LLMSPELL_PROVIDER": "openai", "LLMSPELL_MODEL": "m",
           "LLMSPELL_BASE_URL": "http://127.0.0.1:9/v1"}
    for text, expected in (("none", None), ("NONE", None), ("45", 45.0), ("", 1800.0)):
        made = provider_from_env(environ={**env, "LLMSPELL_DEADLINE": text})
        assert isinstance(made, OpenAICompatibleProvider)
        assert made._deadline == expected
        await made.aclose()
    with pytest.raises(ConfigurationError, match="LLMSPELL_DEADLINE"):
        provider_from_env(environ={**env, "LLMSPELL_DEADLINE": "soon"})
    with pytest.raises(ConfigurationError, match="deadline"):
        provider_from_config(ProviderConfig(kind="anthropic", model="m", deadline=-1,
                                            base_url="http://127.0.0.1:9"))
    made = provider_from_config(ProviderConfig(kind="anthropic", model="m", deadline=5,
                                               base_url="http://127.0.0.1:9"))
    assert isinstance(made, AnthropicProvider) and made._deadline == 5
    await made.aclose()


# -- secrets ---------------------------------------------------------------------------------


async def test_a_key_echoed_by_the_server_is_kept_out_of_errors(
    provider: Provider, wire: LLMWireServer
) -> None:
    echo = json.dumps({"error": {"type": "authentication_error",
                                 "message": f"invalid key {KEY}"}}).encode()
    wire.plans.append(Plan(status=401, parts=[echo], content_type="application/json",
                           framing="length"))
    with pytest.raises(ProviderError) as info:
        await provider.complete(HELLO)
    assert info.value.status == 401
    wire.plans.append(Plan(parts=[b"event: error\ndata: " + echo + b"\n\n"]))
    with pytest.raises(ProviderStreamError) as stream_info:
        await collect(provider.stream(HELLO))
    wire.plans.append(Plan(parts=[f"data: not json {KEY}\n\n".encode()]))
    with pytest.raises(ProviderStreamError) as malformed_info:
        await collect(provider.stream(HELLO))
    for error in (info.value, stream_info.value, malformed_info.value):
        text = f"{error} {error.message} {error.hint} {error.args}"
        assert KEY not in text and "***" in text


async def test_credentials_in_base_url_are_used_but_never_shown(
    api: str, wire: LLMWireServer, caplog: pytest.LogCaptureFixture
) -> None:
    password = "p@ss:w0rd-secret"
    quoted = "p%40ss%3Aw0rd-secret"
    base = f"http://alice:{quoted}@127.0.0.1:{wire.port}" + ("/v1" if api == "openai" else "")
    provider = (OpenAICompatibleProvider("m", base_url=base) if api == "openai"
                else AnthropicProvider("m", base_url=base))
    assert password not in repr(provider) and quoted not in repr(provider)
    echo = f'{{"error": "no such route for {password} / {quoted}"}}'.encode()
    wire.plans.append(Plan(status=404, parts=[echo], content_type="application/json",
                           framing="length"))
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderError) as info:
        await provider.complete(HELLO)
    sent = wire.requests[-1].headers["authorization"]
    assert base64.b64decode(sent.removeprefix("Basic ")).decode() == f"alice:{password}"
    shown = f"{info.value} {info.value.hint} " + " ".join(r.getMessage() for r in caplog.records)
    for secret in (password, quoted, sent.removeprefix("Basic ")):
        assert secret not in shown
    assert "127.0.0.1" in shown
    await provider.aclose()


def test_credentials_in_base_url_stay_out_of_config_errors_and_reprs() -> None:
    config = ProviderConfig(kind="openai", model="m", base_url="ftp://bob:hunter2secret@h/v1")
    assert "hunter2secret" not in repr(config)
    with pytest.raises(ConfigurationError) as info:
        provider_from_config(config, environ={})
    assert "hunter2secret" not in str(info.value) and "***@h" in str(info.value)


async def test_secret_extra_headers_are_kept_out_of_errors(wire: LLMWireServer) -> None:
    provider = OpenAICompatibleProvider(
        "m", base_url=wire.url + "/v1",
        extra_headers={"api-key": "azure-secret-value", "X-Title": "my-app-title"})
    wire.plans.append(body({"error": "bad azure-secret-value for my-app-title"}, status=400))
    with pytest.raises(ProviderError) as info:
        await provider.complete(HELLO)
    assert "azure-secret-value" not in str(info.value)
    assert "my-app-title" in str(info.value)  # not a secret: left as it is
    await provider.aclose()
