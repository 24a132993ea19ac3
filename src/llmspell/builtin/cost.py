"""Count what model calls cost, report it, and enforce budgets: the ``cost_tracking`` hook.

:class:`CostTrackingHook` watches the model points and ``BeforeAgentExecution``:

* ``AfterModelCall``: prices the call from ``result.usage`` (input, output, cached and
  reasoning tokens) of the model that answered (``result.model``; the model asked for
  when the answering one has no price) and records it;
* ``BeforeModelCall``: estimates what the call will cost (the prompt's tokens, counted by a
  ``tokenizer`` or as characters / 4, at the input price, plus ``params.max_tokens`` or
  ``CostConfig.default_max_tokens`` at the output price) and returns ``Cancel`` when what
  a blocking budget has spent, plus what calls in flight have reserved, plus this estimate
  would cross the budget's blocking level. A run therefore stops at the call that would
  cross its budget, not after it. The estimate is reserved until the call's
  ``AfterModelCall`` (replaced by the real cost) or ``ModelCallError`` releases it, or the
  call is over without either: a later ``BeforeModelCall`` hook cancelled, replaced or
  redirected it, a cache served it, a before ``Retry`` asked again, or it raised or was
  cancelled (the runtime ends the call's
  :class:`~llmspell.core.operation_scope.OperationScope`). A caller that dispatches the
  point without a scope gets the reservation back when its asyncio task ends;
  reservations nobody released expire after ``reservation_ttl`` seconds;
* ``BeforeAgentExecution``: remembers the run's user and session and cancels the run at
  once when a blocking budget in its scope is already used up.

**Who the user is.** The user (the key of ``user:<id>`` budgets) is read from
``ctx.metadata["user"]`` only: metadata the application sets, with a hook of its own at a
higher priority or on a parent context it passes as ``parent=`` (child contexts inherit
it). The run's input is *not* read by default: a model chooses a sub-agent's input, and
an end user may control it, so a new ``user`` per run would escape a per-user budget.
``CostConfig(user_from_params=True)`` opts in to ``params["user"]`` of the run's input as
a fallback, for input only the application builds (the rate-limit hook's option of the
same name).

An unpriced model cannot be estimated: its calls are never cancelled by the estimate, and
cost nothing against a budget, unless ``CostConfig(block_unpriced=True)``: then a blocking
budget in scope cancels them. A call that a blocking budget reserved an estimate for and
whose usage comes back missing or unusable (not whole token counts >= 0) is charged that
estimate, never $0; token counts given as integral floats or digit strings are counted.

Pricing, first match wins, per ``(provider, model)``:

1. ``CostConfig.prices``: your own prices (USD per 1M input/output tokens), keyed
   ``"provider/model"`` or just ``"model"``; source ``override``, version ``config``;
2. `genai-prices <https://github.com/pydantic/genai-prices>`_ when it is installed (the
   ``prices`` extra: ``pip install 'llmspell[prices]'``): its bundled data only, its
   auto-update is never started, so nothing is downloaded. ``calc_price`` costs 130-150
   µs, so a model's price is looked up once per (provider, model, UTC day) and cached; each
   call is then a multiply (under 1 µs).
   Source ``genai-prices``, version the package version;
3. :data:`FALLBACK_PRICES`, a small bundled table of well-known models, dated
   :data:`FALLBACK_AS_OF`: a fallback for when genai-prices is absent, not a price list to
   rely on. Source ``bundled``, version its date;
4. otherwise the call is **unpriced**: its cost is ``None`` (never a made-up ``$0``), the
   record says ``unpriced``, and it is counted apart.

Money is :class:`~decimal.Decimal` throughout (prices, costs, limits); records and events
carry it as a string. Costs are computed in USD and reported in ``CostConfig.currency``
using your ``rates`` (units of that currency per 1 USD).

**Shared budgets.** ``CostTrackingHook(config, shared=...)`` keeps each budget's spending
(per window) in a :class:`~llmspell.builtin.counters.CounterBackend` (``shared="nats://..."``
for JetStream KV, ``shared="redis://..."`` for Redis), so every process with the same
backend and ``shared_key`` spends from one budget: a blocking check reads the spending
first, a call's cost is added by compare-and-set, and a level is alerted by the one process
whose charge crossed it. Estimates of calls in flight stay reserved in their own process.
Records, reports and ``stats()`` stay per process; :meth:`CostTrackingHook.budget_status`
reads the shared spending.

Every call becomes a :class:`CostRecord` (kept in a bounded history and, with a bus,
published as ``cost.recorded`` so an event store keeps them all) and is aggregated by
provider, model, agent, user, session and hour (see :meth:`CostTrackingHook.report`). The
user and session come from the context's metadata (``user``, ``session``) or, at the model
call, from those of the agent run it belongs to (its ``BeforeAgentExecution`` metadata, the
``session`` key of the run's input dict, and its ``user`` key with ``user_from_params``).
"""

from __future__ import annotations

import asyncio
import importlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import msgspec

from llmspell.builtin.base import (
    MODEL_AFTER,
    MODEL_BEFORE,
    MODEL_ERROR,
    BuiltinHook,
    Tokenizer,
    estimate_prompt_tokens,
)
from llmspell.builtin.counters import CounterBackend, counter_key, shared_counters
from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import ConfigurationError, InvalidValueError, SharedCounterError
from llmspell.core.operation_scope import on_operation_end
from llmspell.core.redact import get_logger
from llmspell.core.run_scope import current_replay, replay_serves
from llmspell.events.bus import EventBus
from llmspell.hooks.context import HookContext
from llmspell.hooks.metadata import ErrorPolicy
from llmspell.hooks.points import HookPoint
from llmspell.hooks.registry import HookHandle, HookRegistry
from llmspell.hooks.result import Cancel

_log = get_logger(__name__)

__all__ = [
    "COST_PRIORITY",
    "FALLBACK_AS_OF",
    "FALLBACK_PRICES",
    "Budget",
    "BudgetAlert",
    "BudgetStatus",
    "CostConfig",
    "CostRecord",
    "CostRow",
    "CostStats",
    "CostTrackingHook",
    "TokenPrice",
    "list_price_usd",
]

COST_PRIORITY = -700
"""Default priority of :class:`CostTrackingHook`: early (lower runs first), so a budget
cancels a call before other hooks spend work on it."""

Window = Literal["total", "day", "hour"]
Level = Literal["info", "warning", "critical"]
_LEVELS: tuple[str, ...] = ("info", "warning", "critical")
_WINDOWS: tuple[str, ...] = ("total", "day", "hour")
_DIMENSIONS: tuple[str, ...] = ("provider", "model", "agent", "user", "session", "hour", "day")
_MILLION = Decimal(1_000_000)
_OTHER = "(other)"
_MAX_KEYS = 10_000
_MAX_RESERVATIONS = 100_000
_MAX_GROUPS = 100_000
"""Report groups (provider, model, agent, user, session, hour) kept; later ones are
counted under ``(other)``."""


class TokenPrice(msgspec.Struct, frozen=True, kw_only=True):
    """A model's price in USD per 1M tokens, input and output."""

    input: Decimal
    output: Decimal

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "input", _money(self.input, "TokenPrice.input"))
        msgspec.structs.force_setattr(self, "output", _money(self.output, "TokenPrice.output"))


FALLBACK_AS_OF = "2025-11-01"
"""When the bundled :data:`FALLBACK_PRICES` were checked (list prices, USD per 1M tokens)."""

_Tiers = tuple[tuple[int, Decimal], ...]
_Rate = tuple[Decimal, _Tiers]

FALLBACK_PRICES: dict[str, tuple[_Rate, _Rate]] = {
    # (input (base, tiers), output (base, tiers)); a tier's price applies to every token
    # once the call's input tokens exceed its start (the providers' "cliff" rule).
    "openai/gpt-4o": ((Decimal("2.5"), ()), (Decimal("10"), ())),
    "openai/gpt-4o-mini": ((Decimal("0.15"), ()), (Decimal("0.6"), ())),
    "openai/gpt-4.1": ((Decimal("2"), ()), (Decimal("8"), ())),
    "openai/gpt-4.1-mini": ((Decimal("0.4"), ()), (Decimal("1.6"), ())),
    "openai/gpt-5": ((Decimal("1.25"), ()), (Decimal("10"), ())),
    "openai/gpt-5-mini": ((Decimal("0.25"), ()), (Decimal("2"), ())),
    "anthropic/claude-sonnet-4-5": ((Decimal("3"), ((200_000, Decimal("6")),)),
                                    (Decimal("15"), ((200_000, Decimal("22.5")),))),
    "anthropic/claude-haiku-4-5": ((Decimal("1"), ()), (Decimal("5"), ())),
    "anthropic/claude-opus-4-1": ((Decimal("15"), ()), (Decimal("75"), ())),
    "google/gemini-2.5-flash": ((Decimal("0.3"), ()), (Decimal("2.5"), ())),
    "google/gemini-2.5-pro": ((Decimal("1.25"), ((200_000, Decimal("2.5")),)),
                              (Decimal("10"), ((200_000, Decimal("15")),))),
}
"""The bundled fallback price table, keyed ``"provider/model"`` (see the module docstring)."""


def _money(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise InvalidValueError(
            f"{where} must be a Decimal (or an int or a decimal string), not "
            f"{type(value).__name__}",
            hint="money is exact: use Decimal('0.15'), not the float 0.15",
        )
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise InvalidValueError(f"{where} {value!r} is not a number",
                                hint="e.g. Decimal('2.50')") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidValueError(f"{where} must be a finite amount >= 0, got {value!r}")
    return amount


class Budget(msgspec.Struct, frozen=True, kw_only=True):
    """A spending limit, in the tracker's currency.

    ``scope``: ``global``, ``agent:<name>`` or ``user:<id>``. ``window``: ``total``,
    ``day`` or ``hour`` (UTC; spending starts again at zero in each new window).
    ``levels``: fractions of ``limit`` at which ``cost.budget.<level>`` is published (once
    per window). ``block_at``: the level whose amount spending may not cross: a model call
    in the scope whose estimated cost would cross it is cancelled at ``BeforeModelCall``,
    and once it is crossed every ``BeforeAgentExecution`` and ``BeforeModelCall`` in the
    scope is cancelled; None only alerts.
    """

    limit: Decimal
    scope: str = "global"
    window: Window = "total"
    levels: dict[str, float] = msgspec.field(
        default_factory=lambda: {"info": 0.5, "warning": 0.8, "critical": 1.0})
    block_at: Level | None = "critical"

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "limit", _money(self.limit, "Budget.limit"))
        if not self.limit > 0:
            raise InvalidValueError("Budget.limit must be > 0", hint="e.g. Decimal('5.00')")
        kind, _, name = self.scope.partition(":")
        if not (self.scope == "global" or (kind in ("agent", "user") and name)):
            raise InvalidValueError(
                f"Budget.scope {self.scope!r} is not a scope",
                hint="use 'global', 'agent:<name>' or 'user:<id>'",
            )
        if self.window not in _WINDOWS:
            raise InvalidValueError(f"Budget.window {self.window!r} is unknown",
                                    hint="use 'total', 'day' or 'hour'")
        for level, fraction in self.levels.items():
            if level not in _LEVELS:
                raise InvalidValueError(f"Budget.levels has an unknown level {level!r}",
                                        hint="levels are 'info', 'warning' and 'critical'")
            if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
                    or not 0 < fraction < float("inf"):
                raise InvalidValueError(
                    f"Budget.levels[{level!r}] must be a fraction > 0, got {fraction!r}",
                    hint="e.g. {'warning': 0.8, 'critical': 1.0}")
        if self.block_at is not None and self.block_at not in self.levels:
            raise InvalidValueError(
                f"Budget.block_at {self.block_at!r} is not one of its levels "
                f"{sorted(self.levels)}",
                hint="add that level to levels, or set block_at=None to only alert",
            )


class CostConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How :class:`CostTrackingHook` prices, reports and limits spending.

    ``currency`` (default ``USD``) is the one records, reports and budget limits use; any
    other needs ``rates[currency]`` (units per 1 USD). ``prices``: your prices, keyed
    ``"provider/model"`` or ``"model"``. ``use_genai_prices`` and ``use_fallback`` switch
    the other sources. ``history_size`` bounds the in-memory records; ``retention_hours``
    how far back :meth:`~CostTrackingHook.report` can look; ``max_tracked_runs`` the agent
    runs remembered for user/session attribution. ``default_max_tokens``: the output
    tokens a call's estimate assumes when its request sets no ``max_tokens``.
    ``reservation_ttl``: seconds after which an estimate reserved at ``BeforeModelCall``
    that nothing released is forgotten. ``user_from_params``: also read the run's user from
    its input (``params["user"]`` at ``BeforeAgentExecution``) when the metadata names
    none (off: a model chooses a sub-agent's input; see the module docstring).
    ``block_unpriced``: cancel a call of a model nobody prices when a blocking budget is in
    its scope (off: such a call is let through and costs nothing, as its cost is unknown).
    """

    currency: str = "USD"
    rates: dict[str, Decimal] = {}
    prices: dict[str, TokenPrice] = {}
    use_genai_prices: bool = True
    use_fallback: bool = True
    budgets: tuple[Budget, ...] = ()
    history_size: int = 10_000
    retention_hours: int = 24 * 31
    max_tracked_runs: int = 10_000
    publish_records: bool = True
    default_max_tokens: int = 1024
    reservation_ttl: float = 600.0
    user_from_params: bool = False
    block_unpriced: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.currency, str) or not self.currency.isalpha():
            raise InvalidValueError(f"CostConfig.currency {self.currency!r} is not a "
                                    "currency code", hint="e.g. 'USD' or 'EUR'")
        currency = self.currency.upper()
        msgspec.structs.force_setattr(self, "currency", currency)
        rates = {code.upper(): _money(rate, f"CostConfig.rates[{code!r}]")
                 for code, rate in self.rates.items()}
        for code, rate in rates.items():
            if not rate > 0:
                raise InvalidValueError(f"CostConfig.rates[{code!r}] must be > 0")
        rates.setdefault("USD", Decimal(1))
        msgspec.structs.force_setattr(self, "rates", rates)
        if currency not in rates:
            raise ConfigurationError(
                f"CostConfig.currency is {currency!r} but rates has no rate for it",
                hint=f"add rates={{{currency!r}: Decimal(<{currency} per 1 USD>)}}",
            )
        for key, price in self.prices.items():
            if not isinstance(price, TokenPrice):
                raise ConfigurationError(
                    f"CostConfig.prices[{key!r}] must be a TokenPrice, not "
                    f"{type(price).__name__}",
                    hint="e.g. TokenPrice(input=Decimal('2.5'), output=Decimal('10'))")
        for i, budget in enumerate(self.budgets):
            if not isinstance(budget, Budget):
                raise ConfigurationError(f"CostConfig.budgets[{i}] must be a Budget",
                                         hint="e.g. Budget(limit=Decimal('5'))")
        for field in ("history_size", "retention_hours", "max_tracked_runs",
                      "default_max_tokens"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidValueError(f"CostConfig.{field} must be an int >= 1, "
                                        f"got {value!r}")
        ttl = self.reservation_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
            raise InvalidValueError(f"CostConfig.reservation_ttl must be seconds > 0, "
                                    f"got {ttl!r}", hint="the default is 600")
        if not isinstance(self.block_unpriced, bool):
            raise InvalidValueError(
                f"CostConfig.block_unpriced must be True or False, got "
                f"{self.block_unpriced!r}")
        if not isinstance(self.user_from_params, bool):
            raise InvalidValueError(
                f"CostConfig.user_from_params must be True or False, got "
                f"{self.user_from_params!r}",
                hint="leave it False unless only your application sets the run's input")


class CostRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One priced (or unpriced) model call. ``cost`` is a decimal string in ``currency``,
    None when ``unpriced``; ``source``/``version`` say where the price came from."""

    timestamp: float
    agent: str | None
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cost: str | None
    currency: str
    unpriced: bool
    source: str | None
    version: str | None
    correlation_id: str
    user: str | None = None
    session: str | None = None
    turn: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class CostRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of :meth:`CostTrackingHook.report`: the group's values and its totals.
    ``cost`` covers the priced calls; it is None when none of the group's calls was priced
    (an unpriced call is never counted as $0)."""

    group: dict[str, str | None]
    calls: int
    unpriced_calls: int
    input_tokens: int
    output_tokens: int
    cost: Decimal | None
    currency: str


class BudgetAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A budget crossed a level: published as ``cost.budget.<level>`` and passed to the
    callback. Amounts are decimal strings in ``currency``."""

    scope: str
    window: str
    window_start: str
    level: str
    fraction: float
    limit: str
    spent: str
    currency: str
    blocking: bool
    at: float


class BudgetStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Where a budget stands in its current window."""

    scope: str
    window: str
    limit: Decimal
    spent: Decimal
    levels_crossed: tuple[str, ...]
    blocking: bool


class CostStats(msgspec.Struct, frozen=True, kw_only=True):
    """Totals since the hook was created (not bounded by the history or retention)."""

    currency: str
    calls: int
    priced_calls: int
    unpriced_calls: int
    input_tokens: int
    output_tokens: int
    total_cost: Decimal
    by_provider: dict[str, Decimal]
    by_model: dict[str, Decimal]
    by_agent: dict[str, Decimal]
    by_user: dict[str, Decimal]
    by_session: dict[str, Decimal]
    unpriced_by_model: dict[str, int]
    by_source: dict[str, int]
    alerts: int
    blocked_calls: int
    budgets: tuple[BudgetStatus, ...]
    price_cache_size: int
    estimated_calls: int = 0
    reserved: Decimal = Decimal(0)
    replayed_calls: int = 0
    """Model calls a replay served from its recording: not priced, not charged."""


class _Price:
    """A resolved price: where it came from and its input/output rates (USD per 1M)."""

    __slots__ = ("input", "output", "source", "version")

    def __init__(self, source: str, version: str, input: _Rate, output: _Rate) -> None:
        self.source = source
        self.version = version
        self.input = input
        self.output = output


def _rate(rate: _Rate, input_tokens: int) -> Decimal:
    base, tiers = rate
    for start, price in reversed(tiers):
        if input_tokens > start:
            return price
    return base


class _Totals:
    __slots__ = ("calls", "cost", "input_tokens", "output_tokens", "unpriced_calls")

    def __init__(self) -> None:
        self.calls = 0
        self.unpriced_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost = Decimal(0)


class _BudgetState:
    __slots__ = ("blocked", "crossed", "spent", "window_key")

    def __init__(self, window_key: int) -> None:
        self.window_key = window_key
        self.spent = Decimal(0)
        self.crossed: list[str] = []
        self.blocked = False


RESERVATION_METADATA = "llmspell.cost.reservation"
"""Metadata key under which ``BeforeModelCall`` leaves the id of the call's reservation."""


_UNPRICED = _Price("unpriced", "", (Decimal(0), ()), (Decimal(0), ()))
_genai: list[Any] = []


def _genai_prices() -> Any:
    """The genai_prices module, imported once on first use (None when not installed)."""
    if not _genai:
        try:
            # Imported lazily: its price data takes a while to load.
            _genai.append(importlib.import_module("genai_prices"))
        except ImportError:
            _genai.append(None)
    return _genai[0]


def _split(rate: object) -> _Rate | None:
    """A genai-prices price (Decimal or TieredPrices) as ``(base, tiers)``."""
    if rate is None:
        return None
    if isinstance(rate, Decimal):
        return (rate, ())
    base = getattr(rate, "base", None)
    tiers = getattr(rate, "tiers", None)
    if isinstance(base, Decimal) and isinstance(tiers, list):
        return (base, tuple(sorted((int(t.start), Decimal(t.price)) for t in tiers)))
    return None


def _hour_label(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%dT%H:00Z")


def _day_label(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")


class CostTrackingHook(BuiltinHook):
    """Prices every model call, aggregates, reports and enforces budgets.

    ``bus``: an :class:`EventBus` for ``cost.recorded`` and ``cost.budget.<level>`` events
    (e.g. ``system.bus``). ``on_budget``: called with every :class:`BudgetAlert`. ``clock``
    gives the timestamps (and so the windows). ``tokenizer``: counts a text's tokens for
    the estimate before a model call (default: characters / 4).

    ``shared``: a :class:`~llmspell.builtin.counters.CounterBackend` (or a NATS URL for
    :class:`~llmspell.builtin.nats_counters.NatsCounters`, a Redis URL for
    :class:`~llmspell.builtin.redis_counters.RedisCounters`) where the budgets' spending is
    kept, so every process with the same backend and ``shared_key`` spends from one budget
    (see the module docstring). ``error_policy``: what a failure of the hook (such as an
    unreachable backend, ``SharedCounterError``) does to the call.
    """

    default_points = (str(MODEL_BEFORE), str(MODEL_AFTER), str(MODEL_ERROR),
                      str(HookPoint.BEFORE_AGENT_EXECUTION))

    def __init__(
        self,
        config: CostConfig | None = None,
        *,
        points: Iterable[str] | None = None,
        priority: int = COST_PRIORITY,
        bus: EventBus | None = None,
        on_budget: Callable[[BudgetAlert], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        tokenizer: Tokenizer | None = None,
        shared: CounterBackend | str | None = None,
        shared_key: str = "cost",
        error_policy: ErrorPolicy = ErrorPolicy.FAIL_OPEN,
    ) -> None:
        backend = shared_counters(shared)
        if not isinstance(shared_key, str) or not shared_key:
            raise InvalidValueError("shared_key must be a non-empty string",
                                    hint="e.g. shared_key='team-a'")
        if tokenizer is not None and not callable(tokenizer):
            raise InvalidValueError(f"tokenizer must be callable, got {tokenizer!r}",
                                    hint="e.g. tokenizer=lambda text: len(enc.encode(text))")
        if config is not None and not isinstance(config, CostConfig):
            raise ConfigurationError(
                f"CostTrackingHook needs a CostConfig, not {type(config).__name__}",
                hint="e.g. CostTrackingHook(CostConfig(currency='USD'))",
            )
        super().__init__(name="cost_tracking", priority=priority, points=points,
                         error_policy=error_policy,
                         description="prices model calls, reports spending, enforces budgets")
        self.shared = backend
        self.shared_key = shared_key
        self.config = config or CostConfig()
        self.bus = bus
        self.on_budget = on_budget
        self._clock = clock
        self.tokenizer = tokenizer
        self._rate = self.config.rates[self.config.currency]
        self._lock = threading.Lock()
        self._prices: dict[tuple[str, str, int], _Price] = {}
        self._history: list[CostRecord] = []
        self._runs: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        self._agg: dict[tuple[str, str, str | None, str | None, str | None, int], _Totals] = {}
        self._hour = -1
        self._budgets = self.config.budgets
        self._budget_states: list[_BudgetState | None] = [None] * len(self._budgets)
        self._blocking = any(b.block_at is not None for b in self._budgets)
        # Per budget, its levels in ascending order: (level, fraction, amount, blocks).
        self._thresholds: list[tuple[tuple[str, float, Decimal, bool], ...]] = [
            tuple(
                (level, fraction, b.limit * Decimal(str(fraction)),
                 b.block_at is not None and fraction >= b.levels[b.block_at])
                for level, fraction in sorted(b.levels.items(), key=lambda kv: kv[1])
            )
            for b in self._budgets
        ]
        self._totals = _Totals()
        self._by: dict[str, dict[str, Decimal]] = {
            k: {} for k in ("provider", "model", "agent", "user", "session")}
        self._unpriced_by_model: dict[str, int] = {}
        self._by_source: dict[str, int] = {}
        self._alerts = 0
        self._blocked = 0
        # Estimates of model calls in flight: id -> (expires, amount, budget indices).
        self._reserved: OrderedDict[str, tuple[float, Decimal, tuple[int, ...]]] = \
            OrderedDict()
        self._reserved_sum: list[Decimal] = [Decimal(0)] * len(self._budgets)
        self._next_reservation = 0
        # The reservations each asyncio task holds (one done-callback per task releases
        # what is left when it ends: a call cancelled mid-flight sees no after point).
        self._task_reservations: dict[asyncio.Task[Any], set[str]] = {}
        self._reservation_task: dict[str, asyncio.Task[Any]] = {}
        self._estimated = 0
        self._replayed = 0

    def install(self, registry: HookRegistry) -> list[HookHandle]:
        """Register at each point; also loads genai-prices now (about 0.2 s, once per
        process) rather than during the first model call."""
        self.warm()
        return super().install(registry)

    def warm(self) -> bool:
        """Import genai-prices and load its bundled data if it is used; True when it is
        available. Never downloads anything."""
        if not self.config.use_genai_prices:
            return False
        module = _genai_prices()
        if module is None:
            return False
        _from_genai_prices("openai", "gpt-4o", self._clock.now())
        return True

    # -- the hook ------------------------------------------------------------------------
    def execute(self, ctx: HookContext) -> Cancel | Awaitable[Cancel | None] | None:
        """After a model call, record its cost; before one, check the budgets against its
        estimate; before an agent run, remember its user and enforce budgets. With a
        shared backend, the budget steps are async (a round trip each)."""
        point = ctx.point
        data = ctx.data
        if point == MODEL_AFTER:
            reserved = self._release(ctx)
            if replay_serves():  # a replay served it from the recording: nothing spent
                with self._lock:
                    self._replayed += 1
                return None
            if self.shared is not None and self._budgets:
                return self._after_model_shared(ctx, reserved)
            self._after_model(ctx, reserved)
            return None
        if point == MODEL_BEFORE:
            if replay_serves():  # served by a replay: no estimate, nothing to block
                ctx.metadata.pop(RESERVATION_METADATA, None)  # a parent call's
                return None
            if self.shared is not None and self._blocking:
                return self._refreshed(self._before_model, ctx)
            return self._before_model(ctx)
        if point == MODEL_ERROR:
            self._release(ctx)
            return None
        usage = data.get("token_usage")
        if isinstance(usage, dict):  # a caller's own point with the old data shape
            self.record(usage, agent=data.get("agent"), correlation_id=ctx.correlation_id,
                        metadata=ctx.metadata, turn=data.get("turn"))
            return None
        if "params" in data:
            if self.shared is not None and self._blocking:
                return self._refreshed(self._before_agent, ctx)
            return self._before_agent(ctx)
        return None

    # -- shared budgets ------------------------------------------------------------------
    def _budget_key(self, budget: Budget, window_key: int) -> str:
        return counter_key(self.shared_key, "budget", budget.scope, budget.window,
                           str(window_key))

    async def _refreshed(self, check: Callable[[HookContext], Cancel | None],
                         ctx: HookContext) -> Cancel | None:
        """Bring the blocking budgets' spending up to date from the shared backend, then
        run the local ``check`` on it."""
        backend = self.shared
        assert backend is not None
        now = self._clock.now()
        indices = [i for i, b in enumerate(self._budgets) if b.block_at is not None]
        keys = [self._budget_key(self._budgets[i],
                                 self._window_key(self._budgets[i], now)) for i in indices]
        values = [await backend.read(key) for key in keys]
        self._apply_spent(zip(indices, values, strict=True), now)
        return check(ctx)

    def _refresh_sync(self) -> None:
        backend = self.shared
        assert backend is not None
        now = self._clock.now()
        self._apply_spent(
            ((i, backend.read_sync(self._budget_key(b, self._window_key(b, now))))
             for i, b in enumerate(self._budgets)), now)

    def _apply_spent(self, values: Iterable[tuple[int, Any]], now: float) -> None:
        """Set budget states to the shared spending read (levels and blocking follow)."""
        with self._lock:
            for i, value in values:
                state = self._state(i, self._budgets[i], now)
                self._set_spent(i, state, _stored_spending(value, self._budgets[i]))

    def _set_spent(self, i: int, state: _BudgetState, spent: Decimal) -> None:
        state.spent = spent
        state.crossed = [level for level, _f, threshold, _b in self._thresholds[i]
                         if spent >= threshold]
        state.blocked = any(blocks and spent >= threshold
                            for _l, _f, threshold, blocks in self._thresholds[i])

    def _charge_change(self, cost: Decimal, budget: Budget
                       ) -> Callable[[Any], tuple[str, tuple[Decimal, Decimal]]]:
        def add(value: Any) -> tuple[str, tuple[Decimal, Decimal]]:
            old = _stored_spending(value, budget)
            new = old + cost
            return str(new), (old, new)

        return add

    def _charged(self, record: CostRecord, now: float, i: int, old: Decimal, new: Decimal,
                 alerts: list[BudgetAlert]) -> None:
        """Budget ``i`` went from ``old`` to ``new`` by this process's charge: the levels
        crossed in between are this process's to report (each once in the fleet)."""
        budget = self._budgets[i]
        with self._lock:
            state = self._state(i, budget, now)
            self._set_spent(i, state, new)
            for level, fraction, threshold, blocking in self._thresholds[i]:
                if old < threshold <= new:
                    self._alerts += 1
                    alerts.append(BudgetAlert(
                        scope=budget.scope, window=budget.window,
                        window_start=_window_start(budget.window, state.window_key),
                        level=level, fraction=fraction, limit=str(budget.limit),
                        spent=str(new), currency=self.config.currency, blocking=blocking,
                        at=now))

    def _scoped(self, record: CostRecord) -> list[int]:
        return [i for i, b in enumerate(self._budgets)
                if _in_scope(b.scope, record.agent, record.user)]

    async def _charge_shared(self, record: CostRecord, cost: Decimal, now: float
                             ) -> list[BudgetAlert]:
        backend = self.shared
        assert backend is not None
        alerts: list[BudgetAlert] = []
        for i in self._scoped(record):
            budget = self._budgets[i]
            old, new = await backend.update(
                self._budget_key(budget, self._window_key(budget, now)),
                self._charge_change(cost, budget))
            self._charged(record, now, i, old, new, alerts)
        return alerts

    def _charge_shared_sync(self, record: CostRecord, cost: Decimal, now: float
                            ) -> list[BudgetAlert]:
        backend = self.shared
        assert backend is not None
        alerts: list[BudgetAlert] = []
        for i in self._scoped(record):
            budget = self._budgets[i]
            old, new = backend.update_sync(
                self._budget_key(budget, self._window_key(budget, now)),
                self._charge_change(cost, budget))
            self._charged(record, now, i, old, new, alerts)
        return alerts

    async def _after_model_shared(self, ctx: HookContext, reserved: Decimal | None) -> None:
        usage = self._usage_of(ctx, reserved)
        if usage is None:
            return
        spec, kwargs = usage
        record, cost, now, alerts = self._record_local(spec, **kwargs)
        if cost is not None:
            alerts = await self._charge_shared(record, cost, now)
        self._publish(record, alerts, kwargs["correlation_id"])

    # -- model calls ---------------------------------------------------------------------
    @staticmethod
    def _caller_agent(data: Mapping[str, Any]) -> str | None:
        caller = data.get("caller")
        if isinstance(caller, dict) and caller.get("type") == "agent":
            return _opt_str(caller.get("name"))
        return _opt_str(data.get("agent"))

    def _after_model(self, ctx: HookContext, reserved: Decimal | None) -> None:
        usage = self._usage_of(ctx, reserved)
        if usage is not None:
            spec, kwargs = usage
            record, cost, now, alerts = self._record_local(spec, **kwargs)
            if self.shared is not None and cost is not None and self._budgets:
                alerts = self._charge_shared_sync(record, cost, now)
            self._publish(record, alerts, kwargs["correlation_id"])

    def _usage_of(self, ctx: HookContext, reserved: Decimal | None = None
                  ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The ``_record_local()`` arguments of an ``AfterModelCall`` (None without usage).
        A call a blocking budget reserved ``reserved`` for whose usage is missing or
        unusable (not whole token counts >= 0) is charged that estimate: a provider or
        framework that reports no usage must not spend a blocking budget for free."""
        data = ctx.data
        result = data.get("result")
        if not isinstance(result, dict):
            return None
        usage = result.get("usage")
        if not isinstance(usage, dict):
            if reserved is None:
                return None
            usage = {}
        if reserved is not None and (_tokens(usage.get("input_tokens")) is None
                                     or _tokens(usage.get("output_tokens")) is None):
            _log.warning("model call to %s/%s reported no usable token usage (%r): charged "
                         "its estimate %s", data.get("provider"), data.get("model"),
                         {k: usage.get(k) for k in ("input_tokens", "output_tokens")},
                         _round(reserved))
        else:
            reserved = None
        provider = str(data.get("provider") or "")
        asked = str(data.get("model") or "")
        answered = _opt_str(result.get("model")) or asked
        model = answered
        if answered != asked and self._price(provider, answered,
                                             self._clock.now()) is _UNPRICED:
            model = asked  # a dated snapshot name the price sources do not know
        return ({"provider": provider, "model": model, "input": usage.get("input_tokens"),
                 "output": usage.get("output_tokens"), "cached": usage.get("cached_tokens"),
                 "reasoning": usage.get("reasoning_tokens")},
                {"agent": self._caller_agent(data), "correlation_id": ctx.correlation_id,
                 "metadata": ctx.metadata, "turn": data.get("turn"), "estimated": reserved})

    def estimate(self, provider: str, model: str, params: Mapping[str, Any]) -> Decimal | None:
        """What a call of ``model`` with the request ``params`` is estimated to cost at
        most, in the tracker's currency (None when the model is unpriced): the prompt's
        tokens at the input price plus ``max_tokens`` (or ``default_max_tokens``) at the
        output price."""
        price = self._price(provider, model, self._clock.now())
        if price is _UNPRICED:
            return None
        prompt = estimate_prompt_tokens(params, self.tokenizer)
        cap = params.get("max_tokens")
        output = (cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0
                  else self.config.default_max_tokens)
        usd = (prompt * _rate(price.input, prompt) + output * _rate(price.output, prompt)
               ) / _MILLION
        return usd if self._rate == 1 else usd * self._rate

    def _before_model(self, ctx: HookContext) -> Cancel | None:
        if not self._blocking:
            return None
        # A context inherits its parent's metadata: the reservation named there is the
        # parent call's (this is a redirected or shadow call), not this one's to release.
        ctx.metadata.pop(RESERVATION_METADATA, None)
        data = ctx.data
        params = data.get("params")
        if not isinstance(params, dict):
            return None
        provider = str(data.get("provider") or "")
        model = str(data.get("model") or "")
        agent = self._caller_agent(data)
        user = ctx.metadata.get("user")
        if user is None:
            with self._lock:
                run = self._runs.get(ctx.correlation_id)
            user = run[0] if run is not None else None
        estimate = self.estimate(provider, model, params)
        now = self._clock.now()
        monotonic = self._clock.monotonic()
        with self._lock:
            self._estimated += 1
            self._expire(monotonic)
            scoped: list[int] = []
            for i, budget in enumerate(self._budgets):
                if budget.block_at is None or not _in_scope(budget.scope, agent, user):
                    continue
                state = self._state(i, budget, now)
                if state.blocked:
                    self._blocked += 1
                    return Cancel(
                        f"budget {budget.scope} ({budget.window}) exceeded: spent "
                        f"{state.spent} of {budget.limit} {self.config.currency}; the call "
                        f"to {provider}/{model} was not made")
                if estimate is None:
                    if self.config.block_unpriced:
                        self._blocked += 1
                        return Cancel(
                            f"budget {budget.scope} ({budget.window}) cannot be enforced "
                            f"on {provider}/{model}: nobody prices that model, and "
                            "block_unpriced is set; the call was not made (add its price "
                            "to CostConfig.prices)")
                    continue
                limit = self._block_threshold(i)
                reserved = self._reserved_sum[i]
                if state.spent + reserved + estimate > limit:
                    self._blocked += 1
                    held = f" + {reserved} reserved by calls in flight" if reserved else ""
                    return Cancel(
                        f"budget {budget.scope} ({budget.window}) would be exceeded: spent "
                        f"{state.spent}{held} + this call to {provider}/{model} (estimated "
                        f"{_round(estimate)}) > {limit} of {budget.limit} "
                        f"{self.config.currency}; the call was not made")
                scoped.append(i)
            if estimate is not None and scoped:
                self._next_reservation += 1
                rid = f"r{self._next_reservation}"
                self._reserved[rid] = (monotonic + self.config.reservation_ttl, estimate,
                                       tuple(scoped))
                for i in scoped:
                    self._reserved_sum[i] += estimate
                if len(self._reserved) > _MAX_RESERVATIONS:  # calls whose end was never seen
                    self._unreserve(next(iter(self._reserved)))
                # Released when the call is over, however it ends (the runtime's scope);
                # the task's end is the fallback for a caller that opened no scope.
                on_operation_end(lambda: self._release_id(rid))
                self._watch(rid)
                ctx.metadata[RESERVATION_METADATA] = rid
        return None

    def _watch(self, rid: str) -> None:
        """Tie reservation ``rid`` to the running asyncio task (under the lock): when the
        task ends (e.g. cancelled while the provider is answering, when no after or error
        point fires) whatever it still holds is released. Nothing outside a task."""
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running loop in this thread
            return
        if task is None:
            return
        held = self._task_reservations.get(task)
        if held is None:
            held = self._task_reservations[task] = set()
            task.add_done_callback(self._task_ended)
        held.add(rid)
        self._reservation_task[rid] = task

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        with self._lock:
            for rid in self._task_reservations.pop(task, ()):
                self._reservation_task.pop(rid, None)
                self._unreserve(rid)

    def _block_threshold(self, i: int) -> Decimal:
        """The spending at which budget ``i`` blocks (its ``block_at`` level's amount)."""
        for _level, _fraction, threshold, blocking in self._thresholds[i]:
            if blocking:
                return threshold
        return self._budgets[i].limit  # pragma: no cover - block_at is always a level

    def _unreserve(self, rid: str) -> Decimal | None:
        """Drop reservation ``rid`` (under the lock; nothing if it is gone); return the
        amount it held (None when it was gone)."""
        task = self._reservation_task.pop(rid, None)
        if task is not None:
            held = self._task_reservations.get(task)
            if held is not None:
                held.discard(rid)  # the task's entry (and callback) go when it ends
        entry = self._reserved.pop(rid, None)
        if entry is None:
            return None
        _expires, amount, budgets = entry
        for i in budgets:
            self._reserved_sum[i] -= amount
        if not self._reserved:  # no drift from rounding: back to exact zero
            self._reserved_sum = [Decimal(0)] * len(self._budgets)
        return amount

    def _expire(self, now: float) -> None:
        reserved = self._reserved
        while reserved:
            rid, (expires, _amount, _budgets) = next(iter(reserved.items()))
            if expires > now:
                break
            self._unreserve(rid)

    def _release(self, ctx: HookContext) -> Decimal | None:
        """Drop the reservation the call's ``BeforeModelCall`` made (once); return the
        estimate it held (None: none)."""
        rid = ctx.metadata.get(RESERVATION_METADATA)
        if rid is None:
            return None
        with self._lock:
            return self._unreserve(rid)

    def _release_id(self, rid: str) -> None:
        """Drop reservation ``rid`` (nothing if it is gone): at the call's after or error
        point, or when the call is over without reaching either."""
        with self._lock:
            self._unreserve(rid)

    def _before_agent(self, ctx: HookContext) -> Cancel | None:
        params = ctx.data.get("params")
        params = params if isinstance(params, dict) else {}
        user = ctx.metadata.get("user")
        if not user and self.config.user_from_params:
            # The run's input is the model's (or an end user's) choice: read when opted in.
            user = _opt_str(params.get("user"))
        user = user or None
        session = ctx.metadata.get("session") or _opt_str(params.get("session"))
        agent = _opt_str(ctx.data.get("agent"))
        with self._lock:
            if user is not None or session is not None:
                self._runs[ctx.correlation_id] = (user, session)
                self._runs.move_to_end(ctx.correlation_id)
                if len(self._runs) > self.config.max_tracked_runs:
                    self._runs.popitem(last=False)
            if not self._blocking or current_replay() is not None:
                # A replay's run spends nothing itself: the model calls it makes live are
                # checked at their own BeforeModelCall (with the user remembered above).
                return None
            now = self._clock.now()
            for i, budget in enumerate(self._budgets):
                if budget.block_at is None or not _in_scope(budget.scope, agent, user):
                    continue
                state = self._state(i, budget, now)
                if state.blocked:
                    self._blocked += 1
                    return Cancel(
                        f"budget {budget.scope} ({budget.window}) exceeded: spent "
                        f"{state.spent} of {budget.limit} {self.config.currency}")
        return None

    # -- recording -----------------------------------------------------------------------
    def record(
        self,
        token_usage: Mapping[str, Any],
        *,
        agent: str | None = None,
        correlation_id: str = "",
        metadata: Mapping[str, str] | None = None,
        turn: int | None = None,
    ) -> CostRecord:
        """Price one call's ``token_usage`` (``input``, ``output``, ``model``,
        ``provider``; optional ``cached`` and ``reasoning`` counts, already included in
        ``input`` and ``output``), aggregate it, check budgets and publish it. Returns the
        record. With a shared backend the budgets are charged there (this call waits for
        the round trip; the hook's own path is async)."""
        record, cost, now, alerts = self._record_local(
            token_usage, agent=agent, correlation_id=correlation_id, metadata=metadata,
            turn=turn)
        if self.shared is not None and cost is not None and self._budgets:
            alerts = self._charge_shared_sync(record, cost, now)
        self._publish(record, alerts, correlation_id)
        return record

    def _record_local(
        self, token_usage: Mapping[str, Any], *, agent: str | None, correlation_id: str,
        metadata: Mapping[str, str] | None, turn: int | None,
        estimated: Decimal | None = None,
    ) -> tuple[CostRecord, Decimal | None, float, list[BudgetAlert]]:
        """Price and aggregate a call here; charge the budgets here unless they are shared.
        Returns the record, its cost (None: unpriced), the time and the alerts.
        ``estimated``: the cost to charge (in the tracker's currency) for a call whose usage
        was unusable, instead of pricing its tokens."""
        provider = str(token_usage.get("provider") or "")
        model = str(token_usage.get("model") or "")
        input_tokens = _count(token_usage.get("input"))
        output_tokens = _count(token_usage.get("output"))
        now = self._clock.now()
        price = self._price(provider, model, now)
        cost: Decimal | None = None
        usd: Decimal | None = None
        if estimated is not None:
            price = _Price("estimate", "", price.input, price.output)
            cost = estimated
            usd = estimated if self._rate == 1 else estimated / self._rate
        elif price is not _UNPRICED:
            usd = (input_tokens * _rate(price.input, input_tokens)
                   + output_tokens * _rate(price.output, input_tokens)) / _MILLION
            cost = usd if self._rate == 1 else usd * self._rate
        meta = metadata or {}
        alerts: list[BudgetAlert] = []
        with self._lock:
            user = meta.get("user")
            session = meta.get("session")
            if (user is None or session is None) and correlation_id in self._runs:
                run_user, run_session = self._runs[correlation_id]
                user = user or run_user
                session = session or run_session
            record = CostRecord(
                timestamp=now, agent=_opt_str(agent), provider=provider, model=model,
                input_tokens=input_tokens, output_tokens=output_tokens,
                cost=None if cost is None else str(cost), currency=self.config.currency,
                unpriced=cost is None, source=None if cost is None else price.source,
                version=None if cost is None else price.version,
                correlation_id=correlation_id, user=user, session=session,
                turn=turn if isinstance(turn, int) else None,
                cached_tokens=_count(token_usage.get("cached")),
                reasoning_tokens=_count(token_usage.get("reasoning")),
            )
            self._aggregate(record, usd, now)
            if cost is not None and self._budgets and self.shared is None:
                self._charge(record, cost, now, alerts)
        return record, cost, now, alerts

    def _publish(self, record: CostRecord, alerts: list[BudgetAlert],
                 correlation_id: str) -> None:
        bus = self.bus
        if bus is not None:
            if self.config.publish_records:
                bus.publish("cost.recorded", msgspec.to_builtins(record),
                            {"correlation_id": correlation_id or None,
                             "source": "llmspell.builtin.cost"})
            for alert in alerts:
                bus.publish(f"cost.budget.{alert.level}", msgspec.to_builtins(alert),
                            {"correlation_id": correlation_id or None,
                             "source": "llmspell.builtin.cost"})
        if self.on_budget is not None:
            for alert in alerts:
                self.on_budget(alert)

    def _aggregate(self, record: CostRecord, cost: Decimal | None, now: float) -> None:
        """Add a record to the history and the totals; ``cost`` is in USD (converted on
        the way out, so every currency is exact)."""
        history = self._history
        history.append(record)
        if len(history) > self.config.history_size:
            del history[: len(history) - self.config.history_size]
        hour = int(now // 3600)
        if hour != self._hour:
            self._hour = hour
            horizon = hour - self.config.retention_hours
            for key in [k for k in self._agg if k[5] <= horizon]:
                del self._agg[key]
        key = (record.provider, record.model, record.agent, record.user, record.session, hour)
        if key not in self._agg and len(self._agg) >= _MAX_GROUPS:
            # Users, sessions and model names are the caller's: past the bound, new groups
            # are counted together, so memory stays bounded (the totals stay exact).
            key = (_OTHER, _OTHER, _OTHER, _OTHER, _OTHER, hour)
        for totals in (self._agg.get(key) or self._agg.setdefault(key, _Totals()),
                       self._totals):
            totals.calls += 1
            totals.input_tokens += record.input_tokens
            totals.output_tokens += record.output_tokens
            if cost is None:
                totals.unpriced_calls += 1
            else:
                totals.cost += cost
        if cost is None:
            name = f"{record.provider}/{record.model}"
            _bump(self._unpriced_by_model, name, 1)
            return
        _bump(self._by_source, record.source or "", 1)
        by = self._by
        _bump(by["provider"], record.provider, cost)
        _bump(by["model"], record.model, cost)
        if record.agent is not None:
            _bump(by["agent"], record.agent, cost)
        if record.user is not None:
            _bump(by["user"], record.user, cost)
        if record.session is not None:
            _bump(by["session"], record.session, cost)

    # -- pricing -------------------------------------------------------------------------
    def _price(self, provider: str, model: str, now: float) -> _Price:
        day = int(now // 86400)
        key = (provider, model, day)
        price = self._prices.get(key)
        if price is None:
            price = self._resolve(provider, model, now)
            if len(self._prices) >= 4096:
                self._prices.clear()
            self._prices[key] = price
        return price

    def _resolve(self, provider: str, model: str, now: float) -> _Price:
        c = self.config
        override = c.prices.get(f"{provider}/{model}") or c.prices.get(model)
        if override is not None:
            return _Price("override", "config", (override.input, ()), (override.output, ()))
        if c.use_genai_prices and model:
            found = _from_genai_prices(provider, model, now)
            if found is not None:
                return found
        if c.use_fallback:
            bundled = FALLBACK_PRICES.get(f"{provider}/{model}")
            if bundled is not None:
                return _Price("bundled", FALLBACK_AS_OF, bundled[0], bundled[1])
        return _UNPRICED

    def price_of(self, provider: str, model: str) -> tuple[str, str, Decimal, Decimal] | None:
        """``(source, version, input, output)`` (USD per 1M tokens, base tier) for a model
        now, or None when it is unpriced."""
        price = self._price(provider, model, self._clock.now())
        if price is _UNPRICED:
            return None
        return price.source, price.version, price.input[0], price.output[0]

    # -- budgets -------------------------------------------------------------------------
    def _window_key(self, budget: Budget, now: float) -> int:
        if budget.window == "hour":
            return int(now // 3600)
        if budget.window == "day":
            return int(now // 86400)
        return 0

    def _state(self, i: int, budget: Budget, now: float) -> _BudgetState:
        key = self._window_key(budget, now)
        state = self._budget_states[i]
        # Only forward: a wall clock set back (NTP, an admin) does not reopen an earlier
        # window from zero; spending keeps counting in this one until the clock passes it.
        if state is None or key > state.window_key:
            state = self._budget_states[i] = _BudgetState(key)
        return state

    def _charge(self, record: CostRecord, cost: Decimal, now: float,
                alerts: list[BudgetAlert]) -> None:
        for i, budget in enumerate(self._budgets):
            if not _in_scope(budget.scope, record.agent, record.user):
                continue
            state = self._state(i, budget, now)
            state.spent += cost
            for level, fraction, threshold, blocking in self._thresholds[i]:
                if state.spent < threshold or level in state.crossed:
                    continue
                state.crossed.append(level)
                state.blocked = state.blocked or blocking
                self._alerts += 1
                alerts.append(BudgetAlert(
                    scope=budget.scope, window=budget.window,
                    window_start=_window_start(budget.window, state.window_key),
                    level=level, fraction=fraction, limit=str(budget.limit),
                    spent=str(state.spent), currency=self.config.currency,
                    blocking=blocking, at=now,
                ))

    # -- reading -------------------------------------------------------------------------
    def history(self, limit: int | None = None) -> list[CostRecord]:
        """The most recent records (all kept, or the last ``limit``), oldest first."""
        with self._lock:
            records = list(self._history)
        return records if limit is None else records[-limit:]

    def report(
        self,
        group_by: Sequence[str] = ("provider", "model"),
        since: float | datetime | None = None,
        *,
        currency: str | None = None,
    ) -> list[CostRow]:
        """Totals grouped by any of ``provider``, ``model``, ``agent``, ``user``,
        ``session``, ``hour`` and ``day``, most expensive first. ``since`` (a timestamp or
        datetime) is rounded down to its hour; data older than ``retention_hours`` is gone.
        ``currency`` converts (default: the tracker's)."""
        if isinstance(group_by, str):
            group_by = (group_by,)
        for dim in group_by:
            if dim not in _DIMENSIONS:
                raise InvalidValueError(f"cannot group by {dim!r}",
                                        hint="group by: " + ", ".join(_DIMENSIONS))
        target = self.config.currency
        if currency is not None and currency.upper() != target:
            target = currency.upper()
            if target not in self.config.rates:
                raise ConfigurationError(f"no exchange rate for {target!r}",
                                         hint="add it to CostConfig.rates (units per 1 USD)")
        factor = self.config.rates[target]
        start_hour = -1
        if since is not None:
            ts = since.timestamp() if isinstance(since, datetime) else float(since)
            start_hour = int(ts // 3600)
        groups: dict[tuple[str | None, ...], _Totals] = {}
        with self._lock:
            for (provider, model, agent, user, session, hour), t in self._agg.items():
                if hour < start_hour:
                    continue
                values = {"provider": provider, "model": model, "agent": agent, "user": user,
                          "session": session}
                key = tuple(
                    _hour_label(hour) if d == "hour" else _day_label(hour // 24)
                    if d == "day" else values[d] for d in group_by)
                g = groups.get(key) or groups.setdefault(key, _Totals())
                g.calls += t.calls
                g.unpriced_calls += t.unpriced_calls
                g.input_tokens += t.input_tokens
                g.output_tokens += t.output_tokens
                g.cost += t.cost
        rows = [CostRow(group=dict(zip(group_by, key, strict=True)), calls=g.calls,
                        unpriced_calls=g.unpriced_calls, input_tokens=g.input_tokens,
                        output_tokens=g.output_tokens,
                        cost=None if g.calls == g.unpriced_calls else _convert(g.cost, factor),
                        currency=target)
                for key, g in groups.items()]
        rows.sort(key=lambda r: (r.cost is not None, r.cost or 0), reverse=True)
        return rows

    def budget_status(self) -> tuple[BudgetStatus, ...]:
        """Where every budget stands in its current window (with a shared backend, read
        from it: a round trip per budget; ``SharedCounterError`` when it is away)."""
        if self.shared is not None and self._budgets:
            self._refresh_sync()
        return self._budget_status()

    def _budget_status(self) -> tuple[BudgetStatus, ...]:
        now = self._clock.now()
        with self._lock:
            out = []
            for i, budget in enumerate(self._budgets):
                state = self._state(i, budget, now)
                out.append(BudgetStatus(scope=budget.scope, window=budget.window,
                                        limit=budget.limit, spent=state.spent,
                                        levels_crossed=tuple(state.crossed),
                                        blocking=state.blocked))
        return tuple(out)

    def stats(self) -> CostStats:
        """Totals since creation (a snapshot; shared budgets as last read or charged
        here, without a round trip: :meth:`budget_status` reads them)."""
        budgets = self._budget_status()
        with self._lock:
            t = self._totals
            rate = self._rate
            by = {k: {name: _convert(v, rate) for name, v in table.items()}
                  for k, table in self._by.items()}
            return CostStats(
                currency=self.config.currency, calls=t.calls,
                priced_calls=t.calls - t.unpriced_calls, unpriced_calls=t.unpriced_calls,
                input_tokens=t.input_tokens, output_tokens=t.output_tokens,
                total_cost=_convert(t.cost, rate),
                by_provider=by["provider"], by_model=by["model"], by_agent=by["agent"],
                by_user=by["user"], by_session=by["session"],
                unpriced_by_model=dict(self._unpriced_by_model),
                by_source=dict(self._by_source), alerts=self._alerts,
                blocked_calls=self._blocked, budgets=budgets,
                price_cache_size=len(self._prices), estimated_calls=self._estimated,
                reserved=sum((r[1] for r in self._reserved.values()), Decimal(0)),
                replayed_calls=self._replayed,
            )

    def reset(self) -> None:
        """Forget records, totals and budget spending (the price cache is kept)."""
        with self._lock:
            self._history.clear()
            self._runs.clear()
            self._agg.clear()
            self._totals = _Totals()
            for by in self._by.values():
                by.clear()
            self._unpriced_by_model.clear()
            self._by_source.clear()
            self._budget_states = [None] * len(self._budgets)
            self._reserved.clear()
            self._reserved_sum = [Decimal(0)] * len(self._budgets)
            self._alerts = self._blocked = self._replayed = 0


def _from_genai_prices(provider: str, model: str, now: float) -> _Price | None:
    """The model's price from genai-prices' bundled data, or None (not installed, unknown
    provider or model). Never starts genai-prices' auto-update."""
    module = _genai_prices()
    if module is None:
        return None
    try:
        calc = module.calc_price(
            module.Usage(input_tokens=1, output_tokens=1), model,
            provider_id=provider or None,
            genai_request_timestamp=datetime.fromtimestamp(now, UTC),
        )
    except Exception:  # LookupError for an unknown provider/model; anything else: skip
        return None
    model_price = calc.model_price
    input_rate = _split(getattr(model_price, "input_mtok", None))
    output_rate = _split(getattr(model_price, "output_mtok", None))
    if input_rate is None and output_rate is None:
        return None
    version = str(getattr(module, "__version__", "unknown"))
    if getattr(calc, "auto_update_timestamp", None) is not None:
        version += f"+auto-update@{calc.auto_update_timestamp.isoformat()}"
    zero: _Rate = (Decimal(0), ())
    return _Price("genai-prices", version, input_rate or zero, output_rate or zero)


_LIST_PRICES: dict[tuple[str, str, int], _Price | None] = {}


def list_price_usd(provider: str, model: str, input_tokens: int, output_tokens: int,
                   *, now: float | None = None) -> float | None:
    """What a call costs at list price, in USD: genai-prices' data when installed, else the
    bundled table (:data:`FALLBACK_PRICES`); None for a model neither knows. No budgets,
    no overrides (a :class:`CostTrackingHook` applies those): this is what the runtime puts
    in a model call's ``result.cost_usd``. Prices are looked up once per model and day."""
    when = time.time() if now is None else now
    key = (provider, model, int(when // 86400))
    try:
        price = _LIST_PRICES[key]
    except KeyError:
        price = _from_genai_prices(provider, model, when) if model else None
        if price is None:
            bundled = FALLBACK_PRICES.get(f"{provider}/{model}")
            if bundled is not None:
                price = _Price("bundled", FALLBACK_AS_OF, bundled[0], bundled[1])
        if len(_LIST_PRICES) >= 4096:
            _LIST_PRICES.clear()
        _LIST_PRICES[key] = price
    if price is None:
        return None
    cost = (Decimal(input_tokens) * _rate(price.input, input_tokens)
            + Decimal(output_tokens) * _rate(price.output, input_tokens)) / 1_000_000
    return float(cost)


def _convert(usd: Decimal, rate: Decimal) -> Decimal:
    return usd if rate == 1 else usd * rate


def _stored_spending(value: Any, budget: Budget) -> Decimal:
    """A shared budget's stored spending (the decimal string this hook writes; None or empty
    when never charged) as a Decimal. Anything else was written by something other than
    llmspell: a :class:`SharedCounterError`, which the hook meets with its error policy,
    rather than a spending it would have to guess."""
    if not value:
        return Decimal(0)
    if isinstance(value, str | int) and not isinstance(value, bool):
        try:
            amount = Decimal(value)
        except InvalidOperation:
            pass
        else:
            if amount.is_finite() and amount >= 0:
                return amount
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    raise SharedCounterError(
        f"the shared spending of budget {budget.scope!r} (window {budget.window}) holds "
        f"{shown}, not an amount of money",
        hint="it was written by something other than llmspell; delete that key in the shared "
             "backend and the budget's window starts again from 0")


def _window_start(window: str, key: int) -> str:
    if window == "hour":
        return _hour_label(key)
    if window == "day":
        return _day_label(key)
    return "all"


def _in_scope(scope: str, agent: str | None, user: str | None) -> bool:
    if scope == "global":
        return True
    kind, _, name = scope.partition(":")
    return (agent == name) if kind == "agent" else (user == name)


def _round(amount: Decimal) -> str:
    """An estimate for a message: 6 significant decimals are plenty."""
    return f"{amount:.8f}".rstrip("0").rstrip(".")


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _tokens(value: object) -> int | None:
    """A token count a framework reported: a whole number >= 0 (an int, an integral float,
    a string of digits); None when it is missing or unusable (negative, NaN, text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value >= 0 and value.is_integer() \
            else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() \
            and len(value) <= 30:
        return int(value.strip())
    return None


def _count(value: object) -> int:
    return _tokens(value) or 0


def _bump(table: dict[str, Any], key: str, amount: Any) -> None:
    if key not in table and len(table) >= _MAX_KEYS:
        key = _OTHER
    table[key] = table.get(key, 0) + amount

