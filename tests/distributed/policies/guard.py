"""A shell guard served by `llmspell hooks serve` in the tests."""

from llmspell.hooks import Cancel, HookContext, hook

FORBIDDEN = ("rm ", "shutdown", "| sh")


@hook("BeforeToolExecution", name="guard")
def guard(ctx: HookContext) -> Cancel | None:
    command = str(ctx.data.get("params", {}).get("command", ctx.data.get("command", "")))
    if any(word in command for word in FORBIDDEN):
        return Cancel(f"policy: {command!r} is not allowed")
    return None


HOOKS = [guard]
