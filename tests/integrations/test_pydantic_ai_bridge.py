"""The shared adapter helpers (llmspell.integrations._bridge): version ranges, result
checks, the runtime's data shapes, events."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.errors import (
    ConfigurationError,
    InvalidValueError,
    UnsupportedFrameworkVersionError,
    UnsupportedHookResultError,
)
from llmspell.hooks import HookPoint
from llmspell.hooks.context import ComponentType
from llmspell.hooks.result import Cache, Fork, ForkOperation, Redirect, Replace
from llmspell.integrations import _bridge
from llmspell.runtime.system import System


@pytest.mark.parametrize(("version", "spec", "ok"), [
    ("2.68.0", ">=2.60,<3", True),
    ("2.60", ">=2.60,<3", True),
    ("2.59.9", ">=2.60,<3", False),
    ("3.0.0", ">=2.60,<3", False),
    ("3.0.0rc1", ">=2.60,<3", False),
    ("2.60.0rc1", ">=2.60,<3", False),
    ("0.24.3", ">=0.24,<0.25", True),
    ("0.25.0", ">=0.24,<0.25", False),
    ("1.5.0.post1", ">=1.2, <2", True),
    ("1.2", "==1.2.0", True),
    ("1.2", "!=1.2.0", False),
])
def test_version_in_range(version: str, spec: str, ok: bool) -> None:
    assert _bridge.version_in_range(version, spec) is ok


@pytest.mark.parametrize("spec", ["", "~=2", ">=x"])
def test_a_range_it_cannot_read_is_a_typed_error(spec: str) -> None:
    with pytest.raises(InvalidValueError):
        _bridge.version_in_range("2.0", spec)


def test_check_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_bridge, "installed_version", lambda dist: "9.1")
    with pytest.raises(UnsupportedFrameworkVersionError) as info:
        _bridge.check_version("pydantic-ai", "pydantic-ai-slim", ">=2.60,<3")
    assert info.value.installed == "9.1"
    assert ">=2.60,<3" in str(info.value) and "pydantic-ai-slim" in str(info.value)
    monkeypatch.setattr(_bridge, "installed_version", lambda dist: None)
    with pytest.raises(ConfigurationError, match="not installed") as missing:
        _bridge.check_version("pydantic-ai", "pydantic-ai-slim", ">=2.60,<3")
    assert "llmspell[pydantic-ai]" in (missing.value.hint or "")
    monkeypatch.setattr(_bridge, "installed_version", lambda dist: "2.61.1")
    assert _bridge.check_version("pydantic-ai", "pydantic-ai-slim", ">=2.60,<3") == "2.61.1"


def test_require_names_the_extra() -> None:
    with pytest.raises(ConfigurationError) as info:
        _bridge.require("llmspell_no_such_framework", "pydantic-ai", "the adapter")
    assert info.value.hint == "pip install 'llmspell[pydantic-ai]'"
    assert _bridge.require("json", "x", "y").__name__ == "json"


async def test_dispatch_refuses_a_result_the_seam_cannot_honour() -> None:
    async with System() as system:
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                                 lambda ctx: Redirect("other"), name="redirector")
        tool = _bridge.component(ComponentType.TOOL, "t")
        with pytest.raises(UnsupportedHookResultError) as info:
            await _bridge.dispatch(system, "fw", HookPoint.BEFORE_TOOL_EXECUTION, tool,
                                   {"tool": "t", "params": {}}, honoured={"cancel"})
        assert (info.value.result, info.value.hook) == ("redirect", "redirector")
        outcome, ctx = await _bridge.dispatch(
            system, "fw", HookPoint.BEFORE_TOOL_EXECUTION, tool, {"params": {}},
            honoured={"redirect"})
        assert isinstance(outcome.result, Redirect) and ctx is not None
        # a point without hooks: nothing runs
        outcome, ctx = await _bridge.dispatch(system, "fw", HookPoint.TOOL_ERROR, tool, {},
                                              honoured=())
        assert ctx is None and outcome.kind == "continue"


@pytest.mark.parametrize(("result", "kind"), [
    (Fork((ForkOperation(type="tool", target="x"),)), "fork"),
    (Cache("k"), "cache"),
    (Replace(1), "replace"),
])
async def test_forks_and_caches_are_checked_too(result: Any, kind: str) -> None:
    async with System() as system:
        system.registry.register(HookPoint.AFTER_TOOL_EXECUTION, lambda ctx: result,
                                 name="h")
        with pytest.raises(UnsupportedHookResultError, match=kind):
            await _bridge.dispatch(system, "fw", HookPoint.AFTER_TOOL_EXECUTION,
                                   _bridge.component(ComponentType.TOOL, "t"), {},
                                   honoured={"modified"})


def test_json_value_converts_what_frameworks_hand_over() -> None:
    from dataclasses import dataclass

    from pydantic import BaseModel

    class Point(BaseModel):
        x: int

    @dataclass
    class Pair:
        a: Point
        b: bytes

    assert _bridge.json_value({"p": Point(x=1), "t": (1, 2)}) == {"p": {"x": 1}, "t": [1, 2]}
    assert _bridge.json_value(Pair(Point(x=2), b"abc")) == {"a": {"x": 2}, "b": "<3 bytes>"}
    assert _bridge.json_value(object).startswith("<class")


def test_model_error_data() -> None:
    class BoomError(Exception):
        status_code = 503

    data = _bridge.model_error_data(BoomError("down"))
    assert data == {"error": "down", "error_type": "BoomError", "status": 503, "retryable": True,
                    "retry_after": None}
    assert _bridge.model_error_data(ValueError("x"))["retryable"] is False


async def test_event_sink_masks_and_records(tmp_path: Any) -> None:
    from llmspell.runtime.config import SystemConfig

    async with System(SystemConfig(store="memory")) as system:
        seen: list[Any] = []
        system.bus.subscribe("model.**", seen.append)
        sink = _bridge.EventSink(system, "llmspell.integrations.test")
        assert sink.mask({"api_key": "abc", "q": 1}) == {"api_key": "***", "q": 1}
        request = _bridge.request_data(
            [_bridge.message_dict("user", "hi"),
             _bridge.message_dict("assistant", None, tool_calls=[
                 _bridge.tool_call_dict("c1", "t", {"a": 1})]),
             _bridge.message_dict("tool", "1", tool_call_id="c1")],
            [{"name": "t", "description": "", "parameters": {}}])
        response = _bridge.response_data(_bridge.message_dict("assistant", "done"),
                                         finish_reason="stop", model="m",
                                         usage=_bridge.usage_dict(3, 4), cost_usd=None,
                                         latency_ms=1.0)
        sink.model_completed("fake", model="m", caller=None, turn=1, request=request,
                             response=response, correlation_id="c")
        await system.bus.drain()
        assert len(seen) == 1
        event = seen[0]
        assert event.event_type == "model.fake.completed"
        assert event.data["request"]["total_messages"] == 3
        assert [m["role"] for m in event.data["request"]["messages"]] == ["tool"]
        assert event.data["usage"]["total_tokens"] == 7
        assert event.metadata.correlation_id == "c"
