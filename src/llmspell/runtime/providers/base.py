"""What the runtime needs from a model provider: chat completion with tool calling.

Messages, tool calls and usage are msgspec Structs in one provider-neutral shape; each
provider converts to and from its wire format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = [
    "Completion",
    "Message",
    "Provider",
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
    """Tokens one model call used, and which model and provider used them."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    model: str
    provider: str


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """A model's answer: the assistant message, why it stopped, and the usage."""

    message: Message
    finish_reason: str
    model: str
    usage: TokenUsage | None = None


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
