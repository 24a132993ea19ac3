"""Shared fixtures."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint

# Test traffic never leaves the machine: with no key, the OpenAI Agents SDK's default trace
# exporter (and any client that would reach api.openai.com) has nothing to send with. A
# test that needs a key sets one itself (monkeypatch), pointed at a local server.
os.environ.pop("OPENAI_API_KEY", None)

# Property tests check behaviour, not speed: on a loaded shared machine a draw or an example
# can take seconds, which must not fail a test (no per-example deadline, no "too slow"
# health check). Tests that set their own settings keep them.
settings.register_profile("llmspell", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("llmspell")


@pytest.fixture
def tool() -> ComponentId:
    return ComponentId(type=ComponentType.TOOL, name="calculator")


@pytest.fixture
def make_ctx(tool: ComponentId):  # type: ignore[no-untyped-def]
    def make(point: str = HookPoint.BEFORE_TOOL_EXECUTION, **data: object) -> HookContext:
        return HookContext(point=point, component=tool, data=dict(data))

    return make
