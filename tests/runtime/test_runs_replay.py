"""Runs: agent, workflow and script runs are recorded; replay serves tools and models from
the recording, reports divergences at the right step, and never repeats side effects."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import (
    InvalidValueError,
    RecordingError,
    ReplayError,
    RunNotFoundError,
)
from llmspell.hooks import Cancel, HookContext, Modified
from llmspell.runtime import SideEffect, System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs import run_random
from llmspell.runtime.workflows import Sequential, Step
from llmspell.scripting import ScriptHost

CALLS: list[tuple[str, Any]] = []


@tool()
def lookup(city: str) -> dict[str, Any]:
    """The weather in a city."""
    CALLS.append(("lookup", city))
    return {"city": city, "temp": 21}


@tool(side_effects=[SideEffect.FILE_WRITE])
def save(path: str, text: str) -> str:
    """Write text to a file."""
    CALLS.append(("save", path))
    Path(path).write_text(text)
    return f"wrote {len(text)} characters"


def provider_for(*replies: Any) -> ScriptedProvider:
    return ScriptedProvider(list(replies))


def unreachable(messages: Any, tools: Any) -> Any:
    raise AssertionError("a replay called the model provider")


@pytest.fixture
async def system() -> Any:
    CALLS.clear()
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    sys.tools.register_all([lookup, save])
    yield sys
    await sys.shutdown()


async def weather_run(system: System) -> str:
    provider = provider_for({"tool_calls": [{"name": "lookup", "arguments": {"city": "Oslo"}}]},
                            "It is 21 degrees in Oslo.")
    if "weather" in system.agents.names():
        system.agents.get("weather").provider = provider
    else:
        system.agents.create("weather", provider=provider, tools=["lookup"])
    response = await system.agents.get("weather").run("weather in Oslo?")
    assert response.output == "It is 21 degrees in Oslo."
    runs = system.runs.list()
    assert runs[0].kind == "agent" and runs[0].status == "completed"
    return runs[0].run_id


def offline(system: System, name: str) -> None:
    """Swap the agent's provider for one that fails if called."""
    system.agents.get(name).provider = ScriptedProvider(unreachable)


async def test_an_agent_run_is_recorded_and_listed(system: System) -> None:
    run_id = await weather_run(system)
    summary = system.runs.get(run_id)
    assert (summary.kind, summary.name, summary.status) == ("agent", "weather", "completed")
    assert summary.tool_calls == 1 and summary.model_calls == 2 and summary.pid > 0
    recording = system.runs.recording(run_id)
    kinds = [(s.kind, s.name) for s in recording.ordered if s.key]
    assert ("tool", "lookup") in kinds and ("model", "scripted/scripted") in kinds
    events = system.store.query(run_id=run_id)  # type: ignore[union-attr]
    assert any(e.event_type == "tool.lookup.completed" for e in events)


async def test_an_exact_replay_serves_every_call_from_the_recording(system: System) -> None:
    run_id = await weather_run(system)
    offline(system, "weather")
    CALLS.clear()
    result = await system.runs.replay(run_id)
    assert result.status == "completed", result.error
    assert result.output == "It is 21 degrees in Oslo."
    assert CALLS == [] and not result.diverged
    assert result.served == {"recording": 3}
    assert result.check() is result
    listed = system.runs.get(result.run_id)
    assert listed.replay_of == run_id and listed.mode == "exact"


async def test_a_removed_hook_shows_as_a_divergence_at_its_step(system: System) -> None:
    def shout(ctx: HookContext) -> Modified:
        return Modified({"result": {**ctx.data["result"], "temp": 99}})

    system.registry.register("AfterToolExecution", shout, name="shout", version="1")
    run_id = await weather_run(system)
    offline(system, "weather")
    result = await system.runs.replay(run_id, mode="what-if", remove_hooks=["shout"])
    first = result.first_divergence
    assert first is not None and first.what == "decision" and first.kind == "tool"
    assert first.point == "after_tool_execution" and first.hook == "shout"
    assert first.expected == "modified by 'shout'" and first.got == "not dispatched"
    assert not first.nondeterministic
    assert system.registry.list(enabled=True)[0].name == "shout"  # put back after


async def test_an_edited_tool_result_diverges_at_that_step(system: System) -> None:
    run_id = await weather_run(system)
    recording = system.runs.recording(run_id)
    tool_step = next(s for s in recording.ordered if s.kind == "tool")
    system.agents.get("weather").provider = provider_for("It is -5 degrees in Oslo.")
    result = await system.runs.replay(run_id, mode="what-if",
                                      edits={tool_step.index: {"city": "Oslo", "temp": -5}})
    assert result.first_divergence is not None
    assert result.first_divergence.what == "edited"
    assert result.first_divergence.key == tool_step.key
    assert result.output == "It is -5 degrees in Oslo."
    assert result.served["edited"] == 1 and result.served["live"] == 1
    assert CALLS == [("lookup", "Oslo")]  # only the original run called the tool


async def test_a_random_hook_is_flagged_nondeterministic(system: System) -> None:
    def coin(ctx: HookContext) -> Cancel | None:
        return Cancel("tails") if random.random() < 0.5 else None

    system.registry.register("BeforeToolExecution", coin, name="coin", version="2")
    system.agents.create("weather", provider=provider_for(
        {"tool_calls": [{"name": "lookup", "arguments": {"city": "Oslo"}}]}, "done"),
        tools=["lookup"])
    flagged = None
    for _ in range(40):
        random.seed(_)
        system.agents.get("weather").provider = provider_for(
            {"tool_calls": [{"name": "lookup", "arguments": {"city": "Oslo"}}]}, "done")
        await system.agents.get("weather").run("weather?")
        run_id = system.runs.list(limit=1)[0].run_id
        random.seed(10_000 + _)
        result = await system.runs.replay(run_id)
        decisions = [d for d in result.divergences if d.what == "decision"]
        if decisions:
            flagged = decisions[0]
            break
    assert flagged is not None and flagged.nondeterministic and flagged.hook == "coin"


async def test_a_hook_drawing_from_run_random_replays_the_same(system: System) -> None:
    def coin(ctx: HookContext) -> Cancel | None:
        return Cancel("tails") if run_random() < 0.5 else None

    system.registry.register("BeforeToolExecution", coin, name="coin")
    system.agents.create("weather", provider=provider_for(
        {"tool_calls": [{"name": "lookup", "arguments": {"city": "Oslo"}}]}, "done"),
        tools=["lookup"])
    for _ in range(8):
        system.agents.get("weather").provider = provider_for(
            {"tool_calls": [{"name": "lookup", "arguments": {"city": "Oslo"}}]}, "done")
        await system.agents.get("weather").run("weather?")
        run_id = system.runs.list(limit=1)[0].run_id
        offline(system, "weather")
        result = await system.runs.replay(run_id)
        assert not result.diverged, [d.describe() for d in result.divergences]


async def test_a_side_effecting_tool_is_not_executed_again(system: System,
                                                          tmp_path: Path) -> None:
    target = tmp_path / "note.txt"
    system.agents.create("scribe", provider=provider_for(
        {"tool_calls": [{"name": "save", "arguments": {"path": str(target),
                                                        "text": "hello"}}]}, "saved"),
        tools=["save"])
    await system.agents.get("scribe").run("save hello")
    run_id = system.runs.list(limit=1)[0].run_id
    target.unlink()
    CALLS.clear()
    offline(system, "scribe")
    exact = await system.runs.replay(run_id)
    # A what-if that changes the tool's input still does not write: the recording serves.
    system.agents.get("scribe").provider = ScriptedProvider(unreachable)
    what_if = await system.runs.replay(run_id, mode="what-if", after="live",
                                       input={"input": "save hello again"})
    assert exact.status == "completed" and exact.output == "saved"
    assert CALLS == [] and not target.exists()
    assert what_if.status == "failed" and "provider" in str(what_if.error)


async def test_a_workflow_run_replays_with_its_workflow(system: System) -> None:
    flow = Sequential("trip", [Step("weather", tool="lookup", params={"city": "Rome"}),
                               Step("again", tool="lookup", params={"city": "Oslo"})])
    await flow.run(system, {"who": "me"})
    run_id = system.runs.list(limit=1)[0].run_id
    assert system.runs.get(run_id).kind == "workflow"
    with pytest.raises(ReplayError, match="operation="):
        await system.runs.replay(run_id)
    CALLS.clear()
    result = await system.runs.replay(run_id, operation=flow)
    assert result.status == "completed" and not result.diverged and CALLS == []
    assert result.output["weather"] == {"city": "Rome", "temp": 21}


async def test_a_script_run_replays_from_its_recorded_source(system: System) -> None:
    host = ScriptHost(system)
    source = 'local r = Tool.invoke("lookup", {city = "Lima"}); return r.temp + 1'
    assert await host.run_lua_async(source, name="weather.lua") == 22
    host.close()
    run_id = system.runs.list(limit=1)[0].run_id
    summary = system.runs.get(run_id)
    assert (summary.kind, summary.name) == ("script", "weather.lua")
    CALLS.clear()
    result = await system.runs.replay(run_id)
    assert result.status == "completed" and result.output == 22
    assert CALLS == [] and not result.diverged


async def test_unknown_runs_and_bad_options_are_typed_errors(system: System) -> None:
    with pytest.raises(RunNotFoundError, match="no run 'nope'"):
        await system.runs.replay("nope")
    with pytest.raises(RunNotFoundError):
        system.runs.get("nope")
    run_id = await weather_run(system)
    with pytest.raises(InvalidValueError, match="mode"):
        await system.runs.replay(run_id, mode="rewind")
    with pytest.raises(InvalidValueError, match="what-if"):
        await system.runs.replay(run_id, input="changed")
    with pytest.raises(InvalidValueError, match="no step 99"):
        await system.runs.replay(run_id, mode="what-if", edits={99: "x"})


async def test_a_run_recorded_with_level_off_cannot_be_replayed() -> None:
    system = System(SystemConfig(store="memory", record="off"))
    system.tools.register(lookup)
    system.agents.create("weather", provider=provider_for("fine"))
    await system.agents.get("weather").run("hi")
    run_id = system.runs.list()[0].run_id
    with pytest.raises(RecordingError, match="recording off"):
        await system.runs.replay(run_id)
    await system.shutdown()


async def test_a_damaged_or_newer_recording_is_refused(system: System) -> None:
    run_id = await weather_run(system)
    system.bus.publish("run.steps", {"steps": [{"key": "x"}]})  # no run id: ignored
    store = system.store
    assert store is not None
    from llmspell.core.run_scope import enter_run_id, leave_run_id
    token = enter_run_id(run_id)
    try:
        system.bus.publish("run.steps", {"steps": [{"key": "bad", "index": "one"}]})
    finally:
        leave_run_id(token)
    with pytest.raises(RecordingError, match="damaged"):
        system.runs.recording(run_id)
    newer = await weather_run(system)
    token = enter_run_id(newer)
    try:
        system.bus.publish("run.steps", {"steps": [{
            "key": "z", "index": 9, "kind": "tool", "name": "t", "input_digest": "0",
            "started": 0.0, "version": 99}]})
    finally:
        leave_run_id(token)
    with pytest.raises(RecordingError, match="newer llmspell"):
        await system.runs.replay(newer)


async def test_diff_pairs_steps_and_reports_what_changed(system: System) -> None:
    first = await weather_run(system)
    system.agents.get("weather").provider = provider_for(
        {"tool_calls": [{"name": "lookup", "arguments": {"city": "Oslo"}}]},
        "Oslo: 21 degrees.")
    await system.agents.get("weather").run("weather in Oslo?")
    second = system.runs.list(limit=1)[0].run_id
    diff = system.runs.diff(first, second)
    assert not diff.same
    changed = {d.key: d for d in diff.steps}
    assert "" in changed and "output" in changed[""].changes
    model_steps = [d for d in diff.steps if d.kind == "model"]
    assert model_steps and "output" in model_steps[-1].changes
    assert all(d.kind != "tool" for d in diff.steps)  # same tool result both times
    assert system.runs.diff(first, first).same


async def test_a_result_kept_as_it_is_replays_against_its_stored_form(system: System) -> None:
    """A tool result the recording keeps verbatim carries no separate digest: the replay
    compares the live result with the stored one as the store gives it back."""

    @tool("table")
    def table(n: int) -> dict[str, Any]:
        """Squares keyed by number."""
        return {str(i): [i, i * i, i / 3] for i in (10, 1, 2)}

    system.tools.register(table)
    async with system.runs.start("job", "squares") as run:
        await system.tools.execute("table", {"n": 3})
    step = next(s for s in system.runs.recording(run.run_id).ordered if s.kind == "tool")
    assert step.output_digest is None and step.result["10"] == [10, 100, 10 / 3]

    async def again(_: Any) -> None:
        await system.tools.execute("table", {"n": 3})

    result = await system.runs.replay(run.run_id, operation=again)
    assert result.status == "completed", result.error
    assert not result.diverged, result.divergences
