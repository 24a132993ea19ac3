"""Selective hook loading for library mode: only pay for the hooks you use.

Embedded as a library, llmspell may ship dozens of hooks (auditing, PII redaction, caching,
cost tracking, ...) of which one application needs three. Building every hook up front costs
import time and memory for hooks that never run, and keeping them all in the run chain costs
dispatch time. :class:`SelectiveHookRegistry` avoids both:

* Hooks are grouped into **features** (``define_feature``), which may depend on each other.
  Enabling a feature enables its dependencies; disabling one disables its dependents.
* A hook is registered as a **factory** (``register_factory``). Nothing is built then: a small
  :class:`LazyHook` proxy goes into the underlying :class:`HookRegistry`, *enabled only while
  all of its features are on*. A disabled hook is not in the run chain, so it costs nothing
  at dispatch.
* The proxy builds the real hook on its first ``execute`` (exactly once, even under a race)
  and delegates to it from then on. A factory error is the hook's failure, so the executor's
  error policy (``fail_open``/``fail_closed``/``raise``) applies to it.
* ``max_instances`` bounds how many built hooks are kept alive: past it, the least recently
  used one is dropped and rebuilt by its factory on its next use. Turning a feature off drops
  the instances of the hooks it gated.

``memory_estimate`` and ``stats`` report what the loaded hooks cost.

>>> sel = SelectiveHookRegistry(max_instances=16)
>>> sel.define_feature("audit")
>>> sel.define_feature("pii", depends_on=["audit"])
>>> handle = sel.register_factory("BeforeToolExecution", "redact", lambda: (lambda ctx: None),
...                               features=["pii"])
>>> sel.enable_feature("pii")  # also enables "audit"
('audit', 'pii')
"""

from __future__ import annotations

import difflib
import functools
import inspect
import sys
import threading
import types
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

import msgspec

from llmspell.core.errors import HookNotFoundError, InvalidValueError, UnknownFeatureError
from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import HookOutput
from llmspell.hooks.metadata import HookMetadata, Priority, parse_priority
from llmspell.hooks.registry import HookHandle, HookRegistry
from llmspell.hooks.result import Skipped

__all__ = [
    "FeatureInfo",
    "HookFactory",
    "LazyHook",
    "SelectiveHookRegistry",
    "SelectiveStats",
]

HookFactory: TypeAlias = Callable[[], object]
"""A zero-argument callable returning a hook: a callable ``(ctx) -> ...`` or a hook object."""

# Metadata fields register_factory passes through to the registry (beyond name/priority).
_METADATA_KEYS = frozenset(
    {"language", "tags", "version", "error_policy", "timeout", "description"}
)
# Objects that are shared rather than owned by a hook instance: never walked or counted.
_SHARED_TYPES: tuple[type, ...] = (
    type,
    types.ModuleType,
    types.CodeType,
    types.BuiltinFunctionType,
    types.FrameType,
)
_LEAF_TYPES: tuple[type, ...] = (str, bytes, bytearray, int, float, complex, bool, range)
_DEFAULT_MAX_DEPTH = 16


class FeatureInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One feature as :meth:`SelectiveHookRegistry.features` reports it."""

    name: str
    enabled: bool
    depends_on: tuple[str, ...]
    description: str


class SelectiveStats(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`SelectiveHookRegistry.stats` reports.

    ``factories_enabled`` counts factories whose features are all on (their proxy is in the
    run chain); ``instances`` counts hooks built and alive. ``created`` counts factory calls
    that produced a hook, ``evicted`` instances dropped by the LRU limit and ``hits``
    executions that found their hook already built. ``memory_bytes`` is
    :meth:`SelectiveHookRegistry.memory_estimate`.
    """

    features_enabled: int
    features_total: int
    factories: int
    factories_enabled: int
    instances: int
    max_instances: int | None
    created: int
    evicted: int
    hits: int
    memory_bytes: int


class _Feature:
    __slots__ = ("depends_on", "description", "enabled", "name")

    def __init__(
        self, name: str, depends_on: tuple[str, ...], enabled: bool, description: str
    ) -> None:
        self.name = name
        self.depends_on = depends_on
        self.enabled = enabled
        self.description = description


class _Live:
    """A built hook: the instance plus how to call it. Swapped in and out as one attribute."""

    __slots__ = ("call", "instance", "should")

    def __init__(
        self,
        instance: object,
        call: Callable[[HookContext], HookOutput],
        should: Callable[[HookContext], bool] | None,
    ) -> None:
        self.instance = instance
        self.call = call
        self.should = should


class LazyHook:
    """The proxy :meth:`SelectiveHookRegistry.register_factory` puts in the registry.

    It is a hook object (``metadata``, ``execute``, ``should_execute``) that calls its factory
    on the first ``execute`` and delegates to the built hook from then on. ``execute`` is
    sync: for an async hook it returns the hook's awaitable, which the executor awaits (with
    the hook's timeout).
    """

    __slots__ = (
        "_create_lock",
        "_live",
        "_owner",
        "active",
        "factory",
        "features",
        "handle",
        "metadata",
        "name",
    )

    def __init__(
        self,
        owner: SelectiveHookRegistry,
        name: str,
        factory: HookFactory,
        features: tuple[str, ...],
        metadata: HookMetadata,
    ) -> None:
        self._owner = owner
        self._create_lock = threading.Lock()
        self._live: _Live | None = None
        self.name = name
        self.factory = factory
        self.features = features
        self.metadata = metadata
        self.active = False
        self.handle: HookHandle | None = None

    @property
    def instance(self) -> object | None:
        """The built hook, or None when it has not been built yet (or was evicted)."""
        live = self._live
        return live.instance if live is not None else None

    def should_execute(self, ctx: HookContext) -> bool:
        """Delegate to the built hook's predicate; before it is built, always True.

        Building is deferred to :meth:`execute`, which checks the predicate of a hook it has
        just built.
        """
        live = self._live
        if live is None or live.should is None:
            return True
        return live.should(ctx)

    def execute(self, ctx: HookContext) -> HookOutput:
        """Build the hook if needed (factory errors propagate), then run it on ``ctx``."""
        live = self._live
        if live is not None:
            self._owner._hit(self)
            return live.call(ctx)
        live, created = self._build()
        if created and live.should is not None and not live.should(ctx):
            return Skipped(f"hook {self.name!r} does not apply")
        return live.call(ctx)

    def _build(self) -> tuple[_Live, bool]:
        with self._create_lock:
            live = self._live
            if live is not None:  # another thread built it while we waited
                self._owner._hit(self)
                return live, False
            live = _adapt(self.name, self.factory())
            self._owner._store(self, live)
            return live, True

    def _drop(self) -> None:
        """Forget the built hook (the caller holds the owner's instance lock)."""
        self._live = None

    def __repr__(self) -> str:
        state = "built" if self._live is not None else "not built"
        return f"<LazyHook {self.name!r} features={list(self.features)} {state}>"


def _adapt(name: str, instance: object) -> _Live:
    """Work out how to call what a factory returned."""
    if inspect.isawaitable(instance):
        if inspect.iscoroutine(instance):
            instance.close()
        raise InvalidValueError(
            f"the factory of hook {name!r} returned an awaitable, not a hook",
            hint="a factory must be a plain function returning a hook; the hook itself "
            "may be async",
        )
    execute = getattr(instance, "execute", None)
    if callable(execute):
        should = getattr(instance, "should_execute", None)
        return _Live(instance, execute, should if callable(should) else None)
    if callable(instance):
        return _Live(instance, instance, None)
    raise InvalidValueError(
        f"the factory of hook {name!r} returned {type(instance).__name__}, which is not a hook",
        hint="return a callable (ctx) -> HookResult | None, or an object with execute(ctx)",
    )


class SelectiveHookRegistry:
    """Registers hooks by factory, gated by features, built on first use, LRU-bounded.

    ``registry`` is the :class:`HookRegistry` the proxies go into (a new one when None); run
    it with a :class:`~llmspell.hooks.HookExecutor`. ``max_instances`` bounds how many built
    hooks are kept alive (None: no bound).
    """

    def __init__(
        self, registry: HookRegistry | None = None, *, max_instances: int | None = None
    ) -> None:
        if max_instances is not None and (
            isinstance(max_instances, bool) or not isinstance(max_instances, int)
            or max_instances < 1
        ):
            raise InvalidValueError(
                f"max_instances must be a positive int or None, got {max_instances!r}"
            )
        self.registry = registry if registry is not None else HookRegistry()
        self.max_instances = max_instances
        # _lock guards features and proxies; _lru_lock guards live instances and counters.
        # Order: a proxy's create lock -> _lru_lock, and _lock -> _lru_lock; never reversed.
        self._lock = threading.RLock()
        self._lru_lock = threading.Lock()
        self._features: dict[str, _Feature] = {}
        self._proxies: dict[int, LazyHook] = {}
        self._lru: OrderedDict[LazyHook, None] = OrderedDict()
        self._created = 0
        self._evicted = 0
        self._hits = 0

    # -- features -----------------------------------------------------------------------
    def define_feature(
        self,
        name: str,
        *,
        depends_on: Iterable[str] = (),
        enabled: bool = False,
        description: str = "",
    ) -> None:
        """Define (or redefine) feature ``name``, which needs every feature in ``depends_on``.

        Dependencies must already be defined (:class:`UnknownFeatureError` otherwise); a
        dependency cycle raises :class:`InvalidValueError`. ``enabled=True`` enables the
        feature and its dependencies; redefining a feature with ``enabled=False`` disables it
        and its dependents.
        """
        if not isinstance(name, str) or not name:
            raise InvalidValueError("a feature needs a non-empty string name")
        deps = _names(depends_on, "depends_on")
        with self._lock:
            if name in deps:
                raise InvalidValueError(
                    f"feature {name!r} depends on itself ({name} -> {name})",
                    hint="remove it from its own depends_on",
                )
            for dep in deps:
                if dep not in self._features:
                    raise self._unknown(
                        dep, f"feature {name!r} depends on unknown feature {dep!r}",
                        "define the dependency first",
                    )
            cycle = self._find_cycle(name, deps)
            if cycle is not None:
                raise InvalidValueError(
                    "feature dependencies would form a cycle: " + " -> ".join(cycle),
                    hint="remove one of these dependencies",
                )
            old = self._features.get(name)
            self._features[name] = _Feature(
                name, deps, old.enabled if old is not None else False, description
            )
            if enabled:
                self._set_feature(name, True)
            elif old is not None:
                self._set_feature(name, False)

    def enable_feature(self, name: str) -> tuple[str, ...]:
        """Enable ``name`` and, transitively, its dependencies; return the features turned on.

        Hooks whose features are now all on join the run chain (they are built on first use).
        """
        with self._lock:
            self._require(name)
            return self._set_feature(name, True)

    def disable_feature(self, name: str) -> tuple[str, ...]:
        """Disable ``name`` and every feature depending on it; return the features turned off.

        Hooks needing any of them leave the run chain and their built instances are dropped.
        """
        with self._lock:
            self._require(name)
            return self._set_feature(name, False)

    def is_enabled(self, name: str) -> bool:
        """True when feature ``name`` is on."""
        with self._lock:
            return self._require(name).enabled

    def features(self) -> list[FeatureInfo]:
        """Every feature, in definition order."""
        with self._lock:
            return [
                FeatureInfo(
                    name=f.name, enabled=f.enabled, depends_on=f.depends_on,
                    description=f.description,
                )
                for f in self._features.values()
            ]

    def dependencies(self, name: str) -> tuple[str, ...]:
        """Every feature ``name`` needs, directly or transitively (sorted)."""
        with self._lock:
            self._require(name)
            return tuple(sorted(self._closure([name]) - {name}))

    def dependents(self, name: str) -> tuple[str, ...]:
        """Every feature needing ``name``, directly or transitively (sorted)."""
        with self._lock:
            self._require(name)
            return tuple(sorted(self._dependents(name) - {name}))

    # -- factories ----------------------------------------------------------------------
    def register_factory(
        self,
        point: str,
        name: str,
        factory: HookFactory,
        *,
        features: Iterable[str] = (),
        priority: int | str = Priority.NORMAL,
        **metadata: Any,
    ) -> HookHandle:
        """Register a hook built by ``factory()`` on its first use, gated by ``features``.

        Nothing is built now: a :class:`LazyHook` proxy is registered at ``point``, enabled in
        the registry only while every feature in ``features`` is on (no features: always).
        ``metadata`` takes the other :class:`HookMetadata` fields (``error_policy``,
        ``timeout``, ``tags``, ``language``, ``version``, ``description``); they describe the
        proxy, so the built hook's own metadata is not used. Returns the registry handle.
        """
        if not callable(factory):
            raise InvalidValueError(
                f"the factory of hook {name!r} must be callable, not {type(factory).__name__}",
                hint="pass a zero-argument function returning the hook",
            )
        unknown = sorted(set(metadata) - _METADATA_KEYS)
        if unknown:
            hint = "use: " + ", ".join(sorted(_METADATA_KEYS))
            if "enabled" in unknown:
                hint = "a factory's hook is enabled by its features; " + hint
            raise InvalidValueError(
                f"register_factory got unknown option(s): {', '.join(unknown)}", hint=hint
            )
        feats = _names(features, "features")
        with self._lock:
            for feature in feats:
                self._require(feature)
            active = self._wanted(feats)
            base = HookMetadata(name=name, priority=parse_priority(priority))
            proxy = LazyHook(self, name, factory, feats, base)
            handle = self.registry.register(
                point, proxy, name=name, priority=priority, enabled=active, **metadata
            )
            info = self.registry.get(handle)
            proxy.metadata = HookMetadata(
                name=info.name,
                priority=info.priority,
                language=info.language,
                tags=info.tags,
                version=info.version,
                error_policy=info.error_policy,
                timeout=info.timeout,
                description=info.description,
            )
            proxy.handle = handle
            proxy.active = active
            self._proxies[handle.id] = proxy
            return handle

    def hooks(self) -> list[LazyHook]:
        """Every registered proxy, in registration order."""
        with self._lock:
            return list(self._proxies.values())

    # -- instances ----------------------------------------------------------------------
    def instances(self) -> list[str]:
        """Names of the built, live hooks, least recently used first."""
        with self._lru_lock:
            return [proxy.name for proxy in self._lru]

    def clear_instances(self) -> int:
        """Drop every built hook (each is rebuilt on its next use); return how many."""
        with self._lru_lock:
            count = len(self._lru)
            for proxy in self._lru:
                proxy._drop()
            self._lru.clear()
            return count

    def memory_estimate(self, max_depth: int = _DEFAULT_MAX_DEPTH) -> int:
        """Approximate bytes held by the built hooks.

        A ``sys.getsizeof`` walk of each live instance through containers, ``__dict__``,
        ``__slots__``, msgspec Struct fields and closures, to ``max_depth`` levels, counting
        each object once. Classes, modules, code and builtins are shared, so not counted.
        """
        with self._lru_lock:
            roots = [live.instance for p in self._lru if (live := p._live) is not None]
        return _deep_size(roots, max_depth)

    def stats(self) -> SelectiveStats:
        """Counts of features, factories and instances, plus the memory estimate."""
        with self._lock:
            features_enabled = sum(1 for f in self._features.values() if f.enabled)
            features_total = len(self._features)
            factories = len(self._proxies)
            factories_enabled = sum(1 for p in self._proxies.values() if p.active)
        with self._lru_lock:
            instances, created, evicted, hits = (
                len(self._lru), self._created, self._evicted, self._hits
            )
        return SelectiveStats(
            features_enabled=features_enabled,
            features_total=features_total,
            factories=factories,
            factories_enabled=factories_enabled,
            instances=instances,
            max_instances=self.max_instances,
            created=created,
            evicted=evicted,
            hits=hits,
            memory_bytes=self.memory_estimate(),
        )

    # -- called by proxies ---------------------------------------------------------------
    def _hit(self, proxy: LazyHook) -> None:
        with self._lru_lock:
            self._hits += 1
            if proxy in self._lru:
                self._lru.move_to_end(proxy)

    def _store(self, proxy: LazyHook, live: _Live) -> None:
        with self._lru_lock:
            self._created += 1
            if not proxy.active:
                # Ran from a chain snapshot taken before its feature went off: use it once,
                # keep nothing.
                return
            proxy._live = live
            self._lru[proxy] = None
            limit = self.max_instances
            while limit is not None and len(self._lru) > limit:
                victim, _ = self._lru.popitem(last=False)
                victim._drop()
                self._evicted += 1

    # -- internals ----------------------------------------------------------------------
    def _require(self, name: str) -> _Feature:
        feature = self._features.get(name) if isinstance(name, str) else None
        if feature is None:
            raise self._unknown(name, f"unknown feature {name!r}", "define it with define_feature")
        return feature

    def _unknown(self, name: object, message: str, fallback: str) -> UnknownFeatureError:
        close = difflib.get_close_matches(str(name), list(self._features), n=3, cutoff=0.6)
        if close:
            hint = "did you mean " + ", ".join(repr(c) for c in close) + "?"
        elif self._features:
            hint = f"{fallback}; defined features: " + ", ".join(sorted(self._features))
        else:
            hint = f"{fallback}; no features are defined yet"
        return UnknownFeatureError(message, hint=hint)

    def _closure(self, names: Iterable[str]) -> set[str]:
        """``names`` plus everything they depend on, transitively."""
        seen: set[str] = set()
        stack = list(names)
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            stack.extend(self._features[current].depends_on)
        return seen

    def _dependents(self, name: str) -> set[str]:
        """``name`` plus every feature depending on it, transitively."""
        seen = {name}
        queue = deque([name])
        while queue:
            current = queue.popleft()
            for feature in self._features.values():
                if current in feature.depends_on and feature.name not in seen:
                    seen.add(feature.name)
                    queue.append(feature.name)
        return seen

    def _find_cycle(self, name: str, deps: tuple[str, ...]) -> list[str] | None:
        """A path ``name -> ... -> name`` if giving ``name`` these deps closes a loop."""
        # The graph without ``name``'s new edges is acyclic, so any cycle passes through it.
        parents: dict[str, str] = {}
        stack = [(dep, name) for dep in deps]
        while stack:
            current, parent = stack.pop()
            if current in parents:
                continue
            parents[current] = parent
            if current == name:
                path = [name]
                node = parent
                while node != name:
                    path.append(node)
                    node = parents[node]
                path.append(name)
                path.reverse()
                return path
            stack.extend((d, current) for d in self._features[current].depends_on)
        return None

    def _set_feature(self, name: str, enabled: bool) -> tuple[str, ...]:
        targets = self._closure([name]) if enabled else self._dependents(name)
        changed = []
        for target in targets:
            feature = self._features[target]
            if feature.enabled != enabled:
                feature.enabled = enabled
                changed.append(target)
        if changed:
            self._sync()
        return tuple(sorted(changed))

    def _wanted(self, features: tuple[str, ...]) -> bool:
        return all(self._features[f].enabled for f in self._closure(features))

    def _sync(self) -> None:
        """Enable or disable each proxy in the registry to match its features."""
        for hook_id, proxy in list(self._proxies.items()):
            wanted = self._wanted(proxy.features)
            if wanted == proxy.active:
                continue
            assert proxy.handle is not None
            proxy.active = wanted
            try:
                if wanted:
                    self.registry.enable(proxy.handle)
                else:
                    self.registry.disable(proxy.handle)
            except HookNotFoundError:
                # Unregistered from the registry directly: forget it.
                wanted = False
                proxy.active = False
                del self._proxies[hook_id]
            if not wanted:
                with self._lru_lock:
                    if proxy in self._lru:
                        del self._lru[proxy]
                        proxy._drop()


def _names(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise InvalidValueError(
            f"{what} must be a collection of feature names, not one string",
            hint=f"write {what}=[{values!r}]",
        )
    out: dict[str, None] = {}
    for value in values:
        if not isinstance(value, str) or not value:
            raise InvalidValueError(f"{what} must hold non-empty strings, got {value!r}")
        out[value] = None
    return tuple(out)


def _children(obj: object) -> list[object]:
    """The objects ``obj`` owns, for the memory walk."""
    out: list[object] = []
    try:
        if isinstance(obj, dict):
            for key, value in list(obj.items()):
                out.append(key)
                out.append(value)
        elif isinstance(obj, (list, tuple, set, frozenset, deque)):
            out.extend(list(obj))
        elif isinstance(obj, types.FunctionType):
            out.extend(c.cell_contents for c in obj.__closure__ or () if _cell_is_set(c))
            out.extend(obj.__defaults__ or ())
            if obj.__kwdefaults__:
                out.append(obj.__kwdefaults__)
        elif isinstance(obj, types.MethodType):
            out.append(obj.__self__)
            out.append(obj.__func__)
        elif isinstance(obj, functools.partial):
            out.append(obj.func)
            out.extend(obj.args)
            out.append(obj.keywords)
        fields = getattr(type(obj), "__struct_fields__", None)
        if isinstance(fields, tuple):
            out.extend(getattr(obj, f, None) for f in fields)
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            out.append(attrs)
        for cls in type(obj).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                if slot in ("__dict__", "__weakref__"):
                    continue
                attr = slot
                if slot.startswith("__") and not slot.endswith("__"):
                    attr = f"_{cls.__name__.lstrip('_')}{slot}"
                value = getattr(obj, attr, _MISSING)
                if value is not _MISSING:
                    out.append(value)
    except (RuntimeError, ReferenceError):  # changed while we walked it: count what we have
        pass
    return out


def _cell_is_set(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


_MISSING: Any = object()


def _deep_size(roots: Iterable[object], max_depth: int) -> int:
    """Sum of ``sys.getsizeof`` over ``roots`` and what they own, each object once."""
    seen: set[int] = set()
    total = 0
    stack: list[tuple[object, int]] = [(root, 0) for root in roots]
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen or isinstance(obj, _SHARED_TYPES):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj, 0)
        if depth >= max_depth or isinstance(obj, _LEAF_TYPES) or obj is None:
            continue
        stack.extend((child, depth + 1) for child in _children(obj))
    return total
