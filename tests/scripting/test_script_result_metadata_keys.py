"""A Lua hook result whose ``metadata`` table has a key that is not text.

A table mixing string keys with another key (``{[1] = "x", user = "a"}``), a boolean, a
float or a table as a key cannot be converted to Python: the converter's
``InvalidValueError`` escaped the script hook (logged with a traceback, no hook name, the
executor's ``raise`` policy wrapping it as ``"InvalidValueError: ..."``). It is a
``HookExecutionError`` naming the hook, its point and the key, with the metadata hint,
like every other malformed metadata; the hook's error policy applies to it.
"""

from __future__ import annotations

import logging

import pytest

from llmspell.errors import HookExecutionError
from llmspell.hooks import ErrorPolicy
from llmspell.runtime import System
from llmspell.scripting import ScriptHost

from .conftest import Recorder

BAD_METADATA = {
    "mixed": ('{[1] = "x", user = "a"}', "the key 1"),
    "trailing": ('{user = "a", [3] = "x"}', "the key 3"),
    "boolean": ('{[true] = "x"}', "the key (boolean)"),
    "float": ('{[2.5] = "x"}', "the key 2.5"),
    "table": ('{[{}] = "x"}', "the key (table)"),
    "nested": ('{user = {[{1}] = "x"}}', "the key (table)"),
}

HOOK = """
Hook.register("BeforeToolExecution", function(ctx)
  {before}
  return {{type = "continue", metadata = {metadata}}}
end, {{priority = "high", name = "bad-meta"}})
"""

# a host call first: the hook finishes asynchronously (ScriptHook._later)
ASYNC_BEFORE = 'if ctx.component_id.name == "count" then Tool.invoke("backup", {n = 1}) end'

CALL = """
local ok, out = pcall(Tool.invoke, "count", {n = 21})
return {ok = ok, out = ok and out or tostring(out)}
"""


async def _setup(system: System, metadata: str, policy: ErrorPolicy,
                 before: str = "") -> ScriptHost:
    host = ScriptHost(system)
    await host.run_lua_async(HOOK.format(metadata=metadata, before=before))
    entries = [e for e in system.registry.chain("before_tool_execution")
               if e.name == "bad-meta"]
    assert len(entries) == 1
    entries[0].error_policy = policy
    return host


@pytest.mark.parametrize("case", list(BAD_METADATA))
@pytest.mark.parametrize("before", ["", ASYNC_BEFORE], ids=["sync", "async"])
async def test_a_non_text_metadata_key_fails_the_hook_by_name(
        script_system: System, recorder: Recorder, case: str, before: str,
        caplog: pytest.LogCaptureFixture) -> None:
    metadata, key = BAD_METADATA[case]
    host = await _setup(script_system, metadata, ErrorPolicy.FAIL_OPEN, before)
    try:
        with caplog.at_level(logging.WARNING):
            out = await host.run_lua_async(CALL)
    finally:
        host.close()
    assert out == {"ok": True, "out": 42}  # fail_open: the call goes on
    failures = [f for f in script_system.executor.failures() if f.hook == "bad-meta"]
    assert len(failures) == (2 if before else 1)  # async: the backup call's hook too
    for failure in failures:
        assert failure.error_type == "HookExecutionError"  # was InvalidValueError
        assert "return value.metadata" in failure.message and key in failure.message
        assert 'metadata = {user = "ada"}' in failure.message  # the metadata hint
    assert not [r for r in caplog.records if r.exc_info]  # no traceback for a bad result


@pytest.mark.parametrize("case", list(BAD_METADATA))
async def test_the_raise_policy_raises_the_hooks_own_error(
        script_system: System, recorder: Recorder, case: str) -> None:
    metadata, key = BAD_METADATA[case]
    host = await _setup(script_system, metadata, ErrorPolicy.RAISE)
    try:
        out = await host.run_lua_async(CALL)
    finally:
        host.close()
    assert out["ok"] is False and 21 not in recorder.counted
    assert "hook 'bad-meta' at 'before_tool_execution' failed" in out["out"]
    assert key in out["out"]
    assert "failed: InvalidValueError" not in out["out"]  # not wrapped by the executor


async def test_the_fail_closed_policy_cancels_the_call(
        script_system: System, recorder: Recorder) -> None:
    host = await _setup(script_system, BAD_METADATA["mixed"][0], ErrorPolicy.FAIL_CLOSED)
    try:
        out = await host.run_lua_async(CALL)
    finally:
        host.close()
    assert out["ok"] is False and 21 not in recorder.counted
    (failure,) = [f for f in script_system.executor.failures() if f.hook == "bad-meta"]
    assert failure.error_type == "HookExecutionError"


def test_the_error_names_the_hook_point_and_key() -> None:
    from llmspell.core.errors import InvalidValueError
    from llmspell.scripting.host import _hook_error

    refused = InvalidValueError(
        "table at return value.metadata has the key 1, which is neither a string nor part "
        "of a 1..n sequence", hint="use string keys, or a list without holes")
    error = _hook_error(refused, "bad-meta", "before_tool_execution")
    assert isinstance(error, HookExecutionError)
    assert error.hook == "bad-meta" and error.point == "before_tool_execution"
    assert "the key 1" in error.message and error.hint is not None
    assert "metadata" in error.hint
    other = InvalidValueError("value at return value.data contains itself (a cycle)",
                              hint="pass a tree of tables")
    assert _hook_error(other, "h", "p").hint == "pass a tree of tables"
