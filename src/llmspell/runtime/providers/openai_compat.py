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

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx
import msgspec

from llmspell.core.errors import InvalidValueError, ProviderError
from llmspell.runtime.providers.base import (
    Completion,
    Message,
    TokenUsage,
    ToolCall,
    ToolSpec,
)

__all__ = ["OpenAICompatibleProvider"]

_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_SNIPPET = 300


class HttpProvider:
    """What the HTTP providers share: an httpx client they may own, closed by ``aclose``
    (a client passed in is left open), and ``async with`` support."""

    _client: httpx.AsyncClient
    _owns_client: bool

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
    passed in keeps its own settings and is not closed by :meth:`aclose`.
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
    ) -> None:
        _check_model(model)
        self._base_url = _check_base_url(base_url)
        _check_timeout(timeout)
        if max_tokens is not None:
            _check_max_tokens(max_tokens)
        if not name:
            raise InvalidValueError("provider name must not be empty")
        self._model = model
        self._name = name
        self._max_tokens = max_tokens
        self._url = f"{self._base_url}/chat/completions"
        self._headers: dict[str, str] = {"Content-Type": "application/json"}
        self._headers.update(extra_headers or {})
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
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
        """The API root requests go to (without a trailing slash)."""
        return self._base_url

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleProvider(model={self._model!r}, base_url={self._base_url!r}, "
            f"name={self._name!r})"
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
        used_model = model or self._model
        payload: dict[str, Any] = {
            "model": used_model,
            "messages": [_message_to_wire(m) for m in messages],
            "stream": False,
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
        body = await _post_json(
            self._client, provider=self._name, url=self._url, payload=payload,
            headers=self._headers,
        )
        return _parse_completion(body, provider=self._name, model=used_model)



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
    """The tool call's arguments as the JSON string the wire format wants."""
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
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise malformed(f"tool call {index} has no function name")
        call_id = item.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call_{index}"  # some local servers leave ids out
        arguments = _decode_arguments(
            function.get("arguments"), provider=provider, tool=function["name"]
        )
        calls.append(ToolCall(id=call_id, name=function["name"], arguments=arguments))

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


def _decode_arguments(raw: Any, *, provider: str, tool: str) -> dict[str, Any]:
    """Decode tool-call arguments (a JSON string, or already an object) into a dict.

    Raises :class:`ProviderError` when they are not a JSON object.
    """
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise ProviderError(
            provider,
            f"{provider} sent arguments for tool {tool!r} that are a "
            f"{type(raw).__name__}, not a JSON string",
        )
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ProviderError(
            provider,
            f"the model called tool {tool!r} with arguments that are not valid JSON: "
            f"{_snippet(raw)!r}",
            hint="the model produced broken JSON; retry, or use a model better at tool calls",
        ) from exc
    if not isinstance(value, dict):
        raise ProviderError(
            provider,
            f"the model called tool {tool!r} with arguments that are a JSON "
            f"{type(value).__name__}, not an object: {_snippet(raw)!r}",
            hint="tool arguments must be a JSON object",
        )
    return value


def _parse_usage(raw: Any, *, provider: str, model: str) -> TokenUsage | None:
    if not isinstance(raw, dict):
        return None
    prompt = _int(raw.get("prompt_tokens"))
    completion = _int(raw.get("completion_tokens"))
    total = _int(raw.get("total_tokens"))
    return TokenUsage(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=total or prompt + completion,
        model=model,
        provider=provider,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# -- shared HTTP plumbing (also used by the Anthropic provider) ------------------------------


def _check_model(model: str) -> None:
    if not isinstance(model, str) or not model:
        raise InvalidValueError("model must be a non-empty string", hint="e.g. model='gpt-4o'")


def _check_base_url(base_url: str) -> str:
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise InvalidValueError(
            f"base_url {base_url!r} is not an http(s) URL",
            hint="e.g. 'https://api.openai.com/v1' or 'http://127.0.0.1:11434/v1'",
        )
    return base_url.rstrip("/")


def _check_timeout(timeout: float) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidValueError(f"timeout must be a positive number of seconds, not {timeout!r}")


def _check_max_tokens(max_tokens: int) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise InvalidValueError(f"max_tokens must be a positive int, not {max_tokens!r}")


def _snippet(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"


async def _post_json(
    client: httpx.AsyncClient,
    *,
    provider: str,
    url: str,
    payload: dict[str, Any],
    headers: Mapping[str, str],
) -> Any:
    """POST ``payload`` as JSON; return the decoded JSON body of a 2xx answer.

    Every failure becomes a :class:`ProviderError`: HTTP errors carry the status and
    the server's message, retryable for 408/409/429/5xx; timeouts and connection
    failures are retryable; a body that is not JSON is not.
    """
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
    try:
        response = await client.post(url, content=content, headers=dict(headers))
    except httpx.TimeoutException as exc:
        raise ProviderError(
            provider,
            f"request to {url} timed out ({type(exc).__name__})",
            retryable=True,
            hint="retry, or raise the provider's timeout",
        ) from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise ProviderError(
            provider,
            f"could not reach {url}: {type(exc).__name__}: {exc}",
            retryable=True,
            hint="is the server running, and is base_url right?",
        ) from exc
    except httpx.HTTPError as exc:
        raise ProviderError(
            provider,
            f"request to {url} failed: {type(exc).__name__}: {exc}",
            hint="check base_url",
        ) from exc

    if response.status_code >= 400:
        raise _status_error(provider, url, response)
    try:
        return msgspec.json.decode(response.content)
    except msgspec.DecodeError as exc:
        raise ProviderError(
            provider,
            f"{provider} answered HTTP {response.status_code} with a body that is not JSON: "
            f"{_snippet(response.text)!r}",
            status=response.status_code,
            hint="check that base_url points at the API root, not a web page or proxy",
        ) from exc


def _status_error(provider: str, url: str, response: httpx.Response) -> ProviderError:
    status = response.status_code
    detail = _error_detail(response)
    retryable = status in _RETRYABLE_STATUSES or status >= 500
    if status in (401, 403):
        hint = "check the API key (LLMSPELL_API_KEY, OPENAI_API_KEY or ANTHROPIC_API_KEY)"
    elif status == 404:
        hint = f"check base_url ({url}) and the model name"
    elif status == 413:
        hint = "the request is too large; shorten the conversation"
    elif retryable:
        after = response.headers.get("retry-after")
        hint = f"retry after {after} s" if after else "retry with backoff"
    else:
        hint = "the server rejected the request; check the model name, messages and tools"
    message = f"{provider} returned HTTP {status}"
    if detail:
        message += f": {detail}"
    return ProviderError(provider, message, status=status, retryable=retryable, hint=hint)


def _error_detail(response: httpx.Response) -> str:
    """The server's error message: ``{"error": {"message": ...}}`` (OpenAI, Anthropic),
    ``{"error": "..."}`` (Ollama), ``{"message": ...}`` (vLLM), else a text snippet."""
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return _snippet(response.text)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return _snippet(response.text)
