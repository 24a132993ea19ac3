"""What a run records at each level and content setting, and the smaller paths of replay:
recorded errors raised again, the run clock, filters, and typed errors."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.errors import (
    InvalidValueError,
    ReplayDivergenceError,
    ReplayError,
    RunError,
    ToolExecutionError,
)
from llmspell.hooks import Cancel, HookContext, Modified
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs import Divergence, ReplayResult, run_clock, run_id_source
from llmspell.runtime.runs.replay import RecordedError, recorded_error

RAN: list[str] = []


@tool()
def secret_lookup(user: str) -> dict[str, Any]:
    """Looks up a user's settings."""
    RAN.append(user)
    return {"user": user, "api_key": "sk-abcdefghijklmnopqrstuvwxyz", "note": "ok"}


@tool()
def broken(n: int) -> int:
    """Always fails."""
    RAN.append("broken")
    raise RuntimeError(f"broken on {n}")


def make(config: SystemConfig) -> System:
    RAN.clear()
    system = System(config)
    system.tools.register_all([secret_lookup, broken])
    return system


async def test_full_level_keeps_what_each_hook_saw_masked() -> None:
    system = make(SystemConfig(store="memory", record="full"))
    system.registry.register("BeforeToolExecution", lambda ctx: None, name="watch",
                             version="3")
    async with system.runs.start("job", "settings") as run:
        await system.tools.execute("secret_lookup", {"user": "ann"})
    step = next(s for s in system.runs.recording(run.run_id).ordered if s.kind == "tool")
    (execution,) = step.hooks
    assert (execution.hook, execution.version, execution.kind) == ("watch", "3", "continue")
    assert execution.context["params"] == {"user": "ann"}
    assert step.attempts[0].output["api_key"] == "***"
    assert "sk-abc" not in str(system.store.query(run_id=run.run_id))  # type: ignore[union-attr]
    await system.shutdown()


async def test_content_none_keeps_no_results_so_a_replay_cannot_serve_them() -> None:
    system = make(SystemConfig(store="memory", record_content="none"))
    async with system.runs.start("job", "settings", {"user": "ann"}) as run:
        await system.tools.execute("secret_lookup", {"user": "ann"})
    step = next(s for s in system.runs.recording(run.run_id).ordered if s.kind == "tool")
    assert step.attempts == [] and step.output is None and step.output_digest

    async def again(value: Any) -> Any:
        return await system.tools.execute("secret_lookup", value)

    live = await system.runs.replay(run.run_id, mode="what-if", after="live",
                                    operation=again, input={"user": "ann"})
    assert live.served == {"live": 1} and RAN == ["ann", "ann"]
    simulated = await system.runs.replay(run.run_id, mode="simulate", operation=again,
                                         input={"user": "ann"})
    assert simulated.status == "failed" and "no recorded result" in str(simulated.error)
    await system.shutdown()


async def test_a_recorded_failure_is_raised_again_as_the_same_error() -> None:
    system = make(SystemConfig(store="memory"))
    with pytest.raises(ToolExecutionError):
        async with system.runs.start("job", "fails", {"n": 2}):
            await system.tools.execute("broken", {"n": 2})
    run = system.runs.list()[0]
    assert run.status == "failed" and run.error is not None
    assert run.error["type"] == "ToolExecutionError"
    seen: list[BaseException] = []

    async def again(value: Any) -> Any:
        try:
            return await system.tools.execute("broken", value)
        except ToolExecutionError as exc:
            seen.append(exc)
            raise

    result = await system.runs.replay(run.run_id, operation=again)
    assert RAN == ["broken"] and isinstance(seen[0], ToolExecutionError)
    assert "broken on 2" in str(seen[0])
    assert result.status == "failed" and not result.diverged
    await system.shutdown()


def test_recorded_errors_map_to_their_classes() -> None:
    assert isinstance(recorded_error({"type": "KeyError", "message": "k"}), KeyError)
    odd = recorded_error({"type": "TeapotError", "message": "short and stout"})
    assert isinstance(odd, RecordedError) and odd.type_name == "TeapotError"
    assert "short and stout" in str(odd)


async def test_clock_and_ids_read_in_a_run_come_back_in_its_replay() -> None:
    system = make(SystemConfig(store="memory", record_content="full"))
    readings: list[Any] = []

    def stamp(ctx: HookContext) -> Modified:
        readings.append((run_clock.now(), run_clock.monotonic(), run_id_source()))
        return Modified({"params": {"user": readings[-1][2][:6]}})

    system.registry.register("BeforeToolExecution", stamp, name="stamp")
    async with system.runs.start("job", "stamped", {}) as run:
        run.output = await system.tools.execute("secret_lookup", {"user": "x"})

    async def again(value: Any) -> Any:
        return await system.tools.execute("secret_lookup", {"user": "x"})

    result = await system.runs.replay(run.run_id, operation=again)
    assert readings[0] == readings[1] and not result.diverged
    assert [readings[0][2][:6]] == RAN
    await system.shutdown()


async def test_sync_runs_and_callback_runs_are_recorded() -> None:
    system = make(SystemConfig(store="memory"))
    with system.runs.start_sync("batch", "nightly", {"day": 1}) as run:
        run.output = "done"
    opened = system.runs.open("framework", "chain", {"q": "hi"})
    system.runs.close(opened, output={"a": 1})
    failed = system.runs.open("framework", "chain")
    system.runs.close(failed, error=ValueError("bad"))
    runs = {r.run_id: r for r in system.runs.list()}
    assert runs[run.run_id].status == "completed"
    assert runs[opened.run_id].status == "completed"
    assert runs[failed.run_id].status == "failed"
    assert system.runs.recording(opened.run_id).ended.output == {"a": 1}  # type: ignore[union-attr]
    assert [r.run_id for r in system.runs.list(kind="batch")] == [run.run_id]
    assert [r.run_id for r in system.runs.list(name="chain", status="failed")] == [
        failed.run_id]
    assert len(system.runs.list(limit=1)) == 1
    with pytest.raises(RunError, match="limit"):
        system.runs.list(limit=0)
    with pytest.raises(InvalidValueError, match="kind and a name"):
        system.runs.open("", "x")
    with pytest.raises(InvalidValueError, match="record level"):
        system.runs.open("job", "x", level="everything")
    await system.shutdown()


async def test_a_system_without_a_store_has_no_runs_to_read() -> None:
    system = System(SystemConfig(store="none"))
    async with system.runs.start("job", "quiet"):
        pass
    with pytest.raises(RunError, match="keeps no events"):
        system.runs.list()
    await system.shutdown()


async def test_bad_replay_options_are_refused() -> None:
    system = make(SystemConfig(store="memory"))
    system.agents.create("a", provider=ScriptedProvider(["hi"]))
    await system.agents.get("a").run("hello")
    run_id = system.runs.list()[0].run_id
    with pytest.raises(InvalidValueError, match="after"):
        await system.runs.replay(run_id, after="later")
    with pytest.raises(InvalidValueError, match="no hook named"):
        await system.runs.replay(run_id, mode="what-if", remove_hooks=["ghost"])
    with pytest.raises(InvalidValueError, match="no step 'nowhere'"):
        await system.runs.replay(run_id, mode="what-if", edits={"nowhere": 1})
    with pytest.raises(InvalidValueError, match="operation must be"):
        await system.runs.replay(run_id, operation=42)
    async with system.runs.start("custom", "thing"):
        pass
    custom = system.runs.list(kind="custom")[0].run_id
    with pytest.raises(ReplayError, match="operation="):
        await system.runs.replay(custom)
    await system.shutdown()


async def test_check_raises_on_the_first_divergence() -> None:
    system = make(SystemConfig(store="memory"))
    blocked = {"on": False}

    def maybe(ctx: HookContext) -> Cancel | None:
        return Cancel("not now") if blocked["on"] else None

    system.registry.register("BeforeToolExecution", maybe, name="maybe")
    async with system.runs.start("job", "calls", {}) as run:
        await system.tools.execute("secret_lookup", {"user": "b"})
    blocked["on"] = True

    async def again(value: Any) -> Any:
        return await system.tools.execute("secret_lookup", {"user": "b"})

    result = await system.runs.replay(run.run_id, operation=again)
    assert result.status == "failed" and result.first_divergence is not None
    assert result.first_divergence.nondeterministic  # same input, same hook, new answer
    with pytest.raises(ReplayDivergenceError, match="diverged at step 1"):
        result.check()
    await system.shutdown()


def test_divergences_describe_themselves() -> None:
    missing = Divergence(step=4, key="tool:t#0", kind="tool", name="t", what="missing_step")
    assert missing.describe() == "step 4 (tool 't'): missing_step"
    run = Divergence(step=0, key="", kind="agent", name="a", what="output",
                     expected="x" * 300, got="y")
    text = run.describe()
    assert text.startswith("the run: output: expected 'xxx") and "..." in text
    assert ReplayResult(run_id="r", replay_of="o", mode="exact",
                        status="completed").check().run_id == "r"


async def test_a_replay_cannot_start_another_replay() -> None:
    system = make(SystemConfig(store="memory"))
    async with system.runs.start("job", "outer") as run:
        run.output = 1

    async def recursive(value: Any) -> Any:
        return await system.runs.replay(run.run_id, operation=recursive)

    result = await system.runs.replay(run.run_id, operation=recursive)
    assert result.status == "failed" and "cannot start another replay" in str(result.error)
    await system.shutdown()


async def test_diff_reports_a_changed_input_with_the_same_output() -> None:
    system = make(SystemConfig(store="memory"))
    ids = []
    for user in ("ann", "bob"):
        async with system.runs.start("job", "lookup") as run:
            await system.tools.execute("secret_lookup", {"user": user})
            run.output = "done"
        ids.append(run.run_id)
    diff = system.runs.diff(*ids)
    (step,) = [d for d in diff.steps if d.kind == "tool"]
    assert step.changes["input"] == [{"user": "ann"}, {"user": "bob"}]
    await system.shutdown()


async def test_scripts_cannot_forge_run_records() -> None:
    from llmspell.errors import ScriptError
    from llmspell.scripting import ScriptHost

    system = make(SystemConfig(store="memory"))
    host = ScriptHost(system)
    with pytest.raises(ScriptError, match="reserved"):
        await host.run_lua_async('Event.publish("run.started", {run_id = "fake"})')
    assert await host.run_lua_async(
        'return Event.publish("app.run.started", {}) ~= nil') is True
    host.close()
    assert all(r.run_id != "fake" for r in system.runs.list(include_children=True))
    await system.shutdown()


async def test_a_model_call_digests_the_same_with_or_without_model_hooks() -> None:
    system = make(SystemConfig(store="memory"))
    system.agents.create("a", provider=ScriptedProvider(["hello there"]))
    await system.agents.get("a").run("hi")  # no model hooks: the direct path, recorded
    run_id = system.runs.list()[0].run_id
    watched: list[str] = []
    result = await system.runs.replay(run_id, mode="what-if", hooks=[
        ("BeforeModelCall", lambda ctx: watched.append(ctx.data["model"]))])
    assert watched == ["scripted"] and result.output == "hello there"
    assert not [d for d in result.divergences if d.what == "input"]
    assert result.served == {"recording": 1}
    await system.shutdown()


async def test_full_level_masks_secrets_in_a_model_request() -> None:
    system = make(SystemConfig(store="memory", record="full"))
    system.agents.create("a", provider=ScriptedProvider(["ok"]))
    await system.agents.get("a").run("my key is sk-abcdefghijklmnopqrstuvwx")
    run_id = system.runs.list()[0].run_id
    step = next(s for s in system.runs.recording(run_id).ordered if s.kind == "model")
    assert step.input["messages"][-1]["content"] == "my key is ***"
    assert "sk-abcdef" not in str(system.store.query(run_id=run_id))  # type: ignore[union-attr]
    await system.shutdown()


async def test_a_run_with_nowhere_to_keep_its_recording_records_nothing() -> None:
    """No store and nobody subscribed to run.steps: the run is not recorded (its steps
    would be built for nobody); a subscriber makes it recorded again."""
    system = System(SystemConfig(store="none"))
    await system.start()
    try:
        async with system.runs.start("job", "unwatched") as run:
            assert run.level == "off" and not run.recording
        steps: list[Any] = []
        system.bus.subscribe("run.steps", steps.append)
        async with system.runs.start("job", "watched") as run:
            assert run.level == "decisions" and run.recording
        assert steps
    finally:
        await system.shutdown()


async def test_a_full_recording_masks_a_sensitive_key_in_a_model_request() -> None:
    """At level full a model step keeps its request; a sensitive key in the tool-call
    arguments of an earlier message is masked although the response holds none."""
    from llmspell.runtime.providers.scripted import ScriptedProvider

    system = System(SystemConfig(store="memory", record="full"))
    await system.start()
    try:
        messages = [
            {"role": "user", "content": "log me in"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "name": "login", "arguments": {"password": "hunter2"}}]},
            {"role": "tool", "content": "ok", "tool_call_id": "c1", "name": "login"}]
        async with system.runs.start("job", "login") as run:
            await system.models.call(ScriptedProvider(["done"]), messages)
        step = next(s for s in system.runs.recording(run.run_id).ordered if s.kind == "model")
        assert "hunter2" not in str(step.input) and "***" in str(step.input)
    finally:
        await system.shutdown()


async def test_a_run_whose_texts_are_not_utf8_is_recorded_with_replacement_characters(
) -> None:
    # A script's arguments or file name can reach Python as lone surrogates (bytes that
    # are not UTF-8): the run is kept, those characters shown as U+FFFD.
    async with System(SystemConfig(store="memory")) as system:
        async with system.runs.start("script", "x\udcff.lua", {"args": ["a\udcffb"]}) as run:
            run.output = "done"
        system.bus.flush()
        (summary,) = system.runs.list()
        assert (summary.name, summary.status) == ("x\ufffd.lua", "completed")
        recording = system.runs.recording(summary.run_id)
        assert recording.started.input == {"args": ["a\ufffdb"]}
