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

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _integration_common as common
from _harness import Row

POINTS = (*common.POINTS, "ToolValidation")


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
        if turn < common.TOOL_CALLS:
            return ModelResponse(parts=[ToolCallPart("add", {"a": turn, "b": 1},
                                                     tool_call_id=f"c{turn}")])
        return ModelResponse(parts=[TextPart(common.EXPECTED)])

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
    common.add_noop_hooks(system, POINTS)

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

    def run(agent: Any) -> Any:
        async def once() -> Any:
            return (await agent.run("count")).output

        return once

    return common.compared_rows("pydantic-ai", "capability", system,
                                [run(plain), run(adapted), run(framework)],
                                60 if quick else 400)


if __name__ == "__main__":
    from _harness import parse_args, report

    args = parse_args(__doc__ or "")
    raise SystemExit(report("pydantic-ai adapter", measure(args.quick), args.json))
