"""Scripts follow the runtime's session-8 changes: ``SessionDelete`` hooks from Lua and
JavaScript (delete and purge, from a script and from Python), the user an application sets
in hook metadata reaching an agent's model and tool calls when the agent runs from a
script, and a forked call that does not fork again when a script hook asks it to."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.errors import OperationCancelled
from llmspell.hooks import HookContext, HookPoint
from llmspell.runtime import System
from llmspell.scripting import ScriptHost

from .conftest import Recorder

LANGUAGES = ("lua", "javascript")


async def run(host: ScriptHost, language: str, source: str) -> Any:
    if language == "lua":
        return await host.run_lua_async(source)
    return await host.run_js_async(source)


# -- SessionDelete ------------------------------------------------------------------------

REGISTER_LUA = """
seen = {}
Hook.register("%s", function(ctx)
  table.insert(seen, {name = ctx.data.name, purged = ctx.data.purged, point = ctx.point})
  if string.sub(ctx.data.name, 1, 4) == "keep" then return {type = "cancel", reason = "kept"} end
end, "high")
local function ended(name) local s = Session.start({name = name}); Session["end"](s); return s end
local keep, drop = ended("keep"), ended("drop")
local ok, err = pcall(Session.delete, keep)
Session.delete(drop)
ended("keep-old"); ended("drop-old")
local purged = Session.purge({older_than = 0})
local names = {}
for _, s in ipairs(Session.list()) do table.insert(names, s.name) end
table.sort(names)
return {ok = ok, err = tostring(err), purged = purged, names = names, keep = keep.id}
"""

REGISTER_JS = """
globalThis.seen = [];
await Hook.register("%s", (ctx) => {
  seen.push({name: ctx.data.name, purged: ctx.data.purged, point: ctx.point});
  if (ctx.data.name.startsWith("keep")) return {type: "cancel", reason: "kept"};
}, "high");
const ended = async (name) => {
  const s = await Session.start({name}); await Session.end(s); return s;
};
const keep = await ended("keep"), drop = await ended("drop");
let ok = true, err = "";
try { await Session.delete(keep); } catch (e) { ok = false; err = String(e.message ?? e); }
await Session.delete(drop);
await ended("keep-old"); await ended("drop-old");
const purged = await Session.purge({older_than: 0});
const names = (await Session.list()).map((s) => s.name).sort();
return {ok, err, purged, names, keep: keep.id};
"""


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("point", ["SessionDelete", "session_delete"])
async def test_a_script_session_delete_hook_fires_and_its_cancel_keeps_the_session(
        script_system: System, language: str, point: str) -> None:
    host = ScriptHost(script_system)
    try:
        source = (REGISTER_LUA if language == "lua" else REGISTER_JS) % point
        out = await run(host, language, source)
        # From the script: delete's Cancel is a catchable error, purge skips the session.
        assert out["ok"] is False and "kept" in out["err"]
        assert out["purged"] == 1
        assert out["names"] == ["keep", "keep-old"]
        # From Python: the same script hook decides.
        with pytest.raises(OperationCancelled, match="kept"):
            await script_system.sessions.delete(out["keep"])
        assert await script_system.sessions.purge(0) == 0
        assert sorted(s.name for s in await script_system.sessions.list()) \
            == ["keep", "keep-old"]
        seen = await run(host, language, "return seen")
        assert [(s["name"], s["purged"]) for s in seen] == [
            ("keep", False), ("drop", False),  # the script's deletes
            ("keep", True), ("keep-old", True), ("drop-old", True),  # its purge
            ("keep", False), ("keep", True), ("keep-old", True)]  # Python's
        assert {s["point"] for s in seen} == {"session_delete"}
    finally:
        host.close()


# -- whose call is it ---------------------------------------------------------------------

AGENT_LUA = """
local agent = Agent.create({name = "helper", model = "scripted/demo", tools = {"count"},
  replies = {{tool_calls = {{name = "count", arguments = {n = 3}}}}, "done"}})
return agent:execute({text = "count three"}).text
"""

AGENT_JS = """
const agent = await Agent.create({name: "helper", model: "scripted/demo", tools: ["count"],
  replies: [{tool_calls: [{name: "count", arguments: {n: 3}}]}, "done"]});
return (await agent.execute({text: "count three"})).text;
"""


def record_users(system: System) -> list[tuple[str, Any]]:
    users: list[tuple[str, Any]] = []

    def model(ctx: HookContext) -> None:
        users.append(("model", ctx.metadata.get("user")))

    def tool(ctx: HookContext) -> None:
        users.append(("tool", ctx.metadata.get("user")))

    system.registry.register(HookPoint.BEFORE_MODEL_CALL, model, name="user-of-model")
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, tool, name="user-of-tool")
    return users


@pytest.mark.parametrize("language", LANGUAGES)
async def test_the_applications_user_reaches_an_agent_run_from_a_script(
        script_system: System, language: str) -> None:
    def who(ctx: HookContext) -> None:
        ctx.metadata["user"] = "ada"

    script_system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, who, name="app-user")
    users = record_users(script_system)
    host = ScriptHost(script_system)
    try:
        # A script hook at the model call sees the user too.
        watch = ('Hook.register("BeforeModelCall", function(ctx) '
                 'script_user = ctx.metadata.user end)') if language == "lua" else (
                 'await Hook.register("BeforeModelCall", (ctx) => '
                 '{ globalThis.script_user = ctx.metadata.user; })')
        await run(host, language, watch)
        assert await run(host, language, AGENT_LUA if language == "lua" else AGENT_JS) \
            == "done"
        assert users == [("model", "ada"), ("tool", "ada"), ("model", "ada")]
        assert await run(host, language, "return script_user") == "ada"
    finally:
        host.close()


SET_USER_LUA = """
Hook.register("BeforeAgentExecution", function(ctx)
  ctx.metadata.user = "ada"
  return {type = "modified", data = ctx.data, metadata = ctx.metadata}
end, "high")
"""

SET_USER_JS = """
await Hook.register("BeforeAgentExecution", (ctx) => {
  ctx.metadata.user = "ada";
  return {type: "modified", data: ctx.data, metadata: ctx.metadata};
}, "high");
"""


@pytest.mark.parametrize("language", LANGUAGES)
async def test_a_script_hook_names_the_user_of_an_agent_run(
        script_system: System, language: str) -> None:
    users = record_users(script_system)
    host = ScriptHost(script_system)
    try:
        await run(host, language, SET_USER_LUA if language == "lua" else SET_USER_JS)
        await run(host, language, AGENT_LUA if language == "lua" else AGENT_JS)
        assert users == [("model", "ada"), ("tool", "ada"), ("model", "ada")]
    finally:
        host.close()


# -- a forked call does not fork again ------------------------------------------------------

FORK_LUA = """
asked = 0
Hook.register("BeforeToolExecution", function(ctx)
  asked = asked + 1
  return {type = "fork", operations = {{type = "tool", target = "count",
                                        parameters = {n = ctx.data.params.n + 1}}}}
end, "high")
return {value = Tool.invoke("count", {n = 1}), asked = asked}
"""

FORK_JS = """
globalThis.asked = 0;
await Hook.register("BeforeToolExecution", (ctx) => {
  asked += 1;
  return {type: "fork", operations: [{type: "tool", target: "count",
                                      parameters: {n: ctx.data.params.n + 1}}]};
}, "high");
return {value: await Tool.invoke("count", {n: 1}), asked};
"""


@pytest.mark.parametrize("language", LANGUAGES)
async def test_a_script_fork_at_a_forked_call_does_not_fork_again(
        script_host: ScriptHost, recorder: Recorder, language: str) -> None:
    out = await run(script_host, language, FORK_LUA if language == "lua" else FORK_JS)
    assert out["value"] == 2
    assert sorted(recorder.counted) == [1, 2]  # the fork ran once, and forked nothing
    assert await run(script_host, language, "return asked") == 2  # its hook still fired


SIMPLE_LUA = """
Hook.register("BeforeAgentExecution", function(ctx)
  return {metadata = {user = "bea"}}
end, "high")
"""

SIMPLE_JS = """
await Hook.register("BeforeAgentExecution", (ctx) => ({metadata: {user: "bea"}}), "high");
"""


@pytest.mark.parametrize("language", LANGUAGES)
async def test_a_bare_metadata_table_names_the_user_and_goes_on(
        script_system: System, language: str) -> None:
    users = record_users(script_system)
    host = ScriptHost(script_system)
    try:
        await run(host, language, SIMPLE_LUA if language == "lua" else SIMPLE_JS)
        assert await run(host, language, AGENT_LUA if language == "lua" else AGENT_JS) \
            == "done"
        assert users == [("model", "bea"), ("tool", "bea"), ("model", "bea")]
    finally:
        host.close()


@pytest.mark.parametrize("metadata", [
    {"user": 5}, {"llmspell.coalesce": "k"}, {f"k{i}": "v" for i in range(65)},
    {"user": "x" * 5000}, ["user"]])
def test_metadata_a_script_may_not_set_is_refused(metadata: object) -> None:
    from llmspell.errors import HookExecutionError
    from llmspell.hooks import ComponentId, ComponentType, HookContext
    from llmspell.scripting.host import take_metadata

    ctx = HookContext(point=HookPoint.BEFORE_AGENT_EXECUTION,
                      component=ComponentId(type=ComponentType.AGENT, name="a"))
    with pytest.raises(HookExecutionError) as info:
        take_metadata({"type": "continue", "metadata": metadata}, ctx, "h", "p")
    assert info.value.hint and "user" not in ctx.metadata


def test_the_runtimes_own_keys_may_come_back_unchanged() -> None:
    from llmspell.hooks import ComponentId, ComponentType, HookContext
    from llmspell.scripting.host import take_metadata

    ctx = HookContext(point=HookPoint.BEFORE_AGENT_EXECUTION,
                      component=ComponentId(type=ComponentType.AGENT, name="a"),
                      metadata={"llmspell.cache_key": "k1"})
    rest = take_metadata({"type": "continue", "metadata": {"llmspell.cache_key": "k1",
                                                           "user": "ada"}}, ctx, "h", "p")
    assert rest == {"type": "continue"}
    assert ctx.metadata == {"llmspell.cache_key": "k1", "user": "ada"}

