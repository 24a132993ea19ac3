"""A deterministic provider that plays back scripted replies: for offline examples and tests.

It is not a model and does not pretend to be one: it answers with exactly what it was
given, in order (or with whatever a callable returns), fabricates token usage by a fixed
rule so cost tracking has something to count, and records the calls (the last
``max_calls``, :data:`DEFAULT_MAX_CALLS` by default, so a long-lived provider stays bounded).
"""

from __future__ import annotations

import inspect
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import msgspec

from llmspell.core.errors import InvalidValueError, ProviderError
from llmspell.runtime.providers.base import (
    Completion,
    Message,
    StreamDelta,
    TokenUsage,
    ToolCall,
    ToolSpec,
    tool_call_from_text,
)

__all__ = ["DEFAULT_MAX_CALLS", "CallLog", "CallRecord", "Reply", "ReplyFunction",
           "ScriptedProvider"]

DEFAULT_MAX_CALLS = 1000
"""How many calls a :class:`ScriptedProvider` keeps in ``calls`` unless told otherwise."""

CallRecord: TypeAlias = tuple[list[Message], list[ToolSpec]]
"""One recorded call: the messages and the tools it was given."""


class CallLog(deque[CallRecord]):
    """The calls a :class:`ScriptedProvider` recorded, oldest first: a deque bounded by its
    ``maxlen`` (the oldest call is dropped for a new one past it). It compares equal to a
    list of the same records as well as to a deque, so ``provider.calls == []`` reads as it
    did when ``calls`` was a list."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return len(self) == len(other) and all(
                mine == theirs for mine, theirs in zip(self, other, strict=True))
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None

Reply: TypeAlias = str | Message | Completion | dict[str, Any]
"""One scripted reply: a final answer (``str``), an assistant :class:`Message`, a whole
:class:`Completion`, or ``{"tool_calls": [{"name": ..., "arguments": {...}}], "content": ...}``
(``content`` optional, each call may give its own ``id``). A call's ``arguments`` may also
be JSON text, read as a real provider reads the model's: text that is not a JSON object
gives a call with ``argument_error`` set (see :class:`ToolCall`). A :class:`Completion` is
returned exactly as given."""

ReplyFunction: TypeAlias = Callable[
    [list[Message], list[ToolSpec]], Reply | Awaitable[Reply]
]
"""Computes the reply from the conversation and the tools on offer (sync or async)."""

_TOOL_CALL_KEYS = frozenset({"name", "arguments", "id"})
_WORDS = re.compile(r"\s*\S+\s*|\s+")  # each word with the spaces around it
_REPLY_KEYS = frozenset({"tool_calls", "content"})


class _Draft:
    """A normalised reply whose tool calls may still need ids."""

    __slots__ = ("calls", "content")

    def __init__(self, content: str | None, calls: list[ToolCall]):
        self.content = content
        self.calls = calls  # an empty id: to be given one


class ScriptedProvider:
    """A :class:`~llmspell.runtime.providers.base.Provider` that plays back ``replies``.

    ``replies`` is a list of :data:`Reply` items used one per call, in order (running
    out raises :class:`ProviderError`), or a callable ``(messages, tools) -> Reply``,
    sync or async, called for every call (an exception it raises propagates as is, which
    lets tests simulate provider failures).

    Tool calls without an id get ``call_1``, ``call_2``, ... counted across the whole
    provider. Usage (unless a :class:`Completion` reply carries its own) is fabricated
    deterministically: input = total characters of all message contents // 4, output =
    characters of the reply content // 4 + 10 per tool call, total = their sum.

    ``calls`` records ``(messages, tools)`` of the last ``max_calls`` calls (default
    :data:`DEFAULT_MAX_CALLS`), for assertions; ``call_count`` counts every call.
    """

    def __init__(
        self,
        replies: Sequence[Reply] | ReplyFunction,
        *,
        model: str = "scripted",
        name: str = "scripted",
        max_calls: int = DEFAULT_MAX_CALLS,
    ) -> None:
        if not model or not name:
            raise InvalidValueError("model and name must be non-empty strings")
        if not isinstance(max_calls, int) or isinstance(max_calls, bool) or max_calls < 1:
            raise InvalidValueError(
                f"max_calls must be an int >= 1, got {max_calls!r}",
                hint=f"it bounds the calls kept in ScriptedProvider.calls "
                     f"(default {DEFAULT_MAX_CALLS})")
        self._model = model
        self._name = name
        self._function: ReplyFunction | None = None
        self._queue: list[_Draft | Completion] = []
        if callable(replies):
            self._function = replies
        elif isinstance(replies, str | bytes) or not isinstance(replies, Sequence):
            raise InvalidValueError(
                f"replies must be a list of replies or a callable, not {type(replies).__name__}",
                hint="e.g. ScriptedProvider(['the answer']) or ScriptedProvider(fn)",
            )
        else:
            self._queue = [_normalise(r, f"replies[{i}]") for i, r in enumerate(replies)]
        self._scripted = len(self._queue)
        self._next_id = 0
        self.calls: CallLog = CallLog(maxlen=max_calls)
        """``(messages, tools)`` of the last ``max_calls`` calls, oldest first."""
        self._call_count = 0

    @property
    def call_count(self) -> int:
        """Calls made so far, including those no longer kept in ``calls``."""
        return self._call_count

    @property
    def name(self) -> str:
        """The provider name (``scripted`` unless given)."""
        return self._name

    @property
    def model(self) -> str:
        """The model name reported (``scripted`` unless given)."""
        return self._model

    @property
    def remaining(self) -> int:
        """Scripted replies not yet used (0 in callable mode)."""
        return len(self._queue)

    def __repr__(self) -> str:
        mode = "callable" if self._function else f"{len(self._queue)} replies left"
        return f"ScriptedProvider(model={self._model!r}, {mode})"

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        """Return the next scripted reply as a :class:`Completion` (``temperature`` and
        ``max_tokens`` are accepted and ignored)."""
        seen_messages, seen_tools = list(messages), list(tools)
        self.calls.append((seen_messages, seen_tools))
        self._call_count += 1
        if self._function is not None:
            result = self._function(list(seen_messages), list(seen_tools))
            if inspect.isawaitable(result):
                result = await result
            try:
                draft = _normalise(result, "the reply function's result")
            except InvalidValueError as exc:
                raise ProviderError(
                    self._name, exc.message, hint=exc.hint or "return a str, Message, "
                    "Completion or tool-call dict",
                ) from exc
        elif self._queue:
            draft = self._queue.pop(0)
        else:
            raise ProviderError(
                self._name,
                f"the scripted provider ran out of replies after {self._scripted} "
                f"(call {self._call_count})",
                hint="script one more reply for this call, or pass a callable that computes "
                "replies",
            )
        if isinstance(draft, Completion):
            if draft.usage is not None:
                return draft
            return Completion(
                message=draft.message,
                finish_reason=draft.finish_reason,
                model=draft.model,
                usage=self._usage(seen_messages, draft.message, draft.model),
            )
        calls = tuple(
            call if call.id else msgspec.structs.replace(call, id=self._new_id())
            for call in draft.calls
        )
        message = Message(role="assistant", content=draft.content, tool_calls=calls)
        used_model = model or self._model
        return Completion(
            message=message,
            finish_reason="tool_calls" if calls else "stop",
            model=used_model,
            usage=self._usage(seen_messages, message, used_model),
        )

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[StreamDelta | Completion]:
        """Stream the next scripted reply: its text as word deltas (each word with the
        whitespace that follows it, leading whitespace with the first word, so the deltas
        join to the text exactly), then each tool call
        as one delta (id, name and the whole arguments JSON), then the :class:`Completion`
        that :meth:`complete` would have returned. The call is recorded in ``calls`` once.
        """
        completion = await self.complete(
            messages, tools=tools, model=model, temperature=temperature,
            max_tokens=max_tokens,
        )
        for word in _WORDS.findall(completion.message.content or ""):
            yield StreamDelta(text=word)
        for index, call in enumerate(completion.message.tool_calls):
            text = call.raw_arguments if call.raw_arguments is not None \
                else msgspec.json.encode(call.arguments).decode()
            yield StreamDelta(
                tool_call_index=index, tool_call_id=call.id, tool_name=call.name,
                arguments_text=text,
            )
        yield completion

    async def aclose(self) -> None:
        """Nothing to release."""

    def _new_id(self) -> str:
        self._next_id += 1
        return f"call_{self._next_id}"

    def _usage(self, messages: list[Message], reply: Message, model: str) -> TokenUsage:
        input_tokens = sum(len(m.content or "") for m in messages) // 4
        output_tokens = len(reply.content or "") // 4 + 10 * len(reply.tool_calls)
        return TokenUsage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
            model=model,
            provider=self._name,
        )


def _read_text(call: ToolCall) -> ToolCall:
    """A scripted :class:`ToolCall` whose ``arguments`` is JSON text, read as a real
    provider reads it; any other call as it is."""
    arguments: Any = call.arguments
    if isinstance(arguments, str):
        return tool_call_from_text(call.id, call.name, arguments)
    return call


def _normalise(reply: object, where: str) -> _Draft | Completion:
    if isinstance(reply, str):
        return _Draft(reply, [])
    if isinstance(reply, Completion):
        return reply
    if isinstance(reply, Message):
        if reply.role != "assistant":
            raise InvalidValueError(
                f"{where} is a {reply.role!r} message; a reply must be an assistant message",
                hint="use Message(role='assistant', ...)",
            )
        return _Draft(reply.content, [_read_text(c) for c in reply.tool_calls])
    if isinstance(reply, dict):
        unknown = set(reply) - _REPLY_KEYS
        if unknown:
            raise InvalidValueError(
                f"{where} has unknown keys {sorted(unknown)}",
                hint="a dict reply has 'tool_calls' and optionally 'content'",
            )
        content = reply.get("content")
        if content is not None and not isinstance(content, str):
            raise InvalidValueError(f"{where}['content'] must be a str or None")
        raw_calls = reply.get("tool_calls", [])
        if not isinstance(raw_calls, list | tuple):
            raise InvalidValueError(f"{where}['tool_calls'] must be a list")
        calls: list[ToolCall] = []
        for i, call in enumerate(raw_calls):
            at = f"{where}['tool_calls'][{i}]"
            if not isinstance(call, dict) or set(call) - _TOOL_CALL_KEYS:
                raise InvalidValueError(
                    f"{at} must be a dict with 'name', 'arguments' and optionally 'id'",
                    hint="e.g. {'name': 'calculator', 'arguments': {'expression': '2+2'}}",
                )
            name, arguments, call_id = call.get("name"), call.get("arguments", {}), call.get("id")
            if not isinstance(name, str) or not name:
                raise InvalidValueError(f"{at} has no tool name")
            if not isinstance(arguments, dict | str):
                raise InvalidValueError(
                    f"{at}['arguments'] must be a dict (or the model's JSON text)",
                    hint="e.g. {'expression': '2+2'}, or '{\"expression\": \"2+2\"}'")
            if call_id is not None and not isinstance(call_id, str):
                raise InvalidValueError(f"{at}['id'] must be a str")
            calls.append(tool_call_from_text(call_id or "", name, arguments)
                         if isinstance(arguments, str)
                         else ToolCall(id=call_id or "", name=name, arguments=arguments))
        return _Draft(content, calls)
    raise InvalidValueError(
        f"{where} is a {type(reply).__name__}; a reply is a str, Message, Completion or "
        "tool-call dict",
        hint="e.g. 'the answer' or {'tool_calls': [{'name': ..., 'arguments': {...}}]}",
    )
