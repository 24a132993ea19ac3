"""A forked operation does not fork again: a hook that forks every call makes one level of
forks (the runtime's rule, as the adapters'), not a tree that doubles at every level."""

from __future__ import annotations

from typing import Any

from llmspell.hooks import Fork, ForkOperation, HookContext, HookPoint
from llmspell.runtime import System, tool
from llmspell.runtime.calls import in_fork

LIMIT = 200  # the hook stops forking after this many calls (so old code ends too)


def forks_every_call(target: str, seen: list[dict[str, Any]]) -> Any:
    def hook(ctx: HookContext) -> Fork | None:
        seen.append(dict(ctx.data))
        if len(seen) > LIMIT:
            return None
        return Fork((ForkOperation(type="tool", target=target, parameters={"x": 1}),
                     ForkOperation(type="tool", target=target, parameters={"x": 2})))
    return hook


async def test_a_hook_that_forks_every_tool_call_makes_one_level_of_forks(
        system: System) -> None:
    calls: list[tuple[int, bool]] = []

    @tool("probe")
    def probe(x: int) -> int:
        """Note the call and whether it runs as a fork."""
        calls.append((x, in_fork()))
        return x * 10

    system.tools.register(probe)
    seen: list[dict[str, Any]] = []
    system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                             forks_every_call("probe", seen), name="fork-all")
    run = await system.tools.run("probe", {"x": 0})
    assert run.result == 0
    assert sorted(calls) == [(0, False), (1, True), (2, True)]  # the call and its 2 forks
    assert [f.get("result") for f in run.forks] == [10, 20]
    assert len(seen) == 3  # each fork's own hooks ran (and forked: not run)


async def test_the_forks_of_a_fork_are_reported_not_run(system: System) -> None:
    # "leaf" forks "relay"; the forked relay runs leaf again, whose hook forks once more:
    # that fork is reported in the inner run's forks and not run.
    inner: list[list[dict[str, Any]]] = []

    @tool("leaf")
    def leaf(x: int) -> int:
        """Return x."""
        return x

    @tool("relay")
    async def relay(x: int) -> int:
        """Run leaf and keep what its forks gave."""
        run = await system.tools.run("leaf", {"x": x})
        inner.append(run.forks)
        return int(run.result)

    system.tools.register_all([leaf, relay])
    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION,
        lambda ctx: Fork((ForkOperation(type="tool", target="relay", parameters={"x": 7}),))
        if ctx.data["tool"] == "leaf" else None, name="fork-relay")
    run = await system.tools.run("leaf", {"x": 5})
    assert run.result == 5 and run.forks == [{"type": "tool", "target": "relay",
                                              "result": 7}]
    [refused] = inner
    assert [(f["type"], f["target"]) for f in refused] == [("tool", "relay")]
    assert "result" not in refused[0]
    assert refused[0]["error"].startswith(
        "UnsupportedHookResultError: a forked operation does not fork again")


async def test_the_operation_that_forks_is_not_marked(system: System) -> None:
    marks: list[bool] = []

    @tool("main")
    def main(x: int) -> int:
        """Note whether it runs as a fork."""
        marks.append(in_fork())
        return x

    @tool("side")
    def side(x: int) -> int:
        """Return x."""
        return x

    system.tools.register_all([main, side])
    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION,
        lambda ctx: Fork((ForkOperation(type="tool", target="side", parameters={"x": 1}),))
        if ctx.data["tool"] == "main" else None, name="fork-side")
    await system.tools.run("main", {"x": 1})
    await system.tools.run("main", {"x": 2})
    assert marks == [False, False]
    assert not in_fork()


async def test_a_workflow_run_inside_a_fork_does_not_fork_its_steps(system: System) -> None:
    from llmspell.runtime.workflows import Sequential, Step

    @tool("leaf")
    def leaf(x: int) -> int:
        """Return x."""
        return x

    stage_forks: list[Any] = []

    @tool("flow")
    async def flow(x: int) -> int:
        """Run a one-step workflow and keep what its step's forks gave."""
        result = await Sequential("wf", [Step("only", fn=lambda ctx: x)]).run(system)
        stage_forks.append(result.outputs.get("only.forks"))
        return int(result.outputs["only"])

    system.tools.register_all([leaf, flow])
    system.registry.register(
        HookPoint.BEFORE_WORKFLOW_STAGE,
        lambda ctx: Fork((ForkOperation(type="tool", target="leaf", parameters={"x": 1}),)),
        name="fork-stage")
    system.registry.register(
        HookPoint.BEFORE_TOOL_EXECUTION,
        lambda ctx: Fork((ForkOperation(type="tool", target="flow", parameters={"x": 3}),))
        if ctx.data["tool"] == "leaf" and not in_fork() else None, name="fork-flow")
    run = await system.tools.run("leaf", {"x": 2})
    assert run.forks == [{"type": "tool", "target": "flow", "result": 3}]
    [refused] = stage_forks  # the workflow ran inside the fork: its stage fork is refused
    assert [(f["type"], f["target"]) for f in refused] == [("tool", "leaf")]
    assert refused[0]["error"].startswith(
        "UnsupportedHookResultError: a forked operation does not fork again")
