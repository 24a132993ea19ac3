"""Tracing and shared counters under hostile input.

TracingHook: text that hostile data puts on spans (an exception message with a lone
surrogate, megabytes of error text) is cut and made encodable, so one bad span cannot make
the OTLP exporter drop the batch it travels in; secrets stay masked as in events;
``otlp_tracer_provider`` refuses endpoints and headers that would fail every export.
Distributed context headers from another process are refused with a typed error or ignored.
NatsCounters (against the real NATS server): a key too long for a NATS protocol line is
stored under a digest instead of getting the connection closed; keys NATS cannot hold are
``InvalidValueError``; a client the server closed is replaced; bad settings are typed.
"""

from __future__ import annotations

import json
from http.server import HTTPServer
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from llmspell.builtin.counters import counter_key
from llmspell.builtin.nats_counters import NatsCounters
from llmspell.builtin.tracing import TracingConfig, TracingHook, otlp_tracer_provider
from llmspell.distributed.context import DistributedHookContext
from llmspell.errors import (
    ConfigurationError,
    DistributedContextError,
    InvalidValueError,
    ToolExecutionError,
)
from llmspell.hooks.context import ComponentId, HookContext
from llmspell.hooks.points import HookPoint
from llmspell.runtime import System, SystemConfig, tool
from tests.builtin.support import kv_url, receiver
from tests.events.nats_support import nats_url

__all__ = ["kv_url", "receiver", "nats_url"]  # fixtures

SURROGATE = "bad \ud800 input"


@tool()
def ok(a: int) -> int:
    """Returns its argument."""
    return a


@tool()
def hostile(size: int) -> str:
    """Fails with ``size`` characters in its message."""
    raise RuntimeError("x" * size)


@tool()
def login(user: str, password: str) -> str:
    """Pretends to log in."""
    return f"welcome {user}"


def _traced(tracing: TracingConfig | None = None, provider: TracerProvider | None = None,
            ) -> tuple[System, TracingHook, InMemorySpanExporter]:
    system = System(SystemConfig(store="memory"))
    system.tools.register_all([ok, hostile, login])
    exporter = InMemorySpanExporter()
    if provider is None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    hook = TracingHook(tracing, bus=system.bus, tracer_provider=provider)
    hook.install(system.registry)
    return system, hook, exporter


def _texts(span: ReadableSpan) -> list[str]:
    """Every string the span carries: name, status, attributes, event attributes."""
    out = [span.name, span.status.description or ""]
    for attributes in (span.attributes, *(e.attributes for e in span.events)):
        out.extend(v for v in (attributes or {}).values() if isinstance(v, str))
    return out


# -- TracingHook ---------------------------------------------------------------------------
def _hostile_tool_call(hook: TracingHook) -> None:
    """What an adapter dispatches for a framework's tool named with a lone surrogate that
    then fails with one in its message (the bus refuses such text in events, so nothing
    ends the span until the run does, or here, uninstall)."""
    tool_id = ComponentId(type="tool", name="se\ud800arch")
    hook.execute(HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION, component=tool_id,
                             data={"params": {}}))
    hook.execute(HookContext(point=HookPoint.TOOL_ERROR, component=tool_id,
                             data={"error": SURROGATE, "error_type": "Value\udfffError"}))


async def test_a_lone_surrogate_in_a_name_or_an_error_leaves_the_span_encodable() -> None:
    system, hook, exporter = _traced()
    async with system:
        _hostile_tool_call(hook)
        hook.uninstall(system.registry)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    for text in _texts(span):
        text.encode()  # no lone surrogate left anywhere
    assert span.name == "execute_tool se?arch"
    assert "bad ? input" in (span.status.description or "")
    encode_spans([span]).SerializeToString()  # what the OTLP exporter does
    assert hook.stats().errors == 0


async def test_a_hostile_span_does_not_cost_its_batch_the_export(receiver: HTTPServer) -> None:
    provider = otlp_tracer_provider(
        f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces", batch=True)
    system, hook, _ = _traced(provider=provider)
    try:
        async with system:
            assert await system.tools.execute("ok", {"a": 1}) == 1
            _hostile_tool_call(hook)
            hook.uninstall(system.registry)
        assert provider.force_flush(5_000)
        body = b"".join(body for _, _, body in receiver.posts)  # type: ignore[attr-defined]
        assert b"execute_tool ok" in body       # the batch went out: the good span too
        assert b"execute_tool se?arch" in body
    finally:
        provider.shutdown()


async def test_megabytes_of_error_text_are_cut_on_the_span() -> None:
    limit = 1_000
    system, _, exporter = _traced(TracingConfig(max_content_chars=limit))
    async with system:
        with pytest.raises(ToolExecutionError):
            await system.tools.execute("hostile", {"size": 500_000})  # the bus takes 1 MB
    (span,) = exporter.get_finished_spans()
    description = span.status.description or ""
    assert description.startswith("tool 'hostile' failed") and "chars)" in description
    assert all(len(text) <= limit + 40 for text in _texts(span))
    (event,) = [e for e in span.events if e.name == "exception"]
    assert "RuntimeError" in str((event.attributes or {})["exception.stacktrace"])


async def test_captured_tool_arguments_are_masked_as_in_events() -> None:
    secret = "hunter2-" + "q" * 12
    system, _, exporter = _traced(TracingConfig(capture_content=True))
    async with system:
        await system.tools.execute("login", {"user": "ann", "password": secret})
    (span,) = exporter.get_finished_spans()
    arguments = json.loads(str((span.attributes or {})["gen_ai.tool.call.arguments"]))
    assert arguments["user"] == "ann" and arguments["password"] != secret
    assert not any(secret in text for text in _texts(span))


@pytest.mark.parametrize(("endpoint", "headers"), [
    ("localhost:4318/v1/traces", None),
    ("ftp://127.0.0.1/v1/traces", None),
    ("http:///v1/traces", None),
    ("http://127.0.0.1:99999/v1/traces", None),
    ("http://127.0.0.1:4318/v1/traces\r\nX: 1", None),
    ("http://127.0.0.1:4318/v1/traces", {"x-key": "a\r\nInjected: 1"}),
    ("http://127.0.0.1:4318/v1/traces", {"bad name": "v"}),
    ("http://127.0.0.1:4318/v1/traces", {"x-key": 3}),
    ("http://127.0.0.1:4318/v1/traces", [("x-key", "v")]),
])
def test_otlp_settings_that_would_fail_every_export_are_refused(
        endpoint: str, headers: Any) -> None:
    with pytest.raises(InvalidValueError) as error:
        otlp_tracer_provider(endpoint, headers=headers, batch=False)
    assert error.value.hint


@pytest.mark.parametrize("headers", [
    {"traceparent": "00-" + "A" * 32 + "-" + "b" * 16 + "-01"},           # upper case
    {"traceparent": "00-" + "0" * 32 + "-" + "b" * 16 + "-01"},           # all-zero trace
    {"traceparent": "00-" + "a" * 32 + "-" + "0" * 16 + "-01"},           # all-zero parent
    {"traceparent": "00-" + "a" * 31 + "-" + "b" * 16 + "-01"},           # short
    {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01\r\nX: 1"},   # injected line
    {"traceparent": "x" * 100_000},
    {},
])
def test_hostile_traceparent_headers_are_a_typed_error(headers: dict[str, str]) -> None:
    good = DistributedHookContext.root().to_headers()
    good.pop("traceparent")
    with pytest.raises(DistributedContextError):
        DistributedHookContext.from_headers({**good, **headers})


@pytest.mark.parametrize("state", ["k=" + "v" * 10_000, "k=v\r\nX-Forged: 1", "k=\u00e9"])
def test_a_hostile_tracestate_is_ignored_never_sent_on(state: str) -> None:
    headers = {**DistributedHookContext.root().to_headers(), "tracestate": state}
    context = DistributedHookContext.from_headers(headers)
    assert context.tracestate is None
    assert "tracestate" not in context.child().to_headers()


# -- NatsCounters ---------------------------------------------------------------------------
def _add(value: Any) -> tuple[int, int]:
    new = (value or 0) + 1
    return new, new


def test_a_key_longer_than_a_nats_protocol_line_keeps_the_connection(kv_url: str) -> None:
    counters = NatsCounters(kv_url)
    try:
        assert counters.update_sync("ok", _add) == 1
        # A user id of 5000 characters: the old subject broke the server's 4 KB line limit
        # and the server closed the connection for good.
        long_a = counter_key("rl", "key", "u" * 5000 + "a")
        long_b = counter_key("rl", "key", "u" * 5000 + "b")
        assert counters.update_sync(long_a, _add) == 1
        assert counters.update_sync(long_a, _add) == 2
        assert counters.update_sync(long_b, _add) == 1   # still one counter per key
        assert counters.read_sync(long_a) == 2
        assert counters.update_sync("ok", _add) == 2
        assert counters.stats().connected and counters.stats().failures == 0
    finally:
        counters.close()


@pytest.mark.parametrize("key", ["a b", "a.*", "a.>", "", ".a", "a.", "a..b", "caf\u00e9"])
def test_keys_nats_cannot_hold_are_invalid_value_errors(key: str) -> None:
    counters = NatsCounters("nats://127.0.0.1:1?connect_timeout=1")  # never reached
    try:
        with pytest.raises(InvalidValueError, match="invalid counter key") as error:
            counters.update_sync(key, _add)
        assert error.value.hint and "counter_key" in error.value.hint
        with pytest.raises(InvalidValueError):
            counters.read_sync(key)
    finally:
        counters.close()


def test_a_client_the_server_closed_is_replaced(kv_url: str) -> None:
    counters = NatsCounters(kv_url)
    try:
        assert counters.update_sync("k", _add) == 1
        # What a protocol error from the server does: the client closes for good.
        client = counters._nc
        assert client is not None
        counters._submit(client.close()).result(5)
        assert not counters.stats().connected
        assert counters.update_sync("k", _add) == 2
        assert counters.stats().connected and counters.stats().connects == 2
    finally:
        counters.close()


@pytest.mark.parametrize("query", ["timeout=inf", "timeout=nan", "timeout=1e308",
                                   "bucket=" + "b" * 65, "bucket=caf%C3%A9"])
def test_counter_settings_out_of_bounds_are_configuration_errors(query: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        NatsCounters(f"nats://127.0.0.1:1?{query}")
    assert error.value.hint
