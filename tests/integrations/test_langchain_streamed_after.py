"""``AfterModelCall`` on a LangChain model call whose answer is streamed to the consumer
(``stream_mode="messages"``, ``astream_events``): the consumer already has the answer, so
``Retry`` and ``Redirect`` are refused with ``UnsupportedHookResultError`` the first time
they are returned, while a call that is not streamed (``invoke``, other stream modes, a
sub-agent the stream leaves out, a ``nostream`` model) still retries and redirects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool

from llmspell.errors import UnsupportedHookResultError
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext
from llmspell.hooks.result import Modified, Redirect, Replace, Retry
from llmspell.integrations.langchain import HONOURED, LlmspellMiddleware
from llmspell.runtime.system import System

from .conftest_langchain import ScriptedChatModel

ASK: Any = {"messages": [{"role": "user", "content": "please answer"}]}


def answers(*texts: str) -> Callable[[list[Any]], str]:
    """A model step giving ``texts`` one call after another (then the last again)."""
    given: list[str] = []

    def step(messages: list[Any]) -> str:
        given.append(texts[min(len(given), len(texts) - 1)])
        return given[-1]

    return step


def retry_once(calls: list[int]) -> Callable[[HookContext], Retry | None]:
    def hook(ctx: HookContext) -> Retry | None:
        calls.append(ctx.data["attempt"])
        return Retry(0.0, 2) if ctx.data["attempt"] == 1 else None

    return hook


def redirect_primary(calls: list[int]) -> Callable[[HookContext], Redirect | None]:
    def hook(ctx: HookContext) -> Redirect | None:
        calls.append(ctx.data["attempt"])
        return Redirect("backup") if ctx.data["model"] == "gpt-4o" else None

    return hook


def agent_for(system: System, model: Any, **options: Any) -> Any:
    return create_agent(model, tools=[], name="calc",
                        middleware=[LlmspellMiddleware(system, **options)])


def tokens(chunks: list[Any]) -> str:
    return "".join(str(c.content) for c in chunks if isinstance(c, AIMessageChunk))


def recorder(system: System) -> list[UniversalEvent]:
    events: list[UniversalEvent] = []
    system.bus.subscribe("**", events.append, mode="inline")
    return events


def assert_refused(info: pytest.ExceptionInfo[UnsupportedHookResultError], kind: str,
                   hook: str) -> None:
    error = info.value
    assert (error.framework, error.point, error.result, error.hook) == (
        "langchain", "after_model_call", kind, hook)
    assert "streamed to the consumer" in (error.hint or "")
    assert "ModelCallError" in (error.hint or "")


# -- streamed: refused the first time ----------------------------------------------------------

def test_a_sync_messages_stream_refuses_retry_at_after_model_call(system: System) -> None:
    calls: list[int] = []
    system.registry.register("AfterModelCall", retry_once(calls), name="again")
    events = recorder(system)
    model = ScriptedChatModel(steps=[answers("first answer", "second answer")])
    seen: list[Any] = []
    with pytest.raises(UnsupportedHookResultError) as info:
        for chunk, _meta in agent_for(system, model).stream(ASK, stream_mode="messages"):
            seen.append(chunk)
    assert_refused(info, "retry", "again")
    assert calls == [1] and len(model.seen) == 1  # refused at once: no second call
    assert tokens(seen) == "first answer"  # the consumer never saw a second answer
    names = [e.event_type for e in events]
    assert "model.openai.failed" in names and names[-1] == "run.failed"


async def test_an_async_messages_stream_refuses_redirect_at_after_model_call(
        system: System) -> None:
    calls: list[int] = []
    system.registry.register("AfterModelCall", redirect_primary(calls), name="elsewhere")
    backup = ScriptedChatModel(steps=["from the backup"], model="gpt-4o-mini")
    primary = ScriptedChatModel(steps=["from the primary"])
    agent = agent_for(system, primary, models={"backup": backup})
    seen: list[Any] = []
    with pytest.raises(UnsupportedHookResultError) as info:
        async for chunk, _meta in agent.astream(ASK, stream_mode="messages"):
            seen.append(chunk)
    assert_refused(info, "redirect", "elsewhere")
    assert calls == [1] and len(primary.seen) == 1 and backup.seen == []
    assert tokens(seen) == "from the primary"


async def test_astream_events_refuses_retry_at_after_model_call(system: System) -> None:
    calls: list[int] = []
    system.registry.register("AfterModelCall", retry_once(calls), name="again")
    model = ScriptedChatModel(steps=[answers("first answer", "second answer")])
    with pytest.raises(UnsupportedHookResultError) as info:
        async for _event in agent_for(system, model).astream_events(ASK, version="v2"):
            pass
    assert_refused(info, "retry", "again")
    assert calls == [1] and len(model.seen) == 1


def test_a_messages_stream_of_a_model_that_does_not_stream_still_refuses(
        system: System) -> None:
    """The messages stream hands a non-streaming model's whole answer on when the model
    ends, before ``AfterModelCall``: that answer has reached the consumer too."""
    calls: list[int] = []
    system.registry.register("AfterModelCall", retry_once(calls), name="again")
    model = ScriptedChatModel(steps=[answers("first answer", "second answer")],
                              disable_streaming=True)
    seen: list[Any] = []
    with pytest.raises(UnsupportedHookResultError):
        for chunk, _meta in agent_for(system, model).stream(ASK, stream_mode="messages"):
            seen.append(chunk)
    assert [m.content for m in seen if isinstance(m, AIMessage)] == ["first answer"]
    assert calls == [1] and len(model.seen) == 1


async def test_a_streamed_call_says_so_and_modified_and_replace_still_work(
        system: System) -> None:
    """Modified and Replace stay honoured on a streamed answer (as in the pydantic-ai
    adapter): the agent keeps the corrected answer, which the stream gives after the
    streamed one."""
    streams: list[bool] = []

    def rewrite(ctx: HookContext) -> Modified:
        streams.append(ctx.data["params"]["stream"])
        result = dict(ctx.data["result"])
        result["message"] = {**result["message"], "content": "a dog sat"}
        return Modified({**ctx.data, "result": result})

    system.registry.register("AfterModelCall", rewrite, name="rewrite")
    agent = agent_for(system, ScriptedChatModel(steps=["a cat sat"]))
    seen = [chunk async for chunk, _meta in agent.astream(ASK, stream_mode="messages")]
    assert tokens(seen) == "a cat sat"
    assert [m.content for m in seen if type(m) is AIMessage] == ["a dog sat"]
    assert streams == [True]

    system.registry.clear()
    system.registry.register("AfterModelCall", lambda ctx: Replace(
        {"message": {"role": "assistant", "content": "replaced"}}), name="swap")
    out = None
    async for mode, data in agent.astream(ASK, stream_mode=["messages", "values"]):
        if mode == "values":
            out = data
    assert out is not None and out["messages"][-1].content == "replaced"


# -- not streamed: honoured as before --------------------------------------------------------

def test_the_public_table_still_lists_retry_and_redirect_at_after_model_call() -> None:
    """The refusal depends on the call being streamed, not on the point."""
    assert {"retry", "redirect", "modified", "replace"} <= HONOURED["after_model_call"]


def test_a_sync_invoke_still_retries_and_redirects_at_after_model_call(
        system: System) -> None:
    calls: list[int] = []
    streams: list[bool] = []
    system.registry.register("AfterModelCall", retry_once(calls), name="again")
    system.registry.register("BeforeModelCall",
                             lambda ctx: streams.append(ctx.data["params"]["stream"]),
                             name="watch")
    model = ScriptedChatModel(steps=[answers("first answer", "second answer")])
    out = agent_for(system, model).invoke(ASK)
    assert out["messages"][-1].content == "second answer"
    assert calls == [1, 2] and len(model.seen) == 2 and streams == [False]

    system.registry.clear()
    redirected: list[int] = []
    system.registry.register("AfterModelCall", redirect_primary(redirected), name="elsewhere")
    backup = ScriptedChatModel(steps=["from the backup"], model="gpt-4o-mini")
    out = agent_for(system, ScriptedChatModel(steps=["from the primary"]),
                    models={"backup": backup}).invoke(ASK)
    assert out["messages"][-1].content == "from the backup" and len(backup.seen) == 1


async def test_an_async_invoke_still_retries_and_redirects_at_after_model_call(
        system: System) -> None:
    calls: list[int] = []
    system.registry.register("AfterModelCall", retry_once(calls), name="again")
    model = ScriptedChatModel(steps=[answers("first answer", "second answer")])
    out = await agent_for(system, model).ainvoke(ASK)
    assert out["messages"][-1].content == "second answer"
    assert calls == [1, 2] and len(model.seen) == 2

    system.registry.clear()
    system.registry.register("AfterModelCall", redirect_primary([]), name="elsewhere")
    backup = ScriptedChatModel(steps=["from the backup"], model="gpt-4o-mini")
    out = await agent_for(system, ScriptedChatModel(steps=["from the primary"]),
                          models={"backup": backup}).ainvoke(ASK)
    assert out["messages"][-1].content == "from the backup" and len(backup.seen) == 1


@pytest.mark.parametrize("mode", ["updates", "values", "tools"])
async def test_stream_modes_without_model_output_still_retry(system: System,
                                                             mode: str) -> None:
    """``tools`` mode puts a streaming handler on the call, but it passes no model answer
    on: the consumer has not seen the answer, so Retry works."""
    calls: list[int] = []
    system.registry.register("AfterModelCall", retry_once(calls), name="again")
    model = ScriptedChatModel(steps=[answers("first answer", "second answer")])
    async for _chunk in agent_for(system, model).astream(ASK, stream_mode=mode):
        pass
    assert calls == [1, 2] and len(model.seen) == 2


async def test_a_nostream_model_still_retries_in_a_messages_stream(system: System) -> None:
    calls: list[int] = []
    system.registry.register("AfterModelCall", retry_once(calls), name="again")
    model = ScriptedChatModel(steps=[answers("first answer", "second answer")])
    agent = agent_for(system, model.with_config(tags=["nostream"]))
    seen = [chunk async for chunk, _meta in agent.astream(ASK, stream_mode="messages")]
    assert calls == [1, 2] and len(model.seen) == 2
    assert tokens(seen) == "" and [m.content for m in seen] == ["second answer"]


@pytest.mark.parametrize("subgraphs", [False, True])
def test_a_sub_agent_retries_unless_the_stream_includes_it(system: System,
                                                            subgraphs: bool) -> None:
    """A sub-agent called from a tool is a subgraph: the outer messages stream passes its
    tokens on only with ``subgraphs=True``."""
    calls: list[int] = []
    system.registry.register(
        "AfterModelCall",
        lambda ctx: (calls.append(ctx.data["attempt"]) or Retry(0.0, 2))
        if ctx.data["model"] == "inner-model" and ctx.data["attempt"] == 1 else None,
        name="again")
    inner_model = ScriptedChatModel(steps=[answers("inner one", "inner two")],
                                    model="inner-model")
    inner = agent_for(system, inner_model)

    @tool
    def ask_inner(question: str) -> str:
        """Ask the inner agent."""
        return str(inner.invoke({"messages": [{"role": "user", "content": question}]})
                   ["messages"][-1].content)

    outer = create_agent(
        ScriptedChatModel(steps=[[{"name": "ask_inner", "args": {"question": "x"},
                                   "id": "c1"}], "done"]),
        tools=[ask_inner], name="outer", middleware=[LlmspellMiddleware(system)])
    stream = outer.stream(ASK, stream_mode="messages", subgraphs=subgraphs)
    if subgraphs:
        with pytest.raises(UnsupportedHookResultError) as info:
            list(stream)
        assert_refused(info, "retry", "again")
        assert calls == [1] and len(inner_model.seen) == 1
    else:
        list(stream)
        assert calls == [1] and len(inner_model.seen) == 2


async def test_without_langgraphs_private_handler_a_streamed_call_is_refused(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    """If LangGraph moves its private messages handler, the middleware does not crash and
    errs on the side of refusing: even a ``nostream`` model counts as streamed."""
    from llmspell.integrations import langchain

    monkeypatch.setattr(langchain, "_messages_handler", None)
    monkeypatch.setattr(langchain, "_graph_namespace", None)
    monkeypatch.setattr(langchain, "_streaming_handler", None)
    calls: list[int] = []
    system.registry.register("AfterModelCall", retry_once(calls), name="again")
    model = ScriptedChatModel(steps=[answers("first answer", "second answer")])
    agent = agent_for(system, model.with_config(tags=["nostream"]))
    with pytest.raises(UnsupportedHookResultError):
        async for _chunk in agent.astream(ASK, stream_mode="messages"):
            pass
    assert calls == [1] and len(model.seen) == 1
    calls.clear()
    await agent_for(system, ScriptedChatModel(steps=[answers("one", "two")])).ainvoke(ASK)
    assert calls == [1, 2]
