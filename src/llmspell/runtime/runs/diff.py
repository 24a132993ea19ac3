"""Comparing two recorded runs step by step (``system.runs.diff(a, b)``).

Steps are paired by key (their place in the tree of calls), so the same tool call in two
runs is compared even when other steps were added or removed around it. For each pair it
reports what differs: input (the value when recorded, else its digest), output (a tool's
result, a model's response), error, the hook decisions, tokens and cost; durations are
reported but are not a difference by themselves.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llmspell.runtime.runs.query import Recording
from llmspell.runtime.runs.records import StepRecord, digest

__all__ = ["RunDiff", "StepDiff", "diff_recordings"]


class StepDiff(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One step that differs. ``only_in`` is ``"a"`` or ``"b"`` for a step one run has and
    the other lacks; ``changes`` maps a field (``input``, ``output``, ``error``, ``decisions``,
    ``tokens_in``, ``tokens_out``, ``cost_usd``) to its ``[a, b]`` values."""

    key: str
    kind: str
    name: str
    index_a: int | None = None
    index_b: int | None = None
    only_in: str | None = None
    changes: dict[str, list[Any]] = {}
    duration_ms: list[float | None] = []


class RunDiff(msgspec.Struct, kw_only=True):
    """The differences between runs ``a`` and ``b``: per step, and in the totals
    (``totals`` maps ``steps``, ``tokens_in``, ``tokens_out``, ``cost_usd``, ``duration_ms``
    and ``status`` to ``[a, b]``)."""

    a: str
    b: str
    steps: list[StepDiff]
    totals: dict[str, list[Any]]

    @property
    def same(self) -> bool:
        """True when no step differs (totals such as duration may still)."""
        return not self.steps


_COMPARED = ("tokens_in", "tokens_out", "cost_usd")


def _decisions(step: StepRecord) -> list[str]:
    return [f"{d.point}: {d.describe()}" for d in step.dispatches if d.kind != "continue"]


def _shown(step: StepRecord) -> Any:
    """What a step produced, or its digest when only that was recorded."""
    result = step.result
    if result is None and step.output_digest is not None and step.key and \
            step.kind not in ("tool", "model"):
        return {"digest": step.output_digest}
    return result


def _compare(a: StepRecord, b: StepRecord) -> dict[str, list[Any]]:
    changes: dict[str, list[Any]] = {}
    if a.input_digest != b.input_digest:
        changes["input"] = [a.input if a.input is not None else a.input_digest,
                            b.input if b.input is not None else b.input_digest]
    if (a.output_digest or digest(a.result)) != (b.output_digest or digest(b.result)):
        changes["output"] = [_shown(a), _shown(b)]
    if a.error != b.error:
        changes["error"] = [a.error, b.error]
    decisions_a, decisions_b = _decisions(a), _decisions(b)
    if decisions_a != decisions_b:
        changes["decisions"] = [decisions_a, decisions_b]
    for field in _COMPARED:
        value_a, value_b = getattr(a, field), getattr(b, field)
        if value_a != value_b:
            changes[field] = [value_a, value_b]
    return changes


def _ordered_keys(a: Recording, b: Recording) -> list[str]:
    keys = [step.key for step in a.ordered]
    known = set(keys)
    keys.extend(step.key for step in b.ordered if step.key not in known)
    return keys


def diff_recordings(a: Recording, b: Recording) -> RunDiff:
    """The :class:`RunDiff` of two recordings (see the module docstring)."""
    steps: list[StepDiff] = []
    for key in _ordered_keys(a, b):
        step_a, step_b = a.steps.get(key), b.steps.get(key)
        some = step_a or step_b
        assert some is not None
        entry = StepDiff(key=key, kind=some.kind, name=some.name,
                         index_a=step_a.index if step_a else None,
                         index_b=step_b.index if step_b else None,
                         duration_ms=[step_a.duration_ms if step_a else None,
                                      step_b.duration_ms if step_b else None])
        if step_a is None or step_b is None:
            entry.only_in = "a" if step_b is None else "b"
            steps.append(entry)
            continue
        entry.changes = _compare(step_a, step_b)
        if entry.changes:
            steps.append(entry)
    totals: dict[str, list[Any]] = {}
    ended_a, ended_b = a.ended, b.ended
    for field in ("status", "steps", "tokens_in", "tokens_out", "cost_usd", "duration_ms"):
        totals[field] = [getattr(ended_a, field, None) if ended_a else None,
                         getattr(ended_b, field, None) if ended_b else None]
    return RunDiff(a=a.started.run_id, b=b.started.run_id, steps=steps, totals=totals)
