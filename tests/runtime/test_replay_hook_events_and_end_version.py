"""The ``hook.<point>`` events a replay publishes are marked as the replay's traffic the way
its other events are (the replay's run id, whose start record says ``replay_of``); and the
run's end record carries its recording version like the start and step records: one
without it reads as version 1, a newer one is refused with a typed error and a hint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmspell.errors import RecordingError
from llmspell.events.event import UniversalEvent
from llmspell.hooks import hook
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs.records import RECORDING_VERSION, decode_ended


@tool()
def weather(city: str) -> dict[str, str]:
    """Today's weather in a city."""
    return {"city": city, "sky": "rain"}


@pytest.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    sys.tools.register(weather)
    yield sys
    await sys.shutdown()


async def agent_run(system: System) -> str:
    system.agents.create("forecaster", tools=["weather"], provider=ScriptedProvider([
        {"tool_calls": [{"name": "weather", "arguments": {"city": "Bergen"}}]},
        "Rain in Bergen."]))
    await system.agents.get("forecaster").run("Umbrella in Bergen?")
    return system.runs.list(limit=1)[0].run_id


async def test_hook_events_of_a_replay_carry_the_replay_run_like_its_other_events(
        system: System) -> None:
    @hook("BeforeToolExecution", name="watch")
    def watch(ctx: Any) -> None:
        return None

    system.registry.register(watch)
    events: list[UniversalEvent] = []
    system.bus.subscribe("**", events.append, mode="inline")
    run_id = await agent_run(system)
    live = [e for e in events if e.event_type.startswith("hook.")]
    assert live and all(e.run_id == run_id for e in live)
    events.clear()

    replay = await system.runs.replay(run_id)
    assert replay.status == "completed" and not replay.diverged, replay.divergences
    hooks = [e for e in events if e.event_type == "hook.before_tool_execution"]
    others = [e for e in events if e.event_type.split(".")[0] in ("tool", "model", "agent")]
    assert hooks and others
    # Marked as the other events of the replay are: by the replay's run id (never the
    # replayed run's, never none), and the bus-replay flag left to bus.replay.
    assert {e.run_id for e in hooks} == {e.run_id for e in others} == {replay.run_id}
    assert not any(e.metadata.replayed for e in [*hooks, *others])
    assert system.runs.get(replay.run_id).replay_of == run_id
    assert not [e for e in events if e.event_type.startswith("hook.breaker.")]


async def test_the_end_record_carries_the_recording_version(system: System) -> None:
    run_id = await agent_run(system)
    ends = [e.data for e in system.store.query(run_id=run_id)  # type: ignore[union-attr]
            if e.event_type in ("run.completed", "run.failed")]
    assert ends and all(d["version"] == RECORDING_VERSION for d in ends)
    assert system.runs.recording(run_id).ended.version == RECORDING_VERSION  # type: ignore[union-attr]


def test_an_end_record_without_a_version_reads_as_1_and_a_newer_one_is_refused() -> None:
    end = {"run_id": "r", "status": "completed", "duration_ms": 1.0}
    assert decode_ended(end, "r").version == 1
    assert decode_ended({**end, "version": RECORDING_VERSION},
                        "r").version == RECORDING_VERSION
    with pytest.raises(RecordingError, match="newer llmspell") as raised:
        decode_ended({**end, "version": RECORDING_VERSION + 1}, "r")
    assert raised.value.hint and "upgrade" in raised.value.hint


async def test_stored_end_records_old_and_newer(system: System) -> None:
    run_id = await agent_run(system)
    end = next(e for e in system.store.query(run_id=run_id)  # type: ignore[union-attr]
               if e.event_type == "run.completed")
    end.data.pop("version")  # as written before the version was
    assert system.runs.get(run_id).status == "completed"
    assert system.runs.recording(run_id).ended.version == 1  # type: ignore[union-attr]
    replay = await system.runs.replay(run_id)
    assert not replay.diverged, replay.divergences

    end.data["version"] = RECORDING_VERSION + 1  # as a newer llmspell would write it
    with pytest.raises(RecordingError, match="newer llmspell"):
        system.runs.get(run_id)
    with pytest.raises(RecordingError, match="newer llmspell"):
        system.runs.recording(run_id)
    # The list leaves that run out rather than failing (as for a start record).
    listed = [r.run_id for r in system.runs.list(limit=50)]
    assert run_id not in listed and replay.run_id in listed
