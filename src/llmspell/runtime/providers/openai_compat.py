"""A lean async client for OpenAI-compatible chat-completions servers, built on httpx.

Why httpx rather than a vendor SDK: one small dependency speaks to OpenAI, Ollama, vLLM,
llama.cpp server, LM Studio and every other server that implements
``POST /chat/completions``; it gives full control of timeouts and of how each failure
becomes a :class:`~llmspell.errors.ProviderError`; and it is easy to test against a local
server. The official SDKs are heavier, pull in their own dependency trees and differ per
vendor, while the wire format here is a few dozen lines of JSON mapping.

The helpers at the bottom (posting JSON, mapping HTTP failures to ``ProviderError``) are
shared with :mod:`llmspell.runtime.providers.anthropic`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import math
import zlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from datetime import UTC
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar
from urllib.parse import unquote

import httpx
import msgspec

from llmspell.core.clock import SYSTEM_CLOCK
from llmspell.core.errors import (
    InvalidValueError,
    LlmspellError,
    ProviderError,
    ProviderResponseTooLargeError,
    ProviderStreamError,
)
from llmspell.core.values import MAX_INT64
from llmspell.runtime.providers.base import (
    Completion,
    Message,
    StreamDelta,
    TokenUsage,
    ToolCall,
    ToolSpec,
    tool_call_from_text,
)
from llmspell.runtime.providers.sse import SSEEvent, SSEParser

__all__ = ["DEFAULT_DEADLINE", "DEFAULT_MAX_RESPONSE_BYTES", "OpenAICompatibleProvider"]

DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""The most bytes one answer (a JSON body or a whole event stream) may take, by default."""

DEFAULT_DEADLINE = 1800.0
"""The most seconds one call (request sent to the last byte of the answer, streamed or
not) may take, by default: long enough for a slow local model writing a long answer, and
a bound on a server that keeps a call alive by trickling bytes within the read timeout."""

_T = TypeVar("_T")

_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_SNIPPET = 300


class _Assembler(Protocol):
    """Turns a stream's events into deltas and, once ``done``, the whole completion."""

    done: bool

    def feed(self, event: SSEEvent, received: _Received) -> list[StreamDelta]: ...

    def finish(self) -> Completion: ...


class HttpProvider:
    """What the HTTP providers share: an httpx client they may own, closed by ``aclose``
    (a client passed in is left open), and ``async with`` support."""

    _client: httpx.AsyncClient
    _owns_client: bool
    _secrets: tuple[str, ...] = ()
    _url: str
    _headers: dict[str, str]
    _limit: int
    _deadline: float | None

    async def _streamed(self, name: str, payload: dict[str, Any], assembler: _Assembler,
                        end: str) -> AsyncGenerator[StreamDelta | Completion, None]:
        """POST ``payload`` for a server-sent stream; yield the deltas ``assembler`` makes
        of its events, then its :class:`Completion`. A stream that ends before the
        assembler saw ``end`` (the API's last event) is cut: :class:`ProviderStreamError`."""
        received = _Received()
        events = _post_sse(self._client, provider=name, url=self._url, payload=payload,
                           headers=self._headers, limit=self._limit, received=received,
                           deadline=self._deadline)
        async with aclosing(events):
            async for event in events:
                for delta in assembler.feed(event, received):
                    received.deltas += 1
                    yield delta
                received.finished = assembler.done
        if not assembler.done:
            raise _cut(name, received, f"the stream ended before {end}")
        yield assembler.finish()

    @contextlib.contextmanager
    def _scrubbing(self) -> Iterator[None]:
        """Take the provider's secrets (API key, credentials of the URL, secret headers)
        out of any llmspell error raised inside: servers and proxies may echo them."""
        try:
            yield
        except LlmspellError as exc:
            _scrub(exc, self._secrets)
            raise

    async def aclose(self) -> None:
        """Close the HTTP client if this provider created it (not one passed in)."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class OpenAICompatibleProvider(HttpProvider):
    """A :class:`~llmspell.runtime.providers.base.Provider` for any server that speaks the
    OpenAI chat-completions protocol (OpenAI, Ollama, vLLM, llama.cpp server, LM Studio).

    ``base_url`` is the API root that ``/chat/completions`` is appended to (for Ollama,
    ``http://localhost:11434/v1``). ``Authorization: Bearer`` is sent only when
    ``api_key`` is given, so key-less local servers work. ``max_tokens`` is the default
    cap for calls that do not give one (None: the server's default). ``name`` is the
    provider name reported in usage and errors.

    ``timeout`` (seconds) configures the client this provider creates; a ``client``
    passed in keeps its own settings and is not closed by :meth:`aclose`. In a stream it
    bounds the wait for each next piece, not the whole answer.

    ``deadline`` (seconds, None for none) bounds a whole call, from sending the request
    to the last byte of the answer, streamed or not (time the caller spends between the
    items of a stream counts too): past it the call fails with a retryable
    :class:`~llmspell.errors.ProviderError` (a ``ProviderStreamError`` once a stream has
    started).

    ``max_response_bytes`` bounds one answer (a JSON body, or a whole event stream, both
    as received and after decompression): past it the call fails with
    :class:`~llmspell.errors.ProviderResponseTooLargeError`. ``stream_usage`` asks a
    stream for its usage (``stream_options.include_usage``); turn it off for a server
    that rejects ``stream_options`` (streamed answers then carry no usage).

    Credentials in ``base_url`` (``https://user:password@host/v1``) are sent as HTTP
    basic auth (in place of the bearer key), never shown in errors or ``repr``; the key,
    they and ``extra_headers`` values whose names mention a key, token, secret, auth,
    cookie or password are taken out of every error message. Redirects are not followed
    (the key would go along): a 3xx answer is a :class:`~llmspell.errors.ProviderError`
    naming where it points.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        timeout: float = 60.0,
        name: str = "openai",
        extra_headers: Mapping[str, str] | None = None,
        max_tokens: int | None = None,
        client: httpx.AsyncClient | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        stream_usage: bool = True,
        deadline: float | None = DEFAULT_DEADLINE,
    ) -> None:
        _check_model(model)
        base, basic, secrets = _split_credentials(_check_base_url(base_url))
        _check_timeout(timeout)
        _check_deadline(deadline)
        if max_tokens is not None:
            _check_max_tokens(max_tokens)
        _check_max_response_bytes(max_response_bytes)
        if not name:
            raise InvalidValueError("provider name must not be empty")
        self._base_url = base_url.rstrip("/")
        self._model = model
        self._name = name
        self._max_tokens = max_tokens
        self._limit = max_response_bytes
        self._deadline = deadline
        self._stream_usage = stream_usage
        self._url = f"{base}/chat/completions"
        self._headers: dict[str, str] = {"Content-Type": "application/json"}
        self._headers.update(extra_headers or {})
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
            secrets.append(api_key)
        if basic is not None:
            self._headers["Authorization"] = basic
        secrets.extend(_secret_header_values(extra_headers or {}))
        self._secrets = _secret_tuple(secrets)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(
            timeout=httpx.Timeout(timeout)
        )

    @property
    def name(self) -> str:
        """The provider name (``openai`` unless given)."""
        return self._name

    @property
    def model(self) -> str:
        """The model used when a call does not name one."""
        return self._model

    @property
    def base_url(self) -> str:
        """The API root requests go to (without a trailing slash), as configured."""
        return self._base_url

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleProvider(model={self._model!r}, "
            f"base_url={_redact_url(self._base_url)!r}, name={self._name!r})"
        )

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        """Send the conversation and the tools on offer; return the model's answer.

        Raises :class:`InvalidValueError` for a message that cannot be sent and
        :class:`ProviderError` when the call fails (``status`` and ``retryable`` set).
        """
        with self._scrubbing():
            used_model, payload = self._payload(messages, tools, model, temperature,
                                                max_tokens)
            payload["stream"] = False
            body = await _post_json(
                self._client, provider=self._name, url=self._url, payload=payload,
                headers=self._headers, limit=self._limit, deadline=self._deadline,
            )
            return _parse_completion(body, provider=self._name, model=used_model)

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[StreamDelta | Completion]:
        """Send the conversation with ``stream: true``; yield :class:`StreamDelta` items as
        they arrive, then the assembled :class:`Completion` (usage included: the request
        asks for it with ``stream_options.include_usage`` unless ``stream_usage`` is off).

        Raises :class:`ProviderError` as :meth:`complete` does when the call fails before
        the stream starts, and :class:`ProviderStreamError` when the stream breaks off
        before ``data: [DONE]`` (connection closed or stalled past the timeout, a malformed
        chunk, an error chunk); :class:`ProviderResponseTooLargeError` past
        ``max_response_bytes``.
        """
        with self._scrubbing():
            used_model, payload = self._payload(messages, tools, model, temperature,
                                                max_tokens)
            payload["stream"] = True
            if self._stream_usage:
                payload["stream_options"] = {"include_usage": True}
            items = self._streamed(self._name, payload,
                                   _OpenAIStream(self._name, used_model), "'data: [DONE]'")
            async with aclosing(items):  # a consumer that stops early hangs up at once
                async for item in items:
                    yield item

    def _payload(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        model: str | None,
        temperature: float | None,
        max_tokens: int | None,
    ) -> tuple[str, dict[str, Any]]:
        used_model = model or self._model
        payload: dict[str, Any] = {
            "model": used_model,
            "messages": [_message_to_wire(m) for m in messages],
        }
        if tools:
            payload["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ]
        if temperature is not None:
            payload["temperature"] = temperature
        cap = max_tokens if max_tokens is not None else self._max_tokens
        if cap is not None:
            payload["max_tokens"] = cap
        return used_model, payload


# -- request conversion --------------------------------------------------------------------


def _message_to_wire(message: Message) -> dict[str, Any]:
    role = message.role
    if role in ("system", "user"):
        wire: dict[str, Any] = {"role": role, "content": message.content or ""}
        if message.name:
            wire["name"] = message.name
        return wire
    if role == "assistant":
        wire = {"role": "assistant", "content": message.content}
        if message.tool_calls:
            wire["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": _encode_arguments(call)},
                }
                for call in message.tool_calls
            ]
        elif message.content is None:
            wire["content"] = ""
        return wire
    if role == "tool":
        if not message.tool_call_id:
            raise InvalidValueError(
                "a tool message has no tool_call_id",
                hint="set tool_call_id to the id of the ToolCall it answers",
            )
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "content": message.content or "",
        }
    raise InvalidValueError(
        f"unknown message role {role!r}",
        hint="use 'system', 'user', 'assistant' or 'tool'",
    )


def _encode_arguments(call: ToolCall) -> str:
    """The tool call's arguments as the JSON string the wire format wants. A call whose
    arguments were unusable goes back as ``{}``, not as the model's broken text: some
    servers (vLLM) decode past arguments and would refuse the whole conversation; the
    error answering the call quotes the text."""
    try:
        return msgspec.json.encode(call.arguments).decode()
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidValueError(
            f"arguments of tool call {call.id!r} ({call.name}) are not JSON-encodable: {exc}",
            hint="tool call arguments must be JSON-safe",
        ) from exc


# -- response parsing ----------------------------------------------------------------------


def _parse_completion(body: Any, *, provider: str, model: str) -> Completion:
    def malformed(what: str) -> ProviderError:
        return ProviderError(
            provider,
            f"{provider} returned a malformed chat completion: {what}",
            hint="check that base_url points at an OpenAI-compatible API root (…/v1)",
        )

    if not isinstance(body, dict):
        raise malformed("the body is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise malformed("no choices")
    raw = choices[0].get("message")
    if not isinstance(raw, dict):
        raise malformed("choices[0].message is missing")
    raw_content = raw.get("content")
    content: str | None
    if raw_content is None or isinstance(raw_content, str):
        content = raw_content
    elif isinstance(raw_content, list):  # content parts: [{"type": "text", "text": ...}]
        texts = [p["text"] for p in raw_content
                 if isinstance(p, dict) and isinstance(p.get("text"), str)]
        content = "".join(texts) if texts else None
    else:
        raise malformed("choices[0].message.content is neither text nor null")

    calls: list[ToolCall] = []
    raw_calls = raw.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise malformed("tool_calls is not a list")
    for index, item in enumerate(raw_calls, start=1):
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not function["name"]:
            raise malformed(f"tool call {index} has no function name")
        call_id = item.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call_{index}"  # some local servers leave ids out
        calls.append(_tool_call(call_id, function["name"], function.get("arguments"),
                                provider=provider))

    finish = choices[0].get("finish_reason")
    if not isinstance(finish, str) or not finish:
        finish = "tool_calls" if calls else "stop"
    answered_by = body.get("model")
    if not isinstance(answered_by, str) or not answered_by:
        answered_by = model
    return Completion(
        message=Message(role="assistant", content=content, tool_calls=tuple(calls)),
        finish_reason=finish,
        model=answered_by,
        usage=_parse_usage(body.get("usage"), provider=provider, model=answered_by),
    )


def _tool_call(call_id: str, name: str, raw: Any, *, provider: str) -> ToolCall:
    """The tool call for the wire's ``arguments``: a JSON string (some servers send the
    object itself, or nothing).

    Arguments the model got wrong (broken JSON, JSON that is not an object) are the
    model's mistake, not a failed call: the call is kept with ``argument_error`` set
    (:func:`~llmspell.runtime.providers.base.tool_call_from_text`), so an agent can tell
    the model. A value of another type is the server breaking the wire format:
    :class:`ProviderError`.
    """
    if raw is None or isinstance(raw, str):
        return tool_call_from_text(call_id, name, raw)
    if isinstance(raw, dict):
        return ToolCall(id=call_id, name=name, arguments=raw)
    raise ProviderError(
        provider,
        f"{provider} sent arguments for tool {name!r} that are a "
        f"{type(raw).__name__}, not a JSON string",
        hint="check that base_url points at an OpenAI-compatible API root (…/v1)",
    )


def _parse_usage(raw: Any, *, provider: str, model: str) -> TokenUsage | None:
    """``usage`` of a chat completion (or of a stream's last chunk), with the cached
    prompt tokens (``prompt_tokens_details.cached_tokens``) and the reasoning tokens
    (``completion_tokens_details.reasoning_tokens``) when the server reports them."""
    if not isinstance(raw, dict):
        return None
    prompt = _int(raw.get("prompt_tokens"))
    completion = _int(raw.get("completion_tokens"))
    total = _int(raw.get("total_tokens"))
    prompt_details = raw.get("prompt_tokens_details")
    completion_details = raw.get("completion_tokens_details")
    return TokenUsage(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=total or _total(prompt, completion),
        model=model,
        provider=provider,
        cached_tokens=(
            _int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
        ),
        reasoning_tokens=(
            _int(completion_details.get("reasoning_tokens"))
            if isinstance(completion_details, dict) else 0
        ),
    )


def _int(value: Any) -> int:
    """A reported token count: a whole number (an integral float too) clamped to 0 ..
    2**63-1, so a broken or hostile server cannot make usage negative (crediting a
    budget) or too large to store; anything else is "not reported", 0."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        return 0
    return min(max(value, 0), MAX_INT64)


def _total(*counts: int) -> int:
    """Token counts added up, clamped like :func:`_int`."""
    return min(sum(counts), MAX_INT64)


# -- streaming -------------------------------------------------------------------------------


class _Received:
    """How much of a stream has arrived, for the error that says where it broke off;
    ``finished`` is set by the reader once the end marker has arrived."""

    __slots__ = ("bytes", "deltas", "finished")

    def __init__(self) -> None:
        self.bytes = 0
        self.deltas = 0
        self.finished = False


def _cut(
    provider: str, received: _Received, what: str, *, retryable: bool = True,
    hint: str | None = None,
) -> ProviderStreamError:
    return ProviderStreamError(
        provider,
        f"the {provider} stream broke off after {received.bytes} bytes and "
        f"{received.deltas} deltas: {what}",
        received_bytes=received.bytes,
        received_deltas=received.deltas,
        retryable=retryable,
        hint=hint,
    )


class _CallDraft:
    """A streamed tool call being assembled: id and name arrive once, arguments in parts."""

    __slots__ = ("id", "name", "parts")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.parts: list[str] = []


# The chunk of a chat-completions stream, decoded straight into Structs (faster than
# dicts, and a chunk of the wrong shape is a typed failure). Unknown fields are ignored.


class _WireFunction(msgspec.Struct):
    name: str | None = None
    arguments: str | dict[str, Any] | None = None


class _WireToolCall(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _WireFunction | None = None


class _WireDelta(msgspec.Struct):
    content: str | list[Any] | None = None
    tool_calls: list[_WireToolCall] | None = None


class _WireChoice(msgspec.Struct):
    index: int = 0
    delta: _WireDelta | None = None
    finish_reason: str | None = None


class _WireChunk(msgspec.Struct):
    model: str | None = None
    choices: list[_WireChoice] | None = None
    usage: dict[str, Any] | None = None
    error: Any = None


_CHUNK_DECODER = msgspec.json.Decoder(_WireChunk)


class _OpenAIStream:
    """Turns the events of a chat-completions stream into deltas and, at the end, the
    assembled :class:`Completion`. Only choice 0 is read (the request asks for one)."""

    __slots__ = ("_by_id", "_by_index", "_calls", "_finish", "_model", "_provider", "_texts",
                 "_usage", "done")

    def __init__(self, provider: str, model: str) -> None:
        self._provider = provider
        self._model = model
        self._texts: list[str] = []
        self._calls: list[_CallDraft] = []
        self._by_index: dict[int, int] = {}
        self._by_id: dict[str, int] = {}
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self.done = False

    def feed(self, event: SSEEvent, received: _Received) -> list[StreamDelta]:
        """The deltas one event carries (none for ``[DONE]``, which sets ``done``)."""
        data = event.data
        if data == b"[DONE]":
            self.done = True
            return []
        if event.event == "error":
            raise _cut(self._provider, received,
                       f"the server sent an error event: {_snippet_bytes(data)!r}")
        try:
            chunk = _CHUNK_DECODER.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise _cut(self._provider, received,
                       f"a malformed chunk ({exc}): {_snippet_bytes(data)!r}") from exc
        if chunk.error is not None:
            raise _cut(self._provider, received,
                       f"the server sent an error: {_error_text(chunk.error)}")
        if chunk.model:
            self._model = chunk.model
        if chunk.usage is not None:
            self._usage = chunk.usage
        out: list[StreamDelta] = []
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            if choice.finish_reason:
                self._finish = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            content = delta.content
            if content:
                if not isinstance(content, str):  # content parts
                    content = "".join(
                        p["text"] for p in content
                        if isinstance(p, dict) and isinstance(p.get("text"), str)
                    )
                if content:
                    self._texts.append(content)
                    out.append(StreamDelta(text=content))
            for wire in delta.tool_calls or ():
                piece = self._tool_delta(wire)
                if piece is not None:
                    out.append(piece)
        return out

    def _tool_delta(self, wire: _WireToolCall) -> StreamDelta | None:
        position = self._position(wire)
        draft = self._calls[position]
        new_id = new_name = None
        if wire.id and draft.id is None:
            draft.id = new_id = wire.id
            self._by_id.setdefault(wire.id, position)
        arguments = ""
        function = wire.function
        if function is not None:
            if function.name and draft.name is None:
                draft.name = new_name = function.name
            raw = function.arguments
            if raw:
                arguments = raw if isinstance(raw, str) else msgspec.json.encode(raw).decode()
                draft.parts.append(arguments)
        if new_id is None and new_name is None and not arguments:
            return None
        return StreamDelta(tool_call_index=position, tool_call_id=new_id, tool_name=new_name,
                           arguments_text=arguments)

    def _position(self, wire: _WireToolCall) -> int:
        if wire.index is not None:
            position = self._by_index.get(wire.index)
            if position is None:
                position = self._by_index[wire.index] = self._new_call()
            return position
        # Some servers leave the index out: a new id starts a call, else it continues one.
        if wire.id:
            known = self._by_id.get(wire.id)
            return known if known is not None else self._new_call()
        return len(self._calls) - 1 if self._calls else self._new_call()

    def _new_call(self) -> int:
        self._calls.append(_CallDraft())
        return len(self._calls) - 1

    def finish(self) -> Completion:
        """The assembled answer (after ``[DONE]``)."""
        calls: list[ToolCall] = []
        for number, draft in enumerate(self._calls, start=1):
            if not draft.name:
                raise ProviderError(
                    self._provider,
                    f"{self._provider} streamed tool call {number} without a function name",
                    hint="check that base_url points at an OpenAI-compatible API root (…/v1)",
                )
            calls.append(tool_call_from_text(draft.id or f"call_{number}", draft.name,
                                             "".join(draft.parts)))
        return Completion(
            message=Message(role="assistant",
                            content="".join(self._texts) if self._texts else None,
                            tool_calls=tuple(calls)),
            finish_reason=self._finish or ("tool_calls" if calls else "stop"),
            model=self._model,
            usage=_parse_usage(self._usage, provider=self._provider, model=self._model),
        )


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        kind = error.get("type")
        if isinstance(message, str):
            return _snippet(f"{kind}: {message}" if isinstance(kind, str) else message)
    if isinstance(error, str):
        return _snippet(error)
    return _snippet(msgspec.json.encode(error).decode())


def _snippet_bytes(data: bytes) -> str:
    return _snippet(data[: _SNIPPET * 4].decode("utf-8", "replace"))


# -- shared HTTP plumbing (also used by the Anthropic provider) ------------------------------


def _check_model(model: str) -> None:
    if not isinstance(model, str) or not model:
        raise InvalidValueError("model must be a non-empty string", hint="e.g. model='gpt-4o'")


def _check_base_url(base_url: str) -> str:
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        shown = _redact_url(base_url) if isinstance(base_url, str) else base_url
        raise InvalidValueError(
            f"base_url {shown!r} is not an http(s) URL",
            hint="e.g. 'https://api.openai.com/v1' or 'http://127.0.0.1:11434/v1'",
        )
    return base_url.rstrip("/")


def _authority_end(rest: str) -> int:
    """Where the authority (``user:password@host:port``) of a URL's rest ends."""
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    return min(ends) if ends else len(rest)


def _redact_url(url: str) -> str:
    """``url`` with its user and password (if any) replaced by ``***``."""
    head, sep, rest = url.partition("://")
    end = _authority_end(rest)
    if not sep or "@" not in rest[:end]:
        return url
    return f"{head}://***@{rest[:end].rpartition('@')[2]}{rest[end:]}"


def _split_credentials(base_url: str) -> tuple[str, str | None, list[str]]:
    """``base_url`` without its credentials, the basic-auth ``Authorization`` value they
    make (None without any), and the secrets to keep out of messages."""
    head, sep, rest = base_url.partition("://")
    end = _authority_end(rest)
    if not sep or "@" not in rest[:end]:
        return base_url, None, []
    userinfo, _, host = rest[:end].rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    secrets = [token, userinfo]
    if password:
        secrets += [password, unquote(password)]
    return f"{head}://{host}{rest[end:]}", f"Basic {token}", secrets


_SECRET_HEADER_WORDS = ("key", "token", "secret", "auth", "cookie", "password", "session")


def _secret_header_values(headers: Mapping[str, str]) -> list[str]:
    """The values of ``headers`` whose names say they hold a secret."""
    return [value for name, value in headers.items()
            if any(word in name.lower() for word in _SECRET_HEADER_WORDS)]


def _secret_tuple(secrets: list[str]) -> tuple[str, ...]:
    """The secrets worth redacting (4 characters or more), longest first, so a secret
    that contains another is replaced whole."""
    return tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _scrub(exc: LlmspellError, secrets: Sequence[str]) -> None:
    """Take ``secrets`` out of ``exc``'s message, hint and ``str()``, in place (the type
    and the attributes a caller reads stay)."""
    if not secrets:
        return
    exc.message = _redact(exc.message, secrets)
    if exc.hint is not None:
        exc.hint = _redact(exc.hint, secrets)
    exc.args = tuple(_redact(a, secrets) if isinstance(a, str) else a for a in exc.args)


def _check_timeout(timeout: float) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or \
            not math.isfinite(timeout) or timeout <= 0:
        raise InvalidValueError(f"timeout must be a positive number of seconds, not {timeout!r}")


def _check_deadline(deadline: float | None) -> None:
    if deadline is None:
        return
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or \
            not math.isfinite(deadline) or deadline <= 0:
        raise InvalidValueError(
            f"deadline must be a positive number of seconds or None, not {deadline!r}",
            hint=f"the default is {DEFAULT_DEADLINE:g}; None means no deadline",
        )


def _check_max_tokens(max_tokens: int) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise InvalidValueError(f"max_tokens must be a positive int, not {max_tokens!r}")


def _snippet(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"


def _check_max_response_bytes(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise InvalidValueError(f"max_response_bytes must be a positive int, not {limit!r}")


_ERROR_BODY_LIMIT = 64 * 1024


def _retry_after(headers: httpx.Headers, *, now: float) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms`` (OpenAI), else ``Retry-After``
    as seconds or as an HTTP date (a date in the past is 0). None when absent or
    unreadable (negative, not finite, neither a number nor a date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis)
        except ValueError:
            value = -1.0
        if math.isfinite(value) and value >= 0:
            return value / 1000
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _transport_error(provider: str, url: str, exc: httpx.HTTPError) -> ProviderError:
    """A failure before a whole answer arrived, outside a stream."""
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(
            provider,
            f"request to {url} timed out ({type(exc).__name__})",
            retryable=True,
            hint="retry, or raise the provider's timeout",
        )
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return ProviderError(
            provider,
            f"could not reach {url}: {type(exc).__name__}: {exc}",
            retryable=True,
            hint="is the server running, and is base_url right?",
        )
    return ProviderError(
        provider,
        f"request to {url} failed: {type(exc).__name__}: {exc}",
        hint="check base_url",
    )


class _DeadlinePassedError(Exception):
    """The call's deadline passed while waiting (internal: mapped to a ProviderError)."""


def _deadline_at(deadline: float | None) -> float | None:
    """The event-loop time by which a call started now must be done."""
    return None if deadline is None else asyncio.get_running_loop().time() + deadline


async def _before(when: float | None, awaitable: Awaitable[_T]) -> _T:
    """Await ``awaitable``; :class:`_DeadlinePassedError` if the loop time ``when`` comes
    first (it is cancelled then)."""
    timeout = asyncio.timeout_at(when)
    try:
        async with timeout:
            return await awaitable
    except TimeoutError:
        if timeout.expired():
            raise _DeadlinePassedError from None
        raise


def _deadline_error(provider: str, url: str, deadline: float | None) -> ProviderError:
    return ProviderError(
        provider,
        f"no whole answer from {url} within the {deadline:g} s deadline",
        retryable=True,
        hint="retry, or raise the provider's deadline (None for none)",
    )


# Only what _Inflater can undo in bounded pieces is asked for (httpx would also offer zstd,
# br when installed, and decode every coding a server stacks up without any bound).
_ACCEPT_ENCODING = "gzip, deflate"
_PIECE = 64 * 1024


class _Inflater:
    """Undoes one ``gzip`` or ``deflate`` content coding in pieces of at most 64 KiB, so a
    small compressed body (a "zip bomb") never expands into one large buffer: the reader
    counts each piece against its limit before the next is made."""

    __slots__ = ("_may_be_raw", "_z")

    def __init__(self, coding: str) -> None:
        self._may_be_raw = coding == "deflate"  # deflate is often sent without its header
        self._z = zlib.decompressobj(zlib.MAX_WBITS | 16 if coding == "gzip" else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decompressed pieces ``data`` gives, each made only when asked for."""
        while True:
            try:
                out = self._z.decompress(data, _PIECE)
            except zlib.error as exc:
                if not self._may_be_raw:
                    raise httpx.DecodingError(f"bad compressed body: {exc}") from exc
                self._may_be_raw = False
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                continue
            self._may_be_raw = False
            if out:
                yield out
            data = self._z.unconsumed_tail
            if not data and len(out) < _PIECE:
                return


async def _decoded(response: httpx.Response, *, provider: str, limit: int
                   ) -> AsyncGenerator[bytes, None]:
    """The body of ``response`` as it arrives, decompressed in bounded pieces.

    :class:`ProviderResponseTooLargeError` once more than ``limit`` bytes have been
    received (the decompressed size is for the caller to count); a
    :class:`ProviderError` for a content coding other than one gzip or deflate layer.
    """
    codings = [c.strip().lower() for c in
               response.headers.get_list("content-encoding", split_commas=True)]
    codings = [c for c in codings if c and c != "identity"]
    if len(codings) > 1 or (codings and codings[0] not in ("gzip", "deflate")):
        raise ProviderError(
            provider,
            f"{provider} answered HTTP {response.status_code} in content-encoding "
            f"{_snippet(', '.join(codings))!r}, which is not supported",
            status=response.status_code,
            hint="the request accepts one layer of gzip or deflate; check base_url, or "
                 "the proxy in between",
        )
    inflater = _Inflater(codings[0]) if codings else None
    size = 0
    async for raw in response.aiter_raw():
        size += len(raw)
        if size > limit:
            raise ProviderResponseTooLargeError(provider, limit)
        if inflater is None:
            yield raw
        else:
            for piece in inflater.feed(raw):
                yield piece


async def _send(
    client: httpx.AsyncClient,
    *,
    provider: str,
    url: str,
    payload: dict[str, Any],
    headers: Mapping[str, str],
) -> httpx.Response:
    """POST ``payload`` as JSON and return the response with its body not yet read.

    Redirects are never followed, whatever the client says: the credentials would go
    along to wherever the server points (httpx keeps ``x-api-key`` and custom headers on
    a redirect to another host)."""
    if client.is_closed:
        raise ProviderError(
            provider, f"the {provider} provider is closed",
            hint="create a new provider, or do not call aclose() while it is in use",
        )
    try:
        content = msgspec.json.encode(payload)
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidValueError(
            f"the request to {provider} is not JSON-encodable: {exc}",
            hint="tool parameters and arguments must be JSON-safe",
        ) from exc
    request = client.build_request(
        "POST", url, content=content,
        headers={"Accept-Encoding": _ACCEPT_ENCODING, **headers},
    )
    try:
        return await client.send(request, stream=True, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise _transport_error(provider, url, exc) from exc


async def _read_body(response: httpx.Response, *, provider: str, limit: int) -> bytes:
    """The whole (decompressed) body; :class:`ProviderResponseTooLargeError` past
    ``limit`` bytes (received or decompressed), without reading further."""
    body = bytearray()
    async with aclosing(_decoded(response, provider=provider, limit=limit)) as pieces:
        async for piece in pieces:
            if len(body) + len(piece) > limit:
                raise ProviderResponseTooLargeError(provider, limit)
            body += piece
    return bytes(body)


async def _read_error_body(response: httpx.Response, when: float | None = None) -> bytes:
    """Enough of an error body to quote (at most 64 KiB, before the loop time ``when``);
    a failure to read is no error."""
    body = bytearray()

    async def read() -> None:
        async with aclosing(_decoded(response, provider="", limit=_ERROR_BODY_LIMIT * 4)
                            ) as pieces:
            async for piece in pieces:
                body.extend(piece)
                if len(body) >= _ERROR_BODY_LIMIT:
                    return

    with contextlib.suppress(httpx.HTTPError, ProviderError, _DeadlinePassedError):
        await _before(when, read())
    return bytes(body[:_ERROR_BODY_LIMIT])


def _redirect_error(provider: str, url: str, response: httpx.Response) -> ProviderError:
    status = response.status_code
    location = response.headers.get("location")
    where = f" to {_snippet(_redact_url(location))!r}" if location else ""
    return ProviderError(
        provider,
        f"{provider} answered HTTP {status}, a redirect{where}, for {url}",
        status=status,
        hint="redirects are not followed (the API key would go along); set base_url to "
             "the API root the server points at, if you trust it",
    )


async def _post_json(
    client: httpx.AsyncClient,
    *,
    provider: str,
    url: str,
    payload: dict[str, Any],
    headers: Mapping[str, str],
    limit: int = DEFAULT_MAX_RESPONSE_BYTES,
    deadline: float | None = DEFAULT_DEADLINE,
) -> Any:
    """POST ``payload`` as JSON; return the decoded JSON body of a 2xx answer.

    Every failure becomes a :class:`ProviderError`: HTTP errors carry the status, the
    server's message and its ``Retry-After``, retryable for 408/409/429/5xx; timeouts,
    connection failures and a call past ``deadline`` seconds are retryable; a redirect
    and a body that is not JSON are not; a body past ``limit`` bytes is a
    :class:`ProviderResponseTooLargeError`.
    """
    try:
        response, body = await _before(_deadline_at(deadline), _exchange(
            client, provider=provider, url=url, payload=payload, headers=headers,
            limit=limit))
    except _DeadlinePassedError:
        raise _deadline_error(provider, url, deadline) from None
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON"
        raise ProviderError(
            provider,
            f"{provider} answered HTTP {response.status_code} with a body that is {what}: "
            f"{_snippet_bytes(body)!r}",
            status=response.status_code,
            hint="check that base_url points at the API root, not a web page or proxy",
        ) from exc


async def _exchange(
    client: httpx.AsyncClient,
    *,
    provider: str,
    url: str,
    payload: dict[str, Any],
    headers: Mapping[str, str],
    limit: int,
) -> tuple[httpx.Response, bytes]:
    """Send the request, check the status, read the whole body."""
    response = await _send(client, provider=provider, url=url, payload=payload,
                           headers=headers)
    try:
        if response.status_code >= 400:
            raise _status_error(provider, url, response, await _read_error_body(response))
        if response.status_code >= 300:
            raise _redirect_error(provider, url, response)
        try:
            return response, await _read_body(response, provider=provider, limit=limit)
        except httpx.HTTPError as exc:
            raise _transport_error(provider, url, exc) from exc
    finally:
        await response.aclose()


async def _post_sse(
    client: httpx.AsyncClient,
    *,
    provider: str,
    url: str,
    payload: dict[str, Any],
    headers: Mapping[str, str],
    limit: int,
    received: _Received,
    deadline: float | None = DEFAULT_DEADLINE,
) -> AsyncGenerator[SSEEvent, None]:
    """POST ``payload`` and yield the server-sent events of the answer as they arrive,
    counting the bytes in ``received``.

    Before the stream starts, failures are :class:`ProviderError` as in
    :func:`_post_json` (a JSON or HTML answer instead of an event stream included); once
    it has started, a broken connection, a stall past the read timeout or the call
    running past ``deadline`` is a :class:`ProviderStreamError`, and more than ``limit``
    bytes a :class:`ProviderResponseTooLargeError`. Whether the stream reached its end
    marker is for the caller to judge: once it sets ``received.finished`` (the end marker
    arrived), the rest of the body is drained briefly, so the connection can be reused,
    and the generator ends.
    """
    when = _deadline_at(deadline)
    try:
        response = await _before(when, _send(
            client, provider=provider, url=url, payload=payload,
            headers={**headers, "Accept": "text/event-stream"}))
    except _DeadlinePassedError:
        raise _deadline_error(provider, url, deadline) from None
    try:
        status = response.status_code
        if status >= 400:
            raise _status_error(provider, url, response, await _read_error_body(response, when))
        if status >= 300:
            raise _redirect_error(provider, url, response)
        media = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media == "application/json":
            detail = _error_detail(await _read_error_body(response, when))
            raise ProviderError(
                provider,
                f"{provider} answered HTTP {status} with JSON instead of an event stream: "
                f"{detail}",
                status=status,
                hint="the server may not support streaming; call complete() instead",
            )
        if media in ("text/html", "application/xhtml+xml"):
            page = _snippet_bytes(await _read_error_body(response, when))
            raise ProviderError(
                provider,
                f"{provider} answered HTTP {status} with a web page instead of an event "
                f"stream: {page!r}",
                status=status,
                hint="check that base_url points at the API root, not a web page or proxy",
            )
        parser = SSEParser()
        async with aclosing(_decoded(response, provider=provider, limit=limit)) as chunks:
            try:
                while (chunk := await _before(when, anext(chunks, None))) is not None:
                    received.bytes += len(chunk)
                    if received.bytes > limit:
                        raise ProviderResponseTooLargeError(provider, limit)
                    for event in parser.feed(chunk):
                        yield event
                        if received.finished:
                            await _drain(chunks)
                            return
            except _DeadlinePassedError:
                raise _cut(provider, received,
                           f"no whole answer within the {deadline:g} s deadline",
                           hint="retry, or raise the provider's deadline (None for none)"
                           ) from None
            except httpx.TimeoutException as exc:
                raise _cut(provider, received,
                           f"no data within the timeout ({type(exc).__name__})") from exc
            except httpx.HTTPError as exc:
                raise _cut(provider, received, f"{type(exc).__name__}: {exc}") from exc
        for event in parser.close():
            yield event
    finally:
        await response.aclose()


_DRAIN_SECONDS = 0.25


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows a stream's end marker (normally just the end of the body), so
    the connection goes back to the pool instead of being dropped. Bounded in bytes and
    time: a server that keeps sending or stalls only loses its connection."""
    size = 0
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for chunk in chunks:
                size += len(chunk)
                if size > _ERROR_BODY_LIMIT:
                    return
    except (TimeoutError, httpx.HTTPError, ProviderError):
        pass


def _status_error(
    provider: str, url: str, response: httpx.Response, body: bytes
) -> ProviderError:
    status = response.status_code
    detail = _error_detail(body)
    retryable = status in _RETRYABLE_STATUSES or status >= 500
    retry_after = _retry_after(response.headers, now=SYSTEM_CLOCK.now()) if retryable else None
    if status in (401, 403):
        hint = "check the API key (LLMSPELL_API_KEY, OPENAI_API_KEY or ANTHROPIC_API_KEY)"
    elif status == 404:
        hint = f"check base_url ({url}) and the model name"
    elif status == 413:
        hint = "the request is too large; shorten the conversation"
    elif retryable:
        hint = f"retry after {retry_after:g} s" if retry_after is not None else "retry with backoff"
    else:
        hint = "the server rejected the request; check the model name, messages and tools"
    message = f"{provider} returned HTTP {status}"
    if detail:
        message += f": {detail}"
    return ProviderError(provider, message, status=status, retryable=retryable, hint=hint,
                         retry_after=retry_after)


def _error_detail(body: bytes) -> str:
    """The server's error message: ``{"error": {"message": ...}}`` (OpenAI, Anthropic),
    ``{"error": "..."}`` (Ollama), ``{"message": ...}`` (vLLM), else a text snippet
    (at most a few hundred characters either way)."""
    try:
        decoded = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return _snippet_bytes(body)
    if isinstance(decoded, dict):
        error = decoded.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _snippet(str(error["message"]))
        if isinstance(error, str):
            return _snippet(error)
        if isinstance(decoded.get("message"), str):
            return _snippet(str(decoded["message"]))
    return _snippet_bytes(body)
