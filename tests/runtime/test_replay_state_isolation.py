"""A replay never writes live state: what the replayed run writes (a workflow step's
``system.state.set``, a workflow checkpoint, a script's ``State.set`` or ``Session.start``,
a session's ``set``/``checkpoint``/``restore``/``end``) goes to a state of the replay's own,
which its reads see first (then the live state), and which is dropped with the replay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.state import MemoryStateBackend, StateScope
from llmspell.runtime.state.overlay import ReplayOverlay
from llmspell.runtime.workflows import Sequential, Step, WorkflowContext
from llmspell.scripting import ScriptHost

G = StateScope.GLOBAL
PRICES: list[int] = []


@tool()
def quote(symbol: str) -> dict[str, Any]:
    """The price of a symbol (a new one at every real call)."""
    PRICES.append(1)
    return {"symbol": symbol, "price": 100 + len(PRICES)}


async def save_price(ctx: WorkflowContext) -> Any:
    assert ctx.system is not None
    await ctx.system.state.set("last_price", ctx.outputs["q"]["price"])
    return await ctx.system.state.get("last_price")  # reads its own write


def prices_flow() -> Sequential:
    return Sequential("prices", [Step("q", tool="quote", params={"symbol": "ACME"}),
                                 Step("save", fn=save_price)], checkpoint="step")


async def _started(config: SystemConfig) -> System:
    system = System(config)
    await system.start()
    system.tools.register(quote)
    return system


@pytest.fixture
async def system() -> AsyncIterator[System]:
    PRICES.clear()
    sys = await _started(SystemConfig(store="memory"))
    yield sys
    await sys.shutdown()


@pytest.fixture
async def sqlite_system(tmp_path: Path) -> AsyncIterator[System]:
    PRICES.clear()
    sys = await _started(SystemConfig(store="sqlite", data_dir=str(tmp_path)))
    yield sys
    await sys.shutdown()


def tool_step(system: System, run_id: str) -> str:
    return next(s.key for s in system.runs.recording(run_id).steps.values()
                if s.kind == "tool")


async def _workflow_replays_leave_live_state_alone(system: System) -> None:
    flow = prices_flow()
    await flow.run(system, None)
    run_id = system.runs.list(limit=1)[0].run_id
    assert await system.state.get("last_price") == 101
    checkpoints = await system.state.scopes("workflow")
    await system.state.set("last_price", 999)  # a later live write

    exact = await system.runs.replay(run_id, operation=flow)
    assert exact.status == "completed" and not exact.diverged, exact.divergences
    assert exact.output["save"] == 101  # the replay read its own write
    assert await system.state.get("last_price") == 999  # not overwritten with 101

    what_if = await system.runs.replay(
        run_id, operation=flow, mode="what-if",
        edits={tool_step(system, run_id): {"symbol": "ACME", "price": -1}})
    assert what_if.status == "completed" and what_if.output["save"] == -1
    assert await system.state.get("last_price") == 999  # the edit never reaches it
    assert (await system.state.entry("last_price")).version == 2  # type: ignore[union-attr]
    # The replays' workflow checkpoints are theirs: no new workflow scope in the live store.
    assert await system.state.scopes("workflow") == checkpoints
    assert PRICES == [1]


async def test_a_workflow_replay_never_writes_live_state(system: System) -> None:
    await _workflow_replays_leave_live_state_alone(system)


async def test_a_workflow_replay_never_writes_live_state_on_sqlite(
        sqlite_system: System) -> None:
    await _workflow_replays_leave_live_state_alone(sqlite_system)


async def test_a_replayed_script_writes_neither_state_nor_sessions(system: System) -> None:
    host = ScriptHost(system)
    source = ('local old = State.get("counter") or 0\n'
              'State.set("counter", old + 1)\n'
              'State.set("note", "from the script", {scope = "agent", scope_id = "a1"})\n'
              'Session.start({name = "scripted"})\n'
              'return old + 1')
    assert await host.run_lua_async(source, name="count.lua") == 1
    host.close()
    run_id = system.runs.list(limit=1)[0].run_id
    await system.state.delete("note", scope="agent", scope_id="a1")
    sessions = [s.id for s in await system.sessions.list()]
    assert len(sessions) == 1

    result = await system.runs.replay(run_id)
    assert result.status == "completed"
    assert await system.state.get("counter") == 1
    assert await system.state.keys("agent", "a1") == []
    assert [s.id for s in await system.sessions.list()] == sessions


async def test_a_replay_never_changes_a_live_session(system: System) -> None:
    chat = await system.sessions.start("chat")
    await chat.set("history", ["hi"])
    await chat.checkpoint("start")

    async def op(text: Any) -> Any:
        history = await chat.get("history")
        await chat.set("history", [*history, text])
        label = await chat.checkpoint()
        await chat.restore("start")
        await chat.set("history", [*history, text, "again"])
        await chat.delete("draft")
        return {"seen": len(history), "label": label,
                "history": await chat.get("history"),
                "checkpoints": len(await chat.checkpoints())}

    await chat.set("draft", "keep me")
    async with system.runs.start("job", "chat", "yo") as run:
        run.output = await op("yo")
    assert run.output["history"] == ["hi", "yo", "again"]
    live = await chat.snapshot()
    labels = await chat.checkpoints()
    await chat.set("draft", "keep me")  # the live run deleted it: back for the replay

    replay = await system.runs.replay(run.run_id, mode="what-if", input="changed",
                                      operation=op)
    assert replay.status == "completed", replay.error
    assert replay.output["history"] == ["hi", "yo", "again", "changed", "again"]
    assert replay.output["checkpoints"] == len(labels) + 1  # it sees its own checkpoint
    assert await chat.snapshot() == {**live, "draft": "keep me"}
    assert await chat.checkpoints() == labels


async def test_a_replay_that_ends_or_deletes_a_session_leaves_it_live(system: System) -> None:
    chat = await system.sessions.start("chat")

    async def op(_: Any) -> Any:
        other = await system.sessions.load(chat.id)
        await other.end()
        await system.sessions.delete(chat.id)
        return [s.id for s in await system.sessions.list()]

    async with system.runs.start("job", "close", None) as run:
        scratch = await system.sessions.start("scratch")
    await system.sessions.delete(scratch, force=True)
    replay = await system.runs.replay(run.run_id, mode="what-if", input=1, operation=op)
    assert replay.status == "completed", replay.error
    assert replay.output == []  # inside the replay it is ended and deleted
    assert [s.id for s in await system.sessions.list()] == [chat.id]
    assert (await system.sessions.load(chat.id)).status == "active"
    await chat.set("still", "writable")


async def test_live_writes_while_a_replay_runs_stay_live(system: System) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def op(_: Any) -> Any:
        await system.state.set("shared", "replay")
        entered.set()
        await release.wait()
        return await system.state.get("shared")

    async with system.runs.start("job", "shared", None) as run:
        await system.state.set("shared", "recorded")
        run.output = "recorded"
    replaying = asyncio.create_task(
        system.runs.replay(run.run_id, mode="what-if", input=1, operation=op))
    await entered.wait()
    assert await system.state.get("shared") == "recorded"  # a live read
    await system.state.set("shared", "live")  # a live write, during the replay
    release.set()
    replay = await replaying
    assert replay.output == "replay"  # its own write comes first
    assert await system.state.get("shared") == "live"


def test_the_overlay_reads_through_and_keeps_writes_to_itself() -> None:
    live = MemoryStateBackend()
    live.put(G, "", "a", 1, None, 0.0)
    live.put(G, "", "a", 2, None, 0.0)
    live.put(StateScope.SESSION, "s1", "k", "v", None, 0.0)
    overlay = ReplayOverlay(live)
    assert overlay.get(G, "", "a").value == 2  # type: ignore[union-attr]
    assert overlay.put(G, "", "a", 5, 1, 1.0) is None  # compare-and-set as seen
    entry = overlay.put(G, "", "a", 3, 2, 1.0)
    assert entry is not None and (entry.value, entry.version) == (3, 3)
    assert overlay.put(G, "", "b", [1], 0, 1.0) is not None
    assert overlay.keys(G, "") == ["a", "b"]
    assert overlay.delete(StateScope.SESSION, "s1", "k", None) is True
    assert overlay.get(StateScope.SESSION, "s1", "k") is None
    assert overlay.delete(StateScope.SESSION, "s1", "k", None) is False
    assert overlay.scopes(StateScope.SESSION) == []
    again = overlay.put(StateScope.SESSION, "s1", "k", "w", 0, 1.0)
    assert again is not None and again.version == 2  # continues after the deleted one
    assert overlay.apply(G, "", {"c": 1}, ["a"], ("b", 1), 2.0) is True
    assert overlay.apply(G, "", {"d": 1}, [], ("b", 7), 2.0) is False
    assert {k: e.value for k, e in overlay.items(G, "").items()} == {"b": [1], "c": 1}
    # The live backend saw none of it.
    assert {k: e.value for k, e in live.items(G, "").items()} == {"a": 2}
    assert live.get(StateScope.SESSION, "s1", "k").value == "v"  # type: ignore[union-attr]
