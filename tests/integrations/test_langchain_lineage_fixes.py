"""LangChain adapter: a tool ``Redirect`` that crosses from the agent's own tools to
llmspell's tools counts against one redirect bound for the whole chain (the registry goes on
counting where the adapter left off), so a cycle ends with the redirect-loop error after as
many redirects as a cycle between the agent's own tools. Offline models only."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent

from llmspell.errors import ToolExecutionError
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Redirect
from llmspell.integrations.langchain import LlmspellMiddleware
from llmspell.runtime.system import System
from llmspell.runtime.tools.base import tool
from tests.integrations.conftest_langchain import RAN, ScriptedChatModel, add, call, shout

ASK: Any = {"messages": [{"role": "user", "content": "please compute"}]}


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    RAN.clear()


async def test_a_redirect_cycle_through_llmspell_tools_is_bounded_by_one_count(
        system: System) -> None:
    ran: list[str] = []

    @tool(name="multiply")
    def multiply(a: int, b: int) -> int:
        """Multiply two numbers (llmspell's; the agent has none)."""
        ran.append("multiply")
        return a * b

    @tool(name="add")
    def llmspell_add(a: int, b: int) -> int:
        """Add two numbers (llmspell's; the agent has an add too)."""
        ran.append("add")
        return a + b

    system.tools.register(multiply)
    system.tools.register(llmspell_add)
    hops: list[str] = []

    def loop(ctx: HookContext) -> Redirect:
        hops.append(ctx.data["tool"])
        return Redirect("multiply" if ctx.data["tool"] == "add" else "add")

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, loop, name="loop")
    agent = create_agent(ScriptedChatModel(steps=[call("add", a=2, b=3), "done"]),
                         tools=[add, shout], name="calc",
                         middleware=[LlmspellMiddleware(system)])
    with pytest.raises(ToolExecutionError, match="redirects went 5 deep") as info:
        await agent.ainvoke(ASK)
    assert "Redirect" in (info.value.hint or "")
    assert hops == ["add", "multiply", "add", "multiply", "add"]
    assert ran == [] and RAN == []
