"""A tool call's ``ToolError`` data names the ``side_effects`` of the llmspell tool calls
its failed attempt's own code made (an e-mail a tool sent through ``system.tools`` before
it failed), with the tool's own declared effects: the retry built-in (``ToolError`` is
among its default points) does not run the tool again and send the e-mail twice. The
same holds for the framework adapters' tool calls (LangChain, pydantic-ai, OpenAI
Agents). Only the failed attempt's calls count; a call with no side effects anywhere is
still retried. A tool call opens a collector only when someone may read it."""

from __future__ import annotations

import random
from typing import Any

import pytest

from llmspell.builtin.retry import RetryConfig, RetryHook
from llmspell.errors import ToolError
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Redirect
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.tools.registry import current_side_effects

FAST = {"base_delay": 0.001, "max_delay": 0.001, "max_attempts": 3}


def _setup(system: System) -> tuple[list[str], list[dict[str, Any]]]:
    """An llmspell ``send_email`` tool (declares ``email``), the retry built-in at its
    default points and a hook that records the ToolError data."""
    sent: list[str] = []

    @tool(side_effects=["email"])
    def send_email(to: str) -> str:
        """Send an e-mail (it goes out)."""
        sent.append(to)
        return "sent"

    @tool()
    def lookup(to: str) -> str:
        """Look someone up (changes nothing)."""
        return "found"

    system.tools.register(send_email)
    system.tools.register(lookup)
    RetryHook(RetryConfig(**FAST), rng=random.Random(1)).install(system.registry)
    seen: list[dict[str, Any]] = []

    def record(ctx: HookContext) -> None:
        seen.append(dict(ctx.data))

    system.registry.register(HookPoint.TOOL_ERROR, record, name="record", priority=-100)
    return sent, seen


def _errors(seen: list[dict[str, Any]]) -> list[tuple[str, int, Any]]:
    return [(d["tool"], d["attempt"], d.get("side_effects")) for d in seen]


# -- the runtime's tool pipeline ----------------------------------------------------------

async def test_a_tool_that_sent_an_email_then_failed_is_not_retried() -> None:
    async with System(SystemConfig(store="memory")) as system:
        sent, seen = _setup(system)

        @tool()
        async def notify(to: str) -> str:
            """Tell someone by e-mail; the connection drops afterwards."""
            await system.tools.execute("send_email", {"to": to})
            raise ConnectionResetError("reset after the mail went out")

        system.tools.register(notify)
        with pytest.raises(ToolError, match="reset"):
            await system.tools.execute("notify", {"to": "ceo"})
    assert sent == ["ceo"]  # was sent 3 times: ToolError named only notify's own effects
    assert _errors(seen) == [("notify", 1, ["email"])]


async def test_the_tools_own_effects_and_its_calls_effects_are_named_together() -> None:
    async with System(SystemConfig(store="memory")) as system:
        sent, seen = _setup(system)

        @tool(side_effects=["file_write"])
        async def report(to: str) -> str:
            """Write a report, mail it, then lose the connection."""
            await system.tools.execute("send_email", {"to": to})
            raise ConnectionResetError("reset")

        system.tools.register(report)
        with pytest.raises(ToolError):
            await system.tools.execute("report", {"to": "ceo"})
    assert sent == ["ceo"]
    assert _errors(seen) == [("report", 1, ["email", "file_write"])]


async def test_effects_two_calls_deep_are_named() -> None:
    async with System(SystemConfig(store="memory")) as system:
        sent, seen = _setup(system)

        @tool()
        async def relay(to: str) -> str:
            """Pass a message on by e-mail."""
            return str(await system.tools.execute("send_email", {"to": to}))

        @tool()
        async def outer(to: str) -> str:
            """Relay, then time out."""
            await system.tools.execute("relay", {"to": to})
            raise TimeoutError("timed out")

        system.tools.register(relay)
        system.tools.register(outer)
        with pytest.raises(ToolError):
            await system.tools.execute("outer", {"to": "ceo"})
    assert sent == ["ceo"]
    assert _errors(seen) == [("outer", 1, ["email"])]


async def test_a_tool_whose_calls_change_nothing_is_still_retried() -> None:
    async with System(SystemConfig(store="memory")) as system:
        _sent, seen = _setup(system)
        runs: list[int] = []

        @tool()
        async def flaky(to: str) -> str:
            """Look someone up, then fail twice."""
            await system.tools.execute("lookup", {"to": to})
            runs.append(1)
            if len(runs) < 3:
                raise ConnectionResetError("reset")
            return "ok"

        system.tools.register(flaky)
        assert await system.tools.execute("flaky", {"to": "ceo"}) == "ok"
    assert _errors(seen) == [("flaky", 1, []), ("flaky", 2, [])]


async def test_only_the_failed_attempts_calls_count() -> None:
    # Attempt 1 looks up and fails (retried); attempt 2 mails and fails (not retried).
    async with System(SystemConfig(store="memory")) as system:
        sent, seen = _setup(system)
        runs: list[int] = []

        @tool()
        async def second_time_mails(to: str) -> str:
            """Look up first, mail the second time; fail each time."""
            runs.append(1)
            await system.tools.execute("lookup" if len(runs) == 1 else "send_email",
                                       {"to": to})
            raise ConnectionResetError("reset")

        system.tools.register(second_time_mails)
        with pytest.raises(ToolError):
            await system.tools.execute("second_time_mails", {"to": "ceo"})
    assert sent == ["ceo"]
    assert _errors(seen) == [("second_time_mails", 1, []), ("second_time_mails", 2, ["email"])]


async def test_a_redirect_by_a_tool_error_hook_does_not_count_for_the_failed_attempt() -> None:
    # What runs after the attempt (a ToolError hook's Redirect) is no part of it.
    async with System(SystemConfig(store="memory")) as system:
        sent: list[str] = []
        seen: list[dict[str, Any]] = []

        @tool(side_effects=["email"])
        def send_email(to: str) -> str:
            """Send an e-mail."""
            sent.append(to)
            return "sent"

        @tool()
        def broken(to: str) -> str:
            """Fail."""
            raise ConnectionResetError("reset")

        system.tools.register(send_email)
        system.tools.register(broken)

        def fallback(ctx: HookContext) -> Any:
            seen.append(dict(ctx.data))
            return Redirect("send_email") if ctx.data["tool"] == "broken" else None

        system.registry.register(HookPoint.TOOL_ERROR, fallback, name="fallback")
        assert await system.tools.execute("broken", {"to": "ceo"}) == "sent"
    assert sent == ["ceo"]
    assert _errors(seen) == [("broken", 1, [])]


async def test_no_collector_is_opened_when_nobody_reads_it() -> None:
    inside: list[bool] = []
    async with System(SystemConfig(store="memory")) as system:

        @tool()
        def probe() -> str:
            """Say whether a collector is open."""
            inside.append(current_side_effects() is not None)
            return "ok"

        system.tools.register(probe)
        await system.tools.execute("probe", {})  # no ToolError hook, no enclosing attempt
        system.registry.register(HookPoint.TOOL_ERROR, lambda ctx: None, name="watch")
        await system.tools.execute("probe", {})
    assert inside == [False, True]


# -- the adapters' tool calls -------------------------------------------------------------

async def test_langchain_tool_that_sent_an_email_then_failed_is_not_retried() -> None:
    pytest.importorskip("langchain")
    from langchain.agents import create_agent
    from langchain_core.tools import tool as lc_tool

    from llmspell.integrations.langchain import LlmspellMiddleware

    from ..integrations.conftest_langchain import ScriptedChatModel, call

    async with System(SystemConfig(store="memory")) as system:
        sent, seen = _setup(system)

        @lc_tool
        async def notify(to: str) -> str:
            """Tell someone (by e-mail)."""
            await system.tools.execute("send_email", {"to": to})
            raise ConnectionError("reset after the mail went out")

        agent = create_agent(ScriptedChatModel(steps=[call("notify", to="ceo"), "done"]),
                             tools=[notify], name="mailer",
                             middleware=[LlmspellMiddleware(system)])
        with pytest.raises(ConnectionError, match="reset"):
            await agent.ainvoke({"messages": [{"role": "user", "content": "mail the ceo"}]})
    assert sent == ["ceo"]
    assert _errors(seen) == [("notify", 1, ["email"])]


async def test_pydantic_ai_tool_that_sent_an_email_then_failed_is_not_retried() -> None:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent

    from llmspell.integrations.pydantic_ai import LlmspellCapability

    from ..integrations.conftest_pydantic_ai import planned

    async with System(SystemConfig(store="memory")) as system:
        sent, seen = _setup(system)
        agent: Agent[None, str] = Agent(planned([[("notify", {"to": "ceo"})]]),
                                        name="mailer",
                                        capabilities=[LlmspellCapability(system)])

        @agent.tool_plain
        async def notify(to: str) -> str:
            """Tell someone (by e-mail)."""
            await system.tools.execute("send_email", {"to": to})
            raise ConnectionError("reset after the mail went out")

        with pytest.raises(Exception, match="reset"):
            await agent.run("mail the ceo")
    assert sent == ["ceo"]
    assert _errors(seen) == [("notify", 1, ["email"])]


async def test_openai_agents_tool_that_sent_an_email_then_failed_is_not_retried() -> None:
    pytest.importorskip("agents")
    from agents import Agent, function_tool

    from llmspell.integrations.openai_agents import OpenAIAgentsAdapter

    from ..integrations.conftest_openai_agents import ScriptModel, call, outputs, say

    async with System(SystemConfig(store="memory")) as system:
        sent, seen = _setup(system)

        @function_tool
        async def notify(to: str) -> str:
            """Tell someone (by e-mail)."""
            await system.tools.execute("send_email", {"to": to})
            raise ConnectionError("reset after the mail went out")

        def step(instructions: str | None, items: list[dict[str, Any]],
                 tools: list[str]) -> list[Any]:
            return [say("done")] if outputs(items) else [call("notify", {"to": "ceo"}, "c1")]

        agent = Agent(name="mailer", instructions="Mail.", model=ScriptModel(step),
                      tools=[notify])
        await OpenAIAgentsAdapter(system).run(agent, "mail the ceo")
    assert sent == ["ceo"]
    assert _errors(seen) == [("notify", 1, ["email"])]


async def test_openai_agents_redirected_tool_that_sent_an_email_is_not_retried() -> None:
    pytest.importorskip("agents")
    from agents import Agent, function_tool

    from llmspell.integrations.openai_agents import OpenAIAgentsAdapter

    from ..integrations.conftest_openai_agents import ScriptModel, call, outputs, say

    async with System(SystemConfig(store="memory")) as system:
        sent, seen = _setup(system)

        @function_tool
        def ask(to: str) -> str:
            """Ask someone."""
            return "asked"

        @function_tool(failure_error_function=None)  # the SDK raises its error
        async def notify(to: str) -> str:
            """Tell someone (by e-mail)."""
            await system.tools.execute("send_email", {"to": to})
            raise ConnectionError("reset after the mail went out")

        system.registry.register(
            HookPoint.BEFORE_TOOL_EXECUTION,
            lambda ctx: Redirect("notify") if ctx.data["tool"] == "ask" else None,
            name="to-notify")

        def step(instructions: str | None, items: list[dict[str, Any]],
                 tools: list[str]) -> list[Any]:
            return [say("done")] if outputs(items) else [call("ask", {"to": "ceo"}, "c1")]

        agent = Agent(name="mailer", instructions="Mail.", model=ScriptModel(step),
                      tools=[ask, notify])
        try:
            await OpenAIAgentsAdapter(system).run(agent, "mail the ceo")
        except Exception as exc:  # the redirect target's failure may end the run
            assert "reset" in str(exc)
    assert sent == ["ceo"]
    assert ("notify", 1, ["email"]) in _errors(seen)
    assert all(attempt == 1 for _, attempt, _ in _errors(seen))
