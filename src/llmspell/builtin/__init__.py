"""Built-in production hooks: logging, metrics, debugging, security, caching, rate limiting,
retry and cost tracking, and OpenTelemetry tracing (:class:`TracingHook`). Each is one class
with a typed config; ``hook.install(registry)`` puts it at its points in one line, and
:func:`production` returns the recommended set.

Default priorities (lower runs first): tracing -1,000,000, security -1000, caching -900, rate
limit -800, cost tracking -700, retry 0, logging 900, debugging 950, metrics 1000.

Every one of them also governs model calls (``BeforeModelCall``, ``AfterModelCall``,
``ModelCallError``): security masks or refuses prompts, caching serves model responses,
rate limiting counts requests and tokens per model, cost tracking checks budgets before
each call against its estimated cost and prices it after, retry re-asks a provider that
answered 408/429/5xx, and logging, debugging and metrics report per model
(docs/builtin-hooks.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from llmspell.builtin.base import BuiltinHook
from llmspell.builtin.caching import CachingConfig, CachingHook
from llmspell.builtin.cost import CostConfig, CostTrackingHook
from llmspell.builtin.counters import CounterBackend, MemoryCounters, counter_key
from llmspell.builtin.debugging import DebuggingConfig, DebuggingHook
from llmspell.builtin.logging_hook import LoggingConfig, LoggingHook
from llmspell.builtin.masking import Masker
from llmspell.builtin.metrics import (
    MetricsConfig,
    MetricsHook,
    OpenTelemetryExporter,
    PrometheusExporter,
)
from llmspell.builtin.rate_limit import ModelLimit, RateLimitConfig, RateLimitHook
from llmspell.builtin.retry import RetryConfig, RetryHook
from llmspell.builtin.security import (
    API_KEY_PATTERN,
    EMAIL_PATTERN,
    MESSAGE_CONTENT,
    REPLY_CONTENT,
    SecurityConfig,
    SecurityHook,
    SecurityRule,
    redact_rule,
)
from llmspell.builtin.tracing import TracingConfig, TracingHook
from llmspell.events.bus import EventBus
from llmspell.hooks.registry import HookHandle, HookRegistry

__all__ = [
    "API_KEY_PATTERN",
    "EMAIL_PATTERN",
    "MESSAGE_CONTENT",
    "REPLY_CONTENT",
    "BuiltinHook",
    "CachingConfig",
    "CachingHook",
    "CostConfig",
    "CostTrackingHook",
    "CounterBackend",
    "DebuggingConfig",
    "DebuggingHook",
    "LoggingConfig",
    "LoggingHook",
    "Masker",
    "MemoryCounters",
    "MetricsConfig",
    "MetricsHook",
    "ModelLimit",
    "OpenTelemetryExporter",
    "PrometheusExporter",
    "RateLimitConfig",
    "RateLimitHook",
    "RetryConfig",
    "RetryHook",
    "SecurityConfig",
    "SecurityHook",
    "SecurityRule",
    "TracingConfig",
    "TracingHook",
    "counter_key",
    "install_all",
    "production",
    "redact_rule",
]


def production(
    *,
    bus: EventBus | None = None,
    security: SecurityConfig | None = None,
    retry: RetryConfig | None = None,
    cost: CostConfig | None = None,
    metrics: MetricsConfig | None = None,
    logging_config: LoggingConfig | None = None,
    caching: CachingConfig | None = None,
    rate_limit: RateLimitConfig | None = None,
    debugging: DebuggingConfig | None = None,
    violation_sink: Callable[[dict[str, Any]], object] | None = None,
) -> list[BuiltinHook]:
    """The recommended set: security (fail-closed, audit to ``bus``), retry, cost tracking
    (records to ``bus``), metrics, and logging (records at INFO: the ``llmspell.hooks.log``
    logger's level decides whether they are written, at almost no cost when they are
    not). Caching, rate limiting and debugging depend on the application, so they are
    added only when given a config. The set governs model calls as well as tools and
    agents (see the module docstring)."""
    hooks: list[BuiltinHook] = [
        SecurityHook(security, bus=bus, violation_sink=violation_sink),
        RetryHook(retry),
        CostTrackingHook(cost, bus=bus),
        MetricsHook(metrics),
        LoggingHook(logging_config),
    ]
    if caching is not None:
        hooks.append(CachingHook(caching))
    if rate_limit is not None:
        hooks.append(RateLimitHook(rate_limit))
    if debugging is not None:
        hooks.append(DebuggingHook(debugging))
    return hooks


def install_all(hooks: Iterable[BuiltinHook], registry: HookRegistry) -> list[HookHandle]:
    """Install every hook in ``hooks``; returns all the handles."""
    handles: list[HookHandle] = []
    for hook in hooks:
        handles.extend(hook.install(registry))
    return handles
