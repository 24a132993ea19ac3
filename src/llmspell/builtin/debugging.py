"""``DebuggingHook``: a bounded, queryable trace of every hook point it sees.

Each :class:`Trace` holds the point, the component, the correlation id, the context's
timestamp, a masked and truncated snapshot of the data and, on a closing point, the
``duration_ms`` since the matching opening point (``before_tool_execution`` →
``after_tool_execution`` / ``tool_error`` for the same correlation id and component). With
``capture_stack=True`` a trace also holds the real Python call stack that led to the point,
as ``"file:line in function"`` strings (oldest first), without the hook engine's and
asyncio's own frames.

At the model points a trace also names the ``provider`` and ``model`` and, after the
call, its ``latency_ms`` (the provider's, from the response) and ``usage`` (tokens); its data
snapshot is the summary :func:`~llmspell.builtin.logging_hook.model_summary` keeps (no
prompt or reply text unless ``DebuggingConfig.model_content``). ``before_model_call`` →
``after_model_call``/``model_call_error`` is timed like any operation.

Traces live in a deque of at most ``max_traces``; the oldest are dropped first. Query them
with :meth:`DebuggingHook.traces`.
"""

from __future__ import annotations

import asyncio
import os
import traceback
from collections import OrderedDict, deque
from collections.abc import Iterable
from time import perf_counter_ns
from typing import Any

import msgspec

import llmspell.hooks
from llmspell.builtin.base import (
    ALL_RUNTIME_POINTS,
    MODEL_AFTER,
    MODEL_BEFORE,
    MODEL_ERROR,
    BuiltinHook,
)
from llmspell.builtin.logging_hook import (
    DEFAULT_KEEP_KEYS,
    build_masker,
    check_keys,
    model_summary,
)
from llmspell.builtin.masking import DEFAULT_SENSITIVE_KEYS, Masker, truncate
from llmspell.core.errors import InvalidValueError
from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import HookOutput
from llmspell.hooks.points import parse_point

__all__ = [
    "DEBUGGING_PRIORITY",
    "DebuggingConfig",
    "DebuggingHook",
    "DebuggingStats",
    "Trace",
]

DEBUGGING_PRIORITY = 950
"""Default priority of :class:`DebuggingHook`: after almost everything, so a trace shows the
data the other hooks left."""

# Frames from these folders are the machinery between the call site and the hook.
_SKIP_DIRS: tuple[str, ...] = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (llmspell.hooks.__file__ or "", __file__, asyncio.__file__ or "")
)

# Opening and closing points that do not follow the before_X / after_X naming.
_OPEN = 1
_CLOSE = 2
_FAIL = 3
_SPECIAL: dict[str, tuple[int, str]] = {
    "tool_error": (_FAIL, "tool_execution"),
    "agent_error": (_FAIL, "agent_execution"),
    "before_workflow_start": (_OPEN, "workflow"),
    "after_workflow_complete": (_CLOSE, "workflow"),
    "workflow_error": (_FAIL, "workflow"),
    str(MODEL_ERROR): (_FAIL, "model_call"),
}
_MODEL_POINTS = frozenset({str(MODEL_BEFORE), str(MODEL_AFTER), str(MODEL_ERROR)})


def _pairing(point: str) -> tuple[int, str] | None:
    """``(role, operation)`` of a point that opens, closes or fails an operation."""
    special = _SPECIAL.get(point)
    if special is not None:
        return special
    if point.startswith("before_"):
        return _OPEN, point[len("before_"):]
    if point.startswith("after_"):
        return _CLOSE, point[len("after_"):]
    return None


def _positive(name: str, value: object, hint: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidValueError(f"DebuggingConfig.{name} must be an int >= 1, got {value!r}",
                                hint=hint)


class DebuggingConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of :class:`DebuggingHook`.

    ``max_traces``: traces kept (oldest dropped first). ``capture_stack``: record the Python
    call stack of each point (costly: for debugging sessions). ``stack_depth``: frames kept,
    the innermost. ``capture_data``: keep a data snapshot. ``max_chars``: long strings in
    the snapshot are cut to about this many characters. ``sensitive_keys``: key fragments
    whose values are masked; ``keep_keys``: exact key names never masked (default
    ``token_usage``). ``max_open``: operations awaiting their closing point (for
    durations) kept at most; the oldest are forgotten first. ``model_content``: keep the
    prompt's and reply's text in model point snapshots.
    """

    max_traces: int = 1000
    capture_stack: bool = False
    stack_depth: int = 12
    capture_data: bool = True
    max_chars: int = 500
    sensitive_keys: tuple[str, ...] = DEFAULT_SENSITIVE_KEYS
    keep_keys: tuple[str, ...] = DEFAULT_KEEP_KEYS
    max_open: int = 1000
    model_content: bool = False

    def __post_init__(self) -> None:
        _positive("max_traces", self.max_traces, "1000 keeps the recent history of a run")
        _positive("stack_depth", self.stack_depth, "12 frames usually reach the caller")
        _positive("max_chars", self.max_chars, "500 keeps snapshots small")
        _positive("max_open", self.max_open, "about the number of concurrent operations")
        force = msgspec.structs.force_setattr
        force(self, "sensitive_keys", check_keys("DebuggingConfig", "sensitive_keys",
                                                 self.sensitive_keys))
        force(self, "keep_keys", check_keys("DebuggingConfig", "keep_keys", self.keep_keys))


class Trace(msgspec.Struct, frozen=True, kw_only=True):
    """One hook point as the debugging hook saw it.

    ``seq`` orders traces (it keeps growing when old traces are dropped); ``timestamp`` is
    the context's (seconds since the epoch); ``duration_ms`` is set on closing points
    (after/error) whose opening point was traced; ``stack`` is None unless stacks are
    captured. ``provider``, ``model``, ``latency_ms`` and ``usage`` are set at the model
    points (the last two after the call).
    """

    seq: int
    point: str
    component_type: str
    component_name: str
    correlation_id: str
    timestamp: float
    data: dict[str, Any] | None = None
    duration_ms: float | None = None
    stack: list[str] | None = None
    provider: str | None = None
    model: str | None = None
    latency_ms: float | None = None
    usage: dict[str, Any] | None = None


class DebuggingStats(msgspec.Struct, frozen=True, kw_only=True):
    """What :class:`DebuggingHook` holds: ``captured`` (ever), ``retained`` (now),
    ``dropped`` (pushed out by ``max_traces``), ``open_operations`` (awaiting their closing
    point), ``errors`` (while capturing) and ``by_point`` (captured per point)."""

    captured: int
    retained: int
    dropped: int
    open_operations: int
    errors: int
    by_point: dict[str, int]


_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder().decode
_SNAPSHOT_CHARS = 8
"""A snapshot is kept as its JSON while that is at most this many times ``max_chars``
bytes; a larger (or not JSON) one is cut when captured."""


def _snapshot(value: Any, max_chars: int) -> Any:
    """What a trace keeps of ``value``: its JSON, immutable and cheap to make (the caller
    may change the value afterwards), or, for a large value or one JSON cannot hold, a
    truncated copy (a trace never holds a huge payload whole)."""
    try:
        encoded = _ENCODE(value)
    except (TypeError, ValueError, OverflowError, RecursionError):
        return truncate(value, max_chars)
    if len(encoded) > _SNAPSHOT_CHARS * max_chars:
        return truncate(value, max_chars)
    return encoded


class DebuggingHook(BuiltinHook):
    """Captures a bounded trace of hook points for debugging; only observes (returns None).

    A failure while capturing is counted in ``stats().errors`` and never reaches the
    operation.
    """

    default_points: tuple[str, ...] = tuple(ALL_RUNTIME_POINTS)

    def __init__(
        self,
        config: DebuggingConfig | None = None,
        *,
        points: Iterable[str] | None = None,
        priority: int = DEBUGGING_PRIORITY,
        masker: Masker | None = None,
    ) -> None:
        """``masker`` replaces the one built from ``config.sensitive_keys``/``keep_keys``."""
        super().__init__(name="debugging", priority=priority, points=points,
                         description="captures a bounded, queryable trace of hook points")
        self.config = config if config is not None else DebuggingConfig()
        self.masker = masker if masker is not None else build_masker(
            self.config.sensitive_keys, self.config.keep_keys)
        self._traces: deque[Trace] = deque(maxlen=self.config.max_traces)
        # Each trace's data as captured (see _snapshot), beside it: Trace.data is filled in
        # when the trace is read.
        self._snapshots: deque[Any] = deque(maxlen=self.config.max_traces)
        self._open: OrderedDict[tuple[str, str, str, str], int] = OrderedDict()
        self._pairings: dict[str, tuple[int, str] | None] = {}
        self._seq = 0
        self._dropped = 0
        self._errors = 0
        self._by_point: dict[str, int] = {}

    # -- capture ------------------------------------------------------------------------
    def execute(self, ctx: HookContext) -> HookOutput:
        """Record a trace of ``ctx``; never changes it."""
        now = perf_counter_ns()
        try:
            self._capture(ctx, now)
        except Exception:
            self._errors += 1
        return None

    def _capture(self, ctx: HookContext, now: int) -> None:
        config = self.config
        point = str(ctx.point)
        component = ctx.component
        ctype = component.type.value
        duration_ms: float | None = None
        pairings = self._pairings
        if point in pairings:
            pairing = pairings[point]
        else:
            pairing = pairings[point] = _pairing(point)
        if pairing is not None:
            role, operation = pairing
            key = (ctx.correlation_id, ctype, component.name, operation)
            opened = self._open
            if role == _OPEN:
                opened.pop(key, None)
                opened[key] = now
                if len(opened) > config.max_open:
                    opened.popitem(last=False)
            else:
                # An error keeps the operation open: the runtime may retry it, and the
                # after point then measures the whole call.
                start = opened.pop(key, None) if role == _CLOSE else opened.get(key)
                if start is not None:
                    duration_ms = (now - start) / 1e6
        # A snapshot now (what the caller later does to the data does not change the trace,
        # and a huge payload is not kept whole); masked and truncated when read (traces()),
        # so capture stays cheap. Secrets never leave the hook unmasked.
        provider = model = usage = latency = None
        snapshot: Any = None
        if point in _MODEL_POINTS:
            raw = ctx.data
            provider, model = raw.get("provider"), raw.get("model")
            result = raw.get("result")
            if isinstance(result, dict):
                usage, latency = result.get("usage"), result.get("latency_ms")
            if config.capture_data:
                snapshot = _snapshot(model_summary(raw, config.model_content), config.max_chars)
        elif config.capture_data:
            snapshot = _snapshot(ctx.data, config.max_chars)
        stack = _call_stack(config.stack_depth) if config.capture_stack else None
        self._seq += 1
        traces = self._traces
        if len(traces) == traces.maxlen:
            self._dropped += 1
        self._snapshots.append(snapshot)
        traces.append(Trace(
            seq=self._seq, point=point, component_type=ctype, component_name=component.name,
            correlation_id=ctx.correlation_id, timestamp=ctx.timestamp, data=None,
            duration_ms=duration_ms, stack=stack,
            provider=provider if isinstance(provider, str) else None,
            model=model if isinstance(model, str) else None,
            latency_ms=float(latency) if isinstance(latency, int | float) else None,
            usage=truncate(usage, config.max_chars) if isinstance(usage, dict) else None,
        ))
        self._by_point[point] = self._by_point.get(point, 0) + 1

    # -- queries ------------------------------------------------------------------------
    def traces(
        self,
        point: str | None = None,
        component: str | None = None,
        correlation_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[Trace]:
        """The retained traces that match every filter given, oldest first.

        ``point`` takes any spelling (``"BeforeToolExecution"``, ``"before_tool_execution"``,
        ``"custom:agent_model_call"``); ``component`` matches a component's name or
        ``"type:name"`` (``"tool:calculator"``); ``since``/``until`` bound the timestamp
        (seconds since the epoch, inclusive); ``limit`` keeps the most recent matches.
        """
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise InvalidValueError(f"limit must be an int >= 0 or None, got {limit!r}")
        wanted_point = str(parse_point(point)) if point is not None else None
        out: list[tuple[Trace, Any]] = []
        for trace, snapshot in zip(self._traces, self._snapshots, strict=True):
            if wanted_point is not None and trace.point != wanted_point:
                continue
            if component is not None and component not in (
                trace.component_name, f"{trace.component_type}:{trace.component_name}"
            ):
                continue
            if correlation_id is not None and trace.correlation_id != correlation_id:
                continue
            if since is not None and trace.timestamp < since:
                continue
            if until is not None and trace.timestamp > until:
                continue
            out.append((trace, snapshot))
        if limit is not None:
            out = out[len(out) - limit:] if limit else []
        return [self._presentable(t, snapshot) for t, snapshot in out]

    def _presentable(self, trace: Trace, snapshot: Any) -> Trace:
        """The trace as it may be shown: its data masked and truncated."""
        if snapshot is None:
            return trace
        try:
            # JSON kept whole is cut now; a large snapshot was cut when captured.
            data = (truncate(_DECODE(snapshot), self.config.max_chars)
                    if type(snapshot) is bytes else snapshot)
            data = self.masker.mask(data)
        except Exception:  # a data we cannot mask is withheld, never shown raw
            self._errors += 1
            data = None
        return msgspec.structs.replace(trace, data=data)

    def clear(self) -> None:
        """Forget every trace and open operation (the counts in :meth:`stats` stay)."""
        self._traces.clear()
        self._snapshots.clear()
        self._open.clear()

    def __len__(self) -> int:
        """Traces retained."""
        return len(self._traces)

    def stats(self) -> DebuggingStats:
        """Counts so far (a snapshot)."""
        return DebuggingStats(
            captured=self._seq, retained=len(self._traces), dropped=self._dropped,
            open_operations=len(self._open), errors=self._errors,
            by_point=dict(self._by_point),
        )


def _call_stack(depth: int) -> list[str]:
    """The innermost ``depth`` frames of the current stack outside the hook machinery,
    oldest first, as ``"file:line in function"``."""
    frames: list[str] = []
    for frame, lineno in traceback.walk_stack(None):
        filename = frame.f_code.co_filename
        if filename.startswith(_SKIP_DIRS):
            continue
        frames.append(f"{filename}:{lineno} in {frame.f_code.co_name}")
        if len(frames) >= depth:
            break
    frames.reverse()
    return frames
