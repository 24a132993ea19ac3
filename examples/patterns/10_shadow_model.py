"""Pattern: shadow-test a new model on live traffic with ``Fork``.

A hook at ``BeforeModelCall`` returns ``Fork`` with an operation of ``type="model"``: the
same request also goes to the candidate model, concurrently, while the user still gets the
production model's answer. Each shadow response is published as
``model.<provider>.shadow`` (with usage and latency), so a subscriber can compare the two
models without touching the request path. Shadow calls carry ``caller.type == "shadow"``;
the hook skips them, so a shadow never forks again.

Run: ``python examples/patterns/10_shadow_model.py``
"""

from __future__ import annotations

import asyncio

from llmspell.hooks import Fork, ForkOperation, HookContext
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider


def shadow_candidate(ctx: HookContext) -> Fork | None:
    caller = ctx.data["caller"] or {}
    if caller.get("type") == "shadow":
        return None
    return Fork((ForkOperation(type="model", target="candidate/v2"),))


async def main() -> None:
    comparisons: list[tuple[str, str]] = []
    async with System(SystemConfig(store="memory", record_content="full")) as system:
        system.models.register(ScriptedProvider(lambda m, t: "Candidate: 4.",
                                                name="candidate", model="v2"))
        system.registry.register("BeforeModelCall", shadow_candidate, name="shadow")
        system.bus.subscribe("model.*.shadow", lambda e: comparisons.append(
            (e.data["shadowing"], e.data["response"]["content"])))
        agent = system.agents.create("helper", provider=ScriptedProvider(
            lambda m, t: "Production: 4.", name="prod", model="v1"))
        answer = await agent.run("What is 2 + 2?")
        system.bus.flush()
    print("user got:", answer.output)
    print("shadow results:", comparisons)
    assert answer.output == "Production: 4."
    assert comparisons == [("prod/v1", "Candidate: 4.")]


if __name__ == "__main__":
    asyncio.run(main())
