"""A JavaScript host request's arguments are encoded once, when the script makes the request,
inside the call and under its budget. Before the fix they were encoded when the outbox was
handed out; a batch whose encoding failed was encoded again item by item (and the good items
a third time), so getters, ``toJSON`` and Proxy traps ran two or three times, and the requests
still queued when a call failed were encoded by the cleanup under a fresh time budget: script
code ran after its call had been stopped. Hostile cases run in a child with a kill timer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from llmspell.errors import ScriptError, ScriptTimeoutError
from llmspell.runtime import System, SystemConfig, tool
from llmspell.scripting import ScriptHost
from tests.scripting.child import run_in_child


def _system() -> System:
    system = System(SystemConfig(store="memory"))

    @tool()
    def noop() -> str:
        """Nothing."""
        return "ok"

    system.tools.register(noop)
    return system


@pytest.fixture
def host() -> Iterator[ScriptHost]:
    h = ScriptHost(_system(), time_budget=2.0)
    yield h
    h.close()


# a counted value (`value`) followed by one that cannot be sent
_COUNTED = {
    "getter": "{get a() { n++; return 1; }}",
    "toJSON": "{toJSON() { n++; return {a: 1}; }}",
    "proxy-get": "new Proxy({a: 1}, {get(t, k) { if (k === 'a') n++; return t[k]; }})",
    "proxy-ownKeys": "new Proxy({a: 1}, {ownKeys(t) { n++; return Reflect.ownKeys(t); }})",
}


@pytest.mark.parametrize("name", list(_COUNTED))
def test_a_failed_encoding_runs_the_arguments_script_code_once(host: ScriptHost,
                                                                name: str) -> None:
    n, message = host.run_js(f"""
        let n = 0;
        try {{ await Tool.invoke('noop', {{value: {_COUNTED[name]}, bad: 1n}}); }}
        catch (e) {{ return [n, e.message]; }}
        return [n, 'sent']""")
    assert n == 1
    assert "BigInt at key 'bad'" in message  # the typed reason, as before


@pytest.mark.parametrize("name", list(_COUNTED))
def test_a_good_request_beside_a_failed_one_is_encoded_once(host: ScriptHost,
                                                            name: str) -> None:
    n, saved, message = host.run_js(f"""
        let n = 0;
        const good = State.set('k', {_COUNTED[name]});
        const bad = State.set('j', {{n: 1n}});
        let message = 'sent';
        try {{ await bad; }} catch (e) {{ message = e.message; }}
        await good;
        return [n, await State.get('k'), message]""")
    assert n == 1
    assert saved == {"a": 1}
    assert "BigInt at key 'n'" in message
    assert host.run_js("return await State.get('j')") is None


def test_an_uncaught_failed_encoding_is_a_script_error(host: ScriptHost) -> None:
    with pytest.raises(ScriptError, match="BigInt at key 'b'") as info:
        host.run_js("let n = 0;\nawait Tool.invoke('noop', {get a() { return ++n; }, b: 2n})")
    assert info.value.line == 2  # the line of the request
    assert host.run_js("return 2") == 2


def test_arguments_are_taken_when_the_request_is_made(host: ScriptHost) -> None:
    assert host.run_js("""
        const o = {v: 1};
        const done = State.set('k', o);
        o.v = 2;
        await done;
        return await State.get('k')""") == {"v": 1}


def test_functions_of_a_failed_encoding_are_forgotten(host: ScriptHost) -> None:
    engine = host.js.engine
    host.run_js("return 1")
    before = engine.counts()
    for _ in range(5):
        assert host.run_js("""
            try { await Tool.invoke('noop', {f: () => 1, g: {get h() { return () => 2; }},
                                              n: 1n}); }
            catch (e) { return e.message.includes('BigInt'); }
            return false""") is True
    assert engine.counts() == before


def test_a_request_made_by_a_getter_goes_out_once(host: ScriptHost) -> None:
    system = host.system
    seen: list[Any] = []
    system.bus.subscribe("once.*", seen.append)
    assert host.run_js("""
        let n = 0;
        await State.set('outer', {get v() { n++; Event.publish('once.x', {n: n}); return n; }});
        return [n, await State.get('outer')]""") == [1, {"v": 1}]
    assert [e.data for e in seen] == [{"n": 1}]


# -- hostile: requests queued when the call is stopped -----------------------------------------
# The script stops itself (a loop past its budget) after queueing a request; the cleanup that
# hands out the failed call's publishes ran the arguments' getters again (or for the first
# time) under a fresh budget, after the call had been stopped.
_STOPPED = {
    # the getter ran twice after the stop: the failed batch, then the item-by-item retry
    "failed-encoding": ("Tool.invoke('noop', {get a() { reads++; if (stopped) late++; "
                        "return 1; }, b: 1n}); stopped = true; for (;;) {}"),
    # the getter first ran in the cleanup, with a budget of its own
    "queued-request": ("Event.publish('stop.x', {get a() { reads++; if (stopped) late++; "
                       "return reads; }}); stopped = true; for (;;) {}"),
    "queued-toJSON": ("State.set('k', {toJSON() { reads++; if (stopped) late++; "
                      "return 1; }}); stopped = true; for (;;) {}"),
    # a getter that loops only once the call is stopped: the cleanup gave it a whole budget
    "looping-after-stop": ("Tool.invoke('noop', {get a() { reads++; if (stopped) { late++; "
                           "for (;;) {} } return 1; }}); stopped = true; for (;;) {}"),
}


def _stopped_child(name: str) -> None:
    async def scenario() -> None:
        system = _system()
        seen: list[Any] = []
        system.bus.subscribe("stop.*", seen.append)
        await system.start()
        host = ScriptHost(system, time_budget=0.2)
        try:
            await host.run_js_async("globalThis.reads = 0; globalThis.late = 0; "
                                    "globalThis.stopped = false")
            try:
                await host.run_js_async(_STOPPED[name])
            except ScriptTimeoutError:
                pass
            else:
                raise AssertionError("not stopped")
            counts = await host.run_js_async("return [reads, late]")
            assert counts == [1, 0], f"{name}: [reads, late] = {counts}"
            if name == "queued-request":
                # an accepted publish still goes out, with what was read in the call
                await asyncio.sleep(0.05)
                assert [e.data for e in seen] == [{"a": 1}]
            assert await host.run_js_async("return await Tool.invoke('noop', {})") == "ok"
            assert host.js.engine.resets == 0
        finally:
            host.close()
            await system.shutdown()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(_STOPPED))
def test_a_stopped_calls_requests_run_no_script_code_after_the_stop(name: str) -> None:
    run_in_child(_stopped_child, name, seconds=30,
                 failure=f"{name}: the cleanup ran script code for more than 30 s")
