"""Credential-shaped text, masked wherever text leaves the process: records, events, logs.

:func:`mask_text` replaces API keys, bearer tokens, private keys and ``password=...``
pairs (also quoted, as a dict's or JSON's text shows them: ``'api_key': 'abc'``) with
:data:`MASK`. The runtime applies it to what it records and publishes
(``record_content="masked"``); :func:`get_logger` applies it to every log line llmspell
writes: a failed hook's or tool's error, a handler's exception, a script's ``Logger``
line. Logs are read by more people, and kept longer, than the data they describe.

The logging filter is written here rather than taken from a library: the standard
``logging`` module has no redaction, the libraries that add it configure handlers (which
belong to the application, not to a library), and a filter on llmspell's own loggers is a
few lines.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from llmspell.core.text import terminal_safe

__all__ = ["MASK", "SCRIPT_LOGGERS", "SECRET_PATTERN", "RedactingFilter", "get_logger",
           "mask_text"]

MASK: Final = "***"
"""What a masked value or substring is replaced with."""

# Each alternative is anchored on a literal prefix and uses bounded, non-nested repeats,
# so matching is linear in the text. A key=value pair may quote its key and its value
# (a dict's repr, JSON).
SECRET_PATTERN: Final = re.compile(
    r"(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,200}"            # OpenAI/Stripe-style keys
    r"|sk-ant-[A-Za-z0-9_\-]{16,200}"
    r"|AKIA[0-9A-Z]{16}"                              # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{20,200}"                 # GitHub tokens
    r"|xox[abposr]-[A-Za-z0-9\-]{10,200}"             # Slack tokens
    r"|AIza[0-9A-Za-z_\-]{35}"                        # Google API keys
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{8,500}=*"     # bearer tokens
    r"|-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----[\s\S]{0,10000}?-----END [A-Z ]{0,40}"
    r"PRIVATE KEY-----"
    r"|(?i:password|passwd|pwd|secret|api[_-]?key|token)\s{0,3}[:=]\s{0,3}[^\s,;]{1,200}"
    # A quoted key (a dict's repr, JSON): only its value is masked, so the text keeps its
    # shape (and an already masked value stays as it is).
    r"|(?i:password|passwd|pwd|secret|api[_-]?key|token)[\"']\s{0,3}[:=]\s{0,3}"
    r"(?:(?P<quote>[\"'])(?P<quoted>(?:(?!(?P=quote))[^\\]|\\.){1,2000})(?P=quote)?"
    r"|(?P<bare>[^\s,;\"'{}\[\]]{1,200}))"
)
"""Credential-shaped substrings (what :func:`mask_text` replaces)."""


def _masked(match: re.Match[str]) -> str:
    for group in ("quoted", "bare"):
        start = match.start(group)
        if start >= 0:  # a quoted key's value: the key and the quotes are kept
            text, at = match.group(), match.start()
            return f"{text[:start - at]}{MASK}{text[match.end(group) - at:]}"
    return MASK


def mask_text(text: str) -> str:
    """``text`` with credential-shaped substrings replaced by :data:`MASK` (of a quoted
    key's pair, ``'api_key': 'abc'``, the value only)."""
    return SECRET_PATTERN.sub(_masked, text)


class RedactingFilter(logging.Filter):
    """Masks a log record's message and exception text (:func:`mask_text`), and shows the
    message's control characters as escapes (``\\n``, ``\\x1b``: a message quoting a
    hostile error cannot forge a log line or drive a terminal; with ``keep_layout`` line
    breaks and tabs are kept, for what scripts print and log). A record with nothing to
    change is left as it is (its ``args`` intact); otherwise its ``msg`` becomes the
    finished text and its ``args`` empty. An exception is formatted here, as
    :class:`logging.Formatter` formats one, and masked (its lines kept): a handler's own
    ``formatException`` is not used for a record this filter passed. Never drops a
    record."""

    def __init__(self, *, keep_layout: bool = False) -> None:
        super().__init__()
        self.keep_layout = keep_layout

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask ``record`` in place; always True."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when it formats
            return True
        safe = terminal_safe(mask_text(message), multiline=self.keep_layout)
        if safe != message:
            record.msg = safe
            record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_text(_FORMATTER.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


_FORMATTER = logging.Formatter()
_FILTER = RedactingFilter()
_SCRIPT_FILTER = RedactingFilter(keep_layout=True)
SCRIPT_LOGGERS: Final = "llmspell.scripts"
"""The loggers (this one and those under it) of what scripts print and log: their line
breaks and tabs are kept."""


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with a :class:`RedactingFilter` on it (once): how every
    llmspell module gets its logger. A filter on a logger applies to the records logged
    through it, so each of llmspell's loggers carries its own; those of scripts
    (:data:`SCRIPT_LOGGERS`) keep line breaks and tabs."""
    logger = logging.getLogger(name)
    script = name == SCRIPT_LOGGERS or name.startswith(SCRIPT_LOGGERS + ".")
    wanted = _SCRIPT_FILTER if script else _FILTER
    if wanted not in logger.filters:
        logger.addFilter(wanted)
    return logger
