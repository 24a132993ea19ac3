"""A script host forgets the agents its scripts created when it closes, so a long-lived
System can run the same script again (the name was refused the second time, and every
agent was kept for the life of the System)."""

from __future__ import annotations

import asyncio
from typing import Any

from llmspell.runtime import System, SystemConfig
from llmspell.runtime.agents.lifecycle import AgentState
from llmspell.runtime.providers import ScriptedProvider
from llmspell.scripting import ScriptHost

CREATE = '''
local a = Agent.create({name = "helper", model = "scripted/x", replies = {"hi"}})
return a:execute("q").output
'''


async def test_a_script_creating_an_agent_runs_again_with_a_new_host() -> None:
    async with System(SystemConfig(store="memory")) as system:
        ended = []
        for _ in range(3):
            host = ScriptHost(system)
            assert await host.run_lua_async(CREATE) == "hi"
            agent = system.agents.get("helper")
            host.close()
            assert "helper" not in system.agents
            ended.append(agent)
        for _ in range(20):  # the shutdowns run on the loop
            await asyncio.sleep(0)
        assert all(agent.state is AgentState.TERMINATED for agent in ended)


async def test_close_leaves_agents_the_script_did_not_create() -> None:
    async with System(SystemConfig(store="memory")) as system:
        mine = system.agents.create("mine", provider=ScriptedProvider(["ok"]))
        host = ScriptHost(system)
        assert await host.run_lua_async('return Agent.get("mine").name') == "mine"
        host.close()
        assert system.agents.get("mine") is mine


async def test_a_provider_from_the_hosts_factory_is_not_closed() -> None:
    closed: list[str] = []

    class Shared(ScriptedProvider):
        async def aclose(self) -> None:
            closed.append(self.model)

    shared = Shared(["from the factory"], model="shared")

    def factory(kind: str, name: str, spec: dict[str, Any]) -> Any:
        return shared if name == "shared" else None

    async with System(SystemConfig(store="memory")) as system:
        host = ScriptHost(system, providers=factory)
        assert await host.run_lua_async(
            'return Agent.create({name = "s", model = "x/shared"}):execute("q").output'
        ) == "from the factory"
        host.close()
        for _ in range(20):
            await asyncio.sleep(0)
    assert closed == []
