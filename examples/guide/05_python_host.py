"""Guide step 5 (Python host): a Python application that loads a Lua policy.

Scripts and Python share one ``System``: the Lua file registers its hooks in the same
registry, so they guard the tools a Python agent calls, in the same priority order as
Python hooks. ``ScriptHost`` runs the file sandboxed (no files, processes, network or
environment unless granted, see docs/scripting-capabilities.md).

Run: ``python examples/guide/05_python_host.py``
"""

from __future__ import annotations

import asyncio

from llmspell.runtime import System, SystemConfig
from llmspell.runtime.providers import ScriptedProvider
from llmspell.runtime.tools.library.calculator import CalculatorTool
from llmspell.scripting import ScriptHost

POLICY = """
Hook.register("BeforeToolExecution", function(ctx)
  if #(ctx.data.params.expression or "") > 30 then
    return {type = "cancel", reason = "policy: expression too long"}
  end
end, {priority = "high", name = "lua_policy"})
return "policy loaded"
"""


async def main() -> None:
    async with System(SystemConfig(store="memory")) as system:
        system.tools.register(CalculatorTool())
        host = ScriptHost(system)
        try:
            print(await host.run_lua_async(POLICY, name="policy.lua"))
            print("hooks:", [(h.name, h.language) for h in system.registry.list()])
            long = "+".join(["1"] * 20)
            agent = system.agents.create("math", tools=["calculator"], provider=ScriptedProvider([
                {"tool_calls": [{"name": "calculator", "arguments": {"expression": long}}]},
                "The calculator refused.",
            ]))
            answer = await agent.run("Add twenty ones")
            refused = answer.tool_calls[0]
        finally:
            host.close()
    print("agent:", answer.output, "| tool said:", refused)
    assert "too long" in str(refused)


if __name__ == "__main__":
    asyncio.run(main())
