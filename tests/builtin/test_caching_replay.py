"""The caching built-in keeps a replay's entries apart from live ones: a replay never
serves a live entry, never leaves one (an edited or recorded value served to live callers
later), and never coalesces with live calls. It starts from no entries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmspell.builtin import CachingConfig, CachingHook
from llmspell.core.run_scope import current_replay
from llmspell.runtime import System, SystemConfig, tool

REAL: list[int] = []


@tool()
def quote(symbol: str) -> dict[str, Any]:
    """The price of a symbol (a new one at every real call)."""
    REAL.append(1)
    return {"symbol": symbol, "price": 100 + len(REAL)}


@pytest.fixture
async def cached() -> AsyncIterator[tuple[System, CachingHook]]:
    REAL.clear()
    system = System(SystemConfig(store="memory"))
    await system.start()
    system.tools.register(quote)
    hook = CachingHook(CachingConfig(ttl=60))
    hook.install(system.registry)
    yield system, hook
    await system.shutdown()


def op_for(system: System) -> Any:
    async def op(symbol: Any) -> Any:
        return await system.tools.execute("quote", {"symbol": symbol})
    return op


async def recorded(system: System) -> str:
    async with system.runs.start("job", "price", "ACME") as run:
        run.output = await op_for(system)("ACME")
    return run.run_id


async def test_an_edited_value_is_never_served_to_live_calls(
        cached: tuple[System, CachingHook]) -> None:
    system, hook = cached
    run_id = await recorded(system)
    hook.clear()  # as in a fresh process, or once the entry expired
    fake = {"symbol": "ACME", "price": -1}
    result = await system.runs.replay(run_id, mode="what-if", edits={"tool:quote#0": fake},
                                      operation=op_for(system))
    assert result.output == fake
    assert len(hook.cache) == 0  # the replay's entry is its own
    live = await system.tools.execute("quote", {"symbol": "ACME"})
    assert live == {"symbol": "ACME", "price": 102}  # a real call, not the made-up value


async def test_a_live_entry_is_not_served_to_an_exact_replay(
        cached: tuple[System, CachingHook]) -> None:
    system, hook = cached
    run_id = await recorded(system)
    hook.clear()
    newer = await system.tools.execute("quote", {"symbol": "ACME"})  # cached live
    assert newer["price"] == 102
    result = await system.runs.replay(run_id, operation=op_for(system))
    assert result.error is None and not result.diverged, [
        d.describe() for d in result.divergences]
    assert result.output == {"symbol": "ACME", "price": 101}  # the recorded price
    hit, value = hook.cache.get(next(iter(hook.cache.keys())))
    assert hit and value == newer  # the live entry is untouched


async def test_outside_replays_there_is_no_replay(
        cached: tuple[System, CachingHook]) -> None:
    system, _ = cached
    seen: list[object] = []
    async with system.runs.start("job", "plain", None):
        seen.append(current_replay())
    assert seen == [None] and current_replay() is None
