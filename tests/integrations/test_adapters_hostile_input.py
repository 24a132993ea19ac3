"""A hostile model against the pydantic-ai adapter: tool calls whose arguments are not
JSON, not an object, nested past the parser's limit, huge, or name an unknown tool reach
the hooks as data they can read and go back to the model as pydantic-ai's own retry
prompt; the run never fails with a traceback of the adapter's. And what a hook returns at
``AgentError`` that the seam cannot honour, or a ``Cancel`` there, is not silently dropped
(pydantic-ai re-raises the body's error over one ``wrap_run`` raises, so the adapter
decides in ``on_run_error``), streamed or not."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from llmspell.errors import OperationCancelledError, UnsupportedHookResultError
from llmspell.hooks import HookPoint
from llmspell.hooks.result import Cancel, Modified
from llmspell.integrations.pydantic_ai import LlmspellCapability
from llmspell.runtime.system import System
from tests.integrations.conftest_pydantic_ai import calc_agent, tool_results

P = HookPoint
DEEP = "[" * 3000 + "]" * 3000

MALFORMED: dict[str, tuple[str, str | dict[str, Any], str]] = {
    "not JSON": ("add", "{not json", "json_invalid"),
    "a JSON list": ("add", "[1, 2]", "dict_type"),
    "a JSON string": ("add", '"hi"', "dict_type"),
    "nested past the parser's limit": ("add", '{"a": ' + DEEP + "}", "json_invalid"),
    "huge": ("add", {"a": "x" * 2_000_000, "b": 1}, "int_parsing"),
    "NaN": ("add", '{"a": NaN, "b": 1}', "finite_number"),
    "an unknown tool": ("nope", {"a": 1}, "Unknown tool name"),
}


def _model(name: str, args: str | dict[str, Any]) -> FunctionModel:
    """Asks once for ``name(args)``, then answers with what it was told."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not any(isinstance(m, ModelResponse) for m in messages):
            return ModelResponse(parts=[ToolCallPart(name, args, tool_call_id="c1")])
        return ModelResponse(parts=[TextPart("done: " + tool_results(messages)[:300])])

    return FunctionModel(answer)


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_tool_calls_reach_the_hooks_and_go_back_to_the_model(
    system: System, case: str
) -> None:
    name, args, told = MALFORMED[case]
    seen: list[dict[str, Any]] = []
    for point in (P.TOOL_VALIDATION, P.BEFORE_TOOL_EXECUTION, P.AFTER_TOOL_EXECUTION,
                  P.TOOL_ERROR, P.BEFORE_MODEL_CALL, P.AFTER_MODEL_CALL):
        system.registry.register(point, lambda ctx: seen.append(ctx.data) and None,
                                 name=f"watch-{point}")
    agent: Agent[None, str] = Agent(_model(name, args), name="calc", retries=1,
                                    capabilities=[LlmspellCapability(system)])

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    output = (await agent.run("go")).output
    assert output.startswith("done: ") and told in output, output
    validations = [d for d in seen if "valid" in d]
    if name == "add":  # pydantic-ai validates a known tool's arguments only
        assert validations and validations[0]["valid"] is False
        assert isinstance(validations[0]["params"], dict)


def _failing(system: System, result: Any) -> Agent[None, str]:
    system.registry.register(P.AGENT_ERROR, lambda ctx: result, name="on-error")
    return calc_agent(system, [], fail=lambda n: RuntimeError("model down"))


async def _run_or_stream(agent: Agent[None, str], streamed: bool) -> None:
    if streamed:
        async with agent.run_stream("go") as stream:
            await stream.get_output()
    else:
        await agent.run("go")


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_result_agent_error_cannot_honour_is_reported(
        system: System, streamed: bool) -> None:
    agent = _failing(system, Modified({"x": 1}))
    with pytest.raises(UnsupportedHookResultError):
        await _run_or_stream(agent, streamed)


@pytest.mark.parametrize("streamed", [False, True])
async def test_cancel_at_agent_error_cancels(system: System, streamed: bool) -> None:
    agent = _failing(system, Cancel("stop"))
    with pytest.raises(OperationCancelledError) as caught:
        await _run_or_stream(agent, streamed)
    assert "model down" in str(caught.value.__cause__)

