"""A signing caller ignores replies it cannot trust and waits for the real answer.

A peer on the same NATS server without the key sees every call on the hook's subject (and
so each call's reply subject) and may publish on it. Before, a signing client took the
first message on its reply subject as *the* reply: junk sent there ahead of the real
server's answer failed the call, and the hook's error policy decided (under ``fail_open``,
past a guard that would have said no). Now such a reply is counted and ignored, and the
call takes the server's signed answer. Against the real NATS server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from nats.protocol import command as nats_command

from llmspell.distributed import HookClient, HookServer, SharedKey, Signer
from llmspell.distributed.connection import config_of
from llmspell.distributed.signing import SIG_NONCE
from llmspell.distributed.wire import REPLY_TO, HookReply, encode, hook_subject
from llmspell.errors import RemoteHookReplyError, RemoteHookUnavailableError
from llmspell.hooks import Cancel, Continue, HookContext, HookExecutor, HookRegistry, hook
from tests.distributed.support import KEY, OTHER_KEY, hook_url, raw, tool_ctx
from tests.events.nats_support import nats_url

__all__ = ["nats_url", "raw"]  # fixtures

CONTINUE = encode(HookReply(result=msgspec.Raw(b'{"type":"continue"}'), server="peer"))


class Peer:
    """The hostile peer: on each call it reads on the hook's subject, it sends ``junk`` to
    the call's reply subject; only once NATS has delivered the junk (the peer reads its
    own copy on ``_INBOX.>``) is the real hook let answer, so the junk arrives first."""

    def __init__(self, nc: Any, junk: Callable[[Peer, Any], Awaitable[bool]]) -> None:
        self.nc = nc
        self.junk = junk
        self.sent: set[int] = set()
        self.changed = asyncio.Condition()
        self.seen_replies: list[Any] = []  # real servers' replies read on `_INBOX.>`
        self._delivered: dict[str, asyncio.Event] = {}
        self._inboxes: set[str] = set()  # the reply subjects of the calls seen

    async def start(self, subject: str) -> None:
        await self.nc.subscribe(subject, cb=self._on_call)
        await self.nc.subscribe("_INBOX.>", cb=self._on_reply)
        await self.nc.flush()

    async def _on_reply(self, msg: Any) -> None:
        delivered = self._delivered.pop(msg.subject, None)
        if delivered is not None:
            delivered.set()  # our junk, as NATS delivered it (to the caller too)
        elif msg.subject in self._inboxes and msg.headers and \
                msg.headers.get(REPLY_TO, "-") != "-":
            self.seen_replies.append(msg)  # the real answer to a call of this test

    async def _on_call(self, msg: Any) -> None:
        self._inboxes.add(msg.reply)
        delivered = self._delivered[msg.reply] = asyncio.Event()
        if await self.junk(self, msg):
            await self.nc.flush()
            await delivered.wait()
        else:
            self._delivered.pop(msg.reply, None)
        n = msgspec.json.decode(msg.data)["context"]["data"]["n"]
        async with self.changed:
            self.sent.add(n)
            self.changed.notify_all()

    async def junk_sent(self, n: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: n in self.sent)


PEER: list[Peer] = []  # the peer of the running test (the hook below waits on it)


@hook("BeforeToolExecution", name="guard")
async def guard(ctx: HookContext) -> Cancel | None:
    await PEER[0].junk_sent(int(ctx.data["n"]))
    return Cancel("no rm") if "rm " in str(ctx.data.get("command", "")) else None


async def _publish(peer: Peer, msg: Any, payload: bytes, headers: dict[str, str] | None
                   ) -> bool:
    await peer.nc.publish(msg.reply, payload, headers=headers)
    return True


async def _garbage(peer: Peer, msg: Any) -> bool:
    return await _publish(peer, msg, b"\xff junk", None)


async def _unsigned_continue(peer: Peer, msg: Any) -> bool:
    return await _publish(peer, msg, CONTINUE, None)


async def _continue_with_another_key(peer: Peer, msg: Any) -> bool:
    signer = Signer(SharedKey(OTHER_KEY))
    return await _publish(peer, msg, CONTINUE, signer.sign({REPLY_TO: msg.headers[SIG_NONCE]},
                                                    CONTINUE))


async def _no_responders_status(peer: Peer, msg: Any) -> bool:
    """What the NATS server sends when nothing subscribes (a peer can send it too)."""
    await peer.nc._send_command(nats_command.hpub_cmd(msg.reply, "", b"NATS/1.0 503\r\n\r\n",
                                                      b""))
    return True


async def _another_calls_signed_answer(peer: Peer, msg: Any) -> bool:
    """The server's real, signed answer to an earlier call (read on ``_INBOX.>``)."""
    if not peer.seen_replies:
        return False
    old = peer.seen_replies[0]
    return await _publish(peer, msg, old.data, dict(old.headers))


JUNK = {
    "garbage": _garbage,
    "an unsigned continue": _unsigned_continue,
    "a continue signed with another key": _continue_with_another_key,
    "a forged no-responders status": _no_responders_status,
    "another call's signed answer, replayed": _another_calls_signed_answer,
}


async def _setup(nats_url: str, raw: Any, junk: Callable[[Peer, Any], Awaitable[bool]]
                 ) -> tuple[str, Peer]:
    url = hook_url(nats_url)
    peer = Peer(raw, junk)
    PEER[:] = [peer]
    await peer.start(hook_subject(config_of(url).prefix, "guard"))
    return url, peer


@pytest.mark.parametrize("name", list(JUNK))
async def test_a_signed_call_takes_the_real_answer_after_junk(
    nats_url: str, raw: Any, name: str
) -> None:
    url, peer = await _setup(nats_url, raw, JUNK[name])
    async with HookServer([guard], url=url, key=KEY), HookClient(url, key=KEY) as client:
        assert await client.call("guard", tool_ctx(command="ls", n=0), timeout=10) == Continue()
        assert await client.call("guard", tool_ctx(command="rm -rf /", n=1),
                                 timeout=10) == Cancel("no rm")
        # Through a chain: a fail-open guard is not got past by answering first.
        registry = HookRegistry()
        registry.register(client.hook("guard", "BeforeToolExecution", timeout=10,
                                      error_policy="fail_open"))
        out = await HookExecutor(registry).execute(tool_ctx(command="rm -rf /", n=2))
        assert out.result == Cancel("no rm") and not out.failures
        stats = client.stats()
    assert stats.answered == 3 and stats.failed == {}
    # The replayed answer exists from the second call on; every other junk, from the first.
    # A no-responders status is not counted (the NATS server sends it when no one serves).
    expected = {"another call's signed answer, replayed": 2,
                "a forged no-responders status": 0}.get(name, 3)
    assert stats.untrusted == expected
    assert peer.sent == {0, 1, 2}


async def test_concurrent_calls_each_get_their_own_answer(nats_url: str, raw: Any) -> None:
    url, _ = await _setup(nats_url, raw, _unsigned_continue)
    async with HookServer([guard], url=url, key=KEY), HookClient(url, key=KEY) as client:
        commands = ["ls" if n % 2 else "rm -rf /" for n in range(20)]
        results = await asyncio.gather(*(
            client.call("guard", tool_ctx(command=c, n=n), timeout=10)
            for n, c in enumerate(commands)))
    assert results == [Continue() if c == "ls" else Cancel("no rm") for c in commands]
    assert client.stats().untrusted == 20


async def test_only_untrusted_replies_fail_at_the_deadline_naming_the_first(
    nats_url: str, raw: Any
) -> None:
    url, peer = await _setup(nats_url, raw, _unsigned_continue)
    peer.sent.update(range(100))
    async with HookClient(url, key=KEY) as client:  # no real server: only the peer answers
        with pytest.raises(RemoteHookReplyError) as caught:
            await client.call("guard", tool_ctx(command="ls", n=0), timeout=0.5)
    error = caught.value
    assert "no trusted reply" in error.message and "is not signed" in error.message
    assert error.hint is not None and "same key" in error.hint
    assert client.stats().untrusted == 1
    assert client.stats().failed == {"RemoteHookReplyError": 1}


async def test_with_a_key_and_no_server_the_call_is_still_unavailable(nats_url: str) -> None:
    async with HookClient(hook_url(nats_url), key=KEY) as client:
        with pytest.raises(RemoteHookUnavailableError, match="no server serves"):
            await client.call("guard", tool_ctx(command="ls", n=0), timeout=0.3)
    assert client.stats().untrusted == 0
