"""A hook slower than any caller waits (deadline tests), and a probe that records runs."""

import asyncio
import os
from pathlib import Path

from llmspell.hooks import HookContext, hook


@hook("BeforeToolExecution", name="slow")
async def slow(ctx: HookContext) -> None:
    log = os.environ.get("SLOW_LOG")
    if log:
        with Path(log).open("a") as f:
            f.write("started\n")
    await asyncio.sleep(30)
    if log:
        with Path(log).open("a") as f:
            f.write("finished\n")


HOOKS = [slow]
