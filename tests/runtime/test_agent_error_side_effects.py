"""The ``AgentError`` (and ``WorkflowError``) data names the side effects of the tool calls
the failed attempt ran, successful ones included, so a retry hook does not run the agent
(or the step) again and repeat an e-mail that went out."""

from __future__ import annotations

import random
from typing import Any

import pytest

from llmspell.builtin.retry import RetryConfig, RetryHook
from llmspell.errors import AgentError, ProviderError, WorkflowError
from llmspell.hooks import HookPoint
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.workflows import Sequential, Step
from tests.runtime.side_effects_support import FAST, mailer, recorder


def _after_mail_503(messages: Any, tools: Any) -> Any:
    """Ask for ``send_email`` once; then the provider is overloaded."""
    if not any(m.role == "tool" for m in messages):
        return {"tool_calls": [{"name": "send_email", "arguments": {"to": "ceo"}}]}
    raise ProviderError("scripted", "overloaded", status=503)


async def _emails_sent(*, retry_side_effects: bool = False) -> tuple[int, list[dict[str, Any]]]:
    sent: list[str] = []
    hook = RetryHook(RetryConfig(**FAST, retry_side_effects=retry_side_effects),
                     points=("ToolError", "AgentError"), rng=random.Random(1))
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(mailer(sent))
        hook.install(system.registry)
        seen = recorder(system, HookPoint.AGENT_ERROR)
        agent = system.agents.create("mailer", provider=ScriptedProvider(_after_mail_503),
                                     tools=["send_email"])
        with pytest.raises(AgentError):
            await agent.run("mail the ceo")
    return len(sent), seen


async def test_a_sent_email_is_not_sent_again_by_an_agent_retry() -> None:
    # The e-mail went out, then the next model turn failed with a retryable 503: running
    # the agent again would send it again.
    sent, seen = await _emails_sent()
    assert sent == 1
    assert [d.get("side_effects") for d in seen] == [["email"]]
    # Told it may, the hook retries the run: three runs, three e-mails.
    sent, seen = await _emails_sent(retry_side_effects=True)
    assert sent == 3
    assert [d.get("side_effects") for d in seen] == [["email"]] * 3


async def test_a_run_whose_tools_declare_no_side_effects_is_retried() -> None:
    calls: list[str] = []

    @tool()
    def lookup(q: str) -> str:
        """Look something up."""
        calls.append(q)
        return "found"

    def script(messages: Any, tools: Any) -> Any:
        if not any(m.role == "tool" for m in messages):
            return {"tool_calls": [{"name": "lookup", "arguments": {"q": "x"}}]}
        raise ProviderError("scripted", "overloaded", status=503)

    hook = RetryHook(RetryConfig(**FAST), points=("AgentError",), rng=random.Random(1))
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(lookup)
        hook.install(system.registry)
        seen = recorder(system, HookPoint.AGENT_ERROR)
        agent = system.agents.create("reader", provider=ScriptedProvider(script),
                                     tools=["lookup"])
        with pytest.raises(AgentError):
            await agent.run("look it up")
    assert len(calls) == 3
    assert all(d["side_effects"] == [] for d in seen)


async def test_each_attempt_names_only_its_own_side_effects() -> None:
    # Attempt 1 fails before any tool runs; attempt 2 sends, then fails.
    sent: list[str] = []
    turns = {"n": 0}

    def script(messages: Any, tools: Any) -> Any:
        turns["n"] += 1
        if turns["n"] == 1:
            raise ProviderError("scripted", "overloaded", status=503)
        return _after_mail_503(messages, tools)

    hook = RetryHook(RetryConfig(**FAST), points=("AgentError",), rng=random.Random(1))
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(mailer(sent))
        hook.install(system.registry)
        seen = recorder(system, HookPoint.AGENT_ERROR)
        agent = system.agents.create("mailer", provider=ScriptedProvider(script),
                                     tools=["send_email"])
        with pytest.raises(AgentError):
            await agent.run("mail the ceo")
    assert sent == ["ceo"]
    assert [d.get("side_effects") for d in seen] == [[], ["email"]]


async def test_a_sub_agents_side_effects_reach_the_agent_that_ran_it() -> None:
    # A tool runs a sub-agent that sends the e-mail and succeeds; then the outer agent's
    # next model turn fails: running the outer agent again would send it again.
    sent: list[str] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(mailer(sent))
        inner = system.agents.create("inner", provider=ScriptedProvider(
            [{"tool_calls": [{"name": "send_email", "arguments": {"to": "ceo"}}]}, "done"]),
            tools=["send_email"])

        @tool()
        async def delegate(task: str) -> str:
            """Hand the task to the inner agent."""
            return str((await inner.run(task)).output)

        system.tools.register(delegate)

        def script(messages: Any, tools: Any) -> Any:
            if not any(m.role == "tool" for m in messages):
                return {"tool_calls": [{"name": "delegate", "arguments": {"task": "mail"}}]}
            raise ProviderError("scripted", "overloaded", status=503)

        RetryHook(RetryConfig(**FAST), points=("AgentError",),
                  rng=random.Random(1)).install(system.registry)
        seen = recorder(system, HookPoint.AGENT_ERROR)
        outer = system.agents.create("outer", provider=ScriptedProvider(script),
                                     tools=["delegate"])
        with pytest.raises(AgentError):
            await outer.run("mail the ceo")
    assert sent == ["ceo"]
    assert [(d["agent"], d.get("side_effects")) for d in seen] == [("outer", ["email"])]


async def test_a_workflow_step_whose_agent_sent_email_is_not_retried() -> None:
    # The agent step sends, then fails; the hook (watching WorkflowError too) must not run
    # the step again.
    sent: list[str] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(mailer(sent))
        system.agents.create("mailer", provider=ScriptedProvider(_after_mail_503),
                             tools=["send_email"])
        RetryHook(RetryConfig(**FAST), points=("AgentError", "WorkflowError"),
                  rng=random.Random(1)).install(system.registry)
        seen = recorder(system, HookPoint.WORKFLOW_ERROR)
        flow = Sequential("notify", [Step("mail", agent="mailer", input="mail the ceo")])
        with pytest.raises(WorkflowError):
            await flow.run(system)
    assert sent == ["ceo"]
    assert seen and seen[0].get("side_effects") == ["email"]


async def test_a_workflow_tool_step_with_side_effects_is_not_retried() -> None:
    sent: list[str] = []

    @tool(side_effects=["email"])
    def send_email(to: str) -> str:
        """Send an e-mail (the server times out after accepting it)."""
        sent.append(to)
        raise TimeoutError("smtp timed out after DATA")

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(send_email)
        RetryHook(RetryConfig(**FAST), points=("ToolError", "WorkflowError"),
                  rng=random.Random(1)).install(system.registry)
        seen = recorder(system, HookPoint.WORKFLOW_ERROR)
        flow = Sequential("notify", [Step("mail", tool="send_email", params={"to": "ceo"})])
        with pytest.raises(WorkflowError):
            await flow.run(system)
    assert sent == ["ceo"]
    assert seen and seen[0].get("side_effects") == ["email"]


async def test_a_workflow_step_without_side_effects_is_still_retried() -> None:
    tries: list[int] = []

    def flaky(ctx: Any) -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("reset")
        return "ok"

    async with System(SystemConfig(store="memory")) as system:
        RetryHook(RetryConfig(**FAST), points=("WorkflowError",),
                  rng=random.Random(1)).install(system.registry)
        seen = recorder(system, HookPoint.WORKFLOW_ERROR)
        flow = Sequential("flaky", [Step("go", fn=flaky)])
        result = await flow.run(system)
    assert result.outputs["go"] == "ok"
    assert len(tries) == 3
    assert all(d["side_effects"] == [] for d in seen)
