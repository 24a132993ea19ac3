"""Remote hooks across real processes, through the real NATS server.

Hook servers are ``llmspell hooks serve POLICY`` processes (tests/distributed/policies);
the callers are this test process, through the normal runtime (a System with a tool, the
remote hook registered at BeforeToolExecution) or a plain registry and executor.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from llmspell.distributed import (
    DistributedHookContext,
    HookClient,
    RemoteHook,
    SharedKey,
    Signer,
)
from llmspell.distributed.connection import config_of
from llmspell.distributed.wire import HookCall, decode_reply, encode, hook_subject
from llmspell.errors import OperationCancelled
from llmspell.events.distributed import DistributedBus, make_bus
from llmspell.hooks import Cancel, HookExecutor, HookRegistry, Replace
from llmspell.runtime import System, SystemConfig, tool
from tests.distributed.support import KEY, OTHER_KEY, ROOT, Server, hook_url, tool_ctx
from tests.events.nats_support import bus_url, namespace, nats_url

__all__ = ["namespace", "nats_url"]  # fixtures

pytestmark = pytest.mark.timeout(180)


def _executor(*hooks: RemoteHook) -> HookExecutor:
    registry = HookRegistry()
    for remote in hooks:
        registry.register(remote)
    return HookExecutor(registry)


async def test_a_guard_served_in_another_process_blocks_a_tool_call_in_this_one(
        nats_url: str) -> None:
    url = hook_url(nats_url)
    server = await Server("guard.py", url, "--key-env", "TEST_KEY",
                          env={"TEST_KEY": KEY}).ready()
    assert "signing on (key from TEST_KEY)" in server.banner
    ran: list[str] = []

    @tool()
    def shell(command: str) -> str:
        """Records the command (this test runs nothing)."""
        ran.append(command)
        return f"ran {command}"

    guard = RemoteHook("guard", "BeforeToolExecution", url=url, key=KEY, timeout=10)
    try:
        async with System(SystemConfig(store="none")) as system:
            system.tools.register(shell)
            system.registry.register(guard)
            assert await system.tools.execute("shell", {"command": "ls -la"}) == "ran ls -la"
            with pytest.raises(OperationCancelled) as caught:
                await system.tools.execute("shell", {"command": "rm -rf /"})
            assert caught.value.hook == "guard"
            assert caught.value.reason == "policy: 'rm -rf /' is not allowed"
    finally:
        await guard.close()
        counts = await server.stop()
    assert ran == ["ls -la"]
    assert counts == {"served": 2, "refused": 0, "failed": 0}
    assert sum(guard.stats().by_server.values()) == 2


async def test_with_the_guard_server_down_fail_closed_denies_and_fail_open_continues(
        nats_url: str) -> None:
    url = hook_url(nats_url)
    server = await Server("guard.py", url).ready()
    closed = RemoteHook("guard", "BeforeToolExecution", url=url, key=None, timeout=5)
    opened = RemoteHook("guard", "BeforeToolExecution", url=url, key=None, timeout=5,
                        error_policy="fail_open", local_name="guard_open")
    try:
        up = await _executor(closed).execute(tool_ctx(command="ls"))
        assert up.kind == "continue" and up.hooks_run == 1
        await server.stop()                          # the guard server goes away
        down = await _executor(closed).execute(tool_ctx(command="ls"))
        assert isinstance(down.result, Cancel) and down.decided_by == "guard"
        assert "no server serves remote hook 'guard'" in down.result.reason
        assert down.failures[0].error_type == "RemoteHookUnavailableError"
        through = await _executor(opened).execute(tool_ctx(command="ls"))
        assert through.kind == "continue"
        assert through.failures[0].error_type == "RemoteHookUnavailableError"
    finally:
        server.kill()
        await closed.close()
        await opened.close()


async def test_two_servers_in_one_queue_group_share_the_calls(nats_url: str) -> None:
    url = hook_url(nats_url)
    servers = [Server("whoami.py", url, "--queue", "shared") for _ in range(2)]
    try:
        for server in servers:
            await server.ready()
        whoami = RemoteHook("whoami", "BeforeToolExecution", url=url, key=None, timeout=10)
        executor = _executor(whoami)
        served_by: list[int] = []
        for _ in range(40):
            ctx = tool_ctx(command="ls")
            assert (await executor.execute(ctx)).kind == "modified"
            served_by.append(ctx.data["served_by"])
        await whoami.close()
        counts = [await server.stop() for server in servers]
    finally:
        for server in servers:
            server.kill()
    pids = {server.proc.pid for server in servers}
    assert set(served_by) == pids                    # both answered
    assert [c["served"] for c in counts] == [served_by.count(s.proc.pid) for s in servers]
    assert sum(c["served"] for c in counts) == 40


class _Raw:
    """Hand-made requests to a hook server, as an attacker (or a broken client) sends."""

    def __init__(self, nc: Any, url: str, hook: str) -> None:
        self.nc = nc
        self.subject = hook_subject(config_of(url).prefix, hook)
        self.hook = hook

    def payload(self, **data: object) -> bytes:
        ctx = tool_ctx(**data)
        return encode(HookCall(hook=self.hook, point=str(ctx.point),
                               context=msgspec.Raw(ctx.to_json())))

    async def send(self, headers: dict[str, str], payload: bytes) -> Any:
        msg = await self.nc.request(self.subject, payload, timeout=10, headers=headers)
        return decode_reply(msg.data)


def _context(**fields: Any) -> DistributedHookContext:
    base = DistributedHookContext.root(component="attacker").child("hook:guard")
    return msgspec.structs.replace(base, **fields) if fields else base


async def test_a_forged_stale_or_replayed_signed_context_is_refused(nats_url: str) -> None:
    url = hook_url(nats_url)
    server = await Server("guard.py", url, "--key-env", "TEST_KEY",
                          env={"TEST_KEY": KEY}).ready()
    good, other = Signer(SharedKey(KEY)), Signer(SharedKey(OTHER_KEY))
    nc = await nats.connect(nats_url)
    raw = _Raw(nc, url, "guard")
    try:
        payload = raw.payload(command="rm -rf /")
        headers = _context().to_headers()
        refused = {}
        refused["unsigned"] = await raw.send(headers, payload)
        refused["wrong key"] = await raw.send(other.sign(headers, payload), payload)
        refused["unknown key id"] = await raw.send(
            Signer(SharedKey(KEY, key_id="k2")).sign(headers, payload), payload)
        refused["tampered payload"] = await raw.send(good.sign(headers, payload),
                                                     raw.payload(command="ls"))
        tampered = good.sign(headers, payload)
        tampered["Llmspell-Ctx-Hop-Limit"] = "64"
        refused["tampered header"] = await raw.send(tampered, payload)
        added = good.sign(headers, payload)
        added["Llmspell-Ctx-Extra"] = "1"
        refused["added header"] = await raw.send(added, payload)
        refused["stale"] = await raw.send(good.sign(headers, payload, now=time.time() - 120),
                                          payload)
        refused["from the future"] = await raw.send(
            good.sign(headers, payload, now=time.time() + 120), payload)
        signed = good.sign(headers, payload)
        first = await raw.send(signed, payload)
        refused["replayed"] = await raw.send(signed, payload)
        # A forged reply would have to be signed by the server's key and answer this request.
        assert first.error is None
        assert json.loads(bytes(first.result)) == {"type": "cancel", "reason":
                                                   "policy: 'rm -rf /' is not allowed"}
    finally:
        await nc.close()
    # Through the API: a client with another key is refused, and its fail-closed hook denies.
    wrong = RemoteHook("guard", "BeforeToolExecution", url=url, key=OTHER_KEY, timeout=1)
    denied = await _executor(wrong).execute(tool_ctx(command="ls"))
    await wrong.close()
    counts = await server.stop()
    assert {name: reply.error for name, reply in refused.items()} == {
        "unsigned": "unsigned", "wrong key": "bad_signature",
        "unknown key id": "unknown_key", "tampered payload": "bad_signature",
        "tampered header": "bad_signature", "added header": "bad_signature",
        "stale": "stale", "from the future": "stale", "replayed": "replayed"}
    assert isinstance(denied.result, Cancel)
    # The server's refusal is signed with its key, which this client cannot check: the
    # reply itself is refused (its claim is quoted, unverified).
    assert denied.failures[0].error_type == "RemoteHookReplyError"
    assert "the server refused the call (bad_signature)" in denied.result.reason
    assert counts == {"served": 1, "refused": len(refused) + 1, "failed": 0}


async def test_a_call_past_its_hop_limit_is_refused(nats_url: str) -> None:
    url = hook_url(nats_url)
    server = await Server("guard.py", url, "--hop-limit", "6").ready()
    nc = await nats.connect(nats_url)
    raw = _Raw(nc, url, "guard")
    try:
        payload = raw.payload(command="ls")
        within = await raw.send(_context(hop=3, hop_limit=8).to_headers(), payload)
        over_own = await raw.send(_context(hop=5, hop_limit=4).to_headers(), payload)
        over_server = await raw.send(_context(hop=7, hop_limit=8).to_headers(), payload)
    finally:
        await nc.close()
    # Through the API: a context at its limit cannot make one more hop, so the call is
    # never sent; the fail-closed hook denies.
    guard = RemoteHook("guard", "BeforeToolExecution", url=url, key=None, timeout=10)
    last = DistributedHookContext.root(hop_limit=2).child("a").child("b")
    with last.activate():
        denied = await _executor(guard).execute(tool_ctx(command="ls"))
    await guard.close()
    counts = await server.stop()
    assert within.error is None
    assert over_own.error == "hop_limit" and "hop 5, over the limit of 4" in over_own.message
    assert over_server.error == "hop_limit" and "over the limit of 6" in over_server.message
    assert isinstance(denied.result, Cancel)
    assert denied.failures[0].error_type == "HopLimitExceededError"
    assert counts == {"served": 1, "refused": 2, "failed": 0}


async def test_the_cli_size_bound_refuses_a_larger_call_unread(nats_url: str) -> None:
    url = hook_url(nats_url)
    server = await Server("guard.py", url, "--max-payload", "2048").ready()
    nc = await nats.connect(nats_url)
    raw = _Raw(nc, url, "guard")
    try:
        small = await raw.send(_context().to_headers(), raw.payload(command="ls"))
        large = await raw.send(_context().to_headers(), raw.payload(command="x" * 4096))
    finally:
        await nc.close()
    counts = await server.stop()
    assert small.error is None
    assert large.error == "too_large" and "2048" in large.message
    assert counts == {"served": 1, "refused": 1, "failed": 0}


async def test_the_deadline_is_respected_by_caller_and_server(nats_url: str,
                                                              tmp_path: Path) -> None:
    url = hook_url(nats_url)
    log = tmp_path / "slow.log"
    server = await Server("slow.py", url, env={"SLOW_LOG": str(log)}).ready()
    nc = await nats.connect(nats_url)
    raw = _Raw(nc, url, "slow")
    slow = RemoteHook("slow", "BeforeToolExecution", url=url, key=None, timeout=0.5)
    try:
        # Arrived after its deadline: refused, the hook never starts.
        late = await raw.send(_context(deadline=time.time() - 5).to_headers(),
                              raw.payload(command="ls"))
        assert late.error == "deadline"
        assert not log.exists()
        # The caller waits 0.5 s, then its fail-closed hook denies; the server stops the
        # hook at the same deadline instead of letting it run its 30 s.
        start = time.monotonic()
        denied = await _executor(slow).execute(tool_ctx(command="ls"))
        waited = time.monotonic() - start
        assert isinstance(denied.result, Cancel)
        assert denied.failures[0].error_type in ("RemoteHookTimeoutError", "HookTimeoutError")
        assert waited < 10
        for _ in range(500):
            if log.exists() and "started" in log.read_text():
                break
            await asyncio.sleep(0.02)
    finally:
        await nc.close()
        await slow.close()
    start = time.monotonic()
    counts = await server.stop()
    assert time.monotonic() - start < 20               # nothing left running for 30 s
    assert log.read_text() == "started\n"              # cancelled at the deadline
    assert counts == {"served": 0, "refused": 1, "failed": 1}


async def test_the_lineage_is_kept_across_two_process_boundaries(nats_url: str) -> None:
    url = hook_url(nats_url)
    probe_server = await Server("probe.py", url).ready()
    relay_server = await Server("relay.py", url).ready()
    relay = RemoteHook("relay", "BeforeToolExecution", url=url, key=None, timeout=20,
                       error_policy="raise")
    try:
        root = DistributedHookContext.root(correlation_id="order-42", run_id="run-7",
                                           component="test", timeout=30)
        ctx = tool_ctx(command="ls")
        with root.activate():
            answer = await relay.execute(ctx)
        # Without a current context the hook call starts one from the hook's context.
        plain_ctx = tool_ctx(command="ls")
        plain = await relay.execute(plain_ctx)
        # A context at its hop limit in the relay server: its call to the probe is refused
        # there, so the relay fails and the caller's fail-closed hook denies.
        short = DistributedHookContext.root(hop_limit=1)
        guarded = RemoteHook("relay", "BeforeToolExecution", client=relay.client, timeout=20)
        with short.activate():
            denied = await _executor(guarded).execute(tool_ctx(command="ls"))
    finally:
        await relay.close()
        await relay_server.stop()
        await probe_server.stop()
    assert isinstance(answer, Replace)
    first, second = answer.value["relay"], answer.value["probe"]
    assert first["trace_id"] == second["trace_id"] == root.trace_id
    assert first["correlation_id"] == second["correlation_id"] == "order-42"
    assert first["run_id"] == second["run_id"] == "run-7"
    assert first["hook_correlation_id"] == second["hook_correlation_id"] == ctx.correlation_id
    assert (first["hop"], first["parent_ids"]) == (1, [root.span_id])
    assert (second["hop"], second["parent_ids"]) == (2, [root.span_id, first["span_id"]])
    assert first["origin"]["process"] == os.getpid()
    assert first["origin"]["component"] == "hook:relay"
    assert second["origin"]["process"] == relay_server.proc.pid
    assert second["origin"]["component"] == "hook:probe"
    assert root.deadline is not None
    assert second["deadline"] <= first["deadline"] <= root.deadline
    assert isinstance(plain, Replace)
    assert plain.value["probe"]["correlation_id"] == plain_ctx.correlation_id
    assert plain.value["probe"]["parent_ids"][0] == plain.value["relay"]["parent_ids"][0]
    assert isinstance(denied.result, Cancel)
    assert "HopLimitExceededError" in denied.result.reason


async def test_events_published_in_a_context_carry_it_to_a_subscriber_process(
        nats_url: str, namespace: str, tmp_path: Path) -> None:
    url = bus_url(nats_url, namespace)
    out = tmp_path / "seen.jsonl"
    subscriber = subprocess.Popen(
        [sys.executable, "-m", "tests.distributed.event_subscriber", url, str(out), KEY, "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    bus = make_bus(url)
    assert isinstance(bus, DistributedBus)
    try:
        assert subscriber.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(subscriber.stdout.readline), 60)
        assert line.strip() == "ready", subscriber.stderr.read() if subscriber.stderr else ""
        await bus.connect()
        root = DistributedHookContext.root(correlation_id="order-42", run_id="run-7",
                                           component="checkout")
        with root.activate(signer=Signer(SharedKey(KEY))):
            bus.publish("order.placed", {"n": 1})
        with root.activate(signer=Signer(SharedKey(OTHER_KEY))):
            bus.publish("order.placed", {"n": 2})
        bus.publish("order.placed", {"n": 3})            # outside any context
        await bus.close()
        await asyncio.to_thread(subscriber.wait, 60)
        assert subscriber.returncode == 0, subscriber.stderr.read() if subscriber.stderr \
            else ""
    finally:
        subscriber.kill()
    lines = [json.loads(text) for text in out.read_text().splitlines() if text]
    seen = {line["data"]["n"]: line for line in lines}
    assert seen[1]["context"] == {
        "correlation_id": "order-42", "run_id": "run-7", "trace_id": root.trace_id,
        "span_id": root.span_id, "traceparent": root.traceparent, "hop": 0,
        "origin_process": os.getpid()}
    assert seen[1]["run_id"] == "run-7"                  # the context's run was current
    assert seen[2]["refused"] == "bad_signature"
    assert seen[3] == {"data": {"n": 3}, "run_id": None, "context": None}


async def test_a_keyed_client_refuses_an_unsigned_reply(nats_url: str) -> None:
    url = hook_url(nats_url)
    server = await Server("guard.py", url).ready()       # no key: its replies are unsigned
    client = HookClient(url, key=KEY)
    try:
        denied = await _executor(client.hook("guard", "BeforeToolExecution", timeout=1)
                                 ).execute(tool_ctx(command="ls"))
    finally:
        await client.close()
        counts = await server.stop()
    assert isinstance(denied.result, Cancel)
    assert denied.failures[0].error_type == "RemoteHookReplyError"
    assert "the reply is refused: the message is not signed" in denied.result.reason
    assert counts == {"served": 1, "refused": 0, "failed": 0}
