"""The user named in hook metadata (what per-user budgets and rate limits key on) where
tests/test_user_attribution.py does not look: sync entry points and the threads they run
on (``execute_sync``, blocking tools, LangChain's ``invoke``, pydantic-ai's ``run_sync``),
many runs for different users at once through the same agent, adapter and workflow, and
the other way round: metadata that must not leak out of a run once it is over (however it
ended) or into the code that consumes a stream. Offline models only.

Each user is named once, by the application's own hook at the entry's before point, from
the run's input (``"user07: ..."``); a derived operation's expected user is the one token
``userNN`` its own data carries (its input, its arguments), so the check does not rely on
what the metadata says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Fork, ForkOperation, Redirect
from llmspell.runtime.calls import current_context, inherited_context
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.system import System
from llmspell.runtime.tools.base import tool
from llmspell.runtime.workflows import Sequential, Step

from .attribution_support import (
    USER,
    ask,
    langchain,
    no_trace_export,
    openai_agents,
    pydantic_ai,
    system,
    watch,
)

__all__ = ["no_trace_export", "system"]  # fixtures

P = HookPoint


def _entry_input(ctx: HookContext) -> str:
    params = ctx.data.get("params")
    if isinstance(params, dict) and isinstance(params.get("input"), str):
        return str(params["input"])
    return str(ctx.data.get("input", ""))


def names_users(system: Any, *entries: str, point: str = P.BEFORE_AGENT_EXECUTION
                ) -> dict[str, str]:
    """The application's hook: names the user of an entry agent (workflow) run from its
    input's ``userNN`` prefix, at the entry only. Returns correlation id -> user."""
    named: dict[str, str] = {}

    def who(ctx: HookContext) -> None:
        if ctx.component.name in entries:
            found = USER.match(_entry_input(ctx))
            if found is not None:
                ctx.metadata.update(user=found.group(0))
                named[ctx.correlation_id] = found.group(0)

    system.registry.register(point, who, name="who", priority="highest")
    return named


def attributed(seen: list[dict[str, Any]]) -> None:
    """Every dispatch was for the one user its data names, never anonymous."""
    wrong = [(s["name"], s["named"], s["user"]) for s in seen
             if len(s["named"]) != 1 or s["user"] != s["named"][0]]
    assert not wrong, wrong


def users(seen: list[dict[str, Any]], name: str | None = None) -> list[Any]:
    return [s["user"] for s in seen if name is None or s["name"] == name]


def _model_calls(system: System) -> list[dict[str, Any]]:
    """Names each run's user at the entry ``front``; returns what BeforeModelCall saw."""
    names_users(system, "front")
    return watch(system, P.BEFORE_MODEL_CALL)


def _tool_calls_with_echo(system: System, entry: str,
                          point: str = P.BEFORE_AGENT_EXECUTION) -> list[dict[str, Any]]:
    """Names each run's user at ``entry``, registers ``echo`` (what a test calls to see
    whom a new call is for) and returns what BeforeToolExecution saw."""
    names_users(system, entry, point=point)
    tools = watch(system, P.BEFORE_TOOL_EXECUTION)
    system.tools.register(echo)
    return tools


def _user_in(content: Any) -> str:
    """The first ``userNN`` in ``content`` (a run's input), or ``"nobody"``."""
    who = USER.search(str(content))
    return who.group(0) if who else "nobody"


@tool()
def echo(who: str) -> str:
    """Say who asked."""
    return f"for {who}"


@tool()
async def slow_echo(who: str) -> str:
    """Say who asked, letting other tasks run meanwhile."""
    for _ in range(3):
        await asyncio.sleep(0)
    return f"for {who}"


@tool()
def other_echo(who: str) -> str:
    """Say who asked (the redirect target)."""
    return f"other for {who}"


def _asker(tool_name: str) -> Any:
    """A reply function: first turn calls ``tool_name`` with ``who`` = the input's user, then
    answers with the tool's result."""

    def reply(messages: Any, tools: Any) -> Any:
        last = messages[-1]
        if last.role == "user":
            return {"tool_calls": [{"name": tool_name, "arguments": {
                "who": _user_in(last.content)}}]}
        return f"done {last.content}"

    return reply


def _front_calling(system: System, tool_name: str) -> Any:
    """The runtime agent ``front``: calls ``tool_name`` once (``_asker``), then answers."""
    return system.agents.create("front", provider=ScriptedProvider(_asker(tool_name)),
                                tools=[tool_name])


# -- sync entry points and threads: the runtime ------------------------------------------------

async def test_execute_sync_from_a_blocking_tool_carries_the_user(system: System) -> None:
    tools = _tool_calls_with_echo(system, "front")

    @tool(blocking=True)
    def relay(who: str) -> str:
        """Relay to echo through the sync API (runs on a worker thread)."""
        return str(system.tools.execute_sync("echo", {"who": who}))

    system.tools.register(relay)
    front = _front_calling(system, "relay")
    assert "for user01" in (await front.run("user01: hi")).output
    assert [t["name"] for t in tools] == ["relay", "echo"]
    attributed(tools)
    assert tools[0]["thread"] != tools[1]["thread"]  # echo's hooks ran on the worker


async def test_a_blocking_tool_running_a_sub_agent_on_its_thread_carries_the_user(
        system: System) -> None:
    from llmspell.core.loops import thread_loop

    models = _model_calls(system)
    helper = system.agents.create("helper", provider=ScriptedProvider(["42"]))

    @tool(blocking=True)
    def ask_helper(who: str) -> str:
        """Ask the helper agent from sync code, on this worker thread's own loop."""
        return str(thread_loop().run_until_complete(helper.run(f"{who} asks")).output)

    system.tools.register(ask_helper)
    front = _front_calling(system, "ask_helper")
    await front.run("user02: hi")
    helped = [m for m in models if m["data"]["caller"]["name"] == "helper"]
    assert len(helped) == 1
    attributed(models)


def test_execute_sync_at_top_level_after_a_run_sees_no_user(system: System) -> None:
    from llmspell.core.loops import thread_loop

    tools = _tool_calls_with_echo(system, "front")
    front = _front_calling(system, "echo")
    thread_loop().run_until_complete(front.run("user03: hi"))
    assert inherited_context() is None and current_context() is None
    system.tools.execute_sync("echo", {"who": "later"})
    assert users(tools) == ["user03", None]


# -- sync entry points and threads: LangChain --------------------------------------------------

def _lc_asker(tool_name: str, call: Any) -> Any:
    """A LangChain script step: call ``tool_name`` with ``who`` = the input's user."""

    def step(messages: Any) -> Any:
        return call(tool_name, who=_user_in(messages[0].content))

    return step


def test_langchain_sync_invoke_carries_the_user(system: System) -> None:
    create_agent, middleware, model, call = langchain()
    from langchain_core.tools import tool as lc_tool

    models = _model_calls(system)
    tools = watch(system, P.BEFORE_TOOL_EXECUTION)

    @lc_tool
    def greet(who: str) -> str:
        """Greet someone."""
        return f"hello {who}"

    front = create_agent(model(steps=[_lc_asker("greet", call), "done"]), tools=[greet],
                         name="front", middleware=[middleware(system)])
    front.invoke(ask("user11: hi"))
    assert len(models) == 2 and users(tools) == ["user11"]
    attributed(models + tools)
    assert inherited_context() is None


def test_langchain_sync_invoke_tool_redirect_and_fork_carry_the_user(system: System) -> None:
    create_agent, middleware, model, call = langchain()
    from langchain_core.tools import tool as lc_tool

    names_users(system, "front")

    def route(ctx: HookContext) -> Any:
        if ctx.component.name == "greet":
            who = ctx.data["params"]["who"]
            return Fork((ForkOperation(type="tool", target="echo",
                                       parameters={"who": who}),))
        if ctx.component.name == "wave":
            return Redirect("other_echo")
        return None

    system.registry.register(P.BEFORE_TOOL_EXECUTION, route, name="route")
    tools = watch(system, P.BEFORE_TOOL_EXECUTION)
    system.tools.register_all([echo, other_echo])

    @lc_tool
    def greet(who: str) -> str:
        """Greet someone."""
        return f"hello {who}"

    @lc_tool
    def wave(who: str) -> str:
        """Wave at someone."""
        return f"wave {who}"

    def both(messages: Any) -> Any:
        name = _user_in(messages[0].content)
        return [*call("greet", "c1", who=name), *call("wave", "c2", who=name)]

    front = create_agent(model(steps=[both, "done"]), tools=[greet, wave],
                         name="front", middleware=[middleware(system)])
    front.invoke(ask("user12: hi"))
    assert sorted(t["name"] for t in tools) == ["echo", "greet", "other_echo"]  # wave: routed
    attributed(tools)


def _front_delegating_to_a_worker(system: System) -> tuple[Any, list[dict[str, Any]]]:
    """A LangChain agent ``front`` whose sync tool ``delegate`` runs the agent ``worker``
    synchronously (on LangChain's executor thread under an async run); the model-call
    hook data seen."""
    create_agent, middleware, model, call = langchain()
    from langchain_core.tools import tool as lc_tool

    models = _model_calls(system)
    worker = create_agent(model(steps=["42"], model="gpt-4o-mini"), tools=[], name="worker",
                          middleware=[middleware(system)])

    @lc_tool
    def delegate(who: str) -> str:
        """Ask the worker agent (sync)."""
        state = worker.invoke(ask(f"{who} asks"))
        return str(state["messages"][-1].content)

    front = create_agent(model(steps=[_lc_asker("delegate", call), "done"]),
                         tools=[delegate], name="front", middleware=[middleware(system)])
    return front, models


def test_langchain_sync_tool_running_a_sub_agent_synchronously_carries_the_user(
        system: System) -> None:
    front, models = _front_delegating_to_a_worker(system)
    front.invoke(ask("user13: hi"))
    assert len([m for m in models if m["data"]["caller"]["name"] == "worker"]) == 1
    attributed(models)


async def test_langchain_async_run_with_a_sync_tool_running_a_sub_agent_carries_the_user(
        system: System) -> None:
    front, models = _front_delegating_to_a_worker(system)
    await front.ainvoke(ask("user14: hi"))
    assert len([m for m in models if m["data"]["caller"]["name"] == "worker"]) == 1
    attributed(models)


async def test_langchain_agent_invoked_synchronously_from_a_runtime_tool_carries_the_user(
        system: System) -> None:
    create_agent, middleware, model, _ = langchain()
    models = _model_calls(system)
    worker = create_agent(model(steps=["42"], model="gpt-4o-mini"), tools=[], name="worker",
                          middleware=[middleware(system)])

    @tool()
    def delegate(who: str) -> str:
        """Run the LangChain worker with its sync API, on the event loop's thread."""
        return str(worker.invoke(ask(f"{who} asks"))["messages"][-1].content)

    system.tools.register(delegate)
    front = _front_calling(system, "delegate")
    await front.run("user15: hi")
    assert len([m for m in models if m["data"]["caller"]["name"] == "worker"]) == 1
    attributed(models)


# -- sync entry points and threads: pydantic-ai ------------------------------------------------

def _pa_asker(tool_name: str) -> Any:
    """A pydantic-ai model: first calls ``tool_name`` with ``who`` = the prompt's user."""
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import FunctionModel

    def answer(messages: Any, info: Any) -> Any:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart(tool_name, {
                "who": _user_in(messages[0].parts[-1].content)}, tool_call_id="c1")])
        return ModelResponse(parts=[TextPart("done")])

    return FunctionModel(answer, model_name="front-model")


def test_pydantic_ai_run_sync_carries_the_user(system: System) -> None:
    agent_type, capability, _ = pydantic_ai()
    models = _model_calls(system)
    tools = watch(system, P.BEFORE_TOOL_EXECUTION)
    front = agent_type(_pa_asker("greet"), name="front", capabilities=[capability(system)])

    @front.tool_plain
    def greet(who: str) -> str:
        """Greet someone."""
        return f"hello {who}"

    assert front.run_sync("user21: hi").output == "done"
    assert len(models) == 2 and users(tools) == ["user21"]
    attributed(models + tools)
    assert inherited_context() is None


async def test_pydantic_ai_run_sync_in_a_blocking_runtime_tool_carries_the_user(
        system: System) -> None:
    # (pydantic-ai itself refuses run_sync inside its own sync tools.)
    agent_type, capability, answering = pydantic_ai()
    models = _model_calls(system)
    worker = agent_type(answering("42", "worker-model"), name="worker",
                        capabilities=[capability(system)])

    @tool(blocking=True)
    def delegate(who: str) -> str:
        """Run the pydantic-ai worker with run_sync, on the tool's worker thread."""
        return str(worker.run_sync(f"{who} asks").output)

    system.tools.register(delegate)
    front = _front_calling(system, "delegate")
    await front.run("user22: hi")
    assert len([m for m in models if m["data"]["model"] == "worker-model"]) == 1
    attributed(models)


async def test_pydantic_ai_sync_tool_calling_execute_sync_carries_the_user(
        system: System) -> None:
    agent_type, capability, _ = pydantic_ai()
    tools = _tool_calls_with_echo(system, "front")
    front = agent_type(_pa_asker("relay"), name="front", capabilities=[capability(system)])

    @front.tool_plain
    def relay(who: str) -> str:
        """Relay to the llmspell tool echo through the sync API."""
        return str(system.tools.execute_sync("echo", {"who": who}))

    await front.run("user24: hi")
    assert [t["name"] for t in tools] == ["relay", "echo"]
    attributed(tools)


# -- sync entry points and threads: OpenAI Agents SDK ------------------------------------------

def _oa_asker(sdk: Any, tool_name: str) -> Any:
    """An SDK script: call ``tool_name`` with ``who`` = the input's user, then answer."""

    def step(instructions: Any, items: list[dict[str, Any]], tools: Any) -> list[Any]:
        done = sdk.outputs(items)
        if done:
            return [sdk.say("answer: " + str(done[-1]["output"]))]
        return [sdk.call(tool_name, {"who": _user_in(items[0].get("content"))}, "c1")]

    return step


async def test_openai_agents_sync_function_tool_calling_execute_sync_carries_the_user(
        system: System) -> None:
    agent_type, adapter_type, sdk, _ = openai_agents()
    from agents import function_tool

    tools = _tool_calls_with_echo(system, "front")

    @function_tool
    def relay(who: str) -> str:
        """Relay to the llmspell tool echo through the sync API."""
        return str(system.tools.execute_sync("echo", {"who": who}))

    front = agent_type(name="front", tools=[relay],
                       model=sdk.ScriptModel(_oa_asker(sdk, "relay")))
    run = await adapter_type(system).run(front, "user31: hi")
    assert "for user31" in str(run.final_output)
    assert [t["name"] for t in tools] == ["relay", "echo"]
    attributed(tools)


async def test_openai_agents_adapter_run_from_a_blocking_runtime_tool_carries_the_user(
        system: System) -> None:
    agent_type, adapter_type, _, answering = openai_agents()
    from llmspell.core.loops import thread_loop

    models = _model_calls(system)
    adapter = adapter_type(system)
    worker = agent_type(name="worker", model=answering("42"))

    @tool(blocking=True)
    def delegate(who: str) -> str:
        """Run the SDK worker through the adapter, from sync code on the worker thread."""
        run = thread_loop().run_until_complete(adapter.run(worker, f"{who} asks"))
        return str(run.final_output)

    system.tools.register(delegate)
    front = _front_calling(system, "delegate")
    await front.run("user32: hi")
    assert len([m for m in models if m["data"]["caller"]["name"] == "worker"]) == 1
    attributed(models)


# -- many users at once through the same agent, adapter and workflow -------------------------

USERS = [f"user{n:02d}" for n in range(40, 60)]


def _forks_and_redirects(system: Any) -> None:
    """Hooks that fork ``slow_echo`` to ``echo`` (with the call's own ``who``) and redirect
    ``wave`` to ``other_echo``: derived calls whose user only the context can carry."""

    def route(ctx: HookContext) -> Any:
        if ctx.component.name == "slow_echo":
            return Fork((ForkOperation(type="tool", target="echo",
                                       parameters={"who": ctx.data["params"]["who"]}),))
        if ctx.component.name == "wave":
            return Redirect("other_echo")
        return None

    system.registry.register(P.BEFORE_TOOL_EXECUTION, route, name="route")


@tool()
async def wave(who: str) -> str:
    """Wave at someone (redirected)."""
    await asyncio.sleep(0)
    return f"wave {who}"


def _two_calls(messages: Any, tools: Any) -> Any:
    last = messages[-1]
    if last.role == "user":
        name = _user_in(last.content)
        return {"tool_calls": [{"name": "slow_echo", "arguments": {"who": name}},
                               {"name": "wave", "arguments": {"who": name}}]}
    return "done"


async def test_concurrent_runs_of_one_runtime_agent_each_carry_their_own_user(
        system: System) -> None:
    _front_forked_to_shadow(system)
    models, tools = _routed_and_watched(system, slow_echo, wave, echo, other_echo)
    system.agents.create("shadow", provider=ScriptedProvider(_two_calls),
                         tools=["slow_echo", "wave"])
    front = system.agents.create("front", provider=ScriptedProvider(_two_calls),
                                 tools=["slow_echo", "wave"])
    await asyncio.gather(*(front.run(f"{u}: hi") for u in USERS))
    assert len(models) == 4 * len(USERS)  # two turns each, the run's and its shadow's
    # A forked run (the shadow) does not fork again; its redirects run.
    assert sorted(t["name"] for t in tools).count("echo") == len(USERS)
    assert sorted(t["name"] for t in tools).count("other_echo") == 2 * len(USERS)
    attributed(models + tools)


async def test_concurrent_runs_of_many_runtime_agents_interleave_and_keep_their_users(
        system: System) -> None:
    names_users(system, *(f"front-{u}" for u in USERS))
    models, tools = _routed_and_watched(system, slow_echo, wave, echo, other_echo)
    agents = [system.agents.create(f"front-{u}", provider=ScriptedProvider(_two_calls),
                                   tools=["slow_echo", "wave"]) for u in USERS]
    await asyncio.gather(*(a.run(f"{u}: hi") for a, u in zip(agents, USERS, strict=True)))
    assert len(models) == 2 * len(USERS) and len(tools) == 3 * len(USERS)
    attributed(models + tools)


async def test_concurrent_workflows_each_carry_their_own_user(system: System) -> None:
    names_users(system, "flow", point=P.BEFORE_WORKFLOW_START)
    models, tools = _routed_and_watched(system, slow_echo, wave, echo, other_echo)
    system.agents.create("writer", provider=ScriptedProvider(
        lambda messages, tools: f"written for {messages[-1].content}"))
    flow = Sequential("flow", [Step("echo", tool="slow_echo", params={"who": "${input}"}),
                               Step("wave", tool="wave", params={"who": "${input}"}),
                               Step("write", agent="writer", input="${input}")])
    results = await asyncio.gather(*(flow.run(system, u) for u in USERS))
    assert [r.outputs["write"] for r in results] == [f"written for {u}" for u in USERS]
    assert len(models) == len(USERS) and len(tools) == 3 * len(USERS)
    attributed(models + tools)


def _agent_fork(entry: str, target: str) -> Any:
    """A hook forking the entry run to ``target`` with the run's own user in its input."""

    def fork(ctx: HookContext) -> Any:
        if ctx.component.name == entry:
            user = USER.match(_entry_input(ctx))
            assert user is not None
            return Fork((ForkOperation(type="agent", target=target,
                                       parameters={"input": f"{user.group(0)}: again"}),))
        return None

    return fork


def _front_forked_to_shadow(system: System) -> None:
    """Names each run's user at the entry ``front`` and forks each ``front`` run to the
    agent ``shadow`` (with the run's user in the fork's input)."""
    names_users(system, "front")
    system.registry.register(P.BEFORE_AGENT_EXECUTION, _agent_fork("front", "shadow"),
                             name="shadow")


def _routed_and_watched(system: System, *tools: Any
                        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``_forks_and_redirects`` and the llmspell ``tools`` registered; returns what
    BeforeModelCall and BeforeToolExecution saw."""
    _forks_and_redirects(system)
    models = watch(system, P.BEFORE_MODEL_CALL)
    seen = watch(system, P.BEFORE_TOOL_EXECUTION)
    system.tools.register_all(list(tools))
    return models, seen


async def _slowly(who: str) -> str:
    """Say who asked, slowly (a framework's own ``slow_echo``)."""
    for _ in range(3):
        await asyncio.sleep(0)
    return f"for {who}"


async def _waving(who: str) -> str:
    """Wave (a framework's own ``wave``, redirected)."""
    return f"wave {who}"


async def test_concurrent_langchain_runs_through_one_middleware_keep_their_users(
        system: System) -> None:
    create_agent, middleware, model, call = langchain()
    from langchain_core.tools import tool as lc_tool

    _front_forked_to_shadow(system)
    models, tools = _routed_and_watched(system, echo, other_echo)
    system.agents.create("shadow", provider=ScriptedProvider(["shadow says"]))

    lc_slow_echo, lc_wave = lc_tool("slow_echo")(_slowly), lc_tool("wave")(_waving)

    def both(messages: Any) -> Any:
        name = _user_in(messages[0].content)
        return [*call("slow_echo", "c1", who=name), *call("wave", "c2", who=name)]

    front = create_agent(model(steps=[both, "done"]), tools=[lc_slow_echo, lc_wave],
                         name="front", middleware=[middleware(system)])
    await asyncio.gather(*(front.ainvoke(ask(f"{u}: hi")) for u in USERS))
    assert len(models) == 3 * len(USERS)  # two turns and the shadow's
    assert len(tools) == 3 * len(USERS)  # slow_echo, its fork, wave's redirect
    attributed(models + tools)


async def test_concurrent_pydantic_ai_runs_through_one_capability_keep_their_users(
        system: System) -> None:
    agent_type, capability_type, _ = pydantic_ai()
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import FunctionModel

    _front_forked_to_shadow(system)
    models, tools = _routed_and_watched(system, echo, other_echo)

    async def answer(messages: Any, info: Any) -> Any:
        await asyncio.sleep(0)
        if len(messages) == 1:
            name = _user_in(messages[0].parts[-1].content)
            return ModelResponse(parts=[
                ToolCallPart("slow_echo", {"who": name}, tool_call_id="c1"),
                ToolCallPart("wave", {"who": name}, tool_call_id="c2")])
        return ModelResponse(parts=[TextPart("done")])

    shadow = agent_type(FunctionModel(lambda m, i: ModelResponse(parts=[TextPart("shh")]),
                                      model_name="shadow-model"), name="shadow")
    capability = capability_type(system, agents={"shadow": shadow})
    front = agent_type(FunctionModel(answer, model_name="front-model"), name="front",
                       capabilities=[capability])

    front.tool_plain(name="slow_echo")(_slowly)
    front.tool_plain(name="wave")(_waving)

    await asyncio.gather(*(front.run(f"{u}: hi") for u in USERS))
    assert len(models) == 3 * len(USERS)  # two requests and the shadow's
    assert len(tools) == 3 * len(USERS)
    attributed(models + tools)


async def test_concurrent_openai_agents_runs_through_one_adapter_keep_their_users(
        system: System) -> None:
    agent_type, adapter_type, sdk, answering = openai_agents()
    from agents import function_tool

    _front_forked_to_shadow(system)
    models, tools = _routed_and_watched(system, echo, other_echo)
    adapter = adapter_type(system)
    shadow = adapter.govern(agent_type(name="shadow", model=answering("shh")))

    oa_slow_echo = function_tool(_slowly, name_override="slow_echo")
    oa_wave = function_tool(_waving, name_override="wave")

    def both(instructions: Any, items: list[dict[str, Any]], names: Any) -> list[Any]:
        if sdk.outputs(items):
            return [sdk.say("done")]
        name = _user_in(items[0].get("content"))
        return [sdk.call("slow_echo", {"who": name}, "c1"),
                sdk.call("wave", {"who": name}, "c2")]

    front = agent_type(name="front", tools=[oa_slow_echo, oa_wave],
                       model=sdk.ScriptModel(both))
    runs = await asyncio.gather(*(adapter.run(front, f"{u}: hi") for u in USERS))
    assert [r.forks[0]["result"] for r in runs] == ["shh"] * len(USERS) and shadow
    assert len(models) == 3 * len(USERS)  # two turns and the shadow's
    assert len(tools) == 3 * len(USERS)
    attributed(models + tools)


# -- nothing leaks out of a run ------------------------------------------------------------------

def _clean() -> None:
    """No context to inherit here: a call started now (or by a task made now) is anonymous."""
    assert inherited_context() is None and current_context() is None


async def _clean_in_a_new_task() -> None:
    async def probe() -> None:
        _clean()

    await asyncio.create_task(probe())


async def _nothing_left(system: System) -> None:
    """Nothing of the run is left, here or in a task made now; then ``echo`` is called here
    for ``later`` (the test checks whom that call was for)."""
    _clean()
    await _clean_in_a_new_task()
    await system.tools.execute("echo", {"who": "later"})


def _act(how: str, caller: asyncio.Task[Any] | None = None) -> Any:
    """A framework tool's function ``act``: raises, or cancels ``caller`` (the test's task,
    awaiting the run), as ``how`` says; each test wraps it in its framework's tool."""

    async def act(who: str) -> str:
        """Act for someone."""
        if how == "raised":
            raise RuntimeError("no luck")
        if how == "cancelled":
            await _cancel(caller)
        return f"acted for {who}"

    return act


@tool()
async def explode(who: str) -> str:
    """Fail."""
    raise RuntimeError(f"no luck for {who}")


@tool()
async def cancel_me(who: str) -> str:
    """Cancel the task running this call."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    await asyncio.sleep(0)
    return "never"


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (the test's, which awaits the run) and let it see that."""
    assert task is not None
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)


async def _ended(run: Any, how: str) -> None:
    """Await ``run`` in this task however it ends; a cancellation is absorbed."""
    task = asyncio.current_task()
    assert task is not None
    if how == "cancelled":
        with pytest.raises(asyncio.CancelledError):
            await run
        task.uncancel()
    elif how == "raised":
        with pytest.raises(Exception):  # noqa: B017 - each framework its own error
            await run
    else:
        await run


@pytest.mark.parametrize("how", ["completed", "raised", "cancelled"])
async def test_nothing_of_a_runtime_agent_run_leaks_out(system: System, how: str) -> None:
    tools = _tool_calls_with_echo(system, "front")
    system.tools.register_all([explode, cancel_me])
    name = {"completed": "echo", "raised": "echo", "cancelled": "cancel_me"}[how]
    asker = _asker(name)

    def reply(messages: Any, specs: Any) -> Any:
        if how == "raised" and messages[-1].role == "tool":
            raise RuntimeError("the model gave up")  # after the tool call, inside the run
        return asker(messages, specs)

    front = system.agents.create("front", provider=ScriptedProvider(reply), tools=[name])
    await _ended(front.run("user61: hi"), how)
    await _nothing_left(system)
    assert users(tools) == ["user61", None]


@pytest.mark.parametrize("how", ["completed", "raised", "cancelled"])
async def test_nothing_of_a_workflow_run_leaks_out(system: System, how: str) -> None:
    tools = _tool_calls_with_echo(system, "flow", point=P.BEFORE_WORKFLOW_START)
    system.tools.register_all([explode, cancel_me])
    name = {"completed": "echo", "raised": "explode", "cancelled": "cancel_me"}[how]
    flow = Sequential("flow", [Step("one", tool=name, params={"who": "${input}"})])
    await _ended(flow.run(system, "user62"), how)
    await _nothing_left(system)
    assert users(tools) == ["user62", None]


async def test_nothing_of_a_tool_call_with_a_parent_leaks_out(system: System) -> None:
    from llmspell.hooks import ComponentId, ComponentType

    tools = watch(system, P.BEFORE_TOOL_EXECUTION)
    system.tools.register(echo)
    parent = HookContext(point=P.BEFORE_AGENT_EXECUTION,
                         component=ComponentId(type=ComponentType.AGENT, name="app"),
                         metadata={"user": "user63"})
    await system.tools.execute("echo", {"who": "user63"}, parent=parent)
    _clean()
    await system.tools.execute("echo", {"who": "later"})
    assert users(tools) == ["user63", None]


@pytest.mark.parametrize("how", ["completed", "raised", "cancelled"])
async def test_nothing_of_a_langchain_run_leaks_out(system: System, how: str) -> None:
    create_agent, middleware, model, call = langchain()
    from langchain_core.tools import tool as lc_tool

    tools = _tool_calls_with_echo(system, "front")
    act = lc_tool(_act(how, asyncio.current_task()))
    front = create_agent(model(steps=[_lc_asker("act", call), "done"]), tools=[act],
                         name="front", middleware=[middleware(system)])
    await _ended(front.ainvoke(ask("user64: hi")), how)
    await _nothing_left(system)
    assert users(tools) == ["user64", None]


@pytest.mark.parametrize("how", ["completed", "raised", "cancelled"])
async def test_nothing_of_a_pydantic_ai_run_leaks_out(system: System, how: str) -> None:
    agent_type, capability, _ = pydantic_ai()
    tools = _tool_calls_with_echo(system, "front")
    front = agent_type(_pa_asker("act"), name="front", capabilities=[capability(system)])
    front.tool_plain(_act(how, asyncio.current_task()))
    await _ended(front.run("user65: hi"), how)
    await _nothing_left(system)
    assert users(tools) == ["user65", None]


@pytest.mark.parametrize("how", ["completed", "raised", "cancelled"])
async def test_nothing_of_an_openai_agents_run_leaks_out(system: System, how: str) -> None:
    agent_type, adapter_type, sdk, _ = openai_agents()
    from agents import function_tool

    tools = _tool_calls_with_echo(system, "front")
    act = function_tool(_act(how, asyncio.current_task()), failure_error_function=None)
    front = agent_type(name="front", tools=[act], model=sdk.ScriptModel(_oa_asker(sdk, "act")))
    await _ended(adapter_type(system).run(front, "user66: hi"), how)
    await _nothing_left(system)
    assert users(tools)[0] == "user66" and users(tools)[-1] is None


# -- nothing leaks into the code consuming a stream ------------------------------------------

async def _consume(system: System, stream: AsyncIterator[Any]) -> None:
    """Consume a run's ``stream``: at each item, nothing of the run is here and ``echo`` is
    called for ``consumer``; after the last, nothing of the run is here either."""
    async for _ in stream:
        _clean()
        await system.tools.execute("echo", {"who": "consumer"})
    _clean()


async def test_a_runtime_agent_stream_consumer_is_not_the_run(system: System) -> None:
    tools = _tool_calls_with_echo(system, "front")
    front = _front_calling(system, "echo")
    await _consume(system, front.stream("user71: hi"))
    assert users(tools, "echo").count("user71") == 1 and None in users(tools)
    assert set(users(tools)) == {"user71", None}


@pytest.mark.parametrize("how", ["completed", "raised", "cancelled", "left"])
@pytest.mark.parametrize("entry", ["run_stream", "iter"])
async def test_nothing_of_a_pydantic_ai_stream_leaks_out_of_its_block(
        system: System, entry: str, how: str) -> None:
    # pydantic-ai runs the body of ``run_stream``/``iter`` in the caller's task with the
    # run's context variables set (its own design: the run's nodes execute there), so the
    # code inside the block is the run's; once the block is left, nothing of it remains.
    agent_type, capability, _ = pydantic_ai()
    from tests.integrations.conftest_pydantic_ai import planned

    tools = _tool_calls_with_echo(system, "front")
    front = agent_type(planned([[("act", {"who": "user72"})]]), name="front",
                       capabilities=[capability(system)])
    front.tool_plain(_act("completed"))

    task = asyncio.current_task()
    assert task is not None

    async def consume() -> None:
        opened: Any = (front.run_stream("user72: hi") if entry == "run_stream"
                       else front.iter("user72: hi"))
        async with opened as running:
            items = running.stream_text() if entry == "run_stream" else running
            async for _ in items:
                assert inherited_context() is not None  # inside: the run's
                if how == "raised":
                    raise RuntimeError("the consumer failed")
                if how == "cancelled":
                    await _cancel(task)
                if how == "left":
                    break

    await _ended(consume(), "completed" if how == "left" else how)
    await _nothing_left(system)
    assert users(tools)[-1] is None and set(users(tools, "act")) <= {"user72"}


async def test_an_openai_agents_stream_consumer_is_not_the_run(system: System) -> None:
    _, adapter_type, sdk, _ = openai_agents()
    tools = _tool_calls_with_echo(system, "weather")
    agent, _seen = sdk.weather_agent(sdk.ScriptModel(sdk.tool_then_answer()))
    streamed = adapter_type(system).run_streamed(agent, "user73: weather?")
    await _consume(system, streamed.stream_events())
    assert users(tools, "weather") == ["user73"]
    assert set(users(tools, "echo")) == {None}


async def test_a_langchain_stream_consumer_is_not_the_run(system: System) -> None:
    create_agent, middleware, model, call = langchain()
    from langchain_core.tools import tool as lc_tool

    tools = _tool_calls_with_echo(system, "front")
    act = lc_tool(_act("completed"))
    front = create_agent(model(steps=[_lc_asker("act", call), "done"]), tools=[act],
                         name="front", middleware=[middleware(system)])
    await _consume(system, front.astream(ask("user74: hi"), stream_mode=["updates", "messages"]))
    assert users(tools, "act") == ["user74"]
    assert set(users(tools, "echo")) == {None}


async def test_execute_sync_inside_a_running_loop_is_a_typed_error(system: System) -> None:
    from llmspell.errors import ToolExecutionError

    system.tools.register(echo)
    with pytest.raises(ToolExecutionError, match="inside a running event loop") as raised:
        system.tools.execute_sync("echo", {"who": "user81"})
    assert "blocking=True" in str(raised.value.hint)


async def test_a_plain_sync_tool_calling_execute_sync_says_to_make_it_blocking(
        system: System) -> None:
    from llmspell.errors import ToolExecutionError

    system.tools.register(echo)

    @tool()
    def relay(who: str) -> str:
        """Relay through the sync API from the loop's own thread (not possible)."""
        return str(system.tools.execute_sync("echo", {"who": who}))

    system.tools.register(relay)
    with pytest.raises(ToolExecutionError) as raised:
        await system.tools.execute("relay", {"who": "user82"})
    assert "blocking=True" in str(raised.value.hint)
