"""What long-lived processes keep stays bounded: counted in entries, never in bytes or time.

* the bus's per-type counts (``EventBus._type_base``) are bounded by ``route_cache_size``,
  and what it reports stays exact (the total always, the types still listed);
* ``ScriptedProvider.calls`` keeps the last ``max_calls`` calls;
* shared rate-limit buckets expire from their backend (memory, NATS KV) once idle for their
  refill time, and an expired bucket is a full one;
* a script host's workflows (and their initial states) are bounded and released at close;
* the tracing hook finds its oldest open span without copying the open spans.
"""

from __future__ import annotations

import asyncio
import operator
import urllib.parse
from typing import Any

import pytest

from llmspell.builtin import RateLimitConfig, RateLimitHook
from llmspell.builtin.counters import MemoryCounters, counter_key
from llmspell.builtin.nats_counters import NatsCounters
from llmspell.builtin.tracing import _first
from llmspell.core.clock import ManualClock
from llmspell.errors import InvalidValueError, ProviderError, WorkflowError
from llmspell.events import EventBus
from llmspell.hooks import Cancel
from llmspell.hooks.context import ComponentId, ComponentType, HookContext
from llmspell.hooks.points import HookPoint
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers.base import Message
from llmspell.runtime.providers.scripted import DEFAULT_MAX_CALLS, ScriptedProvider
from llmspell.scripting import ScriptHost
from llmspell.scripting.runtime_ops import RuntimeOps
from tests.builtin.support import kv_url
from tests.events.nats_support import nats_url

__all__ = ["kv_url", "nats_url"]  # fixtures


# -- 1. the bus's per-type counts -----------------------------------------------------------
def test_the_bus_counts_a_bounded_number_of_event_types_and_the_total_exactly() -> None:
    cache = 16
    clock = ManualClock()
    bus = EventBus(route_cache_size=cache, clock=clock)
    bus.subscribe("tool.*.completed", lambda event: None)
    hot = 0
    for i in range(40 * cache):
        bus.publish(f"tool.{i}.completed")  # a new type per call, as ids make them
        bus.publish("tool.hot.completed")
        hot += 1
        if i % cache == 0:
            clock.advance(0.25)
        if i == 10 * cache:
            # A subscription change retires every route: "hot" gets a folded base count
            # while its new route counts on; both must stay.
            bus.subscribe("nothing.*", lambda event: None)
        assert len(bus._type_base) <= cache
    stats = bus.stats()
    assert stats.published == 40 * cache + hot
    assert stats.by_type["tool.hot.completed"] == hot
    assert len(stats.by_type) <= 2 * cache + 1
    assert all(n == 1 for t, n in stats.by_type.items() if t != "tool.hot.completed")
    assert stats.rates["60s"] > 0 and min(stats.rates_by_type.values()) >= 0
    assert stats.subscriptions[0].delivered == stats.published


def test_a_forgotten_event_type_is_counted_afresh_and_the_total_keeps_it() -> None:
    bus = EventBus(route_cache_size=4)
    bus.publish("a.first")
    for i in range(20):
        bus.publish(f"b.x{i}")
    bus.publish("a.first")
    stats = bus.stats()
    assert stats.by_type.get("a.first") == 1  # forgotten with the cold types, then seen again
    assert stats.published == 22 and len(bus._type_base) <= 4


# -- 2. ScriptedProvider.calls ---------------------------------------------------------------
async def test_the_scripted_provider_keeps_its_last_calls() -> None:
    provider = ScriptedProvider(lambda messages, tools: messages[-1].content or "",
                                max_calls=5)
    assert provider.calls == [] and operator.ne(provider.calls, []) is False
    for i in range(20):
        await provider.complete([Message(role="user", content=f"m{i}")])
    assert len(provider.calls) == 5 and provider.call_count == 20
    assert [call[0][0].content for call in provider.calls] == [f"m{i}" for i in range(15, 20)]
    assert provider.calls[-1] == ([Message(role="user", content="m19")], [])
    assert provider.calls == list(provider.calls)
    assert ScriptedProvider(["x"]).calls.maxlen == DEFAULT_MAX_CALLS == 1000
    with pytest.raises(InvalidValueError, match="max_calls") as caught:
        ScriptedProvider(["x"], max_calls=0)
    assert caught.value.hint


async def test_a_scripted_provider_out_of_replies_names_the_call_past_its_bound() -> None:
    provider = ScriptedProvider(["a", "b", "c"], max_calls=2)
    for _ in range(3):
        await provider.complete([Message(role="user", content="q")])
    with pytest.raises(ProviderError, match=r"\(call 4\)"):
        await provider.complete([Message(role="user", content="q")])


# -- 3. shared rate-limit buckets --------------------------------------------------------------
def _call(user: str) -> HookContext:
    return HookContext(point=HookPoint.BEFORE_TOOL_EXECUTION,
                       component=ComponentId(type=ComponentType.TOOL, name="search"),
                       data={"params": {}}, metadata={"user": user})


async def _run(hook: RateLimitHook, ctx: HookContext) -> Any:
    out = hook.execute(ctx)
    if asyncio.iscoroutine(out):
        out = await out
    return out


async def test_idle_shared_buckets_leave_a_memory_backend() -> None:
    clock = ManualClock()
    counters = MemoryCounters(clock=clock)
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=2, key="user"), shared=counters,
                         clock=clock)
    ttl = 2.0 / 1.0 + 1.0  # burst / rate, plus the margin (at least a second)
    for round_ in range(10):
        for i in range(1000):
            assert await _run(hook, _call(f"u{round_}.{i}")) is None
        clock.advance(ttl + 0.001)  # every bucket of this round is idle and full again
        assert len(counters._values) <= 2 * 1024
    assert counters.list_keys() == []


async def test_an_expired_shared_bucket_is_a_full_bucket() -> None:
    clock = ManualClock()
    counters = MemoryCounters(clock=clock)
    hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=2, key="user"), shared=counters,
                         clock=clock)
    assert [await _run(hook, _call("ann")) for _ in range(2)] == [None, None]
    assert isinstance(await _run(hook, _call("ann")), Cancel)  # empty: still limited
    clock.advance(2.9)  # refilled, not yet expired: the stored bucket decides
    assert counters.list_keys() != []
    assert [await _run(hook, _call("ann")) for _ in range(2)] == [None, None]
    assert isinstance(await _run(hook, _call("ann")), Cancel)
    clock.advance(3.1)
    assert counters.list_keys() == []  # expired: reads as a full bucket, as it would be
    assert [await _run(hook, _call("ann")) for _ in range(2)] == [None, None]
    assert isinstance(await _run(hook, _call("ann")), Cancel)


async def test_the_memory_backend_rejects_a_bad_ttl() -> None:
    counters = MemoryCounters()
    for ttl in (0, -1.0, float("inf"), float("nan"), True):
        with pytest.raises(InvalidValueError, match="ttl") as caught:
            await counters.update_expiring("k", lambda v: (1, None), ttl)
        assert caught.value.hint
    assert counters.list_keys() == []


async def _stored_messages(nats: str, bucket: str) -> int:
    import nats as nats_py

    nc = await nats_py.connect(nats)
    try:
        info = await nc.jetstream().stream_info(f"KV_{bucket}")
        return int(info.state.messages)
    finally:
        await nc.close()


async def test_idle_shared_buckets_leave_nats_kv_and_newer_writes_stay(
        kv_url: str, nats_url: str) -> None:
    clock = ManualClock()
    mine = NatsCounters(kv_url, clock=clock)
    other = NatsCounters(kv_url)  # another process
    bucket = dict(urllib.parse.parse_qsl(kv_url.partition("?")[2]))["bucket"]
    try:
        hook = RateLimitHook(RateLimitConfig(rate=1.0, burst=2, key="user"), shared=mine,
                             clock=clock)
        for i in range(20):
            assert await _run(hook, _call(f"u{i}")) is None
        assert await _stored_messages(nats_url, bucket) == 20
        key = counter_key(hook.shared_key, "key", hook.key_for(_call("u0")))
        await other.update(key, lambda value: ([0.0, value[1]], None))  # written since
        written = await other.read(key)
        clock.advance(3.1)
        for _ in range(200):  # the sweep runs by itself (about every second)
            if mine.stats().expired >= 20:
                break
            await asyncio.sleep(0.05)
        assert mine.stats().expired == 20
        assert await _stored_messages(nats_url, bucket) == 1  # only the newer write
        assert await other.read(key) == written
        assert await mine.read(counter_key(hook.shared_key, "key",
                                           hook.key_for(_call("u1")))) is None
        # An expired bucket is a full bucket: two calls, then limited.
        assert [await _run(hook, _call("u1")) for _ in range(2)] == [None, None]
        assert isinstance(await _run(hook, _call("u1")), Cancel)
        assert await mine.sweep() == 0
    finally:
        mine.close()
        other.close()


# -- 4. a script host's workflows --------------------------------------------------------------
_SPEC = {"name": "wf", "state": {"n": 1}, "steps": [
    {"name": "s", "type": "tool", "tool": "nothing"}]}


def test_a_script_host_keeps_a_bounded_number_of_workflows() -> None:
    ops = RuntimeOps(System(SystemConfig(store="memory")), "lua", max_workflows=3)
    for _ in range(3):
        ops.workflow_create("sequential", dict(_SPEC))
    with pytest.raises(WorkflowError, match="max_workflows") as caught:
        ops.workflow_create("sequential", dict(_SPEC))
    assert caught.value.hint and len(ops.workflows) == len(ops.initial_state) == 3
    ops.release_workflows()
    assert ops.workflows == {} and ops.initial_state == {}
    ops.workflow_create("sequential", dict(_SPEC))  # room again
    with pytest.raises(InvalidValueError, match="max_workflows"):
        RuntimeOps(None, "lua", max_workflows=0)


async def test_closing_a_script_host_releases_its_workflows() -> None:
    system = System(SystemConfig(store="memory"))
    host = ScriptHost(system)
    async with system:
        await host.run_lua_async("""
            for i = 1, 50 do
              Workflow.sequential({name = "w" .. i, state = {i = i}, steps = {}})
            end
            return true
        """)
        runtime = host.bindings.api.runtime
        assert len(runtime.workflows) == len(runtime.initial_state) == 50
        host.close()
        assert runtime.workflows == {} and runtime.initial_state == {}


# -- 5. tracing: the oldest open span --------------------------------------------------------
class _NoCopy(dict[int, Any]):
    def copy(self) -> dict[int, Any]:
        raise AssertionError("the open spans were copied")


def test_the_oldest_open_span_is_found_without_a_copy() -> None:
    spans: Any = _NoCopy((i, f"span{i}") for i in range(10_001))
    oldest: Any = _first(spans)
    assert oldest == "span0"
    del spans[0]
    oldest = _first(spans)
    assert oldest == "span1"
    assert _first(_NoCopy()) is None


def test_the_oldest_open_span_survives_a_concurrent_change() -> None:
    class Changing(dict[int, Any]):
        changed = False

        def values(self) -> Any:
            if not self.changed:
                self.changed = True
                return _Raising()
            return super().values()

    class _Raising:
        def __iter__(self) -> _Raising:
            return self

        def __next__(self) -> Any:
            raise RuntimeError("dictionary changed size during iteration")

    spans: Any = Changing({1: "a", 2: "b"})
    oldest: Any = _first(spans)
    assert oldest == "a" and spans.changed
