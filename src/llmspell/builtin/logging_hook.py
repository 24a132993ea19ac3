"""``LoggingHook``: one stdlib ``logging`` record per hook point, masked and truncated.

The hook writes to a configurable logger (default ``llmspell.hooks.log``) at a configurable
level (default ``INFO``; error points such as ``tool_error`` use ``error_level``, default
``WARNING``). Each record carries a compact message::

    before_tool_execution tool:calculator corr=0f3c... data={"tool":"calculator",...}

and structured ``extra`` fields for handlers and JSON formatters: ``llmspell_point``,
``llmspell_component`` (``{"type", "name", "id"}``), ``llmspell_correlation_id`` and
``llmspell_data`` (the masked, truncated data).

At the model points (``before_model_call``, ``after_model_call``, ``model_call_error``) the
record carries a summary rather than the whole request: provider, model, caller, turn,
attempt, the number of messages, the tools' names, ``temperature``/``max_tokens``; after
the call the answering model, ``finish_reason``, ``usage`` (tokens) and ``latency_ms``; on
error the error, its status and ``retry_after``. The prompt and reply text are left out
unless ``LoggingConfig.model_content`` is set. Model records also carry the ``extra``
fields ``llmspell_provider``, ``llmspell_model``, ``llmspell_latency_ms`` and
``llmspell_usage``.

The hot path is the disabled one: when the logger is not enabled for the level, the hook
counts a skip and returns before it masks, copies or formats anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec

from llmspell.builtin.base import (
    ALL_RUNTIME_POINTS,
    MODEL_AFTER,
    MODEL_BEFORE,
    MODEL_ERROR,
    OPERATION_ERROR,
    BuiltinHook,
)
from llmspell.builtin.masking import DEFAULT_KEEP_KEYS, DEFAULT_SENSITIVE_KEYS, Masker, truncate
from llmspell.core.errors import InvalidValueError
from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import HookOutput

__all__ = [
    "DEFAULT_KEEP_KEYS",
    "DEFAULT_LOGGER",
    "LOGGING_PRIORITY",
    "LoggingConfig",
    "LoggingHook",
    "LoggingStats",
    "build_masker",
    "check_keys",
    "model_summary",
]

LOGGING_PRIORITY = 900
"""Default priority of :class:`LoggingHook`: late, so it logs the data earlier hooks left."""

DEFAULT_LOGGER = "llmspell.hooks.log"
"""Name of the logger :class:`LoggingHook` writes to unless configured otherwise."""

def build_masker(sensitive_keys: Iterable[str], keep_keys: Iterable[str] = ()) -> Masker:
    """A :class:`Masker` for ``sensitive_keys`` that never masks the exact ``keep_keys``."""
    return Masker(sensitive_keys, keep_keys)


def check_keys(owner: str, field: str, value: object) -> tuple[str, ...]:
    """Validate a config field holding key names; returns it as a tuple."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidValueError(
            f"{owner}.{field} must be a collection of key names, not {value!r}",
            hint=f"write {field}=({value!r},)",
        )
    keys = tuple(value)
    if not all(isinstance(k, str) and k for k in keys):
        raise InvalidValueError(f"{owner}.{field} must hold non-empty strings, got {keys!r}")
    return keys


_ERROR_POINTS = frozenset({*(str(p) for p in OPERATION_ERROR), str(MODEL_ERROR),
                           "workflow_error", "event_handler_error"})
_MODEL_POINTS = frozenset({str(MODEL_BEFORE), str(MODEL_AFTER), str(MODEL_ERROR)})
_ERROR_FIELDS = ("error", "error_type", "status", "retryable", "retry_after")


def model_summary(data: dict[str, Any], content: bool = False) -> dict[str, Any]:
    """What a record or trace keeps of a model point's data: who called which model, the
    request's shape and, after the call, usage and latency; the messages' and the reply's
    text only with ``content``."""
    out: dict[str, Any] = {k: data.get(k) for k in ("provider", "model", "caller", "turn",
                                                     "attempt")}
    params = data.get("params")
    if isinstance(params, dict):
        messages = params.get("messages")
        tools = params.get("tools")
        request: dict[str, Any] = {
            "messages": len(messages) if isinstance(messages, list) else 0,
            "tools": [t.get("name") for t in tools if isinstance(t, dict)]
            if isinstance(tools, list) else [],
            "temperature": params.get("temperature"), "max_tokens": params.get("max_tokens"),
            "stream": params.get("stream"),
        }
        if content and isinstance(messages, list):
            request["content"] = [
                {"role": m.get("role"), "content": m.get("content")}
                for m in messages if isinstance(m, dict)]
        out["params"] = request
    result = data.get("result")
    if isinstance(result, dict):
        response = {k: result.get(k) for k in ("model", "finish_reason", "usage",
                                               "latency_ms", "cost_usd")}
        message = result.get("message")
        if isinstance(message, dict):
            calls = message.get("tool_calls")
            response["tool_calls"] = [c.get("name") for c in calls if isinstance(c, dict)] \
                if isinstance(calls, list) else []
            if content:
                response["content"] = message.get("content")
        out["result"] = response
    if "error" in data:
        out.update({k: data.get(k) for k in _ERROR_FIELDS})
    return out


def _level_number(value: int | str, field: str) -> int:
    """Turn ``20``, ``"INFO"`` or ``"info"`` into a logging level number."""
    if isinstance(value, bool):
        raise InvalidValueError(f"LoggingConfig.{field} must be a level, not a bool",
                                hint="use e.g. logging.INFO or 'INFO'")
    if isinstance(value, int):
        if value < 0:
            raise InvalidValueError(f"LoggingConfig.{field} must be >= 0, got {value!r}",
                                    hint="use e.g. logging.INFO or 'INFO'")
        return value
    if isinstance(value, str):
        number = logging.getLevelNamesMapping().get(value.strip().upper())
        if number is not None:
            return number
    names = ", ".join(sorted(logging.getLevelNamesMapping()))
    raise InvalidValueError(f"LoggingConfig.{field}: unknown logging level {value!r}",
                            hint=f"use an int or one of: {names}")


class LoggingConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of :class:`LoggingHook`.

    ``logger``: logger name. ``level``: level of ordinary points (int or name).
    ``error_level``: level of error points (``tool_error``, ``agent_error``, ...).
    ``max_chars``: long strings in the data, and the rendered data in the message, are cut
    to about this many characters. ``sensitive_keys``: key fragments whose values are
    masked. ``keep_keys``: exact key names never masked (default ``token_usage``).
    ``include_data``: put the data in the message and ``llmspell_data`` at all.
    ``model_content``: at the model points, also log the prompt's and the reply's text
    (masked and truncated like any data); off by default, so prompts do not end up in logs.
    """

    logger: str = DEFAULT_LOGGER
    level: int | str = logging.INFO
    error_level: int | str = logging.WARNING
    max_chars: int = 500
    sensitive_keys: tuple[str, ...] = DEFAULT_SENSITIVE_KEYS
    keep_keys: tuple[str, ...] = DEFAULT_KEEP_KEYS
    include_data: bool = True
    model_content: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.logger, str) or not self.logger:
            raise InvalidValueError("LoggingConfig.logger must be a non-empty logger name",
                                    hint=f"for example {DEFAULT_LOGGER!r}")
        force = msgspec.structs.force_setattr
        force(self, "level", _level_number(self.level, "level"))
        force(self, "error_level", _level_number(self.error_level, "error_level"))
        if (not isinstance(self.max_chars, int) or isinstance(self.max_chars, bool)
                or self.max_chars < 1):
            raise InvalidValueError(
                f"LoggingConfig.max_chars must be an int >= 1, got {self.max_chars!r}",
                hint="500 keeps records readable; raise it to see more of the data",
            )
        force(self, "sensitive_keys", check_keys("LoggingConfig", "sensitive_keys",
                                                 self.sensitive_keys))
        force(self, "keep_keys", check_keys("LoggingConfig", "keep_keys", self.keep_keys))


class LoggingStats(msgspec.Struct, frozen=True, kw_only=True):
    """What :class:`LoggingHook` did: records ``logged``, calls ``skipped`` because the
    logger was off for the level, ``errors`` while building a record, and ``by_point``
    (records logged per point)."""

    logged: int
    skipped: int
    errors: int
    by_point: dict[str, int]


class LoggingHook(BuiltinHook):
    """Logs every hook point it is installed at through stdlib ``logging``.

    Only observes (returns ``None``); a failure while building a record is counted in
    ``stats().errors`` and never reaches the operation.
    """

    default_points: tuple[str, ...] = tuple(ALL_RUNTIME_POINTS)

    def __init__(
        self,
        config: LoggingConfig | None = None,
        *,
        points: Iterable[str] | None = None,
        priority: int = LOGGING_PRIORITY,
        masker: Masker | None = None,
    ) -> None:
        """``masker`` replaces the one built from ``config.sensitive_keys``/``keep_keys``."""
        super().__init__(name="logging", priority=priority, points=points,
                         description="logs hook points through stdlib logging")
        self.config = config if config is not None else LoggingConfig()
        self.logger = logging.getLogger(self.config.logger)
        self.masker = masker if masker is not None else build_masker(
            self.config.sensitive_keys, self.config.keep_keys)
        self._level = int(self.config.level)
        error_level = int(self.config.error_level)
        self._levels: dict[str, int] = {p: error_level for p in _ERROR_POINTS}
        self._logged = 0
        self._skipped = 0
        self._errors = 0
        self._by_point: dict[str, int] = {}

    def execute(self, ctx: HookContext) -> HookOutput:
        """Log ``ctx`` if the logger is enabled for the point's level; never changes it."""
        level = self._levels.get(ctx.point, self._level)
        if not self.logger.isEnabledFor(level):
            self._skipped += 1
            return None
        try:
            self._log(ctx, level)
        except Exception:
            self._errors += 1
        return None

    def _log(self, ctx: HookContext, level: int) -> None:
        point = str(ctx.point)
        component = ctx.component
        max_chars = self.config.max_chars
        raw = ctx.data
        model = point in _MODEL_POINTS
        if model:
            raw = model_summary(raw, self.config.model_content)
        if self.config.include_data:
            data: Any = truncate(self.masker.mask(raw), max_chars)
            text = _render(data, max_chars)
        else:
            data, text = None, "-"
        extra: dict[str, Any] = {
            "llmspell_point": point,
            "llmspell_component": {"type": component.type.value, "name": component.name,
                                   "id": component.id},
            "llmspell_correlation_id": ctx.correlation_id,
            "llmspell_data": data,
        }
        if model:
            result = raw.get("result") or {}
            extra["llmspell_provider"] = raw.get("provider")
            extra["llmspell_model"] = raw.get("model")
            extra["llmspell_latency_ms"] = result.get("latency_ms")
            extra["llmspell_usage"] = result.get("usage")
        self.logger.log(
            level, "%s %s:%s corr=%s data=%s",
            point, component.type.value, component.name, ctx.correlation_id, text,
            extra=extra,
        )
        self._logged += 1
        self._by_point[point] = self._by_point.get(point, 0) + 1

    def stats(self) -> LoggingStats:
        """Counts so far (a snapshot)."""
        return LoggingStats(logged=self._logged, skipped=self._skipped, errors=self._errors,
                            by_point=dict(self._by_point))

    def reset_stats(self) -> None:
        """Set every count back to zero."""
        self._logged = self._skipped = self._errors = 0
        self._by_point = {}


def _unknown(value: Any) -> str:
    return f"<{type(value).__name__}>"


_ENCODER = msgspec.json.Encoder(enc_hook=_unknown)


def _render(data: Any, max_chars: int) -> str:
    """Compact JSON of ``data`` (unknown objects by type name), cut to ``max_chars``."""
    try:
        text = _ENCODER.encode(data).decode()
    except Exception:
        text = f"<unrenderable {type(data).__name__}>"
    if len(text) > max_chars:
        text = text[:max_chars] + f"...(+{len(text) - max_chars})"
    return text
