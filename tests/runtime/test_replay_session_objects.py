"""A replay never changes a live ``Session`` object: a live session an ``operation=``
captured and ended, saved, renamed or deleted inside a replay says, after the replay (and
to live code while it runs), what it said before, and stays writable. A session started or
loaded inside a replay is the replay's own: usual inside it, refusing writes outside it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmspell.errors import SessionError
from llmspell.runtime import Session, System, SystemConfig


@pytest.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    yield sys
    await sys.shutdown()


async def _recorded(system: System) -> str:
    async with system.runs.start("job", "sessions", 0) as run:
        run.output = 0
    return run.run_id


def _fields(session: Session) -> dict[str, Any]:
    return {**session.to_dict(), "active": session.active}


async def test_ending_a_live_session_in_a_replay_leaves_the_object_active(
        system: System) -> None:
    chat = await system.sessions.start("chat", {"user": "ada"})
    before = _fields(chat)
    seen: dict[str, Any] = {}

    async def op(_: Any) -> Any:
        await chat.end()
        seen["status"], seen["active"] = chat.status, chat.active
        with pytest.raises(SessionError, match="has ended"):
            await chat.set("k", 1)  # inside the replay it has ended
        return (await system.sessions.load(chat.id)).status

    run_id = await _recorded(system)
    for _ in range(2):  # a second replay starts from the live object again
        replay = await system.runs.replay(run_id, mode="what-if", input=1, operation=op)
        assert replay.status == "completed", replay.error
        assert replay.output == "ended"
        assert seen == {"status": "ended", "active": False}
        assert _fields(chat) == before
    assert (await system.sessions.load(chat.id)).status == "active"
    await chat.set("k", 1)  # the live object is still writable
    assert await chat.get("k") == 1
    await chat.end()
    assert (await system.sessions.load(chat.id)).status == "ended"


async def test_saving_or_deleting_a_live_session_in_a_replay_changes_no_field(
        system: System) -> None:
    chat = await system.sessions.start("chat", {"user": "ada"})
    before = _fields(chat)

    async def op(_: Any) -> Any:
        chat.metadata["user"] = "eve"  # in place
        chat.metadata["tag"] = "what-if"
        chat.name = "renamed"
        await chat.save()
        saved = (await system.sessions.load(chat.id)).to_dict()
        await system.sessions.delete(chat, force=True)
        return {"saved": saved, "active": chat.active}

    replay = await system.runs.replay(await _recorded(system), mode="what-if", input=1,
                                      operation=op)
    assert replay.status == "completed", replay.error
    assert replay.output["saved"]["name"] == "renamed"
    assert replay.output["saved"]["metadata"] == {"user": "eve", "tag": "what-if"}
    assert replay.output["active"] is False  # deleted, inside the replay
    assert _fields(chat) == before
    stored = (await system.sessions.load(chat.id)).to_dict()
    assert stored == chat.to_dict()
    await chat.set("after", True)
    await chat.save()


async def test_live_code_sees_the_live_object_while_a_replay_ends_it(
        system: System) -> None:
    chat = await system.sessions.start("chat")
    ended, release = asyncio.Event(), asyncio.Event()

    async def op(_: Any) -> Any:
        await chat.end()
        ended.set()
        await release.wait()
        return chat.status

    replaying = asyncio.create_task(
        system.runs.replay(await _recorded(system), mode="what-if", input=1, operation=op))
    await ended.wait()
    assert chat.status == "active" and chat.ended_at is None
    await chat.set("during", 1)  # live, while the replay has it ended
    chat.metadata["live"] = True  # a live change after the replay made its copy
    release.set()
    replay = await replaying
    assert replay.output == "ended"
    assert chat.active and chat.metadata == {"live": True}
    assert await chat.get("during") == 1


async def test_a_session_started_in_a_replay_is_the_replays_own(system: System) -> None:
    kept: list[Session] = []

    async def op(_: Any) -> Any:
        own = await system.sessions.start("scratch")
        kept.append(own)
        await own.set("k", 1)
        await own.end()
        with pytest.raises(SessionError, match="has ended"):
            await own.set("k", 2)
        return own.status

    replay = await system.runs.replay(await _recorded(system), mode="what-if", input=1,
                                      operation=op)
    assert replay.status == "completed", replay.error
    assert replay.output == "ended"
    own = kept[0]
    assert own.status == "ended"  # the replay's object says what the replay did
    assert await system.sessions.list() == []
    with pytest.raises(SessionError, match="made inside a replay") as caught:
        await own.save()
    assert "system.sessions.load" in (caught.value.hint or "")


async def test_a_session_loaded_in_a_replay_refuses_live_writes_after_it(
        system: System) -> None:
    chat = await system.sessions.start("chat")
    kept: list[Session] = []

    async def op(_: Any) -> Any:
        loaded = await system.sessions.load(chat.id)
        kept.append(loaded)
        loaded.metadata["replayed"] = True
        await loaded.set("k", "replay")
        return await loaded.get("k")

    replay = await system.runs.replay(await _recorded(system), mode="what-if", input=1,
                                      operation=op)
    assert replay.output == "replay"
    for write in (kept[0].set("k", "leak"), kept[0].save(), kept[0].end()):
        with pytest.raises(SessionError, match="made inside a replay"):
            await write
    assert await chat.get("k") is None
    assert (await system.sessions.load(chat.id)).metadata == {}
