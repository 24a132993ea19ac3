"""Message headers that travel with what the current task sends to other processes.

A distributed hook context (:mod:`llmspell.distributed`) makes itself current by setting a
*header source* here: a function from a message's encoded payload to the headers that carry
the context (correlation id, run id, W3C ``traceparent``, a signature over headers and
payload when a key is configured). A transport (below the distributed layer, so it cannot
import it) asks :func:`current_header_source` when it encodes an outgoing message and puts
the headers on it. The source lives in a context variable: nested calls and tasks started
inside the context see it; independent tasks do not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import TypeAlias

__all__ = ["HeaderSource", "current_header_source", "enter_header_source",
           "leave_header_source"]

HeaderSource: TypeAlias = Callable[[bytes], Mapping[str, str]]
"""Given a message's payload, the headers to send with it."""

_source: ContextVar[HeaderSource | None] = ContextVar("llmspell_header_source", default=None)

current_header_source = _source.get
"""The header source of the calling task, or None (then messages carry no context)."""


def enter_header_source(source: HeaderSource | None) -> Token[HeaderSource | None]:
    """Make ``source`` current; pass the token to :func:`leave_header_source` to restore."""
    return _source.set(source)


def leave_header_source(token: Token[HeaderSource | None]) -> None:
    """Restore the header source that was current before :func:`enter_header_source`."""
    _source.reset(token)
