"""The built-in tool library (34 tools). Every tool is safe by default: file tools are confined to a
root folder, network tools refuse private and loopback addresses unless allowed, and
everything has size, time and count limits.

:func:`default_tools` returns one instance of each tool that needs no configuration, plus
the configurable ones whose settings are given (a sandbox folder, allowed commands,
database URLs, an SMTP server, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from llmspell.runtime.tools.base import Tool
from llmspell.runtime.tools.library.archive_tool import ArchiveHandlerTool
from llmspell.runtime.tools.library.base64_tool import Base64EncoderTool
from llmspell.runtime.tools.library.calculator import CalculatorTool
from llmspell.runtime.tools.library.csv_tool import CsvAnalyzerTool
from llmspell.runtime.tools.library.data_validation import DataValidationTool
from llmspell.runtime.tools.library.database_connector import DatabaseConnectorTool
from llmspell.runtime.tools.library.datetime_tool import DateTimeHandlerTool
from llmspell.runtime.tools.library.diff_tool import DiffCalculatorTool
from llmspell.runtime.tools.library.email_sender import EmailSenderTool
from llmspell.runtime.tools.library.environment_reader import EnvironmentReaderTool
from llmspell.runtime.tools.library.file_converter import FileConverterTool
from llmspell.runtime.tools.library.file_operations import FileOperationsTool
from llmspell.runtime.tools.library.file_search import FileSearchTool
from llmspell.runtime.tools.library.file_watcher import FileWatcherTool
from llmspell.runtime.tools.library.graphql_tool import GraphqlQueryTool
from llmspell.runtime.tools.library.hash_tool import HashCalculatorTool
from llmspell.runtime.tools.library.http_request import HttpRequestTool
from llmspell.runtime.tools.library.json_processor import JsonProcessorTool
from llmspell.runtime.tools.library.media_tools import (
    AudioProcessorTool,
    ImageProcessorTool,
    VideoProcessorTool,
)
from llmspell.runtime.tools.library.process_executor import ProcessExecutorTool
from llmspell.runtime.tools.library.service_checker import ServiceCheckerTool
from llmspell.runtime.tools.library.system_monitor import SystemMonitorTool
from llmspell.runtime.tools.library.template_tool import TemplateEngineTool
from llmspell.runtime.tools.library.text_manipulator import TextManipulatorTool
from llmspell.runtime.tools.library.uuid_tool import UuidGeneratorTool
from llmspell.runtime.tools.library.web_search import (
    JsonApiSearchProvider,
    SearchProvider,
    WebSearchTool,
)
from llmspell.runtime.tools.library.web_tools import (
    ApiTesterTool,
    SitemapCrawlerTool,
    UrlAnalyzerTool,
    WebhookCallerTool,
    WebpageMonitorTool,
    WebScraperTool,
)

__all__ = [
    "ApiTesterTool",
    "ArchiveHandlerTool",
    "AudioProcessorTool",
    "Base64EncoderTool",
    "CalculatorTool",
    "CsvAnalyzerTool",
    "DataValidationTool",
    "DatabaseConnectorTool",
    "DateTimeHandlerTool",
    "DiffCalculatorTool",
    "EmailSenderTool",
    "EnvironmentReaderTool",
    "FileConverterTool",
    "FileOperationsTool",
    "FileSearchTool",
    "FileWatcherTool",
    "GraphqlQueryTool",
    "HashCalculatorTool",
    "HttpRequestTool",
    "ImageProcessorTool",
    "JsonApiSearchProvider",
    "JsonProcessorTool",
    "ProcessExecutorTool",
    "SearchProvider",
    "ServiceCheckerTool",
    "SitemapCrawlerTool",
    "SystemMonitorTool",
    "TemplateEngineTool",
    "TextManipulatorTool",
    "UrlAnalyzerTool",
    "UuidGeneratorTool",
    "VideoProcessorTool",
    "WebScraperTool",
    "WebSearchTool",
    "WebhookCallerTool",
    "WebpageMonitorTool",
    "default_tools",
]


def default_tools(
    *,
    sandbox: Path | None = None,
    allow_loopback: bool = False,
    allow_private: bool = False,
    env_allow: Iterable[str] = (),
    commands: Iterable[str] = (),
    databases: Mapping[str, str] | None = None,
    smtp: Mapping[str, Any] | None = None,
    publish: Callable[[str, dict[str, Any]], object] | None = None,
    search: Mapping[str, SearchProvider] | None = None,
    webhook_secret: str | None = None,
    network: bool = True,
    read_roots: Iterable[Path | str] = (),
    process_users: bool = False,
) -> list[Tool]:
    """One instance of each tool, configured safely.

    ``sandbox``: the folder file tools are confined to (no file tool without it);
    ``allow_loopback``/``allow_private``: let network tools reach this machine or private
    networks; ``env_allow``: the environment variables ``environment_reader`` may read;
    ``commands``: the programs ``process_executor`` may run (none: no such tool);
    ``databases``: named SQLAlchemy URLs for ``database_connector`` (read-only);
    ``smtp``: ``EmailSenderTool`` keyword arguments (``host``, ``port``, ``from_addr``, ...);
    ``publish``: where ``file_watcher`` sends its change events (e.g. ``bus.publish``);
    ``search``: named search providers for ``web_search`` (the first is the default);
    ``webhook_secret``: the HMAC key ``webhook_caller`` signs with;
    ``network``: False leaves out every tool that opens a network connection (the HTTP and
    web tools, ``web_search``, ``email_sender``), as ``llmspell run`` does without
    ``--allow-net``;
    ``read_roots``: folders whose disk usage ``system_monitor`` may report (the sandbox is
    one too; give the read capability's folders); ``process_users``: let
    ``system_monitor`` show the user of each process (give the exec capability).
    """
    lo, pv = allow_loopback, allow_private
    tools: list[Tool] = [
        Base64EncoderTool(), CalculatorTool(), CsvAnalyzerTool(), DataValidationTool(),
        DateTimeHandlerTool(), DiffCalculatorTool(), HashCalculatorTool(),
        JsonProcessorTool(), TemplateEngineTool(), TextManipulatorTool(), UuidGeneratorTool(),
        UrlAnalyzerTool(), EnvironmentReaderTool(allow=env_allow),
        SystemMonitorTool(read_roots=(*read_roots, *(() if sandbox is None else (sandbox,))),
                          process_users=process_users),
    ]
    if network:
        tools += _network_tools(allow_loopback=lo, allow_private=pv,
                                webhook_secret=webhook_secret)
    if sandbox is not None:
        tools += [FileOperationsTool(sandbox), FileSearchTool(sandbox),
                  FileConverterTool(sandbox), ArchiveHandlerTool(sandbox),
                  FileWatcherTool(sandbox, publish=publish), ImageProcessorTool(sandbox),
                  AudioProcessorTool(sandbox), VideoProcessorTool(sandbox)]
    allowed_commands = tuple(commands)
    if allowed_commands:
        tools.append(ProcessExecutorTool(allow_commands=allowed_commands))
    if databases:
        tools.append(DatabaseConnectorTool(urls=databases))
    if search and network:
        tools.append(WebSearchTool(providers=search, default=next(iter(search))))
    if smtp and network:
        tools.append(EmailSenderTool(**{"allow_loopback": lo, "allow_private": pv, **smtp}))
    return tools


def _network_tools(*, allow_loopback: bool, allow_private: bool,
                   webhook_secret: str | None) -> list[Tool]:
    lo, pv = allow_loopback, allow_private
    return [
        HttpRequestTool(allow_loopback=lo, allow_private=pv),
        GraphqlQueryTool(allow_loopback=lo, allow_private=pv),
        ServiceCheckerTool(allow_loopback=lo, allow_private=pv),
        WebScraperTool(allow_loopback=lo, allow_private=pv),
        ApiTesterTool(allow_loopback=lo, allow_private=pv),
        WebhookCallerTool(allow_loopback=lo, allow_private=pv, secret=webhook_secret),
        WebpageMonitorTool(allow_loopback=lo, allow_private=pv),
        SitemapCrawlerTool(allow_loopback=lo, allow_private=pv),
    ]
