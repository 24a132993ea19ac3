"""The one context object passed to every hook.

Contexts are created on the hot path, so they are msgspec Structs (cheap to build, no
validation you did not ask for) and their ids come from :func:`llmspell.core.ids.new_id`
rather than ``uuid4``. Hooks change ``data`` by returning ``Modified``; the executor installs
the new data on the context before the next hook runs.
"""

from __future__ import annotations

import copy
import time
from enum import StrEnum
from typing import Any

import msgspec

from llmspell.core.errors import InvalidValueError, SerializationError
from llmspell.core.ids import new_id
from llmspell.core.language import Language
from llmspell.core.speedups import native
from llmspell.core.values import check_json_safe
from llmspell.hooks.points import CustomHookPoint, HookPoint, parse_point

__all__ = ["ComponentId", "ComponentType", "HookContext", "OperationContext"]


class ComponentType(StrEnum):
    """What kind of component a context is about."""

    AGENT = "agent"
    TOOL = "tool"
    WORKFLOW = "workflow"
    HOOK = "hook"
    STATE = "state"
    SESSION = "session"
    EVENT = "event"
    SYSTEM = "system"
    MODEL = "model"
    CUSTOM = "custom"


class ComponentId(msgspec.Struct, frozen=True, kw_only=True):
    """Identifies the component a hook runs for: its type, name and unique id."""

    type: ComponentType
    name: str
    id: str = msgspec.field(default_factory=new_id)

    @classmethod
    def of(cls, type: ComponentType | str, name: str) -> ComponentId:
        """Build a component id, parsing ``type`` from its string form."""
        try:
            kind = ComponentType(type)
        except ValueError:
            valid = ", ".join(t.value for t in ComponentType)
            raise InvalidValueError(
                f"unknown component type {type!r}", hint=f"use one of: {valid}"
            ) from None
        return cls(type=kind, name=name)


class OperationContext(msgspec.Struct, kw_only=True):
    """The operation a hook point surrounds: its type, id, parameters, result and error."""

    type: str
    id: str = msgspec.field(default_factory=new_id)
    parameters: dict[str, Any] = {}
    result: Any = None
    error: str | None = None


def _validate(ctx: HookContext) -> None:
    """The full type check of a context's fields (see ``HookContext.__post_init__``): it
    raises the error naming the field, or passes a context whose fields are subclasses of
    the expected types (the native checks' fallback too)."""
    if not isinstance(ctx.point, str):
        _bad_field("point", ctx.point, "a HookPoint or str")
    if not isinstance(ctx.component, ComponentId):
        _bad_field("component", ctx.component, "a ComponentId")
    if not isinstance(ctx.data, dict):
        _bad_field("data", ctx.data, "a dict")
    metadata = ctx.metadata
    if not isinstance(metadata, dict):
        _bad_field("metadata", metadata, "a dict of str to str")
    for key, value in metadata.items():
        if type(key) is not str or type(value) is not str:
            _bad_field(f"metadata[{key!r}]", value, "a str (keys too)")
    if not isinstance(ctx.correlation_id, str):
        _bad_field("correlation_id", ctx.correlation_id, "a str")
    if ctx.parent is not None and not isinstance(ctx.parent, HookContext):
        _bad_field("parent", ctx.parent, "a HookContext or None")
    if ctx.operation is not None and not isinstance(ctx.operation, OperationContext):
        _bad_field("operation", ctx.operation, "an OperationContext or None")


def _bad_field(field: str, value: object, expected: str) -> None:
    raise InvalidValueError(
        f"HookContext.{field} must be {expected}, got {type(value).__name__}",
        hint="build contexts with HookContext(point=..., component=ComponentId(...), "
             "data={...}) or ctx.child(...)",
    )


class HookContext(msgspec.Struct, kw_only=True):
    """Everything a hook gets: where it runs, for what, with which data.

    ``data`` is the JSON-safe payload hooks read and (through ``Modified``) change;
    ``metadata`` holds string annotations; ``correlation_id`` ties a whole run together and
    is kept by :meth:`child`.
    """

    point: str
    component: ComponentId
    data: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    language: Language = Language.PYTHON
    correlation_id: str = msgspec.field(default_factory=new_id)
    parent: HookContext | None = None
    timestamp: float = msgspec.field(default_factory=time.time)
    operation: OperationContext | None = None

    def __post_init__(self) -> None:
        # On the hot path: one expression of exact-type checks (tens of ns); anything
        # unusual (a subclass, a bad value) gets the full check, which names the field.
        parent = self.parent
        operation = self.operation
        metadata = self.metadata
        if (type(self.component) is not ComponentId or type(self.data) is not dict
                or type(metadata) is not dict
                or (parent is not None and type(parent) is not HookContext)
                or (operation is not None and type(operation) is not OperationContext)
                or type(self.point) not in _POINT_TYPES
                or type(self.correlation_id) is not str):
            _validate(self)
        elif metadata:
            for key, value in metadata.items():
                if type(value) is not str or type(key) is not str:
                    _bad_field(f"metadata[{key!r}]", value, "a str (keys too)")

    if native is not None:
        # The same exact-type checks in C (every hooked operation builds contexts); a
        # context they do not pass gets the full check, as above. (A parent must be of the
        # context's own exact type there: for a subclass's context the full check
        # decides, as the Python expression sends it there too.)
        __post_init__ = native.exact_post_init((  # type: ignore[misc]
            ("component", (ComponentId,), 0),
            ("data", (dict,), 0),
            ("metadata", (dict,), 1),
            ("parent", (), 2),
            ("operation", (type(None), OperationContext), 0),
            ("point", (str, HookPoint, CustomHookPoint), 0),
            ("correlation_id", (str,), 0),
        ), _validate)

    @property
    def hook_point(self) -> HookPoint | CustomHookPoint:
        """The point as a :class:`HookPoint` or :class:`CustomHookPoint`."""
        return parse_point(self.point)

    def child(
        self,
        point: str,
        component: ComponentId | None = None,
        data: dict[str, Any] | None = None,
        *,
        operation: OperationContext | None = None,
    ) -> HookContext:
        """Return a context for a nested call: same correlation id and language, this as parent."""
        return HookContext(
            point=point,
            component=component if component is not None else self.component,
            data=data if data is not None else {},
            metadata=dict(self.metadata) if self.metadata else {},
            language=self.language,
            correlation_id=self.correlation_id,
            parent=self,
            operation=operation,
        )

    def copy(self) -> HookContext:
        """Return a copy whose ``data`` (deeply) and ``metadata`` can change without touching
        this one. The parent, component and operation are shared."""
        return msgspec.structs.replace(
            self, data=copy.deepcopy(self.data), metadata=dict(self.metadata)
        )

    def to_json(self) -> bytes:
        """Encode as JSON. Raises ``NotJsonSafeError`` naming the path of a bad value."""
        _check_context(self, "context")
        return _ENCODER.encode(self)

    @classmethod
    def from_json(cls, payload: bytes | str) -> HookContext:
        """Decode a context produced by :meth:`to_json`."""
        try:
            ctx = _CONTEXT_DECODER.decode(payload)
        except msgspec.DecodeError as exc:
            raise SerializationError(
                f"cannot decode a HookContext: {exc}",
                hint="pass JSON produced by HookContext.to_json",
            ) from exc
        _restore_points(ctx)
        return ctx


_POINT_TYPES = (str, HookPoint, CustomHookPoint)



def _check_context(ctx: HookContext, path: str) -> None:
    check_json_safe(ctx.data, f"{path}.data")
    for key, value in ctx.metadata.items():
        if not isinstance(value, str):
            raise InvalidValueError(
                f"{path}.metadata[{key!r}] must be a str, got {type(value).__name__}"
            )
    if ctx.operation is not None:
        check_json_safe(ctx.operation.parameters, f"{path}.operation.parameters")
        check_json_safe(ctx.operation.result, f"{path}.operation.result")
    if ctx.parent is not None:
        _check_context(ctx.parent, f"{path}.parent")


def _restore_points(ctx: HookContext | None) -> None:
    while ctx is not None:
        ctx.point = parse_point(ctx.point)
        ctx = ctx.parent


def _encode_extra(value: object) -> object:
    if isinstance(value, CustomHookPoint):
        return str.__str__(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_encode_extra)
_CONTEXT_DECODER = msgspec.json.Decoder(HookContext)
