"""Fixtures for the script tests: a started System with the test tools, and a host."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from llmspell.runtime import System, SystemConfig, tool
from llmspell.scripting import ScriptHost

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


class Recorder:
    """What the test tools saw."""

    def __init__(self) -> None:
        self.counted: list[int] = []
        self.flaky_calls = 0


def register_tools(system: System, seen: Recorder) -> None:
    """count(n) -> n * 2 (recorded), backup(n) -> "backup n", flaky() fails once,
    echo(trail) -> trail."""

    @tool()
    def count(n: int) -> int:
        """Record n and return it doubled."""
        seen.counted.append(n)
        return n * 2

    @tool()
    def backup(n: int) -> str:
        """The fallback tool."""
        return f"backup {n}"

    @tool()
    def flaky() -> str:
        """Fails on its first call."""
        seen.flaky_calls += 1
        if seen.flaky_calls == 1:
            raise RuntimeError("first call fails")
        return "recovered"

    @tool()
    def echo(trail: list[str]) -> list[str]:
        """Return the trail the hooks built."""
        return trail

    system.tools.register_all([count, backup, flaky, echo])


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest_asyncio.fixture
async def script_system(recorder: Recorder) -> AsyncIterator[System]:
    system = System(SystemConfig(store="memory"))
    await system.start()
    register_tools(system, recorder)
    yield system
    await system.shutdown()


@pytest_asyncio.fixture
async def script_host(script_system: System) -> AsyncIterator[ScriptHost]:
    host = ScriptHost(script_system)
    yield host
    host.close()


def script(name: str) -> Path:
    """The path of a test script in tests/scripts."""
    return SCRIPTS / name


def first_line(value: Any) -> str:
    return str(value).split("\n", 1)[0]
