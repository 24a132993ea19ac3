"""Lifecycles repeated: what a long-lived service creates and closes again and again gives
everything back, on the failure paths too.

Each test runs one lifecycle many times, after a first run that warms up what is made once
(the loop's default executor, imports, caches), and checks that the open file descriptors,
threads, asyncio tasks, child processes, open SQLite event stores and traced Python memory
come back to where they were (a small constant allowed, never growth with the count):

* systems: opened and shut down; whose state store cannot be opened; whose start is
  cancelled part-way; whose bus is unreachable; whose shutdown fails;
* the event bus: subscriptions made and removed, stream readers cancelled mid-iteration;
* the NATS bus: connected and closed (async and sync), retrying an unreachable server;
* the live viewer: hubs over a store and over a bus started and stopped with a browser
  stream cut mid-iteration, the server started and stopped, a server that cannot start;
* script hosts (Lua and JavaScript): scripts that succeed, fail or time out, then close.

``tests/test_soak_leaks.py`` and ``tests/test_bounded_growth.py`` cover registries, maps
and counts inside one object; this file covers what the process holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from llmspell.errors import ScriptError, ShutdownError, StateError, TransportUnavailableError
from llmspell.events import EventBus
from llmspell.events.distributed import DistributedBus, make_bus
from llmspell.events.event import UniversalEvent
from llmspell.events.store import sqlite as sqlite_store
from llmspell.events.store.sqlite import SQLiteStore
from llmspell.events.transport.nats import NatsTransport
from llmspell.runtime import System, SystemConfig
from llmspell.scripting import ScriptHost
from llmspell.viewer.hub import Hub, HubLimits
from llmspell.viewer.source import BusSource, StoreSource
from tests.ci import require_module
from tests.events.nats_support import bus_url, free_port, namespace, nats_url

__all__ = ["namespace", "nats_url"]  # fixtures

SLACK_FDS = 2
"""Descriptors a run may leave beside the baseline (a lazily made executor thread's)."""
SLACK_BYTES = 96 * 1024
"""Traced memory a run may keep: caches that fill once. A leak of a few hundred bytes per
cycle over the cycles below passes it; one of a kilobyte or more does not."""


def _fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def _children() -> int:
    """This process's child processes (every thread's)."""
    count = 0
    if os.path.isdir("/proc/self/task"):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that just ended
                count += len(Path(f"/proc/self/task/{task}/children").read_text().split())
    return count


def _threads() -> int:
    """Live threads but the event loop's default executor's (``asyncio_<n>``): that pool
    grows to its bound when ``asyncio.to_thread`` calls overlap, and is the loop's."""
    return sum(1 for thread in threading.enumerate() if not thread.name.startswith("asyncio_"))


def _tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop
        return 0


class Usage(NamedTuple):
    fds: int
    threads: int
    tasks: int
    children: int
    stores: int

    @staticmethod
    def now() -> Usage:
        gc.collect()
        return Usage(_fds(), _threads(), _tasks(), _children(),
                     len(sqlite_store._open_stores))

    def check(self, after: Usage, what: str) -> None:
        assert after.fds <= self.fds + SLACK_FDS, f"{what}: descriptors {self} -> {after}"
        assert after.threads <= self.threads, f"{what}: threads {self} -> {after}"
        assert after.tasks <= self.tasks, f"{what}: tasks {self} -> {after}"
        assert after.children <= self.children, f"{what}: children {self} -> {after}"
        assert after.stores <= self.stores, f"{what}: open event stores {self} -> {after}"


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


async def _settle() -> None:
    """Let callbacks scheduled by the last cycle run (unsubscribes, done callbacks)."""
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()


async def repeated(cycle: Callable[[int], Awaitable[Any]], n: int, what: str, *,
                   memory: bool = True) -> None:
    """Run ``cycle`` once to warm up, then ``n`` times: usage (and traced memory) must
    come back."""
    await cycle(-1)
    await _settle()
    before = Usage.now()
    traced_before = tracemalloc.get_traced_memory()[0] if memory else 0
    for i in range(n):
        await cycle(i)
    await _settle()
    before.check(Usage.now(), what)
    if memory and tracemalloc.is_tracing():
        grown = tracemalloc.get_traced_memory()[0] - traced_before
        assert grown < SLACK_BYTES, f"{what}: {grown} bytes kept after {n} cycles"


def repeated_sync(cycle: Callable[[int], Any], n: int, what: str) -> None:
    cycle(-1)
    before = Usage.now()
    for i in range(n):
        cycle(i)
    before.check(Usage.now(), what)


# -- systems ------------------------------------------------------------------------------
async def test_systems_opened_and_shut_down_leave_nothing(tmp_path: Path, traced: None) -> None:
    config = SystemConfig(store="sqlite", data_dir=str(tmp_path), session_retention=3600.0)

    async def cycle(i: int) -> None:
        async with System(config) as system:
            await system.emit("x.y", {"i": i})
            await system.state.set("k", i)

    await repeated(cycle, 30, "sqlite systems with a retention task")


async def test_a_system_whose_state_store_cannot_open_closes_its_event_store(
        tmp_path: Path, traced: None) -> None:
    """Before: the event store opened first (two SQLite connections, five descriptors)
    stayed open, and listed for the exit hook, for every failed attempt."""

    async def cycle(i: int) -> None:
        data_dir = tmp_path / f"d{i}"
        (data_dir / "state.db").mkdir(parents=True)  # a folder where the file should be
        with pytest.raises(StateError):
            System(SystemConfig(store="sqlite", data_dir=str(data_dir)))

    await repeated(cycle, 30, "systems whose state.db cannot be opened")


async def test_a_system_whose_start_is_cancelled_part_way_closes_what_it_opened(
        tmp_path: Path) -> None:
    """A start that times out inside a slow ``SystemStartup`` hook. Before: ``async with``
    never reached ``__aexit__``, so the store and state stayed open for every attempt."""
    config = SystemConfig(store="sqlite", data_dir=str(tmp_path))
    stopped: list[int] = []

    async def cycle(i: int) -> None:
        system = System(config)
        gate = asyncio.Event()

        async def slow(ctx: Any) -> None:
            gate.set()
            await asyncio.sleep(3600)

        system.registry.register("system_startup", slow, name="slow", timeout=3600.0)
        system.registry.register("system_shutdown", lambda ctx: stopped.append(i),
                                 name="stop")
        entering = asyncio.ensure_future(system.__aenter__())
        await gate.wait()  # inside the hook: the system started part of the way
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering
        assert system.bus.closed

    await repeated(cycle, 30, "systems cancelled while starting")
    assert stopped == list(range(-1, 30))  # it had started: its shutdown hooks ran


async def test_a_system_whose_bus_is_unreachable_closes_its_store(tmp_path: Path) -> None:
    """Before: every failed ``async with`` kept the SQLite store and state open. (Each
    attempt costs the NATS client's half-second reconnect wait: two attempts.)"""
    pytest.importorskip("nats")
    config = SystemConfig(store="sqlite", data_dir=str(tmp_path),
                          bus=f"nats://127.0.0.1:{free_port()}?connect_timeout=1")
    started: list[int] = []

    async def cycle(i: int) -> None:
        system = System(config)
        system.registry.register("system_shutdown", lambda ctx: started.append(i), name="s")
        with pytest.raises(TransportUnavailableError):
            async with system:
                pass
        assert not system.started

    await repeated(cycle, 2, "systems whose bus is unreachable", memory=False)
    assert started == []  # never started: no shutdown hooks for it


async def test_a_system_whose_shutdown_fails_still_closes_its_store_and_state(
        tmp_path: Path, traced: None) -> None:
    async def fail() -> None:
        raise RuntimeError("an agent would not stop")

    async def cycle(i: int) -> None:
        system = System(SystemConfig(store="sqlite", data_dir=str(tmp_path)))
        system.agents.shutdown_all = fail  # type: ignore[method-assign]
        with pytest.raises(ShutdownError, match="would not stop"):
            async with system:
                await system.emit("x.y", {"i": i})

    await repeated(cycle, 30, "systems whose shutdown fails")


# -- the event bus -------------------------------------------------------------------------
async def test_subscriptions_made_and_removed_leave_nothing(traced: None) -> None:
    bus = EventBus()
    seen: list[UniversalEvent] = []

    async def queued(event: UniversalEvent) -> None:
        seen.append(event)

    async def cycle(i: int) -> None:
        inline = bus.subscribe(f"a.{i % 7}.*", lambda event: None)
        handle = bus.subscribe("a.**", queued)
        await bus.publish_async(f"a.{i % 7}.x", {"i": i})
        await bus.drain()
        bus.unsubscribe(inline)
        bus.unsubscribe(handle)
        seen.clear()

    try:
        await repeated(cycle, 200, "subscribe/unsubscribe")
        assert bus.subscriptions() == []
    finally:
        await bus.close()


async def test_stream_readers_cancelled_mid_iteration_leave_nothing(traced: None) -> None:
    bus = EventBus()

    async def cycle(i: int) -> None:
        stream = bus.stream("s.**").filtered(lambda e: True).batched(5, 60.0).throttled(1e6)
        async def read(source: Any) -> None:
            async for _batch in source:
                pass

        reader = asyncio.create_task(read(stream))
        for _ in range(5 if i % 2 else 3):  # a full batch, or one in progress
            bus.publish("s.x", {"i": i})
        await asyncio.sleep(0)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        if i % 3:
            await stream.aclose()
        # else dropped unclosed: the bus unsubscribes it once collected
        del stream, reader

    try:
        await repeated(cycle, 100, "stream readers cancelled mid-iteration")
        assert bus.subscriptions() == []
    finally:
        await bus.close()


# -- the NATS bus --------------------------------------------------------------------------
class _Unreachable(NatsTransport):
    """A NATS transport whose server is down (without the client's reconnect wait)."""

    async def connect(self) -> None:
        raise TransportUnavailableError("cannot reach the NATS server (test)",
                                        hint="start a server")


async def test_a_bus_retrying_an_unreachable_server_keeps_one_listener(traced: None) -> None:
    """Before: every failed ``connect()`` left the bus's connection and stream-reset
    listeners on the transport, so a service retrying for a while collected one per
    attempt, and each then published its own ``bus.reconnected`` on every reconnect."""
    transport = _Unreachable("nats://127.0.0.1:1")
    bus = DistributedBus(transport)

    async def cycle(i: int) -> None:
        with pytest.raises(TransportUnavailableError):
            await bus.connect()

    await repeated(cycle, 100, "connect retries")
    assert transport.listeners == [] and transport.reset_listeners == []
    await bus.close()


async def test_nats_buses_connected_and_closed_leave_nothing(
        nats_url: str, namespace: str, traced: None) -> None:
    url = bus_url(nats_url, namespace)

    async def queued(event: UniversalEvent) -> None:
        return None

    async def cycle(i: int) -> None:
        bus = make_bus(url)
        assert isinstance(bus, DistributedBus)
        await bus.connect()
        bus.subscribe("a.*", queued)
        stream = bus.stream("a.*")
        await bus.publish_async("a.b", {"i": i})
        await stream.aclose()
        await bus.close()

    await repeated(cycle, 20, "NATS buses connected and closed")


async def test_a_nats_bus_closed_while_opening_subscriptions_leaves_no_task(
        nats_url: str, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    """Before: ``close()`` did not wait for the consumers still being opened in the
    background; each such task outlived the bus, failing on the closed connection (an
    error logged) or waiting for the client's five-second timeout."""
    url = bus_url(nats_url, namespace)

    async def queued(event: UniversalEvent) -> None:
        return None

    async def cycle(i: int) -> None:
        before = _tasks()
        bus = make_bus(url)
        assert isinstance(bus, DistributedBus)
        await bus.connect()
        bus.subscribe("a.*", queued)
        bus.stream("b.*")
        for _ in range(i % 4):  # close at different points of the opening
            await asyncio.sleep(0)
        await bus.close()
        assert _tasks() <= before  # right away: nothing of the bus is left running

    with caplog.at_level("ERROR", logger="llmspell"):
        await repeated(cycle, 12, "NATS buses closed while opening", memory=False)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


def test_nats_buses_connected_and_closed_from_sync_code_leave_nothing(
        nats_url: str, namespace: str) -> None:
    url = bus_url(nats_url, namespace)

    def cycle(i: int) -> None:
        bus = make_bus(url)
        assert isinstance(bus, DistributedBus)
        bus.connect_sync()  # the bus runs on a private loop thread
        bus.subscribe("a.*", lambda event: None)
        bus.publish("a.b", {"i": i})
        bus.close_sync()

    repeated_sync(cycle, 10, "NATS buses on their own loop thread")


# -- the live viewer -----------------------------------------------------------------------
async def _watch_and_cut(hub: Hub) -> None:
    """A browser that reads its stream until the first events and goes away."""
    stream = hub.stream(runs_interval=0.01, stats_interval=0.01)
    async for chunk in stream:
        if b"\nevent: events\n" in chunk:
            break
    await stream.aclose()  # type: ignore[attr-defined]  # an async generator


async def test_viewer_hubs_started_and_stopped_leave_nothing(tmp_path: Path,
                                                              traced: None) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    store.append_many(UniversalEvent.create("e.x", {"i": i}) for i in range(5))
    store.flush()
    store.close()
    bus = EventBus()
    limits = HubLimits(tail=5)

    async def over_store(i: int) -> None:
        hub = Hub(StoreSource(tmp_path / "events.db", poll_interval=0.01), limits=limits)
        await hub.start()
        await _watch_and_cut(hub)
        await hub.stop()

    async def over_bus(i: int) -> None:
        hub = Hub(BusSource(bus), limits=limits)
        await hub.start()
        bus.publish("e.y", {"i": i})
        await _watch_and_cut(hub)
        await hub.stop()

    try:
        await repeated(over_store, 30, "viewer hubs over a store file")
        await repeated(over_bus, 30, "viewer hubs over a bus")
        assert bus.subscriptions() == []
    finally:
        await bus.close()


def test_viewer_servers_started_and_stopped_leave_nothing(tmp_path: Path) -> None:
    require_module("uvicorn", install="llmspell[viewer]")
    require_module("starlette", install="llmspell[viewer]")
    from llmspell.viewer import ViewerServer, create_app

    class _Down(StoreSource):
        async def start(self) -> None:
            raise TransportUnavailableError("cannot reach the NATS server (test)",
                                            hint="start a server")

    def serve(i: int) -> None:
        server = ViewerServer(create_app(StoreSource(tmp_path / "events.db")),
                              graceful_timeout=1)
        server.start()
        server.stop()

    def fail(i: int) -> None:
        server = ViewerServer(create_app(_Down(tmp_path / "events.db")))
        with pytest.raises(TransportUnavailableError):
            server.start()
        server.stop()

    repeated_sync(serve, 2, "viewer servers started and stopped")
    repeated_sync(fail, 10, "viewer servers that cannot start")


# -- script hosts --------------------------------------------------------------------------
_LUA = """
Event.subscribe("x.*", function(e) end)
local id = Event.subscribe("y.*")
Hook.register("BeforeToolExecution", function(ctx) return nil end)
Event.publish("x.a", {n = 1})
Workflow.sequential({name = "w", steps = {}})
if FAIL then error("the script fails") end
return Event.receive(id, 1)
"""
_JS = """
Event.subscribe("x.*", (e) => {});
Hook.register("BeforeToolExecution", (ctx) => null);
Event.publish("x.a", {n: 1});
if (FAIL) { throw new Error("the script fails"); }
return 1;
"""


async def test_script_hosts_created_and_closed_leave_nothing(traced: None) -> None:
    async with System(SystemConfig(store="none")) as system:
        async def cycle(i: int) -> None:
            host = ScriptHost(system)
            fail = i % 2 == 0
            try:
                await host.run_lua_async(f"local FAIL = {str(fail).lower()}\n{_LUA}")
                await host.run_js_async(f"const FAIL = {str(fail).lower()};\n{_JS}")
                assert not fail
            except ScriptError as exc:
                assert fail and "the script fails" in str(exc)
            finally:
                host.close()

        await repeated(cycle, 40, "script hosts")
        assert system.bus.subscriptions() == [] and len(system.registry) == 0


def test_script_hosts_whose_scripts_time_out_leave_nothing() -> None:
    system = System(SystemConfig(store="none"))

    def cycle(i: int) -> None:
        host = ScriptHost(system, time_budget=0.02)
        try:
            with pytest.raises(ScriptError):
                host.run_lua('Event.subscribe("x.*", function(e) end) while true do end')
            with pytest.raises(ScriptError):
                host.run_js('Event.subscribe("x.*", (e) => {}); while (true) {}')
        finally:
            host.close()

    repeated_sync(cycle, 10, "script hosts whose scripts time out")
    assert system.bus.subscriptions() == []

