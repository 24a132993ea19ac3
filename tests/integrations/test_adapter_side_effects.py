"""A framework agent's ``AgentError`` data names the ``side_effects`` of the llmspell tool
calls its failed attempt ran (an e-mail sent from a framework tool through
``system.tools``), so the retry hook does not run the agent again and send it twice.
Framework tools declare no side effects llmspell could know of: only llmspell tools'
declared effects are named."""

from __future__ import annotations

import random
from typing import Any

import pytest

from llmspell.builtin.retry import RetryConfig, RetryHook
from llmspell.hooks import HookContext, HookPoint
from llmspell.runtime import System, tool

FAST = {"base_delay": 0.001, "max_delay": 0.001, "max_attempts": 3}


def _setup(system: System) -> tuple[list[str], list[dict[str, Any]]]:
    sent: list[str] = []

    @tool(side_effects=["email"])
    def send_email(to: str) -> str:
        """Send an e-mail (it goes out)."""
        sent.append(to)
        return "sent"

    system.tools.register(send_email)
    RetryHook(RetryConfig(**FAST), points=("AgentError",),
              rng=random.Random(1)).install(system.registry)
    seen: list[dict[str, Any]] = []

    def record(ctx: HookContext) -> None:
        seen.append(dict(ctx.data))

    system.registry.register(HookPoint.AGENT_ERROR, record, name="record", priority=-100)
    return sent, seen


async def test_openai_agents_run_that_sent_email_is_not_retried(system: System) -> None:
    pytest.importorskip("agents")
    from agents import Agent, function_tool

    from llmspell.integrations.openai_agents import OpenAIAgentsAdapter

    from .conftest_openai_agents import ScriptModel, call, outputs

    sent, seen = _setup(system)

    @function_tool
    async def notify(to: str) -> str:
        """Tell someone (by e-mail)."""
        return str(await system.tools.execute("send_email", {"to": to}))

    def step(instructions: str | None, items: list[dict[str, Any]],
             tools: list[str]) -> list[Any]:
        if not outputs(items):
            return [call("notify", {"to": "ceo"}, "c1")]
        raise ConnectionError("reset after the mail went out")

    agent = Agent(name="mailer", instructions="Mail.", model=ScriptModel(step),
                  tools=[notify])
    with pytest.raises(Exception, match="reset"):
        await OpenAIAgentsAdapter(system).run(agent, "mail the ceo")
    assert sent == ["ceo"]
    assert [d.get("side_effects") for d in seen] == [["email"]]


async def test_pydantic_ai_run_that_sent_email_is_not_retried(system: System) -> None:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent

    from llmspell.integrations.pydantic_ai import LlmspellCapability

    from .conftest_pydantic_ai import planned

    sent, seen = _setup(system)
    # Every attempt asks for notify first; its next model request fails.
    model = planned([[("notify", {"to": "ceo"})]],
                    fail=lambda n: ConnectionError("reset") if n % 2 == 0 else None)
    agent: Agent[None, str] = Agent(model, name="mailer",
                                    capabilities=[LlmspellCapability(system)])

    @agent.tool_plain
    async def notify(to: str) -> str:
        """Tell someone (by e-mail)."""
        return str(await system.tools.execute("send_email", {"to": to}))

    with pytest.raises(Exception, match="reset"):
        await agent.run("mail the ceo")
    assert sent == ["ceo"]
    assert [d.get("side_effects") for d in seen] == [["email"]]
