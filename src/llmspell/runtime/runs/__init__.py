"""Runs: every top-level operation (an agent, workflow or script run) is a run with an id
that its events carry, recorded step by step (tool calls, model calls, hook decisions) at
the configured level, and can be listed, replayed and compared (``system.runs``; see
docs/runs.md)."""

from llmspell.runtime.runs.diff import RunDiff, StepDiff
from llmspell.runtime.runs.manager import REPLAYERS, RunManager
from llmspell.runtime.runs.query import Recording, RunSummary
from llmspell.runtime.runs.records import (
    RECORDING_VERSION,
    RUN_STATUSES,
    Attempt,
    Dispatch,
    HookExecution,
    RunEnded,
    RunStarted,
    StepRecord,
)
from llmspell.runtime.runs.replay import (
    Divergence,
    RecordedError,
    ReplayResult,
    StepView,
)
from llmspell.runtime.runs.scope import (
    ActiveRun,
    RunClock,
    current_run,
    run_clock,
    run_id_source,
    run_random,
)

__all__ = ["RECORDING_VERSION", "REPLAYERS", "RUN_STATUSES", "ActiveRun", "Attempt",
           "Dispatch", "Divergence", "HookExecution", "RecordedError", "Recording",
           "ReplayResult", "RunClock",
           "RunDiff", "RunEnded", "RunManager", "RunStarted", "RunSummary", "StepDiff",
           "StepRecord", "StepView", "current_run", "run_clock", "run_id_source",
           "run_random"]
