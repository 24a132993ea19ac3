"""Fixtures for runtime tests: a system on an in-memory store, a few tools."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from llmspell.events import UniversalEvent
from llmspell.runtime import System, SystemConfig, tool


@tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool()
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@tool()
async def fail(message: str = "boom") -> None:
    """Always fails."""
    raise RuntimeError(message)


@pytest.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory", hook_events=True))
    await sys.start()
    sys.tools.register_all([add, multiply, fail])
    yield sys
    await sys.shutdown()


@pytest.fixture
def events(system: System) -> list[UniversalEvent]:
    seen: list[UniversalEvent] = []
    system.bus.subscribe("**", seen.append)
    return seen
