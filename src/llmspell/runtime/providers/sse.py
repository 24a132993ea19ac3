"""An incremental parser for server-sent events (the ``text/event-stream`` format both
streaming chat APIs use), fed with bytes as they arrive from the network.

It follows the WHATWG event-stream rules that matter to a client: lines end in ``\\n``,
``\\r\\n`` or ``\\r`` (a ``\\r\\n`` split across two chunks is one line end); ``:`` starts
a comment; ``field: value`` drops one space after the colon; ``data`` lines of one event
are joined with ``\\n``; a blank line dispatches the event (an event without data is
not dispatched); ``event`` names it (``message`` when not named); ``id`` and ``retry`` are
ignored (a model answer is never resumed, a cut stream is an error). Lines are split on
bytes, and ``\\n``/``\\r`` never occur inside a multi-byte UTF-8 sequence, so a chunk may
end anywhere, even inside a character. Data stays bytes: it is JSON, decoded straight
from bytes by the caller.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEEvent", "SSEParser"]


class SSEEvent(NamedTuple):
    """One dispatched event: its name (``event`` field, ``message`` by default) and its
    data (the ``data`` lines joined with ``\\n``)."""

    event: str
    data: bytes


class SSEParser:
    """Feed bytes with :meth:`feed` as they arrive; it returns the events completed by
    them. At the end of the stream, :meth:`close` returns an event the stream ended in
    without its closing blank line (a truncated last line is taken as it is: the caller
    decides whether what arrived is whole).
    """

    __slots__ = ("_after_cr", "_data", "_event", "_partial")

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # pieces of a line whose end has not arrived yet
        self._after_cr = False  # the last chunk ended in \r: a leading \n belongs to it
        self._data: list[bytes] = []
        self._event = ""

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held back, waiting for its end."""
        return sum(len(piece) for piece in self._partial)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Take the next bytes of the stream; return the events they complete, in order."""
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._partial.append(chunk)
            return []
        if self._partial:
            self._partial.append(chunk)
            chunk = b"".join(self._partial)
            self._partial = []
        lines = chunk.splitlines(keepends=True)
        last = lines[-1]
        if last[-1:] == b"\r":
            self._after_cr = True
        elif last[-1:] != b"\n":
            self._partial.append(lines.pop())
        events: list[SSEEvent] = []
        for line in lines:
            self._line(line.rstrip(b"\r\n"), events)
        return events

    def close(self) -> list[SSEEvent]:
        """The stream ended: return the event it ended in, if one was still open."""
        events: list[SSEEvent] = []
        if self._partial:
            self._line(b"".join(self._partial), events)
            self._partial = []
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append(SSEEvent(self._event or "message", data))
                self._data = []
            self._event = ""
            return
        if line[:5] == b"data:":  # the common case first
            value = line[5:]
            self._data.append(value[1:] if value[:1] == b" " else value)
            return
        if line[:1] == b":":
            return
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"event":
            self._event = value.decode("utf-8", "replace")
        elif field == b"data":
            self._data.append(value)
