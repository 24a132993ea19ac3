"""Failures the adapters used to leave unseen.

* OpenAI Agents SDK: a redirect target (or a forked call) whose failure the SDK's default
  failure handler turns into a message for the model goes through ``ToolError`` (with
  ``side_effects``) and publishes ``tool.<target>.failed``, as the runtime's and the other
  adapters' redirect targets do; unrecovered, the SDK's message still answers the model.
* LangChain callback handlers: ``ToolError`` data names the ``side_effects`` the failed
  tool declares (an llmspell tool's, or ``metadata={"side_effects": [...]}``); a plain
  LangChain tool declares none (``[]``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agents import Agent, function_tool

from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Fork, ForkOperation, Redirect, Retry
from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
from llmspell.runtime.system import System
from llmspell.runtime.tools.base import tool

from .conftest_openai_agents import (
    ScriptModel,
    no_trace_export,
    tool_then_answer,
)
from .conftest_openai_agents import stored_events as events

__all__ = ["no_trace_export"]  # fixtures


def _mailer(system: System, sent: list[str]) -> None:
    """An llmspell tool that sends mail (declares ``email``)."""

    @tool(side_effects=["email"])
    def notify(to: str) -> str:
        """Sends a note."""
        sent.append(to)
        return "sent"

    system.tools.register(notify)


def _redirecting_agent(system: System, failures: int) -> tuple[Agent[Any], list[str]]:
    """``weather`` is redirected to ``backup``, which mails someone through llmspell then
    fails ``failures`` times."""
    sent: list[str] = []
    _mailer(system, sent)
    tries: list[int] = []

    @function_tool
    def weather(city: str) -> str:
        """The weather."""
        return "primary"

    @function_tool
    async def backup(city: str) -> str:
        """The weather from the backup station."""
        tries.append(1)
        await system.tools.run("notify", {"to": "ops"})
        if len(tries) <= failures:
            raise RuntimeError("backup station offline")
        return f"backup says sunny in {city}"

    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION,
        lambda ctx: Redirect("backup") if ctx.data["tool"] == "weather" else None,
        name="redirect")
    agent = Agent(name="weather", model=ScriptModel(tool_then_answer()),
                  tools=[weather, backup])
    return agent, sent


async def test_openai_a_redirect_target_failure_the_sdk_caught_is_a_tool_error(
        system: System) -> None:
    errors: list[dict[str, Any]] = []
    system.registry.register(HookPoint.TOOL_ERROR, lambda ctx: errors.append(dict(ctx.data)),
                             name="errors")
    agent, sent = _redirecting_agent(system, failures=5)
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    # Unrecovered: the SDK's message answers the model, as without a redirect.
    assert "error occurred while running the tool" in run.final_output
    assert [(e["tool"], e["error_type"], e["side_effects"]) for e in errors] == [
        ("backup", "RuntimeError", ["email"])]
    assert sent == ["ops"]
    [failed] = events(system, "tool.backup.failed")
    assert failed.data["error_type"] == "RuntimeError"
    assert events(system, "tool.backup.completed") == []
    assert [e.data["error_type"] for e in events(system, "tool.weather.failed")] == [
        "RuntimeError"]


async def test_openai_a_redirect_target_failure_is_retried_by_a_hook(system: System) -> None:
    system.registry.register(HookPoint.TOOL_ERROR, lambda ctx: Retry(0, 3), name="again")
    agent, sent = _redirecting_agent(system, failures=1)
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert run.final_output == "answer: backup says sunny in Paris"
    assert sent == ["ops", "ops"]  # the hook chose to retry despite the side effect
    [done] = events(system, "tool.backup.completed")
    assert done.data["attempts"] == 2


async def test_openai_a_forked_calls_tool_error_names_its_side_effects(
        system: System) -> None:
    sent: list[str] = []
    _mailer(system, sent)
    fork_failed = asyncio.Event()

    @function_tool
    async def flaky(city: str) -> str:
        """Mails, then fails (the SDK's default failure handler catches it)."""
        await system.tools.run("notify", {"to": city})
        fork_failed.set()
        raise ValueError("boom")

    @function_tool
    async def weather(city: str) -> str:
        """Answers once the fork has failed."""
        await fork_failed.wait()
        return f"sunny in {city}"

    errors: list[dict[str, Any]] = []
    system.registry.register(HookPoint.TOOL_ERROR, lambda ctx: errors.append(dict(ctx.data)),
                             name="errors")
    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION,
        lambda ctx: Fork((ForkOperation(type="tool", target="flaky",
                                        parameters={"city": "Rome"}),))
        if ctx.data["tool"] == "weather" else None, name="fork")
    agent = Agent(name="weather", model=ScriptModel(tool_then_answer()),
                  tools=[weather, flaky])
    run = await OpenAIAgentsAdapter(system).run(agent, "weather?")
    assert run.final_output == "answer: sunny in Paris"
    assert [(e["tool"], e.get("fork"), e["side_effects"]) for e in errors] == [
        ("flaky", True, ["email"])]
    assert [e.data["fork"] for e in events(system, "tool.flaky.failed")] == [True]


# -- LangChain callback handlers ----------------------------------------------------------------

def _tool_errors(system: System) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def note(ctx: HookContext) -> None:
        seen.append(dict(ctx.data))

    system.registry.register(HookPoint.TOOL_ERROR, note, name="errors")
    return seen


@pytest.mark.parametrize("handler_kind", ["sync", "async"])
async def test_langchain_callbacks_tool_error_names_declared_side_effects(
        system: System, handler_kind: str) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.tools import tool as lc_tool

    from llmspell.integrations.langchain import (
        AsyncLlmspellCallbackHandler,
        LlmspellCallbackHandler,
    )

    seen = _tool_errors(system)

    @lc_tool
    def send(to: str) -> str:
        """Sends mail."""
        raise ValueError("smtp down")

    send.metadata = {"side_effects": ["email"]}

    @lc_tool
    def plain(to: str) -> str:
        """A tool that declares nothing."""
        raise ValueError("down")

    handler = (LlmspellCallbackHandler(system) if handler_kind == "sync"
               else AsyncLlmspellCallbackHandler(system))
    for one in (send, plain):
        with pytest.raises(ValueError):
            if handler_kind == "sync":
                await asyncio.to_thread(one.invoke, {"to": "ann"},
                                        config={"callbacks": [handler]})
            else:
                await one.ainvoke({"to": "ann"}, config={"callbacks": [handler]})
    assert [(e["tool"], e["error_type"], e["side_effects"]) for e in seen] == [
        ("send", "ValueError", ["email"]), ("plain", "ValueError", [])]


async def test_langchain_callbacks_an_llmspell_tools_side_effects(system: System) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.tools import StructuredTool

    from llmspell.integrations.langchain import AsyncLlmspellCallbackHandler

    @tool(side_effects=["database_write"])
    def save(row: str) -> str:
        """Saves a row."""
        return "saved"

    system.tools.register(save)
    seen = _tool_errors(system)

    async def failing(row: str) -> str:
        raise RuntimeError("db locked")

    # A LangChain tool standing for the llmspell tool of the same name.
    wrapper = StructuredTool.from_function(coroutine=failing, name="save",
                                           description="Saves a row.")
    with pytest.raises(RuntimeError):
        await wrapper.ainvoke({"row": "r"},
                              config={"callbacks": [AsyncLlmspellCallbackHandler(system)]})
    assert [(e["tool"], e["side_effects"]) for e in seen] == [("save", ["database_write"])]
