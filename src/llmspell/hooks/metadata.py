"""Hook metadata: name, priority, language, tags, version, error policy, timeout."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum, StrEnum
from typing import Any

import msgspec

from llmspell.core.errors import InvalidValueError
from llmspell.core.language import Language

__all__ = ["ErrorPolicy", "HookMetadata", "Priority", "metadata_fields", "parse_priority"]


class Priority(IntEnum):
    """Named priorities. Lower runs first; any ``int`` is allowed between and beyond them."""

    HIGHEST = -(2**31)
    HIGH = -100
    NORMAL = 0
    LOW = 100
    LOWEST = 2**31 - 1


def parse_priority(value: int | str) -> int:
    """Return the integer priority for an ``int``, a :class:`Priority` or a name (``"high"``)."""
    if isinstance(value, bool):
        raise InvalidValueError("a priority must be an int or a name, not a bool")
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        key = value.strip().upper()
        try:
            return int(Priority[key])
        except KeyError:
            try:
                return int(key)
            except ValueError:
                names = ", ".join(p.name.lower() for p in Priority)
                raise InvalidValueError(
                    f"unknown priority {value!r}", hint=f"use an int or one of: {names}"
                ) from None
    raise InvalidValueError(f"a priority must be an int or a name, not {type(value).__name__}")


class ErrorPolicy(StrEnum):
    """What a hook's failure (exception, timeout, bad return value) does to the chain.

    ``fail_open``: the failure is recorded and the chain goes on as if the hook continued.
    ``fail_closed``: the failure is recorded and becomes ``Cancel`` (security hooks use this).
    ``raise``: the failure is recorded and raised to the dispatcher as a ``HookExecutionError``.
    """

    FAIL_OPEN = "fail_open"
    FAIL_CLOSED = "fail_closed"
    RAISE = "raise"


class HookMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """Describes a hook. ``timeout`` (seconds) is enforced on async hooks, measured on sync."""

    name: str
    priority: int = 0
    language: Language = Language.PYTHON
    tags: frozenset[str] = frozenset()
    version: str = "1.0.0"
    error_policy: ErrorPolicy = ErrorPolicy.FAIL_OPEN
    timeout: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise InvalidValueError("a hook needs a non-empty name")
        # Accept the string forms users write (priority="high", error_policy="fail_closed").
        force = msgspec.structs.force_setattr
        if type(self.name) is not str:  # a str subclass: the plain text (events carry it)
            force(self, "name", str.__str__(self.name))
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            force(self, "priority", parse_priority(self.priority))
        if not isinstance(self.error_policy, ErrorPolicy):
            try:
                force(self, "error_policy", ErrorPolicy(self.error_policy))
            except ValueError:
                valid = ", ".join(p.value for p in ErrorPolicy)
                raise InvalidValueError(
                    f"hook {self.name!r}: unknown error policy {self.error_policy!r}",
                    hint=f"use one of: {valid}",
                ) from None
        if not isinstance(self.language, Language):
            force(self, "language", Language.parse(self.language))
        if not isinstance(self.tags, frozenset):
            force(self, "tags", frozenset(self.tags))
        if self.timeout is not None and not _valid_timeout(self.timeout):
            raise InvalidValueError(
                f"hook {self.name!r}: timeout must be > 0 seconds or None, got {self.timeout!r}",
                hint="pass the timeout as a number of seconds (None: no timeout)",
            )


_FIELDS = frozenset(
    {"name", "priority", "language", "tags", "version", "error_policy", "timeout",
     "description"}
)


def metadata_fields(**fields: Any) -> dict[str, Any]:
    """Validate and normalise :class:`HookMetadata` keywords; ``None`` values are dropped.

    Strings become enums (``error_policy="fail_closed"``, ``language="lua"``), priority names
    become ints, tags a frozenset. Unknown keys and bad values raise ``InvalidValueError``.
    """
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise InvalidValueError(
            f"unknown hook metadata field(s): {', '.join(unknown)}",
            hint=f"use: {', '.join(sorted(_FIELDS))}",
        )
    out: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if "priority" in out:
        out["priority"] = parse_priority(out["priority"])
    if "language" in out:
        out["language"] = Language.parse(out["language"])
    if "tags" in out:
        tags = out["tags"]
        if isinstance(tags, str) or not isinstance(tags, Iterable):
            raise InvalidValueError("tags must be a collection of strings, not one string")
        out["tags"] = frozenset(tags)
    if "error_policy" in out:
        try:
            out["error_policy"] = ErrorPolicy(out["error_policy"])
        except ValueError:
            valid = ", ".join(p.value for p in ErrorPolicy)
            raise InvalidValueError(
                f"unknown error policy {out['error_policy']!r}", hint=f"use one of: {valid}"
            ) from None
    timeout = out.get("timeout")
    if timeout is not None and not _valid_timeout(timeout):
        raise InvalidValueError(f"timeout must be > 0 seconds, got {timeout!r}",
                                hint="pass the timeout as a number of seconds (None: no timeout)")
    return out


def _valid_timeout(value: object) -> bool:
    """A number of seconds > 0 (NaN, a bool or a string is not one; inf means no limit)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and value > 0)
