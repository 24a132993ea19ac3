"""What the ``record_content`` setting keeps of streamed answers in
``model.<provider>.delta`` events (the ``completed`` event and the store are handled by
:mod:`llmspell.runtime.content`).

* ``full``: the text and tool-call argument fragments as they arrived.
* ``masked`` (the default): text is masked like a reply's (:func:`mask_text`). A stream cuts
  text anywhere, so a credential could arrive in two pieces, each harmless alone: each
  event's text ends at a word boundary, and a trailing word (with a ``password:`` or
  ``Bearer`` before it) waits for the next event, so the masking sees it whole. A tool
  call's argument fragments are shown masked until the call's arguments so far name
  anything sensitive (a key or text with one of the masker's fragments: ``password``,
  ``token``...), and as ``***`` from then on: fragments of JSON cannot be masked by key.
* ``none``: only sizes (``chars``, ``arguments_chars``), no text.
"""

from __future__ import annotations

import re
from typing import Any

from llmspell.builtin.masking import DEFAULT_SENSITIVE_KEYS, MASK
from llmspell.runtime.content import mask_text

__all__ = ["DeltaContent"]

_OVERLAP = max(map(len, DEFAULT_SENSITIVE_KEYS)) - 1
"""How much of a call's argument text so far is kept: enough to find a sensitive name
split between two fragments (each fragment is looked at once, with this before it)."""

_HELD_TAIL = re.compile(
    r"(?:(?i:bearer|password|passwd|pwd|secret|api[_ -]?key|token)\s{0,3}[:=]?\s{0,3})?"
    r"\S*\Z")
"""The end of a text that may be the start of a credential: its last word, with a label
that :func:`mask_text` reads together with the value before it."""

_MAX_HELD = 512
"""Text held back longer than this is sent anyway (masked): no credential shape is that
long, and a stream without spaces must still move."""


class DeltaContent:
    """The content filter of one streamed answer (see the module docstring)."""

    __slots__ = ("_arguments", "_held", "_masked_calls", "mode")

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._held = ""
        self._arguments: dict[int, str] = {}  # per call: the end of its text so far
        self._masked_calls: set[int] = set()

    def text(self, new: str, *, last: bool) -> dict[str, Any]:
        """The text fields of an event whose deltas brought ``new`` (``last``: the stream
        ended, nothing is held back)."""
        if self.mode == "full":
            return {"text": new}
        if self.mode != "masked":
            return {"text": "", "chars": len(new)}
        text = self._held + new
        cut = len(text)
        if not last:
            tail = _HELD_TAIL.search(text)
            if tail is not None and len(text) - tail.start() <= _MAX_HELD:
                cut = tail.start()
        self._held = text[cut:]
        return {"text": mask_text(text[:cut])}

    @property
    def holding(self) -> bool:
        """True when text waits for the next event (send one at the end)."""
        return bool(self._held)

    def arguments(self, index: int, fragment: str) -> dict[str, Any]:
        """The argument fields of one tool-call fragment of call ``index``."""
        if self.mode == "full":
            return {"arguments_text": fragment}
        if self.mode != "masked":
            return {"arguments_text": "", "arguments_chars": len(fragment)}
        if index not in self._masked_calls:
            window = (self._arguments.get(index, "") + fragment).lower()
            if any(key in window for key in DEFAULT_SENSITIVE_KEYS):
                self._masked_calls.add(index)
                self._arguments.pop(index, None)
            else:
                self._arguments[index] = window[-_OVERLAP:]
        if index in self._masked_calls:
            return {"arguments_text": MASK if fragment else ""}
        return {"arguments_text": mask_text(fragment)}
