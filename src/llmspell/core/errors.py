"""The one error hierarchy for the whole package (re-exported as :mod:`llmspell.errors`).

Every error says what was wrong and, where there is one, what to do next (``hint``).
Errors that are also a standard exception kind inherit it too (``ValueError``,
``LookupError``, ``TimeoutError``), so ``except ValueError`` still works.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AgentCycleError",
    "AgentError",
    "AgentStateError",
    "BusClosedError",
    "CircuitOpenError",
    "CommandError",
    "ConfigurationError",
    "DeadlineExceededError",
    "DistributedContextError",
    "DuplicateHookError",
    "EventError",
    "EventTooLargeError",
    "HookError",
    "HookExecutionError",
    "HookNotFoundError",
    "HookTimeoutError",
    "HopLimitExceededError",
    "IntegrationError",
    "InvalidHookResultError",
    "InvalidValueError",
    "LlmspellError",
    "ModelCallCancelledError",
    "NetworkError",
    "NotJsonSafeError",
    "OperationCancelled",
    "OperationCancelledError",
    "OperationDepthError",
    "PatternTooComplexError",
    "PermissionDeniedError",
    "ProviderError",
    "ProviderResponseTooLargeError",
    "ProviderStreamError",
    "QueueFullError",
    "RateLimitedError",
    "RecordingError",
    "RemoteHookError",
    "RemoteHookFailedError",
    "RemoteHookRefusedError",
    "RemoteHookReplyError",
    "RemoteHookTimeoutError",
    "RemoteHookUnavailableError",
    "ReplayDivergenceError",
    "ReplayError",
    "RunError",
    "RunNotFoundError",
    "RuntimeLayerError",
    "SandboxViolationError",
    "ScriptError",
    "ScriptTimeoutError",
    "SerializationError",
    "SessionConflictError",
    "SessionError",
    "SharedCounterError",
    "ShutdownError",
    "SignatureError",
    "StateConflictError",
    "StateError",
    "StateQuotaExceededError",
    "StoreError",
    "StoreFullError",
    "SyncDispatchError",
    "ToolError",
    "ToolExecutionError",
    "ToolNotFoundError",
    "ToolTimeoutError",
    "ToolValidationError",
    "TransportError",
    "TransportUnavailableError",
    "UnknownFeatureError",
    "UnknownHookPointError",
    "UnsupportedFrameworkVersionError",
    "UnsupportedHookResultError",
    "WorkflowError",
    "brief",
]


def brief(reason: object, limit: int = 200) -> str:
    """``reason`` (an exception: its ``message`` when it is an llmspell error, so the hint
    is not repeated) as text of at most ``limit`` characters, ``...`` marking a cut: for a
    reason quoted inside another error's message, which may quote a huge value or a path
    thousands of levels deep."""
    text = reason.message if isinstance(reason, LlmspellError) else str(reason)
    return text if len(text) <= limit else text[:limit] + "..."


class LlmspellError(Exception):
    """Base of every error llmspell raises on purpose."""

    hint: str | None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigurationError(LlmspellError):
    """A configuration value is missing, malformed or contradictory."""


class InvalidValueError(LlmspellError, ValueError):
    """A value passed in by the caller is not acceptable."""


class NotJsonSafeError(InvalidValueError):
    """A value that must be JSON-safe is not; ``path`` names the offending key path."""

    def __init__(self, path: str, value_type: str, *, hint: str | None = None) -> None:
        self.path = path
        self.value_type = value_type
        super().__init__(
            f"value at {path} is a {value_type}, which is not JSON-safe",
            hint=hint or "use dict (str keys), list, str, int, float, bool or None",
        )


class UnknownHookPointError(InvalidValueError):
    """A hook point name matched no known point; ``suggestions`` lists close names."""

    def __init__(self, name: str, suggestions: Sequence[str]) -> None:
        self.name = name
        self.suggestions = tuple(suggestions)
        hint = (
            "did you mean " + ", ".join(repr(s) for s in self.suggestions) + "?"
            if self.suggestions
            else "see HookPoint for the valid names, or use HookPoint.custom(name)"
        )
        super().__init__(f"unknown hook point {name!r}", hint=hint)


class UnknownFeatureError(InvalidValueError):
    """A feature name used with a selective registry was never defined."""


class SerializationError(LlmspellError):
    """Encoding or decoding a model to or from JSON failed."""


class HookError(LlmspellError):
    """Base of errors about hooks, their registration and their execution."""


class DuplicateHookError(HookError):
    """A hook with the same name is already registered at that point."""


class HookNotFoundError(HookError, LookupError):
    """No registered hook matched the handle or name given."""


class HookExecutionError(HookError):
    """A hook raised; ``hook`` and ``point`` name where, ``__cause__`` holds the error."""

    def __init__(self, hook: str, point: str, message: str, *, hint: str | None = None) -> None:
        self.hook = hook
        self.point = str(point)
        super().__init__(f"hook {hook!r} at {self.point!r} failed: {message}", hint=hint)


class InvalidHookResultError(HookExecutionError):
    """A hook returned something that is neither a HookResult nor None."""


class HookTimeoutError(HookExecutionError, TimeoutError):
    """An async hook ran past its timeout and was cancelled."""


class SyncDispatchError(HookError):
    """An async hook was dispatched synchronously from inside a running event loop."""


class OperationCancelledError(HookError):
    """A hook cancelled the operation; ``hook`` and ``reason`` say which and why.

    ``breaker`` is None here; a :class:`CircuitOpenError` (a denial because a circuit
    breaker is open, not a hook's own decision) names the breaker."""

    breaker: str | None = None

    def __init__(self, point: str, reason: str, hook: str | None = None, *,
                 hint: str | None = None) -> None:
        self.point = str(point)
        self.reason = reason
        self.hook = hook
        who = f"hook {hook!r}" if hook else "a hook"
        super().__init__(f"{who} cancelled the operation at {self.point!r}: {reason}",
                         hint=hint)


class CircuitOpenError(OperationCancelledError):
    """The operation was denied because a circuit breaker is open: an outage, not a policy
    decision. Every path that turns a ``Cancel`` into :class:`OperationCancelledError`
    raises this subclass instead for a ``Cancel`` marked with ``breaker``, as the executor
    marks its denial when a fail-closed hook's breaker is open (the hook was not even
    called). ``breaker`` names the breaker (for the executor's denial, the hook: the same
    as ``hook``). ``except OperationCancelledError`` still catches it; catch this class
    first to tell an outage from a denial."""

    def __init__(self, point: str, reason: str, hook: str | None = None, *,
                 breaker: str | None = None) -> None:
        self.breaker = breaker or hook
        super().__init__(point, reason, hook, hint=_breaker_hint(self.breaker))


def _breaker_hint(breaker: str | None) -> str:
    which = f"circuit breaker {breaker!r}" if breaker else "a circuit breaker"
    return (f"{which} is open after repeated failures or slow calls: an outage, not a "
            "refusal; a probe call goes through once its open_duration has passed, and "
            "the hook.breaker.open event and executor.breakers() show why it opened")


class EventError(LlmspellError):
    """Base of errors about events, the bus and stores."""


class QueueFullError(EventError):
    """A subscription's queue is full and its overflow strategy rejects (or a blocking
    publish timed out). ``subscription`` names it."""

    def __init__(self, subscription: str, message: str, *, hint: str | None = None) -> None:
        self.subscription = subscription
        super().__init__(message, hint=hint)


class RateLimitedError(EventError):
    """The publisher rate limit refused an event; ``retry_after`` is seconds until a token."""

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message, hint=f"retry in {retry_after:.3f} s or raise the rate limit")


class StoreError(EventError):
    """An event store could not write (events stay buffered and are retried) or read."""


class StoreFullError(StoreError):
    """An event store's buffer of accepted, not yet written events is full (its writes are
    failing, or were slower than publishing for longer than the store waits): the event was
    not accepted."""


class EventTooLargeError(EventError, InvalidValueError):
    """An event is larger (as encoded JSON) than the configured maximum; it was refused."""

    def __init__(self, message: str, *, size: int, limit: int, hint: str | None = None) -> None:
        self.size = size
        self.limit = limit
        super().__init__(message, hint=hint)


class PatternTooComplexError(InvalidValueError):
    """An event pattern is longer, or has more ``**`` segments, than the bounds allow."""


class BusClosedError(EventError):
    """The bus was closed; it accepts no more events or subscriptions."""


class TransportError(EventError):
    """A distributed transport (the NATS JetStream bus) refused or could not complete an
    operation: a publish the server did not accept, an ack that was not confirmed, a stream
    or consumer the server would not create."""


class TransportUnavailableError(TransportError):
    """The transport's server cannot be reached (nothing listens at the URL, or it has no
    JetStream)."""


class SharedCounterError(TransportError):
    """A shared counter backend (fleet-wide rate limits and budgets in JetStream KV or Redis) could
    not complete an update: its server cannot be reached or does not answer in time, or too
    many processes kept changing the same counter. The hook that asked follows its error
    policy (``fail_open``: the call goes ahead; ``fail_closed``: it is cancelled)."""


class DistributedContextError(LlmspellError):
    """A distributed hook context (``llmspell.distributed``) was refused: ``reason`` is one
    of ``unsigned``, ``bad_signature``, ``unknown_key``, ``stale``, ``replayed``,
    ``malformed``, ``hop_limit``, ``deadline``."""

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        self.reason = reason
        super().__init__(message, hint=hint)


class SignatureError(DistributedContextError):
    """A signed message failed verification: no signature where a key is configured, a
    signature made with another key, content changed after signing, a timestamp outside
    the window, or a nonce seen before (``reason`` says which)."""


class HopLimitExceededError(DistributedContextError):
    """A call would cross more process boundaries than its context's hop limit allows
    (a loop of remote hooks, or a chain too deep)."""


class DeadlineExceededError(DistributedContextError):
    """A distributed context's deadline has passed: the caller no longer waits for the
    answer, so the work is not started."""


class RemoteHookError(HookExecutionError):
    """A remote hook (``llmspell.distributed.RemoteHook``) could not give a result; the
    calling chain applies the hook's error policy (fail-closed denies)."""


class RemoteHookUnavailableError(RemoteHookError):
    """No server answers for the remote hook (none is subscribed, or the NATS server
    cannot be reached)."""


class RemoteHookTimeoutError(RemoteHookError, TimeoutError):
    """No answer from a remote hook within its timeout (or its context's deadline)."""


class RemoteHookRefusedError(RemoteHookError):
    """The hook server refused the call without running the hook. ``code`` is one of
    :data:`llmspell.distributed.wire.REFUSALS`: ``unsigned``, ``bad_signature``,
    ``unknown_key``, ``stale``, ``replayed``, ``replay_cache_full``, ``malformed``,
    ``too_large``, ``hop_limit``, ``deadline``, ``unknown_hook``, ``wrong_point``,
    ``stopping``."""

    def __init__(self, hook: str, point: str, code: str, message: str, *,
                 hint: str | None = None) -> None:
        self.code = code
        super().__init__(hook, point, message, hint=hint)


class RemoteHookFailedError(RemoteHookError):
    """The remote hook ran on its server and raised (or returned a bad value);
    ``error_type`` is the server-side exception's type name."""

    def __init__(self, hook: str, point: str, error_type: str, message: str, *,
                 hint: str | None = None) -> None:
        self.error_type = error_type
        super().__init__(hook, point, message, hint=hint)


class RemoteHookReplyError(RemoteHookError):
    """A remote hook's reply cannot be trusted or read: undecodable, not a HookResult,
    unsigned or badly signed where a key is configured, or answering another request."""


class RuntimeLayerError(LlmspellError):
    """Base of errors raised by the runtime (tools, agents, providers, the system)."""


class ShutdownError(RuntimeLayerError):
    """Shutting the system down failed in part; ``errors`` holds each failure. Everything
    that could be closed was; calling ``shutdown()`` again retries what failed."""

    def __init__(self, errors: Sequence[BaseException]) -> None:
        self.errors = tuple(errors)
        parts = "; ".join(f"{type(e).__name__}: {e}" for e in self.errors)
        super().__init__(f"shutdown failed in {len(self.errors)} part(s): {parts}",
                         hint="fix the cause and call shutdown() again to retry")


class ToolError(RuntimeLayerError):
    """Base of tool errors; ``tool`` names the tool."""

    def __init__(self, tool: str, message: str, *, hint: str | None = None) -> None:
        self.tool = tool
        super().__init__(message, hint=hint)


class ToolNotFoundError(ToolError, LookupError):
    """No tool is registered under that name."""


class ToolValidationError(ToolError, ValueError):
    """A tool's parameters do not match its JSON Schema; ``path`` names the bad value."""

    def __init__(self, tool: str, message: str, path: str = "", *,
                 hint: str | None = None) -> None:
        self.path = path
        super().__init__(tool, message, hint=hint)


class ToolExecutionError(ToolError):
    """A tool raised while running (the original error is ``__cause__``)."""


class ToolTimeoutError(ToolExecutionError, TimeoutError):
    """A tool ran past its timeout."""


class SandboxViolationError(ToolError, PermissionError):
    """A tool tried to reach outside what its configuration allows (a path outside its
    sandbox, a private network address, ...)."""


class AgentError(RuntimeLayerError):
    """Base of agent errors; ``agent`` names the agent."""

    def __init__(self, agent: str, message: str, *, hint: str | None = None) -> None:
        self.agent = agent
        super().__init__(message, hint=hint)


class AgentCycleError(AgentError):
    """An agent was reached again inside its own run (a Redirect or Fork loop such as
    ``A -> B -> A``); ``path`` shows the loop. Refused at once: the agent would otherwise
    wait for itself forever."""

    def __init__(self, agent: str, path: str) -> None:
        self.path = path
        super().__init__(agent, f"agent {agent!r} was reached again inside its own run: "
                                f"{path}",
                         hint="check the hooks that return Redirect or Fork for a loop")


class OperationDepthError(RuntimeLayerError):
    """Operations were nested deeper than the limit: tools and agents (16), or inline
    event deliveries looping until Python's recursion limit."""


class AgentStateError(AgentError):
    """An illegal lifecycle transition was asked for (``current`` -> ``target``)."""

    def __init__(self, agent: str, current: str, target: str, allowed: tuple[str, ...]) -> None:
        self.current = current
        self.target = target
        super().__init__(
            agent,
            f"agent {agent!r} cannot go from {current} to {target}",
            hint="from " + current + " it can go to: " + (", ".join(allowed) or "nothing"),
        )


class ProviderError(RuntimeLayerError):
    """A model provider call failed; ``status`` is the HTTP status when there was one.

    ``retryable`` says whether the same request may succeed later; ``retry_after`` is how
    long the provider asked to wait first (seconds, from ``Retry-After``), when it said.
    """

    def __init__(self, provider: str, message: str, *, status: int | None = None,
                 retryable: bool = False, hint: str | None = None,
                 retry_after: float | None = None) -> None:
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(message, hint=hint)


class ProviderStreamError(ProviderError):
    """A streamed answer broke off before its end (connection closed, no end marker, a
    malformed or ``error`` event): what arrived is discarded, never passed off as whole.

    ``received_bytes`` and ``received_deltas`` say how much had arrived. Retryable unless
    the provider said the request itself is wrong.
    """

    def __init__(self, provider: str, message: str, *, received_bytes: int = 0,
                 received_deltas: int = 0, retryable: bool = True,
                 status: int | None = None, hint: str | None = None) -> None:
        self.received_bytes = received_bytes
        self.received_deltas = received_deltas
        super().__init__(provider, message, status=status, retryable=retryable,
                         hint=hint or "retry the call (a new stream starts from scratch)")


class ProviderResponseTooLargeError(ProviderError):
    """A provider's answer (streamed or not) grew past the size limit (``limit`` bytes);
    it was cut off and discarded."""

    def __init__(self, provider: str, limit: int) -> None:
        self.limit = limit
        super().__init__(
            provider,
            f"the answer from {provider} is larger than the {limit}-byte limit",
            hint="ask for fewer tokens (max_tokens), or raise the provider's "
            "max_response_bytes",
        )


class ModelCallCancelledError(RuntimeLayerError):
    """A hook cancelled a model call (``point``, ``reason`` and ``hook`` say where and why).

    Not an :class:`OperationCancelledError`: inside an agent it is a failed step, so the
    agent's ``AgentError`` hooks can still recover (a fallback answer, a retry). So it is
    not a :class:`CircuitOpenError` either: a call denied because a circuit breaker is open
    has ``breaker`` set (the breaker's name; None for a hook's own decision) and
    ``circuit_open`` True."""

    def __init__(self, model: str, point: str, reason: str, hook: str | None, *,
                 breaker: str | None = None) -> None:
        self.model = model
        self.point = point
        self.reason = reason
        self.hook = hook
        self.breaker = breaker
        by = f" by hook {hook!r}" if hook else ""
        super().__init__(f"the call to {model} was cancelled{by} at {point!s}: {reason}",
                         hint=_breaker_hint(breaker) if breaker else None)

    @property
    def circuit_open(self) -> bool:
        """True when the call was denied because a circuit breaker is open (``breaker``
        names it), not by a hook's own decision."""
        return self.breaker is not None


OperationCancelled = OperationCancelledError
"""The name the runtime uses: a hook cancelled the operation (hook and reason attached)."""


class StateError(RuntimeLayerError):
    """A state operation failed (bad key, scope, value, or backend)."""


class StateConflictError(StateError):
    """A write was based on a version that is no longer current (and no hook resolved
    it); ``expected`` and ``actual`` are the versions."""

    def __init__(self, key: str, scope: str, expected: int | None, actual: int | None) -> None:
        self.key = key
        self.scope = scope
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"state key {key!r} in {scope} was changed by someone else "
            f"(expected version {expected}, found {actual})",
            hint="read the key again and retry the write with the new version, or resolve "
            "conflicts with a StateConflict hook",
        )


class StateQuotaExceededError(StateError):
    """A state write would take its holder (a script run) over its byte quota; nothing
    was written."""


class WorkflowError(RuntimeLayerError):
    """A workflow failed; ``workflow`` and ``step`` say where."""

    def __init__(self, workflow: str, message: str, *, step: str | None = None,
                 hint: str | None = None) -> None:
        self.workflow = workflow
        self.step = step
        super().__init__(message, hint=hint)


class SessionError(RuntimeLayerError):
    """A session operation failed (unknown session, wrong state)."""


class SessionConflictError(SessionError):
    """A session's record was saved through another object since this one read it: nothing
    was written (load it again and reapply the change)."""


class ScriptError(LlmspellError):
    """A script (Lua, ...) failed: ``script`` and ``line`` say where (when known),
    ``traceback`` holds the script's own traceback text."""

    def __init__(self, message: str, *, script: str | None = None, line: int | None = None,
                 traceback: str | None = None, hint: str | None = None) -> None:
        self.script = script
        self.line = line
        self.traceback = traceback
        where = f"{script}:{line}: " if script and line else (f"{script}: " if script else "")
        super().__init__(f"{where}{message}", hint=hint)


class ScriptTimeoutError(ScriptError, TimeoutError):
    """A script ran past its time budget and was stopped (the engine stays usable)."""


class PermissionDeniedError(LlmspellError):
    """A script lacks the capability (flag or path root) for an operation."""


class CommandError(LlmspellError):
    """A command a script ran could not run, ran past its timeout, or wrote too much."""


class NetworkError(LlmspellError):
    """A script's fetch failed (connection, timeout, size limit)."""


class IntegrationError(LlmspellError):
    """A framework adapter (``llmspell.integrations``) cannot do what was asked."""


class UnsupportedFrameworkVersionError(IntegrationError):
    """The installed framework's version is outside the range the adapter supports."""

    def __init__(self, framework: str, installed: str, supported: str) -> None:
        self.framework = framework
        self.installed = installed
        self.supported = supported
        super().__init__(
            f"{framework} {installed} is installed; this llmspell adapter supports "
            f"{framework} {supported}",
            hint=f"install a supported version: pip install '{framework}{supported}'",
        )


class UnsupportedHookResultError(IntegrationError):
    """A hook returned a result the framework's seam at that point cannot honour."""

    def __init__(self, framework: str, point: str, result: str, hook: str | None,
                 *, hint: str | None = None) -> None:
        self.framework = framework
        self.point = point
        self.result = result
        self.hook = hook
        by = f" (returned by hook {hook!r})" if hook else ""
        super().__init__(
            f"{framework} cannot honour {result} at {point}{by}",
            hint=hint or "see docs/integrations.md for the results each point supports",
        )


class RunError(RuntimeLayerError):
    """A run (``system.runs``) could not be listed, recorded, replayed or compared."""


class RunNotFoundError(RunError, LookupError):
    """No run with the given id is in the store."""


class RecordingError(RunError):
    """A run's recording cannot be used: corrupt, from a newer llmspell, or not recorded
    (level ``off``)."""


class ReplayError(RunError):
    """A replay could not be carried out (the run's target is not available, ...)."""


class ReplayDivergenceError(ReplayError):
    """A replay that was asked to stop at the first divergence found one."""
