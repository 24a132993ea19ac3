"""A replay matches each state read of a step to the recorded read of the same thing (op,
scope, scope id, key), in order among those, so reads made concurrently (a hook or the run's
body reading two keys with ``asyncio.gather``) replay exactly whatever their interleaving,
and are served the recorded values; a read the recording lacks still diverges."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmspell.hooks import hook
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.runs.records import StateRead

ORDER = ["a", "b"]
"""The order the concurrent reads are let through in (the test flips it for the replay)."""
SEEN: list[Any] = []


async def gathered(system: System) -> list[Any]:
    """Read ``a`` and ``b`` in two tasks at once, each let through in :data:`ORDER`."""
    order = list(ORDER)
    turns = {key: asyncio.Event() for key in order}

    async def read(key: str) -> Any:
        await turns[key].wait()
        value = await system.state.get(key)
        following = order.index(key) + 1
        if following < len(order):
            turns[order[following]].set()
        return value

    turns[order[0]].set()
    return list(await asyncio.gather(read("a"), read("b")))


@tool()
def noop(city: str) -> str:
    """Does nothing of note."""
    return city


@pytest.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    sys.tools.register(noop)
    ORDER[:] = ["a", "b"]
    SEEN.clear()
    yield sys
    ORDER[:] = ["a", "b"]
    await sys.shutdown()


def reads_of(system: System, run_id: str) -> list[list[tuple[str, str | None]]]:
    return [[(r.op, r.key) for r in step.reads]
            for step in system.runs.recording(run_id).ordered if step.reads]


async def test_a_hook_reading_two_keys_concurrently_replays_in_another_interleaving(
        system: System) -> None:
    @hook("BeforeToolExecution", name="reader")
    async def reader(ctx: Any) -> None:
        SEEN.append(await gathered(system))

    system.registry.register(reader)
    await system.state.set("a", "A1")
    await system.state.set("b", "B1")

    async def op(_: Any) -> Any:
        return await system.tools.execute("noop", {"city": "Oslo"})

    async with system.runs.start("job", "reads", None) as run:
        run.output = await op(None)
    assert SEEN == [["A1", "B1"]]
    assert reads_of(system, run.run_id) == [[("get", "a"), ("get", "b")]]

    await system.state.set("a", "A2")  # the live state moved on
    await system.state.set("b", "B2")
    ORDER[:] = ["b", "a"]  # and the replay reads them the other way round
    replay = await system.runs.replay(run.run_id, operation=op)
    assert replay.status == "completed", replay.error
    assert not replay.diverged, replay.divergences
    assert SEEN[-1] == ["A1", "B1"]  # the recorded values, not the live ones
    assert reads_of(system, replay.run_id) == [[("get", "b"), ("get", "a")]]


async def test_the_run_body_reading_concurrently_replays_exactly(system: System) -> None:
    await system.state.set("a", 1)
    await system.state.set("b", 2)

    async def op(_: Any) -> Any:
        first = await gathered(system)
        await system.state.set("a", first[0] + 10)
        again = await system.state.get("a")  # a second read of 'a': matched in its order
        return [*first, again]

    async with system.runs.start("job", "body", None) as run:
        run.output = await op(None)
    assert run.output == [1, 2, 11]

    await system.state.set("a", 100)
    await system.state.set("b", 200)
    ORDER[:] = ["b", "a"]
    replay = await system.runs.replay(run.run_id, operation=op)
    assert replay.status == "completed", replay.error
    assert not replay.diverged, replay.divergences
    assert replay.output == [1, 2, 11]
    assert await system.state.get("a") == 100  # the replay's write stayed its own


async def test_a_tool_reading_concurrently_is_served_and_its_reads_not_expected(
        system: System) -> None:
    @tool()
    async def both(city: str) -> list[Any]:
        """Reads two keys at once in its own code."""
        return await gathered(system)

    system.tools.register(both)
    await system.state.set("a", "x")
    await system.state.set("b", "y")

    async def op(_: Any) -> Any:
        return await system.tools.execute("both", {"city": "Oslo"})

    async with system.runs.start("job", "tool", None) as run:
        run.output = await op(None)
    await system.state.set("a", "changed")
    ORDER[:] = ["b", "a"]
    replay = await system.runs.replay(run.run_id, operation=op)
    assert not replay.diverged, replay.divergences
    assert replay.output == ["x", "y"]


async def test_a_read_with_no_recorded_twin_still_diverges_once(system: System) -> None:
    await system.state.set("a", "A")
    await system.state.set("b", "B")
    await system.state.set("c", "C")
    keys = ["a", "c"]

    async def op(_: Any) -> Any:
        return [await system.state.get(key) for key in keys]

    async with system.runs.start("job", "extra", None) as run:
        run.output = await op(None)
    await system.state.set("a", "A2")
    await system.state.set("c", "C2")
    keys[:] = ["b", "a", "c"]  # one read more, before the recorded ones
    replay = await system.runs.replay(run.run_id, operation=op)
    reads = [d for d in replay.divergences if d.what == "state_read"]
    assert len(reads) == 1, replay.divergences
    assert reads[0].got == StateRead(op="get", scope="global", key="b").describe()
    assert reads[0].expected == StateRead(op="get", scope="global", key="a").describe()
    # The recorded reads of 'a' and 'c' were still matched, and served.
    assert replay.output == ["B", "A", "C"]


async def test_a_recorded_read_not_made_is_reported_at_the_end(system: System) -> None:
    await system.state.set("a", "A")
    await system.state.set("b", "B")
    keys = ["a", "b"]

    async def op(_: Any) -> Any:
        return [await system.state.get(key) for key in keys]

    async with system.runs.start("job", "fewer", None) as run:
        run.output = await op(None)
    keys[:] = ["b"]
    replay = await system.runs.replay(run.run_id, operation=op)
    reads = [d for d in replay.divergences if d.what == "state_read"]
    assert [(d.expected, d.got) for d in reads] == [
        (StateRead(op="get", scope="global", key="a").describe(), "not read")]
