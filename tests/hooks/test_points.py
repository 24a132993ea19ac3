from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmspell.errors import InvalidValueError, UnknownHookPointError
from llmspell.hooks import CustomHookPoint, HookPoint, parse_point

SEED_NAMES = {
    "agent": ["BeforeAgentInit", "AfterAgentInit", "BeforeAgentExecution",
              "AfterAgentExecution", "AgentError", "BeforeAgentShutdown", "AfterAgentShutdown"],
    "tool": ["BeforeToolDiscovery", "AfterToolDiscovery", "BeforeToolExecution",
             "AfterToolExecution", "ToolValidation", "ToolError"],
    "workflow": ["BeforeWorkflowStart", "WorkflowStageTransition", "BeforeWorkflowStage",
                 "AfterWorkflowStage", "WorkflowCheckpoint", "WorkflowRollback",
                 "AfterWorkflowComplete", "WorkflowError"],
    "state": ["BeforeStateRead", "AfterStateRead", "BeforeStateWrite", "AfterStateWrite",
              "StateConflict", "StateMigration"],
    "system": ["SystemStartup", "SystemShutdown", "ConfigurationChange",
               "ResourceLimitExceeded", "SecurityViolation"],
    "session": ["SessionStart", "SessionEnd", "SessionCheckpoint", "SessionRestore",
                "SessionSave"],
    "event": ["BeforeEventEmit", "AfterEventEmit", "EventHandlerError"],
    "performance": ["PerformanceThresholdExceeded", "MemoryUsageHigh", "CpuUsageHigh"],
}
MODEL_NAMES = ["BeforeModelCall", "AfterModelCall", "ModelCallError"]
RUNTIME_NAMES = {"session": ["SessionDelete"]}
"""The runtime's own points in a seed category (beside the seed's and the model points)."""


def test_every_seed_point_exists_with_its_category() -> None:
    total = 0
    for category, names in SEED_NAMES.items():
        for name in names:
            point = HookPoint.parse(name)
            assert point.pascal_name == name
            assert point.category == category
            total += 1
    assert total == 43
    for name in MODEL_NAMES:  # the runtime's own points, beside the seed's
        point = HookPoint.parse(name)
        assert point.pascal_name == name and point.category == "model"
        assert HookPoint.parse(point.value) is point
    for category, names in RUNTIME_NAMES.items():
        for name in names:
            point = HookPoint.parse(name)
            assert point.pascal_name == name and point.category == category
            assert HookPoint.parse(point.value) is point
            total += 1
    assert len(HookPoint) == total + len(MODEL_NAMES)


@pytest.mark.parametrize("point", list(HookPoint))
def test_every_spelling_parses(point: HookPoint) -> None:
    assert parse_point(point.value) is point
    assert parse_point(point.pascal_name) is point
    assert parse_point(point.name) is point
    assert parse_point(point) is point


def test_unknown_pascal_name_suggests_close_pascal_names() -> None:
    with pytest.raises(UnknownHookPointError) as info:
        parse_point("BeforeToolExecutoin")
    assert info.value.suggestions[0] == "BeforeToolExecution"
    assert "did you mean" in str(info.value)


def test_unknown_snake_name_suggests_snake_names() -> None:
    with pytest.raises(UnknownHookPointError) as info:
        parse_point("before_tool_exec")
    assert "before_tool_execution" in info.value.suggestions


def test_nothing_close_still_explains() -> None:
    with pytest.raises(UnknownHookPointError, match=r"HookPoint\.custom"):
        parse_point("zzzzzz")
    with pytest.raises(InvalidValueError):
        parse_point(42)  # type: ignore[arg-type]


def test_custom_points() -> None:
    point = HookPoint.custom("agent_pause")
    assert isinstance(point, CustomHookPoint)
    assert point == "custom:agent_pause"
    assert point.name == "agent_pause"
    assert point.category == "custom"
    assert parse_point("custom:agent_pause") == point
    assert HookPoint.custom("custom:agent_pause") == point
    assert repr(point) == "HookPoint.custom('agent_pause')"
    assert point.pascal_name == "custom:agent_pause"
    with pytest.raises(InvalidValueError):
        HookPoint.custom("has space")
    with pytest.raises(InvalidValueError):
        HookPoint.custom("")


@given(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,30}", fullmatch=True))
def test_custom_names_round_trip_through_parse(name: str) -> None:
    point = HookPoint.custom(name)
    assert parse_point(str(point)) == point
    assert parse_point(str(point)).name == name
