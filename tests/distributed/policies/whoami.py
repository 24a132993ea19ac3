"""Answers with the id of the process that served the call (load sharing tests)."""

import os

from llmspell.hooks import HookContext, Modified, hook


@hook("BeforeToolExecution", name="whoami")
def whoami(ctx: HookContext) -> Modified:
    return Modified({**ctx.data, "served_by": os.getpid()})
