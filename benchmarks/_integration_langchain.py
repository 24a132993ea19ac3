"""What the LangChain adapter adds to a LangChain v1 agent run (issue 15).

One run: ``create_agent`` with an offline chat model that asks for 3 tool calls, one per
turn, then answers (4 model calls, 3 tool calls), run with ``ainvoke``. Measured in the same
process, alternating so drift hits all three alike:

* (a) the agent without the adapter: the baseline;
* (b) the agent with :class:`~llmspell.integrations.langchain.LlmspellMiddleware` and 5
  no-op hooks at each point it fires (agent, model and tool points, errors included), on a
  ``System`` that records nothing: target <= 5 % added to (a). Any middleware adds graph
  nodes and wrappers to the run, so this row also carries LangChain's own cost of a
  middleware, which (c) shows;
* (c) the agent with the framework's own no-op middleware (``before_agent``,
  ``after_agent``, ``wrap_model_call``, ``wrap_tool_call`` that only pass through); the
  last row compares what (b) adds to the bare run with what (c) adds: the adapter's work
  (points, hooks, events, the run) may cost at most 3 times LangChain's own middleware
  plumbing.

Then the same three runs again with :func:`llmspell.integrations.langsmith_inline.enable`
in effect (LangChain runs every middleware ``wrap_*`` call through LangSmith's
``traceable``, which hops to a worker thread twice per call even when nothing is traced;
the override runs those calls inline while untraced): (d) the adapter against the bare run
(target <= 5 % added) and (e) the no-op middleware (reported).

Each figure is the median over many rounds of one run of each, taken in turn (the order
alternating) with the garbage collector held back during a round. The framework is
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


def _agents() -> tuple[Any, Any, Any, Any]:
    """The three agents (plain, with the adapter, with a no-op middleware) and the system."""
    from langchain.agents import create_agent  # the framework is optional: imported here
    from langchain.agents.middleware import AgentMiddleware
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.tools import tool

    from llmspell.integrations.langchain import LlmspellMiddleware
    from llmspell.runtime import System, SystemConfig

    class ThreeCalls(BaseChatModel):
        """Asks for ``add`` once per turn, three times, then answers."""

        @property
        def _llm_type(self) -> str:
            return "bench"

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

        def _generate(self, messages: list[BaseMessage], stop: Any = None,
                      run_manager: Any = None, **kwargs: Any) -> ChatResult:
            turn = sum(1 for m in messages if isinstance(m, AIMessage))
            usage = {"input_tokens": 20, "output_tokens": 5, "total_tokens": 25}
            if turn < common.TOOL_CALLS:
                message = AIMessage(content="", usage_metadata=usage,
                                    tool_calls=[{"name": "add", "id": f"c{turn}",
                                                 "args": {"a": turn, "b": 1}}])
            else:
                message = AIMessage(content=common.EXPECTED, usage_metadata=usage)
            return ChatResult(generations=[ChatGeneration(message=message)])

    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    class NoOp(AgentMiddleware):
        """The framework's own no-op middleware at the same four seams."""

        async def abefore_agent(self, state: Any, runtime: Any) -> None:
            return None

        async def aafter_agent(self, state: Any, runtime: Any) -> None:
            return None

        async def awrap_model_call(self, request: Any, handler: Any) -> Any:
            return await handler(request)

        async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
            return await handler(request)

    system = System(SystemConfig(store="none"))
    common.add_noop_hooks(system, common.POINTS)
    plain = create_agent(ThreeCalls(), tools=[add])
    adapted = create_agent(ThreeCalls(), tools=[add], middleware=[LlmspellMiddleware(system)])
    framework = create_agent(ThreeCalls(), tools=[add], middleware=[NoOp()])
    return plain, adapted, framework, system


def measure(quick: bool) -> list[Row]:
    """The rows: the adapter against the bare run and against the framework's no-op."""
    plain, adapted, framework, system = _agents()
    ask = {"messages": [{"role": "user", "content": "count"}]}

    def run(agent: Any) -> Any:
        async def once() -> Any:
            return (await agent.ainvoke(ask))["messages"][-1].content

        return once

    rounds = 60 if quick else 400
    rows = common.compared_rows("langchain", "middleware", system,
                                [run(plain), run(adapted), run(framework)], rounds)
    from llmspell.integrations import langsmith_inline

    langsmith_inline.enable()
    try:
        plain, adapted, framework, system = _agents()
        bare, inline, noop = common.time_runs(system, [run(plain), run(adapted),
                                                       run(framework)], rounds)
    finally:
        langsmith_inline.disable()
    return [*rows,
            Row("langchain + adapter, LangSmith untraced calls inline", inline, "µs/run",
                bare, inline / bare, "ratio <= 1.05", inline / bare <= 1.05),
            Row("langchain + no-op middleware, LangSmith untraced calls inline", noop,
                "µs/run", bare, noop / bare, "report", True)]


if __name__ == "__main__":
    from _harness import parse_args, report

    args = parse_args(__doc__ or "")
    raise SystemExit(report("LangChain adapter", measure(args.quick), args.json))
