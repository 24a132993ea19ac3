"""A what-if replay's ``model=`` redirect is its own: it sends the replay's model calls to
the other model, never the model calls of live agent runs on the same System meanwhile
(like the hooks a what-if adds or removes, see test_replay_hook_scope.py)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from llmspell.core.run_scope import current_replay
from llmspell.hooks import HookContext, HookPoint
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers.base import Message, ToolSpec
from llmspell.runtime.providers.scripted import ScriptedProvider

P = HookPoint


def answers(text: str, log: list[tuple[str, bool]]) -> Any:
    """A scripted reply function that logs who it answered (a replay's call or live)."""
    def reply(messages: list[Message], tools: list[ToolSpec]) -> str:
        log.append((str(messages[-1].content), current_replay() is not None))
        return text
    return reply


async def test_a_what_if_model_redirect_leaves_live_agent_runs_alone() -> None:
    system = System(SystemConfig(store="memory"))
    await system.start()
    try:
        asked: list[tuple[str, bool]] = []
        other: list[tuple[str, bool]] = []
        system.agents.create("poet", provider=ScriptedProvider(answers("roses", asked),
                                                               name="old"))
        system.agents.create("clerk", provider=ScriptedProvider(answers("filed", asked),
                                                                name="desk"))
        system.models.register(ScriptedProvider(answers("violets", other), name="new",
                                                model="v2"))
        assert (await system.agents.get("poet").run("a poem")).output == "roses"
        run_id = system.runs.list(limit=1)[0].run_id
        asked.clear()

        # A hook that sees where each model call goes (its provider and model).
        seen: list[tuple[str, str, bool]] = []

        def where(ctx: HookContext) -> None:
            seen.append((str(ctx.data["provider"]), str(ctx.data["model"]),
                         current_replay() is not None))

        system.registry.register(P.BEFORE_MODEL_CALL, where, name="where")
        live: list[str] = []
        started = asyncio.Event()
        release = asyncio.Event()

        async def live_agents() -> None:
            # Live traffic: a run of its own, not part of the replay.
            started.set()
            await release.wait()
            live.append((await system.agents.get("clerk").run("file it")).output)
            live.append((await system.agents.get("poet").run("another")).output)

        traffic = asyncio.get_running_loop().create_task(live_agents(),
                                                         context=contextvars.Context())
        await started.wait()

        async def op(value: Any) -> Any:
            release.set()
            await traffic  # the live runs go on while the replay runs
            return (await system.agents.get("poet").run(value)).output

        result = await system.runs.replay(run_id, mode="what-if", model="new/v2",
                                          operation=op)
        assert result.error is None and result.output == "violets"
        assert live == ["filed", "roses"]            # the live runs kept their models
        assert asked == [("file it", False), ("another", False)]
        assert other == [("a poem", True)]           # the other model answered the replay
        assert ("new", "v2", False) not in seen      # ... and never a live call
        assert [s for s in seen if not s[2]] == [("desk", "scripted", False),
                                                ("old", "scripted", False)]
        # After the replay the registry is as it was.
        assert [i.name for i in system.registry.list()] == ["where"]
    finally:
        await system.shutdown()
