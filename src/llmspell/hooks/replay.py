"""Replay and language adapters.

* :class:`ReplayableHook` is the protocol of a hook whose inputs and outputs can be stored as
  JSON and run again later; :class:`Replayable` makes any hook replayable. A replay id is
  ``"name:version"`` so a stored call names the exact hook version that produced it.
* :class:`HookAdapter` is the protocol the script bridges (Lua, JavaScript) implement to turn
  a context into their language's value and their value back into a result.
  :class:`DictHookAdapter` is the plain-dict form those bridges share: the context as a JSON
  dict, and results in the seed's script form (``{type = "modified", data = {...}}``,
  ``"continue"``, ``nil``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgspec

from llmspell.core.errors import HookError, InvalidValueError, SerializationError
from llmspell.core.values import check_json_safe
from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import HookOutput
from llmspell.hooks.metadata import HookMetadata
from llmspell.hooks.result import (
    CONTINUE,
    Cache,
    Cancel,
    Fork,
    ForkOperation,
    HookResult,
    Modified,
    Redirect,
    Replace,
    Retry,
    Skipped,
    result_from_json,
    result_to_dict,
    result_to_json,
)

__all__ = [
    "DictHookAdapter",
    "HookAdapter",
    "Replayable",
    "ReplayableHook",
    "ScriptHookError",
]

T = TypeVar("T")


@runtime_checkable
class ReplayableHook(Protocol):
    """A hook whose calls can be stored as JSON and replayed."""

    @property
    def replay_id(self) -> str:
        """``"name:version"`` of the hook."""
        ...

    def serialize_context(self, ctx: HookContext) -> bytes:
        """Encode the context a call received."""
        ...

    def deserialize_context(self, payload: bytes | str) -> HookContext:
        """Decode a stored context."""
        ...

    def serialize_result(self, result: HookResult) -> bytes:
        """Encode the result a call returned."""
        ...

    def deserialize_result(self, payload: bytes | str) -> HookResult:
        """Decode a stored result."""
        ...


class Replayable:
    """Wrap any hook (callable or hook object) to make it replayable.

    The wrapper registers like the hook it wraps. ``replay(payload)`` decodes a stored
    context, runs the hook on it and returns the result.
    """

    def __init__(
        self, hook: Any, *, name: str | None = None, version: str | None = None
    ) -> None:
        inner_meta = getattr(hook, "metadata", None)
        if isinstance(inner_meta, HookMetadata):
            meta = inner_meta
            self._call = hook.execute
            self._should = getattr(hook, "should_execute", None)
        elif callable(hook):
            default_name: str = getattr(hook, "__qualname__", None) or type(hook).__name__
            meta = HookMetadata(name=name or default_name)
            self._call = hook
            self._should = None
        else:
            raise InvalidValueError(f"{type(hook).__name__} is not a hook")
        fields: dict[str, Any] = {}
        if name is not None:
            fields["name"] = name
        if version is not None:
            fields["version"] = version
        self.metadata = msgspec.structs.replace(meta, **fields) if fields else meta
        self.hook = hook

    @property
    def replay_id(self) -> str:
        """``"name:version"``."""
        return f"{self.metadata.name}:{self.metadata.version}"

    def execute(self, ctx: HookContext) -> HookOutput:
        """Run the wrapped hook."""
        out: HookOutput = self._call(ctx)
        return out

    def should_execute(self, ctx: HookContext) -> bool:
        """Delegate to the wrapped hook's predicate, if it has one."""
        return bool(self._should(ctx)) if self._should is not None else True

    def serialize_context(self, ctx: HookContext) -> bytes:
        """Encode ``ctx`` as JSON (refusing non-JSON-safe data, naming its path)."""
        return ctx.to_json()

    def deserialize_context(self, payload: bytes | str) -> HookContext:
        """Decode a context stored by :meth:`serialize_context`."""
        return HookContext.from_json(payload)

    def serialize_result(self, result: HookResult) -> bytes:
        """Encode ``result`` as JSON."""
        return result_to_json(result)

    def deserialize_result(self, payload: bytes | str) -> HookResult:
        """Decode a result stored by :meth:`serialize_result`."""
        return result_from_json(payload)

    async def replay_async(self, payload: bytes | str) -> HookResult:
        """Decode a stored context, run the hook on it (awaiting if async), return the result."""
        ctx = self.deserialize_context(payload)
        out: Any = self._call(ctx)
        if inspect.isawaitable(out):
            out = await out
        return _as_result(out, self.metadata.name)

    def replay(self, payload: bytes | str) -> HookResult:
        """Sync form of :meth:`replay_async` (runs an async hook on a fresh event loop)."""
        ctx = self.deserialize_context(payload)
        out: Any = self._call(ctx)
        if inspect.isawaitable(out):
            awaitable = out

            async def wait() -> Any:
                return await awaitable

            out = asyncio.run(wait())
        return _as_result(out, self.metadata.name)


def _as_result(out: object, name: str) -> HookResult:
    if out is None:
        return CONTINUE
    if isinstance(out, (Cache, Cancel, Fork, Modified, Redirect, Replace, Retry, Skipped)):
        return out
    if type(out) is type(CONTINUE):
        return CONTINUE
    raise InvalidValueError(f"hook {name!r} returned {type(out).__name__}, not a HookResult")


@runtime_checkable
class HookAdapter(Protocol[T]):
    """Turns contexts into a language's values and that language's values into results."""

    def adapt_context(self, ctx: HookContext) -> T:
        """The context as the language sees it."""
        ...

    def adapt_result(self, value: T) -> HookResult:
        """The language's return value as a :class:`HookResult`."""
        ...

    def extract_error(self, value: T) -> Exception | None:
        """The error a return value reports, if it reports one."""
        ...


class ScriptHookError(HookError):
    """A script hook reported an error in its return value."""


class DictHookAdapter:
    """The plain-dict form shared by the script bridges.

    Contexts become JSON dicts (``point``, ``component``, ``data``, ``metadata``, ...).
    Results are accepted as ``None``/``"continue"`` (continue), a kind name with no fields
    (``"continue"``), or a dict ``{"type": kind, ...fields}``; ``retry`` also takes
    ``delay_ms``; ``fork`` takes ``operations`` as a list of ``{type, target, parameters}``;
    ``{"type": "error", "message": ...}`` reports an error.
    """

    def adapt_context(self, ctx: HookContext) -> dict[str, Any]:
        """Return the context's JSON-safe dict form."""
        check_json_safe(ctx.data, "context.data")
        out: dict[str, Any] = msgspec.json.decode(ctx.to_json())
        return out

    def adapt_result(self, value: Any) -> HookResult:
        """Turn a script's return value into a result (see the class docstring)."""
        if value is None:
            return CONTINUE
        if isinstance(value, str):
            if value.lower() == "continue":
                return CONTINUE
            raise SerializationError(
                f"a hook returned the string {value!r}",
                hint='return nil/None, "continue", or a table/dict with a "type" field',
            )
        if not isinstance(value, Mapping):
            raise SerializationError(
                f"a hook returned a {type(value).__name__}, not a result",
                hint='return nil/None, "continue", or a table/dict with a "type" field',
            )
        kind = str(value.get("type", "")).lower()
        try:
            return self._build(kind, value)
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(
                f"cannot read a {kind!r} result from {dict(value)!r}: {exc}",
                hint="see docs/hooks.md, 'Results from scripts'",
            ) from exc

    @staticmethod
    def _build(kind: str, v: Mapping[str, Any]) -> HookResult:
        if kind == "continue":
            return CONTINUE
        if kind == "modified":
            data = v["data"]
            check_json_safe(data, "result.data")
            return Modified(dict(data))
        if kind == "cancel":
            return Cancel(str(v.get("reason", "cancelled by hook")))
        if kind == "redirect":
            return Redirect(v["target"])  # validated by Redirect: a non-empty str
        if kind == "replace":
            return Replace(v.get("value"))
        if kind == "retry":
            delay = float(v["delay_ms"]) / 1000 if "delay_ms" in v else float(v.get("delay", 0))
            return Retry(delay, int(v.get("max_attempts", 3)))
        if kind == "fork":
            ops = tuple(
                ForkOperation(
                    type=str(op["type"]),
                    target=str(op["target"]),
                    parameters=dict(op.get("parameters") or {}),
                )
                for op in v["operations"]
            )
            return Fork(ops)
        if kind == "cache":
            ttl = v.get("ttl")
            return Cache(str(v["key"]), float(ttl) if ttl is not None else None,
                         bool(v.get("shared", False)))
        if kind == "skipped":
            return Skipped(str(v.get("reason", "skipped by hook")))
        raise ValueError(
            "unknown result type; use continue, modified, cancel, redirect, replace, retry, "
            "fork, cache or skipped"
        )

    def extract_error(self, value: Any) -> Exception | None:
        """A ``{"type": "error", "message": ...}`` value becomes a :class:`ScriptHookError`."""
        if isinstance(value, Mapping) and str(value.get("type", "")).lower() == "error":
            return ScriptHookError(str(value.get("message", "script hook reported an error")))
        return None

    def result_to_value(self, result: HookResult) -> dict[str, Any]:
        """The dict form of ``result`` (what :meth:`adapt_result` reads back)."""
        return result_to_dict(result)
