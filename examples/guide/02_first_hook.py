"""Guide step 2: a first hook that blocks a tool call.

A ``System`` runs tools, agents and workflows and fires hook points around each of them. A
hook is a function of a context; what it returns decides what happens. Here a guard at
``BeforeToolExecution`` refuses to delete anything outside a scratch folder, and a second
hook, after the call, reports what the tool returned.

Run: ``python examples/guide/02_first_hook.py``
"""

from __future__ import annotations

import asyncio

from llmspell.errors import OperationCancelled
from llmspell.hooks import Cancel, HookContext
from llmspell.runtime import System, SystemConfig, tool

deleted: list[str] = []


@tool()
def delete_file(path: str) -> str:
    """Delete a file (this demo only records the path)."""
    deleted.append(path)
    return f"deleted {path}"


def only_scratch(ctx: HookContext) -> Cancel | None:
    """The guard: ctx.data holds the tool's name and its parameters."""
    path = ctx.data["params"]["path"]
    if not path.startswith("/tmp/scratch/"):
        return Cancel(f"{path} is outside /tmp/scratch/")
    return None            # None (or Continue()) lets the call go on


def report(ctx: HookContext) -> None:
    print(f"  after {ctx.data['tool']}: {ctx.data['result']!r}")


async def main() -> None:
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(delete_file)
        system.registry.register("BeforeToolExecution", only_scratch, name="only_scratch",
                                 priority="high", error_policy="fail_closed")
        system.registry.register("AfterToolExecution", report, name="report")

        print(await system.tools.execute("delete_file", {"path": "/tmp/scratch/a.txt"}))
        try:
            await system.tools.execute("delete_file", {"path": "/etc/passwd"})
        except OperationCancelled as exc:
            print(f"refused by {exc.hook} at {exc.point}: {exc.reason}")
    assert deleted == ["/tmp/scratch/a.txt"]


if __name__ == "__main__":
    asyncio.run(main())
