"""Hook points: every named lifecycle point, plus custom points.

Built-in points are members of :class:`HookPoint` (a ``StrEnum`` whose values are snake_case).
Custom points are :class:`CustomHookPoint` strings whose value is ``"custom:<name>"`` so they
can never collide with a built-in point. Both are plain ``str`` underneath, so a registry keyed
by point costs one dict lookup whichever form the caller holds.
"""

from __future__ import annotations

import difflib
import re
from enum import StrEnum
from typing import TypeAlias

from llmspell.core.errors import InvalidValueError, UnknownHookPointError

__all__ = ["MAX_POINT_NAME_LENGTH", "CustomHookPoint", "HookPoint", "Point", "parse_point"]

MAX_POINT_NAME_LENGTH = 128
"""The longest custom hook point name (without the ``custom:`` prefix)."""

_CUSTOM_PREFIX = "custom:"
# fullmatch: a "$" anchor would accept a trailing newline ("user.saved\n").
_CUSTOM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
# Longer input is no point name: refused without the (quadratic) close-match search.
_MAX_PARSE_LENGTH = len(_CUSTOM_PREFIX) + MAX_POINT_NAME_LENGTH
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


class CustomHookPoint(str):
    """A user-defined hook point. Create with :meth:`HookPoint.custom`."""

    __slots__ = ()

    @property
    def name(self) -> str:
        """The name given to :meth:`HookPoint.custom`."""
        return self[len(_CUSTOM_PREFIX) :]

    @property
    def category(self) -> str:
        """Always ``"custom"``."""
        return "custom"

    @property
    def pascal_name(self) -> str:
        """Custom points keep their own spelling: ``custom:<name>``."""
        return str(self)

    def __repr__(self) -> str:
        return f"HookPoint.custom({self.name!r})"


class HookPoint(StrEnum):
    """Every built-in hook point. Values are snake_case; see :meth:`parse` for other forms."""

    # agent
    BEFORE_AGENT_INIT = "before_agent_init"
    AFTER_AGENT_INIT = "after_agent_init"
    BEFORE_AGENT_EXECUTION = "before_agent_execution"
    AFTER_AGENT_EXECUTION = "after_agent_execution"
    AGENT_ERROR = "agent_error"
    BEFORE_AGENT_SHUTDOWN = "before_agent_shutdown"
    AFTER_AGENT_SHUTDOWN = "after_agent_shutdown"
    # tool
    BEFORE_TOOL_DISCOVERY = "before_tool_discovery"
    AFTER_TOOL_DISCOVERY = "after_tool_discovery"
    BEFORE_TOOL_EXECUTION = "before_tool_execution"
    AFTER_TOOL_EXECUTION = "after_tool_execution"
    TOOL_VALIDATION = "tool_validation"
    TOOL_ERROR = "tool_error"
    # workflow
    BEFORE_WORKFLOW_START = "before_workflow_start"
    WORKFLOW_STAGE_TRANSITION = "workflow_stage_transition"
    BEFORE_WORKFLOW_STAGE = "before_workflow_stage"
    AFTER_WORKFLOW_STAGE = "after_workflow_stage"
    WORKFLOW_CHECKPOINT = "workflow_checkpoint"
    WORKFLOW_ROLLBACK = "workflow_rollback"
    AFTER_WORKFLOW_COMPLETE = "after_workflow_complete"
    WORKFLOW_ERROR = "workflow_error"
    # state
    BEFORE_STATE_READ = "before_state_read"
    AFTER_STATE_READ = "after_state_read"
    BEFORE_STATE_WRITE = "before_state_write"
    AFTER_STATE_WRITE = "after_state_write"
    STATE_CONFLICT = "state_conflict"
    STATE_MIGRATION = "state_migration"
    # system
    SYSTEM_STARTUP = "system_startup"
    SYSTEM_SHUTDOWN = "system_shutdown"
    CONFIGURATION_CHANGE = "configuration_change"
    RESOURCE_LIMIT_EXCEEDED = "resource_limit_exceeded"
    SECURITY_VIOLATION = "security_violation"
    # session
    SESSION_START = "session_start"
    SESSION_END = "session_end"
    SESSION_CHECKPOINT = "session_checkpoint"
    SESSION_RESTORE = "session_restore"
    SESSION_SAVE = "session_save"
    SESSION_DELETE = "session_delete"  # beside the seed's 43 points: delete() and purge()
    # event
    BEFORE_EVENT_EMIT = "before_event_emit"
    AFTER_EVENT_EMIT = "after_event_emit"
    EVENT_HANDLER_ERROR = "event_handler_error"
    # performance
    PERFORMANCE_THRESHOLD_EXCEEDED = "performance_threshold_exceeded"
    MEMORY_USAGE_HIGH = "memory_usage_high"
    CPU_USAGE_HIGH = "cpu_usage_high"
    # model (the call to a model provider; beside the seed's 43 points)
    BEFORE_MODEL_CALL = "before_model_call"
    AFTER_MODEL_CALL = "after_model_call"
    MODEL_CALL_ERROR = "model_call_error"

    @property
    def pascal_name(self) -> str:
        """The seed's spelling, e.g. ``"BeforeToolExecution"``."""
        return _PASCAL[self]

    @property
    def category(self) -> str:
        """The group the point belongs to: agent, tool, workflow, state, system, ..."""
        return _CATEGORY[self]

    @staticmethod
    def custom(name: str) -> CustomHookPoint:
        """Return the custom point called ``name`` (letters, digits, ``_``, ``.``, ``-``;
        at most :data:`MAX_POINT_NAME_LENGTH` characters)."""
        if not isinstance(name, str):
            raise InvalidValueError(
                f"a custom hook point name must be a str, not {type(name).__name__}")
        if name.startswith(_CUSTOM_PREFIX):
            name = name[len(_CUSTOM_PREFIX) :]
        if len(name) > MAX_POINT_NAME_LENGTH:
            raise InvalidValueError(
                f"custom hook point name is {len(name)} characters long "
                f"(at most {MAX_POINT_NAME_LENGTH})", hint="use a shorter name")
        if not _CUSTOM_NAME.fullmatch(name):
            raise InvalidValueError(
                f"invalid custom hook point name {name!r}",
                hint="use letters, digits, '_', '.' or '-', starting with a letter, digit or '_'",
            )
        return CustomHookPoint(_CUSTOM_PREFIX + name)

    @classmethod
    def parse(cls, value: str) -> HookPoint | CustomHookPoint:
        """Parse ``"BeforeToolExecution"``, ``"before_tool_execution"``, ``"BEFORE_TOOL_EXECUTION"``
        or ``"custom:name"``; an unknown name raises :class:`UnknownHookPointError` listing the
        closest valid names."""
        return parse_point(value)


Point: TypeAlias = HookPoint | CustomHookPoint

_PASCAL: dict[HookPoint, str] = {
    p: "".join(part.capitalize() for part in p.value.split("_")) for p in HookPoint
}
_BY_KEY: dict[str, HookPoint] = {p.value: p for p in HookPoint}
_BY_KEY["agent_model_call"] = HookPoint.AFTER_MODEL_CALL  # the old custom point's name
_ALIASES: dict[str, HookPoint] = {"custom:agent_model_call": HookPoint.AFTER_MODEL_CALL}
"""Old names that parse to a named point (documented in docs/hook-points.md)."""
_CATEGORY_PREFIXES = (
    ("agent", "agent"),
    ("tool", "tool"),
    ("workflow", "workflow"),
    ("state", "state"),
    ("session", "session"),
    ("event", "event"),
    ("model", "model"),
)
_SYSTEM = {"system_startup", "system_shutdown", "configuration_change",
           "resource_limit_exceeded", "security_violation"}
_PERFORMANCE = {"performance_threshold_exceeded", "memory_usage_high", "cpu_usage_high"}


def _category_of(point: HookPoint) -> str:
    if point.value in _SYSTEM:
        return "system"
    if point.value in _PERFORMANCE:
        return "performance"
    words = point.value.split("_")
    for word, category in _CATEGORY_PREFIXES:
        if word in words:
            return category
    raise AssertionError(f"hook point {point} has no category")  # pragma: no cover


_CATEGORY: dict[HookPoint, str] = {p: _category_of(p) for p in HookPoint}


def _to_key(value: str) -> str:
    return _CAMEL_BOUNDARY.sub("_", value.strip()).replace("-", "_").replace(" ", "_").lower()


def parse_point(value: str) -> HookPoint | CustomHookPoint:
    """Parse a hook point from any accepted spelling. See :meth:`HookPoint.parse`."""
    if isinstance(value, HookPoint):
        return value
    if isinstance(value, CustomHookPoint):
        return _ALIASES.get(value, value)
    if not isinstance(value, str):
        raise InvalidValueError(
            f"a hook point must be a HookPoint or a string, not {type(value).__name__}"
        )
    if value.startswith(_CUSTOM_PREFIX):
        alias = _ALIASES.get(value)
        return alias if alias is not None else HookPoint.custom(value)
    point = _BY_KEY.get(value)
    if point is not None:
        return point
    if len(value) > _MAX_PARSE_LENGTH:
        raise UnknownHookPointError(value[:64] + "...", ())
    point = _BY_KEY.get(_to_key(value))
    if point is not None:
        return point
    pascal_style = bool(value) and value[0].isupper() and "_" not in value
    candidates = list(_PASCAL.values()) if pascal_style else list(_BY_KEY)
    probe = value if pascal_style else _to_key(value)
    suggestions = difflib.get_close_matches(probe, candidates, n=3, cutoff=0.6)
    raise UnknownHookPointError(value, suggestions)
