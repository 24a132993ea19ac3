"""Runs: error messages in a recording follow ``record_content`` like other recorded values
(masked, type only under ``none``) and replay unchanged; every record carries its
recording version, a record without one reads as version 1."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.errors import RecordingError, ToolError, ToolExecutionError
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.content import mask_value
from llmspell.runtime.runs.records import RECORDING_VERSION, decode_started, decode_step
from llmspell.runtime.runs.replay import recorded_error

KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2"
TOKEN = "Bearer " + "eyJhbGciOiJIUzI1NiJ9abcdefgh"


@tool()
def leaky(city: str) -> str:
    """Fails quoting a credential."""
    raise RuntimeError(f"failed with key {KEY} for {city}")


async def failed_run(system: System) -> str:
    system.tools.register(leaky)
    with pytest.raises(ToolExecutionError):
        async with system.runs.start("job", "leak") as run:
            await system.tools.execute("leaky", {"city": "Oslo"})
    return run.run_id


def stored(system: System, run_id: str) -> str:
    return str(system.store.query(run_id=run_id))  # type: ignore[union-attr]


def errors_of(system: System, run_id: str) -> list[dict[str, str]]:
    recording = system.runs.recording(run_id)
    found: list[dict[str, str]] = []
    for step in recording.ordered:
        found += [a.error for a in step.attempts if a.error is not None]
        if step.error is not None:
            found.append(step.error)
    assert recording.ended is not None and recording.ended.error is not None
    return [*found, recording.ended.error]


async def test_masked_recording_masks_error_messages_and_replays_exactly() -> None:
    system = System(SystemConfig(store="memory"))
    await system.start()
    run_id = await failed_run(system)
    errors = errors_of(system, run_id)
    assert len(errors) == 4  # the attempt's, the tool step's, the run's, run.failed's
    for error in errors:
        assert error["type"] == "ToolExecutionError"
        assert "failed with key ***" in error["message"] and error["attr:tool"] == "leaky"
    assert KEY not in stored(system, run_id)
    assert KEY not in str(system.runs.get(run_id).error)

    async def again(_: Any) -> None:
        await system.tools.execute("leaky", {"city": "Oslo"})

    result = await system.runs.replay(run_id, operation=again)
    assert result.status == "failed" and result.error is not None
    assert result.error["type"] == "ToolExecutionError"
    assert not result.diverged, result.divergences
    assert KEY not in stored(system, result.run_id)
    diff = system.runs.diff(run_id, result.run_id)
    assert not any("error" in step.changes for step in diff.steps), diff.steps
    await system.shutdown()


async def test_none_keeps_only_the_error_type_and_full_keeps_it_verbatim() -> None:
    system = System(SystemConfig(store="memory", record_content="none"))
    await system.start()
    run_id = await failed_run(system)
    assert all(e == {"type": "ToolExecutionError"} for e in errors_of(system, run_id))
    assert KEY not in stored(system, run_id)
    await system.shutdown()

    system = System(SystemConfig(store="memory", record_content="full"))
    await system.start()
    run_id = await failed_run(system)
    assert all(KEY in e["message"] for e in errors_of(system, run_id))
    await system.shutdown()


async def test_a_failed_hooks_error_is_masked_at_level_full() -> None:
    system = System(SystemConfig(store="memory", record="full"))
    await system.start()

    def broken_hook(ctx: Any) -> None:
        raise RuntimeError(f"auth {TOKEN}")

    system.registry.register("BeforeToolExecution", broken_hook, name="broken")

    @tool()
    def fine(city: str) -> str:
        """Works."""
        return city

    system.tools.register(fine)
    async with system.runs.start("job", "hooked") as run:
        await system.tools.execute("fine", {"city": "Oslo"})
    step = next(s for s in system.runs.recording(run.run_id).ordered if s.kind == "tool")
    failed = [h for h in step.hooks if h.kind == "error"]
    assert failed and all(h.error == "RuntimeError: auth ***" for h in failed)
    assert "eyJhbGci" not in stored(system, run.run_id)
    await system.shutdown()


def test_an_llmspell_errors_hint_and_sensitive_attributes_are_masked() -> None:
    hint = f"use password={KEY}"
    raised = ToolError("x", f"refused {TOKEN}", hint=hint)
    raised.token = "opaque-value"  # type: ignore[attr-defined]
    from llmspell.runtime.runs.scope import error_dict, kept_error

    kept = kept_error(error_dict(raised), mask_value, True)
    assert kept is not None
    assert KEY not in str(kept) and "eyJhbGci" not in str(kept)
    assert kept["attr:token"] == "***"
    again = recorded_error(kept)
    assert type(again) is ToolError
    assert again.hint == "use ***" and "refused ***" in str(again)
    assert str(again).count("(use ***)") == 1  # the hint parted from the message, as raised
    assert kept_error(error_dict(raised), mask_value, False) == {"type": "ToolError"}
    assert kept_error(error_dict(raised), None, True) == error_dict(raised)


async def test_every_new_record_carries_its_recording_version() -> None:
    system = System(SystemConfig(store="memory"))
    await system.start()
    run_id = await failed_run(system)
    events = system.store.query(run_id=run_id)  # type: ignore[union-attr]
    started = [e.data for e in events if e.event_type == "run.started"]
    steps = [s for e in events if e.event_type == "run.steps" for s in e.data["steps"]]
    assert started and all(d["version"] == RECORDING_VERSION for d in started)
    assert steps and all(s["version"] == RECORDING_VERSION for s in steps)
    await system.shutdown()


def test_a_record_without_a_version_reads_as_version_1_and_a_newer_one_is_refused() -> None:
    step = {"key": "tool:t#0", "index": 1, "kind": "tool", "name": "t",
            "input_digest": "0", "started": 0.0}
    assert decode_step(step, "r").version == 1
    start = {"run_id": "r", "kind": "job", "name": "n", "level": "decisions",
             "root_run_id": "r"}
    assert decode_started(start, "r").version == 1
    assert decode_step({**step, "version": RECORDING_VERSION}, "r").version == RECORDING_VERSION
    with pytest.raises(RecordingError, match="newer llmspell"):
        decode_step({**step, "version": RECORDING_VERSION + 1}, "r")
    with pytest.raises(RecordingError, match="newer llmspell"):
        decode_started({**start, "version": RECORDING_VERSION + 1}, "r")


async def test_an_old_recording_without_versions_still_replays() -> None:
    """A recording whose records lack the version field (made before it was written)
    loads and replays exactly."""
    system = System(SystemConfig(store="memory"))
    await system.start()
    run_id = await failed_run(system)
    for event in system.store.query(run_id=run_id):  # type: ignore[union-attr]
        if event.event_type == "run.started":
            event.data.pop("version")
        elif event.event_type == "run.steps":
            for step in event.data["steps"]:
                step.pop("version")
    assert "'version'" not in str([e.data for e in system.store.query(  # type: ignore[union-attr]
        run_id=run_id) if e.event_type in ("run.started", "run.steps")])
    assert system.runs.recording(run_id).started.version == 1

    async def again(_: Any) -> None:
        await system.tools.execute("leaky", {"city": "Oslo"})

    result = await system.runs.replay(run_id, operation=again)
    assert not result.diverged, result.divergences
    await system.shutdown()
