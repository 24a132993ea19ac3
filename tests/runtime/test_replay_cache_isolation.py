"""A replay never touches the live result caches: it does not fill them (an edited or
recorded value would be served to later live calls), does not read them (a live entry would
change the replayed path), and does not coalesce with live calls (either way round). Inside
the replay, a ``Cache`` hook behaves as the recording says it did."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmspell.hooks import Cache, HookContext, HookPoint
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.calls import ReplayCache, scoped_cache
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs import ReplayResult
from llmspell.runtime.runs.replay import StepView

P = HookPoint
REAL: list[int] = []
GATE: dict[str, asyncio.Event] = {}


@tool()
def quote(symbol: str) -> dict[str, Any]:
    """The price of a symbol (a new one at every real call)."""
    REAL.append(1)
    return {"symbol": symbol, "price": 100 + len(REAL)}


@tool()
async def gated(symbol: str) -> dict[str, Any]:
    """Like quote, but waits for GATE["open"] once entered (GATE["in"] is set then)."""
    REAL.append(1)
    if "open" in GATE:
        GATE["in"].set()
        await GATE["open"].wait()
    return {"symbol": symbol, "price": 100 + len(REAL)}


def cache_before(ctx: HookContext) -> Cache | None:
    return Cache(key=f"q:{ctx.data['params']['symbol']}")


def cache_after(ctx: HookContext) -> Cache | None:
    return Cache(key=f"q:{ctx.data['params']['symbol']}")


@pytest.fixture
async def system() -> AsyncIterator[System]:
    REAL.clear()
    GATE.clear()
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    sys.tools.register_all([quote, gated])
    yield sys
    await sys.shutdown()


def op_for(system: System, name: str = "quote") -> Any:
    async def op(symbol: Any) -> Any:
        return await system.tools.execute(name, {"symbol": symbol})
    return op


async def recorded(system: System, name: str = "quote") -> str:
    async with system.runs.start("job", "price", "ACME") as run:
        run.output = await op_for(system, name)("ACME")
    return run.run_id


def exact(result: ReplayResult, output: Any) -> None:
    assert result.error is None, result.error
    assert not result.diverged, [d.describe() for d in result.divergences]
    assert result.output == output


# -- (1) a replay does not write the live cache --------------------------------------------
async def test_an_edited_value_is_not_cached_for_live_calls(system: System) -> None:
    system.registry.register(P.AFTER_TOOL_EXECUTION, cache_after, name="cache-after")
    run_id = await recorded(system)
    system.tools.cache.clear()  # as in a fresh process, or once the entry expired
    fake = {"symbol": "ACME", "price": -1}
    result = await system.runs.replay(run_id, mode="what-if", edits={"tool:quote#0": fake},
                                      operation=op_for(system))
    assert result.output == fake and result.served == {"edited": 1}
    assert len(system.tools.cache) == 0 and not system.tools.cache.aliased
    live = await system.tools.execute("quote", {"symbol": "ACME"})
    assert live == {"symbol": "ACME", "price": 102}  # a real call, not the made-up value
    assert len(REAL) == 2


async def test_an_exact_replay_does_not_cache_recorded_values(system: System) -> None:
    system.registry.register(P.BEFORE_TOOL_EXECUTION, cache_before, name="cache-before")
    run_id = await recorded(system)
    system.tools.cache.clear()
    exact(await system.runs.replay(run_id, operation=op_for(system)),
          {"symbol": "ACME", "price": 101})
    assert len(system.tools.cache) == 0
    live = await system.tools.execute("quote", {"symbol": "ACME"})
    assert live == {"symbol": "ACME", "price": 102}  # not the recorded (stale) price


# -- (2) a replay does not read the live cache ---------------------------------------------
async def test_a_live_entry_does_not_change_the_replayed_path(system: System) -> None:
    system.registry.register(P.BEFORE_TOOL_EXECUTION, cache_before, name="cache-before")
    run_id = await recorded(system)
    system.tools.cache.clear()
    newer = await system.tools.execute("quote", {"symbol": "ACME"})  # cached live
    assert newer["price"] == 102
    result = await system.runs.replay(run_id, operation=op_for(system))
    exact(result, {"symbol": "ACME", "price": 101})
    assert result.served == {"recording": 1}
    assert system.tools.cache.get(next(iter(system.tools.cache._data)))[1] == newer
    assert len(REAL) == 2


async def test_a_call_served_from_the_cache_replays_as_it_was(system: System) -> None:
    # The run's call was a hit on an entry a live call made before it: the replay serves
    # the value the run got, whatever the live cache holds now.
    system.registry.register(P.BEFORE_TOOL_EXECUTION, cache_before, name="cache-before")
    before = await system.tools.execute("quote", {"symbol": "ACME"})
    run_id = await recorded(system)
    recording = system.runs.recording(run_id)
    (step,) = [s for s in recording.steps.values() if s.kind == "tool"]
    assert step.attempts == [] and step.result == before  # a hit, recorded
    system.tools.cache.clear()
    exact(await system.runs.replay(run_id, operation=op_for(system)), before)
    await system.tools.execute("quote", {"symbol": "ACME"})  # live again: another price
    exact(await system.runs.replay(run_id, operation=op_for(system)), before)
    assert len(REAL) == 2


async def test_a_run_with_repeated_calls_replays_its_hits(system: System) -> None:
    system.registry.register(P.AFTER_TOOL_EXECUTION, cache_after, name="cache-after")

    async def op(symbol: Any) -> Any:
        first = await system.tools.execute("quote", {"symbol": symbol})
        second = await system.tools.execute("quote", {"symbol": symbol})
        return [first, second]

    async with system.runs.start("job", "twice", "ACME") as run:
        run.output = await op("ACME")
    assert len(REAL) == 1
    system.tools.cache.clear()
    exact(await system.runs.replay(run.run_id, operation=op),
          [{"symbol": "ACME", "price": 101}] * 2)
    assert len(system.tools.cache) == 0 and len(REAL) == 1
    # A what-if that edits the first call: the second call, a hit in the run, is served
    # the edit (from the replay's own cache), and the live cache is left alone.
    fake = {"symbol": "ACME", "price": -1}
    changed = await system.runs.replay(run.run_id, mode="what-if", operation=op,
                                       edits={"tool:quote#0": fake})
    assert changed.output == [fake, fake]
    assert [(d.key, d.what) for d in changed.divergences] == [
        ("tool:quote#0", "edited"), ("tool:quote#1", "output"), ("", "output")]
    assert len(system.tools.cache) == 0 and len(REAL) == 1


# -- (3) a replay does not coalesce with live calls ----------------------------------------
async def test_a_live_call_does_not_wait_for_a_replayed_one(system: System) -> None:
    system.registry.register(P.BEFORE_TOOL_EXECUTION, cache_before, name="cache-before")
    run_id = await recorded(system)
    system.tools.cache.clear()
    paused, go_on = asyncio.Event(), asyncio.Event()

    async def hold(view: StepView) -> None:  # the replayed call is in flight meanwhile
        paused.set()
        await go_on.wait()

    fake = {"symbol": "ACME", "price": -1}
    replay = asyncio.ensure_future(system.runs.replay(
        run_id, mode="what-if", edits={"tool:quote#0": fake}, breakpoints=["tool:quote"],
        on_break=hold, operation=op_for(system)))
    await paused.wait()
    live = asyncio.ensure_future(system.tools.execute("quote", {"symbol": "ACME"}))
    for _ in range(20):
        await asyncio.sleep(0)
    go_on.set()
    result, value = await asyncio.gather(replay, live)
    assert result.output == fake
    assert value == {"symbol": "ACME", "price": 102}  # its own call, not the edit
    assert system.tools.cache.coalesced == 0


async def test_a_replayed_call_does_not_wait_for_a_live_one(system: System) -> None:
    system.registry.register(P.BEFORE_TOOL_EXECUTION, cache_before, name="cache-before")
    run_id = await recorded(system, "gated")
    system.tools.cache.clear()
    GATE.update({"in": asyncio.Event(), "open": asyncio.Event()})
    live = asyncio.ensure_future(system.tools.execute("gated", {"symbol": "ACME"}))
    await GATE["in"].wait()  # the live call is in flight
    replay = asyncio.ensure_future(system.runs.replay(run_id,
                                                      operation=op_for(system, "gated")))
    await asyncio.sleep(0.05)  # time for the replay to get as far as it can
    GATE["open"].set()
    result, value = await asyncio.gather(replay, live)
    exact(result, {"symbol": "ACME", "price": 101})
    assert value == {"symbol": "ACME", "price": 102}
    assert system.tools.cache.coalesced == 0


# -- model calls ---------------------------------------------------------------------------
async def test_an_edited_model_answer_is_not_cached_for_live_calls(system: System) -> None:
    def cache_model(ctx: HookContext) -> Cache:
        return Cache(key="answer")

    system.registry.register(P.AFTER_MODEL_CALL, cache_model, name="cache-model")
    answers = iter(["first", "second", "third"])
    system.agents.create("oracle", provider=ScriptedProvider(
        lambda messages, tools: next(answers)))
    assert (await system.agents.get("oracle").run("ask")).output == "first"
    run_id = system.runs.list(limit=1)[0].run_id
    system.models.cache.clear()
    recording = system.runs.recording(run_id)
    (step,) = [s for s in recording.steps.values() if s.kind == "model"]
    made_up = {**step.result, "message": {**step.result["message"], "content": "made up"}}
    result = await system.runs.replay(run_id, mode="what-if", edits={step.key: made_up})
    assert result.output == "made up"
    assert len(system.models.cache) == 0
    assert (await system.agents.get("oracle").run("ask")).output == "second"


# -- caches used outside run_hooked --------------------------------------------------------
async def test_scoped_cache_is_the_replays_stand_in_inside_a_replay(system: System) -> None:
    live = system.tools.cache
    assert scoped_cache(live) is live
    seen: list[Any] = []

    async def op(symbol: Any) -> Any:
        seen.extend([scoped_cache(live), scoped_cache(live)])
        return await system.tools.execute("quote", {"symbol": symbol})

    async with system.runs.start("job", "price", "ACME") as run:
        run.output = await op("ACME")
    assert seen == [live, live]  # a live run: the live cache
    seen.clear()
    exact(await system.runs.replay(run.run_id, operation=op), {"symbol": "ACME", "price": 101})
    assert isinstance(seen[0], ReplayCache) and seen[0] is seen[1]
