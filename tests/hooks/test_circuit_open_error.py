"""An open circuit breaker's denial reaches callers as ``CircuitOpenError``: a subclass of
``OperationCancelledError`` (so every existing ``except`` still catches it) that tells an
outage from a policy decision without parsing the reason.

The denial is marked on the ``Cancel`` result (``breaker``), which every path that turns a
``Cancel`` into an error reads: the executor's own ``raise_if_cancelled``, tools, agents,
model calls, workflows, state, sessions, events, configuration and the pydantic-ai adapter.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import (
    AgentError,
    CircuitOpenError,
    HookError,
    LlmspellError,
    ModelCallCancelledError,
    OperationCancelled,
    OperationCancelledError,
)
from llmspell.events import UniversalEvent
from llmspell.hooks import (
    BreakerConfig,
    Cancel,
    ComponentId,
    ComponentType,
    HookContext,
    HookExecutor,
    HookPoint,
    HookRegistry,
)
from llmspell.hooks.result import (
    result_from_dict,
    result_from_json,
    result_to_dict,
    result_to_json,
)
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers.base import Message
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.workflows import Sequential, Step

P = HookPoint
SRC = Path(__file__).resolve().parents[2] / "src" / "llmspell"


@tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool()
async def fail(message: str = "boom") -> None:
    """Always fails."""
    raise RuntimeError(message)


@pytest.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    sys.tools.register_all([add, fail])
    yield sys
    await sys.shutdown()


def outage(ctx: HookContext) -> Cancel:
    """Denies as an open breaker does: a Cancel that names the breaker."""
    return Cancel("breaker open: the ledger is down", breaker="ledger")


def refusal(ctx: HookContext) -> Cancel:
    """Denies as a policy does: a plain Cancel."""
    return Cancel("not allowed")


# -- the class ------------------------------------------------------------------------------


def test_circuit_open_error_is_an_operation_cancelled_error() -> None:
    assert CircuitOpenError.__mro__[1:] == OperationCancelledError.__mro__
    assert issubclass(CircuitOpenError, OperationCancelled)
    assert issubclass(CircuitOpenError, HookError) and issubclass(CircuitOpenError,
                                                                  LlmspellError)
    error = CircuitOpenError(P.BEFORE_TOOL_EXECUTION, "breaker open: guard", "guard")
    assert (error.point, error.reason, error.hook, error.breaker) == (
        "before_tool_execution", "breaker open: guard", "guard", "guard")
    assert error.hint is not None and "open_duration" in error.hint
    assert error.message == ("hook 'guard' cancelled the operation at "
                             "'before_tool_execution': breaker open: guard")
    named = CircuitOpenError("p", "r", "guard", breaker="ledger")
    assert named.breaker == "ledger" and "'ledger'" in str(named)
    assert OperationCancelledError("p", "r", "h").breaker is None


def test_cancelled_error_chooses_the_class_from_the_cancel() -> None:
    from llmspell.hooks import cancelled_error

    plain = cancelled_error("p", Cancel("no"), "guard")
    assert type(plain) is OperationCancelledError
    assert (plain.point, plain.reason, plain.hook) == ("p", "no", "guard")
    outage_error = cancelled_error("p", Cancel("down", breaker="guard"), "guard")
    assert type(outage_error) is CircuitOpenError
    assert (outage_error.reason, outage_error.hook, outage_error.breaker) == (
        "down", "guard", "guard")


# -- the Cancel result ---------------------------------------------------------------------


def test_cancel_breaker_field_round_trips_and_a_plain_cancel_encodes_as_before() -> None:
    assert Cancel("no").breaker is None
    assert result_to_json(Cancel("no")) == b'{"type":"cancel","reason":"no"}'
    marked = Cancel("down", breaker="guard")
    assert result_to_dict(marked) == {"type": "cancel", "reason": "down", "breaker": "guard"}
    assert result_from_json(result_to_json(marked)) == marked
    assert result_from_dict(result_to_dict(marked)) == marked
    # A peer that does not know the field still reads the reason, and an old payload
    # (no field) decodes to an unmarked Cancel.
    assert result_from_json(b'{"type":"cancel","reason":"no"}') == Cancel("no")


@pytest.mark.parametrize("bad", ["", 3, b"guard"])
def test_cancel_breaker_must_be_a_non_empty_str(bad: object) -> None:
    from llmspell.errors import InvalidValueError, SerializationError

    with pytest.raises(InvalidValueError, match="Cancel\\(breaker\\)"):
        Cancel("down", breaker=bad)  # type: ignore[arg-type]
    with pytest.raises(SerializationError):
        result_from_dict({"type": "cancel", "reason": "down", "breaker": bad})


# -- the executor ---------------------------------------------------------------------------


def _ctx(point: str = P.BEFORE_TOOL_EXECUTION) -> HookContext:
    return HookContext(point=point,
                       component=ComponentId(type=ComponentType.TOOL, name="t"), data={})


def _broken(ctx: HookContext) -> None:
    raise RuntimeError("guard is down")


def test_executor_marks_an_open_breakers_denial_and_raises_circuit_open_error() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry, breaker=BreakerConfig(failure_threshold=2,
                                                           open_duration=60))
    registry.register(P.BEFORE_TOOL_EXECUTION, _broken, name="guard",
                      error_policy="fail_closed")
    for _ in range(2):  # the hook fails: fail-closed denies, as a plain cancellation
        failed = executor.execute_sync(_ctx())
        assert failed.cancelled and not failed.circuit_open
        assert isinstance(failed.result, Cancel) and failed.result.breaker is None
        with pytest.raises(OperationCancelledError) as first:
            failed.raise_if_cancelled(P.BEFORE_TOOL_EXECUTION)
        assert type(first.value) is OperationCancelledError
    denied = executor.execute_sync(_ctx())  # the breaker is open: the hook is not called
    assert executor.failure_count == 2
    assert denied.cancelled and denied.circuit_open and denied.decided_by == "guard"
    result = denied.result
    assert isinstance(result, Cancel) and result.breaker == "guard"
    assert result.reason.startswith("breaker open: hook 'guard'")
    with pytest.raises(CircuitOpenError) as caught:
        denied.raise_if_cancelled(P.BEFORE_TOOL_EXECUTION)
    assert (caught.value.hook, caught.value.breaker) == ("guard", "guard")
    assert caught.value.reason.startswith("breaker open: hook 'guard'")


def test_a_hooks_own_cancel_is_not_circuit_open() -> None:
    registry = HookRegistry()
    executor = HookExecutor(registry)
    registry.register(P.BEFORE_TOOL_EXECUTION, refusal, name="policy",
                      error_policy="fail_closed")
    outcome = executor.execute_sync(_ctx())
    assert outcome.cancelled and not outcome.circuit_open
    with pytest.raises(OperationCancelledError) as caught:
        outcome.raise_if_cancelled(P.BEFORE_TOOL_EXECUTION)
    assert type(caught.value) is OperationCancelledError


# -- a real open breaker through the runtime -----------------------------------------------


async def test_tool_call_denied_by_an_open_breaker_raises_circuit_open_error() -> None:
    events: list[UniversalEvent] = []
    async with System(SystemConfig(store="memory", breaker="default")) as system:
        system.tools.register(add)
        system.bus.subscribe("tool.**", events.append)
        system.registry.register(P.BEFORE_TOOL_EXECUTION, _broken, name="guard",
                                 error_policy="fail_closed")
        for _ in range(3):  # the default breaker opens after 3 failures
            with pytest.raises(OperationCancelledError) as failing:
                await system.tools.execute("add", {"a": 1, "b": 2})
            assert type(failing.value) is OperationCancelledError
        with pytest.raises(CircuitOpenError) as caught:
            await system.tools.execute("add", {"a": 1, "b": 2})
    assert caught.value.point == P.BEFORE_TOOL_EXECUTION
    assert (caught.value.hook, caught.value.breaker) == ("guard", "guard")
    assert caught.value.reason.startswith("breaker open: hook 'guard'")
    failed = [e.data["error_type"] for e in events if e.event_type == "tool.add.failed"]
    assert failed[-1] == "CircuitOpenError"


# -- every path that turns a Cancel into an error ------------------------------------------


def _pipeline() -> Sequential:
    return Sequential("pipeline", [
        Step("one", tool="add", params={"a": 1, "b": 2}),
        Step("two", fn=lambda ctx: "done"),
    ])


Action = Callable[[System], Awaitable[Any]]


async def _tool(system: System) -> Any:
    return await system.tools.execute("add", {"a": 1, "b": 2})


async def _failing_tool(system: System) -> Any:
    return await system.tools.execute("fail", {})


async def _discover(system: System) -> Any:
    return await system.tools.discover()


async def _agent(system: System) -> Any:
    return await system.agents.create("a", provider=ScriptedProvider(["hi"])).run("q")


async def _agent_init(system: System) -> Any:
    return await system.agents.create("a", provider=ScriptedProvider(["hi"])).initialize()


async def _workflow(system: System) -> Any:
    return await _pipeline().run(system)


async def _state_write(system: System) -> Any:
    return await system.state.set("k", 1)


async def _state_read(system: System) -> Any:
    return await system.state.get("k")


async def _session(system: System) -> Any:
    return await system.sessions.start("s")


async def _emit(system: System) -> Any:
    return await system.emit("custom.thing", {"x": 1})


async def _config(system: System) -> Any:
    return await system.update_config(hook_events=True)


PATHS: list[tuple[str, Action]] = [
    (P.BEFORE_TOOL_EXECUTION, _tool),
    (P.TOOL_VALIDATION, _tool),
    (P.AFTER_TOOL_EXECUTION, _tool),
    (P.TOOL_ERROR, _failing_tool),
    (P.BEFORE_TOOL_DISCOVERY, _discover),
    (P.BEFORE_AGENT_EXECUTION, _agent),
    (P.BEFORE_AGENT_INIT, _agent_init),
    (P.BEFORE_WORKFLOW_START, _workflow),
    (P.BEFORE_WORKFLOW_STAGE, _workflow),
    (P.AFTER_WORKFLOW_STAGE, _workflow),
    (P.WORKFLOW_STAGE_TRANSITION, _workflow),
    (P.AFTER_WORKFLOW_COMPLETE, _workflow),
    (P.BEFORE_STATE_WRITE, _state_write),
    (P.BEFORE_STATE_READ, _state_read),
    (P.SESSION_START, _session),
    (P.BEFORE_EVENT_EMIT, _emit),
    (P.CONFIGURATION_CHANGE, _config),
]


@pytest.mark.parametrize(("point", "action"), PATHS, ids=[str(p) for p, _ in PATHS])
async def test_each_path_raises_circuit_open_error_for_a_breaker_denial(
        system: System, point: str, action: Action) -> None:
    system.registry.register(point, outage, name="outage")
    with pytest.raises(OperationCancelledError) as caught:
        await action(system)
    assert type(caught.value) is CircuitOpenError
    assert caught.value.breaker == "ledger" and caught.value.hook == "outage"
    assert caught.value.reason == "breaker open: the ledger is down"
    assert caught.value.point == point


@pytest.mark.parametrize(("point", "action"), PATHS, ids=[str(p) for p, _ in PATHS])
async def test_each_path_raises_a_plain_cancellation_for_a_hooks_own_cancel(
        system: System, point: str, action: Action) -> None:
    system.registry.register(point, refusal, name="policy")
    with pytest.raises(OperationCancelledError) as caught:
        await action(system)
    assert type(caught.value) is OperationCancelledError
    assert caught.value.breaker is None and caught.value.hook == "policy"


async def test_workflow_error_point_raises_circuit_open_error(system: System) -> None:
    failing = Sequential("failing", [Step("bad", tool="fail", params={})])
    system.registry.register(P.WORKFLOW_ERROR, outage, name="outage")
    with pytest.raises(CircuitOpenError) as caught:
        await failing.run(system)
    assert caught.value.point == P.WORKFLOW_ERROR and caught.value.breaker == "ledger"


async def test_session_state_write_raises_circuit_open_error(
        system: System) -> None:
    session = await system.sessions.start("s")
    system.registry.register(P.BEFORE_STATE_WRITE, outage, name="outage")
    with pytest.raises(CircuitOpenError):
        await session.set("k", 1)


async def test_model_call_denied_by_an_open_breaker_names_the_breaker(
        system: System) -> None:
    system.registry.register(P.BEFORE_MODEL_CALL, outage, name="outage")
    provider = ScriptedProvider(["hi"])
    with pytest.raises(ModelCallCancelledError) as direct:
        await system.models.call(provider, [Message(role="user", content="hi")])
    assert direct.value.breaker == "ledger" and direct.value.circuit_open
    assert direct.value.hint is not None and "'ledger'" in direct.value.hint
    assert isinstance(direct.value.__cause__, CircuitOpenError)
    # Inside an agent it stays a failed step (AgentError), its cause naming the breaker.
    agent = system.agents.create("a", provider=provider)
    with pytest.raises(AgentError) as in_agent:
        await agent.run("q")
    cause = in_agent.value.__cause__
    assert isinstance(cause, ModelCallCancelledError) and cause.breaker == "ledger"
    assert provider.calls == []


async def test_model_call_refused_by_a_hook_is_not_circuit_open(system: System) -> None:
    system.registry.register(P.BEFORE_MODEL_CALL, refusal, name="policy")
    with pytest.raises(ModelCallCancelledError) as caught:
        await system.models.call(ScriptedProvider(["hi"]),
                                 [Message(role="user", content="hi")])
    assert caught.value.breaker is None and not caught.value.circuit_open
    assert caught.value.hint is None


def test_no_site_builds_a_cancellation_from_a_cancel_by_hand() -> None:
    """Every Cancel becomes an error through ``cancelled_error`` (or
    ``model_call_cancelled_error``), so none can forget the breaker mark."""
    direct = re.compile(r"(OperationCancelled(?:Error)?|ModelCallCancelledError)\(")
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in ("core/errors.py", "hooks/result.py"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if direct.search(line) and "class " not in line:
                found.append(f"{rel}:{number}: {line.strip()}")
    assert found == []




# -- names elsewhere ------------------------------------------------------------------------


def test_retry_never_retries_an_open_breakers_denial() -> None:
    from llmspell.builtin.retry import DEFAULT_NEVER_RETRY_ON, RetryHook

    assert "CircuitOpenError" in DEFAULT_NEVER_RETRY_ON
    assert not RetryHook().is_retryable("CircuitOpenError", "breaker open: hook 'g' ...")


async def test_viewer_shows_a_breaker_denial_as_blocked() -> None:
    from llmspell.viewer.summary import Summary

    seen: list[UniversalEvent] = []
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(add)
        system.bus.subscribe("**", seen.append)
        system.registry.register(P.BEFORE_TOOL_EXECUTION, outage, name="outage")
        agent = system.agents.create("helper", tools=["add"], provider=ScriptedProvider([
            {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]}, "5"]))
        await agent.run("2 + 3?")  # the denied call is answered to the model
    assert any(e.data.get("error_type") == "CircuitOpenError" for e in seen
               if e.event_type == "tool.add.failed")
    summary = Summary()
    for event in seen:
        summary.observe(event)
    (run_id,) = summary.runs
    run = summary.run(run_id)
    assert run is not None
    tools = [step for step in run["steps"] if step["kind"] == "tool"]
    assert [step["status"] for step in tools] == ["blocked"]


# -- the pydantic-ai adapter ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_pydantic_ai_adapter_raises_circuit_open_error(system: System,
                                                             stream: bool) -> None:
    pytest.importorskip("pydantic_ai")
    from tests.integrations.conftest_pydantic_ai import calc_agent

    plan = [[("add", {"a": 2, "b": 3})]]

    async def run(**options: Any) -> Any:
        agent = calc_agent(system, plan, **options)
        if stream:
            async with agent.run_stream("go") as result:
                return await result.get_output()
        return (await agent.run("go")).output

    for point in (P.BEFORE_AGENT_EXECUTION, P.BEFORE_TOOL_EXECUTION, P.TOOL_VALIDATION):
        handle = system.registry.register(point, outage, name="outage")
        with pytest.raises(CircuitOpenError) as caught:
            await run(tool_cancel="raise")
        assert caught.value.breaker == "ledger" and caught.value.point == point
        system.registry.unregister(handle)
    system.registry.register(P.BEFORE_MODEL_CALL, outage, name="outage")
    with pytest.raises(ModelCallCancelledError) as model:
        await run()
    assert model.value.breaker == "ledger" and model.value.circuit_open


# -- scripts ----------------------------------------------------------------------------


async def test_scripts_see_the_error_type(system: System) -> None:
    from llmspell.scripting import ScriptHost

    system.registry.register(P.BEFORE_TOOL_EXECUTION, outage, name="outage")
    host = ScriptHost(system, time_budget=5)
    try:
        js = await host.run_js_async("""
try { await Tool.invoke("add", {a: 1, b: 2}); return "ran"; }
catch (e) { return e.name + " | " + e.message; }""")
        lua = await host.run_lua_async("""
local ok, err = pcall(function() return Tool.invoke("add", {a = 1, b = 2}) end)
return tostring(err)""")
    finally:
        host.close()
    assert js.startswith("CircuitOpenError | hook 'outage' cancelled the operation")
    assert "breaker open: the ledger is down" in js
    assert "breaker open: the ledger is down" in lua and "circuit breaker 'ledger'" in lua
