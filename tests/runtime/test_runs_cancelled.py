"""A run whose task was cancelled (by its caller, a timeout around it, Ctrl-C) has its own
status, ``cancelled``: listed and filtered by it, shown as cancelled (not as an error), its
end event (``run.failed``) says so, the viewer's timeline shows it, and a replay of it ends
cancelled where the recording did, with no divergence. Records written before the status
existed (``failed`` with a ``CancelledError``) read as ``cancelled``. Every wait below ends
on an event (no sleeps)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from llmspell.cli import main
from llmspell.errors import RunError
from llmspell.events import UniversalEvent
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.config import load_config
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.workflows import Sequential, Step
from llmspell.viewer.summary import Summary
from tests.cli_helpers import isolated_data_dir

GUARD = 30.0  # a hang guard only: every wait below ends on an event


@pytest.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    yield sys
    await asyncio.wait_for(sys.shutdown(), GUARD)


@pytest.fixture
def events(system: System) -> list[UniversalEvent]:
    seen: list[UniversalEvent] = []
    system.bus.subscribe("**", seen.append)
    return seen


async def cancel_at(coro: Awaitable[Any], reached: asyncio.Event) -> None:
    task = asyncio.ensure_future(coro)
    await asyncio.wait_for(reached.wait(), GUARD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, GUARD)


async def cancelled_agent_run(system: System) -> str:
    """An agent run cancelled while its tool runs; its run id."""
    entered, release = asyncio.Event(), asyncio.Event()

    @tool()
    async def slow() -> str:
        """Waits for the test."""
        entered.set()
        await release.wait()
        return "ok"

    system.tools.register(slow)
    provider = ScriptedProvider([{"tool_calls": [{"name": "slow", "arguments": {}}]}, "x"])
    agent = system.agents.create("a1", provider=provider, tools=["slow"])
    await cancel_at(agent.run("go"), entered)
    release.set()
    [summary] = system.runs.list(kind="agent", name="a1")
    return summary.run_id


async def test_a_cancelled_agent_run_is_listed_and_shown_cancelled(
        system: System, events: list[UniversalEvent]) -> None:
    run_id = await cancelled_agent_run(system)
    summary = system.runs.get(run_id)
    assert summary.status == "cancelled"
    assert summary.error is not None and summary.error["type"] == "CancelledError"
    assert [r.run_id for r in system.runs.list(status="cancelled")] == [run_id]
    assert system.runs.list(status="failed") == []
    recording = system.runs.recording(run_id)
    assert recording.ended is not None and recording.ended.status == "cancelled"
    # The end event is still a run.failed (its subscribers see it), and says cancelled.
    [ended] = [e for e in events if e.event_type == "run.failed"]
    assert ended.data["status"] == "cancelled"


async def test_a_cancelled_workflow_run_is_cancelled(system: System) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def gate(ctx: Any) -> str:
        entered.set()
        await release.wait()
        return "late"

    wf = Sequential("w", [Step("first", fn=lambda ctx: "one"), Step("gate", fn=gate)])
    await cancel_at(wf.run(system), entered)
    [summary] = system.runs.list(kind="workflow", name="w")
    assert summary.status == "cancelled"
    assert system.runs.list(kind="workflow", status="cancelled")[0].run_id == summary.run_id


async def test_a_cancelled_script_run_is_cancelled_and_a_failed_one_stays_failed(
        system: System) -> None:
    entered = asyncio.Event()

    async def script() -> None:
        async with system.runs.start("script", "job.lua", ["1"]):
            entered.set()
            await asyncio.Event().wait()  # until cancelled

    await cancel_at(script(), entered)
    with pytest.raises(ValueError):
        async with system.runs.start("script", "broken.lua", []):
            raise ValueError("boom")
    statuses = {r.name: r.status for r in system.runs.list(kind="script")}
    assert statuses == {"job.lua": "cancelled", "broken.lua": "failed"}


async def test_an_old_record_failed_by_cancellation_reads_as_cancelled(system: System) -> None:
    run_id = await cancelled_agent_run(system)
    assert system.store is not None
    [ended] = [e for e in system.store.query(run_id=run_id) if e.event_type == "run.failed"]
    ended.data["status"] = "failed"  # as written before runs had a cancelled status
    assert system.runs.get(run_id).status == "cancelled"
    assert [r.run_id for r in system.runs.list(status="cancelled")] == [run_id]
    recording = system.runs.recording(run_id)
    assert recording.ended is not None and recording.ended.status == "cancelled"


async def test_an_unknown_status_is_a_typed_error_listing_the_statuses(
        system: System) -> None:
    with pytest.raises(RunError) as caught:
        system.runs.list(status="canceled")
    assert caught.value.hint is not None
    for status in ("completed", "failed", "cancelled", "running", "interrupted"):
        assert status in caught.value.hint


async def test_a_replay_of_a_cancelled_run_ends_cancelled_without_divergence(
        system: System) -> None:
    run_id = await cancelled_agent_run(system)
    result = await asyncio.wait_for(system.runs.replay(run_id), GUARD)
    assert result.status == "cancelled"
    assert result.error is not None and result.error["type"] == "CancelledError"
    assert not result.diverged, result.divergences
    assert any("cancelled" in note for note in result.notes), result.notes
    replays = [r for r in system.runs.list(kind="agent") if r.replay_of == run_id]
    assert replays and replays[0].status == "cancelled"


async def test_the_viewer_shows_a_cancelled_run_cancelled(
        system: System, events: list[UniversalEvent]) -> None:
    await cancelled_agent_run(system)
    await system.bus.drain()
    summary = Summary()
    for event in events:
        summary.observe(event)
    [run_id] = list(summary.runs)
    run = summary.run(run_id)
    assert run is not None and run["status"] == "cancelled"
    tools = [step for step in run["steps"] if step["kind"] == "tool"]
    assert tools and all(step["status"] == "cancelled" for step in tools)
    assert all(step["status"] != "failed" for step in run["steps"])


# -- the command line ---------------------------------------------------------------------

def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def record_cancelled(config: SystemConfig) -> str:
    system = System(config)
    await system.start()
    entered = asyncio.Event()

    async def script() -> None:
        async with system.runs.start("script", "job.lua", []):
            entered.set()
            await asyncio.Event().wait()  # until cancelled

    try:
        await cancel_at(script(), entered)
        return system.runs.list(limit=1)[0].run_id
    finally:
        await system.shutdown()


def test_the_command_lists_and_shows_a_cancelled_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    isolated_data_dir(tmp_path, monkeypatch)
    run_id = asyncio.run(record_cancelled(load_config(None)))

    code, out, err = cli(capsys, "runs", "list", "--json", "--status", "cancelled")
    assert code == 0, err
    [listed] = json.loads(out)
    assert listed["run_id"] == run_id and listed["status"] == "cancelled"

    code, out, err = cli(capsys, "runs", "show", run_id)
    assert code == 0, err
    lines = out.splitlines()
    assert "status     cancelled" in lines
    assert any(line.startswith("cancelled  ") for line in lines)
    assert not any(line.startswith("error ") for line in lines)

    code, out, err = cli(capsys, "runs", "show", "--json", run_id)
    assert code == 0, err
    assert json.loads(out)["run"]["status"] == "cancelled"


def test_the_command_refuses_an_unknown_status_listing_cancelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    isolated_data_dir(tmp_path, monkeypatch)
    code, _, err = cli(capsys, "runs", "list", "--status", "canceled")
    assert code == 2
    assert "cancelled" in err and "interrupted" in err
