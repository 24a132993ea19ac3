"""OpenAI Agents adapter: a BeforeModelCall ``Modified`` changes the messages the model
sees; a change to anything else in ``params`` (temperature, max_tokens, tools, stream,
settings, a field of its own), which the SDK's ``call_model_input_filter`` cannot carry
to the model, is refused with a typed error naming the field, never dropped silently."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llmspell.errors import InvalidValueError, UnsupportedHookResultError
from llmspell.hooks import HookPoint
from llmspell.hooks.result import Modified
from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
from llmspell.runtime.system import System
from llmspell.scripting import ScriptHost

from .conftest_openai_agents import (
    ScriptModel,
    no_trace_export,
    say,
    tool_then_answer,
    weather_agent,
)

__all__ = ["no_trace_export"]  # fixtures

Change = Callable[[dict[str, Any]], dict[str, Any]]


def redact(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the user's card number masked (a messages-only change)."""
    messages = [{**m, "content": m["content"].replace("1234", "[card]")}
                if m["role"] == "user" else m for m in params["messages"]]
    return {**params, "messages": messages}


def hook(change: Change) -> Callable[[Any], Modified]:
    """A BeforeModelCall hook that masks the card and applies ``change`` to the params."""
    return lambda ctx: Modified({**ctx.data, "params": change(redact(ctx.data["params"]))})


async def run_with(system: System, change: Change, *,
                   streamed: bool = False) -> tuple[ScriptModel, Any]:
    system.registry.register(HookPoint.BEFORE_MODEL_CALL, hook(change), name="tuner")
    model = ScriptModel(tool_then_answer())
    agent, _ = weather_agent(model)
    adapter = OpenAIAgentsAdapter(system)
    if not streamed:
        return model, await adapter.run(agent, "my card is 1234")
    run = adapter.run_streamed(agent, "my card is 1234")
    async for _ in run.stream_events():
        pass
    return model, run


UNSEAMED: dict[str, Change] = {
    "temperature": lambda p: {**p, "temperature": 0.1},
    "max_tokens": lambda p: {**p, "max_tokens": 16},
    "tools": lambda p: {**p, "tools": [t for t in p["tools"] if t["name"] != "forecast"]},
    "stream": lambda p: {**p, "stream": True},
    "top_p": lambda p: {**p, "top_p": 0.5},
}


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "streamed"])
@pytest.mark.parametrize("field", sorted(UNSEAMED))
async def test_a_changed_field_the_filter_cannot_carry_is_refused_by_name(
        system: System, field: str, streamed: bool) -> None:
    change = UNSEAMED[field]
    if streamed and field == "stream":
        def change(p: dict[str, Any]) -> dict[str, Any]:
            return {**p, "stream": False}
    with pytest.raises(UnsupportedHookResultError) as caught:
        await run_with(system, change, streamed=streamed)
    error = caught.value
    assert f"params.{field}" in str(error) and error.hook == "tuner"
    assert error.point == HookPoint.BEFORE_MODEL_CALL
    assert "call_model_input_filter" in (error.hint or "")


async def test_the_model_is_not_called_with_a_refused_change(system: System) -> None:
    system.registry.register(HookPoint.BEFORE_MODEL_CALL,
                             hook(UNSEAMED["temperature"]), name="tuner")
    model = ScriptModel(tool_then_answer())
    agent, seen = weather_agent(model)
    with pytest.raises(UnsupportedHookResultError, match=r"params\.temperature"):
        await OpenAIAgentsAdapter(system).run(agent, "my card is 1234")
    assert model.calls == [] and seen == []


async def test_a_tool_dropped_in_place_is_refused(system: System) -> None:
    def drop(ctx: Any) -> Modified:
        ctx.data["params"]["tools"].pop()  # the params the hook was given, changed in place
        return Modified(ctx.data)

    system.registry.register(HookPoint.BEFORE_MODEL_CALL, drop, name="dropper")
    model = ScriptModel(tool_then_answer())
    agent, _ = weather_agent(model)
    with pytest.raises(UnsupportedHookResultError, match=r"params\.tools") as caught:
        await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert "is_enabled" in (caught.value.hint or "")
    assert model.calls == []


async def test_a_changed_settings_table_is_refused_as_every_adapter_does(
        system: System) -> None:
    from agents import ModelSettings

    def change(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "settings": {**p["settings"], "top_p": 0.5}}

    system.registry.register(HookPoint.BEFORE_MODEL_CALL, hook(change), name="tuner")
    model = ScriptModel(tool_then_answer())
    agent, _ = weather_agent(model, model_settings=ModelSettings(top_p=0.9))
    with pytest.raises(InvalidValueError, match=r"params\.settings cannot be changed"):
        await OpenAIAgentsAdapter(system).run(agent, "my card is 1234")
    assert model.calls == []


async def test_messages_are_applied_and_only_a_real_change_elsewhere_is_refused(
        system: System) -> None:
    from agents import ModelSettings

    # The same values (tools by name, settings as shown, no settings as an empty table):
    # the messages reach the model and nothing is refused.
    def same(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "temperature": p["temperature"], "tools": list(p["tools"]),
                "settings": p.get("settings") or {}}

    model, run = await run_with(system, same)
    assert model.calls[0]["input"][0]["content"] == "my card is [card]"
    assert model.calls[0]["tools"] == ["weather", "forecast"]
    assert run.final_output == "answer: sunny in Paris"
    # ...then a hook that also lowers the temperature of a tuned agent is refused.
    system.registry.register(HookPoint.BEFORE_MODEL_CALL,
                             hook(lambda p: {**p, "temperature": 0.0}), name="cooler")
    tuned = ScriptModel(lambda i, items, t: [say("unused")])
    agent, _ = weather_agent(tuned, model_settings=ModelSettings(temperature=0.7))
    with pytest.raises(UnsupportedHookResultError, match=r"params\.temperature"):
        await OpenAIAgentsAdapter(system).run(agent, "my card is 1234")
    assert tuned.calls == []


LUA_TUNER = """
Hook.register("BeforeModelCall", function(ctx)
  local params = ctx.data.params
  for _, m in ipairs(params.messages) do
    if m.role == "user" then m.content = string.gsub(m.content, "1234", "[card]") end
  end
  if string.find(params.messages[#params.messages].content, "cold") then
    params.temperature = 0.1
  end
  return {type = "modified", data = ctx.data}
end, "high")
"""
JS_TUNER = """
Hook.register("BeforeModelCall", function(ctx) {
  const params = ctx.data.params;
  for (const m of params.messages) {
    if (m.role === "user") { m.content = m.content.replace("1234", "[card]"); }
  }
  if (params.messages[params.messages.length - 1].content.includes("cold")) {
    params.temperature = 0.1;
  }
  return {type: "modified", data: ctx.data};
}, "high");
"""


@pytest.mark.parametrize("language", ["lua", "js"])
async def test_a_script_hook_rewrites_messages_and_a_temperature_is_refused(
        system: System, language: str) -> None:
    host = ScriptHost(system, time_budget=5)
    try:
        if language == "lua":
            await host.run_lua_async(LUA_TUNER)
        else:
            await host.run_js_async(JS_TUNER)
        model = ScriptModel(tool_then_answer())
        agent, _ = weather_agent(model)
        adapter = OpenAIAgentsAdapter(system)
        run = await adapter.run(agent, "my card is 1234")  # round-tripped params: no refusal
        assert model.calls[0]["input"][0]["content"] == "my card is [card]"
        assert run.final_output == "answer: sunny in Paris"
        with pytest.raises(UnsupportedHookResultError, match=r"params\.temperature"):
            await adapter.run(agent, "a cold card 1234")
    finally:
        host.close()
