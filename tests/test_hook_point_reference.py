"""docs/hook-points.md is checked against the runtime: a real System with a recording hook at
every point is driven through every operation that fires points, and every context seen must
carry exactly the ``ctx.data`` keys (one of the documented variants) and the component type
the page documents for its point. Every point is on the page; every documented variant and
every point the page says the runtime fires is seen; no point the page says is not fired by
the runtime is seen. Then, point by point, a hook returning ``Cancel`` is registered alone
and the operation that fires the point is run again: what happens must be what the page's
``Cancel`` column says.

The page's tables are read like this (the page says so too): the first cell of a row names
the point in backticks; the ``component`` cell starts with the component type in backticks;
the ``data keys`` cell lists one key set per variant, variants separated by ``<br>``, each
an optional ``*label:*`` and the keys in backticks (``*(empty)*`` for no keys,
``*caller-defined*`` when the caller of ``System.report`` chooses them), each key followed by
its type (``str``, ``int or None``, ``list of str``, ``JSON-safe value``, ...: every value
a recording hook sees must be of the documented type); a ``fired by`` cell
containing "not fired by the runtime" marks a point only custom code fires; the ``Cancel``
cell starts with "raises" (``OperationCancelled``), "raises `StateConflictError`",
"ignored", or is "—" (a point the runtime does not fire).
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llmspell.core.errors import (
    AgentError,
    ModelCallCancelledError,
    OperationCancelled,
    StateConflictError,
    ToolExecutionError,
)
from llmspell.hooks import Cancel, HookContext, HookPoint
from llmspell.hooks.context import ComponentId, ComponentType
from llmspell.runtime import (
    PAUSE,
    RECOVER,
    RESUME,
    Branch,
    Conditional,
    Loop,
    Parallel,
    Sequential,
    Step,
    System,
    SystemConfig,
    WorkflowFailedError,
    tool,
)
from llmspell.runtime.providers import ScriptedProvider
from llmspell.runtime.providers.base import Message, ToolSpec
from llmspell.runtime.workflows import (
    BRANCH_SELECTED,
    CONDITION_EVALUATED,
    LOOP_ITERATION_COMPLETE,
    LOOP_ITERATION_START,
    LOOP_TERMINATED,
    PARALLEL_FORK,
    PARALLEL_JOIN,
)

PAGE = Path(__file__).resolve().parent.parent / "docs" / "hook-points.md"

RUNTIME_CUSTOM_POINTS = (PAUSE, RESUME, RECOVER, CONDITION_EVALUATED,
                         BRANCH_SELECTED, LOOP_ITERATION_START, LOOP_ITERATION_COMPLETE,
                         LOOP_TERMINATED, PARALLEL_FORK, PARALLEL_JOIN)
"""The custom points the runtime itself fires (all must be documented)."""


# -- the page ----------------------------------------------------------------------------------
@dataclass
class PointDoc:
    """What the page says about one point."""

    point: str
    component: str | None
    variants: list[frozenset[str]] = field(default_factory=list)
    caller_defined: bool = False
    not_fired: bool = False
    cancel: str | None = None
    types: dict[str, str] = field(default_factory=dict)


_TICK = re.compile(r"`([^`]+)`")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _parse_variants(cell: str, doc: PointDoc) -> None:
    for variant in re.split(r"<br\s*/?>", cell):
        text = variant.strip()
        if not text:
            continue
        if "caller-defined" in text:
            doc.caller_defined = True
            continue
        body = re.sub(r"^\*[^*]*:\*", "", text)
        keys = frozenset(_TICK.findall(body))
        if not keys and "(empty)" not in text:
            raise AssertionError(f"{doc.point}: cannot read the data keys variant {text!r}")
        for key, typ in _KEY_TYPE.findall(body):
            if not typ.strip():
                raise AssertionError(f"{doc.point}: the key {key!r} has no type")
            doc.types.setdefault(key, typ.strip())
        doc.variants.append(keys)


_KEY_TYPE = re.compile(r"`([^`]+)`([^,`]*)")

_SIMPLE_TYPES: dict[str, Callable[[Any], bool]] = {
    "None": lambda v: v is None,
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "dict": lambda v: isinstance(v, dict),
    "list of str": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "list of dict": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
    "any": lambda v: True,
    "JSON-safe value": lambda v: True,
    "any JSON-safe value": lambda v: True,
}


def type_matches(documented: str, value: Any) -> bool:
    """Whether ``value`` is of the documented type (alternatives joined by ``or``)."""
    alternatives = [a.strip() for a in documented.split(" or ")]
    unknown = [a for a in alternatives if a not in _SIMPLE_TYPES]
    if unknown:
        raise AssertionError(f"unknown documented type {unknown} in {documented!r}")
    return any(_SIMPLE_TYPES[a](value) for a in alternatives)


RAISES = "raises"
RAISES_CONFLICT = "raises `StateConflictError`"
RAISES_MODEL = "raises `ModelCallCancelledError`"
IGNORED = "ignored"


def _parse_cancel(cell: str, point: str) -> str | None:
    for verdict in (RAISES_CONFLICT, RAISES_MODEL, RAISES, IGNORED):
        if cell.startswith(verdict):
            return verdict
    if cell == "—":
        return None
    raise AssertionError(f"{point}: cannot read the Cancel cell {cell!r}")


def parse_page(text: str) -> dict[str, PointDoc]:
    """Every row of every table with ``point`` and ``data keys`` columns."""
    docs: dict[str, PointDoc] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.lstrip().startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set("".join(cells)) <= set("-: "):
            continue  # the separator row
        if "point" not in header or "data keys" not in header:
            continue
        row = dict(zip(header, cells, strict=False))
        names = _TICK.findall(row["point"])
        if not names:
            continue
        point = names[0]
        assert point not in docs, f"{point} is documented twice"
        comp = _TICK.findall(row.get("component", ""))
        doc = PointDoc(point=point, component=comp[0] if comp else None)
        doc.not_fired = "not fired by the runtime" in row.get("fired by", "").lower()
        _parse_variants(row["data keys"], doc)
        doc.cancel = _parse_cancel(row.get("`cancel`", "—"), point)
        docs[point] = doc
    return docs


@pytest.fixture(scope="module")
def documented() -> dict[str, PointDoc]:
    return parse_page(PAGE.read_text(encoding="utf-8"))


# -- driving the runtime -----------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """One context a recording hook saw."""

    point: str
    keys: frozenset[str]
    component_type: str
    values: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool()
def explode(message: str = "boom") -> None:
    """Always fails."""
    raise RuntimeError(message)


def _all_points() -> Iterator[str]:
    yield from (str(p) for p in HookPoint)
    yield from (str(p) for p in RUNTIME_CUSTOM_POINTS)


class _Flaky:
    """A provider reply function that fails on its first call and answers afterwards."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, messages: list[Message], tools: list[ToolSpec]) -> str:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("the provider is down")
        return "recovered"


async def _drive_tools_and_agents(system: System) -> None:
    tools = system.tools
    await tools.discover("add")
    assert await tools.execute("add", {"a": 1, "b": 2}) == 3
    with pytest.raises(ToolExecutionError):
        await tools.execute("explode", {})

    provider = ScriptedProvider([
        {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
        "The sum is 5.",
    ])
    helper = system.agents.create("helper", provider=provider, tools=["add"])
    assert (await helper.run("what is 2 + 3?")).output == "The sum is 5."
    await helper.pause()
    await helper.resume()

    flaky = system.agents.create("flaky", provider=ScriptedProvider(_Flaky()), tools=[])
    with pytest.raises(AgentError):
        await flaky.run("hello")
    assert (await flaky.run("hello again")).output == "recovered"  # recovers first


async def _drive_workflows(system: System) -> None:
    failed_once: list[bool] = []

    def flaky_step(ctx: Any) -> str:
        if not failed_once:
            failed_once.append(True)
            raise RuntimeError("first attempt fails")
        return "ok"

    inner = Sequential("inner", [Step("double", fn=lambda ctx: 2 * (ctx.input or 1))])
    seq = Sequential("seq", [
        Step("sum", tool="add", params={"a": 1, "b": 2}),
        Step("ask", agent="helper2", input="add 2 and 3"),
        Step("flaky", fn=flaky_step, on_error="retry", retries=1, backoff=0),
        Step("nested", workflow=inner, input=3),
    ], checkpoint="step", rollback=True)
    result = await seq.run(system)
    assert result.ok, result.errors
    await seq.run(system, workflow_id=result.workflow_id, resume=True)

    cond = Conditional("cond", [
        Branch("big", condition=lambda ctx: ctx.input > 10, steps=[Step("b", fn=lambda c: 1)]),
        Branch("small", condition=lambda ctx: True, steps=[Step("s", fn=lambda c: 2)]),
    ])
    assert (await cond.run(system, 3)).ok

    loop = Loop("loop", [Step("item", fn=lambda ctx: ctx.item)], over=[1, 2])
    assert (await loop.run(system)).ok

    par = Parallel("par", [[Step("p1", fn=lambda c: 1)], [Step("p2", fn=lambda c: 2)]])
    assert (await par.run(system)).ok

    failing = Sequential("failing", [Step("bad", tool="explode", params={})])
    with pytest.raises(WorkflowFailedError):
        await failing.run(system)

    async def hang(ctx: Any) -> None:
        await asyncio.Event().wait()

    slow = Sequential("slow", [Step("hang", fn=hang)], timeout=0.05)
    with pytest.raises(WorkflowFailedError) as info:
        await slow.run(system)
    assert info.value.step is None  # the run-level failure (timeout), not a step's


async def _drive_state_and_sessions(system: System) -> None:
    state = system.state
    await state.set("k", 1)
    assert await state.get("k") == 1
    await state.snapshot()
    with pytest.raises(StateConflictError):
        await state.set("k", 2, expected_version=7)
    assert await state.delete("k")
    state.register_migration(1, lambda values: {**values, "migrated": True})
    assert await state.migrate() == 1

    session = await system.sessions.start("chat", {"user": "u1"})
    await session.set("topic", "hooks")
    await session.save()
    label = await session.checkpoint()
    await session.set("topic", "events")
    await session.restore(label)
    await session.end()
    await system.sessions.delete(session)


async def _drive_system_and_events(system: System) -> None:
    await system.update_config(hook_events=True)
    await system.emit("user.saved", {"id": 1})

    def broken(event: Any) -> None:
        raise RuntimeError("handler bug")

    system.bus.subscribe("user.broken", broken, mode="inline", name="broken-handler")
    system.bus.publish("user.broken", {})
    await asyncio.sleep(0.01)  # some wall time since the last sample, for the CPU share
    assert await system.check_resources(max_rss_mb=0, max_cpu_percent=-1) == [
        "memory_usage_high", "cpu_usage_high"]
    assert await system.check_performance(threshold_ms=0) > 0


async def _run_everything() -> list[Seen]:
    seen: list[Seen] = []

    def record(ctx: HookContext) -> None:
        seen.append(Seen(str(ctx.point), frozenset(ctx.data), ctx.component.type.value,
                         values={k: copy.copy(v) for k, v in ctx.data.items()}))

    system = System(SystemConfig(store="memory", breaker="off"))
    for point in _all_points():
        system.registry.register(point, record, name="recorder")
    await system.start()
    system.tools.register_all([add, explode])
    system.agents.create("helper2", provider=ScriptedProvider(["5"]))
    try:
        await _drive_tools_and_agents(system)
        await _drive_workflows(system)
        await _drive_state_and_sessions(system)
        await _drive_system_and_events(system)
    finally:
        await system.shutdown()
    return seen


@pytest.fixture(scope="module")
def seen() -> list[Seen]:
    return asyncio.run(_run_everything())


# -- the checks --------------------------------------------------------------------------------
def test_every_point_is_on_the_page(documented: dict[str, PointDoc]) -> None:
    missing = [p for p in _all_points() if p not in documented]
    assert not missing, f"docs/hook-points.md does not document {missing}"
    assert len([p for p in documented if not p.startswith("custom:")]) == len(HookPoint)


def test_fired_points_carry_exactly_the_documented_keys(
        seen: list[Seen], documented: dict[str, PointDoc]) -> None:
    wrong = sorted({
        f"{s.point}: saw {sorted(s.keys)}, the page says "
        f"{[sorted(v) for v in documented[s.point].variants]}"
        for s in seen if s.point in documented and s.keys not in documented[s.point].variants
    })
    assert not wrong, "\n".join(wrong)


def test_fired_points_carry_values_of_the_documented_types(
        seen: list[Seen], documented: dict[str, PointDoc]) -> None:
    wrong = sorted({
        f"{s.point}: {key} is {type(value).__name__} {str(value)[:40]!r}, the page says "
        f"{documented[s.point].types[key]!r}"
        for s in seen if s.point in documented and not documented[s.point].caller_defined
        for key, value in s.values.items() if key in documented[s.point].types
        and not type_matches(documented[s.point].types[key], value)
    })
    assert not wrong, "\n".join(wrong)


def test_every_documented_key_has_a_type(documented: dict[str, PointDoc]) -> None:
    untyped = sorted(f"{p}: {key}" for p, d in documented.items()
                     for variant in d.variants for key in variant if key not in d.types)
    assert not untyped, untyped


def test_fired_points_have_the_documented_component_type(
        seen: list[Seen], documented: dict[str, PointDoc]) -> None:
    wrong = sorted({f"{s.point}: component type {s.component_type!r}, the page says "
                    f"{documented[s.point].component!r}"
                    for s in seen if s.point in documented
                    and s.component_type != documented[s.point].component})
    assert not wrong, "\n".join(wrong)


def test_every_documented_variant_and_fired_point_is_seen(
        seen: list[Seen], documented: dict[str, PointDoc]) -> None:
    fired = {s.point for s in seen}
    observed = {(s.point, s.keys) for s in seen}
    for point, doc in documented.items():
        if doc.not_fired:
            assert point not in fired, (
                f"{point} fired, but the page says the runtime does not fire it")
            continue
        assert point in fired, f"the page says the runtime fires {point}; it did not fire"
        for variant in doc.variants:
            assert (point, variant) in observed, (
                f"{point}: the documented variant {sorted(variant)} was never seen")


def test_caller_defined_points_carry_the_callers_details(
        documented: dict[str, PointDoc]) -> None:
    """``System.report`` hands the caller's details over as ``ctx.data``, unchanged."""
    reported = [p for p, d in documented.items() if d.caller_defined]
    assert HookPoint.RESOURCE_LIMIT_EXCEEDED in reported
    assert HookPoint.SECURITY_VIOLATION in reported

    async def run() -> dict[str, tuple[dict[str, Any], ComponentId]]:
        got: dict[str, tuple[dict[str, Any], ComponentId]] = {}
        async with System(SystemConfig(store="memory")) as system:
            for point in reported:
                system.registry.register(
                    point, lambda ctx: got.__setitem__(str(ctx.point), (ctx.data, ctx.component)),
                    name="recorder")
            for point in reported:
                component = ComponentId(type=ComponentType.CUSTOM, name="quota")
                await system.report(HookPoint(point), component, {"what": point, "n": 1})
        return got

    got = asyncio.run(run())
    for point in reported:
        data, component = got[point]
        assert data == {"what": point, "n": 1}
        assert component.name == "quota"


# -- what a Cancel does, point by point ----------------------------------------------------------
Trigger = Callable[[System], Awaitable[object]]


def _helper(system: System) -> Any:
    return system.agents.create("helper", provider=ScriptedProvider(["hi"]))


async def _tool_fails(system: System) -> None:
    with suppress(ToolExecutionError):
        await system.tools.execute("explode", {})


async def _agent_fails(system: System) -> Any:
    agent = system.agents.create("flaky", provider=ScriptedProvider(_Flaky()))
    with suppress(AgentError):
        await agent.run("hello")
    return agent


async def _agent_fails_raising(system: System) -> None:
    """As _agent_fails, but a Cancel's error is let through (to be judged)."""
    agent = system.agents.create("flaky", provider=ScriptedProvider(_Flaky()))
    try:
        await agent.run("hello")
    except AgentError as exc:
        if isinstance(exc.__cause__, ModelCallCancelledError):
            raise


async def _agent_recovers(system: System) -> None:
    await (await _agent_fails(system)).run("hello again")


async def _agent_shuts_down(system: System) -> None:
    agent = _helper(system)
    await agent.initialize()
    await agent.shutdown()


async def _agent_pauses(system: System, resume: bool = False) -> None:
    agent = _helper(system)
    await agent.initialize()
    await agent.pause()
    if resume:
        await agent.resume()


def _two_steps(**options: Any) -> Sequential:
    return Sequential("two", [Step("a", fn=lambda c: 1), Step("b", fn=lambda c: 2)], **options)


async def _rolls_back(system: System) -> None:
    failed: list[bool] = []

    def flaky(ctx: Any) -> int:
        if not failed:
            failed.append(True)
            raise RuntimeError("once")
        return 1

    await Sequential("rb", [Step("f", fn=flaky, on_error="retry", retries=1, backoff=0)],
                     rollback=True).run(system)


async def _workflow_fails(system: System) -> None:
    with suppress(WorkflowFailedError):
        await Sequential("bad", [Step("x", tool="explode", params={})]).run(system)


async def _conditional(system: System) -> None:
    await Conditional("c", [Branch("yes", condition=lambda c: True,
                                   steps=[Step("s", fn=lambda c: 1)])]).run(system)


async def _loop(system: System) -> None:
    await Loop("l", [Step("s", fn=lambda c: c.item)], over=[1]).run(system)


async def _parallel(system: System) -> None:
    await Parallel("p", [[Step("s", fn=lambda c: 1)]]).run(system)


async def _state_read(system: System) -> None:
    await system.state.set("k", 1)
    await system.state.get("k")


async def _state_conflict(system: System) -> None:
    await system.state.set("k", 1)
    await system.state.set("k", 2, expected_version=7)


async def _migrate(system: System) -> None:
    system.state.register_migration(1, lambda values: values)
    await system.state.migrate()


async def _session(system: System, *then: str) -> None:
    session = await system.sessions.start("s")
    for step in then:
        if step == "restore":
            await session.restore(await session.checkpoint("c"))
        else:
            await getattr(session, step)()


async def _session_deleted(system: System) -> None:
    session = await system.sessions.start("s")
    await session.end()
    await system.sessions.delete(session)


async def _handler_fails(system: System) -> None:
    def broken(event: Any) -> None:
        raise RuntimeError("handler bug")

    system.bus.subscribe("user.broken", broken, mode="inline", name="broken-handler")
    system.bus.publish("user.broken", {})


async def _slow_hook(system: System) -> None:
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION, lambda ctx: None, name="probe")
    await system.tools.execute("add", {"a": 1, "b": 2})
    await system.check_performance(threshold_ms=0)


_RUN_HELPER: Trigger = lambda s: _helper(s).run("hello")  # noqa: E731
_RUN_TWO: Trigger = lambda s: _two_steps().run(s)  # noqa: E731
_ADD: Trigger = lambda s: s.tools.execute("add", {"a": 1, "b": 2})  # noqa: E731


async def _check_resources(system: System) -> None:
    await asyncio.sleep(0.01)  # some wall time since the last sample, for the CPU share
    await system.check_resources(max_rss_mb=0, max_cpu_percent=-1)


_EMIT: Trigger = lambda s: s.emit("user.saved", {"id": 1})  # noqa: E731

TRIGGERS: dict[str, Trigger] = {
    HookPoint.BEFORE_TOOL_DISCOVERY: lambda s: s.tools.discover("add"),
    HookPoint.AFTER_TOOL_DISCOVERY: lambda s: s.tools.discover("add"),
    HookPoint.TOOL_VALIDATION: _ADD,
    HookPoint.BEFORE_TOOL_EXECUTION: _ADD,
    HookPoint.AFTER_TOOL_EXECUTION: _ADD,
    HookPoint.TOOL_ERROR: _tool_fails,
    HookPoint.BEFORE_AGENT_INIT: _RUN_HELPER,
    HookPoint.AFTER_AGENT_INIT: _RUN_HELPER,
    HookPoint.BEFORE_AGENT_EXECUTION: _RUN_HELPER,
    HookPoint.AFTER_AGENT_EXECUTION: _RUN_HELPER,
    HookPoint.AGENT_ERROR: _agent_fails,
    HookPoint.BEFORE_AGENT_SHUTDOWN: _agent_shuts_down,
    HookPoint.AFTER_AGENT_SHUTDOWN: _agent_shuts_down,
    PAUSE: _agent_pauses,
    RESUME: lambda s: _agent_pauses(s, resume=True),
    RECOVER: _agent_recovers,
    HookPoint.BEFORE_MODEL_CALL: _RUN_HELPER,
    HookPoint.AFTER_MODEL_CALL: _RUN_HELPER,
    HookPoint.MODEL_CALL_ERROR: _agent_fails_raising,
    HookPoint.BEFORE_WORKFLOW_START: _RUN_TWO,
    HookPoint.WORKFLOW_STAGE_TRANSITION: _RUN_TWO,
    HookPoint.BEFORE_WORKFLOW_STAGE: _RUN_TWO,
    HookPoint.AFTER_WORKFLOW_STAGE: _RUN_TWO,
    HookPoint.AFTER_WORKFLOW_COMPLETE: _RUN_TWO,
    HookPoint.WORKFLOW_CHECKPOINT: lambda s: _two_steps(checkpoint="step").run(s),
    HookPoint.WORKFLOW_ROLLBACK: _rolls_back,
    HookPoint.WORKFLOW_ERROR: _workflow_fails,
    CONDITION_EVALUATED: _conditional,
    BRANCH_SELECTED: _conditional,
    LOOP_ITERATION_START: _loop,
    LOOP_ITERATION_COMPLETE: _loop,
    LOOP_TERMINATED: _loop,
    PARALLEL_FORK: _parallel,
    PARALLEL_JOIN: _parallel,
    HookPoint.BEFORE_STATE_READ: _state_read,
    HookPoint.AFTER_STATE_READ: _state_read,
    HookPoint.BEFORE_STATE_WRITE: lambda s: s.state.set("k", 1),
    HookPoint.AFTER_STATE_WRITE: lambda s: s.state.set("k", 1),
    HookPoint.STATE_CONFLICT: _state_conflict,
    HookPoint.STATE_MIGRATION: _migrate,
    HookPoint.SESSION_START: _session,
    HookPoint.SESSION_SAVE: lambda s: _session(s, "save"),
    HookPoint.SESSION_CHECKPOINT: lambda s: _session(s, "checkpoint"),
    HookPoint.SESSION_RESTORE: lambda s: _session(s, "restore"),
    HookPoint.SESSION_END: lambda s: _session(s, "end"),
    HookPoint.SESSION_DELETE: _session_deleted,
    HookPoint.SYSTEM_STARTUP: lambda s: s.start(),
    HookPoint.SYSTEM_SHUTDOWN: lambda s: s.shutdown(),
    HookPoint.CONFIGURATION_CHANGE: lambda s: s.update_config(hook_events=True),
    HookPoint.BEFORE_EVENT_EMIT: _EMIT,
    HookPoint.AFTER_EVENT_EMIT: _EMIT,
    HookPoint.EVENT_HANDLER_ERROR: _handler_fails,
    HookPoint.PERFORMANCE_THRESHOLD_EXCEEDED: _slow_hook,
    HookPoint.MEMORY_USAGE_HIGH: _check_resources,
    HookPoint.CPU_USAGE_HIGH: _check_resources,
}
"""Per point the runtime fires: an operation that fires it once or more (and swallows the
errors the operation raises without a Cancel)."""


async def _cancel_at(point: str) -> tuple[str, bool]:
    """What a Cancel at ``point`` does to its trigger, and whether the point fired."""
    fired: list[str] = []

    def cancel(ctx: HookContext) -> Cancel:
        fired.append(str(ctx.point))
        return Cancel("probe")

    system = System(SystemConfig(store="memory", breaker="off"))
    system.registry.register(point, cancel, name="canceller")
    system.tools.register_all([add, explode])
    verdict = IGNORED
    try:
        if point != HookPoint.SYSTEM_STARTUP:
            await system.start()
        await TRIGGERS[point](system)
    except OperationCancelled as exc:
        assert exc.point == point, f"{point}: cancelled at {exc.point} instead"
        verdict = RAISES
    except StateConflictError:
        verdict = RAISES_CONFLICT
    except AgentError as exc:  # a model call cancelled inside an agent: a failed step
        if not isinstance(exc.__cause__, ModelCallCancelledError):
            raise
        verdict = RAISES_MODEL
    finally:
        with suppress(OperationCancelled):
            await system.shutdown()
    return verdict, bool(fired)


def test_cancel_does_what_the_page_says(documented: dict[str, PointDoc]) -> None:
    probed = {p: d.cancel for p, d in documented.items() if d.cancel is not None}
    assert set(probed) == set(TRIGGERS), "every point the runtime fires has a Cancel cell"

    async def run() -> list[str]:
        wrong = []
        for point, expected in probed.items():
            verdict, fired = await _cancel_at(point)
            if not fired:
                wrong.append(f"{point}: did not fire")
            elif verdict != expected:
                wrong.append(f"{point}: a Cancel {verdict}, the page says {expected}")
        return wrong

    wrong = asyncio.run(run())
    assert not wrong, "\n".join(wrong)


def test_the_page_reader_reads_variants_and_flags() -> None:
    page = (
        "| point | fired by | component | data keys | `Cancel` |\n|---|---|---|---|---|\n"
        "| `a_point` | tools | `tool` | *set:* `x` str, `y` int or None<br>*delete:* `x` str "
        "| raises (x) |\n"
        "| `b_point` | **Not fired by the runtime.** | *caller's* | *caller-defined* | — |\n"
        "| `c_point` | system | `system` | *(empty)* | ignored |\n"
    )
    docs = parse_page(page)
    assert docs["a_point"].variants == [frozenset({"x", "y"}), frozenset({"x"})]
    assert docs["a_point"].component == "tool"
    assert docs["a_point"].types == {"x": "str", "y": "int or None"}
    assert type_matches("int or None", None) and not type_matches("int", True)
    assert docs["b_point"].not_fired and docs["b_point"].caller_defined
    assert docs["b_point"].variants == []
    assert docs["c_point"].variants == [frozenset()]
    assert [docs[p].cancel for p in ("a_point", "b_point", "c_point")] == [
        "raises", None, "ignored"]
    with pytest.raises(AssertionError):
        parse_page(page.replace("*(empty)*", "nothing"))
