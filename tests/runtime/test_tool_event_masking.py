"""``tool.*`` events mask credential-shaped text in values, not only sensitive keys.

With ``mask_event_data`` (the default) a tool's parameters, result and error message were
masked by key name only: a tool that read a ``.env`` file, a key passed under an ordinary
parameter name or an error quoting a token reached the event store (and the viewer, traces
and exporters) in clear, while ``model.*`` events masked such text. So did a model's
tool-call arguments under ordinary keys. Hooks and the caller still get the full values.
"""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.errors import ToolExecutionError
from llmspell.events import UniversalEvent
from llmspell.hooks.points import HookPoint
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.content import mask_value
from llmspell.runtime.providers.scripted import ScriptedProvider

KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6"
SECRET = b"A1b2C3d4E5f6"


@tool()
def read_env(path: str) -> dict[str, Any]:
    """Reads a .env file."""
    return {"path": path, "content": f"OPENAI_API_KEY={KEY}\nDEBUG=1\n", "lines": 2}


@tool()
def echo(text: str) -> str:
    """Echoes its text."""
    return f"you said {text}"


@tool()
def leaky_failure(q: str) -> str:
    """Fails with a message quoting a token."""
    raise RuntimeError(f"upstream refused Authorization: Bearer {KEY}")


def published(events: list[UniversalEvent], prefix: str = "tool.") -> bytes:
    return b"".join(e.to_json() for e in events if e.event_type.startswith(prefix))


def data_of(events: list[UniversalEvent], event_type: str) -> dict[str, Any]:
    [event] = [e for e in events if e.event_type == event_type]
    return dict(event.data)


async def test_a_result_holding_a_key_is_masked_in_the_event_not_for_the_caller(
        system: System, events: list[UniversalEvent]) -> None:
    system.tools.register(read_env)
    seen: list[Any] = []
    system.registry.register(HookPoint.AFTER_TOOL_EXECUTION,
                             lambda c: seen.append(c.data["result"]), name="spy")
    result = await system.tools.execute("read_env", {"path": ".env"})
    assert KEY in result["content"]  # the caller gets the real result
    assert KEY in seen[0]["content"]  # and so do hooks
    assert SECRET not in published(events)
    data = data_of(events, "tool.read_env.completed")
    assert data["result"]["path"] == ".env" and data["result"]["lines"] == 2
    assert "***" in data["result"]["content"] and "DEBUG=1" in data["result"]["content"]
    # Stored events too (the memory store).
    stored = system.store.query(pattern="tool.**")  # type: ignore[union-attr]
    assert stored and all(SECRET not in e.to_json() for e in stored)


async def test_a_key_under_an_ordinary_parameter_name_is_masked(
        system: System, events: list[UniversalEvent]) -> None:
    system.tools.register(echo)
    seen: list[Any] = []
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                             lambda c: seen.append(dict(c.data["params"])), name="spy")
    result = await system.tools.execute("echo", {"text": f"my key is {KEY}"})
    assert result == f"you said my key is {KEY}"
    assert seen == [{"text": f"my key is {KEY}"}]  # hooks see the full parameters
    assert SECRET not in published(events)
    assert data_of(events, "tool.echo.started")["params"] == {"text": "my key is ***"}
    assert data_of(events, "tool.echo.completed")["result"] == "you said my key is ***"


async def test_an_error_message_quoting_a_token_is_masked(
        system: System, events: list[UniversalEvent]) -> None:
    system.tools.register(leaky_failure)
    with pytest.raises(ToolExecutionError, match="A1b2C3d4E5f6"):  # the caller's error is whole
        await system.tools.execute("leaky_failure", {"q": "x"})
    assert SECRET not in published(events)
    error = data_of(events, "tool.leaky_failure.failed")["error"]
    assert "upstream refused" in error and "***" in error


async def test_ordinary_values_are_published_as_they_are(
        system: System, events: list[UniversalEvent]) -> None:
    assert await system.tools.execute("add", {"a": 2, "b": 3}) == 5
    system.tools.register(echo)
    await system.tools.execute("echo", {"text": "token counts: 12, keys: 3"})
    assert data_of(events, "tool.add.started")["params"] == {"a": 2, "b": 3}
    assert data_of(events, "tool.add.completed")["result"] == 5
    assert data_of(events, "tool.echo.completed")["result"] == \
        "you said token counts: 12, keys: 3"


async def test_mask_event_data_off_publishes_values_in_clear() -> None:
    async with System(SystemConfig(store="memory", mask_event_data=False)) as system:
        seen: list[UniversalEvent] = []
        system.bus.subscribe("tool.**", seen.append)
        system.tools.register(read_env)
        system.tools.register(leaky_failure)
        await system.tools.execute("read_env", {"path": ".env"})
        with pytest.raises(ToolExecutionError):
            await system.tools.execute("leaky_failure", {"q": KEY})
        text = published(seen)
    assert text.count(SECRET) == 3  # the result, the parameter, the error message


async def test_a_models_tool_call_arguments_under_ordinary_keys_are_masked(
        system: System, events: list[UniversalEvent]) -> None:
    system.tools.register(echo)
    agent = system.agents.create("helper", tools=["echo"], provider=ScriptedProvider([
        {"tool_calls": [{"name": "echo", "arguments": {"text": KEY, "api_key": "pw"}}]},
        "done"]))
    await agent.run("go")
    assert SECRET not in published(events, "model.")
    assert SECRET not in published(events, "tool.")
    completed = [e for e in events if e.event_type.endswith(".completed")
                 and e.event_type.startswith("model.")]
    calls = completed[0].data["response"]["tool_calls"]
    assert calls[0]["arguments"] == {"text": "***", "api_key": "***"}
    assert calls[0]["name"] == "echo"


async def test_the_adapters_tool_events_mask_the_same_way(
        system: System, events: list[UniversalEvent]) -> None:
    from llmspell.integrations._bridge import EventSink

    sink = EventSink(system, "llmspell.test")
    sink.publish("tool.read.started", {"params": sink.mask({"path": f"k={KEY}"}),
                                       "attempt": 1})
    sink.publish("tool.read.completed",
                 {"result": sink.mask({"content": f"OPENAI_API_KEY={KEY}"}), "attempts": 1})
    sink.failed("tool.read.failed", RuntimeError(f"bad token Bearer {KEY}"),
                duration_ms=1.0)
    await system.bus.drain(5)
    assert SECRET not in published(events)
    assert "***" in data_of(events, "tool.read.failed")["error"]
    assert data_of(events, "tool.read.failed")["duration_ms"] == 1.0

    async with System(SystemConfig(store="memory", mask_event_data=False)) as clear:
        assert EventSink(clear, "llmspell.test").mask({"q": KEY}) == {"q": KEY}


def test_a_container_nested_past_the_limit_is_masked_whole() -> None:
    # The masker masks what it cannot check; mask_value gave it back as it was.
    deep: Any = KEY
    for _ in range(70):
        deep = [deep]
    masked = mask_value({"a": deep})
    assert KEY not in repr(masked)


async def test_a_tool_event_keeps_what_the_tool_returned_when_the_caller_changes_it() -> None:
    """The event holds a copy: a caller changing the result (or a tool changing its
    parameters) afterwards does not change the stored event."""

    @tool("summary_copy")
    def summary_copy(items: list[int]) -> dict[str, Any]:
        """A small dict."""
        items.append(99)  # the tool changes its own parameters
        return {"a": 1, "items": [1, 2]}

    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(summary_copy)
        result = await system.tools.execute("summary_copy", {"items": [7]})
        result["a"] = 999
        result["items"].append(3)
        stored = {e.event_type: e.data for e in system.store.query()}
    assert stored["tool.summary_copy.completed"]["result"] == {"a": 1, "items": [1, 2]}
    assert stored["tool.summary_copy.started"]["params"] == {"items": [7]}


async def test_a_model_failure_quoting_a_key_is_masked_in_its_event() -> None:
    """A provider's error may quote the key it was sent with: `model.*.failed` masks it
    unless record_content is "full"."""
    secret = "sk-proj-" + "A1b2C3d4" * 5

    def reply(messages: list[Any], tools: list[Any]) -> Any:
        raise RuntimeError(f"invalid api key {secret}")

    for mode, shown in (("masked", False), ("full", True)):
        async with System(SystemConfig(store="memory", record_content=mode)) as system:
            with pytest.raises(Exception):  # noqa: B017 - whatever the provider raised
                await system.models.call(ScriptedProvider(reply),
                                         [{"role": "user", "content": "hi"}])
            (failed,) = [e for e in system.store.query() if e.event_type.endswith(".failed")]
        assert (secret in failed.data["error"]) is shown, (mode, failed.data["error"])
