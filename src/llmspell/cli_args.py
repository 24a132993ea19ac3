"""Argument types shared by the CLI's command modules (``runs``, ``events``, ``hooks``),
and :func:`~llmspell.core.text.printable` for the paths they print."""

from __future__ import annotations

import argparse

from llmspell.core.text import is_utf8, printable

__all__ = ["MAX_COUNT", "positive_int", "printable", "utf8_text"]

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
