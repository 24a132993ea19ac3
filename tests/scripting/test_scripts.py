"""The scripts in tests/scripts, run by pytest: hook registration and listing, ordering of
hooks from three languages, events across languages, receive-style subscriptions, and the
isolation of misbehaving script hooks."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext, HookPoint, Modified
from llmspell.runtime import System
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.scripting import ScriptHost
from llmspell.scripting.lua import MIB

from .conftest import Recorder, script

LANGUAGES = {"lua": "lua", "js": "javascript"}


@pytest.mark.parametrize("name", ["hooks.lua", "hooks.js"])
async def test_register_list_unregister(name: str, script_host: ScriptHost) -> None:
    assert await script_host.run_file_async(script(name)) == "ok"


async def test_hooks_from_three_languages_run_in_one_priority_order(
        script_system: System, script_host: ScriptHost) -> None:
    def python_hook(ctx: HookContext) -> Modified | None:
        if ctx.component.name != "echo":
            return None
        data = dict(ctx.data)
        data["params"] = {"trail": [*ctx.data["params"]["trail"], "python"]}
        return Modified(data)

    script_system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, python_hook,
                                    priority="normal")
    await script_host.run_file_async(script("priority.js"))
    await script_host.run_file_async(script("priority.lua"))

    trail = await script_system.tools.execute("echo", {"trail": ["start"]})

    assert trail == ["start", "lua", "python", "js:start,lua,python"]
    languages = [i.language for i in script_system.registry.list("BeforeToolExecution")]
    assert [str(x) for x in languages] == ["lua", "python", "javascript"]


async def test_events_flow_between_every_pair_of_languages(
        script_system: System, script_host: ScriptHost) -> None:
    seen: list[UniversalEvent] = []
    script_system.bus.subscribe("cross.**", seen.append, mode="inline")
    await script_host.run_file_async(script("events.lua"))
    await script_host.run_file_async(script("events.js"))

    lua_id = await script_host.run_lua_async("return publish(1)")
    js_id = await script_host.run_js_async("return await publish(2)")
    python_event = UniversalEvent.create("cross.from_python", {"n": 3},
                                         correlation_id="corr-py", tags=("t1",))
    script_system.bus.publish(python_event)

    by_type = {e.event_type: e for e in seen}
    assert by_type["cross.from_lua"].id == lua_id
    assert by_type["cross.from_js"].id == js_id
    assert str(by_type["cross.from_lua"].language) == "lua"
    assert str(by_type["cross.from_js"].language) == "javascript"
    assert by_type["cross.from_js"].data == {"n": 2, "nested": {"list": [1, 2.5, "three"]}}

    in_lua = await script_host.run_lua_async("return received")
    in_js = await script_host.run_js_async("return received")
    for received, other in ((in_lua, "cross.from_js"), (in_js, "cross.from_lua")):
        assert [e["type"] for e in received] == [other, "cross.from_python"]
        for view in received:
            event = by_type[view["type"]]
            assert view["id"] == event.id
            assert view["sequence"] == event.sequence
            assert view["correlation_id"] == event.metadata.correlation_id
            assert view["language"] == str(event.language)
            assert view["data"] == event.data
            assert view["tags"] == ["t1"]
    assert in_lua[0]["source"] == "events.js" and in_js[0]["source"] == "events.lua"


async def test_receive_style_subscriptions_get_events_from_other_languages(
        script_system: System, script_host: ScriptHost) -> None:
    await script_host.run_file_async(script("events.lua"))
    await script_host.run_file_async(script("events.js"))
    script_system.bus.publish("queue.job", {"from": "python"})
    await script_host.run_js_async("await Event.publish('queue.job', {from: 'js'})")
    got = await script_host.run_lua_async("""
        local a, b = Event.receive(queue, 100), Event.receive(queue, 100)
        return {a.data.from, a.language, b.data.from, b.language, Event.receive(queue, 10)}
    """)
    assert got == ["python", "python", "js", "javascript"]


@pytest.mark.parametrize("name", ["receive.lua", "receive.js"])
async def test_subscribe_without_callback_receive_and_timeout(
        name: str, script_host: ScriptHost, script_system: System) -> None:
    out = await script_host.run_file_async(script(name))
    assert out == {"subject": "hi", "type": "inbox.mail", "timed_out": True, "subs": 1,
                   "removed": True, "again": False}
    assert not script_system.bus.has_subscribers("inbox.mail")


@pytest.mark.parametrize("language", ["lua", "js"])
@pytest.mark.parametrize("kind", ["error", "loop", "memory"])
async def test_a_misbehaving_script_hook_is_isolated(
        language: str, kind: str, script_system: System, recorder: Recorder) -> None:
    host = ScriptHost(script_system, time_budget=0.05, max_memory=8 * MIB)
    calls: list[int] = []

    def healthy(ctx: HookContext) -> None:
        calls.append(1)

    script_system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, healthy, priority="low")
    try:
        await host.run_file_async(script(f"isolation.{language}"), args=(kind,))
        results = [await script_system.tools.execute("count", {"n": n}) for n in range(5)]
        follow_up: Any = await host.run_lua_async("return 1 + 1") if language == "lua" \
            else await host.run_js_async("return 1 + 1")
    finally:
        host.close()

    assert results == [0, 2, 4, 6, 8]  # every call ran
    assert recorder.counted == [0, 1, 2, 3, 4]
    assert len(calls) == 5  # the other hook ran every time
    failures = [f for f in script_system.executor.failures() if f.hook == f"bad-{kind}"]
    assert len(failures) == 3  # then the breaker opened and the hook was skipped
    breaker = next(b for b in script_system.executor.breakers() if b.hook == f"bad-{kind}")
    assert str(breaker.state) in ("open", "BreakerState.OPEN") and breaker.trips == 1
    assert follow_up == 2  # the engine is still usable
    expected = {"error": "hook exploded", "loop": "time budget", "memory": "memory"}[kind]
    assert expected in failures[0].message
    if kind == "error":
        assert f"isolation.{language}:" in failures[0].message  # file and line


def test_a_failed_host_call_can_be_followed_by_another(script_host: ScriptHost) -> None:
    out = script_host.run_lua("""
        local ok1, e1 = pcall(Tool.invoke, "nope", {})
        local ok2, e2 = pcall(Tool.invoke, "nope", {})
        return {ok1, e1, ok2, e2, Tool.invoke("count", {n = 1})}
    """)
    assert out[0] is False and out[2] is False
    assert "no tool named 'nope'" in out[1] and out[1] == out[3]
    assert out[4] == 2


async def test_a_script_written_for_the_seed_api_runs_unchanged(script_system: System) -> None:
    def providers(kind: str, model: str, spec: dict[str, Any]) -> ScriptedProvider | None:
        return ScriptedProvider(["hi from the configured provider"], model=model) \
            if kind == "openai" else None

    host = ScriptHost(script_system, providers=providers)
    try:
        assert await host.run_file_async(script("seed_api.lua")) == "ok"
    finally:
        host.close()
