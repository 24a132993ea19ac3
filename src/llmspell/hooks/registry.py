"""The hook registry: thread-safe writes, lock-free reads.

Each point maps to an immutable tuple of its enabled hooks, already sorted by
``(priority, registration order)``. A write builds a new tuple under a lock and swaps it in
with one dict assignment, so a dispatcher reading concurrently sees either the old chain or
the new one, never a half-built one, and takes no lock. A point with no hooks is absent
from the dict: the executor's fast path is one ``dict.get``.
"""

from __future__ import annotations

import inspect
import itertools
import operator
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

import msgspec

from llmspell.core.errors import DuplicateHookError, HookNotFoundError, InvalidValueError
from llmspell.core.language import Language
from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import (
    BaseHook,
    HookCallable,
    check_predicate,
    hook_spec_of,
    is_async_callable,
)
from llmspell.hooks.metadata import ErrorPolicy, HookMetadata, metadata_fields, parse_priority
from llmspell.hooks.points import CustomHookPoint, HookPoint, parse_point

__all__ = ["HookHandle", "HookInfo", "HookRegistry", "RegisteredHook", "RegistryStats"]

Point: TypeAlias = HookPoint | CustomHookPoint


class HookHandle(msgspec.Struct, frozen=True):
    """Returned by :meth:`HookRegistry.register`; pass it back to unregister or toggle."""

    id: int
    point: str
    name: str


class RegisteredHook:
    """A hook as the executor sees it. Attributes are read on the hot path, so: slots."""

    __slots__ = (
        "call",
        "enabled",
        "error_policy",
        "handle",
        "id",
        "is_async",
        "metadata",
        "name",
        "point",
        "priority",
        "seq",
        "should_execute",
        "source",
        "timeout",
    )

    def __init__(
        self,
        *,
        hook_id: int,
        point: Point,
        metadata: HookMetadata,
        call: HookCallable,
        should_execute: Callable[[HookContext], bool] | None,
        source: object,
        enabled: bool,
    ) -> None:
        self.id = hook_id
        self.seq = hook_id
        self.point = point
        self.metadata = metadata
        self.name = metadata.name
        self.priority = metadata.priority
        self.error_policy = metadata.error_policy
        self.timeout = metadata.timeout
        self.call = call
        self.is_async = is_async_callable(call)
        self.should_execute = should_execute
        self.source = source
        self.enabled = enabled
        self.handle = HookHandle(hook_id, str.__str__(point), metadata.name)

    @property
    def sort_key(self) -> tuple[int, int]:
        """Priority first (lower runs first), then registration order."""
        return (self.priority, self.seq)

    def info(self) -> HookInfo:
        """A read-only snapshot of this hook's registration."""
        m = self.metadata
        return HookInfo(
            handle=self.handle,
            point=str(self.point),
            name=m.name,
            priority=m.priority,
            language=m.language,
            tags=m.tags,
            version=m.version,
            error_policy=m.error_policy,
            timeout=m.timeout,
            enabled=self.enabled,
            is_async=self.is_async,
            description=m.description,
        )

    def __repr__(self) -> str:
        return f"<RegisteredHook {self.name!r} at {self.point!s} priority={self.priority}>"


class HookInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`HookRegistry.list` reports about one registered hook."""

    handle: HookHandle
    point: str
    name: str
    priority: int
    language: Language
    tags: frozenset[str]
    version: str
    error_policy: ErrorPolicy
    timeout: float | None
    enabled: bool
    is_async: bool
    description: str


class RegistryStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counts of registered hooks: total, enabled, per point and per language."""

    total: int
    enabled: int
    disabled: int
    points: int
    by_point: dict[str, int]
    by_language: dict[str, int]


_UNSET: Any = object()
_SORT_KEY = operator.attrgetter("priority", "seq")
_IS_ENABLED = operator.attrgetter("enabled")


class HookRegistry:
    """Holds hooks per point, sorted by priority then registration order."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._entries: dict[int, RegisteredHook] = {}
        self._by_point: dict[str, list[RegisteredHook]] = {}
        self._by_name: dict[tuple[str, str], RegisteredHook] = {}
        # point -> enabled hooks, sorted. Read without a lock by executors; the dict object
        # itself is never replaced, so an executor may keep a reference to it.
        self._chains: dict[str, tuple[RegisteredHook, ...]] = {}
        self._listeners: list[Callable[[], None]] = []
        self.version = 0

    # -- reads (lock-free) -------------------------------------------------------------
    def chain(self, point: str) -> tuple[RegisteredHook, ...]:
        """The enabled hooks at ``point`` in run order (an immutable snapshot)."""
        return self._chains.get(point, ())

    @property
    def chains(self) -> dict[str, tuple[RegisteredHook, ...]]:
        """The live point -> chain mapping (do not mutate); executors read it directly."""
        return self._chains

    def has_hooks(self, point: str) -> bool:
        """True when at least one enabled hook is registered at ``point``."""
        return point in self._chains

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[HookInfo]:
        return iter(self.list())

    # -- registration ------------------------------------------------------------------
    def register(
        self,
        point: str | object,
        hook: object = _UNSET,
        *,
        name: str | None = None,
        priority: int | str | None = None,
        language: Language | str | None = None,
        tags: Iterable[str] | None = None,
        version: str | None = None,
        error_policy: ErrorPolicy | str | None = None,
        timeout: float | None = None,
        description: str | None = None,
        enabled: bool = True,
    ) -> HookHandle:
        """Register ``hook`` at ``point`` and return its handle.

        ``hook`` is a callable ``(ctx) -> HookResult | None`` (sync or async) or an object with
        ``execute``/``metadata``/``should_execute``. ``register(fn)`` alone works for a function
        decorated with :func:`hook` (registering it at each point it names). Keyword arguments
        override the hook's own metadata. A duplicate name at one point raises
        :class:`DuplicateHookError`.
        """
        overrides = metadata_fields(
            name=name, priority=priority, language=language, tags=tags, version=version,
            error_policy=error_policy, timeout=timeout, description=description,
        )
        if hook is _UNSET:
            spec = hook_spec_of(point)
            if spec is None or not spec.points:
                raise InvalidValueError(
                    "register(hook) needs a point",
                    hint="call register(point, hook) or decorate the function with "
                    "@hook('PointName')",
                )
            if len(spec.points) != 1:
                raise InvalidValueError(
                    f"{_describe(point)} is marked for {len(spec.points)} points; "
                    "use register_all(hook) to register it at each"
                )
            return self._register_many([(spec.points[0], point, overrides, enabled)])[0]
        if not isinstance(point, str):
            raise InvalidValueError(
                f"a hook point must be a HookPoint or a string, not {type(point).__name__}"
            )
        return self._register_many([(parse_point(point), hook, overrides, enabled)])[0]

    def register_all(self, hook: object, **overrides: Any) -> list[HookHandle]:
        """Register a :func:`hook`-decorated function at every point it names."""
        spec = hook_spec_of(hook)
        if spec is None or not spec.points:
            raise InvalidValueError(f"{_describe(hook)} is not decorated with @hook(points...)")
        return [self.register(p, hook, **overrides) for p in spec.points]

    def on(self, point: str, **options: Any) -> Callable[[Any], Any]:
        """Decorator form: ``@registry.on("BeforeToolExecution", priority="high")``."""

        def decorate(fn: Any) -> Any:
            self.register(point, fn, **options)
            return fn

        return decorate

    def register_many(
        self, items: Iterable[tuple[str, object] | tuple[str, object, dict[str, Any]]]
    ) -> list[HookHandle]:
        """Register several hooks at once: all of them, or (on any error) none."""
        prepared: list[tuple[Point, object, dict[str, Any], bool]] = []
        for item in items:
            if len(item) == 2:
                point, hook = item
                options: dict[str, Any] = {}
            else:
                point, hook, options = item
            options = dict(options)
            enabled = bool(options.pop("enabled", True))
            prepared.append((parse_point(point), hook, metadata_fields(**options), enabled))
        return self._register_many(prepared)

    def _register_many(
        self, items: list[tuple[Point, object, dict[str, Any], bool]]
    ) -> list[HookHandle]:
        with self._writing():
            built: list[RegisteredHook] = []
            seen: set[tuple[str, str]] = set()
            for point, hook, overrides, enabled in items:
                entry = self._build(point, hook, overrides, enabled)
                key = (str(point), entry.name)
                if key in seen or key in self._by_name:
                    raise DuplicateHookError(
                        f"a hook named {entry.name!r} is already registered at {point!s}",
                        hint="give the hook another name, or unregister the existing one first",
                    )
                seen.add(key)
                built.append(entry)
            touched: set[str] = set()
            for entry in built:
                self._entries[entry.id] = entry
                self._by_name[(str(entry.point), entry.name)] = entry
                self._by_point.setdefault(entry.point, []).append(entry)
                touched.add(entry.point)
            self._rebuild(touched)
            return [e.handle for e in built]

    def _build(
        self, point: Point, hook: object, overrides: dict[str, Any], enabled: bool
    ) -> RegisteredHook:
        hook_id = next(self._ids)
        execute = getattr(hook, "execute", None)
        base_meta = getattr(hook, "metadata", None)
        if callable(execute) and isinstance(base_meta, HookMetadata):
            call: HookCallable = execute
            should = getattr(hook, "should_execute", None)
            should_execute = should if callable(should) and not _is_default_should(hook) else None
            if should_execute is not None:
                check_predicate(hook, should_execute)
            metadata = base_meta
        elif callable(hook):
            _check_takes_context(hook)
            call = hook
            should_execute = None
            spec = hook_spec_of(hook)
            fields = dict(spec.metadata_fields) if spec else {}
            if "name" not in fields and "name" not in overrides:
                default = getattr(hook, "__qualname__", None) or type(hook).__name__
                fields["name"] = f"{default}#{hook_id}" if "<lambda>" in default else default
            if "name" not in fields:
                fields["name"] = overrides["name"]
            metadata = HookMetadata(**fields)
        else:
            raise InvalidValueError(
                f"{_describe(hook)} is not a hook",
                hint="pass a callable (ctx) -> HookResult | None, or an object with "
                "execute(ctx), metadata and should_execute(ctx)",
            )
        if overrides:
            metadata = msgspec.structs.replace(metadata, **overrides)
        return RegisteredHook(
            hook_id=hook_id,
            point=point,
            metadata=metadata,
            call=call,
            should_execute=should_execute,
            source=hook,
            enabled=enabled,
        )

    def _rebuild(self, points: Iterable[str]) -> None:
        for point in points:
            entries = self._by_point.get(point)
            if not entries:
                self._by_point.pop(point, None)
                self._chains.pop(point, None)
                continue
            entries.sort(key=_SORT_KEY)
            chain = (
                tuple(entries)
                if all(map(_IS_ENABLED, entries))
                else tuple(filter(_IS_ENABLED, entries))
            )
            if chain:
                self._chains[point] = chain
            else:
                self._chains.pop(point, None)
        self.version += 1

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the write lock; after releasing it, tell the change listeners (never while
        holding it: a listener taking its own locks must not be able to deadlock us)."""
        with self._lock:
            before = self.version
            yield
            changed = self.version != before
            listeners = list(self._listeners) if changed else []
        for listener in listeners:
            listener()

    def add_change_listener(self, listener: Callable[[], None], *, weak: bool = False) -> None:
        """Call ``listener()`` after every change (used to invalidate caches).

        ``weak``: hold a bound method ``listener`` weakly, so the registry does not keep its
        object alive (an executor of a short-lived system over a long-lived registry); it is
        dropped once that object is gone."""
        entry: Callable[[], None] = _WeakListener(listener) if weak else listener
        with self._lock:
            self._listeners = [
                known for known in self._listeners
                if not (isinstance(known, _WeakListener) and known.dead)
            ]
            self._listeners.append(entry)

    def is_registered(self, hook_id: int) -> bool:
        """True while the hook with this ``HookHandle.id`` is registered (enabled or not)."""
        return hook_id in self._entries

    # -- removal and toggles ------------------------------------------------------------
    def _select(self, target: HookHandle | str, point: str | None) -> list[RegisteredHook]:
        if isinstance(target, HookHandle):
            entry = self._entries.get(target.id)
            if entry is None:
                raise HookNotFoundError(
                    f"no hook registered for handle {target.name!r} (id {target.id})",
                    hint="it may already have been unregistered",
                )
            return [entry]
        if not isinstance(target, str):
            raise InvalidValueError(
                f"expected a HookHandle or a hook name, got {type(target).__name__}"
            )
        wanted = str(parse_point(point)) if point is not None else None
        if wanted is not None:
            one = self._by_name.get((wanted, target))
            found = [one] if one is not None else []
        else:
            found = [e for e in self._entries.values() if e.name == target]
        if not found:
            where = f" at {wanted}" if wanted else ""
            raise HookNotFoundError(f"no hook named {target!r} is registered{where}")
        return found

    def unregister(self, target: HookHandle | str, point: str | None = None) -> int:
        """Remove a hook by handle, or by name (at ``point``, or at every point). Returns count."""
        with self._writing():
            entries = self._select(target, point)
            touched = set()
            for entry in entries:
                del self._entries[entry.id]
                del self._by_name[(str(entry.point), entry.name)]
                self._by_point[entry.point].remove(entry)
                touched.add(entry.point)
            self._rebuild(touched)
            return len(entries)

    def _set_enabled(self, entries: Iterable[RegisteredHook], enabled: bool) -> int:
        touched = set()
        for entry in entries:
            if entry.enabled != enabled:
                entry.enabled = enabled
                touched.add(entry.point)
        if touched:
            self._rebuild(touched)
        return len(touched)

    def enable(self, target: HookHandle | str, point: str | None = None) -> None:
        """Enable a hook by handle or name."""
        with self._writing():
            self._set_enabled(self._select(target, point), True)

    def disable(self, target: HookHandle | str, point: str | None = None) -> None:
        """Disable a hook by handle or name; it stays registered but is not run."""
        with self._writing():
            self._set_enabled(self._select(target, point), False)

    def enable_all(self, point: str | None = None) -> None:
        """Enable every hook (at ``point``, or everywhere)."""
        with self._writing():
            self._set_enabled(self._filter(point=point), True)

    def disable_all(self, point: str | None = None) -> None:
        """Disable every hook (at ``point``, or everywhere)."""
        with self._writing():
            self._set_enabled(self._filter(point=point), False)

    def clear(self) -> None:
        """Remove every hook."""
        with self._writing():
            touched = set(self._by_point)
            self._entries.clear()
            self._by_name.clear()
            self._by_point.clear()
            self._rebuild(touched)

    # -- queries ------------------------------------------------------------------------
    def _filter(
        self,
        point: str | None = None,
        language: Language | str | None = None,
        priority: int | str | tuple[int, int] | None = None,
        tag: str | None = None,
        enabled: bool | None = None,
    ) -> list[RegisteredHook]:
        wanted_point = str(parse_point(point)) if point is not None else None
        wanted_lang = Language.parse(language) if language is not None else None
        low: int | None = None
        high: int | None = None
        if isinstance(priority, tuple):
            low, high = parse_priority(priority[0]), parse_priority(priority[1])
        elif priority is not None:
            low = high = parse_priority(priority)
        out = []
        for point_key in sorted(self._by_point):
            if wanted_point is not None and point_key != wanted_point:
                continue
            for e in self._by_point[point_key]:
                m = e.metadata
                if wanted_lang is not None and m.language != wanted_lang:
                    continue
                if low is not None and high is not None and not low <= m.priority <= high:
                    continue
                if tag is not None and tag not in m.tags:
                    continue
                if enabled is not None and e.enabled != enabled:
                    continue
                out.append(e)
        return out

    def list(
        self,
        point: str | None = None,
        *,
        language: Language | str | None = None,
        priority: int | str | tuple[int, int] | None = None,
        tag: str | None = None,
        enabled: bool | None = None,
    ) -> list[HookInfo]:
        """List hooks in run order per point, filtered by point, language, priority (a value
        or an inclusive ``(low, high)`` range), tag and enabled state."""
        with self._lock:
            return [e.info() for e in self._filter(point, language, priority, tag, enabled)]

    def get(self, handle: HookHandle) -> HookInfo:
        """Return the registration of ``handle``."""
        with self._lock:
            return self._select(handle, None)[0].info()

    def stats(self) -> RegistryStats:
        """Counts of hooks: total, enabled, disabled, per point, per language."""
        with self._lock:
            entries = list(self._entries.values())
            enabled = sum(1 for e in entries if e.enabled)
            return RegistryStats(
                total=len(entries),
                enabled=enabled,
                disabled=len(entries) - enabled,
                points=len(self._by_point),
                by_point={str(p): len(v) for p, v in sorted(self._by_point.items())},
                by_language=dict(Counter(str(e.metadata.language) for e in entries)),
            )


class _WeakListener:
    """A change listener (a bound method) held weakly; calling a dead one does nothing."""

    __slots__ = ("ref",)

    def __init__(self, method: Callable[[], None]) -> None:
        self.ref = weakref.WeakMethod(method)

    @property
    def dead(self) -> bool:
        return self.ref() is None

    def __call__(self) -> None:
        method = self.ref()
        if method is not None:
            method()


def _is_default_should(hook: object) -> bool:
    method = getattr(type(hook), "should_execute", None)
    return method is BaseHook.should_execute


def _describe(obj: object) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def _check_takes_context(hook: Callable[..., Any]) -> None:
    """Refuse a callable that cannot be called with one argument (the context): it would
    fail at every dispatch, counted against its breaker, instead of here. A callable with
    no readable signature (some built-ins) is left to the dispatch."""
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None)
    except TypeError:
        raise InvalidValueError(
            f"{_describe(hook)}{signature} cannot be called with the hook context",
            hint="a hook takes one argument: def my_hook(ctx): ... (return None or a "
                 "HookResult)") from None
