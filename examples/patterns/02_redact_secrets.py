"""Pattern: redact secrets from prompts before they leave the process.

The built-in security hook's ``redact_rule`` rewrites every message of a model call at
``BeforeModelCall``: API keys and e-mail addresses are replaced before the provider sees
the prompt. The stand-in model below records what it was sent, so the example can prove
the secret never reached it.

Run: ``python examples/patterns/02_redact_secrets.py``
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmspell.builtin import SecurityConfig, SecurityHook
from llmspell.builtin.security import API_KEY_PATTERN, EMAIL_PATTERN, redact_rule
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider
from llmspell.runtime.providers.base import Message, ToolSpec

seen_by_model: list[str] = []


def model(messages: list[Message], tools: list[ToolSpec]) -> Any:
    seen_by_model.append(messages[-1].content or "")
    return "Noted."


async def main() -> None:
    async with System(SystemConfig(store="memory")) as system:
        security = SecurityHook(SecurityConfig(rules=(
            redact_rule("api-keys", API_KEY_PATTERN),
            redact_rule("emails", EMAIL_PATTERN),
        )), bus=system.bus)
        security.install(system.registry)
        agent = system.agents.create("helper", provider=ScriptedProvider(model))
        prompt = ("My key is sk-proj-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c, "
                  "mail the report to ann@example.com")
        await agent.run(prompt)
    print("the model saw:", seen_by_model[0])
    assert "sk-proj" not in seen_by_model[0] and "ann@example.com" not in seen_by_model[0]


if __name__ == "__main__":
    asyncio.run(main())
