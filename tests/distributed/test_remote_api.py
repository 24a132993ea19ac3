"""RemoteHook, HookClient and HookServer in one process, against the real NATS server:
every result kind round-trips, in-place changes apply, bad replies are typed errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest

from llmspell.core.loops import thread_loop
from llmspell.distributed import HookClient, HookServer, RemoteHook, SharedKey, Signer
from llmspell.distributed.signing import SIG_NONCE
from llmspell.distributed.wire import REPLY_TO, HookCall, HookReply, encode, hook_subject
from llmspell.errors import (
    ConfigurationError,
    RemoteHookFailedError,
    RemoteHookRefusedError,
    RemoteHookReplyError,
    RemoteHookUnavailableError,
)
from llmspell.hooks import (
    BaseHook,
    Cache,
    Cancel,
    Continue,
    Fork,
    ForkOperation,
    HookContext,
    HookExecutor,
    HookRegistry,
    HookResult,
    Modified,
    Redirect,
    Replace,
    Retry,
    Skipped,
    hook,
)
from tests.distributed.support import KEY, hook_url, tool_ctx
from tests.events.nats_support import nats_url

__all__ = ["nats_url"]  # fixtures

RESULTS: dict[str, HookResult] = {
    "continue": Continue(),
    "modified": Modified({"command": "ls -l", "n": [1, 2.5, None, {"x": True}]}),
    "cancel": Cancel("not allowed"),
    "redirect": Redirect("safe_shell"),
    "replace": Replace({"stdout": "cached", "code": 0}),
    "retry": Retry(delay=0.25, max_attempts=2),
    "fork": Fork((ForkOperation(type="tool", target="audit", parameters={"a": 1}),)),
    "cache": Cache("shell:ls", ttl=30.0, shared=True),
    "skipped": Skipped("not mine"),
}


@hook("BeforeToolExecution", name="answer")
def answer(ctx: HookContext) -> HookResult:
    return RESULTS[ctx.data["want"]]


@hook("BeforeToolExecution", name="mutate")
def mutate(ctx: HookContext) -> HookResult | None:
    ctx.data["seen"] = True
    ctx.metadata["policy"] = "v2"
    if ctx.data.get("also_modified"):
        return Modified({"replaced": True})
    return None


@hook("BeforeToolExecution", name="explode")
def explode(ctx: HookContext) -> None:
    raise ValueError("the policy database is down")


@hook("BeforeToolExecution", name="bad_value")
def bad_value(ctx: HookContext) -> Any:
    return "yes"


@hook("BeforeToolExecution", name="not_json")
def not_json(ctx: HookContext) -> Modified:
    return Modified({"when": object()})


@hook("AfterToolExecution", name="after_only")
def after_only(ctx: HookContext) -> None:
    return None


class OnlyShell(BaseHook):
    """A hook object with a predicate: applies to the shell tool only."""

    def __init__(self) -> None:
        super().__init__(name="only_shell")

    def should_execute(self, ctx: HookContext) -> bool:
        return bool(ctx.data.get("tool") == "shell")

    def execute(self, ctx: HookContext) -> Cancel:
        return Cancel("shell is off")


ARRIVED: list[str] = []
RELEASE: asyncio.Event | None = None


@hook("BeforeToolExecution", name="gate")
async def gate(ctx: HookContext) -> Continue:
    """Waits until released: calls must run concurrently for every one to arrive."""
    ARRIVED.append(ctx.data["i"])
    assert RELEASE is not None
    await asyncio.wait_for(RELEASE.wait(), 30)
    return Continue()


HOOKS = [answer, mutate, explode, bad_value, not_json, after_only, OnlyShell(), gate]


@pytest.fixture
async def served(nats_url: str) -> AsyncIterator[tuple[str, HookServer]]:
    url = hook_url(nats_url)
    server = HookServer(HOOKS, url=url, key=None)
    await server.start()
    try:
        yield url, server
    finally:
        await server.stop()


async def test_every_result_kind_round_trips(served: tuple[str, HookServer]) -> None:
    url, _ = served
    async with HookClient(url, key=None) as client:
        remote = client.hook("answer", "BeforeToolExecution", error_policy="raise")
        for kind, expected in RESULTS.items():
            got = await remote.execute(tool_ctx(want=kind))
            assert got == expected and type(got) is type(expected), kind


async def test_results_fold_in_the_chain_like_a_local_hook(
        served: tuple[str, HookServer]) -> None:
    url, _ = served
    async with HookClient(url, key=None) as client:
        registry = HookRegistry()
        registry.register(client.hook("answer", "BeforeToolExecution", priority="high"))
        seen: list[dict[str, Any]] = []
        registry.register("BeforeToolExecution", lambda ctx: seen.append(dict(ctx.data)),
                          name="after_it")
        executor = HookExecutor(registry)
        out = await executor.execute(tool_ctx(want="modified"))
        assert out.kind == "modified" and out.decided_by == "answer"
        assert seen == [RESULTS["modified"].data]  # type: ignore[union-attr]
        stopped = await executor.execute(tool_ctx(want="cancel"))
        assert stopped.cancelled and len(seen) == 1
        forked = await executor.execute(tool_ctx(want="fork"))
        assert forked.forks == (RESULTS["fork"],)


async def test_in_place_changes_apply_to_the_callers_context(
        served: tuple[str, HookServer]) -> None:
    url, _ = served
    async with HookClient(url, key=None) as client:
        remote = client.hook("mutate", "BeforeToolExecution", error_policy="raise")
        ctx = tool_ctx(command="ls")
        assert await remote.execute(ctx) == Continue()
        assert ctx.data == {"command": "ls", "seen": True}
        assert ctx.metadata == {"policy": "v2"}
        both = tool_ctx(also_modified=True)
        assert await remote.execute(both) == Modified({"replaced": True})
        assert "seen" not in both.data               # Modified decides the data


async def test_failures_on_the_server_are_typed_errors_here(
        served: tuple[str, HookServer]) -> None:
    url, server = served
    async with HookClient(url, key=None) as client:
        with pytest.raises(RemoteHookFailedError) as failed:
            await client.call("explode", tool_ctx())
        assert failed.value.error_type == "ValueError"
        assert "the policy database is down" in failed.value.message
        with pytest.raises(RemoteHookFailedError) as bad:
            await client.call("bad_value", tool_ctx())
        assert bad.value.error_type == "InvalidHookResultError"
        with pytest.raises(RemoteHookFailedError) as unsafe:
            await client.call("not_json", tool_ctx())
        assert unsafe.value.error_type == "NotJsonSafeError"
        with pytest.raises(RemoteHookRefusedError) as wrong:
            await client.call("after_only", tool_ctx())
        assert wrong.value.code == "wrong_point"
        with pytest.raises(RemoteHookFailedError, match="cannot be sent"):
            await client.call("answer", tool_ctx(want=object()))
        # A hook object's predicate runs on the server.
        assert await client.call("only_shell", tool_ctx(tool="shell")) == Cancel("shell is off")
        skipped = await client.call("only_shell", tool_ctx(tool="calc"))
        assert isinstance(skipped, Skipped)
        stats = client.stats()
    assert stats.failed == {"RemoteHookFailedError": 4, "RemoteHookRefusedError": 1}
    assert server.stats().failed == {"explode": 1, "bad_value": 1, "not_json": 1}
    assert server.stats().refused == {"wrong_point": 1}


async def test_async_hooks_run_concurrently_and_stop_finishes_them(nats_url: str) -> None:
    global RELEASE
    RELEASE = asyncio.Event()
    ARRIVED.clear()
    url = hook_url(nats_url)
    server = HookServer([gate], url=url, key=None)
    await server.start()
    async with HookClient(url, key=None) as client:
        calls = [asyncio.create_task(client.call("gate", tool_ctx(i=i), timeout=30))
                 for i in range(5)]
        while len(ARRIVED) < 5:                       # all five are in the hook at once
            await asyncio.sleep(0.01)
        assert server.stats().inflight == 5
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()                    # it waits for the calls it took
        RELEASE.set()
        assert await asyncio.gather(*calls) == [Continue()] * 5
        await stopping
    assert server.stats().served == {"gate": 5}


async def test_a_sync_program_can_call_a_remote_hook(served: tuple[str, HookServer]) -> None:
    url, _ = served
    remote = RemoteHook("answer", "BeforeToolExecution", url=url, key=None)
    registry = HookRegistry()
    registry.register(remote)
    executor = HookExecutor(registry)
    # execute_sync runs the async hook on its thread's own loop, where the client connects.
    def sync_program() -> Any:
        try:
            return executor.execute_sync(tool_ctx(want="cancel"))
        finally:
            thread_loop().run_until_complete(remote.close())

    out = await asyncio.to_thread(sync_program)
    assert out.result == Cancel("not allowed")


async def test_a_client_belongs_to_one_event_loop(served: tuple[str, HookServer]) -> None:
    url, _ = served
    async with HookClient(url, key=None) as client:

        def elsewhere() -> None:
            asyncio.run(client.call("answer", tool_ctx(want="continue")))

        with pytest.raises(ConfigurationError, match="another event loop"):
            await asyncio.to_thread(elsewhere)
        assert await client.call("answer", tool_ctx(want="continue")) == Continue()


async def _fake_server(nc: Any, subject: str, answer: Any) -> Any:
    async def reply(msg: Any) -> None:
        payload, headers = answer(msg)
        await nc.publish(msg.reply, payload, headers=headers)

    return await nc.subscribe(subject, cb=reply)


@pytest.mark.parametrize(("payload", "complaint"), [
    (b"not json", "not a remote hook reply"),
    (b"{}", "neither a result nor an error"),
    (b'{"result": {"type": "explode"}}', "cannot decode a HookResult"),
    (b'{"result": {"type": "retry", "delay": -1}}', "cannot decode a HookResult"),
    (b'{"error": "weird", "message": "?"}', "unknown error code 'weird'"),
])
async def test_bad_replies_are_typed_errors(nats_url: str, payload: bytes,
                                            complaint: str) -> None:
    url = hook_url(nats_url)
    nc = await nats.connect(nats_url)
    try:
        async with HookClient(url, key=None) as client:
            await _fake_server(nc, hook_subject(client.prefix, "guard"),
                               lambda msg: (payload, None))
            await nc.flush()
            with pytest.raises(RemoteHookReplyError, match=complaint):
                await _call_once_served(client)
    finally:
        await nc.close()


async def _call_once_served(client: HookClient) -> Any:
    """``client.call("guard", ...)``, asked again (up to 3 times) while NATS answers "no
    responders": once, in a loaded full suite, it did so although the fake server had
    subscribed and flushed (cause not found). What these tests judge is the reply."""
    for _ in range(2):
        try:
            return await client.call("guard", tool_ctx())
        except RemoteHookUnavailableError:
            await asyncio.sleep(0.2)
    return await client.call("guard", tool_ctx())


async def test_a_signed_client_accepts_only_replies_signed_for_its_request(
        nats_url: str) -> None:
    url = hook_url(nats_url)
    signer = Signer(SharedKey(KEY))
    good = encode(HookReply(result=msgspec.Raw(b'{"type":"continue"}'), server="fake"))
    replies = {
        "unsigned": lambda msg: (good, None),
        "answers another request": lambda msg: (good, signer.sign({REPLY_TO: "0" * 32}, good)),
        "right": lambda msg: (good, signer.sign({REPLY_TO: msg.headers[SIG_NONCE]}, good)),
    }
    nc = await nats.connect(nats_url)
    outcomes: dict[str, str] = {}
    mode = ["unsigned"]
    try:
        async with HookClient(url, key=KEY) as client:
            await _fake_server(nc, hook_subject(client.prefix, "guard"),
                               lambda msg: replies[mode[0]](msg))
            await nc.flush()
            for name in replies:
                mode[0] = name
                try:
                    outcomes[name] = (await _call_once_served(client)).kind
                except RemoteHookReplyError as exc:
                    outcomes[name] = exc.message
    finally:
        await nc.close()
    assert "the message is not signed" in outcomes["unsigned"]
    assert "answers another request" in outcomes["answers another request"]
    assert outcomes["right"] == "continue"


def test_a_remote_hook_registers_like_any_hook() -> None:
    remote = RemoteHook("guard", "BeforeToolExecution", url="nats://127.0.0.1:4222",
                        key=None, timeout=1.5, priority="high", tags=["policy"])
    registry = HookRegistry()
    handle = registry.register(remote)               # the point comes from the hook
    [info] = registry.list()
    assert (handle.point, info.name, info.priority) == ("before_tool_execution", "guard", -100)
    assert info.error_policy == "fail_closed" and info.timeout == 1.5
    assert info.tags == frozenset({"remote", "policy"}) and info.is_async
    assert "via nats://127.0.0.1:4222" in repr(remote)


@pytest.mark.parametrize(("build", "complaint"), [
    (lambda: RemoteHook("bad name", "BeforeToolExecution"), "cannot name a remote hook"),
    (lambda: RemoteHook("g", "BeforeToolExecution", url="nats://x:1", client=HookClient()),
     "either client= or url="),
    (lambda: RemoteHook("g", "BeforeToolExecution", url="http://x"), "scheme"),
    (lambda: HookServer([answer, answer]), "two hooks are named"),
    (lambda: HookServer([answer], queue="a.b"), "queue group"),
    (lambda: HookServer([answer], max_inflight=0), "max_inflight"),
    (lambda: HookServer([42]), "is not a hook"),
])
def test_bad_configuration_is_refused_clearly(build: Any, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        build()


async def test_a_server_with_nothing_to_serve_does_not_start(nats_url: str) -> None:
    with pytest.raises(ConfigurationError, match="no hooks"):
        await HookServer(url=hook_url(nats_url)).start()


async def test_hooks_are_added_before_the_server_starts(
        served: tuple[str, HookServer]) -> None:
    _, server = served
    with pytest.raises(ConfigurationError, match="before the server starts"):
        server.add(lambda ctx: None, name="late")


async def test_a_malformed_call_is_refused_not_dropped(served: tuple[str, HookServer],
                                                     nats_url: str) -> None:
    from llmspell.distributed import DistributedHookContext
    from llmspell.distributed.connection import config_of
    from llmspell.distributed.wire import decode_reply

    url, server = served
    subject = hook_subject(config_of(url).prefix, "answer")
    headers = DistributedHookContext.root().child().to_headers()
    good = tool_ctx(want="continue")
    calls = {
        "not json": b"{",
        "unknown point": b'{"hook":"answer","point":"x","context":{"point":"NoSuchPoint",'
                         b'"component":{"type":"tool","name":"t"}}}',
        "future version": encode(HookCall(hook="answer", point=str(good.point),
                                          context=msgspec.Raw(good.to_json()), v=99)),
    }
    nc = await nats.connect(nats_url)
    try:
        replies = {name: decode_reply((await nc.request(subject, payload, timeout=10,
                                                        headers=headers)).data)
                   for name, payload in calls.items()}
    finally:
        await nc.close()
    assert {name: reply.error for name, reply in replies.items()} == {
        "not json": "malformed", "unknown point": "malformed", "future version": "malformed"}
    assert "protocol version 99" in replies["future version"].message
    assert server.stats().refused == {"malformed": 3}
