"""What the viewer makes of the event stream: each run as a timeline of steps, the hook
latency table, breaker states and backpressure notices. Built once by the hub from every
event (whatever each browser's filter) and sent to browsers as snapshots, so a browser that
falls behind on events still sees correct runs and tables.

**Runs and steps.** Events carry the run they belong to (``metadata.run_id``). A run is
opened by ``run.started`` (or by its first event) and closed by ``run.completed`` /
``run.failed``, which carry its totals (a ``run.failed`` whose status is ``cancelled``, or
whose error is a ``CancelledError``, shows the run ``cancelled``, as are the steps it
left open and those that ended with a ``CancelledError``). Its steps appear when they *start*:

========================================= ===============================================
event                                     step
========================================= ===============================================
``agent.<a>.state_changed`` to running    agent ``a`` starts (ends when it leaves running)
``model.<p>.started``                     a model call starts (published only while someone
                                          subscribes to it; otherwise the call appears
                                          with ``model.<p>.completed``, back-dated by its
                                          latency)
``model.<p>.completed`` / ``.failed``     the model call ends: tokens, cost, latency
``tool.<t>.started``                      tool ``t`` starts (a second attempt marks it
                                          retried)
``tool.<t>.completed`` / ``.failed``      the tool ends (a ``Cancel`` is ``blocked``)
``workflow.<w>.started`` / ``stage_*``    the workflow and its steps
``hook.<point>``                          the decisions hooks took, and their timings
``run.steps``                             the run's step records: decisions not seen live
========================================= ===============================================

A step's parent is the agent (or workflow) step with the same correlation id. Every hook
decision that changed something marks its step: ``blocked`` (Cancel), ``modified``,
``replaced``, ``redirected``, ``cached``, ``retried``, ``forked``, ``hook error``,
``skipped`` (breaker open), with the hook's name.

**Bounds.** At most ``max_runs`` runs (the oldest finished ones are forgotten first), at
most ``max_steps`` steps per run (later steps are counted, not kept), latency samples of
the last :data:`LATENCY_SAMPLES` executions per hook for at most :data:`MAX_HOOKS` hooks,
the newest :data:`MAX_NOTICES` notices. Memory does not grow with the event rate.

**Versions.** Every change bumps :attr:`Summary.version` and stamps the run and step it
touched, so a connection asks for what changed since the version it last sent
(:meth:`Summary.runs_since`) and never receives a step twice unless it changed.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict, deque
from typing import Any

from llmspell.events.event import UniversalEvent

__all__ = ["LATENCY_SAMPLES", "MAX_HOOKS", "MAX_NOTICES", "RunView", "StepView", "Summary"]

LATENCY_SAMPLES = 1024
"""Latency samples kept per hook (the newest), for its p50/p95/p99."""
MAX_HOOKS = 500
"""Hooks the latency table and breaker list track; others are counted as untracked."""
MAX_NOTICES = 50
"""Backpressure and delivery notices kept (the newest)."""

MARKS = {"cancel": "blocked", "modified": "modified", "replace": "replaced",
         "redirect": "redirected", "cache": "cached", "retry": "retried", "fork": "forked",
         "error": "hook error", "skipped": "skipped"}
"""A hook result kind (as ``hook.<point>`` events and run records name it) -> the mark a
step shows."""

_CANCELLED = re.compile(r"hook '([^']+)' cancelled the operation at '([^']+)'(?:: (.*))?",
                        re.DOTALL)
_CANCEL_TYPES = frozenset({"OperationCancelledError", "CircuitOpenError"})
"""Error type names of a cancelled operation (a step shown ``blocked``): a hook's Cancel,
and its subclass raised when an open circuit breaker denied."""
_CANCELLED_TYPE = "CancelledError"
"""The error type of an operation whose task was cancelled (by its caller, a timeout,
Ctrl-C): a run or step shown ``cancelled``, not ``failed``."""


def _failed(error_type: Any) -> str:
    """The status of a step that ended with an error of ``error_type``."""
    return "cancelled" if error_type == _CANCELLED_TYPE else "failed"


_NOTICE_PREFIXES = ("bus.backpressure.", "bus.transport.", "bus.dead_letter",
                    "event.store.error", "event.handler.error")
_MATCH_WINDOW = 5.0
"""Seconds between a step record's start and a live step's start within which they are
taken to be the same step."""


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else 0.0


def _text(value: Any, limit: int = 300) -> str:
    if isinstance(value, str):
        text = value
    elif value is None:
        text = ""
    else:
        try:
            text = str(value)
        except RecursionError:  # a container nested thousands deep
            text = f"({type(value).__name__} nested too deeply to show)"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _scalar(value: Any) -> float | int | None:
    """A number an event carries (kept as is), else None: the summary keeps no structure
    an event sent it, so what it sends every page stays small and flat."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


class StepView:
    """One step of a run's timeline."""

    __slots__ = ("attempts", "corr", "cost_usd", "detail", "ended", "id", "inferred", "kind",
                 "marks", "name", "parent", "pending", "started", "status", "tokens_in",
                 "tokens_out", "version")

    def __init__(self, id: int, kind: str, name: str, started: float, parent: int | None,
                 corr: str | None, version: int) -> None:
        self.id = id
        self.kind = kind
        self.name = name
        self.started = started
        self.ended: float | None = None
        self.parent = parent
        self.corr = corr
        self.status = "running"
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost_usd = 0.0
        self.attempts = 1
        self.marks: dict[str, str] = {}
        self.detail = ""
        self.version = version
        self.pending = False
        self.inferred = False
        """Opened by its end event (no start event was seen): its start is estimated until
        its step record gives the real one."""
        """Opened by a hook decision at its before point: the start event is still to come
        (and must not open a second step)."""

    def as_dict(self) -> dict[str, Any]:
        """The step as the page reads it."""
        ended = self.ended
        return {"id": self.id, "kind": self.kind, "name": self.name, "parent": self.parent,
                "started": self.started, "ended": ended, "status": self.status,
                "duration_ms": None if ended is None else max(0.0, (ended - self.started)
                                                              * 1000),
                "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "cost_usd": self.cost_usd, "attempts": self.attempts, "marks": self.marks,
                "detail": self.detail}


class RunView:
    """One run: its header (kind, name, status, totals) and its steps."""

    def __init__(self, run_id: str, started: float, version: int) -> None:
        self.run_id = run_id
        self.kind = ""
        self.name = ""
        self.status = "running"
        self.started = started
        self.ended: float | None = None
        self.parent_run_id: str | None = None
        self.error = ""
        self.totals: dict[str, Any] = {}
        self.steps: dict[int, StepView] = {}
        self.open: dict[tuple[str, str], list[int]] = {}
        """(kind, name or provider) -> ids of the open steps, oldest first."""
        self.scopes: dict[str, int] = {}
        """correlation id -> the agent or workflow step it belongs to."""
        self.stages: dict[tuple[str, str], int] = {}
        """(correlation id, stage name) -> the open workflow stage step."""
        self.recorded: set[int] = set()
        """Steps a ``run.steps`` record has been matched to."""
        self.next_id = 1
        self.dropped_steps = 0
        self.version = version
        self.header_version = version

    def header(self) -> dict[str, Any]:
        """The run without its steps."""
        return {"run_id": self.run_id, "kind": self.kind, "name": self.name,
                "status": self.status, "started": self.started, "ended": self.ended,
                "parent_run_id": self.parent_run_id, "error": self.error,
                "totals": self.totals, "steps_total": len(self.steps),
                "dropped_steps": self.dropped_steps}


class _HookStats:
    __slots__ = ("calls", "decisions", "samples")

    def __init__(self) -> None:
        self.calls = 0
        self.samples: deque[int] = deque(maxlen=LATENCY_SAMPLES)
        self.decisions: Counter[str] = Counter()


def _percentile(ordered: list[int], fraction: float) -> float:
    """Nearest-rank percentile of a sorted list, in milliseconds."""
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index] / 1e6


class Summary:
    """Runs, hook latencies, breakers and notices, built from events (see the module
    docstring). Not thread-safe: the hub calls it from its event loop."""

    def __init__(self, *, max_runs: int = 100, max_steps: int = 300) -> None:
        if max_runs < 1 or max_steps < 1:
            raise ValueError("a summary needs max_runs >= 1 and max_steps >= 1")
        self.max_runs = max_runs
        self.max_steps = max_steps
        self.version = 0
        self.stats_version = 0
        self.runs: OrderedDict[str, RunView] = OrderedDict()
        self.forgotten_runs = 0
        self.hooks: dict[str, _HookStats] = {}
        self.untracked_hooks = 0
        self.breakers: dict[str, dict[str, Any]] = {}
        self.notices: deque[dict[str, Any]] = deque(maxlen=MAX_NOTICES)
        self.notice_counts: Counter[str] = Counter()
        self.events = 0

    # -- bookkeeping ------------------------------------------------------------------
    def _bump(self) -> int:
        self.version += 1
        return self.version

    def _touch(self, run: RunView, step: StepView | None = None) -> None:
        version = self._bump()
        run.version = version
        if step is None:
            run.header_version = version
        else:
            step.version = version

    def _stats_changed(self) -> None:
        self.stats_version += 1

    def _run(self, event: UniversalEvent, run_id: str) -> RunView:
        run = self.runs.get(run_id)
        if run is None:
            run = RunView(run_id, event.timestamp, self._bump())
            self.runs[run_id] = run
            self._forget()
        return run

    def _forget(self) -> None:
        runs = self.runs
        while len(runs) > self.max_runs:
            victim = next((key for key, run in runs.items() if run.status != "running"),
                          next(iter(runs)))
            del runs[victim]
            self.forgotten_runs += 1

    def _open_step(self, run: RunView, kind: str, name: str, started: float,
                   corr: str | None, key: str | None = None) -> StepView | None:
        if len(run.steps) >= self.max_steps:
            run.dropped_steps += 1
            self._touch(run)
            return None
        parent = None
        if corr is not None:
            parent = run.scopes.get(corr)
            stage = None
            if kind not in ("agent", "workflow"):
                stage = next((sid for (c, _), sid in reversed(run.stages.items())
                              if c == corr), None)
            if stage is not None:
                parent = stage
        step = StepView(run.next_id, kind, name, started, parent, corr, 0)
        run.next_id += 1
        run.steps[step.id] = step
        run.open.setdefault((kind, key or name), []).append(step.id)
        self._touch(run, step)
        return step

    def _find_open(self, run: RunView, kind: str, name: str, corr: str | None
                   ) -> StepView | None:
        ids = run.open.get((kind, name))
        if not ids:
            return None
        for sid in ids:
            step = run.steps.get(sid)
            if step is not None and (corr is None or step.corr == corr):
                return step
        step = run.steps.get(ids[0])
        return step

    def _close(self, run: RunView, step: StepView, ended: float, status: str,
               key: str | None = None) -> None:
        ids = run.open.get((step.kind, key or step.name))
        if ids and step.id in ids:
            ids.remove(step.id)
            if not ids:
                del run.open[(step.kind, key or step.name)]
        step.ended = max(ended, step.started)
        if step.status in ("running", "ok") or status in ("blocked", "failed"):
            step.status = status
        self._touch(run, step)

    def _mark(self, run: RunView, step: StepView, kind: str, hook: str | None,
              detail: str | None = None) -> None:
        label = MARKS.get(kind)
        if label is None:
            return
        text = hook or ""
        if detail:
            text = f"{text}: {detail}" if text else detail
        old = step.marks.get(label)
        # A mark is set once; later sources may only add detail to it ("no_shell" ->
        # "no_shell: no shell"), never take detail away.
        if old is None or (text != old and text.startswith(old)):
            step.marks[label] = _text(text, 200)
            self._touch(run, step)

    # -- events -----------------------------------------------------------------------
    def observe(self, event: UniversalEvent) -> None:
        """Take one event into account."""
        self.events += 1
        event_type = event.event_type
        head, _, rest = event_type.partition(".")
        try:
            if head == "hook":
                if rest.startswith("breaker."):
                    self._breaker(event, rest[8:])
                else:
                    self._hook_event(event)
                return
            if event_type.startswith(_NOTICE_PREFIXES):
                self._notice(event)
                return
            run_id = event.metadata.run_id
            if run_id is None:
                return
            if head == "run":
                self._run_event(event, run_id, rest)
            elif head == "tool":
                self._tool(event, run_id, rest)
            elif head == "model":
                self._model(event, run_id, rest)
            elif head == "agent":
                self._agent(event, run_id, rest)
            elif head == "workflow":
                self._workflow(event, run_id, rest)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError, RecursionError):
            # An event of a known family with an unexpected shape (another version's, or
            # published by hand): it stays in the event list, the timeline ignores it.
            return

    def _data(self, event: UniversalEvent) -> dict[str, Any]:
        data = event.data
        return data if isinstance(data, dict) else {}

    def _run_event(self, event: UniversalEvent, run_id: str, what: str) -> None:
        data = self._data(event)
        if what == "steps":
            run = self._run(event, run_id)
            for record in data.get("steps") or ():
                if isinstance(record, dict):
                    self._record(run, record)
            return
        run = self._run(event, run_id)
        if what == "started":
            run.kind = _text(data.get("kind"), 60)
            run.name = _text(data.get("name"), 120)
            run.started = event.timestamp
            parent = data.get("parent_run_id")
            run.parent_run_id = _text(parent, 120) if isinstance(parent, str) else None
            if data.get("replay_of"):
                run.totals["replay_of"] = _text(data["replay_of"], 120)
        elif what in ("completed", "failed"):
            error = data.get("error")
            if what == "completed":
                run.status = "completed"
            elif data.get("status") == "cancelled":
                run.status = "cancelled"
            else:
                run.status = _failed(error.get("type") if isinstance(error, dict) else None)
            run.ended = event.timestamp
            if isinstance(error, dict):
                run.error = _text(f"{error.get('type', '')}: {error.get('message', '')}")
            for key in ("duration_ms", "steps", "model_calls", "tool_calls", "decisions",
                        "tokens_in", "tokens_out", "cost_usd"):
                value = _scalar(data.get(key))
                if value is not None:
                    run.totals[key] = value
            for step in run.steps.values():
                if step.ended is None:
                    self._close(run, step, event.timestamp,
                                "ended" if what == "completed" else run.status)
            run.open.clear()
            run.stages.clear()
        else:
            return
        self._touch(run)

    def _agent(self, event: UniversalEvent, run_id: str, rest: str) -> None:
        name, _, what = rest.rpartition(".")
        if what != "state_changed":
            return
        data = self._data(event)
        corr = event.metadata.correlation_id
        run = self._run(event, run_id)
        if data.get("to") == "running":
            step = self._open_step(run, "agent", name, event.timestamp, corr)
            if step is not None and corr is not None:
                run.scopes[corr] = step.id
        elif data.get("from") == "running":
            step = self._find_open(run, "agent", name, corr)
            if step is not None:
                self._close(run, step, event.timestamp,
                            "failed" if data.get("to") == "error" else "ok")

    def _tool(self, event: UniversalEvent, run_id: str, rest: str) -> None:
        name, _, what = rest.rpartition(".")
        if what not in ("started", "completed", "failed") or not name:
            return
        data = self._data(event)
        corr = event.metadata.correlation_id
        run = self._run(event, run_id)
        step = self._find_open(run, "tool", name, corr)
        if what == "started":
            self._started(run, step, data, "tool", name, event.timestamp, corr)
            return
        duration = _number(data.get("duration_ms")) / 1000
        if step is None:
            step = self._open_step(run, "tool", name, event.timestamp - duration, corr)
            if step is None:
                return
            step.inferred = True
        if what == "completed":
            self._outcome_marks(run, step, data)
            self._close(run, step, event.timestamp, "ok")
            return
        message = _text(data.get("error"))
        step.detail = message
        status = _failed(data.get("error_type"))
        if data.get("error_type") in _CANCEL_TYPES:
            status = "blocked"
            found = _CANCELLED.match(message)
            if found:
                self._mark(run, step, "cancel", found.group(1), found.group(3))
            else:
                self._mark(run, step, "cancel", None, message)
        self._close(run, step, event.timestamp, status)

    def _started(self, run: RunView, step: StepView | None, data: dict[str, Any], kind: str,
                 name: str, at: float, corr: str | None, key: str | None = None) -> None:
        """A tool or model call's ``started`` event: the open step it announces (one the
        run's records placed already, or a retry of an open one), or a new step."""
        attempt = int(_number(data.get("attempt")) or 1)
        if step is not None and step.pending:
            step.pending = False
            return
        if step is not None and attempt > 1:
            step.attempts = attempt
            self._mark(run, step, "retry", None, f"attempt {attempt}")
            return
        self._open_step(run, kind, name, at, corr, key=key)

    def _outcome_marks(self, run: RunView, step: StepView, data: dict[str, Any]) -> None:
        """The marks a ``completed`` event's data calls for: retried, cached, replaced."""
        attempts = int(_number(data.get("attempts")) or 1)
        if attempts > 1:
            step.attempts = attempts
            self._mark(run, step, "retry", None, f"{attempts} attempts")
        if data.get("cached"):
            self._mark(run, step, "cache", None)
        if data.get("replaced"):
            self._mark(run, step, "replace", None)

    def _model(self, event: UniversalEvent, run_id: str, rest: str) -> None:
        provider, _, what = rest.rpartition(".")
        if what not in ("started", "completed", "failed") or not provider:
            return
        data = self._data(event)
        corr = event.metadata.correlation_id
        run = self._run(event, run_id)
        name = f"{provider}/{_text(data.get('model'), 120) or '?'}"
        step = self._find_open(run, "model", provider, corr)
        if what == "started":
            self._started(run, step, data, "model", name, event.timestamp, corr, provider)
            return
        latency = _number(data.get("latency_ms")) / 1000
        if step is None:
            step = self._open_step(run, "model", name, event.timestamp - latency, corr,
                                   key=provider)
            if step is None:
                return
            step.inferred = True
        if what == "failed":
            step.detail = _text(data.get("error"))
            self._close(run, step, event.timestamp, _failed(data.get("error_type")),
                        key=provider)
            return
        usage = data.get("usage")
        if isinstance(usage, dict):
            step.tokens_in = int(_number(usage.get("input_tokens")))
            step.tokens_out = int(_number(usage.get("output_tokens")))
        step.cost_usd = _number(data.get("cost_usd"))
        self._outcome_marks(run, step, data)
        if data.get("redirected_to"):
            self._mark(run, step, "redirect", None, f"to {data['redirected_to']}")
        self._close(run, step, event.timestamp, "ok", key=provider)

    def _workflow(self, event: UniversalEvent, run_id: str, rest: str) -> None:
        name, _, what = rest.rpartition(".")
        if not name:
            return
        data = self._data(event)
        corr = event.metadata.correlation_id
        run = self._run(event, run_id)
        if what == "started":
            step = self._open_step(run, "workflow", name, event.timestamp, corr)
            if step is not None and corr is not None:
                run.scopes[corr] = step.id
        elif what in ("completed", "failed", "cancelled"):
            step = self._find_open(run, "workflow", name, corr)
            if step is not None:
                if what == "cancelled":
                    self._mark(run, step, "cancel", _text(data.get("hook"), 80) or None,
                               _text(data.get("reason"), 120) or None)
                self._close(run, step, event.timestamp,
                            {"completed": "ok", "failed": "failed"}.get(what, "blocked"))
        elif what == "stage_started":
            stage = _text(data.get("step"), 120)
            key = (corr or "", stage)
            attempt = int(_number(data.get("attempt")) or 1)
            open_id = run.stages.get(key)
            if open_id is not None and attempt > 1 and open_id in run.steps:
                step = run.steps[open_id]
                step.attempts = attempt
                self._mark(run, step, "retry", None, f"attempt {attempt}")
                return
            step = self._open_step(run, "stage", f"{name}/{stage}", event.timestamp, corr)
            if step is not None:
                run.stages[key] = step.id
        elif what in ("stage_completed", "stage_failed"):
            stage = _text(data.get("step"), 120)
            open_id = run.stages.pop((corr or "", stage), None)
            step = run.steps.get(open_id) if open_id is not None else None
            if step is None:
                return
            if data.get("replaced"):
                self._mark(run, step, "replace", None)
            if what == "stage_failed":
                step.detail = _text(data.get("error"))
            self._close(run, step, event.timestamp,
                        "ok" if what == "stage_completed" else "failed")

    def _record(self, run: RunView, record: dict[str, Any]) -> None:
        """A step record from ``run.steps``: its decisions and totals onto the live step it
        describes (same kind and name, nearest start), or a step of its own."""
        kind = record.get("kind")
        name = record.get("name")
        if not record.get("key") or not isinstance(kind, str) or not isinstance(name, str):
            return  # the root step: the run itself
        kind, name = _text(kind, 40), _text(name, 300)
        started = _number(record.get("started"))
        ended = started + _number(record.get("duration_ms")) / 1000
        step = self._match(run, kind, name, started, ended)
        key = name.partition("/")[0] if kind == "model" else None
        if step is not None and step.inferred and step.ended is not None:
            step.inferred = False
            step.started, step.ended = started, max(started, ended)
            self._touch(run, step)
        if step is None:
            step = self._open_step(run, kind, name, started, None, key=key)
            if step is None:
                return
            run.recorded.add(step.id)
            step.tokens_in = int(_number(record.get("tokens_in")))
            step.tokens_out = int(_number(record.get("tokens_out")))
            step.cost_usd = _number(record.get("cost_usd"))
        for dispatch in record.get("dispatches") or ():
            if isinstance(dispatch, list) and len(dispatch) >= 2 and dispatch[1] != "continue":
                hook = dispatch[2] if len(dispatch) > 2 else None
                self._mark(run, step, _text(dispatch[1], 40), hook if isinstance(hook, str)
                           else None)
            if isinstance(dispatch, list) and len(dispatch) > 5 and dispatch[5]:
                for failed in dispatch[5]:
                    self._mark(run, step, "error", _text(failed, 120))
        for execution in record.get("hooks") or ():
            if isinstance(execution, dict):
                self._latency(_text(execution.get("hook"), 120), int(_number(
                    execution.get("duration_ns"))), _text(execution.get("kind"), 40))
        error = record.get("error")
        if step.ended is None:
            status = "ok"
            if isinstance(error, dict):
                status = "blocked" if error.get("type") in _CANCEL_TYPES \
                    else _failed(error.get("type"))
                step.detail = step.detail or _text(error.get("message"))
            self._close(run, step, ended, status, key=key)

    def _match(self, run: RunView, kind: str, name: str, started: float, ended: float
               ) -> StepView | None:
        """The live step a record describes: same kind and name, not matched yet, nearest
        in end time (both are taken when the operation ends) or, for a step still open, in
        start time."""
        best: StepView | None = None
        gap = _MATCH_WINDOW
        for step in run.steps.values():
            if step.kind != kind or step.name != name or step.id in run.recorded:
                continue
            distance = abs(step.ended - ended) if step.ended is not None \
                else abs(step.started - started)
            if distance <= gap:
                best, gap = step, distance
        if best is not None:
            run.recorded.add(best.id)
        return best

    def _hook_event(self, event: UniversalEvent) -> None:
        data = self._data(event)
        hooks = data.get("hooks") or []
        kinds = data.get("kinds") or []
        durations = data.get("durations_ns") or []
        for i, hook in enumerate(hooks):
            kind = kinds[i] if i < len(kinds) else "continue"
            duration = durations[i] if i < len(durations) else 0
            self._latency(_text(hook, 120), int(_number(duration)), _text(kind, 40))
        run_id = event.metadata.run_id
        decisions = [(_text(hooks[i], 120), _text(kinds[i], 40))
                     for i in range(min(len(hooks), len(kinds))) if kinds[i] != "continue"]
        if run_id is None or not decisions:
            return
        run = self._run(event, run_id)
        component_type = data.get("component_type")
        component = _text(data.get("component"), 300)
        point = _text(data.get("point"), 80)
        corr = event.metadata.correlation_id
        step: StepView | None = None
        if component_type in ("tool", "model"):
            key = component.partition("/")[0] if component_type == "model" else component
            step = self._find_open(run, component_type, key, corr)
            if step is None and point.startswith("before"):
                # The decision comes before the operation's start event: open its step now.
                step = self._open_step(run, component_type, component, event.timestamp, corr,
                                       key=key)
                if step is not None:
                    step.pending = True
            if step is None:
                step = self._latest(run, component_type, component)
        elif component_type in ("agent", "workflow"):
            step = self._find_open(run, component_type, component, corr) or self._latest(
                run, component_type, component)
        if step is None:
            return
        reason = data.get("reason") or data.get("target")
        for hook, kind in decisions:
            self._mark(run, step, kind, hook,
                       _text(reason, 120) if hook == data.get("decided_by") and reason
                       else None)

    def _latest(self, run: RunView, kind: str, name: str) -> StepView | None:
        for step in reversed(run.steps.values()):
            if step.kind == kind and (step.name == name or step.name.startswith(name + "/")):
                return step
        return None

    def _latency(self, hook: str, duration_ns: int, kind: str) -> None:
        stats = self.hooks.get(hook)
        if stats is None:
            if len(self.hooks) >= MAX_HOOKS:
                self.untracked_hooks += 1
                return
            stats = self.hooks[hook] = _HookStats()
        stats.calls += 1
        stats.samples.append(max(0, duration_ns))
        if kind != "continue":
            stats.decisions[MARKS.get(kind, kind)] += 1
        self._stats_changed()

    def _breaker(self, event: UniversalEvent, state: str) -> None:
        data = self._data(event)
        hook = _text(data.get("hook"), 120)
        if hook not in self.breakers and len(self.breakers) >= MAX_HOOKS:
            return
        self.breakers[hook] = {"hook": hook, "point": _text(data.get("point"), 80),
                               "state": state, "from": _text(data.get("old"), 20),
                               "reason": _text(data.get("reason"), 200),
                               "open_for_s": _number(data.get("open_duration")),
                               "at": event.timestamp}
        self._stats_changed()

    def _notice(self, event: UniversalEvent) -> None:
        data = self._data(event)
        kind = event.event_type
        self.notice_counts[kind] += 1
        self.notices.append({
            "type": kind, "at": event.timestamp,
            "subscription": _text(data.get("subscription"), 120),
            "depth": _scalar(data.get("depth")), "capacity": _scalar(data.get("capacity")),
            "dropped": _scalar(data.get("dropped")), "rejected": _scalar(data.get("rejected")),
            "detail": _text(data.get("detail") or data.get("message") or data.get("error")
                            or data.get("reason"), 200)})
        self._stats_changed()

    # -- reading ----------------------------------------------------------------------
    def runs_since(self, version: int) -> list[dict[str, Any]]:
        """The runs changed after ``version``: each header with the steps changed after it
        (all of them for a run the caller has not seen), oldest run first."""
        out = []
        for run in self.runs.values():
            if run.version <= version:
                continue
            steps = [step.as_dict() for step in run.steps.values() if step.version > version]
            out.append({**run.header(), "steps": steps})
        return out

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run with all its steps, or None when it is not (or no longer) known."""
        run = self.runs.get(run_id)
        if run is None:
            return None
        return {**run.header(), "steps": [step.as_dict() for step in run.steps.values()]}

    def hook_table(self) -> list[dict[str, Any]]:
        """Per hook: executions, p50/p95/p99/max of the sampled latencies (ms) and the
        decisions it took, slowest p95 first."""
        rows: list[dict[str, Any]] = []
        for hook, stats in self.hooks.items():
            if not stats.samples:
                continue
            ordered = sorted(stats.samples)
            rows.append({"hook": hook, "calls": stats.calls,
                         "p50_ms": _percentile(ordered, 0.50),
                         "p95_ms": _percentile(ordered, 0.95),
                         "p99_ms": _percentile(ordered, 0.99),
                         "max_ms": ordered[-1] / 1e6, "samples": len(ordered),
                         "decisions": dict(stats.decisions)})
        rows.sort(key=lambda row: -float(row["p95_ms"]))
        return rows

    def stats(self) -> dict[str, Any]:
        """The tables: hook latencies, breakers, notices and their counts."""
        return {"hooks": self.hook_table(), "untracked_hooks": self.untracked_hooks,
                "breakers": sorted(self.breakers.values(), key=lambda b: -b["at"]),
                "notices": list(reversed(self.notices)),
                "notice_counts": dict(self.notice_counts),
                "runs": len(self.runs), "forgotten_runs": self.forgotten_runs,
                "events": self.events}
