"""The retry built-in does not repeat a tool call that may already have changed something
outside the process (a declared side effect) unless told it may."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.builtin.retry import RetryConfig, RetryHook
from llmspell.errors import InvalidValueError, ToolExecutionError
from llmspell.hooks import HookContext, HookPoint, Modified
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.tools.base import SideEffect, Tool

FAST = RetryConfig(base_delay=0.001, max_delay=0.002, jitter="none", max_attempts=4)


def failing_webhook(failures: int) -> tuple[Any, list[str]]:
    """A webhook tool that times out ``failures`` times (after sending), then answers."""
    sent: list[str] = []

    @tool(name="notify", side_effects=["webhook"])
    def notify(text: str) -> str:
        """Posts text to a webhook."""
        sent.append(text)
        if len(sent) <= failures:
            raise TimeoutError("the webhook did not answer in time")
        return "ok"

    return notify, sent


async def test_a_tool_with_side_effects_is_not_retried_by_default() -> None:
    # The webhook was sent, then the call timed out: a retry would send it again.
    notify, sent = failing_webhook(1)
    hook = RetryHook(FAST)
    seen: list[Any] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(notify)
        hook.install(system.registry)
        system.registry.register(HookPoint.TOOL_ERROR,
                                 lambda ctx: seen.append(ctx.data.get("side_effects")),
                                 name="watch", priority=-100)
        with pytest.raises(ToolExecutionError, match="did not answer"):
            await system.tools.run("notify", {"text": "deploy done"})
    assert sent == ["deploy done"]
    assert seen == [["webhook"]]
    assert hook.stats().by_component["tool:notify"].non_retryable == 1


async def test_retry_side_effects_allows_it() -> None:
    notify, sent = failing_webhook(2)
    hook = RetryHook(RetryConfig(base_delay=0.001, max_delay=0.002, jitter="none",
                                 max_attempts=4, retry_side_effects=True))
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(notify)
        hook.install(system.registry)
        run = await system.tools.run("notify", {"text": "deploy done"})
    assert run.result == "ok" and run.attempts == 3 and len(sent) == 3


class Fetcher(Tool):
    """An HTTP-like tool: GET changes nothing, POST writes."""

    name = "fetcher"
    description = "GET or POST a URL"
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {"method": {"type": "string"}},
        "required": ["method"],
    }
    side_effects = frozenset({SideEffect.NETWORK_WRITE})

    def __init__(self) -> None:
        self.calls: list[str] = []

    def side_effects_for(self, params: dict[str, Any]) -> frozenset[SideEffect]:
        return frozenset() if params["method"] in ("GET", "HEAD") else self.side_effects

    async def execute(self, params: dict[str, Any]) -> Any:
        self.calls.append(params["method"])
        if len(self.calls) % 2:
            raise ConnectionError("connection reset by peer")
        return params["method"]


@pytest.mark.parametrize(("method", "attempts"), [("GET", 2), ("POST", 1)])
async def test_side_effects_are_those_of_the_call(method: str, attempts: int) -> None:
    fetcher = Fetcher()
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(fetcher)
        RetryHook(FAST).install(system.registry)
        if method == "GET":
            assert (await system.tools.run("fetcher", {"method": method})).attempts == 2
        else:
            with pytest.raises(ToolExecutionError, match="connection reset"):
                await system.tools.run("fetcher", {"method": method})
    assert fetcher.calls == [method] * attempts


async def test_the_side_effects_of_the_params_a_hook_changed_count() -> None:
    # A before hook turned the GET into a POST: the failed call wrote.
    fetcher = Fetcher()

    def to_post(ctx: HookContext) -> Modified:
        return Modified({**ctx.data, "params": {"method": "POST"}})

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(fetcher)
        RetryHook(FAST).install(system.registry)
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, to_post, name="to-post")
        with pytest.raises(ToolExecutionError):
            await system.tools.run("fetcher", {"method": "GET"})
    assert fetcher.calls == ["POST"]


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_retry_side_effects_must_be_a_bool(value: Any) -> None:
    with pytest.raises(InvalidValueError, match="retry_side_effects must be True or False"):
        RetryConfig(retry_side_effects=value)
