"""``system.runs``: opening runs. See docs in :mod:`llmspell.runtime.runs`."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any

from llmspell.runtime.runs.lifecycle import open_run, open_run_sync
from llmspell.runtime.runs.scope import ActiveRun

__all__ = ["RunManager"]


class RunManager:
    """The runs of one System: ``async with system.runs.start(kind, name, input) as run``
    opens a run (a child of the current run when one is open); every event published
    inside carries ``run.run_id``, and the run's steps are recorded at the configured
    level (``SystemConfig.record``)."""

    def __init__(self, system: Any) -> None:
        self._system = system

    def start(self, kind: str, name: str, input: Any = None, *, level: str | None = None,
              target: dict[str, Any] | None = None
              ) -> AbstractAsyncContextManager[ActiveRun]:
        """Open a run for an ``async with`` body; ``run.started`` is published on entry,
        ``run.completed``/``run.failed`` on exit."""
        return open_run(self._system, kind, name, input, level=level, target=target)

    def start_sync(self, kind: str, name: str, input: Any = None, *,
                   level: str | None = None, target: dict[str, Any] | None = None
                   ) -> AbstractContextManager[ActiveRun]:
        """:meth:`start` for a ``with`` body in sync code."""
        return open_run_sync(self._system, kind, name, input, level=level, target=target)
