"""A lean async client for Anthropic's Messages API, built on httpx.

Same approach as :mod:`llmspell.runtime.providers.openai_compat`: one small HTTP
dependency instead of the vendor SDK, full control of timeouts and of how failures become
:class:`~llmspell.errors.ProviderError`, and easy to test against a local server.

Wire mapping: system messages go to the top-level ``system``; an assistant's tool calls
are ``tool_use`` content blocks; tool results are ``tool_result`` blocks inside a user
message (consecutive results share one message). ``stop_reason`` is normalised to the
provider-neutral ``finish_reason`` vocabulary used by every provider here: ``end_turn`` and
``stop_sequence`` -> ``stop``, ``tool_use`` -> ``tool_calls``, ``max_tokens`` -> ``length``
(others pass through unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from llmspell.core.errors import InvalidValueError, ProviderError
from llmspell.runtime.providers.base import (
    Completion,
    Message,
    TokenUsage,
    ToolCall,
    ToolSpec,
)
from llmspell.runtime.providers.openai_compat import (
    HttpProvider,
    _check_base_url,
    _check_max_tokens,
    _check_model,
    _check_timeout,
    _int,
    _post_json,
)

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
    passed in keeps its own settings and is not closed by :meth:`aclose`.
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
    ) -> None:
        _check_model(model)
        base = _check_base_url(base_url)
        _check_timeout(timeout)
        _check_max_tokens(max_tokens)
        self._model = model
        self._base_url = base
        self._max_tokens = max_tokens
        # Accept both the host root and a root that already ends in /v1.
        self._url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        self._headers: dict[str, str] = {
            "Content-Type": "application/json",
            "anthropic-version": anthropic_version,
        }
        if api_key:
            self._headers["x-api-key"] = api_key
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
        """The API root requests go to (without a trailing slash)."""
        return self._base_url

    def __repr__(self) -> str:
        return f"AnthropicProvider(model={self._model!r}, base_url={self._base_url!r})"

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
        body = await _post_json(
            self._client, provider=_NAME, url=self._url, payload=payload, headers=self._headers
        )
        return _parse_message(body, model=used_model)



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
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise malformed("a tool_use block has no id or name")
            if arguments is None:
                arguments = {}
            if not isinstance(arguments, dict):
                raise ProviderError(
                    _NAME,
                    f"the model called tool {name!r} with input that is a "
                    f"{type(arguments).__name__}, not an object",
                    hint="tool input must be a JSON object",
                )
            calls.append(ToolCall(id=call_id, name=name, arguments=arguments))
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
    """Input counts cache writes and reads too: they are input the model processed, and
    :class:`TokenUsage` has no separate fields for them."""
    if not isinstance(raw, dict):
        return None
    prompt = (
        _int(raw.get("input_tokens"))
        + _int(raw.get("cache_creation_input_tokens"))
        + _int(raw.get("cache_read_input_tokens"))
    )
    output = _int(raw.get("output_tokens"))
    return TokenUsage(
        input_tokens=prompt,
        output_tokens=output,
        total_tokens=prompt + output,
        model=model,
        provider=_NAME,
    )
