"""Every library tool through the runtime: its points fire (BeforeToolExecution, then
AfterToolExecution or ToolError) and a Cancel hook keeps its body from ever running."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import OperationCancelled
from llmspell.hooks import Cancel, HookContext, HookPoint
from llmspell.runtime import System, SystemConfig, Tool
from llmspell.runtime.tools import library as lib

# (factory given a sandbox folder, parameters of a real call)
CASES: list[tuple[str, Callable[[Path], Tool], dict[str, Any]]] = [
    ("base64_encoder", lambda r: lib.Base64EncoderTool(),
     {"operation": "encode", "input": "hi"}),
    ("calculator", lambda r: lib.CalculatorTool(), {"expression": "1 + 2"}),
    ("csv_analyzer", lambda r: lib.CsvAnalyzerTool(),
     {"operation": "head", "csv": "a,b\n1,2\n"}),
    ("data_validation", lambda r: lib.DataValidationTool(),
     {"data": {"a": 1}, "schema": {"type": "object"}}),
    ("date_time_handler", lambda r: lib.DateTimeHandlerTool(), {"operation": "now"}),
    ("diff_calculator", lambda r: lib.DiffCalculatorTool(), {"old": "a\n", "new": "b\n"}),
    ("hash_calculator", lambda r: lib.HashCalculatorTool(), {"input": "x"}),
    ("json_processor", lambda r: lib.JsonProcessorTool(),
     {"operation": "query", "data": {"a": [1]}, "path": "a[0]"}),
    ("template_engine", lambda r: lib.TemplateEngineTool(),
     {"template": "hi {{ name }}", "variables": {"name": "x"}}),
    ("text_manipulator", lambda r: lib.TextManipulatorTool(),
     {"operation": "uppercase", "text": "x"}),
    ("uuid_generator", lambda r: lib.UuidGeneratorTool(), {}),
    ("http_request", lambda r: lib.HttpRequestTool(), {"url": "http://127.0.0.1:9/"}),
    ("graphql_query", lambda r: lib.GraphqlQueryTool(),
     {"url": "http://127.0.0.1:9/graphql", "query": "{ a }"}),
    ("service_checker", lambda r: lib.ServiceCheckerTool(),
     {"check": "tcp", "host": "127.0.0.1", "port": 9}),
    ("system_monitor", lambda r: lib.SystemMonitorTool(), {}),
    ("environment_reader", lambda r: lib.EnvironmentReaderTool(allow=("PATH",)),
     {"operation": "list"}),
    ("file_operations", lambda r: lib.FileOperationsTool(r),
     {"operation": "write", "path": "side-effect.txt", "content": "x"}),
    ("file_search", lambda r: lib.FileSearchTool(r), {"pattern": "*.txt"}),
    ("file_converter", lambda r: lib.FileConverterTool(r),
     {"operation": "line_endings", "source": "in.txt", "destination": "out.txt",
      "line_ending": "crlf"}),
    ("archive_handler", lambda r: lib.ArchiveHandlerTool(r),
     {"operation": "create", "archive": "out.zip", "sources": ["in.txt"]}),
    ("file_watcher", lambda r: lib.FileWatcherTool(r), {"duration": 0.05}),
    ("image_processor", lambda r: lib.ImageProcessorTool(r),
     {"operation": "metadata", "path": "in.txt"}),
    ("audio_processor", lambda r: lib.AudioProcessorTool(r),
     {"operation": "metadata", "path": "in.txt"}),
    ("video_processor", lambda r: lib.VideoProcessorTool(r),
     {"operation": "metadata", "path": "in.txt"}),
    ("url_analyzer", lambda r: lib.UrlAnalyzerTool(), {"url": "https://example.org/a?b=1"}),
    ("web_scraper", lambda r: lib.WebScraperTool(), {"url": "http://127.0.0.1:9/"}),
    ("api_tester", lambda r: lib.ApiTesterTool(), {"url": "http://127.0.0.1:9/"}),
    ("webhook_caller", lambda r: lib.WebhookCallerTool(secret="s3cret"),
     {"url": "http://127.0.0.1:9/hook", "payload": {"a": 1}}),
    ("webpage_monitor", lambda r: lib.WebpageMonitorTool(), {"url": "http://127.0.0.1:9/"}),
    ("sitemap_crawler", lambda r: lib.SitemapCrawlerTool(),
     {"sitemap_url": "http://127.0.0.1:9/sitemap.xml"}),
    ("web_search",
     lambda r: lib.WebSearchTool(providers={"local": lib.JsonApiSearchProvider(
         "http://127.0.0.1:9/search")}, default="local"),
     {"query": "llmspell"}),
    ("process_executor",
     lambda r: lib.ProcessExecutorTool(allow_commands=(sys.executable,)),
     {"argv": [sys.executable, "-c", "print('ran')"]}),
    ("database_connector",
     lambda r: lib.DatabaseConnectorTool(urls={"db": f"sqlite:///{r / 'db.sqlite'}"}),
     {"operation": "connections"}),
    ("email_sender",
     lambda r: lib.EmailSenderTool(host="127.0.0.1", port=9, from_addr="a@example.com",
                                   tls="none"),
     {"to": ["b@example.com"], "subject": "s", "text": "b"}),
]


def _system() -> System:
    return System(SystemConfig(store="memory"))


@pytest.mark.parametrize(("name", "factory", "params"), CASES, ids=[c[0] for c in CASES])
async def test_points_fire_for_every_tool(name: str, factory: Callable[[Path], Tool],
                                          params: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("line\n")
    seen: list[str] = []

    def record(ctx: HookContext) -> None:
        assert ctx.data["tool"] == name and ctx.component.name == name
        seen.append(str(ctx.point))

    async with _system() as system:
        tool = factory(tmp_path)
        assert tool.tool_name == name
        system.tools.register(tool)
        for point in (HookPoint.BEFORE_TOOL_EXECUTION, HookPoint.AFTER_TOOL_EXECUTION,
                      HookPoint.TOOL_ERROR):
            system.registry.register(point, record, name=f"rec-{point}")
        try:
            await system.tools.execute(name, params)
        except Exception as exc:  # a refused address, a closed port: ToolError fired
            assert "tool_error" in seen, f"{name} failed without ToolError: {exc!r}"
        assert seen[0] == "before_tool_execution"
        assert seen[-1] in ("after_tool_execution", "tool_error")


@pytest.mark.parametrize(("name", "factory", "params"), CASES, ids=[c[0] for c in CASES])
async def test_a_cancel_hook_prevents_every_tools_side_effect(
    name: str, factory: Callable[[Path], Tool], params: dict[str, Any], tmp_path: Path,
) -> None:
    (tmp_path / "in.txt").write_text("line\n")
    ran: list[str] = []
    async with _system() as system:
        tool = factory(tmp_path)
        body = tool.execute

        def spy(p: dict[str, Any]) -> Any:
            ran.append(name)
            return body(p)

        tool.execute = spy  # type: ignore[method-assign]
        system.tools.register(tool)
        system.registry.register(HookPoint.BEFORE_TOOL_EXECUTION,
                                 lambda c: Cancel("policy says no"), name="deny")
        with pytest.raises(OperationCancelled, match="policy says no"):
            await system.tools.execute(name, params)
    assert ran == []
    assert not (tmp_path / "side-effect.txt").exists()
    assert not (tmp_path / "out.txt").exists() and not (tmp_path / "out.zip").exists()


def test_default_tools_are_configured_safely(tmp_path: Path) -> None:
    bare = {t.tool_name for t in lib.default_tools()}
    assert "file_operations" not in bare and "process_executor" not in bare
    full = {t.tool_name for t in lib.default_tools(
        sandbox=tmp_path, commands=(sys.executable,),
        databases={"db": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        smtp={"host": "127.0.0.1", "port": 25, "from_addr": "a@example.com"},
        search={"local": lib.JsonApiSearchProvider("http://127.0.0.1:9/search")})}
    assert len(full) == 34
    assert {c[0] for c in CASES} == full


def test_every_library_tool_is_listed_in_docs_tools_md() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "tools.md").read_text()
    for name, _, _ in CASES:
        assert f"| `{name}` |" in page, f"{name} is missing from docs/tools.md"
