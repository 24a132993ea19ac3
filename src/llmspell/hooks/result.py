"""The nine results a hook can return, as small frozen msgspec Structs.

Each has a ``kind`` (its JSON tag). A hook returning ``None`` means :data:`CONTINUE`.
The JSON form is ``{"type": "<kind>", ...fields}``; :func:`result_from_json` reverses
:func:`result_to_json` exactly.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, TypeAlias, cast

import msgspec

from llmspell.core.errors import (
    CircuitOpenError,
    InvalidValueError,
    ModelCallCancelledError,
    OperationCancelledError,
    SerializationError,
)
from llmspell.core.values import check_json_safe

__all__ = [
    "CONTINUE",
    "MAX_RETRY_ATTEMPTS",
    "MAX_RETRY_DELAY",
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
    "cancelled_error",
    "model_call_cancelled_error",
    "result_from_dict",
    "result_from_json",
    "result_to_dict",
    "result_to_json",
]


MAX_RETRY_DELAY = 300.0
"""The longest ``Retry.delay`` (seconds) a hook may ask for: a bigger (or infinite, or NaN)
delay would hang the call it retries."""

MAX_RETRY_ATTEMPTS = 100
"""The most attempts a ``Retry`` may ask for."""


def _bad(message: str, hint: str) -> InvalidValueError:
    return InvalidValueError(message, hint=hint)


def _check_text(result: str, field: str, value: object, *, empty: bool) -> None:
    if not isinstance(value, str):
        raise _bad(f"{result}({field}) must be a str, got {type(value).__name__}",
                   f"pass {field} as a string")
    if not empty and not value:
        raise _bad(f"{result}({field}) must not be empty", f"name the {field}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Result(msgspec.Struct, frozen=True, tag_field="type"):
    kind: ClassVar[str]


# Results whose fields are scalars (no field can hold a container, so no reference cycle can
# pass through them) are made with ``gc=False``: never tracked by the cycle collector, which
# makes ``Continue()`` in a hook body about a third cheaper (it is on every hot path).


class Continue(_Result, frozen=True, tag="continue", gc=False):
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


class Cancel(_Result, frozen=True, tag="cancel", gc=False, omit_defaults=True):
    """Stop the chain and do not run the operation.

    ``breaker`` marks a denial because a circuit breaker is open (an outage, not a policy
    decision) and names that breaker: the executor sets it to the fail-closed hook's name
    when that hook's breaker is open. A hook guarding a service with a breaker of its own
    may set it too. Every place that turns a ``Cancel`` into an error raises
    :class:`~llmspell.errors.CircuitOpenError` for such a ``Cancel`` (see
    :func:`cancelled_error`). Left out of the JSON form when None, so a plain ``Cancel``
    encodes as before."""

    kind: ClassVar[str] = "cancel"
    reason: str
    breaker: str | None = None

    def __post_init__(self) -> None:
        if type(self.reason) is not str:
            _check_text("Cancel", "reason", self.reason, empty=True)
        if self.breaker is not None:
            _check_text("Cancel", "breaker", self.breaker, empty=False)


class Redirect(_Result, frozen=True, tag="redirect", gc=False):
    """Stop the chain and send the operation to ``target`` (another tool, agent or step)."""

    kind: ClassVar[str] = "redirect"
    target: str

    def __post_init__(self) -> None:
        _check_text("Redirect", "target", self.target, empty=False)


class Replace(_Result, frozen=True, tag="replace"):
    """Stop the chain, skip the operation and use ``value`` as its result."""

    kind: ClassVar[str] = "replace"
    value: Any


class Retry(_Result, frozen=True, tag="retry", gc=False):
    """Ask the caller to re-run the operation after ``delay`` seconds, up to ``max_attempts``."""

    kind: ClassVar[str] = "retry"
    delay: float = 0.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        delay = self.delay
        if not _is_number(delay) or not math.isfinite(delay) or not (
                0 <= delay <= MAX_RETRY_DELAY):
            raise _bad(f"Retry delay must be a finite number of seconds from 0 to "
                       f"{MAX_RETRY_DELAY:g}, got {delay!r}",
                       "retry sooner, or return Cancel and let the caller decide")
        attempts = self.max_attempts
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not (
                1 <= attempts <= MAX_RETRY_ATTEMPTS):
            raise _bad(f"Retry max_attempts must be an int from 1 to {MAX_RETRY_ATTEMPTS}, "
                       f"got {attempts!r}", "ask for fewer attempts")


class ForkOperation(msgspec.Struct, frozen=True, kw_only=True):
    """One extra operation to run beside the main one: what kind, on what, with what."""

    type: str
    target: str
    parameters: dict[str, Any] = {}

    def __post_init__(self) -> None:
        _check_text("ForkOperation", "type", self.type, empty=False)
        _check_text("ForkOperation", "target", self.target, empty=False)
        if not isinstance(self.parameters, dict):
            raise _bad(f"ForkOperation(parameters) must be a dict, got "
                       f"{type(self.parameters).__name__}", "pass parameters as a dict")


class Fork(_Result, frozen=True, tag="fork"):
    """Ask the caller to run ``operations`` concurrently with the main operation."""

    kind: ClassVar[str] = "fork"
    operations: tuple[ForkOperation, ...]

    def __post_init__(self) -> None:
        ops = self.operations
        if isinstance(ops, list):
            ops = tuple(ops)
            msgspec.structs.force_setattr(self, "operations", ops)
        if not isinstance(ops, tuple) or not all(
                type(op) is ForkOperation for op in ops):
            raise _bad("Fork(operations) must be a tuple of ForkOperation",
                       "Fork((ForkOperation(type='tool', target='name'),))")


class Cache(_Result, frozen=True, tag="cache", gc=False):
    """Ask the caller to cache the operation's result under ``key`` for ``ttl`` seconds.

    The runtime scopes ``key`` to the component (type and name) the operation runs on, so
    the same key from two tools names two entries; ``shared=True`` opts out: the key names
    one entry whichever tool or agent stores or reads it."""

    kind: ClassVar[str] = "cache"
    key: str
    ttl: float | None = None
    shared: bool = False

    def __post_init__(self) -> None:
        _check_text("Cache", "key", self.key, empty=False)
        ttl = self.ttl
        if ttl is not None and not (_is_number(ttl) and ttl > 0 and math.isfinite(ttl)):
            raise _bad(f"Cache ttl must be a finite number of seconds > 0 or None, "
                       f"got {ttl!r}", "None keeps the entry until it is evicted")
        if not isinstance(self.shared, bool):
            raise _bad(f"Cache shared must be a bool, got {self.shared!r}",
                       "shared=True shares the key across components")


class Skipped(_Result, frozen=True, tag="skipped", gc=False):
    """The hook did not apply (or was not run); the chain goes on."""

    kind: ClassVar[str] = "skipped"
    reason: str

    def __post_init__(self) -> None:
        if type(self.reason) is not str:
            _check_text("Skipped", "reason", self.reason, empty=True)


HookResult: TypeAlias = (
    Continue | Modified | Cancel | Redirect | Replace | Retry | Fork | Cache | Skipped
)
RESULT_TYPES: tuple[type[_Result], ...] = (
    Continue, Modified, Cancel, Redirect, Replace, Retry, Fork, Cache, Skipped,
)
CONTINUE = Continue()

_ENCODER = msgspec.json.Encoder()
_DECODER: msgspec.json.Decoder[HookResult] = msgspec.json.Decoder(HookResult)


def cancelled_error(point: str, cancel: Cancel, hook: str | None) -> OperationCancelledError:
    """The error to raise for ``cancel`` decided by ``hook`` at ``point``:
    :class:`~llmspell.errors.CircuitOpenError` when ``cancel.breaker`` is set (a circuit
    breaker is open), else :class:`~llmspell.errors.OperationCancelledError`. Every place
    that turns a ``Cancel`` into an error goes through here, so none tells the two apart
    differently."""
    if cancel.breaker is not None:
        return CircuitOpenError(point, cancel.reason, hook, breaker=cancel.breaker)
    return OperationCancelledError(point, cancel.reason, hook)


def model_call_cancelled_error(model: str, point: str, cancel: Cancel | OperationCancelledError,
                               hook: str | None) -> ModelCallCancelledError:
    """The :class:`~llmspell.errors.ModelCallCancelledError` for a model call ``cancel``
    stopped (a ``Cancel`` result, or the ``OperationCancelledError`` made of one), with
    ``breaker`` set when a circuit breaker was open."""
    return ModelCallCancelledError(model, point, cancel.reason, hook,
                                   breaker=cancel.breaker)


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
