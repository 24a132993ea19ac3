"""The agent lifecycle: nine states, the legal transitions, and the hook point of each.

::

    Uninitialized -> Initializing -> Ready <-> Running
                          |            |  \\      |  \\
                          v            v   Paused  v   Error -> Recovering -> Ready
                        Error     Terminating -> Terminated

A transition's hook point fires *before* the state changes, so a hook that returns
``Cancel`` blocks it.
"""

from __future__ import annotations

from enum import StrEnum

from llmspell.hooks.points import CustomHookPoint, HookPoint

__all__ = ["AgentState", "TRANSITIONS", "PAUSE", "RESUME", "RECOVER", "transition_point"]


class AgentState(StrEnum):
    """The nine states of an agent."""

    UNINITIALIZED = "uninitialized"
    INITIALIZING = "initializing"
    READY = "ready"
    RUNNING = "running"
    PAUSED = "paused"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    ERROR = "error"
    RECOVERING = "recovering"


S = AgentState
TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    S.UNINITIALIZED: frozenset({S.INITIALIZING, S.TERMINATING}),
    S.INITIALIZING: frozenset({S.READY, S.ERROR}),
    S.READY: frozenset({S.RUNNING, S.PAUSED, S.TERMINATING}),
    S.RUNNING: frozenset({S.READY, S.PAUSED, S.ERROR, S.TERMINATING}),
    S.PAUSED: frozenset({S.READY, S.RUNNING, S.TERMINATING}),
    S.ERROR: frozenset({S.RECOVERING, S.TERMINATING}),
    S.RECOVERING: frozenset({S.READY, S.ERROR}),
    S.TERMINATING: frozenset({S.TERMINATED}),
    S.TERMINATED: frozenset(),
}

PAUSE = HookPoint.custom("agent_pause")
RESUME = HookPoint.custom("agent_resume")
RECOVER = HookPoint.custom("agent_recover")


def transition_point(current: AgentState, target: AgentState) -> HookPoint | CustomHookPoint | None:
    """The hook point fired for ``current -> target`` (None when the move has none)."""
    if target is S.INITIALIZING:
        return HookPoint.BEFORE_AGENT_INIT
    if current is S.INITIALIZING and target is S.READY:
        return HookPoint.AFTER_AGENT_INIT
    if target is S.RUNNING and current is S.READY:
        return HookPoint.BEFORE_AGENT_EXECUTION
    if current is S.RUNNING and target is S.READY:
        return HookPoint.AFTER_AGENT_EXECUTION
    if target is S.ERROR:
        return HookPoint.AGENT_ERROR
    if target is S.TERMINATING:
        return HookPoint.BEFORE_AGENT_SHUTDOWN
    if target is S.TERMINATED:
        return HookPoint.AFTER_AGENT_SHUTDOWN
    if target is S.PAUSED:
        return PAUSE
    if current is S.PAUSED:
        return RESUME
    if target is S.RECOVERING or current is S.RECOVERING:
        return RECOVER
    return None  # pragma: no cover - every legal move has a point
