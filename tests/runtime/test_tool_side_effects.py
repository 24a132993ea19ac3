"""Tools declare their side effects: per library tool (both sides where they depend on the
parameters), on ``@tool(...)`` and ``FunctionTool``, and bad names."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.errors import InvalidValueError
from llmspell.runtime import SideEffect
from llmspell.runtime.tools import library
from llmspell.runtime.tools.base import FunctionTool, SecurityLevel, Tool, tool

FW, PROC, MAIL = SideEffect.FILE_WRITE, SideEffect.PROCESS, SideEffect.EMAIL
HOOK, DBW, NET = SideEffect.WEBHOOK, SideEffect.DATABASE_WRITE, SideEffect.NETWORK_WRITE

# (tool class, params, expected effects of that call)
CASES: list[tuple[str, dict[str, Any], frozenset[SideEffect]]] = [
    *[("FileOperationsTool", {"operation": op, "path": "a"}, frozenset({FW}))
      for op in ("write", "append", "delete", "mkdir", "move", "copy")],
    *[("FileOperationsTool", {"operation": op, "path": "a"}, frozenset())
      for op in ("read", "list", "exists", "stat")],
    ("ArchiveHandlerTool", {"operation": "create", "archive": "a.zip"}, frozenset({FW})),
    ("ArchiveHandlerTool", {"operation": "extract", "archive": "a.zip"}, frozenset({FW})),
    ("ArchiveHandlerTool", {"operation": "list", "archive": "a.zip"}, frozenset()),
    ("FileConverterTool", {"operation": "encoding", "source": "a"}, frozenset({FW})),
    ("ImageProcessorTool", {"operation": "resize", "path": "a", "output": "b"},
     frozenset({FW})),
    ("ImageProcessorTool", {"operation": "thumbnail", "path": "a", "output": "b"},
     frozenset({FW})),
    ("ImageProcessorTool", {"operation": "metadata", "path": "a"}, frozenset()),
    ("AudioProcessorTool", {"operation": "trim", "path": "a", "output": "b"}, frozenset({FW})),
    ("AudioProcessorTool", {"operation": "metadata", "path": "a"}, frozenset()),
    ("VideoProcessorTool", {"operation": "frame", "path": "a", "output": "b"}, frozenset({FW})),
    ("VideoProcessorTool", {"operation": "metadata", "path": "a"}, frozenset()),
    ("ProcessExecutorTool", {"command": "echo"}, frozenset({PROC})),
    ("EmailSenderTool", {"to": ["a@example.com"]}, frozenset({MAIL})),
    ("WebhookCallerTool", {"url": "http://x", "payload": {}}, frozenset({HOOK})),
    *[("HttpRequestTool", {"url": "http://x", "method": m}, frozenset({NET}))
      for m in ("POST", "PUT", "PATCH", "DELETE")],
    ("HttpRequestTool", {"url": "http://x"}, frozenset()),
    ("HttpRequestTool", {"url": "http://x", "method": "HEAD"}, frozenset()),
    ("ApiTesterTool", {"url": "http://x", "method": "POST"}, frozenset({NET})),
    ("ApiTesterTool", {"url": "http://x", "method": "GET"}, frozenset()),
    ("GraphqlQueryTool", {"url": "http://x", "query": "mutation { del(id: 1) }"},
     frozenset({NET})),
    ("GraphqlQueryTool", {"url": "http://x", "query": "query Q { a }\nmutation M { b }"},
     frozenset({NET})),
    ("GraphqlQueryTool", {"url": "http://x", "query": "# no mutation here\n{ a }"},
     frozenset()),
    ("GraphqlQueryTool", {"url": "http://x", "query": "query { mutations }"}, frozenset()),
    ("DatabaseConnectorTool", {"operation": "execute", "connection": "c",
                               "sql": "UPDATE t SET a = 1"}, frozenset({DBW})),
    ("DatabaseConnectorTool", {"operation": "execute", "connection": "c",
                               "sql": "SELECT 1"}, frozenset({DBW})),
    ("DatabaseConnectorTool", {"operation": "query", "connection": "c",
                               "sql": "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"},
     frozenset({DBW})),
    ("DatabaseConnectorTool", {"operation": "query", "connection": "c",
                               "sql": "SELECT a FROM t WHERE b = 1"}, frozenset()),
    ("DatabaseConnectorTool", {"operation": "connections"}, frozenset()),
]

PURE = ["Base64EncoderTool", "CalculatorTool", "CsvAnalyzerTool", "DataValidationTool",
        "DateTimeHandlerTool", "DiffCalculatorTool", "EnvironmentReaderTool", "FileSearchTool",
        "FileWatcherTool", "HashCalculatorTool", "JsonProcessorTool", "ServiceCheckerTool",
        "SitemapCrawlerTool", "SystemMonitorTool", "TemplateEngineTool", "TextManipulatorTool",
        "UrlAnalyzerTool", "UuidGeneratorTool", "WebScraperTool", "WebSearchTool",
        "WebpageMonitorTool"]


def _bare(name: str) -> Tool:
    """An instance without running the constructor: declarations depend on no configuration."""
    cls = getattr(library, name)
    made: Tool = cls.__new__(cls)
    return made


@pytest.mark.parametrize(("name", "params", "expected"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_declared_effects_by_parameters(name: str, params: dict[str, Any],
                                        expected: frozenset[SideEffect]) -> None:
    instance = _bare(name)
    assert instance.side_effects_for(params) == expected
    # the class attribute holds every effect the tool can ever have
    assert expected <= type(instance).side_effects


@pytest.mark.parametrize("name", PURE)
def test_tools_without_effects(name: str) -> None:
    instance = _bare(name)
    assert type(instance).side_effects == frozenset()
    assert instance.side_effects_for({}) == frozenset()


def test_every_library_tool_is_covered() -> None:
    tools = {n for n in library.__all__
             if isinstance(getattr(library, n), type) and issubclass(getattr(library, n), Tool)}
    covered = set(PURE) | {c[0] for c in CASES}
    assert tools == covered


def test_default_tools_instances_declare_effects(tmp_path: Any) -> None:
    made = {t.tool_name: t for t in library.default_tools(
        sandbox=tmp_path, commands=["echo"], databases={"db": "sqlite://"})}
    assert made["file_operations"].side_effects_for({"operation": "write"}) == {FW}
    assert made["process_executor"].side_effects == {PROC}
    assert made["webhook_caller"].side_effects == {HOOK}
    assert made["calculator"].side_effects_for({"expression": "1"}) == frozenset()


def test_decorator_accepts_names_and_members() -> None:
    @tool(side_effects=["file_write", SideEffect.PROCESS])
    def save(path: str) -> str:
        """Save."""
        return path

    assert save.side_effects == {FW, PROC}
    assert save.side_effects_for({"path": "x"}) == {FW, PROC}

    @tool(side_effects="email")
    def mail(to: str) -> str:
        """Mail."""
        return to

    assert mail.side_effects == {MAIL}


def test_decorator_default_is_none() -> None:
    @tool()
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    assert add.side_effects == frozenset()
    assert add.side_effects_for({"a": 1, "b": 2}) == frozenset()


def test_function_tool_argument() -> None:
    made = FunctionTool(lambda: 1, name="x", description="", parameters={"type": "object"},
                        timeout=None, security_level=SecurityLevel.SAFE,
                        side_effects=["webhook"])
    assert made.side_effects == {HOOK}


def test_bad_name_is_a_typed_error_listing_the_valid_names() -> None:
    with pytest.raises(InvalidValueError) as info:
        tool(side_effects=["file_writes"])
    text = str(info.value) + " " + str(getattr(info.value, "hint", ""))
    assert "file_writes" in text
    for effect in SideEffect:
        assert effect.value in text
    with pytest.raises(InvalidValueError):
        FunctionTool(lambda: 1, name="x", description="", parameters={"type": "object"},
                     timeout=None, security_level=SecurityLevel.SAFE, side_effects=["nope"])
