"""Calling a tool directly, the way the runtime's pipeline does (shared by the tool tests)."""

from __future__ import annotations

import inspect
from typing import Any

from llmspell.core.values import check_json_safe
from llmspell.runtime import Tool


async def run(tool: Tool, params: dict[str, Any]) -> Any:
    """Validate and execute like the pipeline does; results must be JSON-safe."""
    tool.validate(params)
    result = tool.execute(params)
    if inspect.isawaitable(result):
        result = await result
    check_json_safe(result)
    return result


def call(tool: Tool, params: dict[str, Any]) -> Any:
    """The same for a synchronous tool."""
    tool.validate(params)
    result = tool.execute(params)
    assert not inspect.isawaitable(result)
    check_json_safe(result)
    return result
