"""One way to run an operation with hooks around it, for tools and agents alike.

Every :class:`~llmspell.hooks.HookResult` has one meaning here (docs/runtime.md has the
table):

* **before** the operation: ``Cancel`` raises :class:`~llmspell.errors.OperationCancelled`;
  ``Modified`` replaces the parameters (the hook returns ``{"params": {...}}``); ``Replace``
  returns its value without running the operation; ``Redirect`` runs the named tool/agent
  instead; ``Retry`` waits and asks the before hooks again (up to ``max_attempts``);
  ``Fork`` runs the listed operations concurrently with this one and attaches their
  results; ``Cache`` serves a cached result for the key, or caches this one under it (not
  a value an error point's ``Replace`` recovered with: a fallback is never cached).
* **on error**: ``Replace`` recovers with its value; ``Retry`` re-runs the operation after
  the delay (up to ``max_attempts``); ``Redirect`` falls back to the named tool/agent;
  ``Cancel`` raises ``OperationCancelled`` (chained to the error); anything else re-raises.
* **after**: ``Modified`` replaces the result (``{"result": ...}``); ``Replace`` replaces it
  with its value; ``Cancel`` discards it and raises ``OperationCancelled``; ``Retry`` re-runs
  the operation; ``Redirect`` runs the named tool/agent and returns its result; ``Fork`` runs
  the operations and attaches their results; ``Cache`` caches the result for the key, and
  a later call of the same component with the same parameters, for the same user and
  session (``metadata["user"]``/``["session"]`` of the call's context), is served from it.
* ``Skipped`` and ``Continue`` change nothing.

``Cache`` keys are scoped to the component (its type and name): two tools returning the
same key name two entries. ``Cache(key, shared=True)`` opts out (one entry for every
component that uses the key).

**Request coalescing** ("single flight"). When a call's before hooks say its result will be
cached (a ``Cache`` result that missed, or a hook such as the built-in ``CachingHook`` that
leaves its cache key under :data:`COALESCE_METADATA` in the context's metadata), the call
is *in flight* until it is over, and an identical call (same component, same parameters
as passed in) that starts meanwhile waits for it before its own before hooks run, then
runs them: it is served from the cache the leader filled (a hit, a copy where the cache
copies), so 100 identical concurrent misses run the operation once. Nothing of the
leader's is handed over but what its cache holds: a leader that fails, is refused or
replaced by a later hook, or returns a result its cache does not keep, lets every waiter
run its own call (a failure never spreads); a leader whose task is cancelled hands over
to one waiter, the others wait for that one; a waiter that is cancelled just stops
waiting. A call that starts after :meth:`ResultCache.clear` does not wait for a call
that started before it. ``ResultCache(coalesce=False)`` (or setting ``.coalesce``) turns
coalescing off for the calls through that cache; ``ResultCache.coalesced`` counts the calls
that waited. Calls whose before hooks are async may start while the leader's before
hooks still run: those are not coalesced (the leader is in flight once its before point
is over). Results cached only by an after point's ``Cache`` are not coalesced (nothing
says a call will be cached before it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

import msgspec

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import InvalidValueError, OperationCancelled
from llmspell.core.operation_scope import CURRENT_SCOPE, OperationScope
from llmspell.core.redact import get_logger
from llmspell.core.text import error_text
from llmspell.hooks.context import ComponentId, ComponentType, HookContext
from llmspell.hooks.executor import NO_HOOKS
from llmspell.hooks.result import (
    MAX_RETRY_DELAY,
    Cache,
    Cancel,
    Continue,
    ForkOperation,
    Modified,
    Redirect,
    Replace,
    Retry,
    cancelled_error,
)
from llmspell.runtime.runs.scope import (
    ActiveRun,
    ReplaySource,
    current_frame,
    current_run,
    enter_step,
    exit_step,
)

__all__ = ["COALESCE_METADATA", "RESULT_CACHE_MAX_BYTES", "RESULT_CACHE_MAX_ENTRY_BYTES",
           "CallOutcome", "CallPoints", "ReplayCache", "ResultCache", "cache_key",
           "context_as", "current_context", "in_fork", "inherited_context", "run_forks",
           "run_hooked", "scoped_cache"]

logger = get_logger("llmspell.cache")

RESULT_CACHE_MAX_BYTES = 16 * 1024 * 1024
"""Default bound of a :class:`ResultCache`'s entries together (their measured size, see
:meth:`ResultCache.put`): past it the least recently used are evicted."""

RESULT_CACHE_MAX_ENTRY_BYTES = 4 * 1024 * 1024
"""Default bound of one :class:`ResultCache` entry: a larger result is not cached."""

COALESCE_METADATA = "llmspell.coalesce"
"""Metadata key a before hook sets, to the cache key it will store the call's result under,
to have identical calls wait for this one while it runs (see the module docstring). A value
the context inherited from its parent (the same as the parent's) does not count."""

Invoke = Callable[[dict[str, Any], int], Awaitable[Any]]
RedirectTo = Callable[[str, dict[str, Any], "HookContext | None"], Awaitable[Any]]
ForkTo = Callable[[ForkOperation, "HookContext | None"], Awaitable[Any]]


class CallPoints(msgspec.Struct, frozen=True):
    """The three points around an operation."""

    before: str
    after: str
    error: str


class CallOutcome(msgspec.Struct, kw_only=True):
    """What a hooked call produced, and how: attempts made, served from cache, replaced by a
    hook, redirected, and the results of forked operations."""

    result: Any
    attempts: int = 1
    cached: bool = False
    replaced: bool = False
    redirected_to: str | None = None
    forks: list[dict[str, Any]] = []
    correlation_id: str | None = None
    rewritten: bool = False
    """An after hook returned ``Modified``: the result is what the hook made of it."""


_FINGERPRINT = msgspec.json.Encoder(order="sorted")


def cache_key(component: ComponentId, cache: Cache) -> str:
    """The key ``cache`` stores under for ``component``: ``"<type>:<len>:<name>:<key>"``
    (the name's length keeps names with ``:`` apart), or ``cache.key`` as is when
    ``cache.shared``."""
    if cache.shared:
        return cache.key
    name = component.name
    return f"{component.type.value}:{len(name)}:{name}:{cache.key}"


def _fingerprint(component: ComponentId, params: dict[str, Any],
                 caller: tuple[Any, Any] | None = None) -> bytes | None:
    """What identifies a call (component and parameters, and with ``caller`` the user and
    session it is made for, see :func:`_caller`): the blake2b-128 digest of their
    sorted-key JSON, so huge parameters cost 16 bytes in the aliases and flights. None
    (the call is neither aliased nor coalesced) when the parameters are not JSON-encodable
    or their JSON does not read back as them: NaN and infinities encode as ``null`` (like
    ``None``), bytes, dates and sets as strings and arrays, and would share a fingerprint
    with other parameters."""
    material: tuple[Any, ...] = (component.type.value, component.name, params)
    if caller is not None:
        material = (*material, *caller)
    try:
        blob = _FINGERPRINT.encode(material)
        if msgspec.json.decode(blob)[2] != params:
            return None
    except (TypeError, ValueError, RecursionError, msgspec.EncodeError,
            msgspec.DecodeError):
        return None
    return hashlib.blake2b(blob, digest_size=16).digest()


def _caller(ctx: HookContext | None) -> tuple[Any, Any]:
    """The user and session a call is made for (``ctx.metadata["user"]`` and
    ``["session"]``; None each when absent): what keeps one caller's after-point ``Cache``
    alias from answering another's identical call."""
    metadata = ctx.metadata if ctx is not None else None
    if not metadata:
        return None, None
    return metadata.get("user"), metadata.get("session")


_SIZES = msgspec.json.Encoder(enc_hook=repr)


def _size(key: str, value: Any) -> int | None:
    """What an entry counts for: the length of ``key`` plus that of ``value``'s JSON
    (objects JSON cannot hold count as their ``repr``), measured once. A value too deep or
    cyclic to encode is measured by walking it (each dict and list once). None when it
    cannot be measured (it is not cached)."""
    try:
        return len(key) + len(_SIZES.encode(value))
    except RecursionError:
        pass
    except Exception:
        return None
    total = len(key)
    seen: set[int] = set()
    todo: list[Any] = [value]
    try:
        while todo:
            item = todo.pop()
            kind = type(item)
            if kind is dict or kind is list:
                if id(item) in seen:
                    total += 4  # a reference to a container measured already
                    continue
                seen.add(id(item))
                total += 2 + len(item)
                if kind is dict:
                    for name, inner in item.items():
                        total += len(_SIZES.encode(name)) + 1
                        todo.append(inner)
                else:
                    todo.extend(item)
            else:
                total += len(_SIZES.encode(item))
    except Exception:  # a leaf that cannot be measured either
        return None
    return total


def _served(value: Any) -> Any:
    """A structural copy of ``value``'s dicts and lists (anything else is shared: strings
    and numbers cannot change), made without recursion so deep or cyclic values copy too.
    What :class:`ResultCache` stores and hands out, so no caller changes another's."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return value
    root: Any = {} if kind is dict else []
    made: dict[int, Any] = {id(value): root}
    todo: list[tuple[Any, Any]] = [(value, root)]
    while todo:
        source, target = todo.pop()
        items = source.items() if type(source) is dict else enumerate(source)
        is_dict = type(target) is dict
        for key, item in items:
            item_kind = type(item)
            copied = item
            if item_kind is dict or item_kind is list:
                copied = made.get(id(item))
                if copied is None:
                    copied = made[id(item)] = {} if item_kind is dict else []
                    todo.append((item, copied))
            if is_dict:
                target[key] = copied
            else:
                target.append(copied)
    return root


class _Flight:
    """One call in flight: identical calls wait on it (each with a future on its own loop,
    so a caller on another thread's loop can wait too). ``metadata``/``asked``: the before
    context's metadata and the :data:`COALESCE_METADATA` value it was coalesced for (None
    when a ``Cache`` result asked): once a hook removes that value, it is not joined."""

    __slots__ = ("asked", "fingerprint", "generation", "metadata", "waiters")

    def __init__(self, fingerprint: bytes, generation: int,
                 metadata: dict[str, str] | None = None, asked: str | None = None) -> None:
        self.fingerprint = fingerprint
        self.generation = generation
        self.metadata = metadata
        self.asked = asked
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]]] = []

    def joinable(self, generation: int) -> bool:
        """An identical call that starts now waits for this one: no clear since it
        started, and the hook that asked for coalescing still asks."""
        metadata = self.metadata
        return generation == self.generation and (
            metadata is None or metadata.get(COALESCE_METADATA) == self.asked)


# The flights the current call (and what it runs: forks, nested calls) leads: an identical
# call made from inside the leader must not wait for it (it would wait for itself).
_leading: ContextVar[tuple[_Flight, ...]] = ContextVar("llmspell_cache_flights", default=())


def _wake(future: asyncio.Future[bool], handover: bool) -> None:
    if not future.done():  # a waiter cancelled meanwhile
        future.set_result(handover)


class ResultCache:
    """A TTL + LRU cache for the ``Cache`` result. Thread-safe.

    Dicts and lists are stored and served as structural copies (each dict and list copied,
    other values shared): a caller, a coalesced waiter or the call that stored the result
    changing what it got changes neither the cache nor another caller's copy. Other
    mutable objects are stored and served as they are.

    Besides keyed entries it keeps *aliases*: a call's fingerprint (component, parameters,
    and the user and session it was made for) -> the key its result was cached under by an
    after point, so the next identical call of the same caller is served before it runs
    (both bounded by ``max_entries``).

    Entries are bounded in size too: ``max_entry_bytes`` (default
    :data:`RESULT_CACHE_MAX_ENTRY_BYTES`, 4 MiB) for one (a larger value is not cached:
    never an error for the caller; the first is logged, each counted in :attr:`refused`)
    and ``max_bytes`` (default :data:`RESULT_CACHE_MAX_BYTES`, 16 MiB) for all (the least
    recently used are evicted past it); None for either: no such bound. An entry's size is
    its key's length plus its value's JSON length (:attr:`stored_bytes` holds the total).

    It also keeps the calls *in flight* through it (request coalescing, see the module
    docstring): ``coalesce`` (default True; an attribute, so it can be turned off later)
    says whether identical calls wait for one in flight; ``coalesced`` counts the calls
    that waited; :attr:`in_flight` and :attr:`waiting` say how many lead and wait now."""

    def __init__(self, max_entries: int = 1024, clock: Clock = SYSTEM_CLOCK, *,
                 coalesce: bool = True, max_bytes: int | None = RESULT_CACHE_MAX_BYTES,
                 max_entry_bytes: int | None = RESULT_CACHE_MAX_ENTRY_BYTES) -> None:
        if (not isinstance(max_entries, int) or isinstance(max_entries, bool)
                or max_entries < 1):
            raise InvalidValueError(
                f"ResultCache max_entries must be an int >= 1, got {max_entries!r}",
                hint="1024 entries is the default")
        if not isinstance(coalesce, bool):
            raise InvalidValueError(f"ResultCache coalesce must be a bool, got {coalesce!r}",
                                    hint="coalesce=False runs identical concurrent calls "
                                         "each on its own")
        for field, bound in (("max_bytes", max_bytes), ("max_entry_bytes", max_entry_bytes)):
            if bound is not None and (not isinstance(bound, int) or isinstance(bound, bool)
                                      or bound < 1):
                raise InvalidValueError(
                    f"ResultCache {field} must be an int >= 1 or None, got {bound!r}",
                    hint=f"the defaults are {RESULT_CACHE_MAX_BYTES} bytes in all and "
                         f"{RESULT_CACHE_MAX_ENTRY_BYTES} for one entry; None: no bound")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.refused = 0
        """Values not cached because they were larger than ``max_entry_bytes`` (or
        ``max_bytes``), or could not be measured."""
        self._bytes = 0
        self._warned = False
        self.coalesce = coalesce
        self.coalesced = 0
        self._flights: dict[bytes, _Flight] = {}
        self._waiting = 0
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (expires at (monotonic) or None, value, size in bytes)
        self._data: OrderedDict[str, tuple[float | None, Any, int]] = OrderedDict()
        self._aliases: OrderedDict[bytes, str] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.generation = 0
        """Bumped by :meth:`clear`: a result computed by a call that started before the
        clear is not stored (``put(..., since=)``), or the clear would be undone."""

    @property
    def stored_bytes(self) -> int:
        """The measured size of the entries held now (see the class docstring)."""
        return self._bytes

    @property
    def aliased(self) -> bool:
        """True when some call's result was cached by an after point."""
        return bool(self._aliases)

    def alias(self, fingerprint: bytes, key: str) -> None:
        """Remember that the call ``fingerprint`` is answered by the entry ``key``."""
        with self._lock:
            self._aliases[fingerprint] = key
            self._aliases.move_to_end(fingerprint)
            while len(self._aliases) > self.max_entries:
                self._aliases.popitem(last=False)

    def get_aliased(self, fingerprint: bytes) -> tuple[bool, Any]:
        """(True, value) when ``fingerprint`` has an alias to a live entry."""
        key = self._aliases.get(fingerprint)
        if key is None:
            return False, None
        hit, value = self.get(key)
        if not hit:
            with self._lock:
                self._aliases.pop(fingerprint, None)
        return hit, value

    def get(self, key: str) -> tuple[bool, Any]:
        """(True, value) for a live entry, else (False, None)."""
        with self._lock:
            entry = self._data.get(key)
            live = entry is not None and (entry[0] is None
                                          or entry[0] > self._clock.monotonic())
            if live:
                self._data.move_to_end(key)
                self.hits += 1
            else:
                if entry is not None:
                    del self._data[key]
                    self._bytes -= entry[2]
                self.misses += 1
                return False, None
        assert entry is not None
        return True, _served(entry[1])

    def put(self, key: str, value: Any, ttl: float | None, *,
            since: int | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (None: until evicted); not when
        the cache was cleared after ``since`` (the :attr:`generation` the call began in), nor
        when it is larger than ``max_entry_bytes`` or ``max_bytes`` (counted in
        :attr:`refused`; an entry ``key`` held is dropped, as the value it held is stale).
        Dicts and lists are stored as a copy (see the class docstring)."""
        size = _size(key, value)
        limit = _smaller(self.max_entry_bytes, self.max_bytes)
        if size is None or (limit is not None and size > limit):
            with self._lock:
                self.refused += 1
                old = self._data.pop(key, None)
                if old is not None:
                    self._bytes -= old[2]
                warn, self._warned = not self._warned, True
            if warn:
                logger.warning(
                    "a result was not cached: %s (key %.80r); later ones are counted in "
                    "ResultCache.refused only",
                    "its size could not be measured" if size is None
                    else f"{size} bytes is more than the {limit} one entry may hold", key)
            return
        value = _served(value)
        with self._lock:
            if since is not None and since != self.generation:
                return
            expires = None if ttl is None else self._clock.monotonic() + ttl
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            self._data[key] = (expires, value, size)
            self._bytes += size
            max_bytes = self.max_bytes
            while len(self._data) > self.max_entries or (
                    max_bytes is not None and self._bytes > max_bytes):
                self._bytes -= self._data.popitem(last=False)[1][2]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._data.clear()
            self._bytes = 0
            self._aliases.clear()
            self.generation += 1

    def __len__(self) -> int:
        return len(self._data)

    # -- request coalescing ---------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Calls in flight that an identical call would wait for."""
        return len(self._flights)

    @property
    def waiting(self) -> int:
        """Calls waiting for an identical call in flight."""
        return self._waiting

    def _take_off(self, fingerprint: bytes, metadata: dict[str, str] | None = None,
                  asked: str | None = None) -> Callable[[], None] | None:
        """Put the call ``fingerprint`` in flight and return what lands it once it is over
        (an end-of-operation callback, run in the caller's context); None when an identical
        joinable call already is (this one runs on its own: it did not wait). ``metadata``
        and ``asked``: see :class:`_Flight`."""
        with self._lock:
            current = self._flights.get(fingerprint)
            if current is not None and current.joinable(self.generation):
                return None
            flight = self._flights[fingerprint] = _Flight(fingerprint, self.generation,
                                                          metadata, asked)
        previous = _leading.get()
        _leading.set((*previous, flight))

        def land() -> None:
            _leading.set(previous)
            self._land(flight)

        return land

    def _land(self, flight: _Flight) -> None:
        """The call ``flight`` is over: wake its waiters. When its task is being cancelled
        they go on coalescing (one runs, the others wait for it); else each asks its own
        before hooks (a hit if the call's result was cached) and runs if it must."""
        with self._lock:
            if self._flights.get(flight.fingerprint) is flight:
                del self._flights[flight.fingerprint]
            waiters, flight.waiters = flight.waiters, []
        if not waiters:
            return
        handover = _cancelling()
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop, future in waiters:
            if loop is here:
                _wake(future, handover)
            else:
                # A closed loop raises RuntimeError: nobody is waiting there any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_wake, future, handover)

    async def _wait_turn(self, fingerprint: bytes) -> None:
        """Wait while an identical call is in flight (not one this call runs inside, not
        one that started before a :meth:`clear`, not one whose hook ended its coalescing:
        see :class:`_Flight`)."""
        counted = False
        while True:
            with self._lock:
                flight = self._flights.get(fingerprint)
                if (flight is None or not flight.joinable(self.generation)
                        or flight in _leading.get()):
                    return
                loop = asyncio.get_running_loop()
                future: asyncio.Future[bool] = loop.create_future()
                waiter = (loop, future)
                flight.waiters.append(waiter)
                self._waiting += 1
                if not counted:
                    self.coalesced += 1
                    counted = True
            try:
                handover = await future
            except BaseException:  # cancelled: stop waiting, the others are not affected
                with self._lock:
                    if waiter in flight.waiters:
                        flight.waiters.remove(waiter)
                raise
            finally:
                with self._lock:
                    self._waiting -= 1
            if not handover:
                return


class ReplayCache(ResultCache):
    """What a replay's calls use in place of a live :class:`ResultCache` (one per live
    cache and replay, made by the replay session): entries, aliases and calls in flight of
    its own, so a replay never serves a live entry, never leaves one (an edited or recorded
    value a live call would then be served), and never waits for a live call nor has one
    wait for it. It keeps the live cache's bounds, clock and ``coalesce``.

    A lookup inside a tool or model step the replay matches to its recording is answered
    by the recording: a hit with the recorded result when the original call was served
    from a cache, a miss when it ran. Elsewhere (a step off the recorded path, a new step,
    an edited one) it is answered by what this replay cached."""

    def __init__(self, live: ResultCache, replay: ReplaySource) -> None:
        super().__init__(live.max_entries, live._clock, coalesce=live.coalesce,
                         max_bytes=live.max_bytes, max_entry_bytes=live.max_entry_bytes)
        self._replay = replay

    @property
    def aliased(self) -> bool:
        """Always True: a call the recording says was a hit (on an entry cached before
        the run) is one with no alias here."""
        return True

    def _recorded(self, own: Callable[[], tuple[bool, Any]]) -> tuple[bool, Any] | None:
        frame = current_frame()
        answer = None if frame is None else self._replay.cached(frame, own)
        if answer is None:
            return None
        with self._lock:
            if answer[0]:
                self.hits += 1
            else:
                self.misses += 1
        return (True, _served(answer[1])) if answer[0] else answer

    def get(self, key: str) -> tuple[bool, Any]:
        """The recording's answer in a step it has one for, else this replay's entry."""
        answer = self._recorded(lambda: ResultCache.get(self, key))
        return super().get(key) if answer is None else answer

    def get_aliased(self, fingerprint: bytes) -> tuple[bool, Any]:
        """Like :meth:`get`, for a call cached by an after point."""
        answer = self._recorded(lambda: self._own_aliased(fingerprint))
        return super().get_aliased(fingerprint) if answer is None else answer

    def _own_aliased(self, fingerprint: bytes) -> tuple[bool, Any]:
        key = self._aliases.get(fingerprint)
        return (False, None) if key is None else ResultCache.get(self, key)


def scoped_cache(cache: ResultCache) -> ResultCache:
    """``cache``, or inside a replay the replay's stand-in for it (:class:`ReplayCache`):
    what code that reads or fills a :class:`ResultCache` outside :func:`run_hooked` (an
    adapter's own agent-level cache) should use."""
    run = current_run()
    replay = None if run is None else run.replay
    return cache if replay is None else replay.cache_for(cache)


def _smaller(a: int | None, b: int | None) -> int | None:
    """The smaller bound (None: no bound)."""
    return b if a is None else a if b is None else min(a, b)


def _cancelling() -> bool:
    """True when the current task is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _asks_coalescing(ctx: HookContext | None, parent: HookContext | None) -> bool:
    """A before hook set :data:`COALESCE_METADATA` in this dispatch (not inherited)."""
    if ctx is None:
        return False
    asked = ctx.metadata.get(COALESCE_METADATA)
    return asked is not None and (parent is None
                                  or parent.metadata.get(COALESCE_METADATA) != asked)


def _retry_delay(delay: float, exc: BaseException) -> float:
    """The hook's delay, or the error's ``retry_after`` when that is longer (capped)."""
    asked = getattr(exc, "retry_after", None)
    if isinstance(asked, int | float) and asked > delay:
        return float(min(asked, MAX_RETRY_DELAY))
    return delay


_CONTEXT: ContextVar[tuple[HookContext | None, bool] | None] = ContextVar(
    "llmspell_call_context", default=None)
"""The context of the hooked operation running, and whether what starts inside it is its
child outright (a context handed over with :func:`context_as`) or inherits its metadata
only (see :func:`inherited_context`)."""


def current_context() -> HookContext | None:
    """The hook context of the innermost hooked operation running in this task (and in what
    it runs): its before point's context, else the parent it was given; None outside any
    (or when that operation has none). An agent passes it as the parent of its model and
    tool calls, so the metadata that names the user (what per-user budgets and rate limits
    key on) and the correlation reach them."""
    entry = _CONTEXT.get()
    return entry[0] if entry is not None else None


def inherited_context() -> HookContext | None:
    """The parent of an operation started without one (an agent, workflow, tool or model
    call a tool's code starts, a framework's agent run an adapter opens): the context
    handed over with :func:`context_as` (a ``Redirect`` or ``Fork`` target: its child, with
    its correlation), else one carrying the metadata of the hooked operation running (the
    user, for budgets and rate limits) under a correlation id of its own (a sub-agent a tool
    runs is a run of its own, as before); None when there is neither."""
    entry = _CONTEXT.get()
    if entry is None:
        return None
    ctx, whole = entry
    if ctx is None or whole:
        return ctx
    if not ctx.metadata:
        return None
    return HookContext(point=ctx.point, component=ctx.component, metadata=dict(ctx.metadata),
                       language=ctx.language)


@contextlib.contextmanager
def context_as(ctx: HookContext | None, *, handed: bool = True) -> Iterator[None]:
    """Make ``ctx`` the context the body's operations start under, as its children (its
    metadata and correlation): for code that starts an operation it cannot pass a parent
    to (an adapter running a framework's agent for a ``Redirect`` or a ``Fork``).
    ``handed=False``: ``ctx`` is the context of the operation the body is (an adapter's
    agent run), as :func:`run_hooked` makes its operation's: what starts inside inherits
    its metadata only."""
    token = _CONTEXT.set((ctx, handed))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


_IN_FORK: ContextVar[bool] = ContextVar("llmspell_in_fork", default=False)
"""True while a forked operation runs (and in everything it runs): its own ``Fork`` results
are not run, so a hook that forks every call makes one level of forks, not a tree that
doubles at every nesting level."""


_NO_FORK_IN_FORK = "a forked operation does not fork again"
_KIND_TEXTS = {kind: kind.value for kind in ComponentType}
"""Each component type's text (``.value`` of an enum member is a Python-level property:
every hooked call names its step kind)."""


def in_fork() -> bool:
    """True inside a forked operation (a ``Fork`` result's operation, or anything it runs):
    forks there are not run."""
    return _IN_FORK.get()


async def run_forks(
    operations: tuple[ForkOperation, ...], fork: ForkTo, ctx: HookContext | None
) -> list[dict[str, Any]]:
    """Run ``operations`` concurrently, each with ``fork(op, ctx)``: one entry per
    operation, ``{"type", "target", "result"}`` or ``{"type", "target", "error"}`` (an
    operation's failure is its entry's, never the caller's). Inside a forked operation
    (:func:`in_fork`) none runs: each entry says a forked operation does not fork again.
    What every ``Fork`` result runs through (the runtime's calls and the adapters')."""
    if _IN_FORK.get():
        refused = (f"UnsupportedHookResultError: {_NO_FORK_IN_FORK} (at "
                   f"{ctx.point if ctx is not None else 'a forked call'})")
        return [{"type": op.type, "target": op.target, "error": refused} for op in operations]

    async def one(op: ForkOperation) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": op.type, "target": op.target}
        try:
            entry["result"] = await fork(op, ctx)
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        return entry

    # The forks' tasks copy this context as they are made: the mark reaches them (and
    # what they run), not the operation they fork from (made before).
    token = _IN_FORK.set(True)
    try:
        return list(await asyncio.gather(*(one(op) for op in operations)))
    finally:
        _IN_FORK.reset(token)



async def run_hooked(
    system: Any,
    *,
    points: CallPoints,
    component: ComponentId,
    base: dict[str, Any],
    params: dict[str, Any],
    invoke: Invoke,
    redirect: RedirectTo,
    fork: ForkTo,
    cache: ResultCache,
    parent: HookContext | None = None,
    correlation_id: str | None = None,
    error_data: Callable[[BaseException, dict[str, Any]], dict[str, Any]] | None = None,
    step_input: Any = None,
    step_digest: Callable[[ActiveRun], str] | None = None,
) -> CallOutcome:
    """Run ``invoke(params, attempt)`` with ``points`` dispatched around it (see the module
    docstring for what each result does). ``base`` is merged into every context's data;
    ``error_data(exc, data)`` adds keys to the error point's ``data`` (which holds the
    failed attempt's ``params``). A ``Retry`` at the error point
    waits at least the ``retry_after`` the error carries (a provider's ``Retry-After``),
    capped at :data:`~llmspell.hooks.result.MAX_RETRY_DELAY`.

    Inside a recorded run the call is one step of it (:mod:`llmspell.runtime.runs`): what
    ``invoke`` produced and every hook decision are recorded, and a replay serves a tool's or
    model's result from the recording instead of calling ``invoke``, and uses the replay's
    stand-in for ``cache`` (:class:`ReplayCache`), never ``cache`` itself. ``step_input``
    is what the step's input digest is taken from when it is not ``params`` (a model call digests
    its request in one canonical form, hooked or not); ``step_digest(run)``, when given,
    takes that digest (a model call continues its conversation's).

    The before point's dispatches run in the call's
    :class:`~llmspell.core.operation_scope.OperationScope`: what their hooks registered with
    :func:`~llmspell.core.operation_scope.on_operation_end` runs once the call is over,
    however it ends, and before a redirect target runs or a before ``Retry`` asks again
    (that dispatch's call will not be made)."""
    scopes: list[OperationScope] = []
    try:
        kind = component.type
        opened = enter_step(_KIND_TEXTS.get(kind) or kind.value, component.name,
                            params if step_input is None else step_input, step_digest)
        if opened is None:
            return await _run_hooked(system, points, component, base, params, invoke,
                                     redirect, fork, cache, parent, correlation_id,
                                     error_data, scopes)
        replay = opened[0].run.replay
        if replay is not None:  # never the live cache (see ReplayCache)
            cache = replay.cache_for(cache)
        try:
            outcome = await _run_hooked(system, points, component, base, params,
                                        opened[0].calls(invoke), redirect, fork, cache,
                                        parent, correlation_id, error_data, scopes)
        except BaseException as exc:
            exit_step(opened, None, exc)
            raise
        exit_step(opened, outcome.result, None)
        return outcome
    finally:
        if scopes and scopes[0]:  # callbacks registered: usually none
            scopes[0].end()


def _end(scopes: list[OperationScope]) -> None:
    """End the call's scope (``scopes`` holds at most one, made at its first before
    dispatch): run what was registered so far; a scope ended already has nothing left."""
    if scopes and scopes[0]:
        scopes[0].end()


async def _run_hooked(
    system: Any,
    points: CallPoints,
    component: ComponentId,
    base: dict[str, Any],
    params: dict[str, Any],
    invoke: Invoke,
    redirect: RedirectTo,
    fork: ForkTo,
    cache: ResultCache,
    parent: HookContext | None,
    correlation_id: str | None,
    error_data: Callable[[BaseException, dict[str, Any]], dict[str, Any]] | None,
    scopes: list[OperationScope],
) -> CallOutcome:
    dispatch = system.dispatch
    # A point without hooks is skipped with one dict lookup: no coroutine, no context.
    chains = system.registry.chains
    attempt = 1
    retry_limit = 1
    rewritten = False
    forks: list[dict[str, Any]] = []
    correlation = parent.correlation_id if parent is not None else correlation_id
    asked = params
    asked_print: bytes | None = None  # the fingerprint of the call as asked (coalescing)
    if cache._flights and cache.coalesce:  # an identical call in flight: wait for it
        asked_print = _fingerprint(component, params)
        if asked_print is not None:
            await cache._wait_turn(asked_print)

    # -- before -----------------------------------------------------------------------
    while True:
        if points.before in chains:
            if not scopes:
                scopes.append(OperationScope())
            token = CURRENT_SCOPE.set(scopes[0])  # inline: this is every hooked call's path
            try:
                outcome, ctx = await dispatch(points.before, component,
                                              {**base, "params": params, "attempt": attempt},
                                              parent=parent, correlation_id=correlation)
            finally:
                CURRENT_SCOPE.reset(token)
        else:
            outcome, ctx = NO_HOOKS, None
        if ctx is not None:
            correlation = ctx.correlation_id
        result = outcome.result
        if type(result) is Continue:  # every hook went on: the common case, no tests
            break
        if isinstance(result, Cancel):
            raise cancelled_error(points.before, result, outcome.decided_by)
        if isinstance(result, Modified) and ctx is not None:
            params = dict(ctx.data.get("params", params))
        if isinstance(result, Retry) and attempt < result.max_attempts:
            _end(scopes)  # this dispatch's call is not made: the next one asks again
            await asyncio.sleep(result.delay)
            attempt += 1
            continue
        break
    if type(result) is Continue:
        pass
    elif isinstance(result, Replace):
        return CallOutcome(result=result.value, replaced=True, correlation_id=correlation)
    elif isinstance(result, Redirect):
        _end(scopes)  # the target's own before point takes what it needs
        value = await redirect(result.target, params, ctx)
        return CallOutcome(result=value, redirected_to=result.target,
                           correlation_id=correlation)
    before_key: tuple[str, float | None] | None = None
    if outcome.cache is not None:
        before_key = (cache_key(component, outcome.cache), outcome.cache.ttl)
        hit, value = cache.get(before_key[0])
        if hit:
            return CallOutcome(result=value, cached=True, correlation_id=correlation)
    # Whom the call is for, taken once (an after point's alias is kept per caller): only
    # when an alias may be looked up or made, so a call with no after hooks pays nothing.
    caller = (_caller(ctx or parent or inherited_context())
              if cache.aliased or points.after in chains else None)
    if cache.aliased:  # an after point cached an earlier call of this caller: is it this one?
        fingerprint = _fingerprint(component, params, caller)
        if fingerprint is not None:
            hit, value = cache.get_aliased(fingerprint)
            if hit:
                return CallOutcome(result=value, cached=True, correlation_id=correlation)
    pending_forks: tuple[ForkOperation, ...] = tuple(
        op for f in outcome.forks for op in f.operations
    ) if outcome.forks else ()
    before_ctx = ctx
    generation = cache.generation  # a clear() while the call runs: its result is stale
    if scopes and cache.coalesce and (
            before_key is not None or (ctx is not None and COALESCE_METADATA in ctx.metadata
                                       and _asks_coalescing(ctx, parent))):
        if asked_print is None:
            asked_print = _fingerprint(component, asked)
        # Coalesced for a hook (not a Cache result): only while the hook still asks.
        hooked = ctx.metadata if before_key is None and ctx is not None else None
        land = (cache._take_off(asked_print, hooked,
                                None if hooked is None else hooked.get(COALESCE_METADATA))
                if asked_print is not None else None)
        if land is not None:  # identical calls wait until this one is over
            scopes[-1].add(land)

    # -- the operation, with errors and retries ------------------------------------------
    # The operation's context (its before point's, else its parent): what it starts (an
    # agent's model and tool calls, a sub-agent a tool runs) descends from it, so the
    # metadata naming the user reaches that (see current_context, inherited_context).
    # Set only when that changes what is seen inside: an operation with no context of its
    # own runs under what encloses it, which is right for what it starts too, and an
    # agent's call whose hooks made no context of their own has the agent's (a context
    # variable set costs a copy of the task's context).
    owner = before_ctx or parent
    enclosing = _CONTEXT.get()
    lineage = ((owner, False) if owner is not None and (
        enclosing is None or enclosing[0] is not owner or enclosing[1]) else None)
    attempt = 1
    recovered = False  # an error point's Replace: a fallback, never cached as the result
    while True:
        try:
            lineage_token = _CONTEXT.set(lineage) if lineage is not None else None
            try:
                if pending_forks:
                    main = asyncio.ensure_future(invoke(params, attempt))
                    try:
                        forks.extend(await run_forks(pending_forks, fork, before_ctx))
                    except BaseException:
                        # Cancelled while the forks ran: the operation ends with its
                        # caller (its events and steps too), not in the background.
                        main.cancel()
                        await asyncio.wait([main])
                        if not main.cancelled():
                            main.exception()  # retrieved: the cancellation is what goes on
                        raise
                    pending_forks = ()
                    value = await main
                else:
                    value = await invoke(params, attempt)
            finally:
                if lineage_token is not None:
                    _CONTEXT.reset(lineage_token)
        except OperationCancelled:
            raise
        except Exception as exc:
            if points.error not in chains:
                raise
            err_data = {**base, "params": params, "attempt": attempt,
                        "error": error_text(exc), "error_type": type(exc).__name__}
            if error_data is not None:
                err_data.update(error_data(exc, err_data))
            err_outcome, err_ctx = await dispatch(
                points.error, component, err_data,
                parent=before_ctx or parent, correlation_id=correlation,
            )
            verdict = err_outcome.result
            if isinstance(verdict, Retry):
                retry_limit = max(retry_limit, verdict.max_attempts)
                if attempt < retry_limit:
                    await asyncio.sleep(_retry_delay(verdict.delay, exc))
                    attempt += 1
                    continue
                raise
            if isinstance(verdict, Replace):
                value = verdict.value
                recovered = True
                break
            if isinstance(verdict, Redirect):
                _end(scopes)  # this call is over: the fallback is another one
                value = await redirect(verdict.target, params, err_ctx)
                return CallOutcome(result=value, attempts=attempt,
                                   redirected_to=verdict.target, forks=forks,
                                   correlation_id=correlation)
            if isinstance(verdict, Cancel):
                raise cancelled_error(points.error, verdict,
                                      err_outcome.decided_by) from exc
            raise

        # -- after ------------------------------------------------------------------------
        if points.after not in chains:
            break
        out, after_ctx = await dispatch(
            points.after, component,
            {**base, "params": params, "attempt": attempt, "result": value},
            parent=before_ctx or parent, correlation_id=correlation,
        )
        verdict = out.result
        if type(verdict) is Continue:  # every hook went on: the common case, no tests
            pass
        elif isinstance(verdict, Retry):
            retry_limit = max(retry_limit, verdict.max_attempts)
            if attempt < retry_limit:
                await asyncio.sleep(verdict.delay)
                attempt += 1
                continue
        elif isinstance(verdict, Cancel):
            raise cancelled_error(points.after, verdict, out.decided_by)
        elif isinstance(verdict, Modified) and after_ctx is not None:
            value = after_ctx.data.get("result", value)
            rewritten = True
        elif isinstance(verdict, Replace):
            value = verdict.value
        elif isinstance(verdict, Redirect):
            _end(scopes)
            value = await redirect(verdict.target, params, after_ctx)
            return CallOutcome(result=value, attempts=attempt, redirected_to=verdict.target,
                               forks=forks, correlation_id=correlation)
        if out.forks:
            forks.extend(await run_forks(
                tuple(op for f in out.forks for op in f.operations), fork, after_ctx))
        if out.cache is not None:
            key = cache_key(component, out.cache)
            cache.put(key, value, out.cache.ttl, since=generation)
            if caller is None:  # an after hook registered while the call ran
                caller = _caller(before_ctx or parent or inherited_context())
            fingerprint = _fingerprint(component, params, caller)
            if fingerprint is not None and generation == cache.generation:
                cache.alias(fingerprint, key)
        break

    if before_key is not None and not recovered:
        cache.put(before_key[0], value, before_key[1], since=generation)
    return CallOutcome(result=value, attempts=attempt, forks=forks, correlation_id=correlation,
                       rewritten=rewritten)

