"""Hostile and concurrency audit of sessions: damaged or forged records, reserved keys,
stale handles of a deleted session, many tasks on one session, restarts with SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import LlmspellError, OperationCancelled, SessionError
from llmspell.hooks import Cancel, HookPoint
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.sessions import SESSION_KEY
from llmspell.scripting import ScriptHost

pytestmark = pytest.mark.asyncio


async def _raw_keys(system: System, session_id: str) -> list[str]:
    keys: list[str] = await system.state.keys("session", session_id, include_reserved=True)
    return keys


# -- damaged and forged records ----------------------------------------------------------

@pytest.mark.parametrize("record", [
    {"id": "x", "name": "n"},                        # no created_at
    {"id": "x", "created_at": "yesterday"},          # not a number
    {"id": "other", "created_at": 1.0, "metadata": [1], "status": 5, "name": 7},
])
async def test_a_damaged_record_does_not_break_listing_loading_or_deleting(
        record: dict[str, Any]) -> None:
    async with System(SystemConfig(store="memory")) as system:
        good = await system.sessions.start("good")
        await system.state.set(SESSION_KEY, record, scope="session", scope_id="x")
        listed = {s.id: s for s in await system.sessions.list()}
        assert set(listed) == {good.id, "x"}  # the scope's id, where its state lives
        damaged = await system.sessions.load("x")
        assert damaged.id == "x" and damaged.status == "active"
        assert isinstance(damaged.metadata, dict)
        assert [s.id for s in await system.sessions.list(status="active")] \
            == [s.id for s in await system.sessions.list()]
        await system.sessions.delete("x", force=True)
        assert await _raw_keys(system, "x") == []
        assert [s.id for s in await system.sessions.list()] == [good.id]


async def test_list_refuses_an_unknown_status() -> None:
    async with System(SystemConfig(store="memory")) as system:
        await system.sessions.start("s")
        for status in ("bogus", 5, "Active"):
            with pytest.raises(SessionError, match="status must be") as refused:
                await system.sessions.list(status=status)  # type: ignore[arg-type]
            assert refused.value.hint


async def test_the_sessions_own_keys_cannot_be_written_through_it() -> None:
    async with System(SystemConfig(store="memory")) as system:
        session = await system.sessions.start("s")
        await session.checkpoint("c")
        for key in (SESSION_KEY, "__checkpoint__:c", "__checkpoint__:new", "__x"):
            with pytest.raises(SessionError, match="session's own") as refused:
                await session.set(key, 5)
            assert refused.value.hint
            with pytest.raises(SessionError, match="session's own"):
                await session.delete(key)
        assert await session.checkpoints() == ["c"]
        assert (await system.sessions.load(session.id)).name == "s"
        assert [s.id for s in await system.sessions.list()] == [session.id]


async def test_a_damaged_checkpoint_is_skipped_or_refused_with_a_session_error() -> None:
    async with System(SystemConfig(store="memory")) as system:
        session = await system.sessions.start("s")
        await session.checkpoint("good")
        raw = system.state
        await raw.set("__checkpoint__:int", 5, scope="session", scope_id=session.id)
        await raw.set("__checkpoint__:vals", {"created_at": "x", "values": [1]},
                      scope="session", scope_id=session.id)
        # a checkpoint that is not a dict is none; a created_at that is no number sorts first
        assert await session.checkpoints() == ["vals", "good"]
        with pytest.raises(SessionError, match="no checkpoint"):
            await session.restore("int")
        with pytest.raises(SessionError, match="damaged") as refused:
            await session.restore("vals")
        assert refused.value.hint
        assert await session.restore("good") == {}


# -- stale handles and deletes racing with writes -----------------------------------------

async def test_a_stale_handle_cannot_leave_state_behind_a_deleted_session() -> None:
    async with System(SystemConfig(store="memory")) as system:
        session = await system.sessions.start("s")
        stale = await system.sessions.load(session.id)
        await system.sessions.delete(session.id, force=True)
        for write in (stale.set("k", 1), stale.checkpoint("c"), stale.restore("c")):
            with pytest.raises(SessionError, match="was deleted") as refused:
                await write
            assert refused.value.hint
        assert not stale.active
        assert await _raw_keys(system, session.id) == []
        assert await system.state.scopes("session") == []


async def test_a_write_landing_while_its_session_is_deleted_leaves_nothing() -> None:
    async with System(SystemConfig(store="memory")) as system:
        session = await system.sessions.start("s")
        writer = await system.sessions.load(session.id)
        gate, entered = asyncio.Event(), asyncio.Event()

        async def slow(ctx: Any) -> None:  # holds the write between its check and its put
            entered.set()
            await gate.wait()

        system.registry.register(HookPoint.BEFORE_STATE_WRITE, slow, name="slow")
        write = asyncio.create_task(writer.set("k", 1))
        await entered.wait()
        await system.sessions.delete(session.id, force=True)
        gate.set()
        with pytest.raises(SessionError, match="was deleted"):
            await write
        assert await _raw_keys(system, session.id) == []


async def test_a_cancelled_delete_keeps_the_session_whole_and_writable() -> None:
    async with System(SystemConfig(store="memory")) as system:
        session = await system.sessions.start("s")
        other = await system.sessions.load(session.id)
        await session.set("k", 1)
        await session.checkpoint("c")
        system.registry.register(HookPoint.SESSION_DELETE, lambda ctx: Cancel("keep"),
                                 name="keep")
        with pytest.raises(OperationCancelled):
            await system.sessions.delete(session.id, force=True)
        await session.end()
        assert await system.sessions.purge(0) == 0
        assert sorted(await _raw_keys(system, session.id)) == [
            "__checkpoint__:c", SESSION_KEY, "k"]
        # the other handle was not told it is gone
        with pytest.raises(SessionError, match="ended elsewhere"):
            await other.save()
        assert await other.get("k") == 1


async def test_a_refused_delete_does_not_mark_the_handles_deleted() -> None:
    async with System(SystemConfig(store="memory")) as system:
        session = await system.sessions.start("s")
        with pytest.raises(SessionError, match="still active"):
            await system.sessions.delete(session.id)
        await session.set("k", 1)
        assert session.active and await session.get("k") == 1


async def test_many_tasks_on_one_session_raise_only_typed_errors_and_leave_nothing() -> None:
    rng = random.Random(136)
    async with System(SystemConfig(store="memory")) as system:
        for _ in range(5):
            session = await system.sessions.start("shared")
            handles = [await system.sessions.load(session.id) for _ in range(12)]
            untyped: list[BaseException] = []

            async def worker(session_id: str, handle: Any,
                             untyped: list[BaseException]) -> None:
                for j in range(25):
                    op = rng.choice(["set", "save", "cp", "restore", "end", "delete",
                                     "get", "purge"])
                    try:
                        if op == "set":
                            await handle.set(f"k{id(handle)}", j)
                        elif op == "save":
                            handle.metadata = {**handle.metadata, "m": j}
                            await handle.save()
                        elif op == "cp":
                            await handle.checkpoint()
                        elif op == "restore":
                            await handle.restore()
                        elif op == "end":
                            await handle.end()
                        elif op == "delete":
                            await system.sessions.delete(session_id, force=True)
                        elif op == "purge":
                            await system.sessions.purge(0)
                        else:
                            await handle.get("k0")
                    except LlmspellError:
                        pass
                    except BaseException as exc:  # pragma: no cover - the failure
                        untyped.append(exc)
                    await asyncio.sleep(0)

            await asyncio.gather(*(worker(session.id, h, untyped) for h in handles))
            assert untyped == []
            with contextlib.suppress(SessionError):  # or a worker deleted it already
                await system.sessions.delete(session.id, force=True)
            assert await _raw_keys(system, session.id) == []
        assert await system.state.scopes("session") == []


# -- persistence ---------------------------------------------------------------------------

async def test_a_session_survives_a_restart_with_sqlite_and_is_unknown_elsewhere(
        tmp_path: Path) -> None:
    config = SystemConfig(store="sqlite", data_dir=tmp_path / "a")
    async with System(config) as system:
        session = await system.sessions.start("kept", metadata={"user": "ada"})
        await session.set("step", 3)
        await session.checkpoint("c")
        session_id = session.id
    async with System(SystemConfig(store="sqlite", data_dir=tmp_path / "a")) as system:
        loaded = await system.sessions.load(session_id)
        assert (loaded.name, loaded.metadata, loaded.active) == ("kept", {"user": "ada"}, True)
        assert await loaded.get("step") == 3 and await loaded.checkpoints() == ["c"]
        await loaded.set("step", 4)
        await loaded.end()
    async with System(SystemConfig(store="sqlite", data_dir=tmp_path / "b")) as other:
        with pytest.raises(SessionError, match="no saved session"):
            await other.sessions.load(session_id)
        with pytest.raises(SessionError, match="no saved session"):
            await other.sessions.delete(session_id)
    async with System(SystemConfig(store="sqlite", data_dir=tmp_path / "a")) as system:
        again = await system.sessions.load(session_id)
        assert again.status == "ended" and await again.get("step") == 4


# -- from scripts ---------------------------------------------------------------------------

FORGE = {
    "lua": """
State.set("__session__", {name = "forged"}, {scope = "session", scope_id = "forged"})
local names = {}
for _, s in ipairs(Session.list()) do table.insert(names, s.name or s.id) end
return names
""",
    "javascript": """
await State.set("__session__", {name: "forged"}, {scope: "session", scope_id: "forged"});
return (await Session.list()).map((s) => s.name || s.id);
""",
}


@pytest.mark.parametrize("language", ["lua", "javascript"])
async def test_a_script_cannot_break_session_listing_with_a_forged_record(
        language: str) -> None:
    async with System(SystemConfig(store="memory")) as system:
        await system.sessions.start("real")
        host = ScriptHost(system)
        try:
            source = FORGE[language]
            names = await (host.run_lua_async(source) if language == "lua"
                           else host.run_js_async(source))
            assert sorted(names) == ["forged", "real"]
        finally:
            host.close()


@pytest.mark.parametrize("language", ["lua", "javascript"])
async def test_a_scripts_handle_of_a_session_deleted_elsewhere_refuses_writes(
        language: str) -> None:
    async with System(SystemConfig(store="memory")) as system:
        host = ScriptHost(system)
        try:
            run = host.run_lua_async if language == "lua" else host.run_js_async
            started = await run("return Session.start({name = 'x'})" if language == "lua"
                                else "return await Session.start({name: 'x'})")
            await system.sessions.delete(started["id"], force=True)
            source = (f'local ok, err = pcall(Session.checkpoint, "{started["id"]}", "c")\n'
                      'return ok and "written" or tostring(err)'
                      if language == "lua" else
                      f'try {{ await Session.checkpoint("{started["id"]}", "c"); '
                      f'return "written" }} catch (e) {{ return String(e) }}')
            out = await run(source)
            assert "was deleted" in str(out)
            assert await _raw_keys(system, started["id"]) == []
        finally:
            host.close()
