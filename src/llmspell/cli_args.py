"""Argument types shared by the CLI's command modules (``runs``, ``events``, ``hooks``),
:func:`~llmspell.core.text.printable` for the paths they print, and :func:`shown` for the
text from the event store they print for a person."""

from __future__ import annotations

import argparse

from llmspell.core.text import is_utf8, printable, terminal_safe

__all__ = ["CELL_LIMIT", "LINE_LIMIT", "MAX_COUNT", "positive_int", "printable", "shown",
           "terminal_safe", "utf8_text"]

CELL_LIMIT = 100
"""Characters of a table cell (a name, a kind, a host): one long name would widen every row
of its table (``--json`` has it whole)."""
LINE_LIMIT = 2000
"""Characters of a line of human output (``--json`` has the whole value)."""

MAX_COUNT = 1_000_000_000
"""The largest count a command takes (``--limit``, ``--max-events``...): larger numbers do
not fit the event store's 64-bit integers once a command adds its margin to them, and mean
"everything" anyway."""


def positive_int(text: str) -> int:
    """An argparse type: a whole number from 1 to :data:`MAX_COUNT`, else a usage error
    saying so."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT}, got {text}")
    return value


def utf8_text(value: str) -> str:
    """An argparse type: ``value`` when it is valid UTF-8 text (a run id, a name, a token),
    else a usage error. Bytes that are not UTF-8 reach Python as lone surrogates, which
    nothing downstream (the store, JSON, HTTP) can encode."""
    if not is_utf8(value):
        shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise argparse.ArgumentTypeError(f"'{shown}' is not valid UTF-8 text")
    return value


def shown(value: object, limit: int | None = None) -> str:
    """``value`` as a person's terminal may show it: :func:`terminal_safe` (escape
    sequences, carriage returns, bidi and zero-width characters from the store made visible
    escapes) and at most ``limit`` characters."""
    text = terminal_safe(value)
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit - 3]}..."
