"""RateLimitHook with ``key="user"`` and ``user_from_params=True``: the calls inside an agent
run whose input names the user count against that user, as the cost hook charges them;
they fell into the one shared ``"anonymous"`` bucket (every user's tool calls together)."""

from __future__ import annotations

from typing import Any

from llmspell.builtin.rate_limit import ANONYMOUS, RateLimitConfig, RateLimitHook
from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint
from llmspell.runtime import System, tool
from llmspell.runtime.providers.base import Message, ToolSpec
from llmspell.runtime.providers.scripted import ScriptedProvider


@tool("lookup")
def lookup(order: str) -> str:
    """Look an order up."""
    return f"{order}: shipped"


def _model() -> ScriptedProvider:
    def reply(messages: list[Message], tools: list[ToolSpec]) -> Any:
        if any(m.role == "tool" for m in messages):
            return "done"
        return {"tool_calls": [{"name": "lookup", "arguments": {"order": "A-1"}},
                               {"name": "lookup", "arguments": {"order": "A-2"}}]}
    return ScriptedProvider(reply)


async def test_tool_calls_inside_a_run_count_against_the_runs_user() -> None:
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=50, key="user",
                                         user_from_params=True))
    async with System() as system:
        system.tools.register(lookup)
        hook.install(system.registry)
        agent = system.agents.create("helper", provider=_model(), tools=["lookup"])
        for user in ("ann", "bob"):
            assert (await agent.run({"input": "where is my order?", "user": user})
                    ).output == "done"
    by_key = hook.stats().by_key
    # Each user: the run itself and its two tool calls; nothing in the shared bucket.
    assert {k: v.allowed for k, v in by_key.items()} == {"ann": 3, "bob": 3}


async def test_a_call_outside_any_named_run_stays_anonymous() -> None:
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=50, key="user",
                                         user_from_params=True))
    tool_ctx = HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION,
                           component=ComponentId(type=ComponentType.TOOL, name="lookup"),
                           data={"params": {"order": "A-1"}})
    assert hook.key_for(tool_ctx) == ANONYMOUS
    # A tool call's own "user" parameter is read (opted in) but not remembered for others.
    named = HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION, component=tool_ctx.component,
                        data={"params": {"user": "eve"}}, correlation_id="c1")
    assert hook.key_for(named) == "eve"
    later = HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION, component=tool_ctx.component,
                        data={"params": {}}, correlation_id="c1")
    assert hook.key_for(later) == ANONYMOUS


async def test_without_the_opt_in_nothing_is_read_or_remembered() -> None:
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=50, key="user"))
    async with System() as system:
        system.tools.register(lookup)
        hook.install(system.registry)
        agent = system.agents.create("helper", provider=_model(), tools=["lookup"])
        await agent.run({"input": "where is my order?", "user": "ann"})
    assert {k: v.allowed for k, v in hook.stats().by_key.items()} == {ANONYMOUS: 3}
