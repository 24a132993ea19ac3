"""langsmith_inline: LangChain middleware calls skip LangSmith's thread hops only while
nothing is traced, keep an override installed before, and undo cleanly."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langchain")

import langsmith
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langsmith._internal._aiter import aio_to_thread
from langsmith._runtime_overrides import get_runtime_overrides
from langsmith.run_helpers import tracing_context

from llmspell.integrations import langsmith_inline


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    before = get_runtime_overrides().aio_to_thread
    yield
    langsmith_inline.disable()
    langsmith.set_runtime_overrides(aio_to_thread=before)


def test_enable_runs_untraced_setup_in_the_calling_thread() -> None:
    main = threading.current_thread().name
    langsmith_inline.enable()
    assert langsmith_inline.is_enabled()
    ran_in: list[str] = []

    async def go() -> None:
        await aio_to_thread(contextvars.copy_context(),
                            lambda: ran_in.append(threading.current_thread().name))
    asyncio.run(go())
    assert ran_in == [main]
    langsmith_inline.disable()
    assert not langsmith_inline.is_enabled()
    ran_in.clear()
    asyncio.run(go())
    assert ran_in and ran_in[0] != main  # LangSmith's default: a worker thread


def test_a_traced_context_keeps_the_previous_override() -> None:
    calls: list[str] = []

    async def mine(default: Any, ctx: Any, func: Any, /, *args: Any, **kwargs: Any) -> Any:
        calls.append("mine")
        return ctx.run(func, *args, **kwargs)

    langsmith.set_runtime_overrides(aio_to_thread=mine)
    langsmith_inline.enable()
    langsmith_inline.enable()  # idempotent: still one layer

    async def go() -> Any:
        return await aio_to_thread(contextvars.copy_context(), lambda: 7)

    assert asyncio.run(go()) == 7 and calls == []  # untraced: inline, no hand-over

    with tracing_context(enabled=True):
        assert asyncio.run(go()) == 7
    assert calls == ["mine"]  # traced: handed to the override installed before
    langsmith_inline.disable()
    assert get_runtime_overrides().aio_to_thread is mine


def test_disable_without_enable_changes_nothing() -> None:
    before = get_runtime_overrides().aio_to_thread
    langsmith_inline.disable()
    assert get_runtime_overrides().aio_to_thread is before
    assert not langsmith_inline.is_enabled()


def test_a_langchain_agent_with_middleware_runs_the_same_with_it_enabled() -> None:
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage

    seen: list[str] = []

    class Note(AgentMiddleware):  # type: ignore[type-arg]
        async def awrap_model_call(self, request: Any, handler: Any) -> Any:
            seen.append(threading.current_thread().name)
            return await handler(request)

    def agent() -> Any:
        model = FakeMessagesListChatModel(responses=[AIMessage(content="done")])
        return create_agent(model, tools=[], middleware=[Note()])

    ask = {"messages": [{"role": "user", "content": "hi"}]}
    plain = asyncio.run(agent().ainvoke(ask))["messages"][-1].content
    langsmith_inline.enable()
    inlined = asyncio.run(agent().ainvoke(ask))["messages"][-1].content
    assert plain == inlined == "done"
    assert len(seen) == 2


def test_a_langsmith_without_runtime_overrides_is_refused_by_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from llmspell.errors import UnsupportedFrameworkVersionError

    before = get_runtime_overrides().aio_to_thread
    monkeypatch.setattr(langsmith_inline, "_langsmith", object())  # no set_runtime_overrides
    with pytest.raises(UnsupportedFrameworkVersionError, match=r"langsmith .*overrides"):
        langsmith_inline.enable()
    assert get_runtime_overrides().aio_to_thread is before  # nothing was installed
