"""The nine results a hook can return, as small frozen msgspec Structs.

Each has a ``kind`` (its JSON tag). A hook returning ``None`` means :data:`CONTINUE`.
The JSON form is ``{"type": "<kind>", ...fields}``; :func:`result_from_json` reverses
:func:`result_to_json` exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeAlias, cast

import msgspec

from llmspell.core.errors import InvalidValueError, SerializationError
from llmspell.core.values import check_json_safe

__all__ = [
    "CONTINUE",
    "Cache",
    "Cancel",
    "Continue",
    "Fork",
    "ForkOperation",
    "HookResult",
    "Modified",
    "Redirect",
    "Replace",
    "Retry",
    "Skipped",
    "RESULT_TYPES",
    "result_from_dict",
    "result_from_json",
    "result_to_dict",
    "result_to_json",
]


class _Result(msgspec.Struct, frozen=True, tag_field="type"):
    kind: ClassVar[str]


class Continue(_Result, frozen=True, tag="continue"):
    """Go on with the next hook and then the operation."""

    kind: ClassVar[str] = "continue"


class Modified(_Result, frozen=True, tag="modified"):
    """Replace the context's ``data`` with ``data``; the next hook sees the new data."""

    kind: ClassVar[str] = "modified"
    data: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.data, dict):
            raise InvalidValueError(
                f"Modified(data) needs a dict, got {type(self.data).__name__}"
            )


class Cancel(_Result, frozen=True, tag="cancel"):
    """Stop the chain and do not run the operation."""

    kind: ClassVar[str] = "cancel"
    reason: str


class Redirect(_Result, frozen=True, tag="redirect"):
    """Stop the chain and send the operation to ``target`` (another tool, agent or step)."""

    kind: ClassVar[str] = "redirect"
    target: str


class Replace(_Result, frozen=True, tag="replace"):
    """Stop the chain, skip the operation and use ``value`` as its result."""

    kind: ClassVar[str] = "replace"
    value: Any


class Retry(_Result, frozen=True, tag="retry"):
    """Ask the caller to re-run the operation after ``delay`` seconds, up to ``max_attempts``."""

    kind: ClassVar[str] = "retry"
    delay: float = 0.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.delay < 0:
            raise InvalidValueError(f"Retry delay must be >= 0 seconds, got {self.delay!r}")
        if self.max_attempts < 1:
            raise InvalidValueError(f"Retry max_attempts must be >= 1, got {self.max_attempts!r}")


class ForkOperation(msgspec.Struct, frozen=True, kw_only=True):
    """One extra operation to run beside the main one: what kind, on what, with what."""

    type: str
    target: str
    parameters: dict[str, Any] = {}


class Fork(_Result, frozen=True, tag="fork"):
    """Ask the caller to run ``operations`` concurrently with the main operation."""

    kind: ClassVar[str] = "fork"
    operations: tuple[ForkOperation, ...]


class Cache(_Result, frozen=True, tag="cache"):
    """Ask the caller to cache the operation's result under ``key`` for ``ttl`` seconds."""

    kind: ClassVar[str] = "cache"
    key: str
    ttl: float | None = None

    def __post_init__(self) -> None:
        if self.ttl is not None and not self.ttl > 0:
            raise InvalidValueError(f"Cache ttl must be > 0 seconds or None, got {self.ttl!r}")


class Skipped(_Result, frozen=True, tag="skipped"):
    """The hook did not apply (or was not run); the chain goes on."""

    kind: ClassVar[str] = "skipped"
    reason: str


HookResult: TypeAlias = (
    Continue | Modified | Cancel | Redirect | Replace | Retry | Fork | Cache | Skipped
)
RESULT_TYPES: tuple[type[_Result], ...] = (
    Continue, Modified, Cancel, Redirect, Replace, Retry, Fork, Cache, Skipped,
)
CONTINUE = Continue()

_ENCODER = msgspec.json.Encoder()
_DECODER: msgspec.json.Decoder[HookResult] = msgspec.json.Decoder(HookResult)


def _check(result: HookResult) -> None:
    if isinstance(result, Modified):
        check_json_safe(result.data, "result.data")
    elif isinstance(result, Replace):
        check_json_safe(result.value, "result.value")
    elif isinstance(result, Fork):
        for i, op in enumerate(result.operations):
            check_json_safe(op.parameters, f"result.operations[{i}].parameters")


def result_to_json(result: HookResult) -> bytes:
    """Encode a result as JSON; raises ``NotJsonSafeError`` naming a bad value's path."""
    _check(result)
    return _ENCODER.encode(result)


def result_from_json(payload: bytes | str) -> HookResult:
    """Decode a result produced by :func:`result_to_json`."""
    try:
        return _DECODER.decode(payload)
    except (msgspec.DecodeError, InvalidValueError) as exc:
        raise SerializationError(
            f"cannot decode a HookResult: {exc}",
            hint='expected {"type": "continue"|"modified"|..., ...fields}',
        ) from exc


def result_to_dict(result: HookResult) -> dict[str, Any]:
    """Return the JSON-safe dict form, ``{"type": kind, ...fields}``."""
    _check(result)
    out: dict[str, Any] = msgspec.to_builtins(result)
    return out


def result_from_dict(value: dict[str, Any]) -> HookResult:
    """Build a result from its dict form (see :func:`result_to_dict`)."""
    try:
        return cast(HookResult, msgspec.convert(value, HookResult))
    except (msgspec.ValidationError, InvalidValueError) as exc:
        raise SerializationError(
            f"cannot build a HookResult from {value!r}: {exc}",
            hint='expected {"type": "continue"|"modified"|..., ...fields}',
        ) from exc
