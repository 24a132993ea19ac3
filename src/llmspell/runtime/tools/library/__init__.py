"""The built-in tool library: a calculator, JSON and text processing, sandboxed file
operations and guarded HTTP requests.

:func:`default_tools` returns one instance of each; file operations only when a sandbox
directory is given, since they are meaningless (and unsafe) without one.
"""

from __future__ import annotations

from pathlib import Path

from llmspell.runtime.tools.base import Tool
from llmspell.runtime.tools.library.calculator import CalculatorTool
from llmspell.runtime.tools.library.file_operations import FileOperationsTool
from llmspell.runtime.tools.library.http_request import HttpRequestTool
from llmspell.runtime.tools.library.json_processor import JsonProcessorTool
from llmspell.runtime.tools.library.text_manipulator import TextManipulatorTool

__all__ = [
    "CalculatorTool",
    "FileOperationsTool",
    "HttpRequestTool",
    "JsonProcessorTool",
    "TextManipulatorTool",
    "default_tools",
]


def default_tools(*, sandbox: Path | None = None, allow_loopback: bool = False) -> list[Tool]:
    """One instance of each library tool. ``sandbox`` is the directory file operations are
    confined to (no file tool without it); ``allow_loopback`` lets HTTP requests reach this
    machine (for local development and tests)."""
    tools: list[Tool] = [
        CalculatorTool(),
        JsonProcessorTool(),
        TextManipulatorTool(),
        HttpRequestTool(allow_loopback=allow_loopback),
    ]
    if sandbox is not None:
        tools.append(FileOperationsTool(sandbox))
    return tools
