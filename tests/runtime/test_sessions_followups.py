"""Follow-ups of the sessions audit: input the store would refuse is refused before any
hook fires; saves and ends through two objects of one session never lose a change."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.errors import NotJsonSafeError, SessionError, StateError
from llmspell.hooks import HookPoint
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.sessions import SESSION_KEY

pytestmark = pytest.mark.asyncio

_SESSION_POINTS = (HookPoint.SESSION_START, HookPoint.SESSION_SAVE, HookPoint.SESSION_END,
                   HookPoint.SESSION_CHECKPOINT)


def _watch(system: System) -> list[HookPoint]:
    fired: list[HookPoint] = []
    for point in _SESSION_POINTS:
        system.registry.register(point, lambda ctx, p=point: fired.append(p),
                                 name=f"watch-{point.value}")
    return fired


# -- input refused before the hooks --------------------------------------------------------

@pytest.mark.parametrize(("name", "metadata", "path"), [
    ("chat\ud800", None, f"{SESSION_KEY}.name"),
    ("chat", {"user": "ada\udc80"}, f"{SESSION_KEY}.metadata.user"),
    ("chat", {"\udfff": 1}, f"{SESSION_KEY}.metadata (a key)"),
])
async def test_start_refuses_a_lone_surrogate_before_session_start_fires(
        name: str, metadata: dict[str, Any] | None, path: str) -> None:
    async with System(SystemConfig(store="memory")) as system:
        fired = _watch(system)
        with pytest.raises(NotJsonSafeError) as refused:
            await system.sessions.start(name, metadata)
        assert refused.value.path == path and refused.value.hint
        assert fired == []
        assert await system.state.scopes("session") == []


async def test_a_checkpoint_label_with_a_lone_surrogate_is_refused_before_the_hooks() -> None:
    async with System(SystemConfig(store="memory")) as system:
        session = await system.sessions.start("chat")
        fired = _watch(system)
        with pytest.raises(StateError, match="lone surrogate") as refused:
            await session.checkpoint("step\ud800")
        assert refused.value.hint
        assert fired == [] and await session.checkpoints() == []


@pytest.mark.parametrize("write", ["save", "end"])
@pytest.mark.parametrize(("field", "value", "error"), [
    ("name", "chat\ud800", NotJsonSafeError),
    ("metadata", {"tag": "x\udc00"}, NotJsonSafeError),
    ("metadata", {"pair": (1, 2)}, NotJsonSafeError),   # not JSON-safe at all
    ("metadata", "ada", SessionError),                   # not a dict
])
async def test_save_and_end_refuse_a_bad_record_before_their_hooks(
        write: str, field: str, value: Any, error: type[Exception]) -> None:
    async with System(SystemConfig(store="memory")) as system:
        session = await system.sessions.start("chat", {"user": "ada"})
        fired = _watch(system)
        setattr(session, field, value)
        with pytest.raises(error) as refused:
            await getattr(session, write)()
        assert refused.value.hint  # type: ignore[attr-defined]
        assert fired == []
        assert session.active  # end() refused: the object does not claim it ended
        stored = await system.sessions.load(session.id)
        assert (stored.name, stored.status, stored.metadata) == ("chat", "active",
                                                                 {"user": "ada"})


# -- two objects of one session ------------------------------------------------------------

async def test_a_save_through_a_stale_object_is_refused_instead_of_losing_a_change() -> None:
    async with System(SystemConfig(store="memory")) as system:
        first = await system.sessions.start("chat", {"user": "ada"})
        second = await system.sessions.load(first.id)
        first.metadata["tier"] = "gold"
        await first.save()
        fired = _watch(system)
        second.metadata["lang"] = "fr"
        with pytest.raises(SessionError, match="saved through another object") as refused:
            await second.save()
        assert "load" in (refused.value.hint or "")
        assert fired == []  # refused before SessionSave
        assert (await system.sessions.load(first.id)).metadata == {"user": "ada",
                                                                   "tier": "gold"}
        # the documented recovery: load again, reapply, save
        fresh = await system.sessions.load(first.id)
        fresh.metadata["lang"] = "fr"
        await fresh.save()
        assert (await system.sessions.load(first.id)).metadata == {
            "user": "ada", "tier": "gold", "lang": "fr"}
        # an object that wrote last saves again without reloading
        fresh.metadata["step"] = 2
        await fresh.save()
        await fresh.save()


async def test_an_end_through_a_stale_object_is_refused_and_the_session_stays_active(
        ) -> None:
    async with System(SystemConfig(store="memory")) as system:
        first = await system.sessions.start("chat")
        second = (await system.sessions.list())[0]
        first.metadata["tier"] = "gold"
        await first.save()
        fired = _watch(system)
        with pytest.raises(SessionError, match="saved through another object"):
            await second.end()
        assert fired == [] and second.active
        stored = await system.sessions.load(first.id)
        assert stored.status == "active" and stored.metadata == {"tier": "gold"}
        await first.end()  # the up-to-date object ends it
        ended = await system.sessions.load(first.id)
        assert ended.status == "ended" and ended.metadata == {"tier": "gold"}
        ended.metadata["summary"] = "done"
        await ended.save()  # an ended session's record can still be saved


async def test_a_save_racing_a_save_hook_is_refused_at_the_write() -> None:
    async with System(SystemConfig(store="memory")) as system:
        first = await system.sessions.start("chat")
        second = await system.sessions.load(first.id)

        async def meanwhile(ctx: Any) -> None:
            if ctx.data["metadata"].get("by") == "first":
                second.metadata["by"] = "second"
                await second.save()

        system.registry.register(HookPoint.SESSION_SAVE, meanwhile, name="meanwhile")
        first.metadata["by"] = "first"
        with pytest.raises(SessionError, match="saved through another object"):
            await first.save()
        assert (await system.sessions.load(first.id)).metadata == {"by": "second"}
