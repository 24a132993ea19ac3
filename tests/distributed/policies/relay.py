"""Calls the `probe` hook of another server from inside its own hook (lineage and hop
limit tests): the answer holds both servers' views of the context."""

import os

from llmspell.distributed import RemoteHook
from llmspell.hooks import HookContext, Replace, hook
from tests.distributed.policies.probe import view

probe = RemoteHook("probe", "BeforeToolExecution", url=os.environ["LLMSPELL_BUS"],
                   timeout=10, error_policy="raise")


@hook("BeforeToolExecution", name="relay")
async def relay(ctx: HookContext) -> Replace:
    mine = view(ctx)
    answer = await probe.execute(ctx)
    assert isinstance(answer, Replace)
    return Replace({"relay": mine, **answer.value})


HOOKS = [relay]
