"""What the pydantic-ai adapter adds to a pydantic-ai agent run (issue 15).

One run: an ``Agent`` with an offline ``FunctionModel`` that asks for 3 tool calls, one per
turn, then answers (4 model requests, 3 tool calls), run with ``agent.run``. Measured in
the same process, alternating so drift hits all three alike:

* (a) the agent without the adapter: the baseline;
* (b) the agent with :class:`~llmspell.integrations.pydantic_ai.LlmspellCapability` and 5
  no-op hooks at each point it fires (agent, model and tool points, validation and errors
  included), on a ``System`` that records nothing: target <= 5 % added to (a). Any
  capability that overrides hooks makes pydantic-ai run its hook plumbing, so this row
  also carries pydantic-ai's own cost of a capability, which (c) shows;
* (c) the agent with the framework's own no-op capability (``wrap_run``,
  ``wrap_model_request``, ``after_model_request``, ``on_model_request_error``,
  ``wrap_tool_validate``, ``wrap_tool_execute`` that only pass through); the last row
  compares what (b) adds to the bare run with what (c) adds: the adapter's work (points,
  hooks, events, the run) may cost at most 3 times pydantic-ai's own capability plumbing.

Each figure is the median over many rounds of one run of each, taken in turn (the
order alternating) with the garbage collector held back during a round. The framework is
imported inside :func:`measure` (``benchmarks/integrations.py`` imports this module
without it).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row

POINTS = ("BeforeAgentExecution", "AfterAgentExecution", "AgentError", "BeforeModelCall",
          "AfterModelCall", "ModelCallError", "ToolValidation", "BeforeToolExecution",
          "AfterToolExecution", "ToolError")
HOOKS_PER_POINT = 5
TOOL_CALLS = 3


def _agents() -> tuple[Any, Any, Any, Any]:
    """The three agents (plain, with the adapter, with a no-op capability) and the system."""
    from pydantic_ai import Agent  # the framework is optional: imported here
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from llmspell.integrations.pydantic_ai import LlmspellCapability
    from llmspell.runtime import System, SystemConfig

    def three_calls(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(1 for m in messages if isinstance(m, ModelResponse))
        if turn < TOOL_CALLS:
            return ModelResponse(parts=[ToolCallPart("add", {"a": turn, "b": 1},
                                                     tool_call_id=f"c{turn}")])
        return ModelResponse(parts=[TextPart("done")])

    class NoOp(AbstractCapability[Any]):
        """The framework's own no-op capability at the same seams."""

        async def wrap_run(self, ctx: Any, *, handler: Any) -> Any:
            return await handler()

        async def wrap_model_request(self, ctx: Any, *, request_context: Any,
                                     handler: Any) -> Any:
            return await handler(request_context)

        async def after_model_request(self, ctx: Any, *, request_context: Any,
                                      response: Any) -> Any:
            return response

        async def on_model_request_error(self, ctx: Any, *, request_context: Any,
                                         error: Exception) -> Any:
            raise error

        async def wrap_tool_validate(self, ctx: Any, *, call: Any, tool_def: Any, args: Any,
                                     handler: Any) -> Any:
            return await handler(args)

        async def wrap_tool_execute(self, ctx: Any, *, call: Any, tool_def: Any, args: Any,
                                    handler: Any) -> Any:
            return await handler(args)

    system = System(SystemConfig(store="none"))
    for point in POINTS:
        for i in range(HOOKS_PER_POINT):
            system.registry.register(point, lambda ctx: None, name=f"noop-{point}-{i}")

    def make(capabilities: list[Any]) -> Any:
        agent = Agent(FunctionModel(three_calls), capabilities=capabilities, name="bench")

        @agent.tool_plain
        def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        return agent

    return make([]), make([LlmspellCapability(system)]), make([NoOp()]), system


def measure(quick: bool) -> list[Row]:
    """The rows: the adapter against the bare run and against the framework's no-op."""
    plain, adapted, framework, system = _agents()
    rounds = 60 if quick else 400
    agents = (plain, adapted, framework)

    async def once(agent: Any) -> float:
        start = time.perf_counter()
        out = await agent.run("count")
        elapsed = (time.perf_counter() - start) * 1e6
        assert out.output == "done"
        return elapsed

    async def run() -> tuple[float, float, float]:
        await system.start()
        timings: list[list[float]] = [[], [], []]
        was_enabled = gc.isenabled()
        try:
            for _ in range(5):  # warm up
                for agent in agents:
                    await once(agent)
            # One run of each per round, in turn, with the collector held back while
            # they run: a load spike or a collection hits the three alike.
            for i in range(rounds):
                gc.collect()
                gc.disable()
                order = agents if i % 2 == 0 else agents[::-1]
                for agent in order:
                    timings[agents.index(agent)].append(await once(agent))
                if was_enabled:
                    gc.enable()
            return (statistics.median(timings[0]), statistics.median(timings[1]),
                    statistics.median(timings[2]))
        finally:
            if was_enabled:
                gc.enable()
            await system.shutdown()

    bare, with_adapter, with_noop = asyncio.run(run())
    added = max(with_adapter - bare, 0.0)
    noop_added = max(with_noop - bare, 1.0)
    return [
        Row("pydantic-ai run (3 tool calls), no adapter", bare, "µs/run", None, None,
            "baseline", True),
        Row("pydantic-ai + adapter, 5 no-op hooks/point", with_adapter, "µs/run", bare,
            with_adapter / bare, "ratio <= 1.05", with_adapter / bare <= 1.05),
        Row("pydantic-ai + its own no-op capability", with_noop, "µs/run", bare,
            with_noop / bare, "report", True),
        Row("adapter's added cost vs no-op capability's", added, "µs/run", noop_added,
            added / noop_added, "ratio <= 3", added / noop_added <= 3),
    ]


if __name__ == "__main__":
    for row in measure("--quick" in sys.argv):
        print(f"{row.name:48} {row.value:10.1f} {row.unit:8} "
              f"{'' if row.ratio is None else f'{row.ratio:6.3f}':>7} {row.target:14} "
              f"{'ok' if row.met else 'MISSED'}")
