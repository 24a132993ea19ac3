"""Runs across processes and real side effects: two processes writing one SQLite store, a
webhook to a local server that a replay must not call again, child runs, breakpoints,
simulation and a redirected model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from llmspell.errors import InvalidValueError, ReplayError
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.runs import StepView
from llmspell.runtime.tools.library.web_tools import WebhookCallerTool

CHILD = textwrap.dedent("""
    import asyncio, sys
    from llmspell.runtime import System, SystemConfig
    from llmspell.runtime.providers.scripted import ScriptedProvider

    async def main() -> None:
        system = System(SystemConfig(data_dir=sys.argv[1]))
        await system.start()
        system.agents.create("worker", provider=ScriptedProvider([sys.argv[2]]))
        await system.agents.get("worker").run("say " + sys.argv[2])
        await system.shutdown()

    asyncio.run(main())
""")


def run_child(data_dir: Path, word: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", CHILD, str(data_dir), word], check=True, env=env,
                   timeout=120)


async def test_two_processes_writing_one_store_list_their_runs_newest_first(
        tmp_path: Path) -> None:
    run_child(tmp_path, "first")
    run_child(tmp_path, "second")
    system = System(SystemConfig(data_dir=str(tmp_path)))
    try:
        runs = system.runs.list()
        assert [r.name for r in runs] == ["worker", "worker"]
        newest, oldest = runs
        assert newest.pid != oldest.pid and newest.pid != os.getpid()
        assert newest.started >= oldest.started
        assert system.runs.recording(newest.run_id).ended.output == "second"  # type: ignore[union-attr]
        assert system.runs.recording(oldest.run_id).ended.output == "first"  # type: ignore[union-attr]
        assert system.runs.diff(oldest.run_id, newest.run_id).steps
    finally:
        await system.shutdown()


class _Hooked(BaseHTTPRequestHandler):
    received: ClassVar[list[Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, list[Any]]]:
    _Hooked.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hooked)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hooked.received
    server.shutdown()
    server.server_close()


async def test_a_webhook_call_is_not_sent_again_by_a_replay(
        webhook_server: tuple[str, list[Any]]) -> None:
    url, received = webhook_server
    system = System(SystemConfig(store="memory"))
    system.tools.register(WebhookCallerTool(allow_loopback=True))
    call = {"tool_calls": [{"name": "webhook_caller",
                            "arguments": {"url": url, "payload": {"alert": "disk full"}}}]}
    system.agents.create("pager", provider=ScriptedProvider([call, "paged"]),
                         tools=["webhook_caller"])
    await system.agents.get("pager").run("page the on-call")
    assert received == [{"alert": "disk full"}]
    run_id = system.runs.list()[0].run_id
    system.agents.get("pager").provider = ScriptedProvider([call, "paged"])
    for mode in ("exact", "simulate"):
        result = await system.runs.replay(run_id, mode=mode)
        assert result.status == "completed" and not result.diverged
    # Changing the payload takes the call off the recorded path: still not sent.
    changed = {"tool_calls": [{"name": "webhook_caller",
                               "arguments": {"url": url, "payload": {"alert": "cpu"}}}]}
    system.agents.get("pager").provider = ScriptedProvider([changed, "paged"])
    what_if = await system.runs.replay(run_id, mode="what-if",
                                       input={"input": "page about cpu"})
    assert "webhook_caller" in what_if.side_effects_skipped[0]
    assert received == [{"alert": "disk full"}]
    await system.shutdown()


@tool()
def double(n: int) -> int:
    """Twice n."""
    return 2 * n


async def test_child_runs_replay_as_part_of_their_parent() -> None:
    system = System(SystemConfig(store="memory"))
    system.tools.register(double)
    async with system.runs.start("job", "nightly", {"n": 3}) as outer:
        async with system.runs.start("batch", "part", {"n": 3}) as inner:
            inner.output = await system.tools.execute("double", {"n": 3})
        outer.output = inner.output + 1
    assert system.runs.list()[0].run_id == outer.run_id  # children are not listed
    assert [r.run_id for r in system.runs.list(include_children=True)][:2] == [
        inner.run_id, outer.run_id]
    child = system.runs.get(inner.run_id)
    assert child.parent_run_id == outer.run_id
    with pytest.raises(ReplayError, match="replay that run"):
        await system.runs.replay(inner.run_id)

    async def nightly(value: dict[str, int]) -> int:
        async with system.runs.start("batch", "part", value) as part:
            part.output = await system.tools.execute("double", value)
        return int(part.output) + 1

    result = await system.runs.replay(outer.run_id, operation=nightly)
    assert result.output == 7 and not result.diverged and result.served == {"recording": 1}
    await system.shutdown()


async def _doubling_run(system: System) -> str:
    """Record an agent run that calls ``double`` once; its run id."""
    system.tools.register(double)
    call = {"tool_calls": [{"name": "double", "arguments": {"n": 4}}]}
    system.agents.create("calc", provider=ScriptedProvider([call, "eight"]), tools=["double"])
    await system.agents.get("calc").run("double 4")
    return system.runs.list()[0].run_id


async def test_breakpoints_see_each_step_and_can_stop_the_replay() -> None:
    system = System(SystemConfig(store="memory"))
    run_id = await _doubling_run(system)
    seen: list[StepView] = []
    result = await system.runs.replay(run_id, breakpoints=["tool:double"],
                                      on_break=seen.append)
    assert result.status == "completed"
    assert [(v.kind, v.name, v.input, v.recorded_output) for v in seen] == [
        ("tool", "double", {"n": 4}, 8)]

    async def stop(view: StepView) -> str:
        return "stop"

    stopped = await system.runs.replay(run_id, breakpoints=[1, 2, 3], on_break=stop)
    assert stopped.status == "failed" and "breakpoint" in str(stopped.error)
    await system.shutdown()


@pytest.mark.parametrize(("options", "message"), [
    ({"breakpoints": [2]}, "no on_break handler"),
    ({"breakpoints": 2, "on_break": print}, "must be a list"),
    ({"breakpoints": "tool:double", "on_break": print}, "must be a list"),
    ({"breakpoints": [None], "on_break": print}, "must be a step index or a text"),
    ({"breakpoints": [True], "on_break": print}, "must be a step index or a text"),
    ({"breakpoints": [99], "on_break": print}, "no step 99"),
    ({"breakpoints": ["tool:dobule"], "on_break": print}, "no step 'tool:dobule'"),
    ({"mode": "what-if", "edits": [1, 2]}, "edits must map"),
    ({"mode": "what-if", "edits": "2"}, "edits must map"),
])
async def test_breakpoints_and_edits_that_cannot_work_are_refused_before_the_replay(
        options: dict[str, Any], message: str) -> None:
    system = System(SystemConfig(store="memory"))
    run_id = await _doubling_run(system)
    with pytest.raises(InvalidValueError, match=message) as caught:
        await system.runs.replay(run_id, **options)
    assert caught.value.hint
    assert len(system.runs.list(limit=10)) == 1  # refused before a replay run was opened
    await system.shutdown()


async def test_a_what_if_replay_may_pause_before_calls_the_recording_lacks() -> None:
    system = System(SystemConfig(store="memory"))
    run_id = await _doubling_run(system)
    seen: list[StepView] = []
    result = await system.runs.replay(run_id, mode="what-if", edits={1: "sixteen"},
                                      breakpoints=[99, "tool:triple", "tool:double"],
                                      on_break=seen.append)
    assert result.status == "completed", result.error
    assert [(v.kind, v.name) for v in seen] == [("tool", "double")]
    await system.shutdown()


async def test_simulate_refuses_a_step_the_recording_lacks() -> None:
    system = System(SystemConfig(store="memory"))
    system.tools.register(double)
    system.agents.create("calc", provider=ScriptedProvider(["no tools today"]),
                         tools=["double"])
    await system.agents.get("calc").run("hi")
    run_id = system.runs.list()[0].run_id

    async def more(value: Any) -> Any:
        await system.tools.execute("double", {"n": 1})
        return (await system.agents.get("calc").run(value)).output

    result = await system.runs.replay(run_id, mode="simulate", operation=more)
    assert result.status == "failed" and "no recorded result" in str(result.error)
    assert result.first_divergence is not None
    assert result.first_divergence.what == "new_step"
    await system.shutdown()


async def test_a_what_if_on_another_model_calls_it_live() -> None:
    system = System(SystemConfig(store="memory"))
    system.agents.create("poet", provider=ScriptedProvider(["roses"], name="old"))
    await system.agents.get("poet").run("a poem")
    run_id = system.runs.list()[0].run_id
    system.models.register(ScriptedProvider(["violets"], name="new", model="v2"))
    result = await system.runs.replay(run_id, mode="what-if", model="new/v2")
    assert result.output == "violets"
    assert result.served.get("live") == 1
    assert any(d.what == "decision" and d.got == "redirect by 'replay-model'"
               for d in result.divergences)
    assert not any(h.name == "replay-model" for h in system.registry.list())
    await system.shutdown()


async def test_a_replayed_script_may_not_write_even_if_the_run_could(tmp_path: Path) -> None:
    from llmspell.scripting import ScriptHost
    from llmspell.scripting.lua import Capabilities

    target = tmp_path / "out.txt"
    system = System(SystemConfig(store="memory"))
    host = ScriptHost(system, allow=Capabilities(allow_write=(str(tmp_path),)))
    source = f'local f = io.open("{target}", "w"); f:write("x"); f:close(); return "wrote"'
    assert await host.run_lua_async(source, name="writer.lua") == "wrote"
    host.close()
    target.unlink()
    run_id = system.runs.list()[0].run_id
    result = await system.runs.replay(run_id)
    assert result.status == "failed" and not target.exists()
    assert "io.open is not available" in str(result.error)
    allowed = await system.runs.replay(run_id, allow_side_effects=True)
    assert allowed.status == "completed" and target.exists()
    await system.shutdown()


async def test_step_records_reach_a_local_subscriber_as_data_and_the_store_as_text(
        tmp_path: Path) -> None:
    """With no subscriber the records go into the SQLite store as encoded text (no decode
    and encode on the way); a subscriber of run.* gets them as plain data. Both read back
    the same."""
    system = System(SystemConfig(data_dir=str(tmp_path)))
    await system.start()
    try:
        @tool("double")
        def double(x: int) -> int:
            """Twice x."""
            return 2 * x

        system.tools.register(double)
        async with system.runs.start("job", "quiet") as quiet:
            await system.tools.execute("double", {"x": 2})
        seen: list[Any] = []
        system.bus.subscribe("run.steps", lambda event: seen.append(event.data))
        async with system.runs.start("job", "watched") as watched:
            await system.tools.execute("double", {"x": 3})
        system.bus.flush()
        assert seen and isinstance(seen[0], dict)
        assert seen[0]["steps"][0]["attempts"] == [{"output": 6}]
        for run, value in ((quiet, 4), (watched, 6)):
            recording = system.runs.recording(run.run_id)
            step = recording.ordered[1]
            assert (step.kind, step.result) == ("tool", value)
    finally:
        await system.shutdown()
