"""Sessions: lifecycle and every session point, state, checkpoints, persistence across
systems, and the shared correlation id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmspell.core.errors import OperationCancelled, SessionError
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import Cancel, Modified
from llmspell.runtime import Session, SessionManager, StateScope, System, SystemConfig, tool
from llmspell.runtime.sessions import SESSION_KEY


@tool()
def double(x: int) -> int:
    """Double a number."""
    return 2 * x


@pytest.fixture
async def system() -> AsyncIterator[System]:
    sys_ = System(SystemConfig(store="memory"))
    await sys_.start()
    sys_.tools.register(double)
    yield sys_
    await sys_.shutdown()


def _record_all(system: System) -> list[tuple[str, dict[str, Any], str]]:
    seen: list[tuple[str, dict[str, Any], str]] = []
    for point in (HookPoint.SESSION_START, HookPoint.SESSION_END, HookPoint.SESSION_SAVE,
                  HookPoint.SESSION_CHECKPOINT, HookPoint.SESSION_RESTORE):
        system.registry.register(
            point, lambda ctx: seen.append((str(ctx.point), dict(ctx.data), ctx.correlation_id)),
            name=f"rec-{point}")
    return seen


async def test_lifecycle_fires_every_session_point(system: System) -> None:
    seen = _record_all(system)
    events: list[UniversalEvent] = []
    system.bus.subscribe("session.**", events.append)
    assert isinstance(system.sessions, SessionManager)
    session = await system.sessions.start("chat", metadata={"user": "ada"})
    assert isinstance(session, Session)
    assert session.status == "active" and session.active
    assert session.correlation_id == session.id and session.name == "chat"
    assert session.metadata == {"user": "ada"}
    await session.set("turns", 1)
    label = await session.checkpoint("one")
    assert label == "one"
    await session.set("turns", 2)
    await session.save()
    restored = await session.restore()
    assert restored == {"turns": 1}
    await session.end()
    assert session.status == "ended" and session.ended_at is not None
    points = [p for p, _, _ in seen]
    assert points == ["session_start", "session_checkpoint", "session_save",
                      "session_restore", "session_end"]
    assert all(corr == session.id for _, _, corr in seen)
    assert all(d["session_id"] == session.id for _, d, _ in seen)
    assert seen[0][1]["name"] == "chat" and seen[0][1]["metadata"] == {"user": "ada"}
    assert seen[1][1]["label"] == "one" and seen[1][1]["values"] == {"turns": 1}
    assert seen[3][1]["label"] == "one"
    types = [e.event_type for e in events]
    assert types == ["session.started", "session.checkpointed", "session.saved",
                     "session.restored", "session.ended"]
    assert all(e.metadata.correlation_id == session.id for e in events)
    with pytest.raises(SessionError, match="has ended"):
        await session.set("x", 1)
    with pytest.raises(SessionError, match="has ended"):
        await session.end()


async def test_start_cancel_vetoes_and_modified_changes(system: System) -> None:
    system.registry.register(
        HookPoint.SESSION_START,
        lambda ctx: Cancel("no anonymous sessions") if ctx.data["name"] is None
        else Modified({**ctx.data, "metadata": {**ctx.data["metadata"], "tenant": "t1"}}),
        name="policy")
    with pytest.raises(OperationCancelled, match="no anonymous sessions"):
        await system.sessions.start()
    assert await system.sessions.list() == []
    session = await system.sessions.start("named")
    assert session.metadata == {"tenant": "t1"}


async def test_restore_and_end_can_be_vetoed(system: System) -> None:
    session = await system.sessions.start("s")
    await session.set("a", 1)
    await session.checkpoint("c")
    await session.set("a", 2)
    system.registry.register(HookPoint.SESSION_RESTORE, lambda ctx: Cancel("frozen"),
                             name="freeze")
    with pytest.raises(OperationCancelled, match="frozen"):
        await session.restore("c")
    assert await session.get("a") == 2
    system.registry.register(HookPoint.SESSION_END, lambda ctx: Cancel("keep going"),
                             name="keep")
    with pytest.raises(OperationCancelled):
        await session.end()
    assert session.active


async def test_session_state_and_checkpoints(system: System) -> None:
    session = await system.sessions.start("s")
    await session.set("a", 1)
    await session.set("b", {"x": [1]})
    await session.checkpoint("first")
    await session.set("a", 10)
    await session.set("c", "new")
    await session.checkpoint("second")
    await session.delete("b")
    assert await session.checkpoints() == ["first", "second"]
    assert await session.snapshot() == {"a": 10, "c": "new"}
    assert await session.restore("first") == {"a": 1, "b": {"x": [1]}}
    assert await session.snapshot() == {"a": 1, "b": {"x": [1]}}
    assert await session.keys() == ["a", "b"]
    await session.restore()  # latest: "second", taken before "b" was deleted
    assert await session.snapshot() == {"a": 10, "b": {"x": [1]}, "c": "new"}
    # the state lives in the session scope; reserved keys stay out of the snapshot
    assert await system.state.get("a", scope="session", scope_id=session.id) == 10
    assert SESSION_KEY in await system.state.keys(StateScope.SESSION, session.id,
                                                  include_reserved=True)
    with pytest.raises(SessionError, match="no checkpoint 'nope'"):
        await session.restore("nope")
    other = await system.sessions.start("empty")
    with pytest.raises(SessionError, match="no checkpoint to restore"):
        await other.restore()
    assert await session.get("missing", "dflt") == "dflt"


async def test_state_hooks_under_a_session_share_its_correlation_id(system: System) -> None:
    seen: list[str] = []
    system.registry.register(HookPoint.BEFORE_STATE_WRITE,
                             lambda ctx: seen.append(ctx.correlation_id), name="rec")
    session = await system.sessions.start("s")
    await session.set("k", 1)
    assert seen == [session.id]


async def test_tool_events_under_the_session_context_share_its_id(system: System) -> None:
    seen_hooks: list[str] = []
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                             lambda ctx: seen_hooks.append(ctx.correlation_id), name="rec")
    session = await system.sessions.start("run")
    ctx = session.context()
    assert isinstance(ctx, HookContext)
    assert ctx.point == HookPoint.SESSION_START and ctx.component.type.value == "session"
    assert await system.tools.execute("double", {"x": 21}, parent=ctx) == 42
    await session.set("answer", 42)
    await session.end()
    await system.tools.execute("double", {"x": 1})  # outside the session
    assert seen_hooks[0] == session.id and seen_hooks[1] != session.id
    stored = await session.events()
    assert [e.id for e in stored] == [e.id for e in await system.sessions.events(session.id)]
    types = [e.event_type for e in stored]
    assert "session.started" in types and "session.ended" in types
    assert "tool.double.started" in types and "tool.double.completed" in types
    assert "state.session.changed" in types
    assert all(e.metadata.correlation_id == session.id for e in stored)
    assert types.count("tool.double.completed") == 1


async def test_list_and_load_from_a_new_system(tmp_path: Path) -> None:
    async with System(SystemConfig(data_dir=str(tmp_path))) as first:
        one = await first.sessions.start("one", metadata={"k": "v"})
        await one.set("progress", 3)
        await one.checkpoint("cp")
        await one.save()
        two = await first.sessions.start("two")
        await two.end()
        ids = (one.id, two.id)
    async with System(SystemConfig(data_dir=str(tmp_path))) as second:
        listed = await second.sessions.list()
        assert [s.id for s in listed] == list(ids)
        assert [s.status for s in listed] == ["active", "ended"]
        assert [s.id for s in await second.sessions.list(status="active")] == [ids[0]]
        loaded = await second.sessions.load(ids[0])
        assert loaded.name == "one" and loaded.metadata == {"k": "v"}
        assert await loaded.get("progress") == 3
        await loaded.set("progress", 4)
        await loaded.restore("cp")
        assert await loaded.get("progress") == 3
        events = await second.sessions.events(loaded)
        assert "session.started" in [e.event_type for e in events]  # from the first process
        with pytest.raises(SessionError, match="no saved session"):
            await second.sessions.load("unknown")


async def test_events_without_a_store_is_empty() -> None:
    async with System(SystemConfig(store="none")) as system:
        session = await system.sessions.start()
        assert await system.sessions.events(session) == []


async def test_bad_arguments(system: System) -> None:
    with pytest.raises(SessionError, match="name must be a string"):
        await system.sessions.start(3)  # type: ignore[arg-type]
    session = await system.sessions.start()
    with pytest.raises(SessionError, match="non-empty string"):
        await session.checkpoint("")
    with pytest.raises(SessionError, match="non-empty string"):
        await system.sessions.load("")
    with pytest.raises(SessionError, match="metadata must be a dict") as info:
        await system.sessions.start("x", metadata=["not", "a", "dict"])  # type: ignore[arg-type]
    assert info.value.hint
    await session.checkpoint("first")
    with pytest.raises(SessionError, match="label must be a non-empty string"):
        await session.restore(3)  # type: ignore[arg-type]
    with pytest.raises(SessionError, match="takes a Session or a session id"):
        await system.sessions.events(3)  # type: ignore[arg-type]
    assert repr(session).startswith("Session(id=")
