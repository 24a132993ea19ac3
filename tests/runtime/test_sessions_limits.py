"""Limits of sessions: a name that is not text, a state quota, the checkpoint cap and a
session deleted by another process are all refused before any session hook fires and
before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import ConfigurationError, SessionError, StateQuotaExceededError
from llmspell.hooks import HookPoint
from llmspell.runtime import System, SystemConfig, load_config
from llmspell.runtime.sessions import SESSION_KEY
from llmspell.runtime.state.memory import MemoryStateBackend
from llmspell.runtime.state.quota import QuotaStateBackend

pytestmark = pytest.mark.asyncio

_WATCHED = (HookPoint.SESSION_START, HookPoint.SESSION_SAVE, HookPoint.SESSION_END,
            HookPoint.SESSION_CHECKPOINT, HookPoint.SESSION_RESTORE,
            HookPoint.BEFORE_STATE_WRITE)


def _watch(system: System) -> list[HookPoint]:
    fired: list[HookPoint] = []
    for point in _WATCHED:
        system.registry.register(point, lambda ctx, p=point: fired.append(p),
                                 name=f"watch-{point.value}")
    return fired


async def _raw_keys(system: System, session_id: str) -> list[str]:
    keys: list[str] = await system.state.keys("session", session_id, include_reserved=True)
    return keys


# -- 1. a name that is not text ------------------------------------------------------------

@pytest.mark.parametrize("write", ["save", "end"])
@pytest.mark.parametrize("name", [5, b"chat", ["chat"], 1.5])
async def test_a_name_that_is_not_a_string_is_refused_before_save_and_end_hooks(
        write: str, name: Any) -> None:
    async with System(SystemConfig(store="memory")) as system:
        session = await system.sessions.start("chat", {"user": "ada"})
        fired = _watch(system)
        session.name = name
        with pytest.raises(SessionError, match="session name must be a string") as refused:
            await getattr(session, write)()
        assert refused.value.hint
        assert fired == [] and session.active
        stored = await system.sessions.load(session.id)
        assert (stored.name, stored.status) == ("chat", "active")
        session.name = None  # no name is fine
        await getattr(session, write)()
        assert (await system.sessions.load(session.id)).name is None


# -- 2. a state quota refuses before the hooks ---------------------------------------------

def _quota_system(max_bytes: int) -> System:
    return System(SystemConfig(store="memory"),
                  state_backend=QuotaStateBackend(MemoryStateBackend(), max_bytes))


async def test_start_over_the_state_quota_is_refused_before_session_start() -> None:
    async with _quota_system(2_000) as system:
        fired = _watch(system)
        with pytest.raises(StateQuotaExceededError) as refused:
            await system.sessions.start("chat", {"notes": "x" * 3_000})
        assert refused.value.hint
        assert fired == [] and await system.state.scopes("session") == []


async def test_save_over_the_state_quota_is_refused_before_session_save() -> None:
    async with _quota_system(2_000) as system:
        session = await system.sessions.start("chat", {"user": "ada"})
        fired = _watch(system)
        session.metadata["notes"] = "x" * 3_000
        with pytest.raises(StateQuotaExceededError):
            await session.save()
        assert fired == []
        assert (await system.sessions.load(session.id)).metadata == {"user": "ada"}
        session.metadata = {"user": "ada", "tier": "gold"}
        await session.save()  # the object is still usable


async def test_a_checkpoint_over_the_state_quota_is_refused_before_its_hooks() -> None:
    async with _quota_system(3_000) as system:
        session = await system.sessions.start("chat")
        await session.set("big", "x" * 1_800)  # fits, but a copy of it does not
        fired = _watch(system)
        with pytest.raises(StateQuotaExceededError):
            await session.checkpoint("a")
        assert fired == [] and await session.checkpoints() == []


async def test_a_restore_over_the_state_quota_is_refused_before_its_hooks() -> None:
    async with _quota_system(3_000) as system:
        session = await system.sessions.start("chat")
        await session.set("big", "x" * 1_000)
        await session.checkpoint("a")
        await session.delete("big")
        await session.set("small", 1)
        await system.state.set("other", "y" * 1_400)  # the quota fills up elsewhere
        fired = _watch(system)
        with pytest.raises(StateQuotaExceededError):
            await session.restore("a")
        assert fired == []
        assert await session.snapshot() == {"small": 1}  # nothing was cleared


# -- 3. the checkpoint cap -----------------------------------------------------------------

async def test_a_session_keeps_at_most_session_max_checkpoints() -> None:
    async with System(SystemConfig(store="memory", session_max_checkpoints=3)) as system:
        session = await system.sessions.start("chat")
        await session.set("step", 1)
        for label in ("a", "b", "c"):
            await session.checkpoint(label)
        fired = _watch(system)
        with pytest.raises(SessionError, match="3 checkpoints") as refused:
            await session.checkpoint("d")
        assert "session_max_checkpoints" in (refused.value.hint or "")
        with pytest.raises(SessionError, match="3 checkpoints"):
            await session.checkpoint()  # a new id is a new checkpoint too
        assert fired == [] and await session.checkpoints() == ["a", "b", "c"]
        await session.set("step", 2)
        await session.checkpoint("b")  # an existing label replaces its checkpoint
        assert await session.checkpoints() == ["a", "c", "b"]
        other = await system.sessions.start("other")  # the cap is per session
        await other.checkpoint("a")


async def test_the_checkpoint_cap_is_a_checked_setting(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.delenv("LLMSPELL_SESSION_MAX_CHECKPOINTS", raising=False)
    assert SystemConfig().session_max_checkpoints == 1000
    file = tmp_path / "llmspell.toml"
    file.write_text("[llmspell]\nsession_max_checkpoints = 50\n", encoding="utf-8")
    assert load_config(file).session_max_checkpoints == 50
    monkeypatch.setenv("LLMSPELL_SESSION_MAX_CHECKPOINTS", "7")
    assert load_config(file).session_max_checkpoints == 7
    for bad in (0, -1, True, "many", 1.5):
        with pytest.raises(ConfigurationError, match="session_max_checkpoints") as info:
            SystemConfig(session_max_checkpoints=bad)
        assert info.value.hint


# -- 4. a session deleted by another process -----------------------------------------------

def _shared(tmp_path: Path) -> SystemConfig:
    return SystemConfig(store="sqlite", data_dir=tmp_path)


@pytest.mark.parametrize("write", ["set", "delete", "checkpoint", "restore"])
async def test_a_write_through_another_process_s_handle_of_a_deleted_session_is_refused(
        tmp_path: Path, write: str) -> None:
    async with System(_shared(tmp_path)) as one, System(_shared(tmp_path)) as two:
        session = await one.sessions.start("chat")
        await session.set("step", 1)
        await session.checkpoint("a")
        handle = await two.sessions.load(session.id)  # "another process": its own manager
        await one.sessions.delete(session.id, force=True)
        fired = _watch(two)
        calls = {"set": lambda: handle.set("step", 2), "delete": lambda: handle.delete("step"),
                 "checkpoint": lambda: handle.checkpoint("b"),
                 "restore": lambda: handle.restore("a")}
        with pytest.raises(SessionError, match="was deleted") as refused:
            await calls[write]()
        assert refused.value.hint
        assert fired == [] and not handle.active
        assert await _raw_keys(one, session.id) == []
        assert await one.state.scopes("session") == []


async def test_a_state_write_racing_a_delete_in_another_process_leaves_nothing(
        tmp_path: Path) -> None:
    async with System(_shared(tmp_path)) as one, System(_shared(tmp_path)) as two:
        session = await one.sessions.start("chat")
        handle = await two.sessions.load(session.id)

        async def delete_meanwhile(ctx: Any) -> None:
            if ctx.data.get("key") == "step":
                await one.sessions.delete(session.id, force=True)

        two.registry.register(HookPoint.BEFORE_STATE_WRITE, delete_meanwhile, name="race")
        with pytest.raises(SessionError, match="was deleted"):
            await handle.set("step", 2)
        assert await one.state.scopes("session") == []


async def test_a_checkpoint_racing_a_delete_in_another_process_leaves_nothing(
        tmp_path: Path) -> None:
    async with System(_shared(tmp_path)) as one, System(_shared(tmp_path)) as two:
        session = await one.sessions.start("chat")
        await session.set("step", 1)
        handle = await two.sessions.load(session.id)

        async def delete_meanwhile(ctx: Any) -> None:
            await one.sessions.delete(session.id, force=True)

        two.registry.register(HookPoint.SESSION_CHECKPOINT, delete_meanwhile, name="race")
        with pytest.raises(SessionError, match="was deleted"):
            await handle.checkpoint("a")
        assert await one.state.scopes("session") == []
        assert SESSION_KEY not in await _raw_keys(two, session.id)


async def test_a_checkpoint_survives_a_save_through_another_process_meanwhile(
        tmp_path: Path) -> None:
    async with System(_shared(tmp_path)) as one, System(_shared(tmp_path)) as two:
        session = await one.sessions.start("chat")
        await session.set("step", 1)
        handle = await two.sessions.load(session.id)

        async def save_meanwhile(ctx: Any) -> None:
            session.metadata["by"] = "one"
            await session.save()

        two.registry.register(HookPoint.SESSION_CHECKPOINT, save_meanwhile, name="save")
        assert await handle.checkpoint("a") == "a"
        assert await (await one.sessions.load(session.id)).checkpoints() == ["a"]
