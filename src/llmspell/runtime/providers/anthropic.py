"""A lean async client for Anthropic's Messages API, built on httpx.

Same approach as :mod:`llmspell.runtime.providers.openai_compat`: one small HTTP
dependency instead of the vendor SDK, full control of timeouts and of how failures become
:class:`~llmspell.errors.ProviderError`, and easy to test against a local server.

Streaming (:meth:`AnthropicProvider.stream`) reads the Messages API's server-sent events:
``message_start`` (model, input usage), ``content_block_start`` / ``content_block_delta``
(``text_delta``, ``input_json_delta``) / ``content_block_stop``, ``message_delta`` (stop
reason, output usage), ``message_stop`` (the end marker), ``ping`` and ``error``; thinking
blocks and unknown events are skipped.

Usage: ``input_tokens`` counts every input token the model processed: uncached input,
cache writes (``cache_creation_input_tokens``) and cache reads
(``cache_read_input_tokens``); ``cached_tokens`` is the cache reads alone (the part billed
cheaper; cache writes are billed above the input price and are not told apart).

Wire mapping: system messages go to the top-level ``system``; an assistant's tool calls
are ``tool_use`` content blocks; tool results are ``tool_result`` blocks inside a user
message (consecutive results share one message). ``stop_reason`` is normalised to the
provider-neutral ``finish_reason`` vocabulary used by every provider here: ``end_turn`` and
``stop_sequence`` -> ``stop``, ``tool_use`` -> ``tool_calls``, ``max_tokens`` -> ``length``
(others pass through unchanged).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import httpx
import msgspec

from llmspell.core.errors import InvalidValueError, ProviderError
from llmspell.runtime.providers.base import (
    Completion,
    Message,
    StreamDelta,
    TokenUsage,
    ToolCall,
    ToolSpec,
    non_object_arguments,
    tool_call_from_text,
)
from llmspell.runtime.providers.openai_compat import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_RESPONSE_BYTES,
    HttpProvider,
    _CallDraft,
    _check_base_url,
    _check_deadline,
    _check_max_response_bytes,
    _check_max_tokens,
    _check_model,
    _check_timeout,
    _cut,
    _error_text,
    _int,
    _post_json,
    _Received,
    _redact_url,
    _secret_tuple,
    _snippet_bytes,
    _split_credentials,
    _total,
)
from llmspell.runtime.providers.sse import SSEEvent

__all__ = ["AnthropicProvider"]

_NAME = "anthropic"
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
}


class AnthropicProvider(HttpProvider):
    """A :class:`~llmspell.runtime.providers.base.Provider` for Anthropic's Messages API
    (``POST {base_url}/v1/messages``).

    ``api_key`` is sent as ``x-api-key`` (only when given), ``anthropic_version`` as the
    ``anthropic-version`` header. The API requires a token cap on every call:
    ``max_tokens`` is the one used when a call does not give its own.

    ``timeout`` (seconds) configures the client this provider creates; a ``client``
    passed in keeps its own settings and is not closed by :meth:`aclose`. In a stream it
    bounds the wait for each next piece, not the whole answer.

    ``deadline`` (seconds, None for none) bounds a whole call, from sending the request
    to the last byte of the answer, streamed or not: past it the call fails with a
    retryable :class:`~llmspell.errors.ProviderError`.

    ``max_response_bytes`` bounds one answer (a JSON body, or a whole event stream, both
    as received and after decompression): past it the call fails with
    :class:`~llmspell.errors.ProviderResponseTooLargeError`.

    Credentials in ``base_url`` are sent as HTTP basic auth, never shown in errors or
    ``repr``; they and the key are taken out of every error message. Redirects are not
    followed (the key would go along).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "https://api.anthropic.com",
        api_key: str | None = None,
        timeout: float = 60.0,
        max_tokens: int = 1024,
        anthropic_version: str = "2023-06-01",
        client: httpx.AsyncClient | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        deadline: float | None = DEFAULT_DEADLINE,
    ) -> None:
        _check_model(model)
        base, basic, secrets = _split_credentials(_check_base_url(base_url))
        _check_timeout(timeout)
        _check_deadline(deadline)
        _check_max_tokens(max_tokens)
        _check_max_response_bytes(max_response_bytes)
        self._limit = max_response_bytes
        self._deadline = deadline
        self._model = model
        self._base_url = base_url.rstrip("/")
        self._max_tokens = max_tokens
        # Accept both the host root and a root that already ends in /v1.
        self._url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        self._headers: dict[str, str] = {
            "Content-Type": "application/json",
            "anthropic-version": anthropic_version,
        }
        if api_key:
            self._headers["x-api-key"] = api_key
            secrets.append(api_key)
        if basic is not None:
            self._headers["Authorization"] = basic
        self._secrets = _secret_tuple(secrets)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(
            timeout=httpx.Timeout(timeout)
        )

    @property
    def name(self) -> str:
        """Always ``anthropic``."""
        return _NAME

    @property
    def model(self) -> str:
        """The model used when a call does not name one."""
        return self._model

    @property
    def base_url(self) -> str:
        """The API root requests go to (without a trailing slash), as configured."""
        return self._base_url

    def __repr__(self) -> str:
        return (f"AnthropicProvider(model={self._model!r}, "
                f"base_url={_redact_url(self._base_url)!r})")

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
        :class:`ProviderError` when the call fails (``status`` and ``retryable`` set;
        529 "overloaded" is retryable).
        """
        with self._scrubbing():
            used_model, payload = self._payload(messages, tools, model, temperature,
                                                max_tokens)
            body = await _post_json(
                self._client, provider=_NAME, url=self._url, payload=payload,
                headers=self._headers, limit=self._limit, deadline=self._deadline,
            )
            return _parse_message(body, model=used_model)

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[StreamDelta | Completion]:
        """Send the conversation with ``stream: true``; yield :class:`StreamDelta` items
        as they arrive, then the assembled :class:`Completion` (with usage).

        Raises :class:`ProviderError` as :meth:`complete` does when the call fails before
        the stream starts, and :class:`ProviderStreamError` when it breaks off before
        ``message_stop`` (connection closed or stalled past the timeout, a malformed
        event, an ``error`` event: retryable unless it says the request is invalid);
        :class:`ProviderResponseTooLargeError` past ``max_response_bytes``.
        """
        with self._scrubbing():
            used_model, payload = self._payload(messages, tools, model, temperature,
                                                max_tokens)
            payload["stream"] = True
            items = self._streamed(_NAME, payload, _AnthropicStream(used_model),
                                   "'message_stop'")
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
        system, wire_messages = _messages_to_wire(messages)
        payload: dict[str, Any] = {
            "model": used_model,
            "max_tokens": max_tokens if max_tokens is not None else self._max_tokens,
            "messages": wire_messages,
        }
        if system is not None:
            payload["system"] = system
        if tools:
            payload["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in tools
            ]
        if temperature is not None:
            payload["temperature"] = temperature
        return used_model, payload


def _messages_to_wire(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    system_parts: list[str] = []
    wire: list[dict[str, Any]] = []
    for message in messages:
        role = message.role
        if role == "system":
            if message.content:
                system_parts.append(message.content)
        elif role == "user":
            wire.append({"role": "user", "content": message.content or ""})
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            blocks.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in message.tool_calls
            )
            wire.append({"role": "assistant", "content": blocks or (message.content or "")})
        elif role == "tool":
            if not message.tool_call_id:
                raise InvalidValueError(
                    "a tool message has no tool_call_id",
                    hint="set tool_call_id to the id of the ToolCall it answers",
                )
            block = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content or "",
            }
            last = wire[-1] if wire else None
            if (last is not None and last["role"] == "user" and isinstance(last["content"], list)
                    and all(b.get("type") == "tool_result" for b in last["content"])):
                last["content"].append(block)
            else:
                wire.append({"role": "user", "content": [block]})
        else:
            raise InvalidValueError(
                f"unknown message role {role!r}",
                hint="use 'system', 'user', 'assistant' or 'tool'",
            )
    return ("\n\n".join(system_parts) if system_parts else None), wire


def _parse_message(body: Any, *, model: str) -> Completion:
    def malformed(what: str) -> ProviderError:
        return ProviderError(
            _NAME,
            f"anthropic returned a malformed message: {what}",
            hint="check that base_url points at the Anthropic API root",
        )

    if not isinstance(body, dict):
        raise malformed("the body is not a JSON object")
    blocks = body.get("content")
    if not isinstance(blocks, list):
        raise malformed("no content list")
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in blocks:
        if not isinstance(block, dict):
            raise malformed("a content block is not an object")
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
            if not isinstance(call_id, str) or not isinstance(name, str) or not name:
                raise malformed("a tool_use block has no id or name")
            if arguments is None:
                arguments = {}
            # Input that is not an object is the model's mistake: kept, for the agent to
            # answer with an error the model reads.
            calls.append(ToolCall(id=call_id, name=name, arguments=arguments)
                         if isinstance(arguments, dict)
                         else non_object_arguments(call_id, name, arguments))
        # thinking and other block kinds carry nothing the neutral shape holds

    stop = body.get("stop_reason")
    if isinstance(stop, str) and stop:
        finish = _FINISH_REASONS.get(stop, stop)
    else:
        finish = "tool_calls" if calls else "stop"
    answered_by = body.get("model")
    if not isinstance(answered_by, str) or not answered_by:
        answered_by = model
    return Completion(
        message=Message(
            role="assistant", content="".join(texts) if texts else None, tool_calls=tuple(calls)
        ),
        finish_reason=finish,
        model=answered_by,
        usage=_parse_usage(body.get("usage"), model=answered_by),
    )


def _parse_usage(raw: Any, *, model: str) -> TokenUsage | None:
    """Input counts cache writes and reads too: they are input the model processed;
    ``cached_tokens`` is the cache reads (see the module docstring)."""
    if not isinstance(raw, dict):
        return None
    cache_read = _int(raw.get("cache_read_input_tokens"))
    prompt = _total(
        _int(raw.get("input_tokens")), _int(raw.get("cache_creation_input_tokens")), cache_read
    )
    output = _int(raw.get("output_tokens"))
    return TokenUsage(
        input_tokens=prompt,
        output_tokens=output,
        total_tokens=_total(prompt, output),
        model=model,
        provider=_NAME,
        cached_tokens=cache_read,
    )


# -- streaming -------------------------------------------------------------------------------

# Error types that say the request itself is wrong: retrying the same request cannot help.
_FINAL_ERRORS = frozenset({
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "request_too_large", "billing_error",
})


class _WireBlock(msgspec.Struct):
    type: str = ""
    id: str | None = None
    name: str | None = None
    text: str | None = None
    input: Any = None


class _WireDelta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _WireMessage(msgspec.Struct):
    model: str | None = None
    usage: dict[str, Any] | None = None


class _WireEvent(msgspec.Struct):
    type: str = ""
    index: int | None = None
    message: _WireMessage | None = None
    content_block: _WireBlock | None = None
    delta: _WireDelta | None = None
    usage: dict[str, Any] | None = None
    error: Any = None


_EVENT_DECODER = msgspec.json.Decoder(_WireEvent)


class _AnthropicStream:
    """Turns the events of a Messages stream into deltas and, at ``message_stop``, the
    assembled :class:`Completion`."""

    __slots__ = ("_blocks", "_calls", "_model", "_stop", "_texts", "_usage", "done")

    def __init__(self, model: str) -> None:
        self._model = model
        self._texts: list[str] = []
        self._calls: list[_CallDraft] = []
        self._blocks: dict[int, int] = {}  # content block index -> tool call position
        self._stop: str | None = None
        self._usage: dict[str, Any] | None = None
        self.done = False

    def feed(self, event: SSEEvent, received: _Received) -> list[StreamDelta]:
        """The deltas one event carries (``message_stop`` sets ``done``)."""
        try:
            wire = _EVENT_DECODER.decode(event.data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise _cut(_NAME, received,
                       f"a malformed {event.event!r} event ({exc}): "
                       f"{_snippet_bytes(event.data)!r}") from exc
        kind = wire.type or event.event
        if kind == "content_block_delta":
            delta = wire.delta
            if delta is None or wire.index is None:
                raise _cut(_NAME, received, "a content_block_delta without index or delta")
            if delta.type == "text_delta":
                if delta.text:
                    self._texts.append(delta.text)
                    return [StreamDelta(text=delta.text)]
            elif delta.type == "input_json_delta":
                position = self._blocks.get(wire.index)
                if position is None:
                    raise _cut(_NAME, received,
                               f"input_json_delta for block {wire.index}, which is no tool_use")
                if delta.partial_json:
                    self._calls[position].parts.append(delta.partial_json)
                    return [StreamDelta(tool_call_index=position,
                                        arguments_text=delta.partial_json)]
            return []  # thinking, signature, citations: nothing the neutral shape holds
        if kind == "content_block_start":
            return self._block_start(wire, received)
        if kind == "message_start":
            if wire.message is not None:
                if wire.message.model:
                    self._model = wire.message.model
                if wire.message.usage is not None:
                    self._usage = dict(wire.message.usage)
        elif kind == "message_delta":
            if wire.delta is not None and wire.delta.stop_reason:
                self._stop = wire.delta.stop_reason
            if wire.usage is not None:  # cumulative counts: the latest wins
                usage = self._usage if self._usage is not None else {}
                usage.update((k, v) for k, v in wire.usage.items() if v is not None)
                self._usage = usage
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            error = wire.error
            error_type = error.get("type") if isinstance(error, dict) else None
            final = error_type in _FINAL_ERRORS
            raise _cut(_NAME, received, f"the server sent an error: {_error_text(error)}",
                       retryable=not final,
                       hint="the request was refused; check the model, messages and tools"
                       if final else None)
        # content_block_stop, ping and event kinds added later carry nothing needed here
        return []

    def _block_start(self, wire: _WireEvent, received: _Received) -> list[StreamDelta]:
        block = wire.content_block
        if block is None or wire.index is None:
            raise _cut(_NAME, received, "a content_block_start without index or block")
        if block.type == "text":
            if block.text:
                self._texts.append(block.text)
                return [StreamDelta(text=block.text)]
            return []
        if block.type != "tool_use":
            return []
        if not block.id or not block.name:
            raise _cut(_NAME, received, "a tool_use block without id or name")
        draft = _CallDraft()
        draft.id, draft.name = block.id, block.name
        arguments = ""
        # The start block's input is {} when the input streams as input_json_delta; any
        # other value is the input itself (an object or, the model's mistake, not one).
        if block.input is not None and block.input != {}:
            arguments = msgspec.json.encode(block.input).decode()
            draft.parts.append(arguments)
        self._calls.append(draft)
        position = self._blocks[wire.index] = len(self._calls) - 1
        return [StreamDelta(tool_call_index=position, tool_call_id=block.id,
                            tool_name=block.name, arguments_text=arguments)]

    def finish(self) -> Completion:
        """The assembled answer (after ``message_stop``)."""
        calls = tuple(
            tool_call_from_text(draft.id or "", draft.name or "", "".join(draft.parts))
            for draft in self._calls
        )
        if self._stop:
            finish = _FINISH_REASONS.get(self._stop, self._stop)
        else:
            finish = "tool_calls" if calls else "stop"
        return Completion(
            message=Message(role="assistant",
                            content="".join(self._texts) if self._texts else None,
                            tool_calls=calls),
            finish_reason=finish,
            model=self._model,
            usage=_parse_usage(self._usage, model=self._model),
        )
