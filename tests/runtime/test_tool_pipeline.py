"""Tools through the pipeline: points, events, and the effect of every hook result."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from llmspell.errors import (
    InvalidValueError,
    OperationCancelled,
    ToolExecutionError,
    ToolNotFoundError,
    ToolTimeoutError,
    ToolValidationError,
)
from llmspell.events import UniversalEvent
from llmspell.hooks import (
    Cache,
    Cancel,
    Fork,
    ForkOperation,
    HookContext,
    HookPoint,
    Modified,
    Redirect,
    Replace,
    Retry,
    Skipped,
)
from llmspell.runtime import System, Tool, tool

P = HookPoint


def on(system: System, point: str, fn, **kw) -> None:  # type: ignore[no-untyped-def]
    system.registry.register(point, fn, **kw)


@pytest.mark.parametrize("name", ["bad name!", "<lambda>", "tool*", "a..b", "x" * 300])
async def test_a_tool_name_that_cannot_name_its_events_is_refused_where_it_is_given(
        system: System, name: str) -> None:
    with pytest.raises(InvalidValueError, match="cannot be used") as info:
        tool(name)(lambda: 1)
    assert info.value.hint

    class Named(Tool):
        description = "a tool whose name is set on the class"

        def execute(self, params: dict[str, object]) -> int:
            return 1

    Named.name = name
    with pytest.raises(InvalidValueError, match="cannot be used"):
        system.tools.register(Named())
    assert name not in system.tools.names()


async def test_registering_what_is_not_a_function_is_a_typed_error(system: System) -> None:
    with pytest.raises(InvalidValueError, match="@tool wraps a function"):
        system.tools.register(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="cannot be used"):
        system.tools.register(lambda x: x)


async def test_plain_execution_publishes_started_and_completed(system, events) -> None:  # type: ignore[no-untyped-def]
    run = await system.tools.run("add", {"a": 2, "b": 3})
    assert run.result == 5 and run.attempts == 1 and not run.cached
    types = [e.event_type for e in events]
    assert types == ["tool.add.started", "tool.add.completed"]
    assert events[1].data["result"] == 5
    assert events[0].correlation_id == events[1].correlation_id == run.correlation_id


async def test_every_tool_point_fires_with_component_data_and_correlation(system, events) -> None:  # type: ignore[no-untyped-def]
    """Table-driven: each tool point fires once, about the tool, with one correlation id,
    and publishes its hook.<point> event."""
    seen: dict[str, HookContext] = {}

    def record(ctx: HookContext) -> None:
        seen[str(ctx.point)] = ctx

    for point in (P.TOOL_VALIDATION, P.BEFORE_TOOL_EXECUTION, P.AFTER_TOOL_EXECUTION,
                  P.TOOL_ERROR, P.BEFORE_TOOL_DISCOVERY, P.AFTER_TOOL_DISCOVERY):
        on(system, point, record, name=f"rec-{point}")
    run = await system.tools.run("add", {"a": 1, "b": 1})
    with pytest.raises(ToolExecutionError):
        await system.tools.run("fail", {"message": "x"})
    specs = await system.tools.discover("add")
    assert [s.name for s in specs] == ["add"]
    table = [
        (P.TOOL_VALIDATION, {"tool": "fail", "valid": True}),
        (P.BEFORE_TOOL_EXECUTION, {"tool": "fail", "params": {"message": "x"}}),
        (P.TOOL_ERROR, {"tool": "fail", "error_type": "ToolExecutionError"}),
        (P.AFTER_TOOL_DISCOVERY, {"query": "add", "tools": ["add"]}),
        (P.BEFORE_TOOL_DISCOVERY, {"query": "add"}),
    ]
    for point, expected in table:
        ctx = seen[str(point)]
        assert ctx.component.type == "tool"
        for key, value in expected.items():
            assert ctx.data[key] == value, (point, key)
    assert seen[str(P.AFTER_TOOL_EXECUTION)].data["result"] == 2
    assert seen[str(P.AFTER_TOOL_EXECUTION)].correlation_id == run.correlation_id
    assert seen[str(P.TOOL_ERROR)].correlation_id == seen[str(P.BEFORE_TOOL_EXECUTION)
                                                          ].correlation_id
    types = {e.event_type for e in events}
    for point in ("tool_validation", "before_tool_execution", "after_tool_execution",
                  "tool_error", "before_tool_discovery", "after_tool_discovery"):
        assert f"hook.{point}" in types
    assert {"tool.add.started", "tool.add.completed", "tool.fail.started",
            "tool.fail.failed"} <= types
    hook_event = next(e for e in events if e.event_type == "hook.after_tool_execution")
    assert hook_event.data["hooks"] == ["rec-after_tool_execution"]
    assert hook_event.data["kinds"] == ["continue"] and hook_event.data["component"] == "add"
    assert hook_event.correlation_id == run.correlation_id


async def test_hook_events_can_be_switched_off(system, events) -> None:  # type: ignore[no-untyped-def]
    on(system, P.BEFORE_TOOL_EXECUTION, lambda c: None, name="quiet")
    await system.update_config(hook_events=False)
    await system.tools.execute("add", {"a": 1, "b": 1})
    assert not any(e.event_type.startswith("hook.before") for e in events)
    assert "system.config_changed" in [e.event_type for e in events]


# -- one test per (result, tool) pair ---------------------------------------------------------

async def test_cancel_before_raises_naming_hook_and_reason(system, events) -> None:  # type: ignore[no-untyped-def]
    on(system, P.BEFORE_TOOL_EXECUTION, lambda c: Cancel("not today"), name="gate")
    with pytest.raises(OperationCancelled) as info:
        await system.tools.execute("add", {"a": 1, "b": 2})
    assert info.value.hook == "gate" and info.value.reason == "not today"
    assert [e.event_type for e in events if e.event_type.startswith("tool.")] == [
        "tool.add.failed"]


async def test_modified_before_replaces_the_parameters(system) -> None:  # type: ignore[no-untyped-def]
    on(system, P.BEFORE_TOOL_EXECUTION,
       lambda c: Modified({**c.data, "params": {"a": 40, "b": 2}}), name="m")
    assert await system.tools.execute("add", {"a": 1, "b": 2}) == 42


async def test_replace_before_skips_the_tool(system, events) -> None:  # type: ignore[no-untyped-def]
    on(system, P.BEFORE_TOOL_EXECUTION, lambda c: Replace({"canned": True}), name="r")
    run = await system.tools.run("fail", {})
    assert run.result == {"canned": True} and run.replaced
    assert "tool.fail.started" not in [e.event_type for e in events]


async def test_redirect_runs_another_tool(system) -> None:  # type: ignore[no-untyped-def]
    on(system, P.BEFORE_TOOL_EXECUTION,
       lambda c: Redirect("multiply") if c.data["tool"] == "add" else None, name="r")
    run = await system.tools.run("add", {"a": 6, "b": 7})
    assert run.result == 42 and run.redirected_to == "multiply"


async def test_redirect_loops_are_stopped(system) -> None:  # type: ignore[no-untyped-def]
    on(system, P.BEFORE_TOOL_EXECUTION,
       lambda c: Redirect("multiply" if c.data["tool"] == "add" else "add"), name="loop")
    with pytest.raises(ToolExecutionError, match="redirects"):
        await system.tools.execute("add", {"a": 1, "b": 1})


async def test_retry_on_error_reruns_the_tool(system) -> None:  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    @tool()
    def flaky() -> str:
        """Fails twice."""
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("try again")
        return "ok"

    system.tools.register(flaky)
    on(system, P.TOOL_ERROR, lambda c: Retry(0.001, 5), name="retry")
    run = await system.tools.run("flaky", {})
    assert run.result == "ok" and run.attempts == 3


async def test_retry_gives_up_at_max_attempts(system) -> None:  # type: ignore[no-untyped-def]
    on(system, P.TOOL_ERROR, lambda c: Retry(0, 2), name="retry")
    with pytest.raises(ToolExecutionError, match="boom"):
        await system.tools.execute("fail", {})


async def test_retry_after_reruns_until_the_hook_is_happy(system) -> None:  # type: ignore[no-untyped-def]
    on(system, P.AFTER_TOOL_EXECUTION,
       lambda c: Retry(0, 3) if c.data["attempt"] < 3 else None, name="again")
    run = await system.tools.run("add", {"a": 1, "b": 1})
    assert run.attempts == 3 and run.result == 2


async def test_retry_before_asks_the_before_hooks_again(system) -> None:  # type: ignore[no-untyped-def]
    on(system, P.BEFORE_TOOL_EXECUTION,
       lambda c: Retry(0, 3) if c.data["attempt"] < 2 else None, name="wait")
    assert await system.tools.execute("add", {"a": 1, "b": 1}) == 2


async def test_fork_runs_extra_operations_and_attaches_results(system) -> None:  # type: ignore[no-untyped-def]
    fork = Fork((ForkOperation(type="tool", target="multiply", parameters={"a": 3, "b": 4}),
                 ForkOperation(type="tool", target="fail", parameters={}),
                 ForkOperation(type="nonsense", target="x")))
    on(system, P.BEFORE_TOOL_EXECUTION, lambda c: fork if c.data["tool"] == "add" else None,
       name="f")
    run = await system.tools.run("add", {"a": 1, "b": 1})
    assert run.result == 2
    assert run.forks[0] == {"type": "tool", "target": "multiply", "result": 12}
    assert "boom" in run.forks[1]["error"] and "type" in run.forks[2]["error"]


async def test_fork_after_attaches_results_too(system) -> None:  # type: ignore[no-untyped-def]
    fork = Fork((ForkOperation(type="tool", target="multiply", parameters={"a": 2, "b": 2}),))
    on(system, P.AFTER_TOOL_EXECUTION, lambda c: fork if c.data["tool"] == "add" else None,
       name="f")
    run = await system.tools.run("add", {"a": 1, "b": 1})
    assert run.forks == [{"type": "tool", "target": "multiply", "result": 4}]


async def test_cache_serves_identical_calls_without_running(system) -> None:  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    @tool()
    def slow_square(x: int) -> int:
        """Square, slowly."""
        calls["n"] += 1
        return x * x

    system.tools.register(slow_square)
    on(system, P.BEFORE_TOOL_EXECUTION,
       lambda c: Cache(f"sq:{c.data['params']['x']}", ttl=60), name="cache")
    first = await system.tools.run("slow_square", {"x": 9})
    second = await system.tools.run("slow_square", {"x": 9})
    third = await system.tools.run("slow_square", {"x": 3})
    assert (first.result, second.result, third.result) == (81, 81, 9)
    assert (first.cached, second.cached) == (False, True) and calls["n"] == 2


async def test_cache_after_stores_the_result(system) -> None:  # type: ignore[no-untyped-def]
    on(system, P.AFTER_TOOL_EXECUTION, lambda c: Cache("k", ttl=60), name="store")
    await system.tools.execute("add", {"a": 1, "b": 1})
    assert system.tools.cache.get("tool:3:add:k") == (True, 2)  # scoped to the tool
    assert (await system.tools.run("add", {"a": 1, "b": 1})).cached  # and served


async def test_skipped_is_ignored(system) -> None:  # type: ignore[no-untyped-def]
    on(system, P.BEFORE_TOOL_EXECUTION, lambda c: Skipped("n/a"), name="s")
    on(system, P.AFTER_TOOL_EXECUTION, lambda c: Skipped("n/a"), name="s2")
    assert await system.tools.execute("add", {"a": 1, "b": 1}) == 2


async def test_after_modified_and_replace_change_the_result(system) -> None:  # type: ignore[no-untyped-def]
    on(system, P.AFTER_TOOL_EXECUTION,
       lambda c: Modified({**c.data, "result": c.data["result"] * 100}), name="m")
    assert await system.tools.execute("add", {"a": 1, "b": 1}) == 200
    system.registry.clear()
    on(system, P.AFTER_TOOL_EXECUTION, lambda c: Replace("replaced"), name="r")
    assert await system.tools.execute("add", {"a": 1, "b": 1}) == "replaced"


async def test_after_cancel_discards_the_result(system) -> None:  # type: ignore[no-untyped-def]
    on(system, P.AFTER_TOOL_EXECUTION, lambda c: Cancel("result leaked a secret"), name="dlp")
    with pytest.raises(OperationCancelled, match="secret"):
        await system.tools.execute("add", {"a": 1, "b": 1})


async def test_after_redirect_returns_the_other_tools_result(system) -> None:  # type: ignore[no-untyped-def]
    on(system, P.AFTER_TOOL_EXECUTION,
       lambda c: Redirect("multiply") if c.data["tool"] == "add" else None, name="r")
    assert await system.tools.execute("add", {"a": 3, "b": 3}) == 9


async def test_error_replace_redirect_and_cancel(system) -> None:  # type: ignore[no-untyped-def]
    on(system, P.TOOL_ERROR, lambda c: Replace({"fallback": True}), name="fb")
    assert await system.tools.execute("fail", {}) == {"fallback": True}
    system.registry.clear()

    @tool()
    def fallback() -> str:
        """A stand-in."""
        return "from the fallback"

    system.tools.register(fallback)
    on(system, P.TOOL_ERROR, lambda c: Redirect("fallback"), name="to-fallback")
    run = await system.tools.run("fail", {})
    assert run.redirected_to == "fallback" and run.result == "from the fallback"
    system.registry.clear()
    on(system, P.TOOL_ERROR, lambda c: Cancel("give up"), name="stop")
    with pytest.raises(OperationCancelled, match="give up") as info:
        await system.tools.execute("fail", {})
    assert isinstance(info.value.__cause__, ToolExecutionError)


# -- validation, discovery, failures -----------------------------------------------------------

async def test_validation_errors_name_the_parameter(system) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ToolValidationError) as info:
        await system.tools.execute("add", {"a": "one", "b": 2})
    assert info.value.path == "params.a" and "integer" in str(info.value)
    with pytest.raises(ToolValidationError, match="required"):
        await system.tools.execute("add", {"a": 1})


async def test_tool_validation_hooks_can_repair_or_reject(system) -> None:  # type: ignore[no-untyped-def]
    def coerce(ctx: HookContext) -> Modified | None:
        if ctx.data["valid"]:
            return None
        fixed = {k: int(v) for k, v in ctx.data["params"].items()}
        return Modified({**ctx.data, "params": fixed})

    on(system, P.TOOL_VALIDATION, coerce, name="coerce")
    assert await system.tools.execute("add", {"a": "20", "b": "22"}) == 42
    system.registry.clear()
    on(system, P.TOOL_VALIDATION, lambda c: Cancel("policy"), name="no")
    with pytest.raises(OperationCancelled):
        await system.tools.execute("add", {"a": 1, "b": 1})


async def test_discovery_hooks(system) -> None:  # type: ignore[no-untyped-def]
    assert [s.name for s in await system.tools.discover()] == ["add", "fail", "multiply"]
    on(system, P.AFTER_TOOL_DISCOVERY,
       lambda c: Modified({**c.data, "tools": [t for t in c.data["tools"] if t != "fail"]}),
       name="hide")
    assert [s.name for s in await system.tools.discover()] == ["add", "multiply"]
    on(system, P.BEFORE_TOOL_DISCOVERY, lambda c: Modified({**c.data, "query": "multi"}),
       name="q")
    assert [s.name for s in await system.tools.discover()] == ["multiply"]
    system.registry.clear()
    on(system, P.BEFORE_TOOL_DISCOVERY, lambda c: Replace(["add"]), name="r")
    assert [s.name for s in await system.tools.discover("x")] == ["add"]
    system.registry.clear()
    on(system, P.BEFORE_TOOL_DISCOVERY, lambda c: Cancel("no"), name="c")
    with pytest.raises(OperationCancelled):
        await system.tools.discover()


async def test_failing_hanging_and_tripping_hooks_never_break_the_tool(system) -> None:  # type: ignore[no-untyped-def]
    def broken(ctx: HookContext) -> None:
        raise RuntimeError("hook bug")

    async def hangs(ctx: HookContext) -> None:
        await asyncio.sleep(10)

    def slow(ctx: HookContext) -> None:
        time.sleep(0.06)  # slower than the 50 ms slow-call threshold: trips after 2

    on(system, P.BEFORE_TOOL_EXECUTION, broken, name="broken")
    on(system, P.BEFORE_TOOL_EXECUTION, hangs, name="hangs", timeout=0.02)
    on(system, P.AFTER_TOOL_EXECUTION, slow, name="slow")
    for _ in range(4):
        assert await system.tools.execute("add", {"a": 1, "b": 1}) == 2
    states = {b.hook: b.state for b in system.executor.breakers()}
    assert states["broken"] == "open" and states["slow"] == "open"
    assert system.executor.failure_count >= 5


async def test_unknown_tools_timeouts_and_bad_results(system) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ToolNotFoundError, match="did you mean 'add'"):
        await system.tools.execute("ad", {})

    @tool(timeout=0.02)
    async def sleepy() -> None:
        """Sleeps."""
        await asyncio.sleep(5)

    @tool()
    def bad_result() -> object:
        """Returns something that is not JSON."""
        return object()

    release = threading.Event()  # the blocking tool ends only after its timeout was seen

    class Blocking(Tool):
        name = "blocking"
        description = "Blocks on a worker thread."
        timeout = 0.05
        blocking = True

        def execute(self, params: dict) -> str:  # type: ignore[type-arg]
            release.wait(30)
            return "late"

    system.tools.register_all([sleepy, bad_result, Blocking()])
    with pytest.raises(ToolTimeoutError):
        await system.tools.execute("sleepy", {})
    try:
        with pytest.raises(ToolTimeoutError):
            await system.tools.execute("blocking", {})
    finally:
        release.set()
    with pytest.raises(ToolExecutionError, match="JSON-safe"):
        await system.tools.execute("bad_result", {})
    with pytest.raises(InvalidValueError, match="already registered"):
        system.tools.register(sleepy)
    system.tools.unregister("sleepy")
    assert "sleepy" not in system.tools


def test_execute_sync_outside_a_loop() -> None:
    from llmspell.runtime import SystemConfig

    sys = System(SystemConfig(store="none"))

    @tool()
    def hello(name: str) -> str:
        """Greets."""
        return f"hello {name}"

    sys.tools.register(hello)
    assert sys.tools.execute_sync("hello", {"name": "you"}) == "hello you"


async def test_events_carry_the_correlation_of_a_parent_context(system, events) -> None:  # type: ignore[no-untyped-def]
    from llmspell.hooks import ComponentId, ComponentType

    parent = HookContext(point=P.BEFORE_AGENT_EXECUTION,
                         component=ComponentId(type=ComponentType.AGENT, name="a"))
    await system.tools.execute("add", {"a": 1, "b": 1}, parent=parent)
    tool_events: list[UniversalEvent] = [e for e in events if e.event_type.startswith("tool.")]
    assert {e.correlation_id for e in tool_events} == {parent.correlation_id}


async def test_secrets_are_masked_in_published_tool_events(system, events) -> None:  # type: ignore[no-untyped-def]
    @tool()
    def login(user: str, password: str) -> dict:  # type: ignore[type-arg]
        """Pretends to log in."""
        return {"user": user, "token": "tok-SECRET"}

    system.tools.register(login)
    result = await system.tools.execute("login", {"user": "ann", "password": "pw-SECRET"})
    assert result["token"] == "tok-SECRET"  # the caller gets the real result
    published = b"".join(e.to_json() for e in events)
    assert b"SECRET" not in published and b"ann" in published


@pytest.mark.parametrize("blocking", [False, True])
async def test_a_tools_own_timeout_error_is_a_failure_not_the_pipelines_timeout(
        blocking: bool) -> None:
    # A TimeoutError the tool raised itself (its own request timed out) was reported as
    # "timed out after 30 s" (ToolTimeoutError) at once, hiding the real error.
    @tool(name="remote", blocking=blocking)
    def remote() -> str:
        """Calls something that times out."""
        raise TimeoutError("upstream read timed out")

    async with System() as system:
        system.tools.register(remote)
        with pytest.raises(ToolExecutionError) as caught:
            await system.tools.run("remote", {})
    assert not isinstance(caught.value, ToolTimeoutError)
    assert "TimeoutError: upstream read timed out" in str(caught.value)


@pytest.mark.parametrize("blocking", [False, True])
async def test_a_tool_past_its_timeout_is_still_a_tool_timeout(blocking: bool) -> None:
    release = threading.Event()

    async def slow_async() -> str:
        """Never answers in time."""
        await asyncio.sleep(60)
        return "late"

    def slow_blocking() -> str:
        """Never answers in time."""
        release.wait(10)
        return "late"

    slow = (tool(name="slow", blocking=True, timeout=0.05)(slow_blocking) if blocking
            else tool(name="slow", timeout=0.05)(slow_async))
    async with System() as system:
        system.tools.register(slow)
        try:
            with pytest.raises(ToolTimeoutError, match=r"timed out after 0\.05 s"):
                await system.tools.run("slow", {})
        finally:
            release.set()


@pytest.mark.parametrize("message", ["bad \udc80 bytes", "x" * 2_000_000])
async def test_a_failure_with_hostile_error_text_is_still_recorded(message: str) -> None:
    # An error whose text held a lone surrogate (undecodable bytes in a server's answer) or
    # was megabytes long raised NotJsonSafeError / EventTooLargeError from publishing the
    # failure: the caller got the wrong error and tool.<name>.failed was never recorded.
    @tool(name="hostile")
    def hostile() -> str:
        """Fails with hostile text."""
        raise RuntimeError(message)

    failed: list[UniversalEvent] = []
    async with System() as system:
        system.tools.register(hostile)
        system.bus.subscribe("tool.hostile.failed", failed.append)
        with pytest.raises(ToolExecutionError) as caught:
            await system.tools.run("hostile", {})
    assert "RuntimeError" in str(caught.value)
    [event] = failed
    text = event.data["error"]
    assert text.encode("utf-8") and len(text) < 10_000
    assert text.startswith("tool 'hostile' failed: RuntimeError: ")


async def test_system_tool_timeout_applies_to_tools_without_their_own() -> None:
    # SystemConfig.tool_timeout was read from files and the environment but never used.
    from llmspell.runtime import SystemConfig

    @tool(name="default_timeout")
    async def default_timeout() -> str:
        """Takes too long for the system's timeout."""
        await asyncio.sleep(60)
        return "late"

    @tool(name="own_timeout", timeout=20)
    async def own_timeout() -> str:
        """Sets its own timeout: the system's does not apply."""
        await asyncio.sleep(0.2)
        return "in time"

    async with System(SystemConfig(store="memory", tool_timeout=0.05)) as system:
        system.tools.register(default_timeout)
        system.tools.register(own_timeout)
        with pytest.raises(ToolTimeoutError, match=r"after 0\.05 s") as caught:
            await system.tools.run("default_timeout", {})
        assert caught.value.hint and "SystemConfig.tool_timeout" in caught.value.hint
        assert (await system.tools.run("own_timeout", {})).result == "in time"


@pytest.mark.parametrize("point", [HookPoint.BEFORE_TOOL_EXECUTION,
                                   HookPoint.AFTER_TOOL_EXECUTION])
async def test_a_result_computed_across_a_cache_clear_is_not_stored(point: HookPoint) -> None:
    # The call read the old data, the cache was cleared (the data changed), then the call
    # finished and stored the old value: it was served from then on.
    source = {"value": "old"}
    reading = asyncio.Event()
    release = asyncio.Event()

    @tool(name="read")
    async def read() -> str:
        """Reads the current value, slowly."""
        value = source["value"]
        reading.set()
        await release.wait()
        return value

    async with System() as system:
        system.tools.register(read)
        system.registry.register(point, lambda c: Cache("k", ttl=60), name="cache")
        first = asyncio.create_task(system.tools.execute("read", {}))
        await reading.wait()
        source["value"] = "new"
        system.tools.cache.clear()
        release.set()
        assert await first == "old"
        reading.clear()
        assert await system.tools.execute("read", {}) == "new"
