"""Pattern: validate and normalise state before it is written.

A hook at ``BeforeStateWrite`` sees every ``system.state.set`` (from Python, Lua,
JavaScript, workflows and sessions): it refuses a value that does not fit the key's schema
with ``Cancel`` (the write does not happen and the caller gets ``OperationCancelled``) and
normalises an acceptable one with ``Modified`` (the normalised value is what is stored).

Run: ``python examples/patterns/16_validate_state_writes.py``
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmspell.errors import OperationCancelled
from llmspell.hooks import Cancel, HookContext, Modified
from llmspell.runtime import System, SystemConfig


def validate_profile(ctx: HookContext) -> Cancel | Modified | None:
    if ctx.data["operation"] != "set" or not ctx.data["key"].startswith("profile:"):
        return None
    value: Any = ctx.data["value"]
    if not isinstance(value, dict) or not isinstance(value.get("email"), str):
        return Cancel(f"{ctx.data['key']}: a profile needs an 'email' string")
    if "@" not in value["email"]:
        return Cancel(f"{ctx.data['key']}: {value['email']!r} is not an e-mail address")
    normalised = {**value, "email": value["email"].strip().lower()}
    return Modified({**ctx.data, "value": normalised})


async def main() -> None:
    async with System(SystemConfig(store="memory")) as system:
        system.registry.register("BeforeStateWrite", validate_profile, name="profile_schema")
        await system.state.set("profile:ann", {"email": "  Ann@Example.COM "})
        refused = []
        for bad in ({"name": "bob"}, {"email": "not-an-address"}):
            try:
                await system.state.set("profile:bob", bad)
            except OperationCancelled as exc:
                refused.append(exc.reason)
        stored = await system.state.get("profile:ann")
        missing = await system.state.get("profile:bob")
    print("stored:", stored)
    print("refused:", refused)
    assert stored == {"email": "ann@example.com"} and missing is None and len(refused) == 2


if __name__ == "__main__":
    asyncio.run(main())
