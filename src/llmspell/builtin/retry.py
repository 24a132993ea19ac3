"""Retry failed tool, agent and model calls with backoff: the ``retry`` built-in hook.

:class:`RetryHook` watches the error points (``ToolError``, ``AgentError``,
``ModelCallError``). When the error
is worth retrying it returns :class:`~llmspell.hooks.Retry` with a computed delay, and the
runtime runs the operation again after that delay (docs/runtime.md, "What each result
does"); otherwise it returns ``None`` and the error is raised as usual.

Deciding, in this order:

1. an exception type in ``never_retry_on`` is never retried;
2. an HTTP status (a ``status`` field in the data, or ``HTTP 503``/``status 429``/
   ``Error code: 429`` in the message): one in ``retry_statuses`` is retried, any other
   4xx is not;
3. an error the runtime marks ``retryable`` (a provider's ``ProviderError`` at
   ``ModelCallError``) is retried;
4. an exception type in ``retry_on`` is retried;
5. a message matching one of ``retry_on_messages`` (regular expressions) is retried;
6. anything else follows ``retry_unknown`` (default: not retried).

A retryable error of a tool call that declares side effects (the ``side_effects`` the
runtime puts in the ``ToolError`` data: file writes, process exec, e-mail, webhooks,
database writes, HTTP methods other than GET/HEAD) is still not retried unless
``retry_side_effects`` is set: the call may have failed after its effect took place. The
same holds for an agent run (running it again runs its tools again) whose ``AgentError``
data names ``side_effects`` (the runtime names those of every tool call the failed attempt
ran, successful ones included: an e-mail that went out before the next model call failed),
or one of whose tool calls failed here with side effects; and for a workflow step retried
at ``WorkflowError`` (when the hook is told to watch it), whose data names them the same way.

At ``ModelCallError`` the provider's ``retry_after`` (its ``Retry-After`` header) is
honoured: the runtime waits at least that long whatever delay the hook returns (the hook's
own delay still follows the backoff), and a wait that would go past ``max_total_time``, or
past the longest the runtime waits (``MAX_RETRY_DELAY``), gives up instead. A model call
the hook gave up on (or judged not retryable) is not retried again as the agent run around
it: the ``AgentError`` of the same run is left alone, so attempts do not multiply (3 model
attempts x 3 agent attempts).

The runtime wraps what a tool raises in ``ToolExecutionError`` whose message reads
``tool 'x' failed: ConnectionError: ...``; the wrapped type (``ConnectionError``) is the
one checked.

Then the limits: ``max_attempts`` (attempts in all, the first included), ``max_total_time``
(seconds since the operation's first failure; the last delay is shortened to fit) and the
circuit breakers: a retry is never scheduled into an open breaker. ``retry_budget`` bounds
the retries per component over a window, across all the operations failing at once.

Why not tenacity: tenacity wraps a function and owns the loop; here the runtime owns the
loop and the hook only answers "again, after how long?". Computing that answer by hand
takes under a microsecond; a tenacity ``Retrying`` round costs 28-51 µs per call. The
strategies are a few lines each (below), and jitter takes an injectable
:class:`random.Random` so tests are deterministic.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import msgspec

from llmspell.builtin.base import MODEL_ERROR, OPERATION_ERROR, BuiltinHook
from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import ConfigurationError, InvalidValueError
from llmspell.hooks.breaker import BreakerState, CircuitBreaker
from llmspell.hooks.context import HookContext
from llmspell.hooks.executor import HookExecutor
from llmspell.hooks.result import MAX_RETRY_ATTEMPTS, MAX_RETRY_DELAY, Retry

__all__ = [
    "DEFAULT_NEVER_RETRY_ON",
    "DEFAULT_RETRY_ON",
    "DEFAULT_RETRY_ON_MESSAGES",
    "DEFAULT_RETRY_STATUSES",
    "RETRY_PRIORITY",
    "ComponentRetryStats",
    "RetryConfig",
    "RetryHook",
    "RetryStats",
]

RETRY_PRIORITY = 0
"""Default priority of :class:`RetryHook` (``normal``): recovery hooks that ``Replace`` or
``Redirect`` with a higher priority (lower number) decide first."""

Strategy = Literal["fixed", "linear", "exponential", "fibonacci"]
Jitter = Literal["none", "full", "equal", "decorrelated"]
BreakerSource = (
    HookExecutor | Mapping[str, CircuitBreaker] | Iterable[CircuitBreaker]
)

_STRATEGIES = ("fixed", "linear", "exponential", "fibonacci")
_JITTERS = ("none", "full", "equal", "decorrelated")

DEFAULT_RETRY_ON: tuple[str, ...] = (
    "ConnectionError", "ConnectionResetError", "ConnectionRefusedError",
    "ConnectionAbortedError", "BrokenPipeError", "TimeoutError", "ToolTimeoutError",
    "ConnectError", "ConnectTimeout", "ReadError", "ReadTimeout", "WriteTimeout",
    "PoolTimeout", "RemoteProtocolError", "APIConnectionError", "APITimeoutError",
    "RateLimitError", "InternalServerError", "ServiceUnavailableError", "OverloadedError",
)
"""Exception type names retried by default: network failures, timeouts, rate limits."""

DEFAULT_NEVER_RETRY_ON: tuple[str, ...] = (
    "ValueError", "TypeError", "KeyError", "IndexError", "AttributeError",
    "NotImplementedError", "PermissionError", "InvalidValueError", "ToolValidationError",
    "ToolNotFoundError", "SandboxViolationError", "OperationCancelledError",
    "AgentStateError", "AuthenticationError", "PermissionDeniedError", "BadRequestError",
    "NotFoundError", "ModelCallCancelledError", "ProviderResponseTooLargeError",
    "CircuitOpenError",
)
"""Exception type names never retried by default: bugs and refusals a retry cannot fix.
``CircuitOpenError`` (an open breaker denied) is among them: the breaker stays open for its
``open_duration``, so a retry within it is denied again and only spends attempts."""

DEFAULT_RETRY_ON_MESSAGES: tuple[str, ...] = (
    r"timed? ?out", r"temporar(?:il)?y unavailable", r"connection (?:reset|refused|aborted)",
    r"could not reach", r"rate.?limit", r"too many requests", r"overloaded",
    r"try again",
)
"""Message patterns (case-insensitive regular expressions) retried by default."""

DEFAULT_RETRY_STATUSES: tuple[int, ...] = (408, 429, 500, 502, 503, 504, 529)
"""HTTP statuses retried by default: timeout, rate limit and the transient 5xx ones."""

_WRAPPERS = frozenset({"ToolExecutionError", "AgentError", "ToolError"})
_CAUSE = re.compile(r"\bfailed: ([A-Za-z_][A-Za-z0-9_.]*): ")
_STATUS = re.compile(
    r"\b(?:http(?:/\d(?:\.\d)?)?|status(?:[ _]code)?|error[ _]code)\b\D{0,3}?\b([1-5]\d\d)\b",
    re.IGNORECASE,
)
_NOT: object = object()
_FIB: tuple[int, ...] = (1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987,
                         1597, 2584, 4181, 6765, 10946, 17711, 28657, 46368, 75025)


class RetryConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How :class:`RetryHook` decides and waits. Times are seconds.

    ``strategy``: ``fixed`` (``base_delay``), ``linear`` (``base_delay * n``),
    ``exponential`` (``base_delay * multiplier ** (n - 1)``) or ``fibonacci``
    (``base_delay * fib(n)``), for the n-th retry, capped at ``max_delay``.
    ``jitter``: ``none``, ``full`` (uniform in [0, d]), ``equal`` (d/2 + uniform in
    [0, d/2]) or ``decorrelated`` (uniform in [base_delay, 3 * previous delay], its own
    progression). ``max_attempts`` counts the first attempt. ``max_total_time`` (None: no
    limit) is measured from the operation's first failure. ``max_tracked`` bounds the
    operations remembered at once (the oldest is forgotten first).
    ``retry_side_effects``: whether a failed tool call that declares side effects (its
    ``side_effects`` for the call's parameters: a file write, an e-mail, a webhook, an HTTP
    POST...) is retried. Off by default: the failure may have come after the effect (a
    timeout after the mail went out), and a retry would repeat it. It also decides whether
    an agent run (or a workflow step) is run again after a tool call of it that declares
    side effects.
    ``retry_budget`` (None: no budget): at most that many retries per component (a tool,
    an agent, a model) in any ``retry_budget_window`` seconds, over all the operations
    failing at once; past it a retryable error is given up (``budget_spent`` counts
    them), so a provider that is down does not get every caller's ``max_attempts``.
    """

    strategy: Strategy = "exponential"
    base_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: Jitter = "full"
    max_attempts: int = 3
    max_total_time: float | None = 120.0
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    never_retry_on: tuple[str, ...] = DEFAULT_NEVER_RETRY_ON
    retry_on_messages: tuple[str, ...] = DEFAULT_RETRY_ON_MESSAGES
    retry_statuses: tuple[int, ...] = DEFAULT_RETRY_STATUSES
    retry_unknown: bool = False
    retry_side_effects: bool = False
    max_tracked: int = 10_000
    retry_budget: int | None = None
    retry_budget_window: float = 60.0

    def __post_init__(self) -> None:
        for field in ("retry_on", "never_retry_on", "retry_on_messages", "retry_statuses"):
            value = getattr(self, field)
            if isinstance(value, str | bytes) or not isinstance(value, Iterable):
                # A bare string would be taken one character at a time: retry_on_messages=
                # "rate limit" would retry every message holding an "a".
                raise InvalidValueError(
                    f"RetryConfig.{field} must be a collection, not {value!r}",
                    hint=f"write {field}=({value!r},)")
            msgspec.structs.force_setattr(self, field, tuple(value))
        for field in ("retry_on", "never_retry_on", "retry_on_messages"):
            bad = [v for v in getattr(self, field) if not isinstance(v, str) or not v]
            if bad:
                example = ("regular expressions, e.g. r'rate.?limit'"
                           if field == "retry_on_messages"
                           else "exception type names, e.g. 'ConnectionError'")
                raise InvalidValueError(
                    f"RetryConfig.{field} must hold non-empty strings, got {bad!r}",
                    hint=example)
        for field in ("base_delay", "max_delay", "multiplier", "max_total_time",
                      "retry_budget_window"):
            value = getattr(self, field)
            if field == "max_total_time" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise InvalidValueError(
                    f"RetryConfig.{field} must be a finite number of seconds, got {value!r}"
                    if field != "multiplier" else
                    f"RetryConfig.multiplier must be a finite number, got {value!r}",
                    hint="e.g. base_delay=0.5, max_delay=30.0, multiplier=2.0")
        for field in ("retry_unknown", "retry_side_effects"):
            if not isinstance(getattr(self, field), bool):
                raise InvalidValueError(
                    f"RetryConfig.{field} must be True or False, got {getattr(self, field)!r}")
        for field in ("max_attempts", "max_tracked"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidValueError(f"RetryConfig.{field} must be an int, got {value!r}",
                                        hint=f"e.g. {field}=3")
        bad_statuses = [v for v in self.retry_statuses
                        if isinstance(v, bool) or not isinstance(v, int)]
        if bad_statuses:
            raise InvalidValueError(
                f"RetryConfig.retry_statuses must hold ints, got {bad_statuses!r}",
                hint="e.g. retry_statuses=(429, 503)")
        if self.strategy not in _STRATEGIES:
            raise InvalidValueError(f"RetryConfig.strategy {self.strategy!r} is unknown",
                                    hint="use one of: " + ", ".join(_STRATEGIES))
        if self.jitter not in _JITTERS:
            raise InvalidValueError(f"RetryConfig.jitter {self.jitter!r} is unknown",
                                    hint="use one of: " + ", ".join(_JITTERS))
        if not self.base_delay >= 0:
            raise InvalidValueError("RetryConfig.base_delay must be >= 0 seconds",
                                    hint="e.g. base_delay=0.5")
        if not self.max_delay >= self.base_delay:
            raise InvalidValueError("RetryConfig.max_delay must be >= base_delay",
                                    hint=f"raise max_delay to at least {self.base_delay:g}")
        if not self.max_delay <= MAX_RETRY_DELAY:
            raise InvalidValueError(f"RetryConfig.max_delay must be <= {MAX_RETRY_DELAY:g} "
                                    "seconds (the longest delay a Retry result may ask for)",
                                    hint=f"e.g. max_delay={MAX_RETRY_DELAY:g}")
        if self.max_attempts > MAX_RETRY_ATTEMPTS:
            raise InvalidValueError(f"RetryConfig.max_attempts must be <= {MAX_RETRY_ATTEMPTS}"
                                    " (the most a Retry result may ask for)",
                                    hint=f"e.g. max_attempts={MAX_RETRY_ATTEMPTS}")
        if not self.multiplier >= 1:
            raise InvalidValueError("RetryConfig.multiplier must be >= 1", hint="e.g. 2.0")
        if self.max_attempts < 1:
            raise InvalidValueError("RetryConfig.max_attempts must be >= 1 (the first "
                                    "attempt counts)", hint="e.g. max_attempts=3")
        if self.max_total_time is not None and not self.max_total_time > 0:
            raise InvalidValueError("RetryConfig.max_total_time must be > 0 seconds or None",
                                    hint="None means no time limit")
        if self.max_tracked < 1:
            raise InvalidValueError("RetryConfig.max_tracked must be >= 1")
        budget = self.retry_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                                   or budget < 0):
            raise InvalidValueError(
                f"RetryConfig.retry_budget must be an int >= 0 or None, got {budget!r}",
                hint="e.g. retry_budget=20 retries per component per retry_budget_window")
        if not self.retry_budget_window > 0:
            raise InvalidValueError("RetryConfig.retry_budget_window must be > 0 seconds",
                                    hint="e.g. retry_budget_window=60.0")
        for status in self.retry_statuses:
            if not 100 <= status <= 599:
                raise InvalidValueError(f"RetryConfig.retry_statuses has {status!r}, not an "
                                        "HTTP status", hint="e.g. (429, 503)")
        for pattern in self.retry_on_messages:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigurationError(
                    f"RetryConfig.retry_on_messages has a bad pattern {pattern!r}: {exc}",
                    hint="patterns are Python regular expressions, matched ignoring case",
                ) from None


class ComponentRetryStats(msgspec.Struct, kw_only=True):
    """Per component (``tool:<name>``, ``agent:<name>``): what the hook decided."""

    retries_scheduled: int = 0
    gave_up: int = 0
    non_retryable: int = 0
    breaker_open: int = 0


class RetryStats(msgspec.Struct, frozen=True, kw_only=True):
    """What :class:`RetryHook` did: retries scheduled, operations given up (limits reached),
    errors judged not retryable, retries refused by an open breaker, operations tracked now,
    the same counts per component, and the retries refused because the component's
    ``retry_budget`` was spent (counted in ``gave_up`` too)."""

    retries_scheduled: int
    gave_up: int
    non_retryable: int
    breaker_open: int
    tracked_operations: int
    by_component: dict[str, ComponentRetryStats]
    budget_spent: int = 0


class _Operation:
    __slots__ = ("failures", "first_failure", "previous_delay")

    def __init__(self, first_failure: float, previous_delay: float) -> None:
        self.first_failure = first_failure
        self.previous_delay = previous_delay
        self.failures = 0


class RetryHook(BuiltinHook):
    """Returns ``Retry(delay, max_attempts)`` for retryable errors (see the module docstring).

    ``breaker_state``: a callable giving a component's breaker state (``"open"``,
    ``"closed"``, ``"half_open"``) or None. ``breakers``: circuit breakers to consult, as a
    mapping from component name (or ``"tool:<name>"``) to :class:`CircuitBreaker`, a list of
    breakers (matched by their ``hook`` name), or a :class:`HookExecutor` (its breakers'
    snapshots, matched by hook name). Breakers are read, never fed: whoever owns them
    records outcomes. ``rng`` makes jitter deterministic; ``clock`` drives
    ``max_total_time``.
    """

    default_points = (*(str(p) for p in OPERATION_ERROR), str(MODEL_ERROR))

    def __init__(
        self,
        config: RetryConfig | None = None,
        *,
        points: Iterable[str] | None = None,
        priority: int = RETRY_PRIORITY,
        breaker_state: Callable[[str], str | None] | None = None,
        breakers: BreakerSource | None = None,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if config is not None and not isinstance(config, RetryConfig):
            raise ConfigurationError(
                f"RetryHook needs a RetryConfig, not {type(config).__name__}",
                hint="e.g. RetryHook(RetryConfig(max_attempts=5))",
            )
        super().__init__(name="retry", priority=priority, points=points,
                         description="retries failed tool, agent and model calls with "
                                     "backoff")
        self.config = config or RetryConfig()
        c = self.config
        self._retry_on = frozenset(c.retry_on)
        self._never = frozenset(c.never_retry_on)
        self._statuses = frozenset(c.retry_statuses)
        self._message = (re.compile("|".join(f"(?:{p})" for p in c.retry_on_messages),
                                    re.IGNORECASE) if c.retry_on_messages else None)
        self._breaker_state = breaker_state
        self._executor: HookExecutor | None = None
        self._breaker_map: dict[str, CircuitBreaker] = {}
        if isinstance(breakers, HookExecutor):
            self._executor = breakers
        elif isinstance(breakers, Mapping):
            self._breaker_map = dict(breakers)
        elif breakers is not None:
            for breaker in breakers:
                if not isinstance(breaker, CircuitBreaker):
                    raise ConfigurationError(
                        f"breakers must hold CircuitBreaker objects, not "
                        f"{type(breaker).__name__}",
                        hint="pass a list of CircuitBreaker, a dict of them, or an executor",
                    )
                self._breaker_map[breaker.hook] = breaker
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        self._ops: OrderedDict[tuple[str, str], _Operation] = OrderedDict()
        self._by_component: dict[str, ComponentRetryStats] = {}
        self._scheduled = 0
        self._gave_up = 0
        self._non_retryable = 0
        self._breaker_open = 0
        self._budget_spent = 0
        # Runs (correlation ids) whose model call this hook already decided on for good.
        self._model_settled: OrderedDict[str, None] = OrderedDict()
        # Runs (correlation ids) with a failed tool call that declares side effects.
        self._effects: OrderedDict[str, None] = OrderedDict()
        # Per component: when the retries of the last retry_budget_window were scheduled.
        self._budget: dict[str, deque[float]] = {}

    # -- the decision --------------------------------------------------------------------
    def execute(self, ctx: HookContext) -> Retry | None:
        """Return ``Retry(delay, max_attempts)`` for a retryable error, else None."""
        data = ctx.data
        component = ctx.component
        ctype = component.type.value
        label = f"{ctype}:{component.name}"
        model = ctx.point == MODEL_ERROR
        if not model and ctype == "agent" and self._model_settled:
            with self._lock:
                settled = self._model_settled.pop(ctx.correlation_id, _NOT) is not _NOT
            if settled:  # its model call was retried (or judged) at ModelCallError
                self._count(label, "non_retryable")
                return None
        status = data.get("status")
        retryable = data.get("retryable") if model else None
        if not self.is_retryable(str(data.get("error_type") or ""), str(data.get("error") or ""),
                                 status if isinstance(status, int) else None,
                                 retryable=retryable if isinstance(retryable, bool) else None):
            self._count(label, "non_retryable")
            if model:
                self._settle(ctx.correlation_id)
            return None
        if ctype == "tool" and data.get("side_effects"):
            self._mark_effects(ctx.correlation_id)
            if not self.config.retry_side_effects:
                self._count(label, "non_retryable")  # a retry could repeat what it changed
                return None
        if ctype in ("agent", "workflow") and not self.config.retry_side_effects:
            # Running the agent (or the workflow step) again runs its tools again: not when
            # the failed attempt made a tool call that declares side effects, successful or
            # not (its data names them, or a ToolError of the run said so here), whatever
            # the error.
            with self._lock:
                effects = self._effects.pop(ctx.correlation_id, _NOT) is not _NOT
            if effects or data.get("side_effects"):
                self._count(label, "non_retryable")
                return None
        if self._breaker_is_open(component.name, label):
            self._count(label, "breaker_open")
            return None
        attempt = data.get("attempt")
        key = (ctx.correlation_id, label)
        now = self._clock.monotonic()
        c = self.config
        with self._lock:
            op = self._ops.get(key)
            if op is None or attempt == 1:
                op = self._ops[key] = _Operation(now, c.base_delay)
                if len(self._ops) > c.max_tracked:
                    self._ops.popitem(last=False)
            else:
                self._ops.move_to_end(key)
            op.failures += 1
            # The runtime's attempt number is authoritative; without one, count failures.
            retry_number = (attempt if isinstance(attempt, int) and attempt >= 1
                            else op.failures)
            asked = data.get("retry_after") if model else None
            wait_at_least = (float(asked) if isinstance(asked, int | float)
                             and not isinstance(asked, bool) and asked > 0 else 0.0)
            # A Retry-After longer than the runtime will wait (MAX_RETRY_DELAY) would be cut
            # short: the retry would come before the provider said it may.
            give_up = retry_number >= c.max_attempts or wait_at_least > MAX_RETRY_DELAY
            delay = 0.0
            if not give_up:
                delay = self.delay_for(retry_number, op.previous_delay)
                if c.max_total_time is not None:
                    remaining = c.max_total_time - (now - op.first_failure)
                    # The runtime waits at least the provider's Retry-After.
                    give_up = remaining <= 0 or wait_at_least > remaining
                    delay = min(delay, max(remaining, 0.0))
            if not give_up and c.retry_budget is not None:
                give_up = not self._spend_budget_locked(label, now)
            if give_up:
                self._ops.pop(key, None)
                self._count_locked(label, "gave_up")
                if model:
                    self._settle_locked(ctx.correlation_id)
                return None
            op.previous_delay = max(delay, wait_at_least)
            self._count_locked(label, "retries_scheduled")
        return Retry(delay=delay, max_attempts=c.max_attempts)

    def _mark_effects(self, correlation_id: str) -> None:
        with self._lock:
            effects = self._effects
            effects[correlation_id] = None
            effects.move_to_end(correlation_id)
            if len(effects) > self.config.max_tracked:
                effects.popitem(last=False)

    def _settle(self, correlation_id: str) -> None:
        with self._lock:
            self._settle_locked(correlation_id)

    def _spend_budget_locked(self, label: str, now: float) -> bool:
        """Take one retry from ``label``'s budget (at most ``retry_budget`` retries in any
        ``retry_budget_window`` seconds); False when it is spent."""
        c = self.config
        assert c.retry_budget is not None
        times = self._budget.get(label)
        if times is None:
            if len(self._budget) >= 1024:  # components are the caller's: bounded
                self._budget.pop(next(iter(self._budget)))
            times = self._budget[label] = deque()
        horizon = now - c.retry_budget_window
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) >= c.retry_budget:
            self._budget_spent += 1
            return False
        times.append(now)
        return True

    def _settle_locked(self, correlation_id: str) -> None:
        settled = self._model_settled
        settled[correlation_id] = None
        settled.move_to_end(correlation_id)
        if len(settled) > self.config.max_tracked:
            settled.popitem(last=False)

    def is_retryable(self, error_type: str, message: str = "", status: int | None = None,
                     *, retryable: bool | None = None) -> bool:
        """Whether an error of ``error_type`` with ``message`` (and HTTP ``status``, and the
        runtime's ``retryable`` flag) is worth retrying, by the rules of the module
        docstring."""
        if error_type in _WRAPPERS:
            cause = _CAUSE.search(message)
            if cause is not None:
                error_type = cause.group(1).rsplit(".", 1)[-1]
        if error_type in self._never:
            return False
        if status is None:
            found = _STATUS.search(message)
            if found is not None:
                status = int(found.group(1))
        if status is not None:
            if status in self._statuses:
                return True
            if 400 <= status < 500:
                return False
        if retryable:
            return True
        if error_type in self._retry_on:
            return True
        if self._message is not None and self._message.search(message):
            return True
        return self.config.retry_unknown

    def delay_for(self, retry_number: int, previous_delay: float | None = None) -> float:
        """The delay before retry ``retry_number`` (1 for the first), jitter included.
        ``previous_delay`` feeds the ``decorrelated`` jitter (default: ``base_delay``)."""
        c = self.config
        base, cap = c.base_delay, c.max_delay
        if c.jitter == "decorrelated":
            previous = c.base_delay if previous_delay is None else previous_delay
            return min(cap, self._rng.uniform(base, max(base, previous * 3)))
        n = max(1, retry_number)
        if c.strategy == "fixed":
            delay = base
        elif c.strategy == "linear":
            delay = base * n
        elif c.strategy == "exponential":
            try:
                delay = cap if n > 64 else base * c.multiplier ** (n - 1)
            except OverflowError:  # a huge multiplier: past any cap (0 stays 0)
                delay = cap if base else 0.0
        else:
            delay = base * _FIB[n - 1] if n <= len(_FIB) else cap
        delay = min(delay, cap)
        if c.jitter == "full":
            return self._rng.uniform(0.0, delay)
        if c.jitter == "equal":
            half = delay / 2
            return half + self._rng.uniform(0.0, half)
        return float(delay)

    # -- breakers ------------------------------------------------------------------------
    def _breaker_is_open(self, name: str, label: str) -> bool:
        if self._breaker_state is not None:
            state = self._breaker_state(name)
            if state is not None and str(state) == BreakerState.OPEN.value:
                return True
        if self._breaker_map:
            breaker = self._breaker_map.get(name) or self._breaker_map.get(label)
            if breaker is not None and not breaker.allow():
                return True
        if self._executor is not None:
            # Live breakers only: the final snapshot of a removed hook's open breaker must
            # not block retries of a hook registered again under the same name.
            for snap in self._executor.breakers(retired=False):
                if snap.hook in (name, label) and snap.state is BreakerState.OPEN:
                    return True
        return False

    # -- stats ---------------------------------------------------------------------------
    def _count(self, label: str, field: str) -> None:
        with self._lock:
            self._count_locked(label, field)

    def _count_locked(self, label: str, field: str) -> None:
        if field == "retries_scheduled":
            self._scheduled += 1
        elif field == "gave_up":
            self._gave_up += 1
        elif field == "non_retryable":
            self._non_retryable += 1
        else:
            self._breaker_open += 1
        per = self._by_component.get(label)
        if per is None:
            if len(self._by_component) >= 1024:
                label = "(other)"
            per = self._by_component.setdefault(label, ComponentRetryStats())
        setattr(per, field, getattr(per, field) + 1)

    def stats(self) -> RetryStats:
        """Counts so far (a snapshot)."""
        with self._lock:
            return RetryStats(
                retries_scheduled=self._scheduled,
                gave_up=self._gave_up,
                non_retryable=self._non_retryable,
                breaker_open=self._breaker_open,
                tracked_operations=len(self._ops),
                by_component={k: msgspec.structs.replace(v)
                              for k, v in self._by_component.items()},
                budget_spent=self._budget_spent,
            )

    def reset(self) -> None:
        """Forget tracked operations and counts."""
        with self._lock:
            self._ops.clear()
            self._model_settled.clear()
            self._effects.clear()
            self._budget.clear()
            self._by_component.clear()
            self._scheduled = self._gave_up = self._non_retryable = self._breaker_open = 0
            self._budget_spent = 0
