"""The LangChain adapter's ``AgentError`` data names the ``side_effects`` of the llmspell
tool calls the failed step ran (its ``Retry`` runs that one step again, a tool step or a
model step, not the whole agent): a step whose llmspell tool sent an e-mail (called from
the LangChain tool, a hook's ``Redirect`` or ``Fork``) is not retried by the retry
built-in, and a step that ran none still is. ``side_effects`` is always in the data."""

from __future__ import annotations

import random
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.tools import tool

from llmspell.builtin.retry import RetryConfig, RetryHook
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Fork, ForkOperation, Redirect
from llmspell.integrations.langchain import LlmspellMiddleware
from llmspell.runtime import System
from llmspell.runtime import tool as llm_tool
from llmspell.runtime.tools.registry import SideEffects

from .conftest_langchain import ScriptedChatModel, call

ASK: Any = {"messages": [{"role": "user", "content": "mail the ceo"}]}
FAST = {"base_delay": 0.001, "max_delay": 0.001, "max_attempts": 3}


def _setup(system: System, *, retry: bool = True) -> tuple[list[str], list[dict[str, Any]]]:
    """An llmspell ``send_email`` tool (declares ``email``), a retry hook at AgentError
    and a hook that records the AgentError data."""
    sent: list[str] = []

    @llm_tool(side_effects=["email"])
    def send_email(to: str) -> str:
        """Send an e-mail (it goes out)."""
        sent.append(to)
        return "sent"

    @llm_tool(side_effects=["email"])
    def send_email_then_fail(to: str) -> str:
        """Send an e-mail, then lose the connection."""
        sent.append(to)
        raise ConnectionError("reset after the mail went out")

    system.tools.register(send_email)
    system.tools.register(send_email_then_fail)
    if retry:
        RetryHook(RetryConfig(**FAST), points=("AgentError",),
                  rng=random.Random(1)).install(system.registry)
    seen: list[dict[str, Any]] = []

    def record(ctx: HookContext) -> None:
        seen.append(dict(ctx.data))

    system.registry.register(HookPoint.AGENT_ERROR, record, name="record", priority=-100)
    return sent, seen


def _agent(system: System, steps: list[Any], tools: list[Any]) -> Any:
    return create_agent(ScriptedChatModel(steps=steps), tools=tools, name="mailer",
                        middleware=[LlmspellMiddleware(system)])


async def test_a_tool_step_whose_tool_sent_an_email_is_not_retried(system: System) -> None:
    sent, seen = _setup(system)

    @tool
    async def notify(to: str) -> str:
        """Tell someone (by e-mail)."""
        await system.tools.execute("send_email", {"to": to})
        raise ConnectionError("reset after the mail went out")

    agent = _agent(system, [call("notify", to="ceo"), "done"], [notify])
    with pytest.raises(ConnectionError, match="reset"):
        await agent.ainvoke(ASK)
    assert sent == ["ceo"]  # the retry hook refused: the e-mail went out once
    assert [(d["step"], d["side_effects"]) for d in seen] == [("tool", ["email"])]


async def test_a_tool_step_redirected_to_an_emailing_tool_is_not_retried(
        system: System) -> None:
    sent, seen = _setup(system)

    @tool
    def notify(to: str) -> str:
        """Tell someone."""
        return "told"

    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION,
        lambda ctx: Redirect("send_email_then_fail") if ctx.data["tool"] == "notify" else None)
    agent = _agent(system, [call("notify", to="ceo"), "done"], [notify])
    with pytest.raises(Exception, match="reset"):
        await agent.ainvoke(ASK)
    assert sent == ["ceo"]
    assert [(d["step"], d["side_effects"]) for d in seen] == [("tool", ["email"])]


async def test_a_tool_step_that_forked_an_email_is_not_retried(system: System) -> None:
    sent, seen = _setup(system)

    @tool
    def notify(to: str) -> str:
        """Tell someone."""
        raise ConnectionError("reset")

    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION,
        lambda ctx: Fork((ForkOperation(type="tool", target="send_email",
                                        parameters={"to": "audit"}),))
        if ctx.data["tool"] == "notify" else None)
    agent = _agent(system, [call("notify", to="ceo"), "done"], [notify])
    with pytest.raises(ConnectionError, match="reset"):
        await agent.ainvoke(ASK)
    assert sent == ["audit"]
    assert [(d["step"], d["side_effects"]) for d in seen] == [("tool", ["email"])]


async def test_a_model_step_that_forked_an_email_is_not_retried(system: System) -> None:
    sent, seen = _setup(system)
    system.registry.register(
        HookPoint.BEFORE_MODEL_CALL,
        lambda ctx: Fork((ForkOperation(type="tool", target="send_email",
                                        parameters={"to": "audit"}),)))
    agent = _agent(system, [ConnectionError("provider reset")], [])
    with pytest.raises(ConnectionError, match="provider reset"):
        await agent.ainvoke(ASK)
    assert sent == ["audit"]
    assert [(d["step"], d["side_effects"]) for d in seen] == [("model", ["email"])]


async def test_a_step_that_ran_no_emailing_tool_is_still_retried(system: System) -> None:
    """Only the failing step runs again: the e-mail an earlier tool step sent is not that
    step's, so the model step that failed after it is retried (and the mail not resent)."""
    sent, seen = _setup(system)
    failures = [ConnectionError("provider reset")]

    def second_turn(messages: list[Any]) -> Any:
        if failures:
            raise failures.pop()
        return "mailed"

    @tool
    async def notify(to: str) -> str:
        """Tell someone (by e-mail)."""
        return str(await system.tools.execute("send_email", {"to": to}))

    agent = _agent(system, [call("notify", to="ceo"), second_turn], [notify])
    out = await agent.ainvoke(ASK)
    assert out["messages"][-1].content == "mailed"
    assert sent == ["ceo"]
    assert [(d["step"], d["attempt"], d["side_effects"]) for d in seen] == [("model", 1, [])]


async def test_side_effects_reach_an_enclosing_collector(system: System) -> None:
    """A LangChain agent run inside an attempt that collects (a tool of an llmspell agent,
    a workflow step): what its steps' tools declared is noted there too."""
    sent, seen = _setup(system, retry=False)

    @tool
    async def notify(to: str) -> str:
        """Tell someone (by e-mail)."""
        await system.tools.execute("send_email", {"to": to})
        raise ConnectionError("reset")

    agent = _agent(system, [call("notify", to="ceo"), "done"], [notify])
    outer, token = SideEffects.enter()
    try:
        with pytest.raises(ConnectionError):
            await agent.ainvoke(ASK)
    finally:
        SideEffects.leave(token)
    assert sent == ["ceo"] and outer.error_data() == {"side_effects": ["email"]}
    assert [d["side_effects"] for d in seen] == [["email"]]


def test_a_sync_run_names_them_too(system: System) -> None:
    sent, seen = _setup(system)
    system.registry.register(
        HookPoint.BEFORE_MODEL_CALL,
        lambda ctx: Fork((ForkOperation(type="tool", target="send_email",
                                        parameters={"to": "audit"}),)))
    agent = _agent(system, [ConnectionError("provider reset")], [])
    with pytest.raises(ConnectionError, match="provider reset"):
        agent.invoke(ASK)
    assert sent == ["audit"]
    assert [(d["step"], d["side_effects"]) for d in seen] == [("model", ["email"])]
