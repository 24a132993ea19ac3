"""The pydantic-ai adapter when a result has already been turned into another attempt
(an agent ``Retry`` runs the agent again, a model ``Retry`` is pydantic-ai's
``RetryModelRequest``, a tool's ``ModelRetry`` asks the model again): a ``Cancel`` on the
later attempt stops the run as a first ``Cancel`` does, and the run's error is the
later attempt's, not the first one's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic_ai import Agent, ModelRetry

from llmspell.errors import (
    ModelCallCancelledError,
    OperationCancelledError,
    UnsupportedHookResultError,
)
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Cancel, Fork, ForkOperation, Replace, Retry
from llmspell.integrations.pydantic_ai import LlmspellCapability
from llmspell.runtime.system import System
from tests.integrations.conftest_pydantic_ai import calc_agent, capture, planned

P = HookPoint
TWO = [[("add", {"a": 1, "b": 2})], [("add", {"a": 1, "b": 3})]]


def in_turn(*results: Any) -> Callable[[HookContext], Any]:
    """A hook that returns ``results`` one call after another, then nothing."""
    left = list(results)
    return lambda ctx: left.pop(0) if left else None


def hook(system: System, point: str, fn: Callable[[HookContext], Any], name: str) -> None:
    system.registry.register(point, fn, name=name)


def refuse_tools(system: System) -> None:
    hook(system, P.BEFORE_TOOL_EXECUTION, lambda ctx: Cancel("no tools"), "gate")


async def ended(system: System) -> list[tuple[str, str]]:
    """The runs' end records: (event type, error type)."""
    await system.bus.drain()
    assert system.store is not None
    system.store.flush()
    return [(e.event_type, (e.data.get("error") or {}).get("type", ""))
            for e in system.store.query(pattern="run.*")
            if e.event_type in ("run.completed", "run.failed")]


# -- the agent points: the adapter runs the agent again ------------------------------------

async def test_a_cancel_after_an_agent_error_retry_stops_the_run(system: System) -> None:
    refuse_tools(system)
    hook(system, P.AGENT_ERROR, in_turn(Retry(0, 3), Cancel("enough")), "decider")
    events = capture(system, "agent.**")
    with pytest.raises(OperationCancelledError, match="enough") as info:
        await calc_agent(system, TWO, tool_cancel="raise").run("go")
    assert info.value.point == "agent_error" and info.value.hook == "decider"
    await system.bus.drain()
    failed = [e for e in events if e.event_type == "agent.calc.failed"]
    assert len(failed) == 1 and "enough" in failed[0].data["error"]


async def test_the_first_cancel_stops_the_run_the_same_way(system: System) -> None:
    """Guard: the behaviour a later Cancel must match."""
    refuse_tools(system)
    hook(system, P.AGENT_ERROR, in_turn(Cancel("enough")), "decider")
    with pytest.raises(OperationCancelledError, match="enough") as info:
        await calc_agent(system, TWO, tool_cancel="raise").run("go")
    assert info.value.point == "agent_error"


async def test_a_cancel_after_the_retried_run_succeeded_stops_the_run(
        system: System) -> None:
    gate = in_turn(Cancel("no tools"))  # only the first attempt's tool call is refused
    hook(system, P.BEFORE_TOOL_EXECUTION, gate, "gate")
    hook(system, P.AGENT_ERROR, in_turn(Retry(0, 3)), "decider")
    hook(system, P.AFTER_AGENT_EXECUTION, lambda ctx: Cancel("output rejected"), "judge")
    with pytest.raises(OperationCancelledError, match="output rejected") as info:
        await calc_agent(system, TWO, tool_cancel="raise").run("go")
    assert info.value.point == "after_agent_execution"
    assert await ended(system) == [("run.failed", "OperationCancelledError")]


async def test_the_retried_attempts_own_error_is_the_runs(system: System) -> None:
    refuse_tools(system)
    hook(system, P.AGENT_ERROR, in_turn(Retry(0, 2)), "decider")
    asks = in_turn(None, Cancel("model refused"))  # the second attempt's first request
    hook(system, P.BEFORE_MODEL_CALL, asks, "model-gate")
    with pytest.raises(ModelCallCancelledError, match="model refused"):
        await calc_agent(system, TWO, tool_cancel="raise").run("go")


async def test_a_retried_run_can_still_be_recovered(system: System) -> None:
    """Guard: a recovery on the later attempt is kept (it was before, too)."""
    refuse_tools(system)
    hook(system, P.AGENT_ERROR, in_turn(Retry(0, 3), Replace("fallback answer")), "decider")
    result = await calc_agent(system, TWO, tool_cancel="raise").run("go")
    assert result.output == "fallback answer"
    assert await ended(system) == [("run.completed", "")]


async def test_a_result_agent_error_cannot_honour_on_a_retried_attempt(
        system: System) -> None:
    refuse_tools(system)
    hook(system, P.AGENT_ERROR,
         in_turn(Retry(0, 3), Fork([ForkOperation(type="tool", target="audit")])), "decider")
    with pytest.raises(UnsupportedHookResultError) as info:
        await calc_agent(system, TWO, tool_cancel="raise").run("go")
    assert (info.value.point, info.value.result, info.value.hook) == (
        "agent_error", "fork", "decider")
    assert "honours Continue, Skipped, Cancel, Redirect, Replace, Retry" in (
        info.value.hint or "")


# -- model and tool retries (pydantic-ai's own): these held already -------------------------

async def test_a_cancel_after_a_model_retry_stops_the_run(system: System) -> None:
    hook(system, P.AFTER_MODEL_CALL, in_turn(Retry(0, 3), Cancel("second answer rejected")),
         "judge")
    asked: list[Any] = []
    with pytest.raises(ModelCallCancelledError, match="second answer rejected"):
        await calc_agent(system, TWO, seen=asked).run("go")
    assert len(asked) == 2  # asked again once, then stopped


async def test_a_cancel_after_a_tool_asked_the_model_again_stops_the_run(
        system: System) -> None:
    agent: Agent[None, str] = Agent(
        planned(TWO), name="calc",
        capabilities=[LlmspellCapability(system, tool_cancel="raise")])
    ran: list[tuple[int, int]] = []

    @agent.tool_plain(retries=3)
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        ran.append((a, b))
        if len(ran) == 1:
            raise ModelRetry("try other numbers")
        return a + b

    hook(system, P.BEFORE_TOOL_EXECUTION, in_turn(None, Cancel("not these either")), "gate")
    with pytest.raises(OperationCancelledError, match="not these either"):
        await agent.run("go")
    assert ran == [(1, 2)]
