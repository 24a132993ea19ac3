"""What the runtime needs from a model provider: chat completion with tool calling.

Messages, tool calls and usage are msgspec Structs in one provider-neutral shape; each
provider converts to and from its wire format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = [
    "Completion",
    "Message",
    "Provider",
    "StreamDelta",
    "StreamingProvider",
    "TokenUsage",
    "ToolCall",
    "ToolSpec",
]


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """The model asks for ``name`` to be run with ``arguments``; ``id`` pairs the result."""

    id: str
    name: str
    arguments: dict[str, Any]


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
