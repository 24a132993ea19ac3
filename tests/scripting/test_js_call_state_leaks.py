"""What a JavaScript call leaves in the engine's own heap when it ends early: the kernel keeps
per-call state (the call's entry, the promises of its host requests, the functions an
answer or a request's arguments hand out), and a call that timed out, failed or was dropped
must leave none of it behind. Before the fix a hook timing out on every call (a looping
getter in a ``Tool.invoke`` argument) kept its request's promise, and with it the frame
awaiting it, about 2.3 KB a call: the default 32 MiB heap ran out after some 14,000 calls.

The calls that loop run in a child process with a kill timer, so a regression cannot hang
the suite."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from llmspell.errors import ScriptError, ScriptTimeoutError
from llmspell.runtime import System, SystemConfig, tool
from llmspell.scripting import ScriptHost
from llmspell.scripting.protocol import Pending, Reply
from tests.scripting.child import run_in_child

_CALLS = 40
"""Calls per case: before the fix each left at least one entry (~0.4-2.4 KB)."""

# script -> the error each call raises
_EARLY_ENDS: dict[str, tuple[str, type[ScriptError]]] = {
    # the time limit stops the encoding of a request's arguments (in the outbox's hand-out)
    "tool-argument-getter": ("await Tool.invoke('noop', {get a() { for (;;) {} }})",
                             ScriptTimeoutError),
    "publish-data-getter": ("await Event.publish('leak.x', {get a() { for (;;) {} }})",
                            ScriptTimeoutError),
    # requests queued when the time limit stops the script itself
    "request-then-loop": ("Tool.invoke('noop', {}); State.get('k'); for (;;) {}",
                          ScriptTimeoutError),
    # a function stored for a request whose encoding then failed or was stopped
    "function-then-bigint": ("await Tool.invoke('noop', {f: () => 1, n: 1n})", ScriptError),
    "function-then-looping-getter": (
        "Tool.invoke('noop', {f: () => 1, get a() { for (;;) {} }}); await null",
        ScriptTimeoutError),
    # the same in the call's answer
    "answer-function-then-looping-getter": ("return {f: () => 1, get a() { for (;;) {} }}",
                                            ScriptTimeoutError),
    "answer-function-then-bigint": ("return {f: () => 1, n: 1n}", ScriptError),
}


def _system() -> System:
    system = System(SystemConfig(store="memory"))

    @tool()
    def noop() -> str:
        """Nothing."""
        return "ok"

    system.tools.register(noop)
    return system


def _early_end_child(name: str) -> None:
    source, error = _EARLY_ENDS[name]
    host = ScriptHost(_system(), time_budget=0.05)
    engine = host.js.engine
    try:
        host.run_js("return 1")  # the kernel's first-call allocations
        before, memory = engine.counts(), engine.memory_used()
        for _ in range(_CALLS):
            with pytest.raises(error):
                host.run_js(source)
        after = engine.counts()
        assert after == before, f"{name}: {before} -> {after}"
        grown = engine.memory_used() - memory
        assert grown < _CALLS * 200, f"{name}: the heap grew {grown} bytes"
        # the engine still works, on the same context
        assert host.run_js("return await Tool.invoke('noop', {})") == "ok"
        assert engine.resets == 0
    finally:
        host.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(_EARLY_ENDS))
def test_calls_that_end_early_leave_no_state_in_the_kernel(name: str) -> None:
    run_in_child(_early_end_child, name, seconds=90,
                 failure=f"{name}: the calls ran past their budget for more than 90 s")


def _hook_child() -> None:
    # a hook that times out on every call, in its host call's argument
    async def scenario() -> None:
        system = _system()
        await system.start()
        host = ScriptHost(system, time_budget=0.05)
        engine = host.js.engine
        try:
            await host.run_js_async(
                "await Hook.register('BeforeToolExecution', async (ctx) => { "
                "if (ctx.component_id.name === 'noop') "
                "await Event.publish('leak.x', {get a() { for (;;) {} }}); "
                "return 'continue'; })")
            await system.tools.execute("noop", {})
            before = engine.counts()
            for _ in range(_CALLS):
                await system.tools.execute("noop", {})
            assert engine.counts() == before, f"{before} -> {engine.counts()}"
            assert engine.resets == 0
        finally:
            host.close()
            await system.shutdown()

    asyncio.run(scenario())


@pytest.mark.timeout(120)
def test_a_hook_timing_out_on_every_call_leaves_no_state() -> None:
    run_in_child(_hook_child, seconds=90,
                 failure="the hook ran past its budget for more than 90 s")


# -- calls that never loop: run here ---------------------------------------------------------
def _pending(host: ScriptHost, source: str) -> Pending:
    engine = host.js.engine
    fn = engine.compile(source)
    outcome = engine.start(fn, ())
    assert isinstance(outcome, Pending)
    return outcome


def test_a_dropped_pending_call_leaves_no_state() -> None:
    # a caller that never resumes the call (a hook cancelled by the executor's timeout)
    host = ScriptHost(_system(), time_budget=2.0)
    engine = host.js.engine
    try:
        before = engine.counts()
        for _ in range(_CALLS):
            pending = _pending(host, "const big = 'x'.repeat(10000) + Math.random(); "
                                     "await Tool.invoke('noop', {}); await State.get('k'); "
                                     "return big.length")
            assert [r.op for r in pending.requests] == ["tool.invoke"]
            del pending
            gc.collect()
        # the functions compiled here are kept (never released): only they remain
        assert engine.counts() == [before[0] + _CALLS, 0, 0, 0]
        assert host.run_js("return await Tool.invoke('noop', {})") == "ok"
    finally:
        host.close()


def _cancelled_hook_child() -> None:
    # in a child: pytest's log capture would keep the hook's failure records, and with
    # their tracebacks the cancelled calls
    async def scenario() -> None:
        system = _system()

        @tool()
        async def slow() -> str:
            """Waits."""
            await asyncio.sleep(30)
            return "late"

        system.tools.register(slow)
        await system.start()
        host = ScriptHost(system, time_budget=2.0)
        engine = host.js.engine
        try:
            await host.run_js_async(
                "await Hook.register('BeforeToolExecution', async (ctx) => { "
                "if (ctx.component_id.name === 'noop') await Tool.invoke('slow', {}); "
                "return 'continue'; }, {timeout: 0.05})")
            before = engine.counts()
            for _ in range(5):
                await system.tools.execute("noop", {})  # the hook's failure is recorded
            await asyncio.sleep(0.1)  # the cancelled tool's task finishes
            gc.collect()
            assert engine.counts() == before, f"{before} -> {engine.counts()}"
            assert await host.run_js_async("return 3") == 3
        finally:
            host.close()
            await system.shutdown()

    asyncio.run(scenario())


@pytest.mark.timeout(120)
def test_a_hook_cancelled_by_its_timeout_leaves_no_state() -> None:
    run_in_child(_cancelled_hook_child, seconds=90,
                 failure="the cancelled hooks did not end within 90 s")


def test_an_abandoned_call_leaves_no_state() -> None:
    # the budget ran out while the host performed the requests: the replies are abandoned
    host = ScriptHost(_system(), time_budget=2.0)
    engine = host.js.engine
    try:
        before = engine.counts()
        for _ in range(10):
            pending = _pending(host, "await Promise.all([Tool.invoke('noop', {}), "
                                     "State.get('k')]); return 1")
            engine.charge(pending, 10.0)
            replies = [Reply(r.id, True, None) for r in pending.requests]
            with pytest.raises(ScriptTimeoutError):
                engine.resume(pending, replies)
        assert engine.counts()[1:] == before[1:]
    finally:
        host.close()


@pytest.mark.parametrize("source", [
    "Tool.invoke('noop', {}); State.get('k'); throw new Error('boom')",
    "Tool.invoke('noop', {}); await new Promise(() => {})",
    "State.get('k'); await Tool.invoke('noop', {n: 1n})",
])
def test_a_failed_call_with_requests_in_flight_leaves_no_state(
        source: str) -> None:
    host = ScriptHost(_system(), time_budget=2.0)
    engine = host.js.engine
    try:
        before = engine.counts()
        for _ in range(10):
            with pytest.raises(ScriptError):
                host.run_js(source)
        assert engine.counts() == before
        assert host.run_js("return 2") == 2
    finally:
        host.close()


def test_a_call_of_a_released_function_ends_no_other_call() -> None:
    # the entry failed before the call was opened: the cleanup named the last call opened,
    # which could be another call still waiting for the host
    host = ScriptHost(_system(), time_budget=2.0)
    engine = host.js.engine
    try:
        pending = _pending(host, "return await Tool.invoke('noop', {})")
        gone = engine.compile("return 1")
        engine.release(gone)
        with pytest.raises(ScriptError, match="no such script function"):
            engine.start(gone, ())
        outcome: Any = engine.resume(pending, [Reply(pending.requests[0].id, True, "ok")])
        assert outcome.value == "ok"
    finally:
        host.close()
