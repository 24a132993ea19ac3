"""What a tool is: a name, a description, JSON-Schema parameters, and a body.

Subclass :class:`Tool` (set the class attributes, implement :meth:`Tool.execute`) or wrap a
function with :func:`tool`. A tool's body takes the validated parameters as one dict and
returns a JSON-safe result, sync or async. Tools know nothing of hooks or events: the
runtime's tool pipeline runs validation, hooks, timeouts and events around them.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from enum import StrEnum
from typing import Any, Final, Union, get_args, get_origin

from llmspell.core.errors import InvalidValueError
from llmspell.events.event import validate_event_type
from llmspell.runtime.providers.base import ToolSpec
from llmspell.runtime.tools.validation import ParamsValidator

__all__ = ["DEFAULT_TOOL_TIMEOUT", "FunctionTool", "SecurityLevel", "SideEffect", "Tool",
           "check_tool_name", "schema_from_signature", "side_effects_of", "tool"]


class SecurityLevel(StrEnum):
    """How much a tool can touch: ``safe`` (pure computation), ``restricted`` (files or
    network within configured limits), ``privileged`` (processes, system state)."""

    SAFE = "safe"
    RESTRICTED = "restricted"
    PRIVILEGED = "privileged"


class SideEffect(StrEnum):
    """What a tool call changes outside the process; replay and simulation never re-execute a
    call that declares one. ``file_write``: creates, changes, moves or deletes files or
    directories. ``process``: starts a program. ``email``: sends mail. ``webhook``: notifies
    a third party's endpoint. ``database_write``: changes a database (INSERT, UPDATE, DDL,
    ...). ``network_write``: any other request that may change remote state (HTTP methods
    other than GET and HEAD, GraphQL mutations)."""

    FILE_WRITE = "file_write"
    PROCESS = "process"
    EMAIL = "email"
    WEBHOOK = "webhook"
    DATABASE_WRITE = "database_write"
    NETWORK_WRITE = "network_write"


def side_effects_of(values: Iterable[SideEffect | str]) -> frozenset[SideEffect]:
    """``values`` as a set of :class:`SideEffect`; an unknown name raises
    :class:`InvalidValueError` listing the valid ones."""
    if isinstance(values, str):  # a lone string would otherwise be read letter by letter
        values = [values]
    found: set[SideEffect] = set()
    for value in values:
        try:
            found.add(SideEffect(value))
        except ValueError:
            raise InvalidValueError(
                f"unknown side effect {value!r}",
                hint="valid side effects: " + ", ".join(e.value for e in SideEffect),
            ) from None
    return frozenset(found)


DEFAULT_TOOL_TIMEOUT: Final = 30.0
"""A tool's timeout unless it sets its own. A tool whose ``timeout`` is this value follows
the System's ``SystemConfig.tool_timeout`` instead (30 s unless configured)."""


class Tool:
    """Base class of tools. Subclasses set ``name``, ``description``, ``parameters`` (a JSON
    Schema of an object) and optionally ``timeout`` (seconds, None for none; the default,
    :data:`DEFAULT_TOOL_TIMEOUT`, means the System's ``tool_timeout``) and
    ``security_level``, and implement :meth:`execute`."""

    name: str = ""
    description: str = ""
    parameters: dict[str, Any] = {"type": "object", "properties": {}}  # noqa: RUF012
    timeout: float | None = DEFAULT_TOOL_TIMEOUT
    security_level: SecurityLevel = SecurityLevel.SAFE
    #: True for a sync body that blocks (disk, network): it then runs on a worker thread
    #: with its timeout enforced, instead of inline on the event loop.
    blocking: bool = False
    #: Everything a call may change outside the process (see :class:`SideEffect`); when an
    #: effect depends on the parameters, this holds every possible one and
    #: :meth:`side_effects_for` narrows it per call.
    side_effects: frozenset[SideEffect] = frozenset()

    _validator: ParamsValidator | None = None

    def execute(self, params: dict[str, Any]) -> Any:
        """Run the tool with validated ``params``; return a JSON-safe result (or an
        awaitable of one)."""
        raise NotImplementedError

    def side_effects_for(self, params: dict[str, Any]) -> frozenset[SideEffect]:
        """The side effects of a call with ``params`` (default: :attr:`side_effects`).
        Overrides must stay conservative: when unsure, they declare the effect."""
        return self.side_effects

    @property
    def tool_name(self) -> str:
        """The registry name (``name``, checked)."""
        if not self.name:
            raise InvalidValueError(f"{type(self).__name__} has no name")
        return self.name

    def spec(self) -> ToolSpec:
        """What a model is shown: name, description, parameter schema."""
        return ToolSpec(name=self.tool_name, description=self.description,
                        parameters=self.parameters)

    def validator(self) -> ParamsValidator:
        """The compiled check of ``parameters`` (the schema is checked once, here)."""
        if self._validator is None:
            self._validator = ParamsValidator(self.name, self.parameters)
        return self._validator

    def validate(self, params: dict[str, Any]) -> None:
        """Raise :class:`ToolValidationError` naming the first bad parameter."""
        self.validator().validate(params)


class FunctionTool(Tool):
    """A tool whose body is a function called with the parameters as keyword arguments."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        description: str,
        parameters: dict[str, Any],
        timeout: float | None,
        security_level: SecurityLevel,
        blocking: bool = False,
        side_effects: Iterable[SideEffect | str] = (),
    ) -> None:
        self.fn = fn
        self.name = name
        self.description = description
        self.parameters = parameters
        self.timeout = timeout
        self.security_level = security_level
        self.is_async = inspect.iscoroutinefunction(fn)
        if blocking and self.is_async:
            raise InvalidValueError(
                f"tool {name!r}: blocking=True is for sync functions",
                hint="an async function already runs on the event loop without blocking it")
        self.blocking = blocking
        self.side_effects = side_effects_of(side_effects)

    def execute(self, params: dict[str, Any]) -> Any | Awaitable[Any]:
        """Call the function with ``params`` as keyword arguments."""
        return self.fn(**params)

    def __repr__(self) -> str:
        return f"<tool {self.name!r}>"


_JSON_TYPES: dict[Any, str] = {
    str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
    dict: "object", type(None): "null",
}


def _schema_of(annotation: Any) -> dict[str, Any]:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema_of(a) for a in get_args(annotation)]}
    if origin is typing.Literal:
        return {"enum": list(get_args(annotation))}
    base = origin or annotation
    if base in _JSON_TYPES:
        schema: dict[str, Any] = {"type": _JSON_TYPES[base]}
        args = get_args(annotation)
        if base is list and args:
            schema["items"] = _schema_of(args[0])
        return schema
    raise InvalidValueError(
        f"cannot turn the annotation {annotation!r} into a JSON Schema",
        hint="annotate with str, int, float, bool, list[...], dict, Literal[...] or unions, "
        "or pass parameters= explicitly",
    )


def schema_from_signature(fn: Callable[..., Any]) -> dict[str, Any]:
    """A JSON Schema (object) from a function's annotated keyword parameters; parameters
    without a default are required."""
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for pname, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        properties[pname] = _schema_of(hints.get(pname, param.annotation))
        if param.default is inspect.Parameter.empty:
            required.append(pname)
        else:
            properties[pname]["default"] = param.default
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def check_tool_name(name: object) -> str:
    """``name`` if it can name a tool: a non-empty text that makes valid event types
    (``tool.<name>.started``; letters, digits, ``_``, ``-``, dots between them), else
    :class:`InvalidValueError`. Checked when a tool is defined and registered, so a bad name
    fails there instead of at every call."""
    if not isinstance(name, str) or not name:
        raise InvalidValueError(f"a tool needs a non-empty name, got {name!r}",
                                hint="@tool('lookup_order') or a Tool subclass's name")
    try:
        validate_event_type(f"tool.{name}.completed")
    except InvalidValueError:
        raise InvalidValueError(
            f"tool name {name!r} cannot be used: tool events are named tool.<name>.started",
            hint="use letters, digits, '_' and '-' (what model APIs accept too, at most 64 "
                 "characters), e.g. @tool('lookup_order')") from None
    return name


def tool(
    name: str | None = None,
    *,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    timeout: float | None = DEFAULT_TOOL_TIMEOUT,
    security_level: SecurityLevel | str = SecurityLevel.SAFE,
    blocking: bool = False,
    side_effects: Iterable[SideEffect | str] = (),
) -> Callable[[Callable[..., Any]], FunctionTool]:
    """Turn a function into a tool. The schema comes from its annotations unless given; the
    description from its docstring unless given. ``blocking=True`` runs a sync function on
    a worker thread under ``timeout`` instead of inline on the event loop: use it for
    anything slower than a few microseconds (disk, network, heavy computation).
    ``side_effects`` names what the function changes outside the process (see
    :class:`SideEffect`, e.g. ``side_effects=["file_write"]``); an unknown name raises
    :class:`InvalidValueError` at definition.

    >>> @tool()
    ... def add(a: int, b: int) -> int:
    ...     "Add two integers."
    ...     return a + b
    """

    effects = side_effects_of(side_effects)  # a bad name fails at the decorator

    def wrap(fn: Callable[..., Any]) -> FunctionTool:
        if not callable(fn):
            raise InvalidValueError(f"@tool wraps a function, got {type(fn).__name__}",
                                    hint="put @tool() above a def, or register a Tool")
        tool_name = check_tool_name(name or getattr(fn, "__name__", None))
        doc = inspect.getdoc(fn) or ""
        made = FunctionTool(
            fn,
            name=tool_name,
            description=description if description is not None else doc.split("\n\n")[0],
            parameters=parameters if parameters is not None else schema_from_signature(fn),
            timeout=timeout,
            security_level=SecurityLevel(security_level),
            blocking=blocking,
            side_effects=effects,
        )
        made.validator()  # a bad schema fails at definition, not at first call
        return made

    return wrap
