"""DistributedHookContext: building, lineage, headers, checks, activation."""

from __future__ import annotations

import asyncio
import os
import time

import msgspec
import pytest

from llmspell.core.propagation import current_header_source
from llmspell.core.run_scope import current_run_id, enter_run_id, leave_run_id
from llmspell.distributed import DistributedHookContext, SharedKey, Signer, current_context
from llmspell.distributed.context import HEADERS, MAX_HOP_LIMIT
from llmspell.errors import (
    DeadlineExceededError,
    DistributedContextError,
    HopLimitExceededError,
    InvalidValueError,
    SignatureError,
)
from llmspell.events import UniversalEvent
from llmspell.events.transport import OutgoingEvent, ReceivedHeaders
from tests.distributed.support import KEY, OTHER_KEY, tool_ctx


def test_a_root_starts_a_trace_in_this_process_with_the_current_run() -> None:
    token = enter_run_id("run-1")
    try:
        root = DistributedHookContext.root(component="checkout")
    finally:
        leave_run_id(token)
    assert root.run_id == "run-1"
    assert len(root.trace_id) == 32 and len(root.span_id) == 16
    assert root.hop == 0 and root.parent_ids == () and root.deadline is None
    assert root.origin.process == os.getpid() and root.origin.component == "checkout"
    assert root.traceparent == f"00-{root.trace_id}-{root.span_id}-01"
    assert DistributedHookContext.root().trace_id != root.trace_id


def test_child_keeps_the_lineage_and_tightens_the_deadline() -> None:
    root = DistributedHookContext.root(correlation_id="c-1", run_id="r-1", timeout=60)
    one = root.child("hook:a", timeout=5)
    two = one.child("hook:b")
    assert (one.trace_id, one.correlation_id, one.run_id) == (root.trace_id, "c-1", "r-1")
    assert two.trace_id == root.trace_id and two.correlation_id == "c-1"
    assert (one.hop, one.parent_ids) == (1, (root.span_id,))
    assert (two.hop, two.parent_ids) == (2, (root.span_id, one.span_id))
    assert len({root.span_id, one.span_id, two.span_id}) == 3
    assert root.deadline is not None and one.deadline is not None
    assert one.deadline < root.deadline and two.deadline == one.deadline
    assert one.origin.component == "hook:a"


def test_child_refuses_past_the_hop_limit_and_the_deadline() -> None:
    ctx = DistributedHookContext.root(hop_limit=2).child().child()
    with pytest.raises(HopLimitExceededError) as caught:
        ctx.child("hook:c")
    assert caught.value.reason == "hop_limit"
    assert "hop 3, over the limit of 2" in caught.value.message
    late = DistributedHookContext.root(deadline=time.time() - 1)
    with pytest.raises(DeadlineExceededError):
        late.child()
    with pytest.raises(DeadlineExceededError):
        late.check()
    assert late.remaining() is not None and late.remaining() < 0  # type: ignore[operator]


def test_check_applies_the_tighter_of_the_context_and_receiver_limits() -> None:
    ctx = msgspec.structs.replace(DistributedHookContext.root(), hop=5, hop_limit=8)
    ctx.check()
    ctx.check(hop_limit=5)
    with pytest.raises(HopLimitExceededError, match="over the limit of 4"):
        ctx.check(hop_limit=4)


def test_headers_round_trip_exactly() -> None:
    root = DistributedHookContext.root(correlation_id="order 42/é,x", run_id="run:7",
                                       component="tool:shell;v2", timeout=30)
    ctx = msgspec.structs.replace(root.child("hook:guard"), tracestate="vendor=abc")
    headers = ctx.to_headers()
    assert set(headers) <= set(HEADERS)
    assert all(v.isascii() and "\n" not in v and "," not in v
               for k, v in headers.items() if k != "Llmspell-Ctx-Parents")
    back = DistributedHookContext.from_headers(headers)
    assert back == ctx
    lower = DistributedHookContext.from_headers({k.upper(): v for k, v in headers.items()})
    assert lower == ctx


@pytest.mark.parametrize(("change", "complaint"), [
    ({"traceparent": None}, "no traceparent header"),
    ({"traceparent": "00-abc-def-01"}, "trace id"),
    ({"traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"}, "not all zero"),
    ({"traceparent": "ff-" + "1" * 32 + "-" + "1" * 16 + "-01"}, "version-trace"),
    ({"Llmspell-Ctx-Hop": "two"}, "is not an integer"),
    ({"Llmspell-Ctx-Correlation": None}, "no Llmspell-Ctx-Correlation header"),
    ({"Llmspell-Ctx-Hop-Limit": "1000"}, "hop_limit must be"),
    ({"Llmspell-Ctx-Parents": "xyz"}, "parent_ids"),
    ({"Llmspell-Ctx-Deadline": "soon"}, "could not convert"),
])
def test_malformed_headers_are_refused_naming_the_header(change: dict[str, str | None],
                                                         complaint: str) -> None:
    headers = DistributedHookContext.root().child().to_headers()
    for name, value in change.items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    with pytest.raises(DistributedContextError) as caught:
        DistributedHookContext.from_headers(headers)
    assert caught.value.reason == "malformed"
    assert complaint in caught.value.message


def test_a_later_traceparent_version_with_more_fields_is_read() -> None:
    ctx = DistributedHookContext.root()
    headers = ctx.to_headers()
    headers["traceparent"] = f"01-{ctx.trace_id}-{ctx.span_id}-00-extra"
    back = DistributedHookContext.from_headers(headers)
    assert back.trace_id == ctx.trace_id and back.sampled is False


def test_bad_fields_are_refused_when_built() -> None:
    root = DistributedHookContext.root()
    for field, value in [("trace_id", "xyz"), ("span_id", "0" * 16), ("hop_limit", 0),
                         ("hop_limit", MAX_HOP_LIMIT + 1), ("hop", -1),
                         ("deadline", float("nan")), ("correlation_id", "")]:
        with pytest.raises(InvalidValueError):
            msgspec.structs.replace(root, **{field: value})
    with pytest.raises(InvalidValueError, match="timeout"):
        DistributedHookContext.root(timeout=0)


def test_activate_makes_the_context_current_with_its_run_and_headers() -> None:
    root = DistributedHookContext.root(run_id="run-9")
    assert current_context() is None and current_header_source() is None
    with root.activate() as active:
        assert active is root and current_context() is root
        assert DistributedHookContext.current() is root
        assert current_run_id() == "run-9"
        event = UniversalEvent.create("order.placed", {"n": 1})
        out = OutgoingEvent.of(event)
        assert out.headers == root.to_headers()
        # A hook call continues the current context, whatever the hook's context says.
        assert DistributedHookContext.for_hook(tool_ctx()) is root
    assert current_context() is None and current_run_id() is None
    assert OutgoingEvent.of(UniversalEvent.create("order.placed")).headers is None


def test_for_hook_without_a_current_context_starts_one_from_the_hook_context() -> None:
    ctx = tool_ctx()
    root = DistributedHookContext.for_hook(ctx)
    assert root.correlation_id == ctx.correlation_id
    assert root.origin.component == "tool:shell" and root.hop == 0


async def test_tasks_started_in_a_context_see_it_and_others_do_not() -> None:
    root = DistributedHookContext.root()
    with root.activate():
        inside = asyncio.create_task(asyncio.sleep(0, current_context()))
    outside = asyncio.create_task(asyncio.sleep(0, current_context()))
    assert await inside is root and await outside is None


def test_events_in_a_signed_context_carry_a_signature_over_headers_and_payload() -> None:
    root = DistributedHookContext.root()
    signer = Signer(SharedKey(KEY))
    with root.activate(signer=signer):
        out = OutgoingEvent.of(UniversalEvent.create("order.placed", {"n": 1}))
    assert out.headers is not None and "Llmspell-Signature" in out.headers
    signer.verify(out.headers, out.payload, fresh=False)
    with pytest.raises(SignatureError):
        signer.verify(out.headers, out.payload + b" ", fresh=False)


class _Transport:
    """What from_event reads: the headers a transport kept for a received event."""

    def __init__(self, event_id: str, received: ReceivedHeaders) -> None:
        self.kept = {event_id: received}

    def received_headers(self, event_id: str) -> ReceivedHeaders | None:
        return self.kept.get(event_id)


class _Bus:
    def __init__(self, transport: _Transport) -> None:
        self.transport = transport


def test_from_event_reads_and_verifies_the_context_an_event_arrived_with() -> None:
    import hashlib

    root = DistributedHookContext.root(correlation_id="c-5")
    signer = Signer(SharedKey(KEY))
    event = UniversalEvent.create("order.placed", {"n": 1})
    with root.activate(signer=signer):
        out = OutgoingEvent.of(event)
    assert out.headers is not None
    received = ReceivedHeaders(dict(out.headers), hashlib.sha256(out.payload).digest())
    bus = _Bus(_Transport(event.id, received))
    assert DistributedHookContext.from_event(event, bus, signer=signer) == root
    assert DistributedHookContext.from_event(event, bus.transport) == root
    with pytest.raises(SignatureError) as caught:
        DistributedHookContext.from_event(event, bus, signer=Signer(SharedKey(OTHER_KEY)))
    assert caught.value.reason == "bad_signature"
    other = UniversalEvent.create("order.placed")
    assert DistributedHookContext.from_event(other, bus) is None
    assert DistributedHookContext.from_event(event, object()) is None


def test_a_root_joins_the_current_opentelemetry_trace() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("agent run") as span:
        root = DistributedHookContext.root()
    assert root.trace_id == f"{span.get_span_context().trace_id:032x}"
    assert root.sampled is True
