"""The user an application names in a hook context's metadata (what per-user budgets and rate
limits key on) reaches every operation derived from the run it named it for: the agent's own
model and tool calls, what a hook's ``Redirect``/``Fork``/``Retry`` makes of a call, the
steps of a workflow, a sub-agent a tool runs; in the runtime and in the LangChain,
pydantic-ai and OpenAI Agents adapters. Each test names the user once, at the entry
agent's (or workflow's) before point only, and watches the derived operation's point with
a low-priority hook. Offline models only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Fork, ForkOperation, Redirect, Retry
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.system import System
from llmspell.runtime.tools.base import tool
from llmspell.runtime.workflows import Sequential, Step

from .attribution_support import (
    ask,
    langchain,
    no_trace_export,
    openai_agents,
    plus,
    pydantic_ai,
    system,
    watch,
)

__all__ = ["no_trace_export", "system"]  # fixtures

P = HookPoint


def names_the_user(system: System, entry: str = "front",
                   point: str = P.BEFORE_AGENT_EXECUTION) -> list[str]:
    """The application's own hook: names the user for the entry agent (workflow) only, so
    what a derived operation sees it inherited. Returns the entry's correlation ids."""
    named: list[str] = []

    def who(ctx: HookContext) -> None:
        if ctx.component.name == entry:
            ctx.metadata.update(user="alice")
            named.append(ctx.correlation_id)

    system.registry.register(point, who, name="who", priority="highest")
    return named


def _front_redirected_to_back(system: System) -> tuple[list[str], list[dict[str, Any]],
                                                         list[dict[str, Any]]]:
    """Names the user at the entry agent ``front`` and redirects ``front``'s run to the
    agent ``back``. Returns the entry's correlation ids and what BeforeAgentExecution and
    BeforeModelCall saw."""
    named = names_the_user(system)
    system.registry.register(P.BEFORE_AGENT_EXECUTION, lambda ctx: Redirect("back")
                             if ctx.component.name == "front" else None, name="route")
    return named, watch(system, P.BEFORE_AGENT_EXECUTION), watch(system, P.BEFORE_MODEL_CALL)


def _forks_front_to_shadow(system: System, **parameters: Any) -> None:
    """A hook forking the entry agent ``front``'s run to the agent ``shadow``."""
    system.registry.register(
        P.BEFORE_AGENT_EXECUTION,
        lambda ctx: Fork((ForkOperation(type="agent", target="shadow",
                                        parameters=parameters),))
        if ctx.component.name == "front" else None, name="fork")


@tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool()
def lookup(city: str) -> str:
    """Look a city up."""
    return f"looked up {city}"


ADDS = {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}



def _front_calling_add(system: System) -> Any:
    """The runtime agent ``front``: calls ``add`` once, then answers ``"done"``."""
    system.tools.register(add)
    return system.agents.create("front", provider=ScriptedProvider([ADDS, "done"]),
                                tools=["add"])


# -- the runtime ------------------------------------------------------------------------------

async def test_runtime_agent_model_calls_carry_the_user(system: System) -> None:
    named = names_the_user(system)
    models = watch(system, P.BEFORE_MODEL_CALL)
    front = _front_calling_add(system)
    assert (await front.run("hi")).output == "done"
    assert [m["user"] for m in models] == ["alice", "alice"]
    assert {m["correlation"] for m in models} == {named[0]}


async def test_runtime_agent_tool_calls_carry_the_user(system: System) -> None:
    named = names_the_user(system)
    tools = watch(system, P.BEFORE_TOOL_EXECUTION)
    front = _front_calling_add(system)
    await front.run("hi")
    assert [(t["name"], t["user"]) for t in tools] == [("add", "alice")]
    assert tools[0]["correlation"] == named[0]


def _add_to_plus_redirect(ctx: HookContext) -> Any:
    return Redirect("plus") if ctx.component.name == "add" else None


def _add_to_plus_fork(ctx: HookContext) -> Any:
    return Fork((ForkOperation(type="tool", target="plus", parameters={"a": 5, "b": 5}),)
                ) if ctx.component.name == "add" else None


async def _add_call_reaches_plus(system: System, hook: Any,
                                 run: Callable[[], Awaitable[Any]]) -> None:
    """``run()`` makes the entry agent ``front`` call its ``add`` tool once; ``hook`` (at
    BeforeToolExecution) sends ``add`` on to the llmspell tool ``plus`` somehow: ``plus``'s
    hooks must see the run's user and correlation."""
    named = names_the_user(system)
    system.registry.register(P.BEFORE_TOOL_EXECUTION, hook, name="route")
    tools = watch(system, P.BEFORE_TOOL_EXECUTION)
    system.tools.register(plus)
    await run()
    target = next(t for t in tools if t["name"] == "plus")
    assert (target["user"], target["correlation"]) == ("alice", named[0])


async def test_runtime_tool_redirect_target_carries_the_user(system: System) -> None:
    await _add_call_reaches_plus(system, _add_to_plus_redirect,
                                 lambda: _front_calling_add(system).run("hi"))


async def test_runtime_tool_fork_carries_the_user(system: System) -> None:
    await _add_call_reaches_plus(system, _add_to_plus_fork,
                                 lambda: _front_calling_add(system).run("hi"))


async def test_runtime_agent_redirect_target_carries_the_user(system: System) -> None:
    named, agents, models = _front_redirected_to_back(system)
    system.agents.create("back", provider=ScriptedProvider(["from back"]))
    front = system.agents.create("front", provider=ScriptedProvider(["from front"]))
    assert (await front.run("hi")).output == "from back"
    assert [(a["name"], a["user"]) for a in agents] == [("back", "alice")]
    assert [m["user"] for m in models] == ["alice"]
    assert models[0]["correlation"] == named[0]


async def test_runtime_agent_fork_carries_the_user(system: System) -> None:
    named = names_the_user(system)
    _forks_front_to_shadow(system, input="again")
    models = watch(system, P.BEFORE_MODEL_CALL)
    system.agents.create("shadow", provider=ScriptedProvider(["shadow says"]))
    front = system.agents.create("front", provider=ScriptedProvider(["front says"]))
    response = await front.run("hi")
    assert response.forks[0]["result"] == "shadow says"
    assert [m["user"] for m in models] == ["alice", "alice"]  # the run's and the fork's
    assert {m["correlation"] for m in models} == {named[0]}


async def test_runtime_model_redirect_carries_the_user(system: System) -> None:
    named = names_the_user(system)
    system.registry.register(P.BEFORE_MODEL_CALL, lambda ctx: Redirect("other-model")
                             if ctx.data["model"] != "other-model" else None, name="route")
    models = watch(system, P.BEFORE_MODEL_CALL)
    front = system.agents.create("front", provider=ScriptedProvider(["answer"]))
    await front.run("hi")
    redirected = next(m for m in models if m["data"]["model"] == "other-model")
    assert (redirected["user"], redirected["correlation"]) == (
        "alice", named[0])


async def test_runtime_model_shadow_fork_carries_the_user(system: System) -> None:
    named = names_the_user(system)
    system.registry.register(
        P.BEFORE_MODEL_CALL,
        lambda ctx: Fork((ForkOperation(type="model", target="shadow-model"),))
        if ctx.data["caller"]["type"] == "agent" else None, name="shadowing")
    models = watch(system, P.BEFORE_MODEL_CALL)
    front = system.agents.create("front", provider=ScriptedProvider(lambda m, t: "answer"))
    await front.run("hi")
    shadow = next(m for m in models if m["data"]["caller"]["type"] == "shadow")
    assert (shadow["user"], shadow["correlation"]) == ("alice", named[0])


async def test_runtime_retried_attempt_carries_the_user(system: System) -> None:
    named = names_the_user(system)
    system.registry.register(P.AFTER_AGENT_EXECUTION, lambda ctx: Retry(
        delay=0, max_attempts=2) if ctx.data["attempt"] == 1 else None, name="again")
    models = watch(system, P.BEFORE_MODEL_CALL)
    front = system.agents.create("front", provider=ScriptedProvider(["one", "two"]))
    response = await front.run("hi")
    assert (response.output, response.attempts) == ("two", 2)
    assert [m["user"] for m in models] == ["alice", "alice"]
    assert {m["correlation"] for m in models} == {named[0]}


async def test_runtime_workflow_steps_carry_the_user(system: System) -> None:
    names_the_user(system, entry="flow", point=P.BEFORE_WORKFLOW_START)
    tools = watch(system, P.BEFORE_TOOL_EXECUTION)
    models = watch(system, P.BEFORE_MODEL_CALL)
    system.tools.register(add)
    system.agents.create("writer", provider=ScriptedProvider(["written"]))
    flow = Sequential("flow", [Step("sum", tool="add", params={"a": 1, "b": 2}),
                               Step("write", agent="writer", input="hi")])
    result = await flow.run(system)
    assert result.outputs == {"sum": 3, "write": "written"}
    assert [t["user"] for t in tools] == ["alice"] and [m["user"] for m in models] == ["alice"]
    assert tools[0]["correlation"] == models[0]["correlation"] == result.correlation_id


async def test_runtime_sub_agent_a_tool_runs_carries_the_user(system: System) -> None:
    names_the_user(system)
    models = watch(system, P.BEFORE_MODEL_CALL)
    helper = system.agents.create("helper", provider=ScriptedProvider(["42"]))

    @tool()
    async def ask_helper(question: str) -> str:
        """Ask the helper agent."""
        return str((await helper.run(question)).output)

    system.tools.register(ask_helper)
    front = system.agents.create("front", provider=ScriptedProvider([
        {"tool_calls": [{"name": "ask_helper", "arguments": {"question": "6 x 7?"}}]},
        "done"]), tools=["ask_helper"])
    await front.run("hi")
    helped = [m for m in models if m["data"]["caller"]["name"] == "helper"]
    assert [m["user"] for m in helped] == ["alice"]


# -- LangChain --------------------------------------------------------------------------------

ASK: Any = ask("hello")


async def test_langchain_agent_redirect_to_a_langchain_agent_carries_the_user(
        system: System) -> None:
    create_agent, middleware, model, _ = langchain()
    named, agents, models = _front_redirected_to_back(system)
    back = create_agent(model(steps=["from back"]), tools=[], name="back",
                        middleware=[middleware(system)])
    front = create_agent(model(steps=["from front"]), tools=[], name="front",
                         middleware=[middleware(system, agents={"back": back})])
    out = await front.ainvoke(ASK)
    assert out["messages"][-1].content == "from back"
    assert [(a["name"], a["user"]) for a in agents] == [("back", "alice")]
    assert [m["user"] for m in models] == ["alice"]
    assert models[0]["correlation"] == named[0]


async def _langchain_add_call(system: System) -> None:
    create_agent, middleware, model, call = langchain()
    from tests.integrations.conftest_langchain import add as lc_add

    front = create_agent(model(steps=[call("add", a=1, b=2), "done"]), tools=[lc_add],
                         name="front", middleware=[middleware(system)])
    await front.ainvoke(ASK)


async def test_langchain_tool_redirect_carries_the_user(system: System) -> None:
    await _add_call_reaches_plus(system, _add_to_plus_redirect,
                                 lambda: _langchain_add_call(system))


async def test_langchain_tool_fork_carries_the_user(system: System) -> None:
    await _add_call_reaches_plus(system, _add_to_plus_fork,
                                 lambda: _langchain_add_call(system))


async def test_langchain_sub_agent_inside_a_tool_carries_the_user(system: System) -> None:
    create_agent, middleware, model, call = langchain()
    from langchain_core.tools import tool as lc_tool

    names_the_user(system)
    models = watch(system, P.BEFORE_MODEL_CALL)
    worker = create_agent(model(steps=["42"], model="gpt-4o-mini"), tools=[], name="worker",
                          middleware=[middleware(system)])

    @lc_tool
    async def delegate(question: str) -> str:
        """Ask the worker agent."""
        state = await worker.ainvoke({"messages": [{"role": "user", "content": question}]})
        return str(state["messages"][-1].content)

    front = create_agent(model(steps=[call("delegate", question="6 x 7?"), "done"]),
                         tools=[delegate], name="front", middleware=[middleware(system)])
    await front.ainvoke(ASK)
    worked = [m for m in models if m["data"]["caller"]["name"] == "worker"]
    assert [m["user"] for m in worked] == ["alice"]


# -- pydantic-ai ------------------------------------------------------------------------------

async def test_pydantic_ai_run_model_and_tool_calls_carry_the_user(system: System) -> None:
    from tests.integrations.conftest_pydantic_ai import calc_agent

    named = names_the_user(system)
    models = watch(system, P.BEFORE_MODEL_CALL)
    tools = watch(system, P.BEFORE_TOOL_EXECUTION)
    agent = calc_agent(system, [[("add", {"a": 1, "b": 2})]], name="front")
    await agent.run("add")
    assert [m["user"] for m in models] == ["alice", "alice"]
    assert [t["user"] for t in tools] == ["alice"]
    assert {m["correlation"] for m in models + tools} == {named[0]}


async def test_pydantic_ai_agent_redirect_carries_the_user(system: System) -> None:
    agent_type, capability, answering = pydantic_ai()
    named, agents, models = _front_redirected_to_back(system)
    back = agent_type(answering("from back", "back-model"), name="back",
                      capabilities=[capability(system)])
    front = agent_type(answering("from front", "front-model"), name="front",
                       capabilities=[capability(system, agents={"back": back})])
    assert (await front.run("hi")).output == "from back"
    assert [(a["name"], a["user"]) for a in agents] == [("back", "alice")]
    assert [m["user"] for m in models] == ["alice"]
    assert models[0]["correlation"] == named[0]


async def test_pydantic_ai_agent_fork_carries_the_user(system: System) -> None:
    agent_type, capability, answering = pydantic_ai()
    named = names_the_user(system)
    _forks_front_to_shadow(system)
    models = watch(system, P.BEFORE_MODEL_CALL)
    shadow = agent_type(answering("shadow says", "shadow-model"), name="shadow")
    front = agent_type(answering("front says", "front-model"), name="front",
                       capabilities=[capability(system, agents={"shadow": shadow})])
    assert (await front.run("hi")).output == "front says"
    forked = next(m for m in models if m["data"]["model"] == "shadow-model")
    assert (forked["user"], forked["correlation"]) == ("alice", named[0])


async def test_pydantic_ai_tool_redirect_carries_the_user(system: System) -> None:
    from tests.integrations.conftest_pydantic_ai import calc_agent

    await _add_call_reaches_plus(system, _add_to_plus_redirect, lambda: calc_agent(
        system, [[("add", {"a": 1, "b": 2})]], name="front").run("add"))


async def test_pydantic_ai_delegated_sub_agent_carries_the_user(system: System) -> None:
    agent_type, capability, answering = pydantic_ai()
    from tests.integrations.conftest_pydantic_ai import planned

    names_the_user(system)
    models = watch(system, P.BEFORE_MODEL_CALL)
    worker = agent_type(answering("42", "worker-model"), name="worker",
                        capabilities=[capability(system)])
    front = agent_type(planned([[("delegate", {"question": "6 x 7?"})]]), name="front",
                       capabilities=[capability(system)])

    @front.tool_plain
    async def delegate(question: str) -> str:
        """Ask the worker agent."""
        return str((await worker.run(question)).output)

    await front.run("hi")
    worked = [m for m in models if m["data"]["model"] == "worker-model"]
    assert [m["user"] for m in worked] == ["alice"]


# -- OpenAI Agents SDK ------------------------------------------------------------------------

async def test_openai_agents_run_model_and_tool_calls_carry_the_user(system: System) -> None:
    _, adapter_type, sdk, _ = openai_agents()
    named = names_the_user(system, entry="weather")
    models = watch(system, P.BEFORE_MODEL_CALL)
    tools = watch(system, P.BEFORE_TOOL_EXECUTION)
    agent, _seen = sdk.weather_agent(sdk.ScriptModel(sdk.tool_then_answer()))
    await adapter_type(system).run(agent, "weather?")
    assert [m["user"] for m in models] == ["alice", "alice"]
    assert [t["user"] for t in tools] == ["alice"]
    assert {m["correlation"] for m in models + tools} == {
        named[0]}


async def test_openai_agents_handoff_carries_the_user(system: System) -> None:
    agent_type, adapter_type, sdk, answering = openai_agents()
    named = names_the_user(system, entry="triage")
    models = watch(system, P.BEFORE_MODEL_CALL)
    specialist = agent_type(name="specialist", model=answering("specialist says"))
    triage = agent_type(name="triage", handoffs=[specialist], model=sdk.ScriptModel(
        lambda i, items, tools: [sdk.call("transfer_to_specialist", {}, "h1")]))
    run = await adapter_type(system).run(triage, "help?")
    assert run.final_output == "specialist says"
    handed = [m for m in models if m["data"]["caller"]["name"] == "specialist"]
    assert [m["user"] for m in handed] == ["alice"]
    assert handed[0]["correlation"] == named[0]


async def test_openai_agents_agent_as_tool_carries_the_user(system: System) -> None:
    agent_type, adapter_type, sdk, answering = openai_agents()
    names_the_user(system, entry="boss")
    tools = watch(system, P.BEFORE_TOOL_EXECUTION)
    worker = agent_type(name="worker", model=answering("42"))
    boss = agent_type(name="boss", tools=[worker.as_tool(
        tool_name="ask_worker", tool_description="Ask the worker.")],
        model=sdk.ScriptModel(sdk.tool_then_answer("ask_worker", {"input": "6 x 7?"})))
    run = await adapter_type(system).run(boss, "hi")
    assert run.final_output == "answer: 42"
    assert [(t["name"], t["user"]) for t in tools] == [("ask_worker", "alice")]


async def test_openai_agents_tool_redirect_carries_the_user(system: System) -> None:
    _, adapter_type, sdk, _ = openai_agents()
    named = names_the_user(system, entry="weather")
    system.registry.register(P.BEFORE_TOOL_EXECUTION, lambda ctx: Redirect("lookup")
                             if ctx.component.name == "weather" else None, name="route")
    tools = watch(system, P.BEFORE_TOOL_EXECUTION)
    system.tools.register(lookup)
    agent, _seen = sdk.weather_agent(sdk.ScriptModel(sdk.tool_then_answer()))
    run = await adapter_type(system).run(agent, "weather?")
    assert run.final_output == "answer: looked up Paris"
    target = next(t for t in tools if t["name"] == "lookup")
    assert (target["user"], target["correlation"]) == (
        "alice", named[0])


async def test_openai_agents_agent_redirect_carries_the_user(system: System) -> None:
    agent_type, adapter_type, _, answering = openai_agents()
    named, _agents, models = _front_redirected_to_back(system)
    adapter = adapter_type(system)
    back = adapter.govern(agent_type(name="back", model=answering("from back")))
    front = agent_type(name="front", model=answering("from front"))
    run = await adapter.run(front, "hi")
    assert run.final_output == "from back" and back is not None
    assert [(m["data"]["caller"]["name"], m["user"]) for m in models] == [("back", "alice")]
    assert models[0]["correlation"] == named[0]


async def test_openai_agents_agent_fork_carries_the_user(system: System) -> None:
    agent_type, adapter_type, _, answering = openai_agents()
    names_the_user(system)
    _forks_front_to_shadow(system)
    models = watch(system, P.BEFORE_MODEL_CALL)
    adapter = adapter_type(system)
    shadow = adapter.govern(agent_type(name="shadow", model=answering("shadow says")))
    run = await adapter.run(agent_type(name="front", model=answering("front says")), "hi")
    assert run.forks[0]["result"] == "shadow says" and shadow is not None
    forked = [m for m in models if m["data"]["caller"]["name"] == "shadow"]
    # A fork is an adapter run of its own (its own correlation id), with the user.
    assert [m["user"] for m in forked] == ["alice"]
