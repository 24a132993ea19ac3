"""Shared fixtures."""

from __future__ import annotations

import pytest

from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint


@pytest.fixture
def tool() -> ComponentId:
    return ComponentId(type=ComponentType.TOOL, name="calculator")


@pytest.fixture
def make_ctx(tool: ComponentId):  # type: ignore[no-untyped-def]
    def make(point: str = HookPoint.BEFORE_TOOL_EXECUTION, **data: object) -> HookContext:
        return HookContext(point=point, component=tool, data=dict(data))

    return make
