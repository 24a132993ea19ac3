"""What the OpenAI Agents SDK adapter adds to an SDK agent run (issue 15).

One run: an ``Agent`` with an offline ``Model`` (written here) that asks for 3 tool calls,
one per turn, then answers (4 model calls, 3 tool calls), run with ``Runner.run``. SDK
tracing is off for all three (no processor: its default one exports to the network).
Measured in the same process, alternating so drift hits all three alike:

* (a) ``Runner.run`` without the adapter: the baseline;
* (b) ``adapter.run`` with 5 no-op hooks at each point it fires (agent, model and tool
  points, errors included), on a ``System`` that records nothing: target <= 5 % added;
* (c) ``Runner.run`` with the SDK's own no-op seams the adapter uses (``RunHooks`` with
  every callback, a tool input and output guardrail per tool, a ``call_model_input_filter``
  and a tool error formatter, all passing through); the last row compares (b) with (c):
  the adapter's run (points, hooks, events, the run, the governed invoker) may take at most
  10 % longer than the SDK run with its own no-op seams. (What (c) adds to (a) is within
  the run-to-run noise of a several-millisecond SDK run, so a ratio of the two additions
  would measure noise.)

Each figure is the median over many rounds of one run of each, taken in turn with the
garbage collector held back during a round. The framework is imported inside
:func:`measure` (``benchmarks/integrations.py`` imports this module without it).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _integration_common as common
from _harness import Row


def _setup() -> tuple[Any, Any, Any, Any, Any, Any]:
    """The agents (plain, SDK no-op seams), the adapter, the no-op RunHooks and RunConfig,
    and the system."""
    import agents  # the framework is optional: imported here
    from agents import (
        Agent,
        ModelResponse,
        RunConfig,
        RunHooks,
        ToolGuardrailFunctionOutput,
        Usage,
        function_tool,
    )
    from agents.models.interface import Model
    from agents.tool_guardrails import ToolInputGuardrail, ToolOutputGuardrail
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    from llmspell.integrations.openai_agents import OpenAIAgentsAdapter
    from llmspell.runtime import System, SystemConfig

    agents.set_trace_processors([])
    agents.set_tracing_disabled(True)

    class Counting(Model):
        async def get_response(self, system_instructions: Any, input: Any, *args: Any,
                               **kwargs: Any) -> Any:
            done = sum(1 for i in input if isinstance(i, dict)
                       and i.get("type") == "function_call_output")
            if done < common.TOOL_CALLS:
                output: list[Any] = [ResponseFunctionToolCall(
                    id=f"c{done}", call_id=f"c{done}", type="function_call", name="add",
                    arguments=json.dumps({"a": done, "b": 1}))]
            else:
                output = [ResponseOutputMessage(
                    id="m", type="message", role="assistant", status="completed",
                    content=[ResponseOutputText(text=common.EXPECTED, type="output_text",
                                                annotations=[], logprobs=[])])]
            return ModelResponse(output=output, usage=Usage(requests=1, input_tokens=10,
                                                            output_tokens=5,
                                                            total_tokens=15),
                                 response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    @function_tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    plain = Agent(name="calc", model=Counting(), tools=[add])

    async def allow(data: Any) -> Any:
        return ToolGuardrailFunctionOutput.allow()

    guarded = dataclasses.replace(add, tool_input_guardrails=[ToolInputGuardrail(allow)],
                                  tool_output_guardrails=[ToolOutputGuardrail(allow)])
    noop_agent = Agent(name="calc", model=Counting(), tools=[guarded])

    class NoopHooks(RunHooks[Any]):
        async def on_agent_start(self, context: Any, agent: Any) -> None:
            return None

        async def on_agent_end(self, context: Any, agent: Any, output: Any) -> None:
            return None

        async def on_llm_start(self, *args: Any) -> None:
            return None

        async def on_llm_end(self, *args: Any) -> None:
            return None

        async def on_tool_start(self, *args: Any) -> None:
            return None

        async def on_tool_end(self, *args: Any) -> None:
            return None

    async def same_input(data: Any) -> Any:
        return data.model_data

    async def no_format(args: Any) -> None:
        return None

    noop_config = RunConfig(call_model_input_filter=same_input, tool_error_formatter=no_format,
                            tracing_disabled=True)
    system = System(SystemConfig(store="none", hook_events=False, monitor=False))
    common.add_noop_hooks(system, common.POINTS)
    adapter = OpenAIAgentsAdapter(system)
    return plain, noop_agent, adapter, NoopHooks(), noop_config, system


def measure(quick: bool) -> list[Row]:
    """The rows: the adapter against the bare run and against the SDK's own no-op seams."""
    from agents import RunConfig, Runner

    plain, noop_agent, adapter, noop_hooks, noop_config, system = _setup()
    bare_config = RunConfig(tracing_disabled=True)

    async def bare() -> Any:
        return (await Runner.run(plain, "count", run_config=bare_config)).final_output

    async def adapted() -> Any:
        return (await adapter.run(plain, "count", run_config=bare_config)).final_output

    async def noop() -> Any:
        return (await Runner.run(noop_agent, "count", hooks=noop_hooks,
                                 run_config=noop_config)).final_output

    base, with_adapter, with_noop = common.time_runs(system, [bare, adapted, noop],
                                                     40 if quick else 300)
    return [
        *common.overhead_rows("openai-agents", "seams", base, with_adapter, with_noop),
        Row("adapter run vs a run with the SDK's no-op seams", with_adapter, "µs/run",
            with_noop, with_adapter / with_noop, "ratio <= 1.10",
            with_adapter / with_noop <= 1.10),
    ]


if __name__ == "__main__":
    from _harness import parse_args, report

    args = parse_args(__doc__ or "")
    raise SystemExit(report("OpenAI Agents SDK adapter", measure(args.quick), args.json))
