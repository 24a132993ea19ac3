"""Values a script or a host gives that the boundary must refuse with a typed error: a plain
JavaScript object posing as a function reference, and text holding a lone surrogate."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.errors import NotJsonSafeError, ScriptError
from llmspell.runtime import System, SystemConfig, tool
from llmspell.scripting import ScriptHost


@tool("halves")
def halves(keyed: bool = False) -> Any:
    """Text cut in the middle of a UTF-16 pair (a lone surrogate)."""
    return {"a\ud800": 1} if keyed else {"items": ["ok", "a\ud800b"]}


async def test_a_plain_object_with_a_fn_key_is_never_taken_for_a_function(
        script_host: ScriptHost) -> None:
    for source in ("return {__fn: 1};",
                   "globalThis.f = () => 1; return [f, {nested: {__fn: 1}}];",
                   "await Event.publish('x.y', {a: {__fn: 1}});"):
        with pytest.raises(ScriptError, match="the key '__fn' is reserved"):
            await script_host.run_js_async(source)
    # The script can catch it where it sent the data; real functions still go out.
    out = await script_host.run_js_async(
        "let caught; try { await Tool.invoke('count', {n: 1, x: {__fn: 2}}); }"
        " catch (e) { caught = [e.name, e.message]; }"
        " return [caught, await Tool.invoke('count', {n: 2}), () => 3];")
    assert out[0][0] == "TypeError" and "reserved" in out[0][1]
    assert out[1] == 4 and callable(out[2])
    assert await script_host.run_js_async("return {__fnx: 1, fn__: 2};") == {"__fnx": 1,
                                                                             "fn__": 2}


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_a_lone_surrogate_is_a_typed_error_in_both_languages(store: str,
                                                                   tmp_path: Any) -> None:
    async with System(SystemConfig(store=store, data_dir=str(tmp_path))) as system:
        system.tools.register(halves)
        host = ScriptHost(system)
        try:
            js = await host.run_js_async(
                "try { await Tool.invoke('halves', {}); }"
                " catch (e) { return [e.name, e.message]; }")
            lua = await host.run_lua_async(
                "local ok, e = pcall(Tool.invoke, 'halves', {}); return {ok, tostring(e)}")
        finally:
            host.close()
        assert js[0] == "NotJsonSafeError" and "lone surrogate" in js[1]
        assert ".items[1]" in js[1]
        assert lua[0] is False and "lone surrogate" in lua[1]
        with pytest.raises(NotJsonSafeError, match=r"event\.data \(a key\)"):
            system.bus.publish("x.y", {"a\udc80": 1})
        system.bus.publish("x.z", {"fine": "é"})   # the bus goes on
        system.bus.flush()
        if system.store is not None:
            assert [e.event_type for e in system.store.query(pattern="x.*")] == ["x.z"]
