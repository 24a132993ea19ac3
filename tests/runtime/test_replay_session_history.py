"""A live session's history lists what happened to it: what a replay did with a live session
an ``operation=`` captured (a replayed ``end()``, its state writes, which never reached the
session) carries the session's correlation id but is left out of ``session.events()`` and
``system.sessions.events()``, and stays findable as the replay's own (its run id)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import SessionError
from llmspell.events.event import UniversalEvent
from llmspell.events.store.base import EventQuery
from llmspell.runtime import Session, System, SystemConfig


def _config(kind: str, tmp_path: Path) -> SystemConfig:
    if kind == "sqlite":
        return SystemConfig(store="sqlite", data_dir=str(tmp_path))
    return SystemConfig(store="memory")


@pytest.fixture(params=["memory", "sqlite"])
async def system(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[System]:
    sys = System(_config(request.param, tmp_path))
    await sys.start()
    yield sys
    await sys.shutdown()


async def _recorded(system: System) -> str:
    async with system.runs.start("job", "sessions", 0) as run:
        run.output = 0
    return run.run_id


def _flush(system: System) -> None:
    assert system.store is not None
    system.store.flush(5.0)


def _brief(events: list[UniversalEvent]) -> list[tuple[str, Any]]:
    return [(e.event_type, e.data.get("key")) for e in events]


async def _what_if_ending(system: System, chat: Session) -> str:
    """A what-if replay that writes to the live session ``chat`` and ends it; its run id."""
    async def op(_: Any) -> Any:
        await chat.set("what-if", 2)
        await chat.end()
        return chat.status

    replay = await system.runs.replay(await _recorded(system), mode="what-if", input=1,
                                      operation=op)
    assert replay.status == "completed", replay.error
    assert replay.output == "ended"
    return replay.run_id


async def test_a_live_sessions_history_leaves_out_what_a_replay_did(system: System) -> None:
    chat = await system.sessions.start("chat")
    await chat.set("live", 1)
    replay_id = await _what_if_ending(system, chat)
    _flush(system)

    live = [("session.started", None), ("state.session.changed", "live")]
    assert _brief(await chat.events()) == live
    assert _brief(await system.sessions.events(chat)) == live
    assert _brief(await system.sessions.events(chat.id)) == live
    assert chat.active  # and its history says nothing else

    # What the replay did is the replay's: by its run id, or asked for.
    everything = await chat.events(include_replays=True)
    assert _brief(everything) == [*live, ("state.session.changed", "what-if"),
                                  ("session.ended", None)]
    assert {e.run_id for e in everything[2:]} == {replay_id}
    assert system.runs.get(replay_id).replay_of is not None
    assert system.store is not None
    by_run = system.store.query(EventQuery(run_id=replay_id, correlation_id=chat.id))
    assert _brief(by_run) == [("state.session.changed", "what-if"), ("session.ended", None)]

    # The live session goes on; its history shows its own end only.
    await chat.set("after", 3)
    await chat.end()
    _flush(system)
    assert _brief(await chat.events()) == [*live, ("state.session.changed", "after"),
                                           ("session.ended", None)]


async def test_live_runs_in_a_session_stay_in_its_history(system: System) -> None:
    chat = await system.sessions.start("chat")
    async with system.runs.start("job", "live-step", 0) as run:
        await chat.set("in-run", 1)
        run.output = 1
    await _what_if_ending(system, chat)
    _flush(system)
    events = await chat.events()
    assert _brief(events) == [("session.started", None), ("state.session.changed", "in-run")]
    assert events[1].run_id == run.run_id


async def test_runs_inside_a_replay_are_the_replays_too(system: System) -> None:
    chat = await system.sessions.start("chat")

    async def op(_: Any) -> Any:
        async with system.runs.start("job", "nested", 0) as inner:
            await chat.set("nested", 1)
            inner.output = 1
        return inner.run_id

    replay = await system.runs.replay(await _recorded(system), mode="what-if", input=1,
                                      operation=op)
    assert replay.status == "completed", replay.error
    _flush(system)
    assert _brief(await chat.events()) == [("session.started", None)]
    nested = [e for e in await chat.events(include_replays=True)
              if e.data.get("key") == "nested"]
    assert [e.run_id for e in nested] == [replay.output]
    assert system.runs.get(replay.output).parent_run_id == replay.run_id


async def test_inside_a_replay_the_history_has_the_replays_own_events(
        system: System) -> None:
    chat = await system.sessions.start("chat")
    await chat.set("live", 1)
    earlier = await _what_if_ending(system, chat)  # another replay: not this one's

    seen: list[list[tuple[str, Any]]] = []

    async def op(_: Any) -> Any:
        await chat.set("mine", 2)
        _flush(system)
        seen.append(_brief(await chat.events()))
        return None

    replay = await system.runs.replay(await _recorded(system), mode="what-if", input=1,
                                      operation=op)
    assert replay.status == "completed", replay.error
    assert earlier != replay.run_id
    assert seen == [[("session.started", None), ("state.session.changed", "live"),
                     ("state.session.changed", "mine")]]
    _flush(system)
    assert _brief(await chat.events()) == [("session.started", None),
                                           ("state.session.changed", "live")]


async def test_a_new_process_reads_the_same_history(tmp_path: Path) -> None:
    first = System(_config("sqlite", tmp_path))
    await first.start()
    try:
        chat = await first.sessions.start("chat")
        await _what_if_ending(first, chat)
    finally:
        await first.shutdown()
    second = System(_config("sqlite", tmp_path))
    await second.start()
    try:
        assert _brief(await second.sessions.events(chat.id)) == [("session.started", None)]
        assert len(await second.sessions.events(chat.id, include_replays=True)) == 3
    finally:
        await second.shutdown()


async def test_include_replays_must_be_a_bool(system: System) -> None:
    chat = await system.sessions.start("chat")
    with pytest.raises(SessionError, match="include_replays") as caught:
        await system.sessions.events(chat, include_replays="yes")  # type: ignore[arg-type]
    assert caught.value.hint
