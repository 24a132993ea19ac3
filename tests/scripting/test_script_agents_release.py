"""A long-lived script host or System does not keep what scripts are done with: a closing
host forgets the agents its scripts created, so the same script can run again (the name
was refused the second time, and every agent was kept for the life of the System), and a
host forgets the sessions its scripts ended."""

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


async def test_ended_sessions_are_not_kept_by_a_long_lived_host() -> None:
    async with System(SystemConfig(store="memory")) as system:
        host = ScriptHost(system)
        for _ in range(5):
            record = await host.run_lua_async('''
              local s = Session.start({name = "chat"})
              return Session["end"](s)
            ''')
            assert record["status"] == "ended"
        assert host.bindings.api.runtime.sessions == {}
        ended = await host.run_lua_async(
            'return Session.get(Session.list({status = "ended"})[1].id).status')
        assert ended == "ended"  # an ended session is loaded again when asked for
        host.close()
