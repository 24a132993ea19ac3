"""Deleting and purging sessions: what goes (record, checkpoints, state) and what stays
(every other scope, even with a prefix-sharing id), the active-session refusal and
``force``, stale handles, the ``session.deleted`` event, purging by age on an injected
clock, both state backends, and the Lua and JavaScript bindings."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import llmspell.runtime.sessions as sessions_module
from llmspell.core.clock import ManualClock
from llmspell.core.errors import ScriptError, SessionError
from llmspell.events import UniversalEvent
from llmspell.hooks.points import HookPoint
from llmspell.runtime import StateScope, System, SystemConfig
from llmspell.runtime.sessions import CHECKPOINT_PREFIX, SESSION_KEY
from llmspell.scripting import ScriptHost

_SCOPE = StateScope.SESSION


@pytest.fixture(params=["memory", "sqlite"])
async def system(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[System]:
    config = (SystemConfig(store="memory") if request.param == "memory"
              else SystemConfig(data_dir=str(tmp_path)))
    async with System(config) as sys_:
        sys_.sessions.clock = ManualClock()
        yield sys_


@pytest.fixture
def ids(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Session ids chosen by the test: start() takes the next one from this list."""
    chosen: list[str] = []
    fallback = itertools.count()
    monkeypatch.setattr(sessions_module, "new_id",
                        lambda: chosen.pop(0) if chosen else f"gen-{next(fallback)}")
    yield chosen


def _clock(system: System) -> ManualClock:
    clock = system.sessions.clock
    assert isinstance(clock, ManualClock)
    return clock


async def _raw_keys(system: System, session_id: str) -> list[str]:
    return await system.state.keys(_SCOPE, session_id, include_reserved=True)


def _deleted_events(system: System) -> list[UniversalEvent]:
    seen: list[UniversalEvent] = []
    system.bus.subscribe("session.deleted", seen.append)
    return seen


async def test_delete_removes_only_that_session_even_with_prefix_sharing_ids(
        system: System, ids: list[str]) -> None:
    ids.extend(["a", "a:b", "a_", "ab", "a%"])
    events = _deleted_events(system)
    sessions = {}
    for session_id in ("a", "a:b", "a_", "ab", "a%"):
        session = await system.sessions.start(f"name-{session_id}")
        assert session.id == session_id
        await session.set("k", session_id)
        await session.set("b", {"nested": session_id})
        await session.checkpoint("cp")
        await session.end()
        sessions[session_id] = session
    # state in the session scope that no session owns, and the same keys in other scopes
    await system.state.set("k", "loose", scope="session", scope_id="a:")
    await system.state.set("k", "agent", scope="agent", scope_id="a")
    await system.state.set("k", "global")
    before = {sid: await system.state.snapshot(_SCOPE, sid, include_reserved=True)
              for sid in ("a:b", "a_", "ab", "a%", "a:")}

    assert sorted(await _raw_keys(system, "a")) == sorted(
        ["b", "k", SESSION_KEY, CHECKPOINT_PREFIX + "cp"])
    await system.sessions.delete("a")

    assert await _raw_keys(system, "a") == []
    assert "a" not in await system.state.scopes(_SCOPE)
    with pytest.raises(SessionError, match="no saved session 'a'"):
        await system.sessions.load("a")
    assert [s.id for s in await system.sessions.list()] == sorted(["a:b", "a_", "ab", "a%"])
    for sid, snapshot in before.items():
        assert await system.state.snapshot(_SCOPE, sid, include_reserved=True) == snapshot
    assert await system.state.get("k", scope="agent", scope_id="a") == "agent"
    assert await system.state.get("k") == "global"
    loaded = await system.sessions.load("a:b")
    assert await loaded.get("k") == "a:b" and await loaded.checkpoints() == ["cp"]

    await system.sessions.delete(sessions["a:b"])  # a Session works as well as its id
    assert [s.id for s in await system.sessions.list()] == sorted(["a_", "ab", "a%"])
    assert await system.state.get("k", scope="session", scope_id="a:") == "loose"
    assert [(e.data["session_id"], e.data["name"], e.data["status"], e.data["purged"],
             e.metadata.correlation_id) for e in events] == [
        ("a", "name-a", "ended", False, "a"), ("a:b", "name-a:b", "ended", False, "a:b")]


async def test_an_active_session_is_refused_unless_forced(system: System) -> None:
    ended_hooks: list[str] = []
    system.registry.register(HookPoint.SESSION_END,
                             lambda ctx: ended_hooks.append(ctx.data["session_id"]),
                             name="rec-end")
    events = _deleted_events(system)
    session = await system.sessions.start("live")
    await session.set("work", 1)
    await session.checkpoint("cp")

    with pytest.raises(SessionError, match="still active") as info:
        await system.sessions.delete(session.id)
    assert info.value.hint and "end" in info.value.hint and "force=True" in info.value.hint
    assert session.active and await session.get("work") == 1
    assert await system.sessions.load(session.id) is not None
    assert events == []

    other = await system.sessions.start("other")
    await other.set("work", 2)
    await system.sessions.delete(session, force=True)
    assert ended_hooks == []  # forcing deletes; it does not end the session
    assert not session.active
    assert await _raw_keys(system, session.id) == []
    assert [(e.data["session_id"], e.data["status"]) for e in events] == [
        (session.id, "active")]
    assert await other.get("work") == 2 and other.active
    # the handle it was deleted through refuses to write anything back
    for write in (session.set("work", 3), session.checkpoint(), session.end()):
        with pytest.raises(SessionError, match="was deleted") as refused:
            await write
        assert refused.value.hint
    assert await _raw_keys(system, session.id) == []


async def test_a_stale_handle_cannot_bring_a_deleted_session_back(system: System) -> None:
    session = await system.sessions.start("s")
    stale = await system.sessions.load(session.id)
    await system.sessions.delete(session.id, force=True)
    assert stale.active  # it cannot know yet
    with pytest.raises(SessionError, match="was deleted"):
        await stale.save()
    assert not stale.active
    with pytest.raises(SessionError, match="was deleted"):
        await stale.set("x", 1)
    other_stale = await system.sessions.start("t")
    loaded = await system.sessions.load(other_stale.id)
    await system.sessions.delete(other_stale, force=True)
    with pytest.raises(SessionError, match="was deleted"):
        await loaded.end()  # SessionEnd ran, but no record is written again
    assert await system.sessions.list() == []
    assert await system.state.scopes(_SCOPE) == []


async def test_unknown_ids_and_bad_arguments(system: System) -> None:
    with pytest.raises(SessionError, match="no saved session 'nope'") as info:
        await system.sessions.delete("nope")
    assert info.value.hint and "list()" in info.value.hint
    session = await system.sessions.start("s")
    await session.end()
    await system.sessions.delete(session.id)
    with pytest.raises(SessionError, match="no saved session"):
        await system.sessions.delete(session.id)  # twice
    for bad in ("", 3, None):
        with pytest.raises(SessionError, match="takes a Session or a session id") as info:
            await system.sessions.delete(bad)  # type: ignore[arg-type]
        assert info.value.hint
    live = await system.sessions.start("live")
    with pytest.raises(SessionError, match="force must be True or False"):
        await system.sessions.delete(live, force="yes")  # type: ignore[arg-type]
    assert live.active and await system.sessions.load(live.id) is not None


async def test_state_in_the_session_scope_without_a_record_is_not_a_session(
        system: System) -> None:
    await system.state.set("k", 1, scope="session", scope_id="orphan")
    with pytest.raises(SessionError, match="no saved session 'orphan'"):
        await system.sessions.delete("orphan", force=True)
    assert await system.state.get("k", scope="session", scope_id="orphan") == 1
    assert await system.sessions.purge(0) == 0
    assert await system.state.get("k", scope="session", scope_id="orphan") == 1


async def test_purge_deletes_ended_sessions_older_than_the_duration(system: System) -> None:
    clock = _clock(system)
    events = _deleted_events(system)
    old = await system.sessions.start("old")
    await old.set("k", 1)
    await old.checkpoint("cp")
    await old.end()
    assert old.ended_at == clock.now()
    clock.advance(100)
    middle = await system.sessions.start("middle")
    await middle.end()
    idle = await system.sessions.start("idle-but-active")  # never purged, however old
    clock.advance(50)
    recent = await system.sessions.start("recent")
    await recent.end()
    clock.advance(10)
    # ages: old 160 s, middle 60 s, recent 10 s

    assert await system.sessions.purge(older_than=200) == 0
    assert await system.sessions.purge(older_than=timedelta(seconds=160)) == 1  # inclusive
    assert {s.name for s in await system.sessions.list()} == {"middle", "idle-but-active",
                                                             "recent"}
    assert await _raw_keys(system, old.id) == []
    assert await system.sessions.purge(older_than=30.5) == 1
    assert [s.name for s in await system.sessions.list()] == ["idle-but-active", "recent"]
    clock.advance(10_000)
    assert await system.sessions.purge(0) == 1
    assert [s.id for s in await system.sessions.list()] == [idle.id]
    assert await system.sessions.purge(0) == 0
    assert [(e.data["name"], e.data["purged"], e.data["status"]) for e in events] == [
        ("old", True, "ended"), ("middle", True, "ended"), ("recent", True, "ended")]
    with pytest.raises(SessionError, match="was deleted"):
        await old.save()


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "1d", True, None,
                                 timedelta(seconds=-5)])
async def test_purge_refuses_a_bad_duration(system: System, bad: Any) -> None:
    session = await system.sessions.start("s")
    await session.end()
    with pytest.raises(SessionError, match="older_than must be a duration") as info:
        await system.sessions.purge(bad)
    assert info.value.hint and "timedelta" in info.value.hint
    assert len(await system.sessions.list()) == 1


async def test_the_injected_clock_stamps_the_session(system: System) -> None:
    clock = _clock(system)
    session = await system.sessions.start("s")
    assert session.created_at == session.updated_at == clock.now()
    clock.advance(5)
    await session.end()
    assert session.ended_at == session.updated_at == clock.now()
    loaded = await system.sessions.load(session.id)
    assert (loaded.created_at, loaded.ended_at) == (clock.now() - 5, clock.now())


async def test_keys_written_while_deleting_go_too(system: System,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A key written by a handle of the session after the delete listed the scope, and a
    record changed between the read and the delete, are both handled."""
    session = await system.sessions.start("s")
    await session.set("k", 1)
    await session.end()
    keep = await system.sessions.start("keep")
    await keep.set("k", 2)
    original = system.state._apply
    calls = 0

    async def racing(sc: StateScope, scope_id: str, writes: Any, deletes: Any,
                     guard: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:  # the record is saved again meanwhile: the guard must catch it
            entry = await system.state._get_raw(sc, scope_id, SESSION_KEY)
            assert entry is not None
            await system.state._put_raw(sc, scope_id, SESSION_KEY, entry.value)
        if calls == 2:  # a late write lands after the keys were listed
            await system.state._put_raw(sc, scope_id, "late", "x")
        return await original(sc, scope_id, writes, deletes, guard)

    monkeypatch.setattr(system.state, "_apply", racing)
    await system.sessions.delete(session.id)
    assert calls == 3  # refused, done, then the late key swept
    assert await _raw_keys(system, session.id) == []
    assert await keep.get("k") == 2


async def test_sqlite_deletion_is_seen_by_a_new_process(tmp_path: Path) -> None:
    async with System(SystemConfig(data_dir=str(tmp_path))) as first:
        gone = await first.sessions.start("gone")
        await gone.set("k", 1)
        await gone.checkpoint("cp")
        await gone.end()
        kept = await first.sessions.start("kept")
        await kept.set("k", 2)
        await kept.end()
    async with System(SystemConfig(data_dir=str(tmp_path))) as second:
        await second.sessions.delete(gone.id)
    async with System(SystemConfig(data_dir=str(tmp_path))) as third:
        assert [s.id for s in await third.sessions.list()] == [kept.id]
        assert await third.state.scopes(_SCOPE) == [kept.id]
        assert sorted(await third.state.keys(_SCOPE, kept.id, include_reserved=True)) == \
            sorted(["k", SESSION_KEY])
        assert await third.sessions.purge(0) == 1
        assert await third.state.scopes(_SCOPE) == []


# -- scripts ---------------------------------------------------------------------------------
@pytest.fixture
async def host() -> AsyncIterator[ScriptHost]:
    async with System(SystemConfig(store="memory")) as system:
        system.sessions.clock = ManualClock()
        script_host = ScriptHost(system)
        yield script_host
        script_host.close()


async def test_lua_deletes_and_purges_sessions(host: ScriptHost) -> None:
    system = host.system
    out = await host.run_lua_async("""
      local live = Session.start({name = "live"})
      State.set("k", 1, {scope = "session", scope_id = live.id})
      local refused_ok, refused = pcall(Session.delete, live)
      local still = Session.get(live, "k")
      Session.delete(live, {force = true})
      local gone_ok, gone = pcall(Session.get, live.id)
      local done = Session.start({name = "done"})
      Session["end"](done)
      local kept = Session.start({name = "kept"})
      Session["end"](kept)
      Session.get(kept)  -- a cached handle: purging forgets it
      local none = Session.purge({older_than = 60})
      local purged = Session.purge(0)
      local kept_ok = pcall(Session.get, kept.id)
      return {refused_ok = refused_ok, refused = refused, still = still, gone_ok = gone_ok,
              gone = gone, none = none, purged = purged, left = #Session.list(),
              kept_ok = kept_ok}
    """)
    assert out["refused_ok"] is False and "still active" in out["refused"]
    assert 'Session["end"](s) first, or Session.delete(s, {force = true})' in out["refused"]
    assert out["still"] == 1
    assert out["gone_ok"] is False and "no saved session" in out["gone"]
    assert (out["none"], out["purged"], out["left"], out["kept_ok"]) == (0, 2, 0, False)
    assert await system.state.scopes(_SCOPE) == []


async def test_javascript_deletes_and_purges_sessions(host: ScriptHost) -> None:
    out = await host.run_js_async("""
      const s = await Session.start({name: "js"});
      let refused = "";
      try { await Session.delete(s); } catch (e) { refused = String(e); }
      await Session.end(s);
      const deleted = await Session.delete(s.id);
      let missing = "";
      try { await Session.delete(s); } catch (e) { missing = String(e); }
      const other = await Session.start({name: "other"});
      await Session.end(other);
      const purged = await Session.purge({older_than: 0});
      return {refused, deleted: deleted === undefined || deleted === null, missing, purged,
              left: (await Session.list()).length};
    """)
    assert "still active" in out["refused"]
    assert "await Session.end(s) first, or await Session.delete(s, {force: true})" in \
        out["refused"]
    assert out["deleted"] is True
    assert "no saved session" in out["missing"] and "await Session.list()" in out["missing"]
    assert (out["purged"], out["left"]) == (1, 0)


@pytest.mark.parametrize(("source", "message"), [
    ("Session.delete(5)", "not a session"),
    ("Session.delete('nope')", "no saved session"),
    ("Session.delete(Session.start(), 'force')", "options must be a table"),
    ("Session.delete(Session.start(), {force = 'yes'})", "force must be true or false"),
    ("Session.purge()", "needs older_than"),
    ("Session.purge({older_than = 'day'})", "needs older_than"),
    ("Session.purge(-5)", "older_than must be a duration"),
])
async def test_lua_bad_arguments_get_clear_errors(host: ScriptHost, source: str,
                                                  message: str) -> None:
    with pytest.raises(ScriptError, match=message):
        await host.run_lua_async(source)
