"""The input digest of a recorded model call, taken along the conversation.

A model step's input digest is :func:`~llmspell.runtime.runs.records.digest` of its step
input: blake2b over the sorted JSON of ``{"max_tokens", "messages", "temperature",
"tools"}``. An agent sends its whole conversation on every turn, so taking that digest
afresh re-encodes and re-hashes every earlier message on every turn: quadratic in the
length of the run (over a quarter of what recording a 10-turn agent run cost).

:class:`ConversationDigests` (one per run) keeps, for the last few conversations it saw, the
blake2b state after their messages. A call whose messages begin with the same message
objects, under the same ``max_tokens``, continues from that state: it encodes and hashes
only the messages that are new, then the rest of the input. The digest is byte for byte the
one :func:`digest` gives (the JSON is the same text, hashed in pieces). Only a conversation
of :class:`~llmspell.runtime.providers.base.Message` structs is continued (they are
frozen); anything else, or anything the encoder refuses, is digested whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import is_
from typing import Any

import msgspec

from llmspell.runtime.providers.base import Message
from llmspell.runtime.runs.records import digest, new_hash

__all__ = ["CONVERSATIONS_KEPT", "ConversationDigests", "step_input"]

CONVERSATIONS_KEPT = 4
"""How many conversations a run continues at once (parallel model calls in a workflow)."""

_SORTED = msgspec.json.Encoder(order="sorted")  # as records.digest encodes
_HEAD_NONE = b'{"max_tokens":null,"messages":['  # the head and tail when they are None
_TAIL_NONE = b'],"temperature":null,"tools":'
_SLICED = (list, tuple)  # a slice of these is a sequence of the same items, in C


def step_input(messages: Sequence[Any], tools: Sequence[Any], temperature: float | None,
               max_tokens: int | None) -> dict[str, Any]:
    """What a recorded model call's step input (and digest) is made of: the request as it
    was asked for, before any hook, in one form whether hooks ran or not (msgspec encodes
    the message Structs directly, without their dict form). :class:`ConversationDigests`
    writes the same keys, sorted, in pieces."""
    return {"messages": list(messages), "tools": list(tools), "temperature": temperature,
            "max_tokens": max_tokens}


class _Conversation:
    __slots__ = ("head", "messages", "state", "tools", "tools_json")

    def __init__(self, head: bytes, messages: tuple[Message, ...], state: Any,
                 tools: tuple[Any, ...], tools_json: bytes) -> None:
        self.head = head
        self.messages = messages
        self.state = state  # blake2b after head and the messages' encodings
        self.tools = tools
        self.tools_json = tools_json  # the encoding of these tool objects


class ConversationDigests:
    """The model-step input digests of one run, continued along each conversation."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: list[_Conversation] = []

    def digest(self, messages: Sequence[Message], tools: Sequence[Any],
               temperature: float | None, max_tokens: int | None) -> str:
        """``digest(step_input(messages, tools, temperature, max_tokens))``."""
        if max_tokens is None:
            head = _HEAD_NONE
        else:
            try:
                head = b'{"max_tokens":' + _SORTED.encode(max_tokens) + b',"messages":['
            except (TypeError, ValueError, msgspec.EncodeError, RecursionError):
                return _whole(messages, tools, temperature, max_tokens)
        known = self._continued(head, messages)
        done = 0 if known is None else len(known.messages)
        new = messages[done:] if type(messages) in _SLICED else \
            [messages[index] for index in range(done, len(messages))]
        for message in new:  # the known ones were checked before
            if type(message) is not Message:
                return _whole(messages, tools, temperature, max_tokens)
        try:  # everything that can fail, before any state changes
            # One encoding of the new messages as an array: its text between the brackets
            # is theirs joined by commas, as the whole input's array has them.
            encoded = _SORTED.encode(new) if new else None
            if known is not None and len(known.tools) == len(tools) \
                    and all(map(is_, known.tools, tools)):
                tools_json = known.tools_json
            else:
                tools_json = _SORTED.encode(list(tools))
            tail = (_TAIL_NONE if temperature is None else
                    b'],"temperature":' + _SORTED.encode(temperature) + b',"tools":'
                    ) + tools_json + b"}"
        except (TypeError, ValueError, msgspec.EncodeError, RecursionError):
            return _whole(messages, tools, temperature, max_tokens)
        kept = self._kept
        if known is None:
            state = new_hash()
            state.update(head)
            known = _Conversation(head, (), state, (), b"")
            kept.append(known)
            if len(kept) > CONVERSATIONS_KEPT:
                del kept[0]
        else:
            # Continued in place: the conversation it was ends here now (a call that
            # continues it too from an earlier point is digested afresh, as before).
            state = known.state
            if kept[-1] is not known:  # the latest one is the last to go
                kept.remove(known)
                kept.append(known)
        if encoded is not None:
            if done:
                state.update(b",")
            state.update(memoryview(encoded)[1:-1])
        known.messages = tuple(messages)
        known.tools = tuple(tools)
        known.tools_json = tools_json
        final = state.copy()
        final.update(tail)
        return final.hexdigest()

    def _continued(self, head: bytes, messages: Sequence[Message]) -> _Conversation | None:
        """The longest kept conversation ``messages`` begins with (the same objects: the
        comparison is by identity, in C)."""
        best: _Conversation | None = None
        for kept in self._kept:
            known = kept.messages
            if kept.head == head and len(known) <= len(messages) and \
                    (best is None or len(known) > len(best.messages)) and \
                    all(map(is_, known, messages)):
                best = kept
        return best


def _whole(messages: Sequence[Any], tools: Sequence[Any], temperature: float | None,
           max_tokens: int | None) -> str:
    return digest(step_input(messages, tools, temperature, max_tokens))
