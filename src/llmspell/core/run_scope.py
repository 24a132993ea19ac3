"""The id of the run the current task works for, readable by every layer.

The runtime opens runs (``system.runs``); the event bus stamps the current run id on every
event it builds, so events, hook records and model/tool records of one run can be found
together. The id lives in a context variable: nested calls and tasks started inside a run
see it; independent tasks do not.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

__all__ = ["current_run_id", "enter_run_id", "leave_run_id"]

_run_id: ContextVar[str | None] = ContextVar("llmspell_run_id", default=None)

current_run_id = _run_id.get
"""The id of the innermost run of the calling task, or None outside any run."""


def enter_run_id(run_id: str | None) -> Token[str | None]:
    """Make ``run_id`` current; pass the token to :func:`leave_run_id` to restore."""
    return _run_id.set(run_id)


def leave_run_id(token: Token[str | None]) -> None:
    """Restore the run id that was current before :func:`enter_run_id`."""
    _run_id.reset(token)
