"""Runs: every top-level operation is a run with an id that its events carry, recorded
step by step (tool calls, model calls, hook decisions) at the configured level."""

from llmspell.runtime.runs.manager import RunManager
from llmspell.runtime.runs.scope import (
    ActiveRun,
    RunClock,
    current_run,
    run_clock,
    run_id_source,
    run_random,
)

__all__ = ["ActiveRun", "RunClock", "RunManager", "current_run", "run_clock",
           "run_id_source", "run_random"]
