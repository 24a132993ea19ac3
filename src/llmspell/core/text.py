"""Text that came from outside as bytes: whether it is UTF-8, and how to show it if not.

Bytes that are not UTF-8 (a file name, a command-line argument, an environment variable)
reach Python as lone surrogates (``surrogateescape``), which nothing that encodes UTF-8
(the store, JSON, HTTP, a terminal) can carry.
"""

from __future__ import annotations

__all__ = ["ERROR_TEXT_LIMIT", "error_text", "is_utf8", "printable"]

ERROR_TEXT_LIMIT = 8192
"""Characters of an error's message an event, a hook or a run record carries (the rest is
cut, saying how much)."""


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes to UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(value: object) -> str:
    """``str(value)`` with the bytes that were not UTF-8 shown as U+FFFD, so it can be
    printed on any terminal and encoded as JSON."""
    shown = str(value)
    try:
        return shown.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return shown.encode("utf-8", "replace").decode("utf-8")


def error_text(error: object, limit: int = ERROR_TEXT_LIMIT) -> str:
    """An error's message as events, hooks and run records carry it: :func:`printable` (a
    lone surrogate from a tool's or a server's text would make the event unencodable, and
    the failure would go unrecorded) and at most ``limit`` characters (a megabyte of error
    text would make it too large to publish)."""
    text = printable(error)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"
