"""Helpers the workflow tests share: what the WorkflowRollback hook saw, and steps that fail
until they are told not to (for checkpoint and resume)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmspell.hooks import HookPoint
from llmspell.hooks.context import HookContext
from llmspell.runtime import System
from llmspell.runtime.workflows import Step, WorkflowContext


def rollbacks(system: System, *event_keys: str) -> list[dict[str, Any]]:
    """The WorkflowRollback hook data, each with ``event_keys`` of its rollback event's
    data added (e.g. ``branch`` and ``kept``)."""
    seen: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []

    def record(ctx: HookContext) -> None:
        extra: dict[str, Any] = {}
        if event_keys:
            event = events[len(seen)]
            extra = {key: event[key] for key in event_keys}
        seen.append({**ctx.data, **extra})

    if event_keys:
        system.bus.subscribe("workflow.*.rollback", lambda e: events.append(dict(e.data)))
    system.registry.register(HookPoint.WORKFLOW_ROLLBACK, record, name="rec-rollback")
    return seen


def fails_first_try(key: str, answer: str) -> Callable[[WorkflowContext], str]:
    """A step function that writes which try it is to ``state[key]``: the first try fails,
    the others return ``answer``."""
    tries = 0

    def fn(ctx: WorkflowContext) -> str:
        nonlocal tries
        tries += 1
        ctx.state[key] = tries
        if tries == 1:
            raise RuntimeError("first attempt fails")
        return answer
    return fn


class CrashingSteps:
    """Makes steps that note their names in ``runs`` and return them; the step named
    ``crashing`` raises "crash" while ``broken`` is set."""

    def __init__(self, crashing: str) -> None:
        self.crashing = crashing
        self.broken = True
        self.runs: list[str] = []

    def step(self, name: str) -> Step:
        def fn(ctx: WorkflowContext) -> str:
            self.runs.append(name)
            if name == self.crashing and self.broken:
                raise RuntimeError("crash")
            return name
        return Step(name, fn=fn)
