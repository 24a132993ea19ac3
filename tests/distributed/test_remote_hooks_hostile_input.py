"""More hostile input for remote hooks: replays disguised by header whitespace, and hooks
whose answer the caller could not read (too large for NATS, metadata or data of the wrong
type). Each is answered with a typed error at once, never accepted, never left to time out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.protocol import command as nats_command

from llmspell.distributed import DistributedHookContext, HookClient, HookServer, SharedKey, Signer
from llmspell.distributed.connection import config_of
from llmspell.distributed.signing import SIG_NONCE
from llmspell.distributed.wire import HookCall, HookReply, decode_reply, encode, hook_subject
from llmspell.errors import RemoteHookFailedError, SignatureError
from llmspell.hooks import Cancel, Continue, HookContext, HookResult, Replace, hook
from tests.distributed.support import KEY, hook_url, raw, tool_ctx
from tests.events.nats_support import nats_url

__all__ = ["nats_url", "raw"]  # fixtures


@hook("BeforeToolExecution", name="guard")
def guard(ctx: HookContext) -> HookResult | None:
    if "rm " in str(ctx.data.get("command", "")):
        return Cancel("no rm")
    return None


@hook("BeforeToolExecution", name="huge")
def huge(ctx: HookContext) -> HookResult:
    """Answers more than NATS lets a server send (2 MB; NATS's default bound is 1 MB)."""
    return Replace("x" * 2_000_000)


@hook("BeforeToolExecution", name="bad_metadata")
def bad_metadata(ctx: HookContext) -> None:
    ctx.metadata["count"] = 5  # type: ignore[assignment]


@hook("BeforeToolExecution", name="bad_data")
def bad_data(ctx: HookContext) -> None:
    ctx.data = [1, 2]  # type: ignore[assignment]


HOOKS = [guard, huge, bad_metadata, bad_data]


@pytest.fixture
async def signed(nats_url: str) -> AsyncIterator[tuple[str, HookServer]]:
    """A server of the hooks above with the shared key ``KEY``."""
    url = hook_url(nats_url)
    server = HookServer(HOOKS, url=url, key=KEY)
    await server.start()
    try:
        yield url, server
    finally:
        await server.stop()


async def _ask_raw(nc: Any, subject: str, headers: dict[str, str], payload: bytes) -> HookReply:
    """A request whose headers are sent byte for byte (nats-py would strip their values)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    block = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    await nc._send_command(nats_command.hpub_cmd(subject, inbox, block + b"\r\n", payload))
    await nc.flush()
    msg = await sub.next_msg(timeout=10)
    return decode_reply(msg.data)


# Characters str.strip() removes (so the signature still matches) but NATS keeps.
DISGUISES = {"unit separator": "\x1f", "file separator": "\x1c", "no-break space": "\u00a0",
             "next line": "\u0085"}


@pytest.mark.parametrize("name", list(DISGUISES))
def test_a_nonce_with_whitespace_around_it_is_still_a_replay(name: str) -> None:
    signer = Signer(SharedKey(KEY))
    headers = signer.sign({"x": "1"}, b"{}")
    signer.verify(headers, b"{}")
    for changed in (headers[SIG_NONCE] + DISGUISES[name], DISGUISES[name] + headers[SIG_NONCE]):
        with pytest.raises(SignatureError) as replayed:
            signer.verify({**headers, SIG_NONCE: changed}, b"{}")
        assert replayed.value.reason == "replayed"


async def test_a_replayed_call_with_a_disguised_nonce_is_refused(
    signed: tuple[str, HookServer], raw: Any
) -> None:
    url, server = signed
    subject = hook_subject(config_of(url).prefix, "guard")
    ctx = tool_ctx(command="ls")
    call = encode(HookCall(hook="guard", point=str(ctx.point), context=msgspec.Raw(ctx.to_json())))
    context = DistributedHookContext.root(timeout=60).child("x").to_headers()
    once = Signer(SharedKey(KEY)).sign(context, call)
    assert (await _ask_raw(raw, subject, once, call)).error is None
    for disguise in DISGUISES.values():
        replay = {**once, SIG_NONCE: once[SIG_NONCE] + disguise}
        assert (await _ask_raw(raw, subject, replay, call)).error == "replayed", repr(disguise)
    assert server.stats().refused == {"replayed": len(DISGUISES)}


@pytest.mark.parametrize(
    ("name", "complaint"),
    [
        ("huge", "over the"),
        ("bad_metadata", "metadata"),
        ("bad_data", "data to a list"),
    ],
)
async def test_an_answer_the_caller_could_not_read_is_a_failure_at_once(
    signed: tuple[str, HookServer], name: str, complaint: str
) -> None:
    url, server = signed
    async with HookClient(url, key=KEY) as client:
        with pytest.raises(RemoteHookFailedError) as failed:
            # A hang guard only: the failure comes back at once, not at the timeout.
            await client.call(name, tool_ctx(command="ls"), timeout=30)
        assert failed.value.error_type == "InvalidHookResultError"
        assert complaint in failed.value.message, failed.value.message
        assert server.stats().failed == {name: 1}
        assert server.stats().served.get(name) is None
        assert await client.call("guard", tool_ctx(command="ls"), timeout=10) == Continue()
