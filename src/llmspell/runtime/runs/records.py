"""What a run's recording holds, as it is stored: one ``run.started`` event, ``run.steps``
events (``{"steps": [step records]}``, published in batches as steps end), one
``run.completed``/``run.failed`` event.

A *step* is one hooked operation inside a run (a tool call, a model call, an agent run) or
the run itself (the root step, key ``""``). Each step keeps what replay needs: a digest of its
input, what its operation produced on each attempt (tool results, model responses), every
dispatch of hooks inside it (in order; the point, and for a result that changed something the
result kind, the hook, its version and a digest of the data it left), the values it took from
the run clock or random source, the state reads it made and what they returned
(:class:`StateRead`), and the runs it started.

Steps are keyed by their place in the tree (``agent:helper#0|model:scripted/m#1``): the
occurrence counters are per parent and per operation, so a parallel branch keeps its key
whatever the interleaving.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from llmspell.core.errors import RecordingError
from llmspell.core.text import printable

__all__ = [
    "CANCELLED_TYPE",
    "RECORDING_VERSION",
    "STATE_READS_VERSION",
    "UNVERSIONED",
    "Attempt",
    "Dispatch",
    "HookExecution",
    "RunEnded",
    "RUN_STATUSES",
    "RunStarted",
    "StateRead",
    "StepRecord",
    "decode_ended",
    "decode_started",
    "decode_step",
    "digest",
    "end_status",
    "new_hash",
    "printable_texts",
    "stored_form",
]

RECORDING_VERSION = 1
"""The layout of a recording, written in every ``run.started``, step and end record. A
recording from a newer llmspell is refused with :class:`~llmspell.errors.RecordingError`."""

UNVERSIONED = 1
"""The version of a record with no ``version`` field (made before the version was
written: those recordings are version 1)."""

STATE_READS_VERSION = 1
"""The layout of the state reads a recording keeps (``RunStarted.state_reads``): 0 (an
older recording, made before reads were recorded: a replay reads state live) or 1 (each
step's :attr:`StepRecord.reads`, served to an exact replay)."""

RUN_STATUSES = ("completed", "failed", "cancelled", "running", "interrupted")
"""Every status a run is listed with: ``completed``, ``failed`` (it raised), ``cancelled``
(its task was cancelled: ``asyncio.CancelledError``, from its caller, a timeout around it
or Ctrl-C), ``running`` (no end record yet) and ``interrupted`` (no end record, and its
process is gone)."""

CANCELLED_TYPE = "CancelledError"
"""The error type (as :func:`~llmspell.runtime.runs.scope.error_dict` names it) of a run
whose task was cancelled."""


def end_status(error: dict[str, str] | None) -> str:
    """The status of a run that ended with ``error`` (an error dict, or None):
    ``completed``, ``cancelled`` (a ``CancelledError``) or ``failed``."""
    if error is None:
        return "completed"
    return "cancelled" if error.get("type") == CANCELLED_TYPE else "failed"


_DIGEST_ENCODER = msgspec.json.Encoder(order="sorted")
_EMPTY_HASH = hashlib.blake2b(digest_size=8)
"""An empty 8-byte blake2b: copying it costs about half of building one with the
``digest_size`` keyword (every recorded step takes a digest)."""


def new_hash() -> hashlib.blake2b:
    """An empty blake2b state of :func:`digest`'s size (8 bytes)."""
    return _EMPTY_HASH.copy()


def digest(value: Any) -> str:
    """A short, stable digest of a JSON-safe value (16 hex characters); text that is not
    UTF-8 (lone surrogates) digests as a record stores it (:func:`printable_texts`), other
    values that cannot be encoded their ``repr`` (one nested too deep even for that, its
    type name)."""
    try:
        raw = _DIGEST_ENCODER.encode(value)
    except (TypeError, ValueError, msgspec.EncodeError, RecursionError) as exc:
        raw = _fallback(value, exc)
    state = _EMPTY_HASH.copy()
    state.update(raw)
    return state.hexdigest()


def printable_texts(value: Any) -> Any:
    """Plain data ``value`` with every text (keys too) :func:`~llmspell.core.text.printable`:
    what a record holding text that is not UTF-8 (lone surrogates) is stored as."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k) if isinstance(k, str) else k: printable_texts(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [printable_texts(v) for v in value]
    return value


def stored_form(value: Any) -> Any:
    """``value`` as plain data with every text made :func:`printable_texts`: what a record
    holding text that is not UTF-8 is encoded as (other objects as their ``repr``)."""
    return printable_texts(msgspec.to_builtins(value, enc_hook=repr))


def _fallback(value: Any, exc: BaseException) -> bytes:
    """What :func:`digest` hashes for a value JSON cannot encode as it is."""
    if isinstance(exc, UnicodeEncodeError):
        # Text holding lone surrogates is stored with U+FFFD in their place
        # (printable_texts): digested as it is stored, so the value a replay serves from
        # the recording has the digest recorded for the real one.
        try:
            return _DIGEST_ENCODER.encode(stored_form(value))
        except (TypeError, ValueError, msgspec.EncodeError, RecursionError):
            pass
    try:
        return repr(value).encode(errors="surrogatepass")
    except RecursionError:
        return f"<{type(value).__name__} nested too deep>".encode()
    except Exception:  # a repr that raises
        return f"<{type(value).__name__} object>".encode()


class Dispatch(msgspec.Struct, array_like=True, omit_defaults=True):
    """One dispatch of a point's hooks inside a step. ``kind`` is the decisive result
    (``continue`` leaves ``hook``/``version``/``digest`` empty); ``digest`` is of the data the
    hooks left (a ``Modified``), the replacement value (``Replace``), the target
    (``Redirect``), the reason (``Cancel``) or the key (``Cache``); ``failed`` names hooks
    that raised. ``forks`` is the digest of the operations of the ``Fork`` results other
    hooks returned beside a decisive result (a ``Modified`` and forks); None when there
    were none (or the recording is older than this field: see :meth:`same_as`)."""

    point: str
    kind: str = "continue"
    hook: str | None = None
    version: str | None = None
    digest: str | None = None
    failed: list[str] = []
    forks: str | None = None

    def same_as(self, other: Dispatch) -> bool:
        """True when both dispatches decided the same thing. A recorded dispatch
        (``self``) without ``forks`` matches one with forks beside the same decision: a
        recording made before forks were recorded there has none (the forks it lacks
        show as new steps)."""
        return (self.point, self.kind, self.hook, self.digest) == (
            other.point, other.kind, other.hook, other.digest) and (
            self.forks is None or self.forks == other.forks)

    def describe(self) -> str:
        """``Modified by 'redact'`` / ``continue`` / ``modified by 'tag' with forks``."""
        if self.kind == "continue":
            return "continue"
        text = f"{self.kind} by {self.hook!r}" if self.hook else self.kind
        return text + " with forks" if self.forks is not None else text


class HookExecution(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One hook's execution (recorded at level ``full``): its name, version, the point, the
    context data it saw (masked), its result kind, duration and error."""

    hook: str
    point: str
    kind: str
    duration_ns: int
    version: str | None = None
    context: Any = None
    error: str | None = None


class Attempt(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one call of a step's operation produced: ``output``, or ``error``
    (``{"type", "message"}``). ``deltas``: the pieces a streamed model call handed to its
    consumer, in order, so a replay hands them over again (see
    :func:`~llmspell.runtime.runs.scope.recorded_deltas` for their stored form)."""

    output: Any = None
    error: dict[str, str] | None = None
    deltas: list[Any] = []


class StateRead(msgspec.Struct, array_like=True, omit_defaults=True):
    """One state read a step made, in order: ``op`` (``get``: one key, ``keys``: the keys
    starting with the prefix ``key``, ``items``: a scope's entries, ``scopes``: the ids of
    a scope kind), where (``scope``, ``scope_id``, ``key``), and what the state answered
    (``result``, stored form: ``get`` ``[value, version, updated_at]`` or None when absent,
    ``items`` ``{key: [value, version, updated_at]}``, ``keys``/``scopes`` a list of texts),
    before any read hook. ``withheld``: the result was not kept (too large for the store,
    or ``record_content="none"``), so a replay reads that one live. ``in_call``: made while
    a tool or model call ran (its code), which a replay serving the call does not run."""

    op: str
    scope: str
    scope_id: str = ""
    key: str | None = None
    result: Any = None
    withheld: bool = False
    in_call: bool = False

    def describe(self) -> str:
        """``get of 'counter' (global)``."""
        where = self.scope + (f" {self.scope_id!r}" if self.scope_id else "")
        if self.op == "get":
            return f"get of {self.key!r} ({where})"
        if self.op == "keys":
            return f"keys of {where}" + (f" starting {self.key!r}" if self.key else "")
        if self.op == "items":
            return f"snapshot of {where}"
        return f"scope ids of {self.scope}"


class StepRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One step of a run (see the module docstring). ``index`` is its place in start order
    (1 = the first step the run started; the root step is 0); ``served`` says where a
    replayed step's result came from (``recording``, ``edited``, ``simulated``, ``live``).
    ``results_withheld`` is set when the step's values were too large for the event store:
    the record keeps its digests, decisions and error only, so a replay cannot serve it.
    Read what it produced from :attr:`result`."""

    key: str
    index: int
    kind: str
    name: str
    input_digest: str
    started: float
    duration_ms: float = 0.0
    input: Any = None
    attempts: list[Attempt] = []
    output: Any = None
    output_from_attempt: bool = False
    output_digest: str | None = None
    error: dict[str, str] | None = None
    dispatches: list[Dispatch] = []
    hooks: list[HookExecution] = []
    values: list[Any] = []
    reads: list[StateRead] = []
    child_runs: list[str] = []
    side_effects: list[str] = []
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    served: str | None = None
    results_withheld: bool = False
    version: int = 0
    """:data:`RECORDING_VERSION` of the record, always written (a default is left out of
    the stored form, so the default is 0, never written): a record without one reads as
    :data:`UNVERSIONED`."""

    @property
    def result(self) -> Any:
        """What the step produced (its output, or its last attempt's when that is what
        was kept)."""
        if self.output_from_attempt and self.attempts:
            return self.attempts[-1].output
        return self.output


class RunStarted(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The ``run.started`` event's data."""

    run_id: str
    kind: str
    name: str
    level: str
    root_run_id: str
    parent_run_id: str | None = None
    parent_step: str | None = None
    input: Any = None
    target: dict[str, Any] | None = None
    host: str = ""
    pid: int = 0
    process_started: float = 0.0
    replay_of: str | None = None
    mode: str | None = None
    state_reads: int = 0
    """:data:`STATE_READS_VERSION` of the recording's state reads (0: none recorded)."""
    version: int = 0
    """As :attr:`StepRecord.version` (always written; none reads as :data:`UNVERSIONED`)."""


class RunEnded(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The ``run.completed`` / ``run.failed`` event's data, with the run's totals.
    ``status`` is ``completed``, ``failed`` or ``cancelled`` (a cancelled run's end event
    is a ``run.failed`` whose status says ``cancelled``: subscribers to ``run.failed`` see
    it as before)."""

    run_id: str
    status: str
    duration_ms: float
    output: Any = None
    error: dict[str, str] | None = None
    steps: int = 0
    model_calls: int = 0
    tool_calls: int = 0
    decisions: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    version: int = 0
    """As :attr:`StepRecord.version` (always written; none reads as :data:`UNVERSIONED`:
    end records were written without it before)."""


def _decode(kind: type[Any], data: Any, what: str, run_id: str) -> Any:
    try:
        value = msgspec.convert(data, kind)
    except (msgspec.ValidationError, TypeError) as exc:
        raise RecordingError(
            f"the recording of run {run_id!r} is damaged: its {what} cannot be read ({exc})",
            hint="the store file may be damaged or written by another program; record the "
                 "run again") from None
    version = getattr(value, "version", RECORDING_VERSION)
    if version == 0:  # no version field: written before the version was
        value.version = version = UNVERSIONED
    if version > RECORDING_VERSION:
        raise RecordingError(
            f"run {run_id!r} was recorded by a newer llmspell (recording version {version}; "
            f"this one reads up to {RECORDING_VERSION})",
            hint="upgrade llmspell to replay or compare this run")
    return value


def decode_started(data: Any, run_id: str) -> RunStarted:
    """The ``run.started`` data, checked; :class:`RecordingError` when it is damaged or
    newer than this llmspell."""
    started: RunStarted = _decode(RunStarted, data, "start record", run_id)
    return started


def decode_step(data: Any, run_id: str) -> StepRecord:
    """One ``run.step`` record, checked like :func:`decode_started`."""
    step: StepRecord = _decode(StepRecord, data, "step record", run_id)
    return step


def decode_ended(data: Any, run_id: str) -> RunEnded:
    """The ``run.completed``/``run.failed`` data, checked like :func:`decode_started`. A
    record written before runs had a ``cancelled`` status (``failed`` with a
    ``CancelledError``) reads as ``cancelled``."""
    ended: RunEnded = _decode(RunEnded, data, "end record", run_id)
    if ended.status == "failed" and end_status(ended.error) == "cancelled":
        ended.status = "cancelled"
    return ended
