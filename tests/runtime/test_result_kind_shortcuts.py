"""The hot paths test ``type(result) is Continue`` before their isinstance chains (an
isinstance miss against a msgspec Struct class is CPython's slow path). The chains stay the
fallback: a result of a *subclass* of a result class (which a composite hands on, or a
dispatch wrapper may produce) is still honoured as its base class, and a subclass of
``Continue`` still goes on."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.errors import OperationCancelled
from llmspell.hooks import (
    CONTINUE,
    ChainResult,
    ComponentId,
    ComponentType,
    HookContext,
    HookPoint,
    HookResult,
    Modified,
    ParallelHook,
    SequentialHook,
    Skipped,
    VotingHook,
)
from llmspell.hooks.result import Cancel, Continue, Replace
from llmspell.runtime import System, SystemConfig, tool

P = HookPoint


class MyContinue(Continue, frozen=True):
    """A subclass of Continue: not the exact class the shortcut tests for."""


class MyModified(Modified, frozen=True):
    pass


class MyReplace(Replace, frozen=True):
    pass


class MyCancel(Cancel, frozen=True):
    pass


class MySkipped(Skipped, frozen=True):
    pass


def answering(system: System, answers: dict[str, HookResult],
              monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``system.dispatch`` answer ``answers[point]`` (else Continue), with no context,
    and register a no-op hook at each of those points (so they count as hooked)."""
    for point in answers:
        system.registry.register(point, lambda ctx: None, name=f"noop-{point}")

    async def dispatch(point: str, component: ComponentId, data: dict[str, Any],
                       **_: Any) -> tuple[ChainResult, HookContext | None]:
        return ChainResult(result=answers.get(point, CONTINUE), decided_by="sub"), None

    monkeypatch.setattr(system, "dispatch", dispatch)


@pytest.fixture
async def system() -> Any:
    async with System(SystemConfig(store="memory")) as sys_:
        yield sys_


async def test_state_hooks_answering_subclasses_are_honoured_as_their_base(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    answering(system, {P.BEFORE_STATE_WRITE: MyReplace(7), P.AFTER_STATE_WRITE: MyContinue(),
                       P.BEFORE_STATE_READ: MyContinue(),
                       P.AFTER_STATE_READ: MyReplace("***")}, monkeypatch)
    entry = await system.state.set("k", 1)
    assert entry.value == 7  # the Replace subclass changed what was written
    assert await system.state.get("k") == "***"  # and what is read
    assert await system.state.snapshot() == {"k": "***"}


async def test_state_read_answered_before_by_a_replace_subclass(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    answering(system, {P.BEFORE_STATE_READ: MyReplace("early")}, monkeypatch)
    assert await system.state.get("absent") == "early"


async def test_a_cancel_subclass_still_vetoes_a_state_write(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    answering(system, {P.BEFORE_STATE_WRITE: MyCancel("no")}, monkeypatch)
    with pytest.raises(OperationCancelled, match="no"):
        await system.state.set("k", 1)
    assert await system.state.entry("k") is None


async def test_a_continue_subclass_changes_nothing(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    answering(system, {point: MyContinue() for point in (
        P.BEFORE_STATE_WRITE, P.AFTER_STATE_WRITE, P.BEFORE_STATE_READ,
        P.AFTER_STATE_READ, P.SESSION_START)}, monkeypatch)
    assert (await system.state.set("k", 1)).value == 1
    assert await system.state.get("k") == 1
    session = await system.sessions.start("s")
    assert session.name == "s"


async def test_a_cancel_subclass_still_vetoes_a_session_start(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    answering(system, {P.SESSION_START: MyCancel("closed")}, monkeypatch)
    with pytest.raises(OperationCancelled, match="closed"):
        await system.sessions.start("s")


async def test_tool_validation_and_discovery_honour_subclasses(
        system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    @tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @tool()
    def sub(a: int, b: int) -> int:
        """Subtract two numbers."""
        return a - b

    system.tools.register(add)
    system.tools.register(sub)
    answering(system, {P.BEFORE_TOOL_DISCOVERY: MyReplace(["sub"]),
                       P.TOOL_VALIDATION: MyCancel("invalid by policy")}, monkeypatch)
    assert [s.name for s in await system.tools.discover("add")] == ["sub"]
    with pytest.raises(OperationCancelled, match="invalid by policy"):
        await system.tools.execute("add", {"a": 1, "b": 2})


def _ctx() -> HookContext:
    return HookContext(point=P.BEFORE_TOOL_EXECUTION,
                       component=ComponentId(type=ComponentType.TOOL, name="calc"),
                       data={"x": 1})


async def test_sequential_chains_a_modified_subclass_and_goes_on_past_a_continue_one(
        ) -> None:
    seen: list[dict[str, Any]] = []

    def record(ctx: HookContext) -> None:
        seen.append(dict(ctx.data))

    group = SequentialHook("g", [lambda ctx: MyContinue(), lambda ctx: MyModified({"x": 2}),
                                 record])
    ctx = _ctx()
    result = await group.execute(ctx)
    assert seen == [{"x": 2}]
    assert result == Modified({"x": 2})
    assert ctx.data == {"x": 2}


async def test_parallel_installs_a_winning_modified_subclass() -> None:
    ctx = _ctx()
    group = ParallelHook("g", [lambda c: MyContinue(), lambda c: MyModified({"x": 3})])
    result = await group.execute(ctx)
    assert isinstance(result, MyModified)
    assert ctx.data == {"x": 3}


async def test_voting_lets_a_skipped_subclass_abstain() -> None:
    ctx = _ctx()
    group = VotingHook("g", [lambda c: MyModified({"x": 4}), lambda c: MySkipped("n/a"),
                             lambda c: MySkipped("n/a")], threshold=1.0)
    result = await group.execute(ctx)  # one counted vote of one: Modified wins
    assert isinstance(result, MyModified)
    assert ctx.data == {"x": 4}
