"""The model call as a hooked operation: the three points, their data, every result's
effect, validation of what hooks hand back, and what events keep of the content."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from llmspell.errors import (
    AgentError,
    InvalidValueError,
    ModelCallCancelledError,
    ProviderError,
)
from llmspell.events import UniversalEvent
from llmspell.hooks import (
    Cache,
    Cancel,
    Fork,
    ForkOperation,
    HookContext,
    HookPoint,
    Modified,
    Redirect,
    Replace,
    Retry,
    Skipped,
)
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers.base import Message
from llmspell.runtime.providers.scripted import ScriptedProvider

P = HookPoint


@pytest_asyncio.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    yield sys
    await sys.shutdown()


@pytest.fixture
def events(system: System) -> list[UniversalEvent]:
    seen: list[UniversalEvent] = []
    system.bus.subscribe("model.**", seen.append)
    return seen


def echo(prefix: str = "") -> ScriptedProvider:
    """Answers with the last user message's text (prefixed)."""
    return ScriptedProvider(lambda messages, tools: prefix + str(messages[-1].content))


def hook(system: System, point: str, fn: Any, **options: Any) -> None:
    system.registry.register(point, fn, **options)


async def test_points_fire_with_the_documented_data(system: System,
                                                    events: list[UniversalEvent]) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for point in (P.BEFORE_MODEL_CALL, P.AFTER_MODEL_CALL):
        hook(system, point, lambda c, p=point: seen.setdefault(str(p), dict(c.data)),
             name=f"see-{point}")
    agent = system.agents.create("helper", provider=echo(), instructions="Be brief.")
    response = await agent.run("hello")
    assert response.output == "hello"
    before, after = seen["before_model_call"], seen["after_model_call"]
    assert set(before) == {"provider", "model", "caller", "turn", "params", "attempt"}
    assert before["provider"] == "scripted" and before["turn"] == 1
    assert before["caller"] == {"type": "agent", "name": "helper"}
    assert before["params"]["messages"] == [
        {"role": "system", "content": "Be brief.", "tool_calls": [], "tool_call_id": None,
         "name": None},
        {"role": "user", "content": "hello", "tool_calls": [], "tool_call_id": None,
         "name": None}]
    assert set(before["params"]) == {"messages", "tools", "temperature", "max_tokens",
                                     "stream"}
    assert set(after) == set(before) | {"result"}
    result = after["result"]
    assert result["message"]["content"] == "hello" and result["finish_reason"] == "stop"
    assert set(result["usage"]) == {"input_tokens", "output_tokens", "total_tokens",
                                    "cached_tokens", "reasoning_tokens"}
    assert result["latency_ms"] >= 0
    completed = [e for e in events if e.event_type == "model.scripted.completed"]
    assert len(completed) == 1 and completed[0].data["usage"] == result["usage"]


async def test_modified_before_rewrites_the_prompt(system: System) -> None:
    provider = echo()

    def redact(ctx: HookContext) -> Modified:
        params = ctx.data["params"]
        messages = [{**m, "content": m["content"].replace("secret", "[redacted]")}
                    for m in params["messages"]]
        return Modified({"params": {**params, "messages": messages}})

    hook(system, P.BEFORE_MODEL_CALL, redact, name="redact")
    agent = system.agents.create("a", provider=provider)
    response = await agent.run("my secret plan")
    assert response.output == "my [redacted] plan"
    assert provider.calls[0][0][-1].content == "my [redacted] plan"


async def test_malformed_messages_from_a_hook_are_a_typed_error_and_no_call(
        system: System) -> None:
    provider = echo()
    hook(system, P.BEFORE_MODEL_CALL,
         lambda c: Modified({"params": {**c.data["params"],
                                        "messages": [{"role": "wizard", "content": "x"}]}}),
         name="broken")
    agent = system.agents.create("a", provider=provider)
    with pytest.raises(AgentError) as info:
        await agent.run("q")
    cause = info.value.__cause__
    assert isinstance(cause, InvalidValueError)
    assert "params.messages[0].role" in cause.message
    assert provider.calls == []


async def test_cancel_before_stops_the_call_on_the_agents_error_path(system: System) -> None:
    provider = echo()
    hook(system, P.BEFORE_MODEL_CALL, lambda c: Cancel("over budget"), name="budget")
    agent = system.agents.create("a", provider=provider)
    with pytest.raises(AgentError) as info:
        await agent.run("q")
    cause = info.value.__cause__
    assert isinstance(cause, ModelCallCancelledError)
    assert cause.hook == "budget" and cause.reason == "over budget"
    assert provider.calls == []
    # The agent's error hooks see it and can recover.
    hook(system, P.AGENT_ERROR,
         lambda c: Replace("fallback") if c.data["error_type"] == "ModelCallCancelledError"
         else None, name="recover")
    assert (await agent.run("q")).output == "fallback"


async def test_replace_answers_without_calling_the_provider(system: System) -> None:
    provider = echo()
    hook(system, P.BEFORE_MODEL_CALL, lambda c: Replace("canned"), name="canned")
    agent = system.agents.create("a", provider=provider)
    assert (await agent.run("q")).output == "canned"
    assert provider.calls == []


async def test_redirect_sends_the_call_to_another_model(system: System) -> None:
    primary = echo("primary: ")
    backup = ScriptedProvider(lambda m, t: "backup: " + str(m[-1].content), name="backup",
                              model="b-1")
    system.models.register(backup)
    hook(system, P.BEFORE_MODEL_CALL,
         lambda c: Redirect("backup/b-2") if c.data["provider"] == "scripted" else None,
         name="route")
    agent = system.agents.create("a", provider=primary)
    assert (await agent.run("q")).output == "backup: q"
    assert primary.calls == [] and len(backup.calls) == 1


async def test_error_redirect_falls_back_and_retry_honours_retry_after(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = {"n": 0}

    def flaky(messages: Any, tools: Any) -> str:
        attempts["n"] += 1
        if attempts["n"] == 1:
            error = ProviderError("scripted", "rate limited", status=429, retryable=True)
            error.retry_after = 2.5  # type: ignore[attr-defined]
            raise error
        return "second try"

    waited: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waited.append(seconds)

    from llmspell.runtime import calls
    monkeypatch.setattr(calls.asyncio, "sleep", fake_sleep)
    seen: list[dict[str, Any]] = []

    def retry(ctx: HookContext) -> Retry:
        seen.append(dict(ctx.data))
        return Retry(0.1, 3)

    hook(system, P.MODEL_CALL_ERROR, retry, name="retry")
    agent = system.agents.create("a", provider=ScriptedProvider(flaky))
    assert (await agent.run("q")).output == "second try"
    assert waited == [2.5]  # the provider's Retry-After, longer than the hook's 0.1 s
    assert seen[0]["status"] == 429 and seen[0]["retryable"] is True
    assert seen[0]["error_type"] == "ProviderError" and seen[0]["attempt"] == 1


async def test_error_redirect_to_a_fallback_model(system: System) -> None:
    def down(messages: Any, tools: Any) -> str:
        raise ProviderError("scripted", "unavailable", status=503)

    fallback = ScriptedProvider(["from the fallback"], name="fallback", model="f")
    system.models.register(fallback)
    hook(system, P.MODEL_CALL_ERROR, lambda c: Redirect("fallback/f"), name="fallback")
    agent = system.agents.create("a", provider=ScriptedProvider(down))
    assert (await agent.run("q")).output == "from the fallback"


async def test_after_point_results(system: System) -> None:
    provider = echo()
    agent = system.agents.create("a", provider=provider)

    def moderate(ctx: HookContext) -> Modified | None:
        result = ctx.data["result"]
        text = result["message"]["content"]
        if "darn" in text:
            message = {**result["message"], "content": text.replace("darn", "****")}
            return Modified({"result": {**result, "message": message}})
        return None

    hook(system, P.AFTER_MODEL_CALL, moderate, name="moderate")
    assert (await agent.run("darn it")).output == "**** it"
    system.registry.unregister("moderate")

    def in_place(ctx: HookContext) -> Modified:
        ctx.data["result"]["message"]["content"] = "changed in place"
        return Modified(ctx.data)

    hook(system, P.AFTER_MODEL_CALL, in_place, name="in-place")
    assert (await agent.run("q")).output == "changed in place"
    system.registry.unregister("in-place")

    hook(system, P.AFTER_MODEL_CALL, lambda c: Replace("replaced after"), name="r")
    assert (await agent.run("q")).output == "replaced after"
    system.registry.unregister("r")

    hook(system, P.AFTER_MODEL_CALL, lambda c: Cancel("unsafe reply"), name="c")
    with pytest.raises(AgentError) as info:
        await agent.run("q")
    assert isinstance(info.value.__cause__, ModelCallCancelledError)
    system.registry.unregister("c")

    asked = {"n": 0}

    def reask(ctx: HookContext) -> Retry | None:
        asked["n"] += 1
        return Retry(0, 2) if ctx.data["attempt"] == 1 else None

    before = len(provider.calls)
    hook(system, P.AFTER_MODEL_CALL, reask, name="reask")
    await agent.run("again")
    assert len(provider.calls) - before == 2 and asked["n"] == 2
    system.registry.unregister("reask")

    hook(system, P.AFTER_MODEL_CALL, lambda c: Skipped("not mine"), name="skip")
    assert (await agent.run("plain")).output == "plain"


async def test_fork_runs_shadow_calls_attached_and_published(
        system: System, events: list[UniversalEvent]) -> None:
    shadow = ScriptedProvider(lambda m, t: "shadow says " + str(m[-1].content),
                              name="shadow", model="s-1")
    system.models.register(shadow)
    hook(system, P.BEFORE_MODEL_CALL,
         lambda c: Fork((ForkOperation(type="model", target="shadow/s-1"),))
         if c.data["provider"] == "scripted" else None, name="compare")
    agent = system.agents.create("a", provider=echo())
    seen: list[Any] = []
    hook(system, P.AFTER_MODEL_CALL, lambda c: seen.append(c.data["provider"]), name="see")
    response = await agent.run("q")
    assert response.output == "q"
    assert len(shadow.calls) == 1
    published = [e for e in events if e.event_type == "model.shadow.shadow"]
    assert len(published) == 1
    assert published[0].data["response"]["content"] == "shadow says q"
    assert published[0].data["shadowing"] == "scripted/scripted"
    assert sorted(seen) == ["scripted", "shadow"]


async def test_cache_serves_a_stored_response(system: System) -> None:
    provider = echo()
    hook(system, P.BEFORE_MODEL_CALL,
         lambda c: Cache("q:" + c.data["params"]["messages"][-1]["content"], ttl=60),
         name="cache")
    agent = system.agents.create("a", provider=provider)
    assert (await agent.run("same")).output == "same"
    assert (await agent.run("same")).output == "same"
    assert len(provider.calls) == 1


async def test_retry_before_asks_the_before_hooks_again(system: System) -> None:
    asked: list[int] = []

    def gate(ctx: HookContext) -> Retry | None:
        asked.append(ctx.data["attempt"])
        return Retry(0, 3) if ctx.data["attempt"] < 2 else None

    hook(system, P.BEFORE_MODEL_CALL, gate, name="gate")
    agent = system.agents.create("a", provider=echo())
    assert (await agent.run("q")).output == "q"
    assert asked == [1, 2]


@pytest.mark.parametrize("store", ["memory", "sqlite"])
@pytest.mark.parametrize("mode", ["none", "masked", "full"])
async def test_what_events_keep_of_the_content(mode: str, store: str, tmp_path: Any) -> None:
    system = System(SystemConfig(store=store, data_dir=str(tmp_path), record_content=mode))
    await system.start()
    try:
        agent = system.agents.create("a", provider=echo("ok "))
        await agent.run("my key is sk-abcdefghijklmnopqrstuvwx and password=hunter2")
        assert system.store is not None
        system.bus.flush()
        (event,) = [e for e in system.store.query() if e.event_type == "model.scripted.completed"]
        sent = event.data["request"]["messages"][-1]
        reply = event.data["response"]
        if mode == "none":
            assert "content" not in sent and sent["chars"] > 0 and "content" not in reply
        elif mode == "masked":
            assert sent["content"] == "my key is *** and ***"
            assert "sk-abc" not in str(event.data) and "hunter2" not in str(event.data)
            on_disk = b"".join(f.read_bytes() for f in Path(tmp_path).glob("events.db*"))
            assert b"hunter2" not in on_disk  # nothing of it reached the file either
        else:
            assert "sk-abcdefghijklmnopqrstuvwx" in sent["content"]
    finally:
        await system.shutdown()


async def test_a_direct_call_without_hooks(system: System,
                                           events: list[UniversalEvent]) -> None:
    provider = echo()
    done = await system.models.call(provider, [Message(role="user", content="hi")],
                                    max_tokens=5)
    assert done.completion.message.content == "hi" and done.attempts == 1
    types = [e.event_type for e in events]
    # "model.**" listens to the deltas too, so the answer was streamed (and published).
    assert [t for t in types if not t.endswith(".delta")] == ["model.scripted.started",
                                                             "model.scripted.completed"]
    assert "model.scripted.delta" in types


async def test_redirect_targets_are_checked(system: System) -> None:
    provider = echo()
    with pytest.raises(InvalidValueError):
        system.models.resolve("scripted/", provider)
    assert system.models.resolve("other-model", provider) == (provider, "other-model")
    assert system.models.resolve("scripted/m2", provider) == (provider, "m2")


async def test_concurrent_calls_do_not_share_contexts(system: System) -> None:
    hook(system, P.BEFORE_MODEL_CALL, lambda c: None, name="noop")
    agents = [system.agents.create(f"a{i}", provider=echo(f"{i}:")) for i in range(5)]
    outputs = await asyncio.gather(*(a.run("x") for a in agents))
    assert [o.output for o in outputs] == [f"{i}:x" for i in range(5)]


async def test_cost_at_list_price_when_the_model_is_priced(
        system: System, events: list[UniversalEvent]) -> None:
    from llmspell.builtin.cost import list_price_usd

    priced = ScriptedProvider(["hi there"], name="openai", model="gpt-4o-mini")
    seen: list[Any] = []
    hook(system, P.AFTER_MODEL_CALL, lambda c: seen.append(c.data["result"]["cost_usd"]),
         name="cost")
    agent = system.agents.create("a", provider=priced)
    response = await agent.run("hello")
    usage = response.token_usage
    expected = list_price_usd("openai", "gpt-4o-mini", usage["input"], usage["output"])
    assert expected is not None and expected > 0
    assert seen == [expected]
    (done,) = [e for e in events if e.event_type == "model.openai.completed"]
    assert done.data["cost_usd"] == expected
    # An unknown model has no price (not zero).
    assert list_price_usd("scripted", "scripted", 10, 10) is None


async def test_a_call_keeps_its_answer_when_its_record_cannot_be_kept(
        system: System, caplog: pytest.LogCaptureFixture) -> None:
    from llmspell.errors import StoreFullError

    assert system.store is not None

    original = system.store.append

    def full(event: UniversalEvent) -> None:
        if event.event_type.startswith("model."):  # only the call's record is refused
            raise StoreFullError("the store is full")
        original(event)

    system.store.append = full  # type: ignore[method-assign]
    agent = system.agents.create("a", provider=echo())
    assert (await agent.run("still answered")).output == "still answered"
    assert "model.scripted.completed event was not recorded" in caplog.text


async def test_direct_calls_check_what_they_are_given(system: System) -> None:
    provider = echo()
    done = await system.models.call(provider, [{"role": "user", "content": "from a dict"}])
    assert done.completion.message.content == "from a dict"
    with pytest.raises(InvalidValueError, match=r"params.messages\[0\].role"):
        await system.models.call(provider, [{"role": "robot", "content": "x"}])
    with pytest.raises(InvalidValueError, match=r"params\.tools"):
        await system.models.call(provider, [Message(role="user", content="x")],
                                 tools=["not a spec"])  # type: ignore[list-item]
    assert len(provider.calls) == 1  # the bad calls never reached the provider


@pytest.mark.parametrize("message", ["bad \udc80 bytes", "y" * 2_000_000])
async def test_a_model_failure_with_hostile_error_text_is_still_recorded(
        system: System, events: list[UniversalEvent], message: str) -> None:
    # The failure event carried the error text whole: a lone surrogate or megabytes of it
    # made publishing it raise, so model.<provider>.failed was lost and the caller got
    # NotJsonSafeError / EventTooLargeError instead of the provider's error.
    def down(messages: Any, tools: Any) -> str:
        raise ProviderError("scripted", message, status=500)

    agent = system.agents.create("a", provider=ScriptedProvider(down))
    with pytest.raises(AgentError):
        await agent.run("q")
    [failed] = [e for e in events if e.event_type.endswith(".failed")]
    assert failed.data["error"].encode("utf-8") and len(failed.data["error"]) < 10_000
