"""Concrete claims of the docs (settings, defaults, errors, events) hold in the code.

Each test pins one claim that was found wrong, or that is easy to let drift: a setting
documented but read by nothing, a default that differs between page and code, an error
class a page says is raised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llmspell import builtin
from llmspell.builtin.cost import Budget
from llmspell.errors import ConfigurationError, OperationCancelledError
from llmspell.events.store.sqlite import SQLiteStore
from llmspell.hooks import HookPoint
from llmspell.hooks.context import ComponentId, ComponentType
from llmspell.runtime import System, SystemConfig, tool
from llmspell.runtime import config as config_module

DOCS = Path(__file__).resolve().parent.parent / "docs"

_ROW = re.compile(r"^\| `(\w+)` \| (.*?) \|", re.MULTILINE)


def _table_after(page: str, marker: str) -> dict[str, str]:
    """The `| `name` | default | ...` rows of the first table after ``marker``."""
    text = (DOCS / page).read_text(encoding="utf-8")
    start = text.index(marker)
    table = re.search(r"((?:^\|.*\n)+)", text[start:], re.MULTILINE)
    assert table is not None, f"no table after {marker!r} in {page}"
    return {m.group(1): m.group(2).strip() for m in _ROW.finditer(table.group(1))}


# -- events.md: SQLiteStore's overflow default ------------------------------------------


def test_events_md_names_the_sqlite_store_overflow_default_the_code_has() -> None:
    """events.md's bounds table said ``"reject"`` was the default; the code's is ``"block"``."""
    default = inspect.signature(SQLiteStore).parameters["overflow"].default
    assert default == "block"
    row = next(line for line in (DOCS / "events.md").read_text(encoding="utf-8").splitlines()
               if line.startswith("| `SQLiteStore(max_pending_bytes=...)`"))
    assert f'`"{default}"` (default)' in row


# -- troubleshooting.md: an open breaker is a Cancel, not CircuitOpenError ---------------


@tool()
def _echo(text: str) -> str:
    """Return the text."""
    return text


async def _cancel_reasons_with_failing_guard() -> list[str]:
    reasons: list[str] = []
    async with System(SystemConfig(store="memory", breaker="default")) as system:
        system.tools.register(_echo)

        def guard(ctx: Any) -> None:
            raise RuntimeError("guard is down")

        system.registry.register("BeforeToolExecution", guard, name="guard",
                                 error_policy="fail_closed")
        for _ in range(4):  # the default breaker opens after 3 failures
            with pytest.raises(OperationCancelledError) as caught:
                await system.tools.execute("_echo", {"text": "hi"})
            reasons.append(caught.value.reason)
    return reasons


def test_open_breaker_of_fail_closed_hook_is_operation_cancelled() -> None:
    """troubleshooting.md said an open breaker raises ``CircuitOpenError``; nothing raises it:
    the caller gets ``OperationCancelledError`` whose reason starts with ``breaker open:``."""
    reasons = asyncio.run(_cancel_reasons_with_failing_guard())
    assert not reasons[0].startswith("breaker open")
    assert reasons[-1].startswith("breaker open: hook 'guard'")
    section = (DOCS / "troubleshooting.md").read_text(encoding="utf-8").split(
        "### `CircuitOpenError`", 1)[1].split("\n### ", 1)[0]
    assert "OperationCancelledError" in section and "breaker open:" in section


# -- runtime.md: the SystemConfig table ----------------------------------------------------


def test_runtime_md_config_table_matches_system_config() -> None:
    """Every row of runtime.md's configuration table is a SystemConfig field, with the
    documented environment variable (read by load_config) and default."""
    text = (DOCS / "runtime.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| `(LLMSPELL_\w+)` \| (.*?) \|", text, re.MULTILINE)
    assert len(rows) >= 8
    env = {name: field for name, (field, _kind) in config_module._ENV.items()}
    fields = SystemConfig.__struct_fields__
    defaults = dict(zip(fields[len(fields) - len(SystemConfig.__struct_defaults__):],
                        SystemConfig.__struct_defaults__, strict=True))
    for field, variable, default in rows:
        assert field in fields, f"runtime.md documents {field}, not a SystemConfig field"
        assert env.get(variable) == field, f"{variable} is not read into {field}"
        if field == "data_dir":
            continue  # documented as the resolved folder, not the None placeholder
        assert default.strip("`") in (str(defaults[field]).lower(), f"{defaults[field]:g}"
                                      if isinstance(defaults[field], float)
                                      else str(defaults[field])), (field, default)


# -- builtin-hooks/*.md: every config table's defaults -------------------------------------

_CONFIG_TABLES = [
    ("LoggingConfig", "logging-debugging.md", "| `logger` |"),
    ("DebuggingConfig", "logging-debugging.md", "| `max_traces` |"),
    ("MetricsConfig", "metrics-caching.md", "| `reservoir_size` |"),
    ("CachingConfig", "metrics-caching.md", "| `ttl` |"),
    ("RetryConfig", "retry-cost.md", "| `strategy` |"),
    ("CostConfig", "retry-cost.md", "| `currency` |"),
    ("Budget", "retry-cost.md", "| `limit` |"),
    ("SecurityConfig", "security-rate-limit.md", "| `sensitive_keys` |"),
    ("SecurityRule", "security-rate-limit.md", "| `name` | required"),
    ("RateLimitConfig", "security-rate-limit.md", "| `rate` |"),
]


def _defaults(cls: type) -> dict[str, object]:
    if dataclasses.is_dataclass(cls):
        out: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = "required"
        return out
    assert issubclass(cls, msgspec.Struct)
    fields = cls.__struct_fields__
    given = dict(zip(fields[len(fields) - len(cls.__struct_defaults__):],
                     cls.__struct_defaults__, strict=True))
    return {name: (given[name].factory() if isinstance(given.get(name), msgspec._core.Factory)
                   else given.get(name, "required")) for name in fields}


def _literal(text: str) -> object:
    """The documented default as a value, or ``...`` when it is prose or a constant name."""
    text = re.sub(r"(?<=\d)_(?=\d)", "", text.split("` (", 1)[0].strip("`"))
    if text == "required":
        return "required"
    try:
        return eval(text, {"__builtins__": {"frozenset": frozenset}})  # the docs' own literals
    except Exception:
        return ...


@pytest.mark.parametrize(("name", "page", "marker"), _CONFIG_TABLES,
                         ids=[c[0] for c in _CONFIG_TABLES])
def test_builtin_hook_config_tables_match_the_code(name: str, page: str, marker: str) -> None:
    cls = getattr(builtin, name, None) or Budget
    rows = _table_after(f"builtin-hooks/{page}", marker)
    code = _defaults(cls)
    assert set(rows) == set(code), f"{name}: documented {sorted(rows)} vs fields {sorted(code)}"
    compared = 0
    for field, documented in rows.items():
        value = _literal(documented)
        if value is ...:  # a constant's name (DEFAULT_RETRY_ON, logging.INFO) or prose
            continue
        assert value == code[field], f"{name}.{field}: docs {documented}, code {code[field]!r}"
        compared += 1
    assert compared >= len(rows) // 2, f"{name}: too few documented defaults understood"


# -- runtime.md: System.report takes the health points as named ----------------------------


async def _report(point: object) -> list[str]:
    seen: list[str] = []
    async with System(SystemConfig(store="memory")) as system:
        system.bus.subscribe("system.**", lambda e: seen.append(e.event_type))
        component = ComponentId(type=ComponentType.SYSTEM, name="probe")
        await system.report(point, component, {"rss_mb": 1})  # type: ignore[arg-type]
    return [t for t in seen if t not in ("system.started", "system.stopped")]


def test_report_with_a_hook_point_publishes_system_point() -> None:
    assert asyncio.run(_report(HookPoint.MEMORY_USAGE_HIGH)) == ["system.memory_usage_high"]


def test_report_with_the_point_value_publishes_system_point() -> None:
    # It passed the health check, ran the hooks, then raised AttributeError ('str' object
    # has no attribute 'value') before publishing.
    assert asyncio.run(_report("memory_usage_high")) == ["system.memory_usage_high"]


def test_report_with_the_documented_point_name_publishes_system_point() -> None:
    # 'MemoryUsageHigh', the spelling runtime.md uses and HookRegistry.register accepts,
    # was refused with ConfigurationError.
    assert asyncio.run(_report("MemoryUsageHigh")) == ["system.memory_usage_high"]


def test_report_refuses_a_point_that_is_not_a_health_point() -> None:
    with pytest.raises(ConfigurationError, match="not a health point") as caught:
        asyncio.run(_report("BeforeToolExecution"))
    assert caught.value.hint and "MemoryUsageHigh" in caught.value.hint
