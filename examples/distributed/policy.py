"""A policy server's hooks: run them with ``llmspell hooks serve examples/distributed/policy.py``.

Every worker process that registers ``RemoteHook("shell_guard", "BeforeToolExecution")``
asks this server (or any server of the same queue group) before its shell tool runs. The
policy lives in one place: change it here, restart the servers, and every worker follows.

Conventions of a policy file: ``HOOKS`` lists what is served; a hook's name (``@hook(...,
name=...)``, else the function's name) is what callers ask for; ``@hook("Point")`` limits
it to those points. ``current_context()`` is the distributed context of the call: who asked
(host, process, component), for which trace, correlation and run.
"""

from __future__ import annotations

import logging
import shlex

from llmspell.distributed import current_context
from llmspell.hooks import Cancel, HookContext, Modified, hook

log = logging.getLogger("policy")

ALLOWED_PROGRAMS = {"ls", "cat", "echo", "grep", "wc"}
CHAINING = ("|", ";", "&&", "$(", "`", ">")


@hook("BeforeToolExecution", name="shell_guard", timeout=1.0)
def shell_guard(ctx: HookContext) -> Cancel | Modified | None:
    """Refuse chained or unknown programs; pin `ls` to a safe flag set."""
    if ctx.data.get("tool") != "shell":
        return None
    command = str(ctx.data["params"].get("command", ""))
    caller = current_context()
    who = f"{caller.origin.host}:{caller.origin.process}" if caller else "?"
    if any(token in command for token in CHAINING):
        log.warning("denied %r from %s (trace %s)", command, who,
                    caller.trace_id if caller else "-")
        return Cancel(f"policy: chaining or redirection is not allowed: {command!r}")
    words = shlex.split(command)
    if not words or words[0] not in ALLOWED_PROGRAMS:
        return Cancel(f"policy: {words[0] if words else '(empty)'!r} is not an allowed "
                      "program")
    if words[0] == "ls" and "-R" in words:
        params = {**ctx.data["params"], "command": " ".join(w for w in words if w != "-R")}
        return Modified({**ctx.data, "params": params})
    return None


HOOKS = [shell_guard]
