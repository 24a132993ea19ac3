"""State reads are part of a run's recording: inside a recorded run each read keeps what
the state answered, an exact replay is served that answer (so a run that read a key changed
since, its own counter included, replays without diverging), a what-if reads the recording
before its change point and its own state after it, and older recordings (no reads kept)
still replay, reading state live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.runs import lifecycle
from llmspell.runtime.runs.scope import StepFrame
from llmspell.scripting import ScriptHost

SYSTEM: list[System] = []
WHICH = ["a"]


@tool()
async def lookup(name: str) -> dict[str, Any]:
    """Reads a state key in its own code (a replay serving the call does not run it)."""
    value = await SYSTEM[0].state.get(name)
    return {"name": name, "value": value}


async def _started(config: SystemConfig) -> System:
    system = System(config)
    await system.start()
    system.tools.register(lookup)
    SYSTEM[:] = [system]
    return system


@pytest.fixture
async def system() -> AsyncIterator[System]:
    sys = await _started(SystemConfig(store="memory"))
    yield sys
    await sys.shutdown()


@pytest.fixture
async def sqlite_system(tmp_path: Path) -> AsyncIterator[System]:
    sys = await _started(SystemConfig(store="sqlite", data_dir=str(tmp_path)))
    yield sys
    await sys.shutdown()


def counter_op(system: System) -> Any:
    async def count(_: Any) -> int:
        old = await system.state.get("counter", default=0)
        await system.state.set("counter", old + 1)
        return int(old) + 1
    return count


async def _record(system: System, op: Any, name: str = "job") -> str:
    async with system.runs.start("job", name, None) as run:
        run.output = await op(None)
    return run.run_id


async def _a_run_that_increments_its_own_counter_replays_exactly(system: System) -> None:
    await system.state.set("counter", 4)
    op = counter_op(system)
    run_id = await _record(system, op)
    assert await system.state.get("counter") == 5

    replay = await system.runs.replay(run_id, operation=op)
    assert replay.status == "completed" and not replay.diverged, replay.divergences
    assert replay.output == 5  # read 4, as the run did (live now says 5)
    assert await system.state.get("counter") == 5  # the replay's write stayed its own
    again = await system.runs.replay(run_id, operation=op)
    assert not again.diverged and again.output == 5


async def test_a_run_that_increments_its_own_counter_replays_exactly(system: System) -> None:
    await _a_run_that_increments_its_own_counter_replays_exactly(system)


async def test_the_counter_replays_exactly_on_sqlite(sqlite_system: System) -> None:
    await _a_run_that_increments_its_own_counter_replays_exactly(sqlite_system)


async def test_a_value_another_run_changed_is_served_as_the_run_read_it(
        system: System) -> None:
    await system.state.set("price", {"eur": 10})
    await system.state.set("a", 1, scope="agent", scope_id="bot")

    async def op(_: Any) -> Any:
        return {"price": await system.state.get("price"),
                "keys": await system.state.keys(),
                "snapshot": await system.state.snapshot("agent", "bot"),
                "scopes": await system.state.scopes("agent")}

    run_id = await _record(system, op)
    await system.state.set("price", {"eur": 99})  # other live writes since
    await system.state.set("extra", True)
    await system.state.set("b", 2, scope="agent", scope_id="bot")
    await system.state.set("c", 3, scope="agent", scope_id="other")

    replay = await system.runs.replay(run_id, operation=op)
    assert not replay.diverged, replay.divergences
    assert replay.output == {"price": {"eur": 10}, "keys": ["price"],
                             "snapshot": {"a": 1}, "scopes": ["bot"]}
    assert await system.state.get("price") == {"eur": 99}


async def test_a_versioned_write_after_a_served_read_goes_on_from_the_served_version(
        system: System) -> None:
    await system.state.set("seq", 1)

    async def op(_: Any) -> int:
        entry = await system.state.entry("seq")
        assert entry is not None
        written = await system.state.set("seq", entry.value + 1,
                                         expected_version=entry.version)
        return written.version

    run_id = await _record(system, op)
    await system.state.set("seq", 50)  # the live key moved on

    replay = await system.runs.replay(run_id, operation=op)
    assert replay.status == "completed", replay.error
    assert not replay.diverged and replay.output == 2


async def test_a_read_of_another_key_is_a_divergence_naming_it(system: System) -> None:
    await system.state.set("a", "A")
    await system.state.set("b", "B")

    async def op(_: Any) -> Any:
        return await system.state.get(WHICH[0])

    WHICH[0] = "a"
    run_id = await _record(system, op)
    WHICH[0] = "b"
    try:
        replay = await system.runs.replay(run_id, operation=op)
    finally:
        WHICH[0] = "a"
    reads = [d for d in replay.divergences if d.what == "state_read"]
    assert reads, replay.divergences
    assert "'a'" in reads[0].describe() and "'b'" in reads[0].describe()
    assert replay.output == "B"  # not served: read from the state


async def _what_if(system: System, edit: bool) -> list[Any]:
    await system.state.set("x", 1)

    async def op(_: Any) -> list[Any]:
        before = await system.state.get("x")
        await system.tools.execute("lookup", {"name": "unused"})
        after = await system.state.get("x")
        return [before, after]

    run_id = await _record(system, op, "whatif")
    await system.state.set("x", 5)
    tool_key = next(s.key for s in system.runs.recording(run_id).steps.values()
                    if s.kind == "tool")
    if edit:
        replay = await system.runs.replay(run_id, mode="what-if", operation=op,
                                          edits={tool_key: {"name": "unused"}})
    else:
        replay = await system.runs.replay(run_id, mode="what-if", operation=op)
    assert replay.status == "completed", replay.error
    assert isinstance(replay.output, list)
    return replay.output


async def test_a_what_if_is_served_reads_up_to_its_change_point(system: System) -> None:
    assert await _what_if(system, edit=False) == [1, 1]  # no change: all served
    assert await _what_if(system, edit=True) == [1, 5]  # after the edit: its own state


async def test_reads_in_a_served_call_are_not_missing(system: System) -> None:
    await system.state.set("x", "then")

    async def op(_: Any) -> Any:
        return await system.tools.execute("lookup", {"name": "x"})

    run_id = await _record(system, op)
    recording = system.runs.recording(run_id)
    tool_step = next(s for s in recording.steps.values() if s.kind == "tool")
    assert [(r.op, r.key, r.in_call) for r in tool_step.reads] == [("get", "x", True)]
    await system.state.set("x", "now")
    replay = await system.runs.replay(run_id, operation=op)
    assert not replay.diverged, replay.divergences


async def test_recorded_reads_are_masked(system: System) -> None:
    await system.state.set("api_key", "sk-live-0123456789abcdef0123456789")

    async def op(_: Any) -> Any:
        value = await system.state.get("api_key")
        return len(value)

    run_id = await _record(system, op)
    root = system.runs.recording(run_id).steps[""]
    assert root.reads and root.reads[0].key == "api_key"
    assert "0123456789abcdef" not in repr(root.reads[0].result)


async def test_withheld_reads_are_read_live_with_a_note() -> None:
    system = await _started(SystemConfig(store="memory", record_content="none"))
    try:
        await system.state.set("n", 1)

        async def op(_: Any) -> Any:
            return await system.state.get("n")

        run_id = await _record(system, op)
        root = system.runs.recording(run_id).steps[""]
        assert root.reads and root.reads[0].withheld and root.reads[0].result is None
        await system.state.set("n", 2)
        replay = await system.runs.replay(run_id, operation=op)
        assert replay.status == "completed", replay.error
        assert replay.notes and "'n'" in replay.notes[0]
        assert not any(d.what == "state_read" for d in replay.divergences)
    finally:
        await system.shutdown()


async def test_an_older_recording_without_reads_replays_reading_live(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    # Record as an llmspell from before reads were recorded: no reads, no version field.
    monkeypatch.setattr(lifecycle, "STATE_READS_VERSION", 0)
    monkeypatch.setattr(StepFrame, "note_read", lambda *args: None)
    await system.state.set("counter", 4)
    op = counter_op(system)
    run_id = await _record(system, op)
    monkeypatch.undo()
    recording = system.runs.recording(run_id)
    assert recording.started.state_reads == 0
    assert not any(step.reads for step in recording.steps.values())

    replay = await system.runs.replay(run_id, operation=op)
    assert replay.status == "completed", replay.error
    assert replay.output == 6  # read live (5), as before
    assert not any(d.what == "state_read" for d in replay.divergences)
    assert [d.what for d in replay.divergences] == ["output"]


async def test_a_replayed_script_reading_its_own_counter_does_not_diverge(
        system: System) -> None:
    host = ScriptHost(system)
    source = ('local old = State.get("counter") or 0\n'
              'State.set("counter", old + 1)\n'
              'return old + 1')
    assert await host.run_lua_async(source, name="count.lua") == 1
    host.close()
    run_id = system.runs.list(limit=1)[0].run_id
    assert await system.state.get("counter") == 1

    replay = await system.runs.replay(run_id)
    assert replay.status == "completed", replay.error
    assert not replay.diverged, replay.divergences
    assert replay.output == 1
