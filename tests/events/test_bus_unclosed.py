"""A bus used from sync code and dropped without close(): its private loop thread ends, and
the process exits cleanly. Also: the private per-thread loop of the sync entry points is
closed when its thread ends (no unclosed-loop ResourceWarning)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref
from typing import Any

from llmspell.core.loops import run_blocking, thread_loop
from llmspell.events.bus import EventBus


def _bus_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "llmspell-bus"]


def _settle_threads(threads: list[threading.Thread]) -> None:
    """Collect, then wait for the dropped buses' threads to finish (a hang guard only: the
    test checks that they end, not how soon)."""
    gc.collect()
    for thread in threads:
        thread.join(30.0)


def _drop_a_bus(seen: list[Any], *, slow: bool = False) -> weakref.ref[EventBus]:
    bus = EventBus()

    async def waits(event: Any) -> None:
        seen.append(event)
        await asyncio.sleep(3600)  # still running when the bus is dropped

    if slow:
        bus.subscribe("x.*", waits)
    else:
        bus.subscribe("x.*", seen.append, mode="queued")
    bus.publish("x.a", {"n": 1})
    bus.publish("x.b", {"n": 2})
    return weakref.ref(bus)


def test_a_dropped_bus_is_collected_and_its_thread_ends() -> None:
    before = set(_bus_threads())
    seen: list[Any] = []
    refs = [_drop_a_bus(seen) for _ in range(3)]
    started = [t for t in _bus_threads() if t not in before]
    assert len(started) == 3
    _settle_threads(started)
    assert [r() for r in refs] == [None, None, None]
    assert not any(t.is_alive() for t in started)
    assert set(_bus_threads()) <= before


def test_a_bus_dropped_while_a_handler_runs_cancels_it_and_its_thread_ends() -> None:
    before = set(_bus_threads())
    seen: list[Any] = []
    ref = _drop_a_bus(seen, slow=True)
    started = [t for t in _bus_threads() if t not in before]
    assert len(started) == 1
    _settle_threads(started)
    assert ref() is None
    assert not started[0].is_alive()


def test_a_closed_bus_still_closes_its_thread() -> None:
    seen: list[Any] = []
    bus = EventBus()
    bus.subscribe("x.*", seen.append, mode="queued")
    bus.publish("x.a", {"n": 1})
    thread = _bus_threads()[-1]
    bus.close_sync()
    assert [e.event_type for e in seen] == ["x.a"]
    assert not thread.is_alive()
    ref = weakref.ref(bus)
    del bus
    gc.collect()
    assert ref() is None


_CHILD = textwrap.dedent("""
    import asyncio, gc, sys, threading
    from llmspell.events.bus import EventBus

    seen = []

    async def handler(event):
        seen.append(event.event_type)

    def use_a_bus():
        bus = EventBus()
        bus.subscribe("job.*", handler)
        bus.subscribe("job.*", seen.append, mode="queued")
        bus.publish("job.started", {"n": 1})
        worker = threading.Thread(target=bus.publish, args=("job.done", {"n": 2}))
        worker.start()
        worker.join()

    use_a_bus()
    gc.collect()
    for thread in threading.enumerate():
        if thread.name == "llmspell-bus":
            thread.join(30.0)
    print(sorted(t.name for t in threading.enumerate()))
""")


def test_a_process_that_never_closes_its_bus_exits_cleanly() -> None:
    done = subprocess.run([sys.executable, "-W", "default", "-c", _CHILD],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.strip() == "['MainThread']"


def test_the_sync_loop_of_an_ended_thread_is_closed() -> None:
    async def answer() -> int:
        return 42

    loops: list[asyncio.AbstractEventLoop] = []

    def work() -> None:
        assert run_blocking(answer(), RuntimeError) == 42
        loops.append(thread_loop())  # the loop run_blocking ran on

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        gc.collect()
    assert loops and loops[0].is_closed()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
