"""A script's session saved through another object meanwhile: the script's save is refused
with the conflict (nothing written), and its next call on the session reads it afresh
instead of refusing for the rest of the run."""

from __future__ import annotations

from llmspell.runtime import System, tool
from llmspell.scripting import ScriptHost


async def test_a_conflicting_save_is_refused_once_then_the_session_is_read_afresh() -> None:
    async with System() as system:
        @tool("touch")
        async def touch(session_id: str) -> bool:
            """Save the session through an object of its own."""
            other = await system.sessions.load(session_id)
            other.metadata["by"] = "python"
            await other.save()
            return True

        system.tools.register(touch)
        host = ScriptHost(system)
        try:
            out = await host.run_lua_async("""
              local s = Session.create({name = "x"})
              Tool.invoke("touch", {session_id = s.id})
              local ok, err = pcall(Session.save, s)
              local again = Session.save(s)
              return {ok, tostring(err), again.metadata.by}""")
        finally:
            host.close()
    assert out[0] is False
    assert "saved through another object" in out[1]
    assert out[2] == "python"  # read afresh: the other object's change is kept


async def test_a_long_lived_host_keeps_a_bounded_number_of_session_objects() -> None:
    from llmspell.scripting.runtime_ops import MAX_CACHED_SESSIONS

    async with System() as system:
        host = ScriptHost(system)
        try:
            out = await host.run_lua_async(f"""
              local first = Session.create({{name = "first"}})
              for i = 1, {MAX_CACHED_SESSIONS + 5} do Session.create({{name = "s" .. i}}) end
              Session.checkpoint(first, "later")   -- dropped from the cache: loaded again
              return Session.get(first).name""")
            cached = len(host.bindings.api.runtime.sessions)
        finally:
            host.close()
    assert out == "first"
    assert cached == MAX_CACHED_SESSIONS
