"""A hook's ``Fork`` in the framework adapters runs beside the real call and never changes
what the consumer gets.

* LangChain: a ``Fork`` of type ``model`` runs a shadow model call out of every stream
  (``stream_mode="messages"`` sync and async, ``astream_events``): the consumer sees only
  the real model's tokens, while tracers still see the shadow (tagged ``nostream`` and
  ``llmspell_shadow``) and ``model.<provider>.shadow`` is published.
* OpenAI Agents SDK: an agent ``Fork`` is a governed child run (its own run id, the parent
  run's id as its parent, the adapter's seams and events) isolated from the run it forks
  from (the parent's turn count and tool calls are untouched); a tool ``Redirect`` runs its
  target's hooks, so a redirect loop ends with ``ToolExecutionError``.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from agents import Agent, RunContextWrapper, function_tool
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessageChunk, BaseMessage

from llmspell.errors import ToolExecutionError
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext, HookPoint
from llmspell.hooks.result import Fork, ForkOperation, Redirect, Replace
from llmspell.integrations.langchain import SHADOW_TAG, LlmspellMiddleware
from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
from llmspell.runtime.system import System

from .conftest_langchain import ScriptedChatModel, add
from .conftest_langchain import call as lc_call
from .conftest_openai_agents import ScriptModel, call, no_trace_export, outputs, say

__all__ = ["no_trace_export"]  # fixtures

ASK: Any = {"messages": [{"role": "user", "content": "please answer"}]}



def recorder(system: System, pattern: str = "**") -> list[UniversalEvent]:
    events: list[UniversalEvent] = []
    system.bus.subscribe(pattern, events.append, mode="inline")
    return events


# -- LangChain: a model Fork's shadow never reaches a stream consumer --------------------------

def shadowed_agent(system: System, streams: list[tuple[str, bool]] | None = None,
                   ) -> tuple[Any, ScriptedChatModel]:
    """An agent whose model call (``gpt-4o``) a hook forks to the ``shadow`` model;
    ``streams`` gets each model call's ``(model, params.stream)`` at ``BeforeModelCall``."""

    def hook(ctx: HookContext) -> Fork | None:
        if streams is not None:
            streams.append((ctx.data["model"], ctx.data["params"]["stream"]))
        if ctx.data["model"] != "gpt-4o":
            return None
        return Fork((ForkOperation(type="model", target="shadow"),))

    system.registry.register("BeforeModelCall", hook, name="shadow-fork")
    shadow = ScriptedChatModel(steps=["SHADOW TOKENS"], model="gpt-4o-mini")
    agent = create_agent(ScriptedChatModel(steps=["main answer"]), tools=[], name="calc",
                         middleware=[LlmspellMiddleware(system, models={"shadow": shadow})])
    return agent, shadow


def tokens(chunks: list[Any]) -> list[str]:
    return [str(c.content) for c in chunks if isinstance(c, AIMessageChunk)]


def test_a_sync_messages_stream_gives_only_the_real_models_tokens(system: System) -> None:
    events = recorder(system, "model.**")
    agent, shadow = shadowed_agent(system)
    seen = [chunk for chunk, _meta in agent.stream(ASK, stream_mode="messages")]
    assert "".join(tokens(seen)) == "main answer"
    assert not any("SHADOW" in str(getattr(c, "content", "")) for c in seen)
    assert len(shadow.seen) == 1  # the shadow did run
    shadows = [e for e in events if e.event_type == "model.openai.shadow"]
    assert len(shadows) == 1 and shadows[0].data["model"] == "shadow"


async def test_an_async_messages_stream_gives_only_the_real_models_tokens(
        system: System) -> None:
    streams: list[tuple[str, bool]] = []
    agent, shadow = shadowed_agent(system, streams)
    seen = [chunk async for chunk, _meta in agent.astream(ASK, stream_mode="messages")]
    assert "".join(tokens(seen)) == "main answer"
    assert len(shadow.seen) == 1
    # The real call is streamed; the shadow is not (so its own hooks may still retry it).
    assert sorted(streams) == [("gpt-4o", True), ("gpt-4o-mini", False)]


async def test_a_messages_stream_with_a_tool_turn_still_hides_each_shadow(
        system: System) -> None:
    """Every turn forks: two shadows, none streamed, the tool's turn and answer intact."""
    system.registry.register("BeforeModelCall", lambda ctx: Fork(
        (ForkOperation(type="model", target="shadow"),)) if ctx.data["model"] == "gpt-4o"
        else None, name="fork")
    shadow = ScriptedChatModel(steps=["SHADOW TOKENS"], model="gpt-4o-mini")
    model = ScriptedChatModel(steps=[lc_call("add", a=1, b=2), "three"])
    agent = create_agent(model, tools=[add], name="calc",
                         middleware=[LlmspellMiddleware(system, models={"shadow": shadow})])
    out: dict[str, Any] | None = None
    seen: list[Any] = []
    async for mode, data in agent.astream(ASK, stream_mode=["messages", "values"]):
        if mode == "messages":
            seen.append(data[0])
        else:
            out = data
    assert "".join(tokens(seen)) == "three" and "SHADOW" not in "".join(tokens(seen))
    assert out is not None and out["messages"][-1].content == "three"
    assert len(shadow.seen) == 2


async def test_astream_events_leaves_the_shadow_out(system: System) -> None:
    """``astream_events`` shows every chat model run it is told of; the shadow is not told
    to it, so no event of the shadow model can pass for the agent's answer."""
    agent, shadow = shadowed_agent(system)
    models: list[str] = []
    streamed = ""
    async for event in agent.astream_events(ASK, version="v2"):
        if event["event"].startswith("on_chat_model"):
            models.append(event["metadata"].get("ls_model_name"))
            if event["event"] == "on_chat_model_stream":
                streamed += str(event["data"]["chunk"].content)
    assert streamed == "main answer"
    assert set(models) == {"gpt-4o"}
    assert len(shadow.seen) == 1


class _Tracer(BaseCallbackHandler):
    """A plain (non-streaming) handler, as a tracer is: what chat model runs it saw."""

    def __init__(self) -> None:
        self.started: list[tuple[str, list[str]]] = []

    def on_chat_model_start(self, serialized: dict[str, Any],
                            messages: list[list[BaseMessage]], *, run_id: UUID,
                            tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.started.append((str((metadata or {}).get("ls_model_name")), list(tags or [])))


def test_a_tracer_still_sees_the_shadow_tagged_as_one(system: System) -> None:
    agent, _shadow = shadowed_agent(system)
    tracer = _Tracer()
    seen = [chunk for chunk, _meta in agent.stream(ASK, config={"callbacks": [tracer]},
                                                   stream_mode="messages")]
    assert "".join(tokens(seen)) == "main answer"
    by_model = dict(tracer.started)
    assert set(by_model) == {"gpt-4o", "gpt-4o-mini"}
    assert {"nostream", SHADOW_TAG} <= set(by_model["gpt-4o-mini"])
    assert SHADOW_TAG not in by_model["gpt-4o"]


# -- OpenAI Agents SDK: an agent Fork is a governed, isolated child run ------------------------

def answering(text: str) -> ScriptModel:
    return ScriptModel(lambda instructions, items, tools: [say(text)])


def fork_to(target: str, when: str) -> Any:
    def hook(ctx: HookContext) -> Fork | None:
        if ctx.data["agent"] != when:
            return None
        return Fork((ForkOperation(type="agent", target=target,
                                   parameters={"input": "shadow question"}),))
    return hook


def by_type(events: list[UniversalEvent], event_type: str) -> list[UniversalEvent]:
    return [e for e in events if e.event_type == event_type]


async def test_an_agent_fork_is_a_governed_child_run(system: System) -> None:
    events = recorder(system)
    adapter = OpenAIAgentsAdapter(system)
    shadow = Agent(name="shadow", instructions="Shadow.", model=answering("shadow says"))
    governed = adapter.govern(shadow)  # kept alive: forks find governed agents by name
    model_calls: list[str] = []
    system.registry.register(HookPoint.BEFORE_MODEL_CALL,
                             lambda ctx: model_calls.append(ctx.data["caller"]["name"]),
                             name="watch")
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, fork_to("shadow", "main"),
                             name="fork")
    main = Agent(name="main", instructions="Main.", model=answering("main says"))
    run = await adapter.run(main, "hello")
    assert run.final_output == "main says"
    assert run.forks == [{"type": "agent", "target": "shadow", "result": "shadow says"}]
    assert governed.model.calls[0]["input"][-1]["content"] == "shadow question"
    assert sorted(model_calls) == ["main", "shadow"]  # the adapter's seams ran for it
    started = {e.data["name"]: e for e in by_type(events, "run.started")}
    assert started["shadow"].data["parent_run_id"] == run.run_id
    shadow_run = started["shadow"].metadata.run_id
    assert shadow_run is not None and shadow_run != run.run_id
    (shadow_started,) = by_type(events, "agent.shadow.started")
    assert shadow_started.metadata.run_id == shadow_run
    assert shadow_started.metadata.correlation_id == run.correlation_id
    (main_done,) = by_type(events, "agent.main.completed")
    assert main_done.data["turns"] == 1
    assert [e.data["turn"] for e in by_type(events, "model.openai.completed")] == [1, 1]


def delegating_agent(adapter: OpenAIAgentsAdapter, worker: Agent[Any]) -> Agent[Any]:
    """``boss`` calls its ``delegate`` tool (which runs ``worker`` through the adapter, a
    sub-agent) and then answers."""

    @function_tool
    async def delegate(question: str) -> str:
        """Ask the worker."""
        return str((await adapter.run(worker, question)).final_output)

    def step(instructions: str | None, items: list[dict[str, Any]],
             tools: list[str]) -> list[Any]:
        done = outputs(items)
        if not done:
            return [call("delegate", {"question": "what?"}, "c1")]
        return [say("boss: " + str(done[-1]["output"]))]

    return Agent(name="boss", model=ScriptModel(step), tools=[delegate])


async def test_a_fork_inside_a_sub_agent_leaves_the_outer_run_alone(system: System) -> None:
    """The fork runs inside a tool call of ``boss``: it neither counts as boss's turns nor
    touches boss's pending tool call (its own tool call has the same call id)."""
    events = recorder(system)
    adapter = OpenAIAgentsAdapter(system)
    ran: list[str] = []

    @function_tool
    def lookup(topic: str) -> str:
        """Look a topic up."""
        ran.append(topic)
        return f"found {topic}"

    def shadow_step(instructions: str | None, items: list[dict[str, Any]],
                    tools: list[str]) -> list[Any]:
        if not outputs(items):
            return [call("lookup", {"topic": "x"}, "c1")]  # boss's call id too
        return [say("shadow done")]

    shadow = adapter.govern(Agent(name="shadow", model=ScriptModel(shadow_step),
                                  tools=[lookup]))
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, fork_to("shadow", "worker"),
                             name="fork")
    worker = Agent(name="worker", model=answering("worker says"))
    boss = delegating_agent(adapter, worker)
    run = await adapter.run(boss, "go")
    assert run.final_output == "boss: worker says"
    assert ran == ["x"] and shadow is not None
    turns = {e.data["caller"]["name"]: [] for e in by_type(events, "model.openai.completed")}
    for e in by_type(events, "model.openai.completed"):
        turns[e.data["caller"]["name"]].append(e.data["turn"])
    assert turns == {"boss": [1, 2], "worker": [1], "shadow": [1, 2]}
    (boss_done,) = by_type(events, "agent.boss.completed")
    assert boss_done.data["turns"] == 2
    started = {e.data["name"]: e for e in by_type(events, "run.started")}
    assert started["worker"].data["parent_run_id"] == run.run_id
    assert started["shadow"].data["parent_run_id"] == started["worker"].metadata.run_id
    assert len(by_type(events, "tool.delegate.completed")) == 1


async def test_a_fork_gets_its_own_context_wrapper_and_no_stream(system: System) -> None:
    """The user's context object reaches the fork's tools, in a wrapper of the fork's own
    (the parent's usage is the parent's); a streamed parent streams none of the fork."""
    adapter = OpenAIAgentsAdapter(system)
    contexts: list[Any] = []

    @function_tool
    def peek(wrapper: RunContextWrapper[Any], topic: str) -> str:
        """Look at the context."""
        contexts.append(wrapper)
        return "peeked"

    def shadow_step(instructions: str | None, items: list[dict[str, Any]],
                    tools: list[str]) -> list[Any]:
        if not outputs(items):
            return [call("peek", {"topic": "x"}, "c9")]
        return [say("shadow done")]

    shadow = adapter.govern(Agent(name="shadow", model=ScriptModel(shadow_step),
                                  tools=[peek]))
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, fork_to("shadow", "main"),
                             name="fork")
    mine = {"user": "ada"}
    wrapper: RunContextWrapper[Any] = RunContextWrapper(context=mine)
    run = await adapter.run(Agent(name="main", model=answering("main says")), "hi",
                            context=wrapper)
    assert run.forks[0]["result"] == "shadow done" and shadow is not None
    assert len(contexts) == 1 and contexts[0].context is mine
    assert contexts[0] is not wrapper
    assert wrapper.usage.requests == 1  # the parent's model call only

    contexts.clear()
    streamed = adapter.run_streamed(Agent(name="main", model=answering("main says")), "hi")
    agents_streamed = [event.new_agent.name async for event in streamed.stream_events()
                       if event.type == "agent_updated_stream_event"]
    assert streamed.final_output == "main says" and len(contexts) == 1
    assert agents_streamed == ["main"]
    assert streamed.result is not None
    assert {item.agent.name for item in streamed.result.new_items} == {"main"}


async def test_an_agent_forking_itself_is_bounded(system: System) -> None:
    """A hook forking every agent to ``main`` runs one fork of main; the fork's own fork of
    main is refused as a cycle instead of forking forever."""
    adapter = OpenAIAgentsAdapter(system)
    calls: list[str] = []
    system.registry.register(HookPoint.BEFORE_AGENT_EXECUTION, lambda ctx: (
        calls.append(ctx.data["agent"]),
        Fork((ForkOperation(type="agent", target="main"),)))[1], name="fork-all")
    main = adapter.govern(Agent(name="main", model=answering("main says")))
    run = await adapter.run(main, "hi")
    assert run.final_output == "main says"
    assert run.forks == [{"type": "agent", "target": "main", "result": "main says"}]
    assert calls == ["main", "main"]


# -- OpenAI Agents SDK: a tool Redirect is governed and bounded --------------------------------

def two_station_agent(seen: list[str]) -> Agent[Any]:
    @function_tool
    def primary(city: str) -> str:
        """The weather from the primary station."""
        seen.append("primary")
        return f"primary: sunny in {city}"

    @function_tool
    def backup(city: str) -> str:
        """The weather from the backup station."""
        seen.append("backup")
        return f"backup: sunny in {city}"

    def step(instructions: str | None, items: list[dict[str, Any]],
             tools: list[str]) -> list[Any]:
        done = outputs(items)
        if not done:
            return [call("primary", {"city": "Paris"}, "c1")]
        return [say("answer: " + str(done[-1]["output"]))]

    return Agent(name="weather", model=ScriptModel(step), tools=[primary, backup])


async def test_a_redirected_tool_call_runs_the_targets_hooks(system: System) -> None:
    before: list[str] = []

    def route(ctx: HookContext) -> Redirect | None:
        before.append(ctx.data["tool"])
        return Redirect("backup") if ctx.data["tool"] == "primary" else None

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, route, name="route")
    system.registry.register(HookPoint.AFTER_TOOL_EXECUTION, lambda ctx: Replace(
        "backup, checked") if ctx.data["tool"] == "backup" else None, name="check")
    events = recorder(system, "tool.**")
    seen: list[str] = []
    run = await OpenAIAgentsAdapter(system).run(two_station_agent(seen), "weather?")
    assert seen == ["backup"] and before == ["primary", "backup"]
    assert run.final_output == "answer: backup, checked"
    assert [e.event_type for e in events if e.event_type.startswith("tool.backup")] == [
        "tool.backup.started", "tool.backup.completed"]


async def test_a_tool_redirect_loop_ends_with_tool_execution_error(system: System) -> None:
    hops: list[str] = []

    def loop(ctx: HookContext) -> Redirect:
        hops.append(ctx.data["tool"])
        return Redirect("backup" if ctx.data["tool"] == "primary" else "primary")

    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, loop, name="loop")
    seen: list[str] = []
    with pytest.raises(ToolExecutionError) as info:
        await OpenAIAgentsAdapter(system).run(two_station_agent(seen), "weather?")
    assert "redirects went 5 deep" in str(info.value)
    assert "Redirect" in (info.value.hint or "")
    assert seen == [] and hops == ["primary", "backup", "primary", "backup", "primary"]
