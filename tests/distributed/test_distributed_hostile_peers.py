"""A hostile or buggy peer on the same NATS server as the distributed layer.

The peer holds a connection to the broker (a compromised worker, a shared broker) but not
the shared key. It can read what is published where it may subscribe and publish anything
anywhere it may publish; these tests check that it cannot:

* stop another process's subscription with one event it cannot decode, nor break the
  listing of a durable subscription's dead letters;
* get a signing hook server to answer *another caller's* request for it: junk carrying a
  caller's nonce (read on the hook's subject) and reply subject was refused with a signed
  refusal bound to that nonce, which the caller trusted as the answer to its own call
  (under ``fail_open``, going ahead past a guard that would have said no).
"""

from __future__ import annotations

from typing import Any

import msgspec

from llmspell.distributed import HookServer
from llmspell.distributed.connection import config_of
from llmspell.distributed.context import DistributedHookContext
from llmspell.distributed.signing import SIG_NONCE, SharedKey, Signer
from llmspell.distributed.wire import REPLY_TO, HookCall, decode_reply, encode, hook_subject
from llmspell.events import UniversalEvent
from llmspell.events.distributed import DistributedBus, make_bus
from llmspell.events.event import encode_event
from llmspell.hooks import Cancel, HookContext, hook
from tests.distributed.support import KEY, hook_url, raw, tool_ctx
from tests.events.nats_support import bus_url, eventually, namespace, nats_url

__all__ = ["namespace", "nats_url", "raw"]  # fixtures




def _not_utf8(event_type: str) -> bytes:
    """An event of ``event_type`` whose data holds a string that is not UTF-8."""
    good = encode_event(UniversalEvent(event_type=event_type, data={"x": "marker"}))
    return good.replace(b'"marker"', b'"\xff\xfe"')


# -- events -----------------------------------------------------------------------------------
async def test_an_event_that_is_not_utf8_does_not_stop_a_subscription(
    nats_url: str, namespace: str, raw: Any
) -> None:
    url = bus_url(nats_url, namespace)
    bus = make_bus(url)
    other = make_bus(url)
    assert isinstance(bus, DistributedBus) and isinstance(other, DistributedBus)
    await bus.connect()
    await other.connect()
    try:
        seen: list[object] = []
        bus.subscribe("probe.*", lambda event: seen.append(event.data))
        await bus.ready()
        js = raw.jetstream()
        prefix = config_of(url).prefix
        await js.publish(f"{prefix}.ev.probe.bad", _not_utf8("probe.bad"))
        await other.publish_async("probe.good", {"n": 1}, durable=True)
        await eventually(lambda: seen == [{"n": 1}], what="the event after the bad one")
        assert bus.distributed_stats().transport.undecodable == 1
    finally:
        await other.close()
        await bus.close()


async def test_dead_letters_list_what_a_peer_put_there(
    nats_url: str, namespace: str, raw: Any
) -> None:
    url = bus_url(nats_url, namespace)
    bus = make_bus(url)
    assert isinstance(bus, DistributedBus)
    await bus.connect()
    try:
        handled: list[object] = []
        bus.subscribe("order.*", lambda event: handled.append(event.data), durable="billing")
        await bus.ready()
        prefix = config_of(url).prefix
        js = raw.jetstream()
        # An undecodable event: the durable subscription parks it, and goes on.
        await js.publish(f"{prefix}.ev.order.bad", _not_utf8("order.bad"))
        # A dead letter written by hand, its headers anything but numbers.
        await js.publish(f"{prefix}.dlq.billing", _not_utf8("order.forged"), headers={
            "Llmspell-Dead-Deliveries": "many", "Llmspell-Dead-Sequence": "-1",
            "Llmspell-Dead-At": "nan"})
        await bus.publish_async("order.placed", {"amount": 1}, durable=True)
        await eventually(lambda: handled == [{"amount": 1}], what="the good order")
        letters = await bus.dead_letters("billing")
        assert len(letters) == 2
        assert all(letter.event is None for letter in letters)
        forged = [letter for letter in letters if letter.reason == ""]
        assert [(f.deliveries, f.stream_sequence, f.parked_at) for f in forged] == [(0, 0, 0.0)]
    finally:
        await bus.close()


# -- remote hooks ------------------------------------------------------------------------------
def _call_bytes(ctx: HookContext, name: str = "guard") -> bytes:
    return encode(HookCall(hook=name, point=str(ctx.point),
                           context=msgspec.Raw(ctx.to_json())))


async def _request(nc: Any, subject: str, payload: bytes, headers: dict[str, str]
                   ) -> tuple[str | None, str | None]:
    """(the reply's error code, its Llmspell-Reply-To)."""
    msg = await nc.request(subject, payload, timeout=10, headers=headers)
    return decode_reply(msg.data).error, (msg.headers or {}).get(REPLY_TO)


@hook("BeforeToolExecution", name="guard")
def _deny(ctx: HookContext) -> Cancel:
    return Cancel("policy: no")


async def test_a_signed_server_names_only_nonces_it_verified(nats_url: str, raw: Any) -> None:
    url = hook_url(nats_url)
    subject = hook_subject(config_of(url).prefix, "guard")
    mine = Signer(SharedKey(KEY))
    payload = _call_bytes(tool_ctx(command="ls"))
    context = DistributedHookContext.root(run_id="r", timeout=60).child("x").to_headers()
    async with HookServer([_deny], url=url, key=KEY, max_payload=4096):
        stolen = "ab" * 16  # another caller's nonce, as read on the hook's subject
        for headers, body, code in [
            ({**context, SIG_NONCE: stolen}, payload, "unsigned"),
            ({**Signer(SharedKey("x" * 32)).sign(context, payload), SIG_NONCE: stolen},
             payload, "bad_signature"),
            ({**context, SIG_NONCE: stolen}, b"x" * 8192, "too_large"),
        ]:
            assert await _request(raw, subject, body, headers) == (code, "-")
        signed = mine.sign(context, payload)
        nonce = signed[SIG_NONCE]
        assert await _request(raw, subject, payload, signed) == (None, nonce)
        # A copy of a call answers nothing: its refusal must not be bound to the call.
        assert await _request(raw, subject, payload, signed) == ("replayed", "-")
        stale = mine.sign(context, payload, now=1.0)
        assert await _request(raw, subject, payload, stale) == ("stale", stale[SIG_NONCE])
