"""Turning one dispatch's outcome into the step record's :class:`Dispatch` entry."""

from __future__ import annotations

from typing import Any

from llmspell.core.values import to_json_safe
from llmspell.hooks.context import HookContext
from llmspell.hooks.executor import ChainResult
from llmspell.hooks.result import Cancel, Continue, Fork, Modified, Redirect, Replace, Retry
from llmspell.runtime.runs.records import HookExecution, digest
from llmspell.runtime.runs.scope import StepFrame

__all__ = ["note_dispatch", "snapshot_context"]


def snapshot_context(data: dict[str, Any]) -> Any:
    """A JSON-safe copy of the context data a chain is about to see (level ``full``)."""
    try:
        return to_json_safe(data, "context")
    except Exception:  # a context that cannot be copied is recorded by its repr
        return repr(data)


def _fork_operations(outcome: ChainResult) -> list[list[Any]]:
    """The operations of the ``Fork`` results a dispatch collected, as recorded."""
    return [[op.type, op.target, op.parameters] for fork in outcome.forks
            for op in fork.operations]


def _detail(outcome: ChainResult, ctx: HookContext) -> Any:
    result = outcome.result
    if type(result) is not Continue:  # (the common Continue skips the tests: a miss is slow)
        if isinstance(result, Modified):
            return ctx.data
        if isinstance(result, Replace):
            return result.value
        if isinstance(result, Redirect):
            return result.target
        if isinstance(result, Cancel):
            return result.reason
        if isinstance(result, Retry):
            return [result.delay, result.max_attempts]
        if isinstance(result, Fork):
            return [[op.type, op.target] for op in result.operations]
    if outcome.forks and outcome.kind == "continue":
        return _fork_operations(outcome)
    if outcome.cache is not None:
        return outcome.cache.key
    return None


def _version(chain: Any, name: str | None) -> str | None:
    if name is None:
        return None
    for entry in chain:
        if entry.name == name:
            return str(entry.metadata.version)
    return None


def note_dispatch(frame: StepFrame, chain: Any, ctx: HookContext, outcome: ChainResult,
                  seen: Any) -> None:
    """Record ``outcome`` (the dispatch of ``chain`` on ``ctx``) in ``frame``."""
    kind = outcome.kind
    if kind == "continue" and outcome.forks:
        # Forks are collected beside the decisive result: recorded as the decision when
        # there is no other, so a replay whose hooks no longer fork says so at this step.
        kind = "fork"
    elif kind == "continue" and outcome.cache is not None:
        kind = "cache"
    hook = outcome.decided_by
    if kind != "continue":
        frame.run.decisions += 1
    # Forks beside another decision (a Modified and a Fork): recorded with it, so a replay
    # whose hooks no longer fork says so at this step.
    forks = (digest(_fork_operations(outcome)) if outcome.forks and kind != "fork"
             else None)
    frame.note_dispatch(str(ctx.point), kind, hook if kind != "continue" else None,
                        _version(chain, hook) if kind != "continue" else None,
                        _detail(outcome, ctx), [f.hook for f in outcome.failures], forks)
    if frame.run.level == "full":
        for record in outcome.records:
            frame.hooks.append(HookExecution(
                hook=record.hook, point=str(ctx.point), kind=record.kind,
                duration_ns=record.duration_ns, version=_version(chain, record.hook),
                context=seen,
                # The executor's kind for a hook that raised is "error" ("failed" was
                # never one: the error was never kept).
                error=record.detail if record.kind == "error" else None))
