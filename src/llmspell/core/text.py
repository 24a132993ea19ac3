"""Text that came from outside as bytes: whether it is UTF-8, and how to show it if not.

Bytes that are not UTF-8 (a file name, a command-line argument, an environment variable)
reach Python as lone surrogates (``surrogateescape``), which nothing that encodes UTF-8
(the store, JSON, HTTP, a terminal) can carry.
"""

from __future__ import annotations

import re

__all__ = ["ERROR_TEXT_LIMIT", "encodable", "error_text", "is_utf8", "printable",
           "terminal_safe", "terminal_safe_json"]

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


def encodable(value: object, limit: int) -> str:
    """``str(value)`` fit for an exporter's wire format: at most ``limit`` characters (a
    longer text is cut, with ``...(+N chars)`` saying how much more there was) and every
    lone surrogate replaced by ``?`` (an OTLP or Prometheus encoder fails the whole batch
    or scrape on one). Text that is already plain costs one length test and one
    ``isascii``."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = f"{text[:limit]}...(+{len(text) - limit} chars)"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode()
    return text


def error_text(error: object, limit: int = ERROR_TEXT_LIMIT) -> str:
    """An error's message as events, hooks and run records carry it: :func:`printable` (a
    lone surrogate from a tool's or a server's text would make the event unencodable, and
    the failure would go unrecorded) and at most ``limit`` characters (a megabyte of error
    text would make it too large to publish)."""
    text = printable(error)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


# C0 controls, DEL and C1 controls (ESC, CSI, OSC, BEL, CR, BS... : escape sequences, a
# clipboard write, a title change, text overwriting what was printed before it), then the
# Unicode format characters (category Cf: the bidi overrides and isolates, zero-width
# spaces and joiners, the invisible tag characters) and the line and paragraph separators,
# as Unicode 14 (Python 3.11) lists them.
_UNSAFE_RANGES = (
    "\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2"
    "\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f")
_UNSAFE = re.compile(f"[{_UNSAFE_RANGES}]")
_UNSAFE_BUT_LAYOUT = re.compile(f"(?![\n\t])[{_UNSAFE_RANGES}]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal_safe(value: object, *, multiline: bool = False) -> str:
    """:func:`printable` ``value`` with every character a terminal would act on, or that
    would hide or reorder text, shown as a visible escape: control characters (``\\x1b``,
    ``\\r``, ``\\n``, ``\\x9b``...), bidi controls (``\\u202e``), zero-width and other
    invisible format characters (``\\u200b``, ``\\U000e0041``). For text from the event
    store (model output, tool results, names, errors, hook reasons) printed for a person:
    it cannot clear the screen, write the clipboard, retitle the window, make a hyperlink,
    overwrite what was printed before it, or reorder a line. With ``multiline`` line breaks
    (``\\n``) and tabs are kept (a message with a traceback). Backslashes are kept as they
    are, so the result is for reading, not for parsing back. Idempotent: safe text comes
    back unchanged."""
    pattern = _UNSAFE_BUT_LAYOUT if multiline else _UNSAFE
    return pattern.sub(_escaped, printable(value))


def terminal_safe_json(text: str) -> str:
    """JSON text (as msgspec writes it) with every character :func:`terminal_safe` would
    escape written as a JSON ``\\u`` escape: the same JSON value (a parser reads back the
    exact text), but nothing in it a terminal acts on or that reorders a line (C1 controls,
    DEL, bidi controls and other invisible format characters, which JSON may carry raw).
    For the CLI's ``--json`` output and a script's result, printed where a person may see
    them."""
    return _UNSAFE.sub(_json_escaped, text)


def _json_escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # outside the BMP: a surrogate pair, as JSON writes one
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
