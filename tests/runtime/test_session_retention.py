"""The ``SessionDelete`` hook point (fired by ``delete()`` and per session by ``purge()``; a
``Cancel`` keeps the session) and configured retention (``SystemConfig.session_retention``):
a purge when the system starts and then on a period, in a task the system cancels on
shutdown, driven here by a ManualClock and a sleep the test releases."""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from llmspell.core.clock import ManualClock
from llmspell.errors import ConfigurationError, OperationCancelled, SessionError
from llmspell.events import UniversalEvent
from llmspell.hooks import Cancel, HookContext, HookPoint
from llmspell.hooks.points import parse_point
from llmspell.runtime import System, SystemConfig, load_config
from llmspell.runtime.sessions import (
    RETENTION_MAX_INTERVAL,
    RETENTION_MIN_INTERVAL,
    retention_interval,
)
from llmspell.runtime.state.memory import MemoryStateBackend

_TASK_NAME = "llmspell-session-retention"


def _deleted_events(system: System) -> list[UniversalEvent]:
    seen: list[UniversalEvent] = []
    system.bus.subscribe("session.deleted", seen.append)
    return seen


def _record_deletes(system: System, cancel: set[str] | None = None) -> list[dict[str, Any]]:
    """Record every SessionDelete context's data; Cancel for the sessions named in
    ``cancel``."""
    seen: list[dict[str, Any]] = []

    def hook(ctx: HookContext) -> Cancel | None:
        seen.append({**ctx.data, "_correlation": ctx.correlation_id,
                     "_component": ctx.component.type.value})
        if cancel and ctx.data["name"] in cancel:
            return Cancel(f"keep {ctx.data['name']}")
        return None

    system.registry.register("SessionDelete", hook, name="guard")  # PascalCase parses
    return seen


def _retention_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == _TASK_NAME]


class Ticker:
    """A sleep the test releases one wait at a time; each wait advances ``clock`` by the
    seconds asked for, as a real wait would."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.waits: list[float] = []
        self._asleep = asyncio.Event()
        self._wake = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self._asleep.set()
        await self._wake.wait()
        self._wake.clear()
        self.clock.advance(seconds)

    async def asleep(self) -> None:
        """Until the retention task waits (its purge, if any, is done)."""
        await asyncio.wait_for(self._asleep.wait(), 5)

    async def tick(self) -> None:
        """Let one wait end, and return once the purge after it is done."""
        await self.asleep()
        self._asleep.clear()
        self._wake.set()
        await self.asleep()


# -- SessionDelete -----------------------------------------------------------------------------
def test_session_delete_is_a_session_point_in_every_spelling() -> None:
    for spelling in ("SessionDelete", "session_delete", "SESSION_DELETE"):
        assert parse_point(spelling) is HookPoint.SESSION_DELETE
    assert HookPoint.SESSION_DELETE.value == "session_delete"
    assert HookPoint.SESSION_DELETE.pascal_name == "SessionDelete"
    assert HookPoint.SESSION_DELETE.category == "session"


async def test_delete_fires_session_delete_and_a_cancel_keeps_the_session() -> None:
    async with System(SystemConfig(store="memory")) as system:
        seen = _record_deletes(system, cancel={"keep"})
        events = _deleted_events(system)
        keep = await system.sessions.start("keep")
        await keep.set("k", 1)
        await keep.end()
        with pytest.raises(OperationCancelled) as info:
            await system.sessions.delete(keep)
        assert info.value.point == "session_delete"
        assert "keep keep" in str(info.value) and info.value.hook == "guard"
        assert [s.id for s in await system.sessions.list()] == [keep.id]
        assert await (await system.sessions.load(keep.id)).get("k") == 1
        assert events == []

        live = await system.sessions.start("live")
        with pytest.raises(SessionError, match="still active"):  # refused before any hook
            await system.sessions.delete(live)
        with pytest.raises(SessionError, match="no saved session"):
            await system.sessions.delete("nope")
        assert [d["session_id"] for d in seen] == [keep.id]
        await system.sessions.delete(live.id, force=True)
        assert [s.id for s in await system.sessions.list()] == [keep.id]
        assert seen[-1] == {"session_id": live.id, "name": "live", "status": "active",
                            "purged": False, "force": True, "_correlation": live.id,
                            "_component": "session"}
        assert seen[0] == {"session_id": keep.id, "name": "keep", "status": "ended",
                           "purged": False, "force": False, "_correlation": keep.id,
                           "_component": "session"}
        assert [e.data["session_id"] for e in events] == [live.id]


async def test_purge_skips_a_cancelled_session_and_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    async with System(SystemConfig(store="memory")) as system:
        clock = system.sessions.clock = ManualClock()
        seen = _record_deletes(system, cancel={"b"})
        events = _deleted_events(system)
        for name in ("a", "b", "c"):
            session = await system.sessions.start(name)
            await session.end()
        await system.sessions.start("live")
        clock.advance(10)
        with caplog.at_level(logging.WARNING, logger="llmspell.sessions"):
            assert await system.sessions.purge(5) == 2  # b is kept and not counted
        assert sorted(s.name or "" for s in await system.sessions.list()) == ["b", "live"]
        assert [(d["name"], d["purged"], d["force"], d["status"]) for d in seen] == [
            ("a", True, False, "ended"), ("b", True, False, "ended"),
            ("c", True, False, "ended")]
        assert [e.data["name"] for e in events] == ["a", "c"]
        warnings = [r for r in caplog.records if r.name == "llmspell.sessions"]
        assert len(warnings) == 1 and "keep b" in warnings[0].getMessage()
        assert warnings[0].levelno == logging.WARNING


# -- retention ---------------------------------------------------------------------------------
def test_the_interval_is_the_retention_within_bounds() -> None:
    assert retention_interval(100) == 100.0
    assert retention_interval(30 * 86400) == RETENTION_MAX_INTERVAL == 3600.0
    assert retention_interval(0.01) == RETENTION_MIN_INTERVAL == 1.0


async def test_retention_purges_at_start_and_on_the_period() -> None:
    backend = MemoryStateBackend()  # kept across the two systems (as a data directory is)
    clock = ManualClock()
    async with System(SystemConfig(store="memory"), state_backend=backend) as first:
        first.sessions.clock = clock
        old = await first.sessions.start("old")
        await old.set("k", 1)
        await old.end()
        clock.advance(50)
        recent = await first.sessions.start("recent")
        await recent.end()
        live = await first.sessions.start("live")
        assert first._retention_task is None  # no retention configured: no task
    clock.advance(60)  # ages: old 110 s, recent 60 s

    system = System(SystemConfig(store="memory", session_retention=100),
                    state_backend=backend)
    ticker = Ticker(clock)
    system.sessions.clock = clock
    system.sessions.sleep = ticker.sleep
    seen = _record_deletes(system)
    events = _deleted_events(system)
    await system.start()
    try:
        # at start, before start() returned
        assert sorted(s.name or "" for s in await system.sessions.list()) == ["live", "recent"]
        assert await system.state.keys("session", old.id, include_reserved=True) == []
        assert [(d["name"], d["purged"]) for d in seen] == [("old", True)]
        await ticker.asleep()
        assert ticker.waits == [100.0]
        assert len(_retention_tasks()) == 1

        await ticker.tick()  # 100 s later: recent is 160 s old
        assert [s.id for s in await system.sessions.list()] == [live.id]
        late = await system.sessions.start("late")
        await late.end()
        await ticker.tick()  # late is 100 s old: purged (the age is inclusive)
        assert [s.id for s in await system.sessions.list()] == [live.id]
        await ticker.tick()  # nothing left to purge; an active session is never purged
        assert [s.id for s in await system.sessions.list()] == [live.id]
        assert ticker.waits == [100.0] * 4
        assert [(e.data["name"], e.data["purged"]) for e in events] == [
            ("old", True), ("recent", True), ("late", True)]
    finally:
        await system.shutdown()
    assert system._retention_task is None
    assert _retention_tasks() == []


async def test_a_failed_purge_is_logged_and_the_task_goes_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    system = System(SystemConfig(store="memory", session_retention=10))
    ticker = Ticker(clock)
    system.sessions.clock = clock
    system.sessions.sleep = ticker.sleep
    original = system.sessions.purge
    failures = 2  # the purge at start and the first periodic one

    async def flaky(older_than: float) -> int:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("the state backend is down")
        return await original(older_than)

    monkeypatch.setattr(system.sessions, "purge", flaky)
    with caplog.at_level(logging.ERROR, logger="llmspell.sessions"):
        await system.start()  # the failed purge at start does not fail the start
        try:
            session = await system.sessions.start("s")
            await session.end()
            await ticker.tick()  # fails again, logged
            task = system._retention_task
            assert task is not None and not task.done()
            assert await system.sessions.list() != []
            await ticker.tick()  # works: s is 20 s old
            assert await system.sessions.list() == []
        finally:
            await system.shutdown()
    failed = [r for r in caplog.records if "retention purge" in r.getMessage()]
    assert len(failed) == 2 and all(r.exc_info for r in failed)
    assert _retention_tasks() == []


async def test_shutdown_cancels_a_purge_in_progress() -> None:
    clock = ManualClock()
    system = System(SystemConfig(store="memory", session_retention=5))
    ticker = Ticker(clock)
    system.sessions.clock = clock
    system.sessions.sleep = ticker.sleep
    await system.start()
    session = await system.sessions.start("s")
    await session.end()
    entered = asyncio.Event()

    async def stuck(ctx: HookContext) -> None:
        entered.set()
        await asyncio.Event().wait()  # never returns: the purge hangs here

    system.registry.register(HookPoint.SESSION_DELETE, stuck, name="stuck")
    await ticker.asleep()
    ticker._asleep.clear()
    ticker._wake.set()
    await asyncio.wait_for(entered.wait(), 5)
    task = system._retention_task
    assert task is not None and not task.done()
    await system.shutdown()
    assert task.cancelled() and system._retention_task is None
    assert _retention_tasks() == []


# -- the setting -------------------------------------------------------------------------------
@pytest.fixture
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSPELL_SESSION_RETENTION", raising=False)


@pytest.mark.usefixtures("_no_env")
def test_the_setting_takes_seconds_or_none(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    assert SystemConfig().session_retention is None
    assert SystemConfig(session_retention=86400).session_retention == 86400.0
    assert SystemConfig(session_retention="3600").session_retention == 3600.0  # type: ignore[arg-type]
    assert SystemConfig(session_retention=0.5).session_retention == 0.5
    file = tmp_path / "llmspell.toml"
    file.write_text("[llmspell]\nsession_retention = 7200\n", encoding="utf-8")
    assert load_config(file).session_retention == 7200.0
    monkeypatch.setenv("LLMSPELL_SESSION_RETENTION", " 60 ")
    assert load_config(file).session_retention == 60.0  # the environment wins over a file
    assert load_config(file, session_retention=5).session_retention == 5.0


@pytest.mark.parametrize("bad", [-1, 0, -0.0, math.nan, math.inf, -math.inf, True, False,
                                 "1d", "forever", [3600]])
@pytest.mark.usefixtures("_no_env")
def test_bad_values_raise_configuration_error(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="session_retention") as info:
        SystemConfig(session_retention=bad)
    assert info.value.hint and "seconds" in info.value.hint


@pytest.mark.parametrize("raw", ["nan", "-5", "0", "inf", "1e309", "a day", "true"])
def test_bad_environment_values_name_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                  raw: str) -> None:
    monkeypatch.setenv("LLMSPELL_SESSION_RETENTION", raw)
    with pytest.raises(ConfigurationError, match="LLMSPELL_SESSION_RETENTION") as info:
        load_config()
    assert info.value.hint and "seconds" in info.value.hint


@pytest.mark.usefixtures("_no_env")
def test_a_bad_file_value_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "llmspell.toml"
    file.write_text("session_retention = -3\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="session_retention") as info:
        load_config(file)
    assert str(file) in str(info.value) and info.value.hint
