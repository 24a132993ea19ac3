"""Workflows: steps composed into sequential, conditional, loop and parallel patterns, run
through the system's hooks, events and state (docs/workflows.md)."""

from llmspell.runtime.workflows.engine import (
    CHECKPOINT_KEY,
    MAX_NESTING,
    Workflow,
    WorkflowFailedError,
    WorkflowResult,
)
from llmspell.runtime.workflows.patterns import (
    BRANCH_SELECTED,
    CONDITION_EVALUATED,
    LOOP_ITERATION_COMPLETE,
    LOOP_ITERATION_START,
    LOOP_TERMINATED,
    PARALLEL_FORK,
    PARALLEL_JOIN,
    Conditional,
    Loop,
    Parallel,
    Sequential,
)
from llmspell.runtime.workflows.steps import Branch, Step, WorkflowContext, resolve

__all__ = [
    "BRANCH_SELECTED",
    "CHECKPOINT_KEY",
    "CONDITION_EVALUATED",
    "LOOP_ITERATION_COMPLETE",
    "LOOP_ITERATION_START",
    "LOOP_TERMINATED",
    "MAX_NESTING",
    "PARALLEL_FORK",
    "PARALLEL_JOIN",
    "Branch",
    "Conditional",
    "Loop",
    "Parallel",
    "Sequential",
    "Step",
    "Workflow",
    "WorkflowContext",
    "WorkflowFailedError",
    "WorkflowResult",
    "resolve",
]
