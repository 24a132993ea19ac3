"""Hostile scripts against the newer parts of the bridge: the ``Replay`` global, hook
results carrying ``metadata``, ``Agent.create`` parameters and the host call glue. Every
failure is a typed error with a hint, never Python's own exception text, and a hostile
value is never quoted whole in a message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from llmspell.errors import HookExecutionError
from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint
from llmspell.runtime import System, SystemConfig
from llmspell.scripting import ScriptHost
from llmspell.scripting.host import take_metadata


@pytest_asyncio.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    yield sys
    await sys.shutdown()


async def lua_error(system: System, call: str) -> str:
    """The message of the error ``call`` (a Lua expression, pcall'd) raises."""
    host = ScriptHost(system)
    try:
        out = await host.run_lua_async(
            f"local ok, e = pcall(function() return {call} end)\n"
            "assert(not ok, 'the call succeeded')\nreturn tostring(e)", name="hostile.lua")
    finally:
        host.close()
    assert isinstance(out, str)
    return out


@pytest.mark.parametrize(("call", "hint"), [
    ('Replay.run("r", {mode = 3})', "use one of: exact, what-if, simulate"),
    ('Replay.run("r", {after = "later"})', "simulate keeps serving the recording"),
    ('Replay.run("r", {after = 1})', "simulate keeps serving the recording"),
    ('Replay.run("r", {allow_side_effects = "yes"})', "tools with side effects"),
    ('Replay.list({kind = {}})', "Replay.list({kind = "),
    ('Replay.list({all = "no"})', "runs started inside other runs"),
])
async def test_bad_replay_options_carry_a_hint(system: System, call: str, hint: str) -> None:
    message = await lua_error(system, call)
    assert "InvalidValueError" in message or "must be" in message
    assert f"({hint}" in message or hint in message.split("(", 1)[-1]


async def test_a_huge_run_id_is_not_quoted_whole(system: System) -> None:
    for call in ('Replay.show(string.rep("x", 100000))',
                 'Replay.diff("y", string.rep("x", 100000))',
                 'Replay.run({string.rep("x", 100000)})'):
        message = await lua_error(system, call)
        assert len(message) < 1000, message[:200]


@pytest.mark.parametrize("call", ['Replay.show("a", 1, 2, 3)', 'Replay.list({}, 2)',
                                  'State.get("a", {}, 3, 4)', 'Session.list({}, 1, 2)',
                                  'Session.get("s", "k", 3, 4, 5)'])
async def test_extra_arguments_are_a_typed_error_naming_no_python(system: System,
                                                                  call: str) -> None:
    message = await lua_error(system, call)
    assert "wrong number of arguments" in message and "docs/scripting.md" in message
    assert "TypeError" not in message and "positional" not in message


def test_a_refused_metadata_key_is_not_quoted_whole() -> None:
    ctx = HookContext(point=HookPoint.BEFORE_AGENT_EXECUTION,
                      component=ComponentId(type=ComponentType.AGENT, name="a"))
    for metadata in ({"llmspell." + "x" * 100_000: "v"}, {"k" * 100_000: 1}):
        with pytest.raises(HookExecutionError) as info:
            take_metadata({"metadata": metadata}, ctx, "h", "p")
        assert len(str(info.value)) < 1000 and info.value.hint
    assert ctx.metadata == {}


@pytest.mark.parametrize(("field", "text"), [
    ('max_turns = "abc"', "max_turns must be a whole number"),
    ("max_turns = {}", "max_turns must be a whole number"),
    ("max_turns = 2.5", "max_turns must be a whole number"),
    ("tools = 5", "tools must be a list of tool names"),
    ('tools = "calculator"', "tools must be a list of tool names"),
    ('temperature = "hot"', "temperature must be a number"),
    ("temperature = {}", "temperature must be a number"),
])
async def test_bad_agent_fields_are_typed_errors(system: System, field: str,
                                                 text: str) -> None:
    message = await lua_error(
        system, f'Agent.create({{name = "a", model = "scripted/x", replies = {{"hi"}}, '
                f"{field}}})")
    assert text in message and "ValueError:" not in message and "TypeError" not in message
    assert "(" in message.split(text, 1)[1]  # a hint follows
    assert "a" not in system.agents.names()


async def test_a_boolean_timeout_is_refused(system: System) -> None:
    message = await lua_error(
        system, 'Agent.create({name = "t", model = "openai/gpt", timeout = true})')
    assert "timeout must be a number of seconds" in message


async def test_javascript_gets_the_same_typed_replay_errors(system: System) -> None:
    host = ScriptHost(system)
    try:
        out: Any = await host.run_js_async("""
          const seen = [];
          for (const call of [() => Replay.run("r", {mode: 3}),
                              () => Replay.list({all: "yes"}),
                              () => Replay.show("x".repeat(100000))]) {
            try { await call(); seen.push(null); }
            catch (e) { seen.push([e.name, e.message.length]); }
          }
          return seen;
        """)
    finally:
        host.close()
    assert [name for name, _ in out] == ["InvalidValueError", "InvalidValueError",
                                         "RunNotFoundError"]
    assert all(length < 1000 for _, length in out)
