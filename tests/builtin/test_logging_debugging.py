"""LoggingHook and DebuggingHook, through the real runtime."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import llmspell.builtin.logging_hook as logging_module
from llmspell.builtin.debugging import (
    DEBUGGING_PRIORITY,
    DebuggingConfig,
    DebuggingHook,
    Trace,
)
from llmspell.builtin.logging_hook import (
    DEFAULT_LOGGER,
    LOGGING_PRIORITY,
    LoggingConfig,
    LoggingHook,
)
from llmspell.builtin.masking import Masker
from llmspell.errors import InvalidValueError, ToolExecutionError
from llmspell.hooks import ComponentId, ComponentType, HookContext, HookPoint, Modified
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers import ScriptedProvider

P = HookPoint
SECRET = "sk-123"


@tool()
def fetch(query: str, api_key: str) -> str:
    """Pretend to fetch ``query`` with a credential."""
    return f"results for {query}"


@tool()
def echo(text: str) -> str:
    """Return ``text``."""
    return text


@tool()
def explode(message: str = "boom") -> None:
    """Always fails."""
    raise RuntimeError(message)


@pytest.fixture
async def system() -> AsyncIterator[System]:
    async with System(SystemConfig(store="memory")) as sys:
        sys.tools.register_all([fetch, echo, explode])
        yield sys


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == DEFAULT_LOGGER]


class CountingMasker(Masker):
    """A Masker that counts its top-level calls."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def mask(self, value: Any, depth: int = 0) -> Any:
        if depth == 0:
            self.calls += 1
        return super().mask(value, depth)


class Probe:
    """An object that must never be repr'd or stringified by an observing hook."""

    def __init__(self) -> None:
        self.calls = 0

    def __repr__(self) -> str:
        self.calls += 1
        raise AssertionError("repr called")

    __str__ = __repr__


# -- LoggingHook --------------------------------------------------------------------------


def test_logging_defaults() -> None:
    hook = LoggingHook()
    assert hook.metadata.name == "logging"
    assert hook.metadata.priority == LOGGING_PRIORITY == 900
    assert hook.logger.name == "llmspell.hooks.log"
    assert hook.config.level == logging.INFO and hook.config.max_chars == 500
    assert P.BEFORE_TOOL_EXECUTION in hook.points and P.AFTER_MODEL_CALL in hook.points
    assert P.BEFORE_MODEL_CALL in hook.points and P.MODEL_CALL_ERROR in hook.points
    assert LoggingHook(points=["BeforeToolExecution"]).points == (P.BEFORE_TOOL_EXECUTION,)


async def test_records_carry_extra_fields_and_never_the_secret(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=DEFAULT_LOGGER)
    hook = LoggingHook()
    hook.install(system.registry)
    run = await system.tools.run("fetch", {"query": "cats", "api_key": SECRET})
    assert run.result == "results for cats"

    records = ours(caplog)
    assert [r.llmspell_point for r in records] == [  # type: ignore[attr-defined]
        "tool_validation", "before_tool_execution", "after_tool_execution"]
    for record in records:
        assert record.levelno == logging.INFO
        assert record.llmspell_component["type"] == "tool"  # type: ignore[attr-defined]
        assert record.llmspell_component["name"] == "fetch"  # type: ignore[attr-defined]
        assert record.llmspell_correlation_id == run.correlation_id  # type: ignore[attr-defined]
        assert record.llmspell_data["params"] == {  # type: ignore[attr-defined]
            "query": "cats", "api_key": "***"}
        message = record.getMessage()
        assert message.startswith(f"{record.llmspell_point} tool:fetch corr=")  # type: ignore[attr-defined]
        assert f"corr={run.correlation_id}" in message
        assert '"api_key":"***"' in message
    after = records[-1]
    assert after.llmspell_data["result"] == "results for cats"  # type: ignore[attr-defined]

    agent = system.agents.create("a", provider=ScriptedProvider(["answer"]))
    assert (await agent.run("q")).output == "answer"
    points = [r.llmspell_point for r in ours(caplog)][3:]  # type: ignore[attr-defined]
    assert points == ["before_agent_execution", "before_model_call", "after_model_call",
                      "after_agent_execution"]
    model_call = ours(caplog)[5]
    # Token counts are not credentials: kept despite the "token" fragment.
    assert model_call.llmspell_data["result"]["usage"]["total_tokens"] >= 1  # type: ignore[attr-defined]
    assert ours(caplog)[-1].llmspell_data["result"]["token_usage"]["total"] >= 1  # type: ignore[attr-defined]

    assert SECRET not in caplog.text
    for record in ours(caplog):
        assert SECRET not in record.getMessage()
        assert SECRET not in repr(vars(record))
    stats = hook.stats()
    assert stats.logged == 7 and stats.skipped == 0 and stats.errors == 0
    assert stats.by_point["before_tool_execution"] == 1
    assert stats.by_point["after_model_call"] == 1


async def test_error_points_log_at_error_level(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=DEFAULT_LOGGER)
    LoggingHook(points=[P.TOOL_ERROR]).install(system.registry)
    with pytest.raises(ToolExecutionError):
        await system.tools.execute("explode", {"message": "kaput"})
    (record,) = ours(caplog)
    assert record.levelno == logging.WARNING
    assert "kaput" in record.llmspell_data["error"]  # type: ignore[attr-defined]
    assert record.llmspell_data["error_type"] == "ToolExecutionError"  # type: ignore[attr-defined]


async def test_level_off_formats_and_masks_nothing(
    system: System, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger=DEFAULT_LOGGER)
    truncations = []
    real_truncate = logging_module.truncate

    def counting_truncate(value: Any, max_chars: int) -> Any:
        truncations.append(max_chars)
        return real_truncate(value, max_chars)

    monkeypatch.setattr(logging_module, "truncate", counting_truncate)
    probe = Probe()
    system.registry.register(
        P.BEFORE_TOOL_EXECUTION, lambda c: Modified({**c.data, "probe": probe}),
        name="probe", priority=0,
    )
    masker = CountingMasker()
    hook = LoggingHook(masker=masker)
    hook.install(system.registry)

    assert await system.tools.execute("echo", {"text": "hi"}) == "hi"
    assert ours(caplog) == []
    assert masker.calls == 0 and truncations == [] and probe.calls == 0
    stats = hook.stats()
    assert stats.skipped == 3 and stats.logged == 0 and stats.by_point == {}

    # Turned on, the same call is logged; unknown objects are named, never repr'd.
    caplog.set_level(logging.INFO, logger=DEFAULT_LOGGER)
    assert await system.tools.execute("echo", {"text": "hi"}) == "hi"
    assert len(ours(caplog)) == 3
    assert masker.calls == 3 and len(truncations) == 3 and probe.calls == 0
    assert '"probe":"<Probe>"' in ours(caplog)[1].getMessage()
    assert hook.stats().logged == 3 and hook.stats().errors == 0


async def test_large_data_is_truncated(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=DEFAULT_LOGGER)
    LoggingHook(LoggingConfig(max_chars=40),
                points=[P.BEFORE_TOOL_EXECUTION]).install(system.registry)
    await system.tools.execute("echo", {"text": "x" * 5000})
    (record,) = ours(caplog)
    text = record.llmspell_data["params"]["text"]  # type: ignore[attr-defined]
    assert text.startswith("x" * 40) and text.endswith("...(+4960)") and len(text) < 60
    _, rendered = record.getMessage().split(" data=", 1)
    assert len(rendered) < 60 and "...(+" in rendered
    assert len(record.getMessage()) < 200


async def test_configured_keys_level_and_data_off(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="app.audit")
    hook = LoggingHook(
        LoggingConfig(logger="app.audit", level="debug", sensitive_keys=("query",),
                      keep_keys=()),
        points=[P.BEFORE_TOOL_EXECUTION],
    )
    hook.install(system.registry)
    await system.tools.execute("fetch", {"query": "private", "api_key": "visible"})
    (record,) = [r for r in caplog.records if r.name == "app.audit"]
    assert record.levelno == logging.DEBUG
    assert record.llmspell_data["params"] == {  # type: ignore[attr-defined]
        "query": "***", "api_key": "visible"}

    hook.uninstall(system.registry)
    bare = LoggingHook(LoggingConfig(include_data=False), points=[P.BEFORE_TOOL_EXECUTION])
    bare.install(system.registry)
    caplog.set_level(logging.INFO, logger=DEFAULT_LOGGER)
    await system.tools.execute("echo", {"text": "quiet"})
    (record,) = ours(caplog)
    assert record.llmspell_data is None  # type: ignore[attr-defined]
    assert record.getMessage().endswith("data=-") and "quiet" not in record.getMessage()


async def test_a_broken_masker_never_breaks_the_call(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=DEFAULT_LOGGER)

    class Broken(Masker):
        __slots__ = ()

        def mask(self, value: Any, depth: int = 0) -> Any:
            raise RuntimeError("mask failed")

    hook = LoggingHook(masker=Broken())
    hook.install(system.registry)
    assert await system.tools.execute("echo", {"text": "ok"}) == "ok"
    assert hook.stats().errors == 3 and hook.stats().logged == 0


def test_unrenderable_data_and_reset(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=DEFAULT_LOGGER)
    hook = LoggingHook()
    ctx = HookContext(point=P.BEFORE_TOOL_EXECUTION,
                      component=ComponentId(type=ComponentType.TOOL, name="t"),
                      data={"text": "lone surrogate \ud800"})
    assert hook.execute(ctx) is None
    (record,) = ours(caplog)
    assert record.getMessage().endswith("data=<unrenderable dict>")
    assert hook.stats().logged == 1
    hook.reset_stats()
    assert hook.stats() == logging_module.LoggingStats(logged=0, skipped=0, errors=0,
                                                       by_point={})


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"level": "LOUD"}, "unknown logging level"),
        ({"level": True}, "not a bool"),
        ({"error_level": -1}, ">= 0"),
        ({"max_chars": 0}, "max_chars"),
        ({"logger": ""}, "logger"),
        ({"sensitive_keys": "password"}, "collection of key names"),
        ({"keep_keys": ("ok", "")}, "non-empty strings"),
    ],
)
def test_logging_config_rejects_bad_values(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidValueError, match=fragment) as info:
        LoggingConfig(**fields)
    if "level" in fields or "sensitive_keys" in fields:
        assert info.value.hint


def test_logging_config_accepts_level_names() -> None:
    config = LoggingConfig(level="warning", error_level=" Error ")
    assert (config.level, config.error_level) == (logging.WARNING, logging.ERROR)


# -- DebuggingHook ------------------------------------------------------------------------


def test_debugging_defaults() -> None:
    hook = DebuggingHook()
    assert hook.metadata.name == "debugging"
    assert hook.metadata.priority == DEBUGGING_PRIORITY == 950
    assert hook.config.max_traces == 1000 and not hook.config.capture_stack
    assert len(hook) == 0 and hook.traces() == []


async def test_traces_correlation_durations_and_filters(system: System) -> None:
    hook = DebuggingHook()
    hook.install(system.registry)
    started = time.time()
    run = await system.tools.run("fetch", {"query": "cats", "api_key": SECRET})
    agent = system.agents.create("a", provider=ScriptedProvider(["answer"]))
    response = await agent.run("q")
    assert response.output == "answer"

    all_traces = hook.traces()
    assert all(isinstance(t, Trace) for t in all_traces)
    assert [t.point for t in all_traces] == [
        "tool_validation", "before_tool_execution", "after_tool_execution",
        "before_agent_execution", "before_model_call", "after_model_call",
        "after_agent_execution",
    ]
    assert [t.seq for t in all_traces] == sorted(t.seq for t in all_traces)

    tool_traces = hook.traces(component="fetch")
    assert tool_traces == hook.traces(component="tool:fetch") == all_traces[:3]
    assert {t.correlation_id for t in tool_traces} == {run.correlation_id}
    before, after = tool_traces[1], tool_traces[2]
    assert before.duration_ms is None
    assert after.duration_ms is not None and after.duration_ms >= 0
    assert after.data is not None and after.data["result"] == "results for cats"
    assert before.data == {"tool": "fetch", "params": {"query": "cats", "api_key": "***"},
                           "attempt": 1}
    assert SECRET not in repr(all_traces)

    agent_traces = hook.traces(component="agent:a")
    assert len({t.correlation_id for t in agent_traces}) == 1
    assert agent_traces[0].correlation_id != run.correlation_id
    assert agent_traces[-1].duration_ms is not None
    model_traces = hook.traces(component="model:scripted/scripted")
    assert [t.point for t in model_traces] == ["before_model_call", "after_model_call"]
    assert model_traces[1].usage is not None and model_traces[1].usage["total_tokens"] >= 1
    assert {t.correlation_id for t in model_traces} == {agent_traces[0].correlation_id}

    assert hook.traces(point="BeforeToolExecution") == [before]
    assert hook.traces(point=P.AFTER_AGENT_EXECUTION) == [agent_traces[-1]]
    assert hook.traces(correlation_id=run.correlation_id) == tool_traces
    assert hook.traces(component="tool:a") == []
    assert hook.traces(limit=2) == all_traces[-2:]
    assert hook.traces(limit=0) == []
    assert hook.traces(since=started) == all_traces
    assert hook.traces(until=started - 1) == []
    cut = agent_traces[0].timestamp
    assert hook.traces(since=cut) == all_traces[3:]  # the agent's run and its model call
    assert hook.traces(until=cut, component="a") == agent_traces[:1]
    with pytest.raises(InvalidValueError):
        hook.traces(limit=-1)

    stats = hook.stats()
    assert stats.captured == stats.retained == 7 and stats.dropped == 0
    assert stats.open_operations == 0 and stats.errors == 0
    assert stats.by_point["after_tool_execution"] == 1


async def test_errors_close_with_a_duration(system: System) -> None:
    hook = DebuggingHook(points=[P.BEFORE_TOOL_EXECUTION, P.TOOL_ERROR])
    hook.install(system.registry)
    with pytest.raises(ToolExecutionError):
        await system.tools.execute("explode", {})
    before, error = hook.traces()
    assert error.point == "tool_error" and error.correlation_id == before.correlation_id
    assert error.duration_ms is not None and error.duration_ms >= 0
    assert error.data is not None and error.data["error_type"] == "ToolExecutionError"


async def test_stack_capture_off_and_on(system: System) -> None:
    off = DebuggingHook(points=[P.BEFORE_TOOL_EXECUTION])
    off.install(system.registry)
    await system.tools.execute("echo", {"text": "a"})
    assert off.traces()[0].stack is None
    off.uninstall(system.registry)

    on = DebuggingHook(DebuggingConfig(capture_stack=True, stack_depth=30),
                       points=[P.BEFORE_TOOL_EXECUTION])
    on.install(system.registry)
    await system.tools.execute("echo", {"text": "b"})
    stack = on.traces()[0].stack
    assert stack is not None and 0 < len(stack) <= 30
    assert all(" in " in frame and ":" in frame for frame in stack)
    assert any(frame.endswith(" in test_stack_capture_off_and_on") for frame in stack)
    assert any("runtime" in frame for frame in stack)
    hooks_dir = os.path.join("llmspell", "hooks") + os.sep
    asyncio_dir = os.sep + "asyncio" + os.sep
    assert not any(hooks_dir in frame or asyncio_dir in frame for frame in stack)
    assert not any(os.path.join("builtin", "debugging.py") in frame for frame in stack)
    # Innermost last: the runtime's dispatch, right under the hook engine.
    assert "runtime" in stack[-1]
    on.uninstall(system.registry)

    shallow = DebuggingHook(DebuggingConfig(capture_stack=True, stack_depth=2),
                            points=[P.BEFORE_TOOL_EXECUTION])
    shallow.install(system.registry)
    await system.tools.execute("echo", {"text": "c"})
    short = shallow.traces()[0].stack
    assert short is not None and short == stack[-2:]


async def test_bound_and_clear(system: System) -> None:
    hook = DebuggingHook(DebuggingConfig(max_traces=5))
    hook.install(system.registry)
    for i in range(4):
        await system.tools.execute("echo", {"text": str(i)})
    assert len(hook) == 5
    stats = hook.stats()
    assert (stats.captured, stats.retained, stats.dropped) == (12, 5, 7)
    kept = hook.traces()
    assert [t.seq for t in kept] == [8, 9, 10, 11, 12]
    assert kept[-1].data is not None and kept[-1].data["params"] == {"text": "3"}
    hook.clear()
    assert hook.traces() == [] and hook.stats().retained == 0
    assert hook.stats().captured == 12


def test_open_operations_are_bounded() -> None:
    hook = DebuggingHook(DebuggingConfig(max_open=3, capture_data=False))
    tool_id = ComponentId(type=ComponentType.TOOL, name="t")
    contexts = [HookContext(point=P.BEFORE_TOOL_EXECUTION, component=tool_id)
                for _ in range(5)]
    for ctx in contexts:
        assert hook.execute(ctx) is None
    assert hook.stats().open_operations == 3
    # The two oldest were forgotten: their after points get no duration.
    for ctx in contexts:
        hook.execute(HookContext(point=P.AFTER_TOOL_EXECUTION, component=tool_id,
                                 correlation_id=ctx.correlation_id))
    durations = [t.duration_ms for t in hook.traces(point=P.AFTER_TOOL_EXECUTION)]
    assert [d is not None for d in durations] == [False, False, True, True, True]
    assert hook.stats().open_operations == 0
    assert all(t.data is None for t in hook.traces())


async def test_masking_in_traces_is_configurable(system: System) -> None:
    hook = DebuggingHook(DebuggingConfig(sensitive_keys=("query",), max_chars=10),
                         points=[P.BEFORE_TOOL_EXECUTION])
    hook.install(system.registry)
    await system.tools.execute("fetch", {"query": "secret-q", "api_key": "a" * 50})
    (trace,) = hook.traces()
    assert trace.data is not None
    assert trace.data["params"] == {"query": "***", "api_key": "a" * 10 + "...(+40)"}


async def test_a_broken_capture_never_breaks_the_call(system: System) -> None:
    class Broken(Masker):
        __slots__ = ()

        def mask(self, value: Any, depth: int = 0) -> Any:
            raise RuntimeError("mask failed")

    hook = DebuggingHook(masker=Broken(), points=[P.BEFORE_TOOL_EXECUTION])
    hook.install(system.registry)
    assert await system.tools.execute("echo", {"text": "ok"}) == "ok"
    # Data is masked when read: a masker that fails withholds the data, never shows it raw.
    (trace,) = hook.traces()
    assert trace.data is None and hook.stats().errors == 1


@pytest.mark.parametrize(
    "fields",
    [{"max_traces": 0}, {"stack_depth": 0}, {"max_chars": -5}, {"max_open": True},
     {"sensitive_keys": "token"}, {"keep_keys": (1,)}],
)
def test_debugging_config_rejects_bad_values(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidValueError):
        DebuggingConfig(**fields)
