"""The LangChain adapter's model call ``params.settings`` carry what the chat model instance
was configured with that can change its answer (``top_p``, the model it names, a seed in
``model_kwargs``...), so the caching built-in never serves one agent's answer to another
built on the same chat model class configured otherwise; secrets and transport settings
of the instance never enter ``params``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain.agents import create_agent
from pydantic import Field, SecretStr

from llmspell.builtin import CachingConfig, install_all, production
from llmspell.errors import InvalidValueError
from llmspell.events import UniversalEvent
from llmspell.hooks import HookContext, HookPoint, Modified
from llmspell.integrations.langchain import LlmspellMiddleware
from llmspell.runtime.system import System

from .conftest_langchain import ScriptedChatModel

ASK: Any = {"messages": [{"role": "user", "content": "what is two plus two?"}]}
SECRET = "sk-do-not-leak-4e1f"


class TunedChatModel(ScriptedChatModel):
    """A chat model with the settings real ones have (ChatOpenAI-like): sampling, a model
    id its LangSmith params do not report (as Bedrock-like classes name theirs), extra
    model arguments, an API key and a timeout."""

    top_p: float | None = None
    model_id: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    api_key: SecretStr | None = None
    request_timeout: float | None = None


def cached(system: System) -> list[dict[str, Any]]:
    """The caching built-in for model calls only; returns the params each call showed."""
    install_all(production(bus=system.bus, caching=CachingConfig(
        allow_tools=frozenset(), allow_agents=frozenset())), system.registry)
    seen: list[dict[str, Any]] = []
    system.registry.register(HookPoint.BEFORE_MODEL_CALL,
                             lambda ctx: seen.append(ctx.data), name="look",
                             priority="highest")
    return seen


async def ask(system: System, model: TunedChatModel) -> str:
    agent = create_agent(model, middleware=[LlmspellMiddleware(system)])
    out = await agent.ainvoke(ASK)
    return str(out["messages"][-1].content)


async def test_agents_differing_only_in_top_p_do_not_share_a_cached_answer(
        system: System) -> None:
    seen = cached(system)
    low, high, low_again = (TunedChatModel(steps=["four"], top_p=p) for p in (0.1, 0.9, 0.1))
    for model in (low, high, low_again):
        assert await ask(system, model) == "four"
    assert len(low.seen) == 1
    assert len(high.seen) == 1  # not served the top_p=0.1 answer
    assert low_again.seen == []  # the same settings: served from the cache
    assert [d["params"]["settings"]["top_p"] for d in seen] == [0.1, 0.9, 0.1]


async def test_agents_naming_different_models_do_not_share_a_cached_answer(
        system: System) -> None:
    seen = cached(system)
    small, large, small_again = (TunedChatModel(steps=["four"], model_id=m)
                                 for m in ("m-small", "m-large", "m-small"))
    for model in (small, large, small_again):
        assert await ask(system, model) == "four"
    # Its LangSmith params name the same model for both: the id in settings tells them apart.
    assert {d["model"] for d in seen} == {"gpt-4o"}
    assert [d["params"]["settings"]["model_id"] for d in seen] == [
        "m-small", "m-large", "m-small"]
    assert len(small.seen) == 1 and len(large.seen) == 1 and small_again.seen == []


async def test_a_models_secrets_and_transport_never_enter_params_or_events(
        system: System) -> None:
    seen = cached(system)
    events: list[UniversalEvent] = []
    system.bus.subscribe("**", events.append, mode="inline")
    model = TunedChatModel(steps=["four"], top_p=0.5, api_key=SecretStr(SECRET),
                           request_timeout=3.0,
                           model_kwargs={"seed": 7, "api_key": SECRET,
                                         "extra": {"auth_token": SECRET, "n": 1}})
    assert await ask(system, model) == "four"
    settings = seen[0]["params"]["settings"]
    assert settings["top_p"] == 0.5
    assert settings["model_kwargs"] == {"seed": 7, "extra": {"n": 1}}
    assert "api_key" not in settings and "request_timeout" not in settings
    assert SECRET not in json.dumps(seen[0], default=str)
    assert system.store is not None
    system.store.flush()
    stored = system.store.query()
    assert stored and events
    for event in (*stored, *events):
        assert SECRET not in json.dumps(event.data, default=str), event.event_type


async def test_a_hook_cannot_change_a_setting_of_the_model_instance(system: System) -> None:
    looked: list[Any] = []

    def retune(ctx: HookContext) -> Modified:
        params = dict(ctx.data["params"])
        looked.append(params["settings"]["top_p"])
        params["settings"] = {**params["settings"], "top_p": 1.0}
        return Modified({**ctx.data, "params": params})

    system.registry.register(HookPoint.BEFORE_MODEL_CALL, retune, name="retune")
    model = TunedChatModel(steps=["four"], top_p=0.2)
    with pytest.raises(InvalidValueError, match=r"params\.settings cannot be changed"):
        await ask(system, model)
    assert looked == [0.2] and model.seen == []
