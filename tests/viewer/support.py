"""Shared by the viewer tests: a recorded agent run (a blocked tool call, model calls with
tokens) and helpers to publish into a store the viewer follows."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from llmspell.events.event import UniversalEvent
from llmspell.hooks import Cancel, Modified
from llmspell.hooks.context import HookContext
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider


@tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool()
def shell(cmd: str) -> str:
    """Pretend to run a command."""
    return f"ran {cmd}"


def no_shell(ctx: HookContext) -> Cancel | None:
    """Blocks the shell tool."""
    return Cancel("no shell here") if ctx.component.name == "shell" else None


def tidy(ctx: HookContext) -> Modified:
    """Changes every model request (returns the data unchanged, as a Modified)."""
    return Modified(dict(ctx.data))


async def agent_run(system: System, *, modify: bool = False) -> Any:
    """One agent run: the model asks for add and shell, shell is blocked, the model
    answers."""
    system.tools.register(add)
    system.tools.register(shell)
    system.registry.register("before_tool_execution", no_shell, name="no_shell")
    if modify:
        system.registry.register("before_model_call", tidy, name="tidy")
    agent = system.agents.create("helper", tools=["add", "shell"], provider=ScriptedProvider([
        {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}},
                        {"name": "shell", "arguments": {"cmd": "ls"}}]},
        "5"]))
    return await agent.run("2 + 3?")


def record_agent_run(data_dir: Path, **config: Any) -> Path:
    """Run :func:`agent_run` with an SQLite event store under ``data_dir``; the store's
    path."""

    async def main() -> None:
        async with System(SystemConfig(data_dir=str(data_dir), **config)) as system:
            await agent_run(system)

    asyncio.run(main())
    return data_dir / "events.db"


def live_events(*, modify: bool = True) -> list[UniversalEvent]:
    """The events of :func:`agent_run` as an in-process subscriber to every event sees
    them (``hook.*`` events with timings, ``model.*.started``)."""
    seen: list[UniversalEvent] = []

    async def main() -> None:
        async with System(SystemConfig(store="memory")) as system:
            system.bus.subscribe("**", seen.append)
            await agent_run(system, modify=modify)

    asyncio.run(main())
    return seen
