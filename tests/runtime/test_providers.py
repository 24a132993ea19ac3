"""Providers end to end against small local fakes of the two wire protocols.

One stdlib HTTP server on 127.0.0.1 (port 0) speaks both OpenAI chat completions
(``/v1/chat/completions``) and Anthropic messages (``/v1/messages``): it records every
request, asks for a tool when the user asks for one, answers after a tool result, reports
usage, and can be told to fail (a status, a non-JSON body, a slow answer, ...).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import pytest

from llmspell.errors import ConfigurationError, InvalidValueError, ProviderError
from llmspell.runtime.providers import (
    PROVIDER_KINDS,
    AnthropicProvider,
    Completion,
    Message,
    OpenAICompatibleProvider,
    Provider,
    ProviderConfig,
    ScriptedProvider,
    TokenUsage,
    ToolCall,
    ToolSpec,
    provider_from_config,
    provider_from_env,
)

CALCULATOR = ToolSpec(
    name="calculator",
    description="Evaluate an arithmetic expression.",
    parameters={
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
)

# -- the fake server -----------------------------------------------------------------------


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeState:
    requests: list[Recorded] = field(default_factory=list)
    mode: str = "ok"
    status: int = 200
    canned: Any = None
    release: threading.Event = field(default_factory=threading.Event)


def _openai_answer(body: dict[str, Any], mode: str) -> dict[str, Any]:
    messages = body["messages"]
    last = messages[-1]
    message: dict[str, Any]
    if mode == "bad_args" or (
        last["role"] == "user" and "tool" in last["content"] and body.get("tools")
    ):
        arguments = "{not json" if mode == "bad_args" else json.dumps({"expression": "6*7"})
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{
                "id": "call_abc",
                "type": "function",
                "function": {"name": body["tools"][0]["function"]["name"],
                             "arguments": arguments},
            }],
        }
        finish = "tool_calls"
    elif last["role"] == "tool":
        message = {"role": "assistant", "content": f"The result is {last['content']}."}
        finish = "stop"
    else:
        message = {"role": "assistant", "content": f"echo: {last['content']}"}
        finish = "stop"
    prompt = 11 * len(messages)
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": body["model"] + "-0613",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": 7, "total_tokens": prompt + 7},
    }


def _anthropic_answer(body: dict[str, Any]) -> dict[str, Any]:
    last = body["messages"][-1]
    content: list[dict[str, Any]]
    if isinstance(last["content"], list) and last["content"][0]["type"] == "tool_result":
        results = ", ".join(b["content"] for b in last["content"])
        content = [{"type": "text", "text": f"The results are {results}."}]
        stop = "end_turn"
    elif "tool" in str(last["content"]) and body.get("tools"):
        content = [
            {"type": "text", "text": "Let me compute that."},
            {"type": "tool_use", "id": "toolu_01", "name": body["tools"][0]["name"],
             "input": {"expression": "6*7"}},
        ]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": f"echo: {last['content']}"}]
        stop = "end_turn"
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop,
        "usage": {"input_tokens": 20, "output_tokens": 5, "cache_read_input_tokens": 3},
    }


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        state = self.server.state
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw)
        state.requests.append(Recorded(self.path, {k.lower(): v for k, v in
                                                   self.headers.items()}, body))
        anthropic = self.path == "/v1/messages"
        if state.mode == "slow":
            state.release.wait(5)
        if state.mode == "status":
            payload: Any = (
                {"type": "error", "error": {"type": "overloaded_error",
                                            "message": f"simulated {state.status}"}}
                if anthropic
                else {"error": {"message": f"simulated {state.status}", "type": "x"}}
            )
            self._send(state.status, json.dumps(payload).encode(), {"Retry-After": "2"})
        elif state.mode == "canned":
            self._send(state.status, json.dumps(state.canned).encode(), {})
        elif state.mode == "bad_gzip":
            self._send(200, b"not gzip at all", {"Content-Encoding": "gzip"})
        elif state.mode == "html_error":
            self._send(502, b"<html><body>Bad Gateway</body></html>", {})
        elif state.mode == "malformed":
            self._send(200, b"this is {not json", {})
        elif state.mode == "no_choices":
            self._send(200, b'{"id": "x"}', {})
        elif self.path not in ("/v1/chat/completions", "/v1/messages"):
            self._send(404, b'{"error": "no such route"}', {})
        else:
            answer = _anthropic_answer(body) if anthropic else _openai_answer(body, state.mode)
            self._send(200, json.dumps(answer).encode(), {})

    def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout test)
            pass


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = FakeState()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def _server() -> Iterator[FakeServer]:
    server = FakeServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.state.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def server(_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    _server.state = FakeState()
    yield _server
    _server.state.release.set()


@pytest.fixture
async def openai(server: FakeServer) -> AsyncIterator[OpenAICompatibleProvider]:
    provider = OpenAICompatibleProvider(
        "gpt-test", base_url=server.url + "/v1/", api_key="sk-test",
        extra_headers={"X-Trace": "t1"},
    )
    yield provider
    await provider.aclose()


@pytest.fixture
async def anthropic(server: FakeServer) -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider("claude-test", base_url=server.url, api_key="ak-test")
    yield provider
    await provider.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- OpenAI-compatible ---------------------------------------------------------------------


async def test_openai_tool_call_round_trip(
    openai: OpenAICompatibleProvider, server: FakeServer
) -> None:
    assert isinstance(openai, Provider)
    conversation = [
        Message(role="system", content="You are terse."),
        Message(role="user", content="use the tool to compute 6*7"),
    ]
    first = await openai.complete(conversation, tools=[CALCULATOR])

    assert first.finish_reason == "tool_calls"
    assert first.model == "gpt-test-0613"
    assert first.message.role == "assistant"
    assert first.message.content is None
    assert first.message.tool_calls == (
        ToolCall(id="call_abc", name="calculator", arguments={"expression": "6*7"}),
    )
    assert first.usage == TokenUsage(input_tokens=22, output_tokens=7, total_tokens=29,
                                     model="gpt-test-0613", provider="openai")

    request = server.state.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["x-trace"] == "t1"
    assert request.body == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "use the tool to compute 6*7"},
        ],
        "stream": False,
        "tools": [{"type": "function", "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression.",
            "parameters": CALCULATOR.parameters,
        }}],
    }

    conversation += [
        first.message,
        Message(role="tool", content="42", tool_call_id="call_abc", name="calculator"),
    ]
    second = await openai.complete(conversation, tools=[CALCULATOR], temperature=0.0,
                                   max_tokens=50)
    assert second.message.content == "The result is 42."
    assert second.message.tool_calls == ()
    assert second.finish_reason == "stop"

    body = server.state.requests[1].body
    assert body["temperature"] == 0.0
    assert body["max_tokens"] == 50
    assistant, tool = body["messages"][2], body["messages"][3]
    assert assistant == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_abc", "type": "function", "function": {
            "name": "calculator", "arguments": assistant["tool_calls"][0]["function"]
            ["arguments"]}}],
    }
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {
        "expression": "6*7"}
    assert tool == {"role": "tool", "tool_call_id": "call_abc", "content": "42"}


async def test_openai_without_key_or_tools_sends_neither(server: FakeServer) -> None:
    async with OpenAICompatibleProvider("llama3", base_url=server.url + "/v1",
                                        name="ollama", max_tokens=64) as provider:
        result = await provider.complete([Message(role="user", content="hi")], model="other")
    assert result.message.content == "echo: hi"
    assert result.usage is not None and result.usage.provider == "ollama"
    request = server.state.requests[0]
    assert "authorization" not in request.headers
    assert "tools" not in request.body and "temperature" not in request.body
    assert request.body["model"] == "other"
    assert request.body["max_tokens"] == 64


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (401, False), (404, False), (408, True), (409, True), (429, True),
     (500, True), (503, True)],
)
async def test_openai_http_errors(
    openai: OpenAICompatibleProvider, server: FakeServer, status: int, retryable: bool
) -> None:
    server.state.mode, server.state.status = "status", status
    with pytest.raises(ProviderError) as info:
        await openai.complete([Message(role="user", content="hi")])
    error = info.value
    assert (error.status, error.retryable, error.provider) == (status, retryable, "openai")
    assert f"HTTP {status}: simulated {status}" in str(error)
    assert error.hint
    if status == 429:
        assert "retry after 2 s" in error.hint
    if status == 401:
        assert "API key" in error.hint
    assert "sk-test" not in str(error)


async def test_openai_non_json_error_body_is_quoted(
    openai: OpenAICompatibleProvider, server: FakeServer
) -> None:
    server.state.mode = "html_error"
    with pytest.raises(ProviderError) as info:
        await openai.complete([Message(role="user", content="hi")])
    assert info.value.status == 502 and info.value.retryable
    assert "Bad Gateway" in str(info.value)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("malformed", "not JSON"), ("no_choices", "no choices")],
)
async def test_openai_malformed_answers(
    openai: OpenAICompatibleProvider, server: FakeServer, mode: str, expected: str
) -> None:
    server.state.mode = mode
    with pytest.raises(ProviderError) as info:
        await openai.complete([Message(role="user", content="hi")], tools=[CALCULATOR])
    assert expected in str(info.value)
    assert not info.value.retryable
    assert info.value.hint


def _choice(message: Any, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"message": message, **extra}]}


@pytest.mark.parametrize(
    ("answer", "content", "calls", "finish", "model"),
    [
        # content parts, no finish_reason, no usage, no model
        (_choice({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
         "ab", (), "stop", "gpt-test"),
        # a local server: no call ids, arguments already an object or empty
        (_choice({"content": None, "tool_calls": [
            {"function": {"name": "calculator", "arguments": {"x": 1}}},
            {"function": {"name": "calculator", "arguments": ""}}]}),
         None, (ToolCall(id="call_1", name="calculator", arguments={"x": 1}),
                ToolCall(id="call_2", name="calculator", arguments={})), "tool_calls",
         "gpt-test"),
        (_choice({"content": "x"}, finish_reason="length") | {"model": "real"},
         "x", (), "length", "real"),
    ],
)
async def test_openai_lenient_parsing(
    openai: OpenAICompatibleProvider, server: FakeServer, answer: Any, content: str | None,
    calls: tuple[ToolCall, ...], finish: str, model: str
) -> None:
    server.state.mode, server.state.canned = "canned", answer
    result = await openai.complete([Message(role="user", content="hi")])
    assert (result.message.content, result.message.tool_calls) == (content, calls)
    assert (result.finish_reason, result.model) == (finish, model)
    assert result.usage is None


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ([1, 2], "not a JSON object"),
        ({"choices": [{"nothing": 1}]}, "message is missing"),
        (_choice({"content": 5}), "neither text nor null"),
        (_choice({"tool_calls": {"a": 1}}), "not a list"),
        (_choice({"tool_calls": [{"function": {}}]}), "no function name"),
        (_choice({"tool_calls": [{"function": {"name": "t", "arguments": 5}}]}),
         "not a JSON string"),
        # arguments the model got wrong are kept on the call, not a provider error:
        # tests/runtime/test_agents_model_output.py
    ],
)
async def test_openai_malformed_structures(
    openai: OpenAICompatibleProvider, server: FakeServer, answer: Any, expected: str
) -> None:
    server.state.mode, server.state.canned = "canned", answer
    with pytest.raises(ProviderError, match=expected):
        await openai.complete([Message(role="user", content="hi")])


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [(413, {"error": "too big"}, "too big"), (422, {"message": "bad field"}, "bad field"),
     (400, ["odd"], '["odd"]')],
)
async def test_openai_error_body_shapes(
    openai: OpenAICompatibleProvider, server: FakeServer, status: int, error: Any,
    expected: str
) -> None:
    server.state.mode, server.state.status, server.state.canned = "canned", status, error
    with pytest.raises(ProviderError) as info:
        await openai.complete([Message(role="user", content="hi")])
    assert expected in str(info.value) and info.value.status == status


async def test_openai_sends_names_and_empty_assistant_content(
    openai: OpenAICompatibleProvider, server: FakeServer
) -> None:
    await openai.complete([Message(role="user", content="hi", name="ann"),
                           Message(role="assistant"), Message(role="user", content="again")])
    assert server.state.requests[0].body["messages"][:2] == [
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": ""},
    ]
    call = ToolCall(id="c", name="t", arguments={"when": object()})
    with pytest.raises(InvalidValueError, match="JSON"):
        await openai.complete([Message(role="assistant", tool_calls=(call,))])
    with pytest.raises(InvalidValueError, match="JSON"):
        await openai.complete([Message(role="user", content="x")],
                              tools=[ToolSpec(name="t", description="d",
                                              parameters={"x": object()})])


async def test_undecodable_body_is_not_retryable(
    openai: OpenAICompatibleProvider, server: FakeServer
) -> None:
    server.state.mode = "bad_gzip"
    with pytest.raises(ProviderError) as info:
        await openai.complete([Message(role="user", content="hi")])
    assert not info.value.retryable and "DecodingError" in str(info.value)


@pytest.mark.parametrize(
    ("answer", "content", "calls", "finish", "usage"),
    [
        ({"content": [{"type": "thinking", "thinking": "hm"},
                      {"type": "tool_use", "id": "t1", "name": "calc"}]},
         None, (ToolCall(id="t1", name="calc", arguments={}),), "tool_calls", None),
        ({"content": [{"type": "text", "text": "cut"}], "stop_reason": "max_tokens",
          "model": "claude-x", "usage": {"input_tokens": 4, "output_tokens": 2}},
         "cut", (), "length", TokenUsage(input_tokens=4, output_tokens=2, total_tokens=6,
                                         model="claude-x", provider="anthropic")),
        ({"content": [], "stop_reason": "refusal"}, None, (), "refusal", None),
    ],
)
async def test_anthropic_lenient_parsing(
    anthropic: AnthropicProvider, server: FakeServer, answer: Any, content: str | None,
    calls: tuple[ToolCall, ...], finish: str, usage: TokenUsage | None
) -> None:
    server.state.mode, server.state.canned = "canned", answer
    result = await anthropic.complete([Message(role="user", content="hi"),
                                       Message(role="assistant")])
    assert (result.message.content, result.message.tool_calls) == (content, calls)
    assert (result.finish_reason, result.usage) == (finish, usage)
    assert server.state.requests[0].body["messages"][1] == {"role": "assistant", "content": ""}
    assert (anthropic.name, anthropic.model) == ("anthropic", "claude-test")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ([1], "not a JSON object"),
        ({"content": ["x"]}, "not an object"),
        ({"content": [{"type": "tool_use", "name": "t"}]}, "no id or name"),
    ],
)
async def test_anthropic_malformed_structures(
    anthropic: AnthropicProvider, server: FakeServer, answer: Any, expected: str
) -> None:
    server.state.mode, server.state.canned = "canned", answer
    with pytest.raises(ProviderError, match=expected):
        await anthropic.complete([Message(role="user", content="hi")])


async def test_connection_refused_is_retryable() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    for provider in (OpenAICompatibleProvider("m", base_url=url + "/v1"),
                     AnthropicProvider("m", base_url=url)):
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message(role="user", content="hi")])
        assert info.value.retryable and info.value.status is None
        assert "could not reach" in str(info.value)
        await provider.aclose()


async def test_timeout_is_retryable(server: FakeServer) -> None:
    server.state.mode = "slow"
    provider = OpenAICompatibleProvider("m", base_url=server.url + "/v1", timeout=0.2)
    with pytest.raises(ProviderError) as info:
        await provider.complete([Message(role="user", content="hi")])
    assert info.value.retryable
    assert "timed out" in str(info.value)
    await provider.aclose()


async def test_owned_client_is_closed_but_a_given_one_is_not(server: FakeServer) -> None:
    async with httpx.AsyncClient() as client:
        given = OpenAICompatibleProvider("m", base_url=server.url + "/v1", client=client)
        await given.aclose()
        assert not client.is_closed
        assert (await given.complete([Message(role="user", content="a")])).message.content

    owned = OpenAICompatibleProvider("m", base_url=server.url + "/v1")
    await owned.aclose()
    with pytest.raises(ProviderError, match="closed"):
        await owned.complete([Message(role="user", content="a")])


async def test_messages_that_cannot_be_sent_are_rejected(
    openai: OpenAICompatibleProvider, anthropic: AnthropicProvider
) -> None:
    for provider in (openai, anthropic):
        with pytest.raises(InvalidValueError, match="tool_call_id"):
            await provider.complete([Message(role="tool", content="42")])
        with pytest.raises(InvalidValueError, match="role"):
            await provider.complete([Message(role="robot", content="beep")])


def test_constructor_rejects_bad_values() -> None:
    with pytest.raises(InvalidValueError, match="base_url"):
        OpenAICompatibleProvider("m", base_url="localhost:8000")
    with pytest.raises(InvalidValueError, match="model"):
        OpenAICompatibleProvider("")
    with pytest.raises(InvalidValueError, match="timeout"):
        AnthropicProvider("m", timeout=0)
    with pytest.raises(InvalidValueError, match="max_tokens"):
        AnthropicProvider("m", max_tokens=0)
    with pytest.raises(InvalidValueError, match="name"):
        OpenAICompatibleProvider("m", name="")
    assert OpenAICompatibleProvider("m", base_url="http://h/v1/").base_url == "http://h/v1"
    assert "key" not in repr(OpenAICompatibleProvider("m", api_key="sk-secret"))


# -- Anthropic -----------------------------------------------------------------------------


async def test_anthropic_tool_call_round_trip(
    anthropic: AnthropicProvider, server: FakeServer
) -> None:
    conversation = [
        Message(role="system", content="Be terse."),
        Message(role="system", content="Use tools."),
        Message(role="user", content="use the tool twice"),
    ]
    first = await anthropic.complete(conversation, tools=[CALCULATOR])
    assert first.finish_reason == "tool_calls"
    assert first.message.content == "Let me compute that."
    assert first.message.tool_calls == (
        ToolCall(id="toolu_01", name="calculator", arguments={"expression": "6*7"}),
    )
    assert first.usage == TokenUsage(input_tokens=23, output_tokens=5, total_tokens=28,
                                     model="claude-test", provider="anthropic",
                                     cached_tokens=3)

    request = server.state.requests[0]
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == "ak-test"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.body == {
        "model": "claude-test",
        "max_tokens": 1024,
        "system": "Be terse.\n\nUse tools.",
        "messages": [{"role": "user", "content": "use the tool twice"}],
        "tools": [{"name": "calculator", "description": CALCULATOR.description,
                   "input_schema": CALCULATOR.parameters}],
    }

    conversation += [
        first.message,
        Message(role="tool", content="42", tool_call_id="toolu_01"),
        Message(role="tool", content="43", tool_call_id="toolu_02"),
    ]
    second = await anthropic.complete(conversation, tools=[CALCULATOR], max_tokens=99,
                                      temperature=0.5)
    assert second.message.content == "The results are 42, 43."
    assert second.finish_reason == "stop"

    body = server.state.requests[1].body
    assert body["max_tokens"] == 99 and body["temperature"] == 0.5
    assert body["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute that."},
            {"type": "tool_use", "id": "toolu_01", "name": "calculator",
             "input": {"expression": "6*7"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "42"},
            {"type": "tool_result", "tool_use_id": "toolu_02", "content": "43"},
        ]},
    ]


async def test_anthropic_base_url_may_end_in_v1(server: FakeServer) -> None:
    async with AnthropicProvider("c", base_url=server.url + "/v1/") as provider:
        result = await provider.complete([Message(role="user", content="hi")])
    assert result.message.content == "echo: hi"
    assert server.state.requests[0].path == "/v1/messages"
    assert "x-api-key" not in server.state.requests[0].headers


@pytest.mark.parametrize(
    ("status", "retryable"), [(401, False), (400, False), (429, True), (500, True),
                              (529, True)],
)
async def test_anthropic_http_errors(
    anthropic: AnthropicProvider, server: FakeServer, status: int, retryable: bool
) -> None:
    server.state.mode, server.state.status = "status", status
    with pytest.raises(ProviderError) as info:
        await anthropic.complete([Message(role="user", content="hi")])
    assert (info.value.status, info.value.retryable) == (status, retryable)
    assert info.value.provider == "anthropic"
    assert f"simulated {status}" in str(info.value)


@pytest.mark.parametrize("mode", ["malformed", "no_choices"])
async def test_anthropic_malformed_answers(
    anthropic: AnthropicProvider, server: FakeServer, mode: str
) -> None:
    server.state.mode = mode
    with pytest.raises(ProviderError) as info:
        await anthropic.complete([Message(role="user", content="hi")])
    assert not info.value.retryable and info.value.hint


# -- Scripted ------------------------------------------------------------------------------


async def test_scripted_list_mode() -> None:
    preset = Completion(message=Message(role="assistant", content="preset"),
                        finish_reason="length", model="m2")
    provider = ScriptedProvider([
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "1+1"}},
                        {"name": "search", "arguments": {"q": "x"}}]},
        {"tool_calls": [{"name": "calculator"}], "content": "again"},
        Message(role="assistant", content="twelve chars"),
        preset,
        "done",
    ])
    assert isinstance(provider, Provider)
    assert provider.remaining == 5
    user = [Message(role="user", content="x" * 40)]

    first = await provider.complete(user, tools=[CALCULATOR])
    assert [c.id for c in first.message.tool_calls] == ["call_1", "call_2"]
    assert first.message.tool_calls[0].arguments == {"expression": "1+1"}
    assert first.finish_reason == "tool_calls"
    assert first.usage == TokenUsage(input_tokens=10, output_tokens=20, total_tokens=30,
                                     model="scripted", provider="scripted")

    second = await provider.complete(user, model="other")
    assert second.message.content == "again"
    assert second.message.tool_calls == (ToolCall(id="call_3", name="calculator",
                                                  arguments={}),)
    assert second.model == "other"
    assert second.usage is not None and second.usage.output_tokens == 11  # 5 // 4 + 10

    third = await provider.complete(user)
    assert third.message.content == "twelve chars" and third.finish_reason == "stop"
    assert third.usage is not None and third.usage.output_tokens == 3

    fourth = await provider.complete(user)
    assert fourth.finish_reason == "length" and fourth.model == "m2"
    assert fourth.usage is not None and fourth.usage.model == "m2"

    assert (await provider.complete(user)).message.content == "done"
    assert len(provider.calls) == 5
    assert provider.calls[0] == (user, [CALCULATOR])

    with pytest.raises(ProviderError) as info:
        await provider.complete(user)
    assert "ran out of replies after 5" in str(info.value)
    assert info.value.hint and not info.value.retryable
    await provider.aclose()


async def test_scripted_is_deterministic() -> None:
    def run() -> ScriptedProvider:
        return ScriptedProvider([{"tool_calls": [{"name": "t", "arguments": {}}]}, "ok"])

    async def replay(provider: ScriptedProvider) -> list[Completion]:
        return [await provider.complete([Message(role="user", content="hello")])
                for _ in range(2)]

    assert await replay(run()) == await replay(run())


async def test_scripted_callable_modes() -> None:
    def sync_reply(messages: list[Message], tools: list[ToolSpec]) -> Any:
        if messages[-1].role == "tool":
            return f"got {messages[-1].content}"
        return {"tool_calls": [{"name": tools[0].name, "arguments": {"n": len(messages)}}]}

    provider = ScriptedProvider(sync_reply, model="fn")
    first = await provider.complete([Message(role="user", content="go")], tools=[CALCULATOR])
    assert first.message.tool_calls == (ToolCall(id="call_1", name="calculator",
                                                 arguments={"n": 1}),)
    second = await provider.complete(
        [Message(role="user", content="go"), first.message,
         Message(role="tool", content="7", tool_call_id="call_1")], tools=[CALCULATOR])
    assert second.message.content == "got 7" and second.model == "fn"
    assert provider.remaining == 0

    async def async_reply(messages: list[Message], tools: list[ToolSpec]) -> Any:
        if messages[-1].content == "fail":
            raise ProviderError("scripted", "simulated outage", status=503, retryable=True)
        if messages[-1].content == "bad":
            return 42
        return Message(role="assistant", content="async answer")

    provider = ScriptedProvider(async_reply)
    answer = await provider.complete([Message(role="user", content="q")])
    assert answer.message.content == "async answer"
    with pytest.raises(ProviderError, match="simulated outage"):
        await provider.complete([Message(role="user", content="fail")])
    with pytest.raises(ProviderError, match="int"):
        await provider.complete([Message(role="user", content="bad")])


async def test_scripted_keeps_a_completions_own_usage() -> None:
    usage = TokenUsage(input_tokens=1, output_tokens=2, total_tokens=3, model="m",
                       provider="p")
    preset = Completion(message=Message(role="assistant", content="x"), finish_reason="stop",
                        model="m", usage=usage)
    provider = ScriptedProvider([preset], model="sm", name="sn")
    assert "1 replies left" in repr(provider)
    assert await provider.complete([]) is preset
    assert (provider.name, provider.model) == ("sn", "sm")
    assert "callable" in repr(ScriptedProvider(lambda m, t: "x"))


def test_scripted_rejects_bad_scripts() -> None:
    with pytest.raises(InvalidValueError, match=r"replies\[0\]"):
        ScriptedProvider([42])  # type: ignore[list-item]
    with pytest.raises(InvalidValueError, match="assistant"):
        ScriptedProvider([Message(role="user", content="x")])
    with pytest.raises(InvalidValueError, match="unknown keys"):
        ScriptedProvider([{"tool_call": []}])
    with pytest.raises(InvalidValueError, match="no tool name"):
        ScriptedProvider([{"tool_calls": [{"arguments": {}}]}])
    with pytest.raises(InvalidValueError, match="list of replies"):
        ScriptedProvider("just a string")
    with pytest.raises(InvalidValueError, match="non-empty"):
        ScriptedProvider([], model="")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"content": 5}, "content"),
        ({"tool_calls": "calculator"}, "must be a list"),
        ({"tool_calls": ["calculator"]}, "must be a dict"),
        ({"tool_calls": [{"name": "t", "arguments": [1]}]}, "arguments"),
        ({"tool_calls": [{"name": "t", "id": 7}]}, "id"),
    ]
    for bad, expected in cases:
        with pytest.raises(InvalidValueError, match=expected):
            ScriptedProvider([bad])
    assert ScriptedProvider([{"tool_calls": [{"name": "t", "id": "mine"}]}]).remaining == 1


# -- configuration -------------------------------------------------------------------------


async def test_config_openai_reads_the_named_key_variable(server: FakeServer) -> None:
    config = ProviderConfig(kind="openai", model="gpt", base_url=server.url + "/v1",
                            api_key_env="MY_KEY", max_tokens=10)
    provider = provider_from_config(config, environ={"MY_KEY": "sk-env"})
    assert isinstance(provider, OpenAICompatibleProvider)
    await provider.complete([Message(role="user", content="hi")])
    await provider.aclose()
    assert server.state.requests[0].headers["authorization"] == "Bearer sk-env"
    assert server.state.requests[0].body["max_tokens"] == 10


async def test_config_anthropic_falls_back_to_vendor_variable(server: FakeServer) -> None:
    provider = provider_from_config(
        ProviderConfig(kind="anthropic", model="claude", base_url=server.url),
        environ={"ANTHROPIC_API_KEY": "ak-vendor"},
    )
    assert isinstance(provider, AnthropicProvider)
    await provider.complete([Message(role="user", content="hi")])
    await provider.aclose()
    assert server.state.requests[0].headers["x-api-key"] == "ak-vendor"


def test_config_errors() -> None:
    with pytest.raises(ConfigurationError) as info:
        ProviderConfig(kind="gemini", model="g")
    assert info.value.hint == "valid kinds: " + ", ".join(PROVIDER_KINDS)
    with pytest.raises(ConfigurationError) as info:
        provider_from_config(ProviderConfig(kind="scripted"), environ={})
    assert info.value.hint and "LLMSPELL_REPLIES" in info.value.hint
    with pytest.raises(ConfigurationError, match="MISSING_KEY"):
        provider_from_config(
            ProviderConfig(kind="openai", model="m", api_key_env="MISSING_KEY"), environ={})
    with pytest.raises(ConfigurationError, match="needs a model"):
        provider_from_config(ProviderConfig(kind="anthropic", api_key="k"), environ={})
    with pytest.raises(ConfigurationError, match="hosted openai API needs an API key"):
        provider_from_config(ProviderConfig(kind="openai", model="m"), environ={})
    with pytest.raises(ConfigurationError, match="not both"):
        ProviderConfig(kind="openai", api_key="k", api_key_env="K")
    with pytest.raises(ConfigurationError, match="timeout"):
        provider_from_config(ProviderConfig(kind="openai", model="m", api_key="k",
                                            timeout=-1), environ={})
    assert "sk-secret" not in repr(ProviderConfig(kind="openai", api_key="sk-secret"))
    decoded = msgspec.json.decode(b'{"kind": "anthropic", "model": "c"}', type=ProviderConfig)
    assert decoded.kind == "anthropic"


async def test_provider_from_env(server: FakeServer) -> None:
    assert provider_from_env(environ={}) is None
    assert provider_from_env(environ={"LLMSPELL_PROVIDER": ""}) is None

    env = {
        "LLMSPELL_PROVIDER": "OpenAI",
        "LLMSPELL_MODEL": "local-model",
        "LLMSPELL_BASE_URL": server.url + "/v1",
        "LLMSPELL_API_KEY": "sk-llmspell",
        "OPENAI_API_KEY": "sk-vendor",
        "LLMSPELL_TIMEOUT": "5",
    }
    provider = provider_from_env(environ=env)
    assert isinstance(provider, OpenAICompatibleProvider)
    assert provider.model == "local-model"
    await provider.complete([Message(role="user", content="hi")])
    await provider.aclose()
    assert server.state.requests[0].headers["authorization"] == "Bearer sk-llmspell"

    anthropic = provider_from_env(
        "APP_", environ={"APP_PROVIDER": "anthropic", "APP_MODEL": "c",
                         "ANTHROPIC_API_KEY": "ak", "APP_MAX_TOKENS": "77"})
    assert isinstance(anthropic, AnthropicProvider)
    assert anthropic.base_url == "https://api.anthropic.com"
    await anthropic.aclose()

    with pytest.raises(ConfigurationError, match="valid kinds"):
        provider_from_env(environ={"LLMSPELL_PROVIDER": "bogus"})
    with pytest.raises(ConfigurationError, match="replies"):
        provider_from_env(environ={"LLMSPELL_PROVIDER": "scripted"})
    with pytest.raises(ConfigurationError, match="hosted anthropic API needs an API key"):
        provider_from_env(environ={"LLMSPELL_PROVIDER": "anthropic", "LLMSPELL_MODEL": "c"})
    with pytest.raises(ConfigurationError, match="TIMEOUT"):
        provider_from_env(environ={"LLMSPELL_PROVIDER": "openai", "LLMSPELL_TIMEOUT": "soon"})
    with pytest.raises(ConfigurationError, match="MAX_TOKENS"):
        provider_from_env(environ={"LLMSPELL_PROVIDER": "openai", "LLMSPELL_MAX_TOKENS": "x"})


async def test_provider_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSPELL_PROVIDER", raising=False)
    assert provider_from_env() is None
    monkeypatch.setenv("LLMSPELL_PROVIDER", "openai")
    monkeypatch.setenv("LLMSPELL_MODEL", "m")
    monkeypatch.setenv("LLMSPELL_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("LLMSPELL_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    provider = provider_from_env()
    assert isinstance(provider, OpenAICompatibleProvider)
    await provider.aclose()


async def test_an_agent_runs_end_to_end_on_the_openai_compatible_provider(
    server: FakeServer,
) -> None:
    """System + tool pipeline + agent + the real HTTP provider against the local server."""
    from llmspell.hooks import HookPoint
    from llmspell.runtime import System, SystemConfig
    from llmspell.runtime.tools.library.calculator import CalculatorTool

    provider = OpenAICompatibleProvider("gpt-test", base_url=server.url + "/v1",
                                        api_key="sk-test")
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(CalculatorTool())
        usage: list[dict[str, Any]] = []
        system.registry.register(
            HookPoint.AFTER_MODEL_CALL,
            lambda c: usage.append({**c.data["result"]["usage"], "provider": c.data["provider"],
                                    "model": c.data["result"]["model"]}), name="cost")
        seen_params: list[dict[str, Any]] = []
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                                 lambda c: seen_params.append(c.data["params"]), name="spy")
        agent = system.agents.create("remote", provider=provider, tools=["calculator"])
        response = await agent.run("please use the tool")
    await provider.aclose()
    assert seen_params == [{"expression": "6*7"}]
    assert "42" in response.output and response.turns == 2
    assert [u["provider"] for u in usage] == ["openai", "openai"]
    assert usage[0]["model"] == "gpt-test-0613"
    assert response.token_usage["total"] == sum(u["total_tokens"] for u in usage)
    bodies = [r.body for r in server.state.requests]
    assert bodies[1]["messages"][-1]["role"] == "tool"
    assert bodies[0]["tools"][0]["function"]["name"] == "calculator"
