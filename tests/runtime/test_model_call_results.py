"""Each of the nine results at each of the three model-call points, through a real System
and an agent: the effect docs/runtime.md's model-call table gives it (or none, where the
table says so)."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.errors import AgentError, ModelCallCancelledError, ProviderError
from llmspell.hooks import (
    Cache,
    Cancel,
    Continue,
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
from llmspell.runtime.providers.scripted import ScriptedProvider

P = HookPoint


class Echo:
    """Echoes the prompt; with ``fail_first`` the first call raises a provider error."""

    def __init__(self, fail_first: bool = False) -> None:
        self.calls = 0
        self.fail_first = fail_first

    def __call__(self, messages: Any, tools: Any) -> str:
        self.calls += 1
        if self.fail_first and self.calls == 1:
            raise ProviderError("scripted", "overloaded", status=529, retryable=True)
        return "echo " + str(messages[-1].content)


def _result(point: str, kind: str) -> Any:
    """The hook returning ``kind`` at ``point`` (acting on the first attempt only where a
    second one would loop)."""
    def rewrite(ctx: HookContext) -> Modified:
        if point == P.BEFORE_MODEL_CALL:
            params = ctx.data["params"]
            messages = [*params["messages"][:-1], {**params["messages"][-1],
                                                   "content": "rewritten"}]
            return Modified({"params": {**params, "messages": messages}})
        result = ctx.data.get("result") or {}
        return Modified({"result": {**result, "message": {"role": "assistant",
                                                          "content": "rewritten"}}})

    makers = {
        "continue": lambda c: Continue(),
        "skipped": lambda c: Skipped("not mine"),
        "modified": rewrite,
        "cancel": lambda c: Cancel("stop"),
        "replace": lambda c: Replace("replaced"),
        "redirect": lambda c: Redirect("other/o-1") if c.data["provider"] == "scripted"
        else None,
        "retry": lambda c: Retry(0, 2) if c.data["attempt"] == 1 else None,
        "fork": lambda c: Fork((ForkOperation(type="model", target="other/o-1"),))
        if c.data["provider"] == "scripted" else None,
        "cache": lambda c: Cache("same-question", ttl=60),
    }
    return makers[kind]


KINDS = ["continue", "skipped", "modified", "cancel", "replace", "redirect", "retry", "fork",
         "cache"]
# point -> kind -> (the first run's output or the error's cause type, provider calls after
# two runs, calls of the other model)
EXPECTED: dict[str, dict[str, tuple[Any, int, int]]] = {
    P.BEFORE_MODEL_CALL: {
        "continue": ("echo q", 2, 0), "skipped": ("echo q", 2, 0),
        "modified": ("echo rewritten", 2, 0), "cancel": (ModelCallCancelledError, 0, 0),
        "replace": ("replaced", 0, 0), "redirect": ("other q", 0, 2),
        "retry": ("echo q", 2, 0), "fork": ("echo q", 2, 2), "cache": ("echo q", 1, 0),
    },
    P.AFTER_MODEL_CALL: {
        "continue": ("echo q", 2, 0), "skipped": ("echo q", 2, 0),
        "modified": ("rewritten", 2, 0), "cancel": (ModelCallCancelledError, 2, 0),
        "replace": ("replaced", 2, 0), "redirect": ("other q", 2, 2),
        "retry": ("echo q", 4, 0), "fork": ("echo q", 2, 2), "cache": ("echo q", 1, 0),
    },
    # The provider fails on its first call only.
    P.MODEL_CALL_ERROR: {
        "continue": (ProviderError, 2, 0), "skipped": (ProviderError, 2, 0),
        "modified": (ProviderError, 2, 0), "cancel": (ModelCallCancelledError, 2, 0),
        "replace": ("replaced", 2, 0), "redirect": ("other q", 2, 1),
        "retry": ("echo q", 3, 0), "fork": (ProviderError, 2, 0),
        "cache": (ProviderError, 2, 0),
    },
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("point", [P.BEFORE_MODEL_CALL, P.AFTER_MODEL_CALL,
                                   P.MODEL_CALL_ERROR])
async def test_every_result_at_every_model_point(point: str, kind: str) -> None:
    expected_first, expected_calls, expected_other = EXPECTED[point][kind]
    system = System(SystemConfig(store="memory", breaker="off"))
    await system.start()
    try:
        echo = Echo(fail_first=point == P.MODEL_CALL_ERROR)
        other = Echo()
        system.models.register(ScriptedProvider(
            lambda m, t: "other " + str(m[-1].content).removeprefix("echo "),
            name="other", model="o-1"))
        counted = system.models.resolve("other/o-1", ScriptedProvider(["x"]))[0]
        original = counted.complete

        async def counting(*args: Any, **kwargs: Any) -> Any:
            other.calls += 1
            return await original(*args, **kwargs)

        counted.complete = counting  # type: ignore[method-assign]
        system.registry.register(point, _result(point, kind), name="probe")
        agent = system.agents.create("a", provider=ScriptedProvider(echo))
        outcomes: list[Any] = []
        for _ in range(2):
            try:
                outcomes.append((await agent.run("q")).output)
            except AgentError as exc:
                outcomes.append(type(exc.__cause__))
    finally:
        await system.shutdown()
    if isinstance(expected_first, type):
        assert outcomes[0] is expected_first or issubclass(outcomes[0], expected_first)
    else:
        assert outcomes[0] == expected_first
    assert echo.calls == expected_calls
    assert other.calls == expected_other
