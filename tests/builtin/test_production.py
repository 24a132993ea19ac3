"""The recommended set, installed in one line, working together through the runtime."""

from __future__ import annotations

import pytest

from llmspell.builtin import (
    CachingConfig,
    CostConfig,
    DebuggingConfig,
    RateLimitConfig,
    SecurityConfig,
    SecurityRule,
    install_all,
    production,
)
from llmspell.errors import OperationCancelled
from llmspell.events import UniversalEvent
from llmspell.hooks import HookPoint
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime.providers import ScriptedProvider


@tool()
def shell(command: str, api_key: str = "") -> str:
    """Pretends to run a command."""
    return f"ran {command}"


async def test_the_production_set_installs_in_one_line_and_works_together(caplog) -> None:  # type: ignore[no-untyped-def]
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(shell)
        events: list[UniversalEvent] = []
        system.bus.subscribe("**", events.append)
        violations: list[dict] = []  # type: ignore[type-arg]
        rule = SecurityRule(name="no-rm", points=("before_tool_execution",),
                            condition={"path": "params.command", "contains": "rm "},
                            severity="critical", action="block")
        hooks = production(
            bus=system.bus,
            security=SecurityConfig(rules=(rule,)),
            cost=CostConfig(),
            caching=CachingConfig(),
            rate_limit=RateLimitConfig(rate=1000, burst=1000),
            debugging=DebuggingConfig(),
            violation_sink=violations.append,
        )
        assert [h.metadata.name for h in hooks] == [
            "security", "retry", "cost_tracking", "metrics", "logging", "caching",
            "rate_limit", "debugging"]
        install_all(hooks, system.registry)
        assert await system.tools.execute("shell", {"command": "ls"}) == "ran ls"
        with pytest.raises(OperationCancelled, match="no-rm"):
            await system.tools.execute("shell", {"command": "rm -rf /", "api_key": "sk-SECRET"})
        assert violations and "sk-SECRET" not in str(violations)
        agent = system.agents.create("a", provider=ScriptedProvider(["hello"]))
        assert (await agent.run("hi")).output == "hello"
        published = b"".join(e.to_json() for e in events)
        assert b"sk-SECRET" not in published
        assert b"security.violation" in published and b"cost.recorded" in published
        metrics = next(h for h in hooks if h.metadata.name == "metrics")
        assert metrics.stats().calls_by_point[HookPoint.BEFORE_TOOL_EXECUTION.value] >= 1
        assert all("sk-SECRET" not in r.getMessage() for r in caplog.records)
