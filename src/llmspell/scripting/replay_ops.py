"""The ``Replay`` global (``replay.*`` host operations), and the plain-data views of runs,
recordings, replay results and diffs that it and ``llmspell runs`` share.

``Replay.list(options)`` lists runs, ``Replay.show(run_id)`` gives one run's summary and
steps, ``Replay.run(run_id, options)`` replays it (``system.runs.replay``) and
``Replay.diff(a, b)`` compares two runs. Every operation is asynchronous for the script (a
promise in JavaScript). See ``docs/scripting.md`` and ``docs/runs.md``.

A script may replay agent and script runs (other kinds need the Python API's
``operation=``). Replaying a script run runs the recorded source with the recorded
read and environment capabilities (and, with ``allow_side_effects``, the recorded write,
exec and network ones): the calling script must hold each of them itself, so a replay never
grants a script more than it has. A replayed run cannot start another replay.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from llmspell.core.errors import (
    InvalidValueError,
    PermissionDeniedError,
    RecordingError,
    ReplayError,
    RunNotFoundError,
)
from llmspell.runtime.runs import (
    Divergence,
    Recording,
    ReplayResult,
    RunDiff,
    RunSummary,
    StepRecord,
    current_run,
)
from llmspell.runtime.runs.replay import MODES
from llmspell.scripting.io_ops import check_options
from llmspell.scripting.lua import Capabilities

__all__ = ["SCRIPT_REPLAYABLE", "ReplayOps", "decisions_of", "diff_view", "divergence_view",
           "recording_view", "result_view", "step_view", "summary_view"]

SCRIPT_REPLAYABLE = ("agent", "script")
"""Run kinds a script (and ``llmspell runs replay``, ``script`` only) can replay without a
Python ``operation=``."""

_SUMMARY_FIELDS = ("run_id", "kind", "name", "status", "started", "duration_ms", "level",
                   "host", "pid", "parent_run_id", "replay_of", "mode", "steps",
                   "model_calls", "tool_calls", "decisions", "tokens_in", "tokens_out",
                   "cost_usd", "error")
_LIST_OPTIONS = frozenset({"limit", "kind", "name", "status", "all"})
_RUN_OPTIONS = frozenset({"mode", "after", "allow_side_effects", "input"})


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=repr)


def _fields(values: dict[str, Any], nulls: bool) -> dict[str, Any]:
    return values if nulls else {k: v for k, v in values.items() if v is not None}


def summary_view(summary: RunSummary, *, nulls: bool = True) -> dict[str, Any]:
    """A run's summary as plain data (``started`` in epoch seconds); ``nulls=False`` leaves
    unset fields out (what scripts get: a Lua table cannot hold nil)."""
    return _fields({name: _plain(getattr(summary, name)) for name in _SUMMARY_FIELDS}, nulls)


def decisions_of(step: StepRecord) -> list[str]:
    """The hook decisions of a step that were not ``continue``:
    ``"after_tool_execution: modified by 'redact'"``."""
    return [f"{d.point}: {d.describe()}" for d in step.dispatches if d.kind != "continue"]


def step_view(step: StepRecord, *, nulls: bool = True) -> dict[str, Any]:
    """One recorded step as plain data: index, key, kind, name, served, duration_ms, the
    decisions that were not ``continue``, error, input, output, tokens and cost."""
    return _fields({
        "index": step.index, "key": step.key, "kind": step.kind, "name": step.name,
        "served": step.served, "duration_ms": step.duration_ms,
        "decisions": decisions_of(step), "error": _plain(step.error),
        "input": _plain(step.input), "output": _plain(step.result),
        "tokens_in": step.tokens_in, "tokens_out": step.tokens_out,
        "cost_usd": step.cost_usd, "side_effects": list(step.side_effects),
        "child_runs": list(step.child_runs)}, nulls)


def recording_view(summary: RunSummary, recording: Recording, *,
                   nulls: bool = True) -> dict[str, Any]:
    """``{run: summary, steps: [step...], child_runs: [{run_id, kind, name}]}``; the steps
    in start order, the run's own root step (key ``""``) left out."""
    return {
        "run": summary_view(summary, nulls=nulls),
        "steps": [step_view(step, nulls=nulls) for step in recording.ordered if step.key],
        "child_runs": [{"run_id": child.run_id, "kind": child.kind, "name": child.name}
                       for child in recording.child_runs.values()],
    }


def divergence_view(divergence: Divergence, *, nulls: bool = True) -> dict[str, Any]:
    """One divergence: step, key, kind, name, what, point, hook, expected, got,
    nondeterministic, and ``text`` (its :meth:`~Divergence.describe`)."""
    return _fields({
        "step": divergence.step, "key": divergence.key, "kind": divergence.kind,
        "name": divergence.name, "what": divergence.what, "point": divergence.point,
        "hook": divergence.hook, "expected": _plain(divergence.expected),
        "got": _plain(divergence.got), "nondeterministic": divergence.nondeterministic,
        "text": divergence.describe()}, nulls)


def result_view(result: ReplayResult, *, nulls: bool = True) -> dict[str, Any]:
    """A replay's result: run_id (the new run), replay_of, mode, status, output, error,
    diverged, divergences, served, side_effects_skipped."""
    return _fields({
        "run_id": result.run_id, "replay_of": result.replay_of, "mode": result.mode,
        "status": result.status, "output": _plain(result.output),
        "error": _plain(result.error), "diverged": result.diverged,
        "divergences": [divergence_view(d, nulls=nulls) for d in result.divergences],
        "served": dict(result.served),
        "side_effects_skipped": list(result.side_effects_skipped)}, nulls)


def diff_view(diff: RunDiff, *, nulls: bool = True) -> dict[str, Any]:
    """Two runs compared: a, b, same, steps (each ``{key, kind, name, index_a, index_b,
    only_in, changes = {field = [a, b]}, duration_ms = [a, b]}``) and totals
    (``{field = [a, b]}``)."""
    return {
        "a": diff.a, "b": diff.b, "same": diff.same,
        "steps": [_fields({"key": s.key, "kind": s.kind, "name": s.name,
                           "index_a": s.index_a, "index_b": s.index_b,
                           "only_in": s.only_in, "changes": _plain(s.changes),
                           "duration_ms": list(s.duration_ms)}, nulls)
                  for s in diff.steps],
        "totals": _plain(diff.totals),
    }


_SHOWN = 80
"""The most characters of a script's value an error message quotes."""


def _shown(value: Any) -> str:
    """``repr(value)`` cut to :data:`_SHOWN` characters (a hostile argument can be
    megabytes: the message is logged and recorded), built from at most that much text."""
    if isinstance(value, str) and len(value) > _SHOWN:
        return f"{value[:_SHOWN]!r}... ({len(value)} characters)"
    if isinstance(value, dict | list) and len(value) > 8:
        return f"a {'table' if isinstance(value, dict) else 'list'} of {len(value)} entries"
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _text(value: Any, what: str, name: str, hint: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidValueError(f"{what}: {name} must be a non-empty string, got "
                                f"{_shown(value)}", hint=hint)
    return value


def _root(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _covered(paths: Iterable[Any], roots: tuple[str, ...]) -> list[str]:
    """The paths in ``paths`` that no root in ``roots`` contains."""
    missing = []
    for path in paths:
        resolved = _root(str(path))
        if not any(resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep)
                   for root in roots):
            missing.append(str(path))
    return missing


class ReplayOps:
    """The ``replay.*`` operations for one script engine on ``system``.

    ``caller`` is the calling engine's :class:`Capabilities` (the bindings set it; None
    grants nothing): a script run is replayed only when the caller holds every capability
    the replay would give the replayed script.
    """

    def __init__(self, system: Any, language: str) -> None:
        self.system = system
        self.language = language
        self.caller: Capabilities | None = None

    def operations(self) -> dict[str, Callable[..., Any]]:
        """Operation name -> implementation."""
        return {"replay.list": self.list, "replay.show": self.show,
                "replay.run": self.run, "replay.diff": self.diff}

    def _call(self, name: str) -> str:
        return f"{'' if self.language == 'lua' else 'await '}Replay.{name}"

    def _example(self, lua: str, js: str) -> str:
        return lua if self.language == "lua" else js

    def _run_id(self, value: Any, what: str) -> str:
        if not isinstance(value, str) or not value:
            raise InvalidValueError(f"{what} needs a run id (a string), got {_shown(value)}",
                                    hint=f"ids come from {self._call('list')}()")
        return value

    def _not_found(self, exc: RunNotFoundError, *idents: str) -> RunNotFoundError:
        message = exc.message
        for ident in idents:  # the store's message quotes the whole id
            if len(ident) > _SHOWN:
                message = message.replace(repr(ident), _shown(ident))
        return RunNotFoundError(message, hint=f"list runs with {self._call('list')}(); "
                                "the script sees the store of the system it runs in")

    async def list(self, options: Any = None) -> list[dict[str, Any]]:
        """The newest runs, newest first: ``{limit = 50, kind, name, status, all}``
        (``all`` includes runs started inside other runs)."""
        opts = check_options(options, _LIST_OPTIONS, "Replay.list")
        limit = opts.get("limit", 50)
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidValueError(f"Replay.list: limit must be a whole number >= 1, got "
                                    f"{_shown(limit)}", hint="e.g. {limit = 10}")
        example = self._example("Replay.list({kind = \"agent\", status = \"failed\"})",
                                "await Replay.list({kind: \"agent\", status: \"failed\"})")
        status = _text(opts.get("status"), "Replay.list", "status", example)
        if status is not None and status not in ("completed", "failed", "running",
                                                 "interrupted"):
            raise InvalidValueError(f"Replay.list: unknown status {_shown(status)}",
                                    hint="use completed, failed, running or interrupted")
        children = opts.get("all", False)
        if not isinstance(children, bool):
            raise InvalidValueError(f"Replay.list: all must be true or false, got "
                                    f"{_shown(children)}",
                                    hint="all = true lists the runs started inside other runs too")
        runs = self.system.runs.list(
            limit=limit, kind=_text(opts.get("kind"), "Replay.list", "kind", example),
            name=_text(opts.get("name"), "Replay.list", "name", example), status=status,
            include_children=children)
        return [summary_view(summary, nulls=False) for summary in runs]

    async def show(self, run_id: Any = None) -> dict[str, Any]:
        """``{run = summary, steps = {...}, child_runs = {...}}`` of one run."""
        ident = self._run_id(run_id, "Replay.show")
        try:
            summary = self.system.runs.get(ident)
            recording = self.system.runs.recording(ident)
        except RunNotFoundError as exc:
            raise self._not_found(exc, ident) from None
        return recording_view(summary, recording, nulls=False)

    async def diff(self, a: Any = None, b: Any = None) -> dict[str, Any]:
        """Compare runs ``a`` and ``b`` step by step (see :func:`diff_view`)."""
        first, second = self._run_id(a, "Replay.diff"), self._run_id(b, "Replay.diff")
        try:
            diff = self.system.runs.diff(first, second)
        except RunNotFoundError as exc:
            raise self._not_found(exc, first, second) from None
        return diff_view(diff, nulls=False)

    async def run(self, run_id: Any = None, options: Any = None) -> dict[str, Any]:
        """Replay a run: ``{mode = "exact"|"what-if"|"simulate", after = "live"|"simulate",
        allow_side_effects = false, input}`` (``input`` for a what-if only); the result is
        :func:`result_view`."""
        ident = self._run_id(run_id, "Replay.run")
        opts = check_options(options, _RUN_OPTIONS, "Replay.run")
        active = current_run()
        if active is not None and active.replay is not None:
            raise ReplayError("Replay.run was called by a run that is itself a replay",
                              hint="a replayed script cannot start another replay")
        modes = f"use one of: {', '.join(MODES)}"
        mode = _text(opts.get("mode"), "Replay.run", "mode", modes) or "exact"
        if mode not in MODES:
            raise InvalidValueError(f"Replay.run: unknown replay mode {_shown(mode)}",
                                    hint=modes)
        afters = ("live runs a call whose input left the recording, simulate keeps serving "
                  "the recording")
        after = _text(opts.get("after"), "Replay.run", "after", afters)
        if after not in (None, "live", "simulate"):
            raise InvalidValueError(f"Replay.run: after must be 'live' or 'simulate', got "
                                    f"{_shown(after)}", hint=afters)
        side_effects = opts.get("allow_side_effects", False)
        if not isinstance(side_effects, bool):
            raise InvalidValueError(
                f"Replay.run: allow_side_effects must be true or false, got "
                f"{_shown(side_effects)}",
                hint="leave it out (false) unless the replay may run tools with side effects")
        extra: dict[str, Any] = {}
        if "input" in opts:
            extra["input"] = opts["input"]
        try:
            summary = self.system.runs.get(ident)
            if summary.kind not in SCRIPT_REPLAYABLE:
                raise ReplayError(
                    f"run {ident!r} is of kind {summary.kind!r} ({summary.name!r}); a "
                    "script can replay agent and script runs only",
                    hint="replay it from Python: await system.runs.replay(run_id, "
                         "operation=...) with the workflow, agent or function")
            if summary.kind == "script":
                self._check_capabilities(ident, side_effects)
            result = await self.system.runs.replay(ident, mode=mode, after=after,
                                                   allow_side_effects=side_effects, **extra)
        except RunNotFoundError as exc:
            raise self._not_found(exc, ident) from None
        return result_view(result, nulls=False)

    def _check_capabilities(self, run_id: str, side_effects: bool) -> None:
        """Refuse a script replay that would grant the replayed script a capability the
        calling script does not hold."""
        recording = self.system.runs.recording(run_id)
        target = recording.started.target or {}
        granted = target.get("capabilities")
        if not isinstance(granted, dict):
            raise RecordingError(f"run {run_id!r}: the recording does not say which "
                                 "capabilities the script had",
                                 hint="record the run again with this llmspell")
        mine = self.caller or Capabilities()
        if mine.allow_all:
            return
        flags = ("allow_env", "allow_read") + (
            ("allow_write", "allow_exec", "allow_net", "allow_all") if side_effects else ())
        missing: list[str] = []
        for flag in flags:
            wanted = granted.get(flag)
            if not wanted:
                continue
            if flag in ("allow_read", "allow_write"):
                roots = tuple(_root(p) for p in getattr(mine, flag))
                paths = wanted if isinstance(wanted, list) else [wanted]
                missing.extend(f"--{flag.replace('_', '-')}={path}"
                               for path in _covered(paths, roots))
            elif not getattr(mine, flag):
                missing.append(f"--{flag.replace('_', '-')}")
        if missing:
            raise PermissionDeniedError(
                f"run {run_id!r} was recorded with capabilities this script does not have "
                f"({', '.join(missing)}); replaying it would grant them",
                hint="run the calling script with those flags, or replay the run with "
                     "`llmspell runs replay`")
