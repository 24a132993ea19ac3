"""What the runtime needs from a model provider: chat completion with tool calling.

Messages, tool calls and usage are msgspec Structs in one provider-neutral shape; each
provider converts to and from its wire format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = [
    "MAX_RAW_ARGUMENTS_CHARS",
    "Completion",
    "Message",
    "Provider",
    "StreamDelta",
    "StreamingProvider",
    "TokenUsage",
    "ToolCall",
    "ToolSpec",
    "non_object_arguments",
    "tool_call_from_text",
]

MAX_RAW_ARGUMENTS_CHARS = 100_000
"""The most characters of a model's unusable tool-call arguments text a :class:`ToolCall`
keeps in ``raw_arguments`` (the rest is cut, saying how much)."""


class ToolCall(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The model asks for ``name`` to be run with ``arguments``; ``id`` pairs the result.

    When the model's arguments were unusable (not valid JSON, or JSON that is not an
    object), the call is still kept, so it can be answered: ``arguments`` is then ``{}``,
    ``argument_error`` says what was wrong (``"not valid JSON (...)"``, ``"a JSON array,
    not an object"``) and ``raw_arguments`` holds the text the model sent. An agent
    answers such a call with an error the model reads and never runs it. Both are left out
    of the call's JSON while unset, so a usable call encodes (and digests, in a recorded
    run) as it always did.
    """

    id: str
    name: str
    arguments: dict[str, Any]
    argument_error: str | None = None
    raw_arguments: str | None = None


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One chat message. ``role`` is ``system``, ``user``, ``assistant`` or ``tool``.

    An assistant message may carry ``tool_calls``; a tool message answers the call
    ``tool_call_id`` (and names the tool in ``name``).
    """

    role: str
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A tool offered to the model: name, description, JSON Schema of its parameters."""

    name: str
    description: str
    parameters: dict[str, Any]


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens one model call used, and which model and provider used them.

    ``cached_tokens`` is the part of ``input_tokens`` served from the provider's prompt
    cache (billed cheaper); ``reasoning_tokens`` the part of ``output_tokens`` the model
    spent reasoning. Both are 0 when the provider does not report them.
    """

    input_tokens: int
    output_tokens: int
    total_tokens: int
    model: str
    provider: str
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """A model's answer: the assistant message, why it stopped, and the usage."""

    message: Message
    finish_reason: str
    model: str
    usage: TokenUsage | None = None


class StreamDelta(msgspec.Struct, frozen=True, kw_only=True):
    """A piece of a streamed answer, as it arrived.

    A text delta carries ``text``. A tool-call delta carries ``tool_call_index`` (the
    call's position in the assembled ``Completion.message.tool_calls``, from 0); the first
    delta of a call also carries ``tool_call_id`` and ``tool_name``, and
    ``arguments_text`` is the next fragment of the call's JSON arguments (the fragments of
    one call concatenated are its whole arguments text).
    """

    text: str = ""
    tool_call_index: int | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    arguments_text: str = ""


@runtime_checkable
class Provider(Protocol):
    """A chat-completions model provider."""

    @property
    def name(self) -> str:
        """The provider's name (``openai``, ``anthropic``, ``scripted``, ...)."""
        ...

    @property
    def model(self) -> str:
        """The model used when a call does not name one."""
        ...

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        """Send the conversation (and the tools on offer); return the model's answer.

        Raises :class:`~llmspell.errors.ProviderError` (with ``status`` and ``retryable``)
        when the call fails.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class StreamingProvider(Provider, Protocol):
    """A :class:`Provider` that can also stream its answer as it is generated."""

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[StreamDelta | Completion]:
        """Send the conversation like :meth:`Provider.complete`; yield
        :class:`StreamDelta` items as they arrive, then exactly one assembled
        :class:`Completion` (with usage when the provider reports it) as the last item.

        Raises :class:`~llmspell.errors.ProviderError` when the call fails before the
        answer starts, and :class:`~llmspell.errors.ProviderStreamError` when the stream
        breaks off before its end (then no ``Completion`` is yielded). The iterator is an
        async generator: ``aclose()`` it (or use ``contextlib.aclosing``) to stop early
        and release the connection at once.
        """
        ...


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def tool_call_from_text(id: str, name: str, text: str | None) -> ToolCall:
    """The :class:`ToolCall` for arguments the model sent as JSON text.

    Text that decodes to a JSON object gives those arguments; no text, or only whitespace,
    gives ``{}``. Anything else is the model's mistake, not a failed call: the call keeps
    ``arguments={}`` with ``argument_error`` and ``raw_arguments`` set (see
    :class:`ToolCall`), so the model can be told and try again.
    """
    if text is None or not text.strip():
        return ToolCall(id=id, name=name, arguments={})
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        problem = f"not valid JSON ({exc})"
    except RecursionError:
        problem = "not valid JSON (nested too deeply)"
    else:
        if isinstance(value, dict):
            return ToolCall(id=id, name=name, arguments=value)
        problem = f"a JSON {_JSON_KINDS.get(type(value), type(value).__name__)}, not an object"
    return ToolCall(id=id, name=name, arguments={}, argument_error=problem,
                    raw_arguments=_bounded(text))


def non_object_arguments(id: str, name: str, value: Any) -> ToolCall:
    """The :class:`ToolCall` for arguments that arrived already decoded but are not an
    object (a JSON array, string, number, ...): kept with ``argument_error`` set and
    ``raw_arguments`` the value's JSON text."""
    try:
        raw = msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        raw = repr(value)
    kind = _JSON_KINDS.get(type(value), type(value).__name__)
    return ToolCall(id=id, name=name, arguments={},
                    argument_error=f"a JSON {kind}, not an object", raw_arguments=_bounded(raw))


def _bounded(text: str) -> str:
    if len(text) <= MAX_RAW_ARGUMENTS_CHARS:
        return text
    return (f"{text[:MAX_RAW_ARGUMENTS_CHARS]}... "
            f"[{len(text) - MAX_RAW_ARGUMENTS_CHARS} more characters]")
