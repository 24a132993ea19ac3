"""An agent-point ``Redirect`` to a pydantic-ai agent in ``agents=`` runs that agent
governed, as a ``Fork`` does: a target without an ``LlmspellCapability`` of its own is
governed by the redirecting one (its agent points, model requests and tool calls go through
the hooks, so a security hook guarding its tool holds), with the user of the hook that
redirected; a target with a capability of its own is governed once, by that one. Offline
FunctionModel agents only."""

from __future__ import annotations

from typing import Any

from pydantic_ai import Agent

from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Cancel, Redirect
from llmspell.integrations.pydantic_ai import LlmspellCapability
from llmspell.runtime.system import System
from tests.integrations.conftest_pydantic_ai import calc_agent, capture, planned, types

P = HookPoint
ADD = [[("add", {"a": 2, "b": 3})]]


def hook(system: System, point: str, fn: Any, name: str = "test-hook") -> None:
    system.registry.register(point, fn, name=name)


def helper_agent(ran: list[str], *, own: LlmspellCapability | None = None
                 ) -> Agent[None, str]:
    """An agent named ``helper`` whose model calls its ``secret`` tool once, then answers
    with what the tool said (``ran`` records each run of the tool)."""
    agent: Agent[None, str] = Agent(planned([[("secret", {})]], model_name="helper-model"),
                                    name="helper",
                                    capabilities=[own] if own is not None else [])

    @agent.tool_plain
    def secret() -> str:
        """Read the secret."""
        ran.append("secret")
        return "s3cret"

    return agent


def redirect_calc_to_helper(system: System) -> None:
    hook(system, P.BEFORE_AGENT_EXECUTION,
         lambda ctx: Redirect("helper") if ctx.data["agent"] == "calc" else None,
         name="redirect")


async def test_an_ungoverned_redirect_target_runs_through_the_hooks(system: System) -> None:
    ran: list[str] = []
    models: list[str] = []
    users: list[Any] = []
    system.registry.register(P.BEFORE_AGENT_EXECUTION,
                             lambda ctx: ctx.metadata.update(user="alice"),
                             name="who-is-calling", priority="highest")
    redirect_calc_to_helper(system)

    def model_seen(ctx: HookContext) -> None:
        models.append(ctx.data["model"])

    def guard(ctx: HookContext) -> Cancel | None:
        users.append(ctx.metadata.get("user"))
        return Cancel("the secret is guarded") if ctx.data["tool"] == "secret" else None

    hook(system, P.BEFORE_MODEL_CALL, model_seen, name="models")
    hook(system, P.BEFORE_TOOL_EXECUTION, guard, name="guard")
    events = capture(system, "agent.**")
    agent = calc_agent(system, ADD, agents={"helper": helper_agent(ran)})
    output = (await agent.run("go")).output
    assert ran == []  # the security hook guarding the target's tool held
    assert "helper-model" in models  # the target's model requests were hooked
    assert users == ["alice"]  # with the user of the run that redirected
    assert "s3cret" not in output
    await system.bus.drain()
    assert "agent.helper.started" in types(events)  # the target is a governed child run


async def test_a_governed_redirect_target_is_governed_once(system: System) -> None:
    ran: list[str] = []
    models: list[str] = []
    redirect_calc_to_helper(system)
    hook(system, P.BEFORE_MODEL_CALL, lambda ctx: models.append(ctx.data["model"]),
         name="models")
    events = capture(system, "agent.helper.**")
    helper = helper_agent(ran, own=LlmspellCapability(system))
    agent = calc_agent(system, ADD, agents={"helper": helper})
    output = (await agent.run("go")).output
    assert output == "done: secret=s3cret"
    assert ran == ["secret"]
    assert models.count("helper-model") == 2  # two requests, each hooked once
    await system.bus.drain()
    assert types(events).count("agent.helper.started") == 1
