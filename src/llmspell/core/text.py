"""Text that came from outside as bytes: whether it is UTF-8, and how to show it if not.

Bytes that are not UTF-8 (a file name, a command-line argument, an environment variable)
reach Python as lone surrogates (``surrogateescape``), which nothing that encodes UTF-8
(the store, JSON, HTTP, a terminal) can carry.
"""

from __future__ import annotations

__all__ = ["is_utf8", "printable"]


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
