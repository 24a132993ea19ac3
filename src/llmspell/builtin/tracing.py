"""``TracingHook``: OpenTelemetry traces of agents, model calls, tools and workflows, named
and attributed by the OpenTelemetry GenAI semantic conventions.

One span per operation, in the tree the calls make::

    invoke_agent helper                 (or invoke_workflow <name>, or <kind> <name> for
      chat gpt-4o-mini                   a script or other run)
      execute_tool calculator
      execute_tool shell                (blocked by a hook: error.type, the decision event)
      chat gpt-4o-mini

``invoke_workflow <name>`` has one ``step <step>`` span per step run, and the agent, tool or
nested workflow a step runs is that span's child. Every span carries the run id
(``llmspell.run.id``) of the run it belongs to (``system.runs``), and llmspell's spans nest
under the application's current OpenTelemetry span, if there is one.

**How spans start and end.** The hook sits at the *before* points (``BeforeAgentExecution``,
``BeforeModelCall``, ``BeforeToolExecution``, ``BeforeWorkflowStart``,
``BeforeWorkflowStage``) at :data:`TRACING_PRIORITY` (before every other hook), so a span
starts when the operation starts and a call a later hook blocks still has its span. It
never changes anything (it always returns ``None``). Spans end on what the runtime
publishes when an operation is over, delivered inline on the bus to the task that ran it
(subscribed ``local=True``: a distributed bus's events from other processes are theirs):
``tool.<name>.completed``/``.failed``, ``model.<provider>.completed``/``.failed``,
``workflow.<name>.stage_completed``/``.completed``/``.failed``/``.cancelled``, and, for
agents (which publish no end event), the ``hook.<point>`` event of their
``AfterAgentExecution``/``AgentError`` points or of a before point that cancelled,
replaced or redirected them. Nothing is left open: a span whose operation ended without
its event (a task cancelled, a result served from a cache before the after point) is ended
when its parent ends or its run ends (``run.completed``/``run.failed``), at the time its
operation was last seen ending when that is known, and at most ``max_open_spans`` are
open at once (the oldest is ended beyond that). The span each task is in lives in a
context variable, so concurrent branches (parallel workflow steps, forks) keep their own
parents; a task that has none although its run has open spans (a framework that runs each
step of an agent in a context of its own, as LangGraph does) is given its run's newest open
agent, workflow, step or run span. The framework adapters' runs (LangChain, Pydantic AI,
the OpenAI Agents SDK) dispatch the same points and publish the same events, so they give
the same spans, under a ``<framework> <name>`` run span.

**Framework runs, when the framework traces itself.** ``TracingConfig(framework_spans=
"decisions")`` keeps llmspell from making the ``invoke_agent``/``chat``/``execute_tool``
spans of a run an adapter opened (a run whose kind is in ``TracingConfig.frameworks``,
by default :data:`FRAMEWORK_RUN_KINDS`), for a framework whose own instrumentation already
makes them (Pydantic AI's ``instrument=True``, an OpenTelemetry bridge of the OpenAI
Agents SDK's tracing). The framework's calls are those carrying the correlation id of the
run's first ``BeforeAgentExecution`` (the framework's agent; an adapter gives all its
calls that id). The run still has its ``<framework> <name>`` span, an llmspell agent the
framework calls (in a tool, say: it has a correlation id of its own) still has its spans,
and hook decisions about the framework's calls are still recorded: on OpenTelemetry's
current span where the hook ran (the framework's span of the call) when that is not the
span the run started under, else on the run span.

**Hook decisions** that changed something (every per-hook result but ``continue``) are span
events named :data:`DECISION_EVENT` with the hook's name, the point, the result, the reason
when there is one, and the hook's duration, read from the system's ``hook.<point>`` events
(``SystemConfig.hook_events``, on by default). The reason of a ``Cancel`` is taken from the
error the operation then raises (:class:`~llmspell.errors.OperationCancelled`).

**Content** (prompts, replies, tool arguments and results) is captured only when
``TracingConfig.capture_content`` is on (default: the
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` environment variable), and it is
taken from the runtime's own events, so the trace holds what the event store holds: model
messages as ``SystemConfig.record_content`` keeps them (masked by default, role and
length only with ``none``), tool parameters and results as ``tool.*`` events carry them
(sensitive keys and credential-shaped text masked with ``mask_event_data``). A chat
span's ``gen_ai.input.messages`` are the messages added since the model last spoke (the
runtime's record; the history is the chat spans before it).

**Why the OpenTelemetry SDK directly, not ``opentelemetry-util-genai``.** The maintained
emitter (a pre-1.0 package that is not among llmspell's extras) starts and stops spans
around calls it wraps and keeps the current span in OpenTelemetry's context, attached and
detached by the same code path. llmspell's operations are not wrapped by the hook: they
start at one hook point and end at an event, possibly after other hooks replaced, cancelled
or redirected them, so the hook needs explicit parents and explicit start and end times,
which the tracing API gives directly (``Tracer.start_span(context=..., start_time=...)``,
``Span.end(end_time=...)``). It also keeps the hot path to one ``start_span`` and one
``end`` per operation, and the attribute names are this module's own constants (the
semantic-convention packages mark the GenAI names as moved while they are in
development), so a change of the conventions is a change here only.

**Cost.** No tracer, no cost: when no tracer provider is configured (the OpenTelemetry
API's default, or ``OTEL_SDK_DISABLED``) :meth:`TracingHook.install` installs nothing.
With a tracer, every traced call pays a dispatch of the hook, the ``hook.<point>`` events
of its points (which make the executor record per-hook results) and its span
(``benchmarks/tracing.py`` has the figures; docs/observability.md quotes them). A span the
sampler drops costs its bookkeeping only.

Like every built-in hook it never imports the runtime: it knows the runtime's points and
events by their documented names and shapes (docs/hook-points.md, docs/events.md).
``pip install 'llmspell[tracing]'`` installs the SDK and the OTLP/HTTP exporter.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from llmspell.builtin.base import BuiltinHook
from llmspell.core.errors import (
    CircuitOpenError,
    ConfigurationError,
    InvalidValueError,
    OperationCancelledError,
)
from llmspell.core.redact import get_logger, mask_text
from llmspell.core.run_scope import current_run_id
from llmspell.core.text import encodable
from llmspell.events.bus import EventBus
from llmspell.events.event import UniversalEvent
from llmspell.events.subscription import SubscriptionHandle
from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import HookOutput
from llmspell.hooks.points import HookPoint
from llmspell.hooks.registry import HookHandle, HookRegistry

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = [
    "ATTR_AGENT_NAME",
    "ATTR_CONVERSATION_ID",
    "ATTR_ERROR_TYPE",
    "ATTR_FINISH_REASONS",
    "ATTR_HOOK_DURATION_MS",
    "ATTR_HOOK_NAME",
    "ATTR_HOOK_POINT",
    "ATTR_HOOK_REASON",
    "ATTR_HOOK_RESULT",
    "ATTR_INPUT_MESSAGES",
    "ATTR_INPUT_TOKENS",
    "ATTR_OPERATION",
    "ATTR_OUTPUT_MESSAGES",
    "ATTR_OUTPUT_TOKENS",
    "ATTR_PROVIDER",
    "ATTR_REQUEST_MODEL",
    "ATTR_RESPONSE_MODEL",
    "ATTR_RUN_ID",
    "ATTR_SYSTEM_INSTRUCTIONS",
    "ATTR_TOOL_ARGUMENTS",
    "ATTR_TOOL_CALL_ID",
    "ATTR_TOOL_NAME",
    "ATTR_TOOL_RESULT",
    "ATTR_WORKFLOW_NAME",
    "CAPTURE_CONTENT_ENV",
    "DECISION_EVENT",
    "FRAMEWORK_RUN_KINDS",
    "FRAMEWORK_SPANS",
    "TRACING_PRIORITY",
    "TracingConfig",
    "TracingHook",
    "TracingStats",
    "otlp_tracer_provider",
]

logger = get_logger("llmspell.tracing")

TRACING_PRIORITY = -1_000_000
"""Default priority of :class:`TracingHook`: before every built-in hook (security is -1000)
and any ordinary user hook, so a span starts before anything can block its operation."""

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""The environment variable OpenTelemetry's GenAI instrumentations read to capture content
(``true``; also ``span_only``/``span_and_event``); the default of
``TracingConfig.capture_content``."""

DECISION_EVENT = "llmspell.hook.decision"
"""The name of the span event recording one hook decision."""

FRAMEWORK_RUN_KINDS: frozenset[str] = frozenset({"langchain", "openai-agents", "pydantic-ai"})
"""The run kinds the framework adapters open their runs with (each adapter's ``FRAMEWORK``):
the default of ``TracingConfig.frameworks``."""

FRAMEWORK_SPANS: tuple[str, ...] = ("all", "decisions")
"""The values of ``TracingConfig.framework_spans``: ``all`` (llmspell makes every span of
a framework run) and ``decisions`` (only the run span and hook decisions; the framework's
own instrumentation makes the operation spans)."""

# -- attribute names (OpenTelemetry GenAI semantic conventions, and llmspell's own) --------
ATTR_OPERATION = "gen_ai.operation.name"
"""``chat``, ``execute_tool``, ``invoke_agent`` or ``invoke_workflow``."""
ATTR_PROVIDER = "gen_ai.provider.name"
"""The provider's name as llmspell knows it (``openai``, ``anthropic``, ``scripted``)."""
ATTR_REQUEST_MODEL = "gen_ai.request.model"
"""The model asked for."""
ATTR_RESPONSE_MODEL = "gen_ai.response.model"
"""The model that answered, as the provider reported it."""
ATTR_FINISH_REASONS = "gen_ai.response.finish_reasons"
"""Why the model stopped (a list of one: ``stop``, ``tool_calls``, ``length``)."""
ATTR_INPUT_TOKENS = "gen_ai.usage.input_tokens"
"""Input tokens of a model call (on an agent span: the sum of its model calls)."""
ATTR_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
"""Output tokens of a model call (on an agent span: the sum of its model calls)."""
ATTR_TOOL_NAME = "gen_ai.tool.name"
"""The tool's name."""
ATTR_TOOL_CALL_ID = "gen_ai.tool.call.id"
"""The id the model gave the tool call (tools an agent runs for its model)."""
ATTR_CONVERSATION_ID = "gen_ai.conversation.id"
"""The correlation id of the agent run (every event of the run carries it)."""
ATTR_AGENT_NAME = "gen_ai.agent.name"
"""The agent's name."""
ATTR_WORKFLOW_NAME = "gen_ai.workflow.name"
"""The workflow's name."""
ATTR_ERROR_TYPE = "error.type"
"""The class name of the error the operation failed with."""
ATTR_INPUT_MESSAGES = "gen_ai.input.messages"
"""Content (when captured): the messages sent, as JSON in the conventions' parts format."""
ATTR_OUTPUT_MESSAGES = "gen_ai.output.messages"
"""Content (when captured): the model's answer, as JSON."""
ATTR_SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
"""Content (when captured): the system messages, as JSON."""
ATTR_TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
"""Content (when captured): the tool's parameters, as JSON."""
ATTR_TOOL_RESULT = "gen_ai.tool.call.result"
"""Content (when captured): the tool's result, as JSON."""
ATTR_RUN_ID = "llmspell.run.id"
"""The id of the run (``system.runs``) the operation belongs to."""
ATTR_HOOK_NAME = "llmspell.hook.name"
"""Decision event: the hook's name."""
ATTR_HOOK_POINT = "llmspell.hook.point"
"""Decision event: the point (``before_tool_execution``)."""
ATTR_HOOK_RESULT = "llmspell.hook.result"
"""Decision event: the result kind (``cancel``, ``modified``, ``replace``, ``retry``...)."""
ATTR_HOOK_REASON = "llmspell.hook.reason"
"""Decision event: the reason (a ``Cancel``'s, or why a hook failed or was skipped)."""
ATTR_HOOK_DURATION_MS = "llmspell.hook.duration_ms"
"""Decision event: how long the hook took, in milliseconds."""

_ATTR_TOOL_TYPE = "gen_ai.tool.type"
_ATTR_TEMPERATURE = "gen_ai.request.temperature"
_ATTR_MAX_TOKENS = "gen_ai.request.max_tokens"
_ATTR_CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
_ATTR_REASONING = "gen_ai.usage.reasoning.output_tokens"
_ATTR_CLOSED_BY = "llmspell.span.closed_by"
_ATTR_CORRELATION = "llmspell.correlation_id"

_CANCELLED = "OperationCancelledError"
_CIRCUIT_OPEN = "CircuitOpenError"  # an OperationCancelledError: an open breaker denied

# The points the hook sits at, and the hook.<point> events it reads decisions from.
_POINTS: tuple[HookPoint, ...] = (
    HookPoint.BEFORE_AGENT_EXECUTION, HookPoint.AFTER_AGENT_EXECUTION, HookPoint.AGENT_ERROR,
    HookPoint.BEFORE_MODEL_CALL, HookPoint.AFTER_MODEL_CALL, HookPoint.MODEL_CALL_ERROR,
    HookPoint.BEFORE_TOOL_EXECUTION, HookPoint.TOOL_ERROR,
    HookPoint.BEFORE_WORKFLOW_START, HookPoint.BEFORE_WORKFLOW_STAGE,
)
_DECISION_POINTS: tuple[HookPoint, ...] = (
    HookPoint.BEFORE_AGENT_EXECUTION, HookPoint.AFTER_AGENT_EXECUTION, HookPoint.AGENT_ERROR,
    HookPoint.BEFORE_MODEL_CALL, HookPoint.AFTER_MODEL_CALL, HookPoint.MODEL_CALL_ERROR,
    HookPoint.TOOL_VALIDATION, HookPoint.BEFORE_TOOL_EXECUTION,
    HookPoint.AFTER_TOOL_EXECUTION, HookPoint.TOOL_ERROR,
    HookPoint.BEFORE_WORKFLOW_START, HookPoint.WORKFLOW_STAGE_TRANSITION,
    HookPoint.BEFORE_WORKFLOW_STAGE, HookPoint.AFTER_WORKFLOW_STAGE,
    HookPoint.WORKFLOW_ERROR, HookPoint.AFTER_WORKFLOW_COMPLETE,
)
_STEP_POINTS = frozenset({
    str(HookPoint.BEFORE_WORKFLOW_STAGE), str(HookPoint.AFTER_WORKFLOW_STAGE),
    str(HookPoint.WORKFLOW_ERROR),
})
_CONTAINERS = frozenset({"agent", "workflow", "step", "run"})
_SPAN_RUN_KINDS = frozenset({"agent", "workflow"})
"""Runs of these kinds get no span of their own: the agent or workflow span is the root."""
_ON = frozenset({"1", "true", "yes", "on", "span_only", "span_and_event"})
_JSON = msgspec.json.Encoder()
_MAX_NAME = 512
"""The longest name, id or short text (a finish reason, an error type) put on a span; free
text (error messages, hook reasons, content) is cut at ``TracingConfig.max_content_chars``."""


def _env_capture() -> bool:
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() in _ON


class TracingConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of :class:`TracingHook`.

    ``capture_content``: put prompts, replies, tool arguments and results on the spans
    (None: read :data:`CAPTURE_CONTENT_ENV`). ``decisions``: hook decisions as span events
    (reads the system's ``hook.<point>`` events). ``max_content_chars``: the longest
    captured JSON value, error message, stack trace or hook reason on a span (longer ones
    are cut, with a note of how much; names and ids are cut at 512 characters). Error
    messages, stack traces and hook reasons are always masked as llmspell's logs are
    (credential-shaped text becomes ``***``). ``max_open_spans``:
    spans open at once; beyond it the oldest is ended (counted as evicted); it also bounds
    the framework runs and the replays followed at once (a run whose end event was never
    seen is forgotten oldest first).

    ``framework_spans``: for runs an adapter opened (their kind is in ``frameworks``),
    ``"all"`` makes every span as for llmspell's own runs; ``"decisions"`` makes no
    ``invoke_agent``/``chat``/``execute_tool`` span (the framework's own instrumentation
    makes them) and puts hook decisions on OpenTelemetry's current span where the hook
    ran, else on the run's span. ``frameworks``: the run kinds that switch applies to
    (default :data:`FRAMEWORK_RUN_KINDS`: every adapter).
    """

    capture_content: bool | None = None
    decisions: bool = True
    max_content_chars: int = 16_000
    max_open_spans: int = 10_000
    framework_spans: Literal["all", "decisions"] = "all"
    frameworks: frozenset[str] = FRAMEWORK_RUN_KINDS

    def __post_init__(self) -> None:
        if self.capture_content is not None and not isinstance(self.capture_content, bool):
            raise InvalidValueError(
                f"TracingConfig.capture_content must be a bool or None, got "
                f"{self.capture_content!r}",
                hint=f"None reads {CAPTURE_CONTENT_ENV}; True captures content")
        if not isinstance(self.decisions, bool):
            raise InvalidValueError(
                f"TracingConfig.decisions must be a bool, got {self.decisions!r}",
                hint="True records hook decisions as span events")
        for field, value, hint in (
                ("max_content_chars", self.max_content_chars,
                 "16000 characters keep a long prompt readable"),
                ("max_open_spans", self.max_open_spans,
                 "allow at least as many spans as operations run at once")):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidValueError(
                    f"TracingConfig.{field} must be an int >= 1, got {value!r}", hint=hint)
        if self.framework_spans not in FRAMEWORK_SPANS:
            raise InvalidValueError(
                f"TracingConfig.framework_spans must be one of {', '.join(FRAMEWORK_SPANS)}, "
                f"got {self.framework_spans!r}",
                hint='"decisions" leaves a framework\'s own spans to its instrumentation; '
                     '"all" (the default) makes every span')
        frameworks: Any = self.frameworks
        if (not isinstance(frameworks, frozenset | set | tuple | list)
                or not all(isinstance(k, str) and k for k in frameworks)):
            raise InvalidValueError(
                f"TracingConfig.frameworks must be a set of run kinds (non-empty strings), "
                f"got {frameworks!r}",
                hint=f"the adapters' run kinds: {', '.join(sorted(FRAMEWORK_RUN_KINDS))}")
        if not isinstance(frameworks, frozenset):
            msgspec.structs.force_setattr(self, "frameworks", frozenset(frameworks))


class TracingStats(msgspec.Struct, frozen=True, kw_only=True):
    """What :class:`TracingHook` did: spans started and ended, open now, ended early
    (``closed_with_parent``: with their parent or run; ``evicted``: past
    ``max_open_spans``), decision events, and errors of the hook itself (logged)."""

    active: bool
    spans_started: int
    spans_ended: int
    open_spans: int
    closed_with_parent: int
    evicted: int
    decisions: int
    errors: int


class _Open:
    """One span while its operation runs."""

    __slots__ = ("calls", "children", "context", "end_hint", "errors", "key", "kind",
                 "model_set", "name", "open", "parent", "pending", "recording", "run_id",
                 "span", "tokens_in", "tokens_out")

    def __init__(self, span: Span, kind: str, name: str, key: str,
                 parent: _Open | None, run_id: str | None) -> None:
        self.span = span
        self.kind = kind
        self.name = name
        self.key = key
        self.parent = parent
        self.run_id = run_id
        self.children: list[_Open] | None = None
        self.open = True
        self.recording = span.is_recording()
        self.context: Context | None = None
        self.end_hint: int | None = None
        # Made when first needed: most spans never fail, hold a Cancel or run tools.
        self.errors: list[tuple[int, str, str]] | None = None
        self.pending: list[tuple[int, dict[str, Any]]] | None = None
        self.calls: list[tuple[str, str]] | None = None
        self.model_set = False
        self.tokens_in = 0
        self.tokens_out = 0


class _Framework:
    """A run an adapter opened whose calls the framework traces itself."""

    __slots__ = ("correlation", "outer", "run")

    def __init__(self, outer: int) -> None:
        self.outer = outer  # the OpenTelemetry span id current when the run started
        self.run: _Open | None = None  # the run's span
        self.correlation: str | None = None  # the framework's calls' correlation id


def _clean(value: object, limit: int = _MAX_NAME) -> str:
    """``value`` as text fit for a span (:func:`~llmspell.core.text.encodable`): at most
    ``limit`` characters, lone surrogates replaced. The OTLP exporter cannot encode a
    surrogate in a span's name, status or event, and then drops the whole batch: every
    other span exported with it."""
    return encodable(value, limit)


_MASK_MARGIN = 10_300
"""Characters read past the cut when masking free text: the longest credential
:func:`~llmspell.core.redact.mask_text` matches (a private key block), so one that starts
before the cut is masked whole, not shown in part."""


_NOTE_ROOM = 32
"""Room for the note a cut adds (``...(+N chars)``): text cut once passes a second
:func:`_free` or :func:`_clean` at ``limit + _NOTE_ROOM`` unchanged."""


def _free(value: object, limit: int) -> str:
    """Free text (an error message, a stack trace, a hook's reason) as :func:`_clean` puts
    it on a span, with credential-shaped substrings (API keys, bearer tokens, private keys,
    ``password=...``) replaced by ``***``: it leaves the process, as a log line does, and
    llmspell's logs mask the same text. Never raises: an exception whose ``__str__``
    fails is shown by its type."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        text = f"<{type(value).__name__}: unprintable>"
    window = limit + _MASK_MARGIN
    masked = mask_text(text[:window])
    more = max(0, len(masked) - limit) + max(0, len(text) - window)
    if more:  # cut as _clean cuts, counting what was past the window too
        masked = f"{masked[:limit]}...(+{more} chars)"
    return _clean(masked, len(masked))


def _json(value: Any, limit: int) -> str:
    try:
        text = _JSON.encode(value).decode()
    except (TypeError, ValueError, msgspec.EncodeError):
        text = repr(value)
    return _clean(text, limit)


def _parts(message: dict[str, Any]) -> dict[str, Any]:
    """A recorded message (the runtime's model-call shape, possibly reduced by
    ``record_content``) in the conventions' ``{"role", "parts"}`` form."""
    role = message.get("role")
    parts: list[dict[str, Any]] = []
    content = message.get("content")
    if role == "tool":
        parts.append({"type": "tool_call_response", "id": message.get("tool_call_id"),
                      "response": content})
    elif isinstance(content, str) and content:
        parts.append({"type": "text", "content": content})
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            parts.append({"type": "tool_call", "id": call.get("id"), "name": call.get("name"),
                          "arguments": call.get("arguments")})
        else:  # record_content="none" keeps the names only
            parts.append({"type": "tool_call", "name": call})
    out: dict[str, Any] = {"role": role, "parts": parts}
    if "chars" in message:
        out["chars"] = message["chars"]
    return out


def _first(spans: dict[int, _Open]) -> _Open | None:
    """The oldest open span (dict insertion order), without copying ``spans``. Another
    thread may add or end a span between ``iter`` and ``next`` (the dict has no lock), which
    makes ``next`` raise; then read a copy, as before."""
    try:
        return next(iter(spans.values()), None)
    except RuntimeError:
        return next(iter(spans.copy().values()), None)


def _drop_oldest(table: dict[str, Any]) -> None:
    """Forget the oldest entry of ``table`` (insertion order), if any. Another thread may
    change it between ``iter`` and ``next`` (no lock): then read a copy, as :func:`_first`."""
    try:
        key = next(iter(table), None)
    except RuntimeError:
        key = next(iter(table.copy()), None)
    if key is not None:
        table.pop(key, None)


def _is_container(rec: _Open) -> bool:
    return rec.kind in _CONTAINERS


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None



def _decisions(data: Any, point: str, mine: str, limit: int
               ) -> Iterator[tuple[Any, Any, Any, dict[str, Any]]]:
    """The per-hook results of a ``hook.<point>`` event that changed something (not this
    hook's own), each as ``(hook, kind, detail, span-event attributes)``."""
    for hook, kind, duration, detail in zip(
            data.get("hooks") or (), data.get("kinds") or (),
            data.get("durations_ns") or (), data.get("details") or (), strict=False):
        if kind == "continue" or hook == mine:
            continue
        attributes: dict[str, Any] = {
            ATTR_HOOK_NAME: _clean(hook), ATTR_HOOK_POINT: _clean(point),
            ATTR_HOOK_RESULT: _clean(kind),
            ATTR_HOOK_DURATION_MS: duration / 1e6 if isinstance(duration, int) else 0.0,
        }
        if detail:
            attributes[ATTR_HOOK_REASON] = _free(detail, limit)
        yield hook, kind, detail, attributes

class TracingHook(BuiltinHook):
    """OpenTelemetry spans for agents, model calls, tools and workflows (see the module
    docstring).

    ``bus``: the system's bus (``system.bus``): the hook ends spans on the events the
    runtime publishes there. ``tracer_provider``: where spans go (default: the global
    provider; with none configured the hook installs nothing, see :attr:`active`).
    Install it like every built-in: ``hook.install(system.registry)``; ``uninstall`` also
    unsubscribes from the bus and ends the spans still open.
    """

    default_points: tuple[str, ...] = tuple(_POINTS)

    def __init__(
        self,
        config: TracingConfig | None = None,
        *,
        bus: EventBus,
        tracer_provider: TracerProvider | None = None,
        priority: int = TRACING_PRIORITY,
    ) -> None:
        super().__init__(name="tracing", priority=priority,
                         description="OpenTelemetry GenAI spans of agents, models, tools "
                                     "and workflows")
        self.config = config if config is not None else TracingConfig()
        if not isinstance(self.config, TracingConfig):
            raise InvalidValueError(
                f"config must be a TracingConfig, got {type(self.config).__name__}",
                hint="TracingHook(TracingConfig(capture_content=True), bus=system.bus)")
        if not isinstance(bus, EventBus):
            raise InvalidValueError(
                f"bus must be the system's EventBus, got {type(bus).__name__}",
                hint="TracingHook(bus=system.bus): spans end on the events published there")
        try:
            from opentelemetry import trace  # noqa: PLC0415 - optional dependency
        except ImportError as exc:
            raise ConfigurationError(
                "TracingHook needs the opentelemetry-api package",
                hint="pip install 'llmspell[tracing]'") from exc
        from llmspell import __version__  # noqa: PLC0415 - the package, only here

        self.bus = bus
        self.capture = (self.config.capture_content if self.config.capture_content is not None
                        else _env_capture())
        self._limit = self.config.max_content_chars
        self._internal = trace.SpanKind.INTERNAL
        self._client = trace.SpanKind.CLIENT
        self._status_error = trace.StatusCode.ERROR
        self._status = trace.Status
        self._in_context = trace.set_span_in_context
        self._otel_current = trace.get_current_span
        self._skip_kinds = (self.config.frameworks if self.config.framework_spans == "decisions"
                            else frozenset())
        provider = tracer_provider if tracer_provider is not None else \
            trace.get_tracer_provider()
        tracer: Tracer | None = None
        if not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            made = provider.get_tracer("llmspell", __version__)
            if not isinstance(made, trace.NoOpTracer):
                tracer = made
        self._tracer = tracer
        self._current: ContextVar[_Open | None] = ContextVar("llmspell_trace_span",
                                                             default=None)
        # Open spans by id, oldest first. Single dict operations (atomic in CPython) on the
        # hot path, no lock; scans read a copy.
        self._open_spans: dict[int, _Open] = {}
        self._replays: dict[str, tuple[str, str | None]] = {}
        # Framework runs whose operation spans the framework makes (framework_spans=
        # "decisions"), by run id.
        self._framework_runs: dict[str, _Framework] = {}
        self._subscriptions: list[SubscriptionHandle] = []
        self._decision_subs: dict[str, SubscriptionHandle] = {}
        self._registry: HookRegistry | None = None
        self._listening: set[int] = set()
        self._sync_lock = threading.Lock()
        self._started = 0
        self._ended = 0
        self._closed_with_parent = 0
        self._evicted = 0
        self._decisions = 0
        self._errors = 0
        self._on_point: dict[str, Callable[[HookContext], None]] = {
            HookPoint.BEFORE_AGENT_EXECUTION: self._before_agent,
            HookPoint.AFTER_AGENT_EXECUTION: self._after_agent,
            HookPoint.AGENT_ERROR: self._operation_error,
            HookPoint.BEFORE_MODEL_CALL: self._before_model,
            HookPoint.AFTER_MODEL_CALL: self._after_model,
            HookPoint.MODEL_CALL_ERROR: self._operation_error,
            HookPoint.BEFORE_TOOL_EXECUTION: self._before_tool,
            HookPoint.TOOL_ERROR: self._operation_error,
            HookPoint.BEFORE_WORKFLOW_START: self._before_workflow,
            HookPoint.BEFORE_WORKFLOW_STAGE: self._before_stage,
        }

    # -- wiring -------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True when there is a tracer to send spans to (else :meth:`install` installs
        nothing: configure a tracer provider first, or pass ``tracer_provider``)."""
        return self._tracer is not None

    def install(self, registry: HookRegistry) -> list[HookHandle]:
        """Register at the before (and after, error) points and subscribe to the events
        that end spans; returns the hook handles (none when not :attr:`active`)."""
        if self._tracer is None:
            logger.info("tracing: no OpenTelemetry tracer provider is configured; the "
                        "tracing hook installs nothing")
            return []
        if self._subscriptions:
            raise InvalidValueError("this TracingHook is installed already",
                                    hint="uninstall it first, or create another one")
        handles = super().install(registry)
        subscribe = self.bus.subscribe
        subs = self._subscriptions
        try:
            for pattern, handler in (
                    ("tool.**.completed", self._on_tool_completed),
                    ("tool.**.failed", self._on_tool_failed),
                    ("model.*.completed", self._on_model_completed),
                    ("model.*.failed", self._on_model_failed),
                    ("workflow.*.stage_completed", self._on_stage_completed),
                    ("workflow.*.stage_failed", self._on_stage_failed),
                    ("workflow.*.completed", self._on_workflow_completed),
                    ("workflow.*.failed", self._on_workflow_failed),
                    ("workflow.*.cancelled", self._on_workflow_cancelled),
                    ("run.started", self._on_run_started),
                    ("run.completed", self._on_run_ended),
                    ("run.failed", self._on_run_ended)):
                subs.append(subscribe(pattern, handler, mode="inline", local=True,
                                      name=f"tracing:{pattern}"))
            if self.capture:
                subs.append(subscribe("tool.**.started", self._on_tool_started, mode="inline",
                                      local=True, name="tracing:tool.started"))
            self._registry = registry
            if self.config.decisions:
                if id(registry) not in self._listening:
                    self._listening.add(id(registry))
                    registry.add_change_listener(lambda: self._sync_decisions(registry))
                self._sync_decisions(registry)
        except BaseException:
            self.uninstall(registry)
            raise
        return handles

    def _sync_decisions(self, registry: HookRegistry) -> None:
        """Read ``hook.<point>`` events exactly at the points where some other hook is
        registered: a dispatch of this hook alone decides nothing, and every event the
        system publishes costs (the executor records per-hook results for it)."""
        if registry is not self._registry:
            return
        with self._sync_lock:
            mine = {h.id for h in self._handles}
            chains = registry.chains
            wanted = {str(point) for point in _DECISION_POINTS
                      if any(entry.id not in mine for entry in chains.get(point, ()))}
            subs = self._decision_subs
            for point in sorted(wanted - subs.keys()):
                subs[point] = self.bus.subscribe(f"hook.{point}", self._on_hook_event,
                                                 mode="inline", local=True,
                                                 name=f"tracing:hook.{point}")
            for point in sorted(subs.keys() - wanted):
                self.bus.unsubscribe(subs.pop(point))

    def uninstall(self, registry: HookRegistry) -> None:
        """Remove the hook, unsubscribe from the bus and end every span still open."""
        super().uninstall(registry)
        self._registry = None
        with self._sync_lock:
            handles = [*self._subscriptions, *self._decision_subs.values()]
            self._subscriptions = []
            self._decision_subs = {}
        for handle in handles:
            self.bus.unsubscribe(handle)
        for rec in self._open_spans.copy().values():
            if rec.open:
                self._finish(rec, closed_by="uninstall")

    def stats(self) -> TracingStats:
        """Spans started, ended and open; decisions recorded; the hook's own errors."""
        return TracingStats(active=self.active, spans_started=self._started,
                            spans_ended=self._ended, open_spans=len(self._open_spans),
                            closed_with_parent=self._closed_with_parent,
                            evicted=self._evicted, decisions=self._decisions,
                            errors=self._errors)

    def _failed(self, where: str) -> None:
        """The hook must never fail an operation: its own errors are logged and counted."""
        self._errors += 1
        logger.warning("tracing: %s failed", where, exc_info=True)

    # -- the hook -------------------------------------------------------------------------
    def execute(self, ctx: HookContext) -> HookOutput:
        """Start a span (before points) or note what the span needs (after/error points).
        Always returns ``None``."""
        handler = self._on_point.get(ctx.point)
        if handler is not None:
            try:
                handler(ctx)
            except Exception:
                self._failed(f"the {ctx.point} handler")
        return None

    def _live(self, rec: _Open | None) -> _Open | None:
        """``rec`` or its nearest ancestor that is still open."""
        while rec is not None and not rec.open:
            rec = rec.parent
        return rec

    def _find(self, kind: str, name: str | None = None, key: str | None = None
              ) -> _Open | None:
        """The open span of ``kind`` (and ``name``/``key``) the calling task is in."""
        rec = self._current.get()
        while rec is not None:
            if (rec.open and rec.kind == kind and (name is None or rec.name == name)
                    and (key is None or rec.key == key)):
                return rec
            rec = rec.parent
        if not self._open_spans or self._live(self._current.get()) is not None:
            return None
        return self._in_run(lambda r: r.kind == kind and (name is None or r.name == name)
                            and (key is None or r.key == key))

    def _match(self, test: Callable[[_Open], bool]) -> _Open | None:
        """The innermost open span of the calling task that passes ``test``."""
        rec = self._current.get()
        while rec is not None:
            if rec.open and test(rec):
                return rec
            rec = rec.parent
        if not self._open_spans or self._live(self._current.get()) is not None:
            return None
        return self._in_run(test)

    def _in_run(self, test: Callable[[_Open], bool]) -> _Open | None:
        """The newest open span of the current run that passes ``test``: for a task that
        has no span of its own although its run has some (a framework that runs each step
        of an agent in a context of its own, as LangGraph does, so what the hook set in
        one step is not seen in the next)."""
        run_id = current_run_id()
        if run_id is None:
            return None
        for rec in reversed(self._open_spans.copy().values()):
            if rec.run_id == run_id and rec.open and test(rec):
                return rec
        return None

    def _parent(self) -> _Open | None:
        """The span a call the calling task starts goes under: its current span, or (in a
        context the run's spans were not set in) the newest open agent, workflow, step or
        run span of its run."""
        parent = self._live(self._current.get())
        if parent is not None or not self._open_spans:
            return parent
        return self._in_run(_is_container)

    def _start(self, kind: str, name: str, key: str, span_name: str, client: bool,
               attributes: dict[str, Any], parent: _Open | None) -> _Open:
        """Start a span under ``parent`` (or the application's current span) and make it
        the calling task's current span."""
        assert self._tracer is not None
        if len(self._open_spans) >= self.config.max_open_spans:
            oldest = _first(self._open_spans)
            if oldest is not None:
                self._evicted += 1
                self._finish(oldest, closed_by="evicted")
                parent = self._live(parent)
        run_id = current_run_id()
        if run_id is not None:
            attributes[ATTR_RUN_ID] = run_id
            if self._replays:
                replay = self._replays.get(run_id)
                if replay is not None:
                    attributes["llmspell.run.replay_of"] = replay[0]
                    if replay[1]:
                        attributes["llmspell.run.replay_mode"] = replay[1]
        for attribute, value in attributes.items():
            if isinstance(value, str):
                attributes[attribute] = _clean(value)
        context: Context | None = None
        if parent is not None:
            context = parent.context
            if context is None:
                context = parent.context = self._in_context(parent.span)
        span = self._tracer.start_span(_clean(span_name), context=context,
                                       kind=self._client if client else self._internal,
                                       attributes=attributes)
        rec = _Open(span, kind, name, key, parent, run_id)
        self._started += 1
        if parent is not None:
            if parent.children is None:
                parent.children = [rec]
            else:
                parent.children.append(rec)
        self._open_spans[id(rec)] = rec
        self._current.set(rec)
        return rec

    def _retried(self, ctx: HookContext, kind: str, name: str, key: str = "") -> bool:
        """True when a before point is dispatched again for the same call (a hook's
        ``Retry`` at the before point): the span is already open."""
        attempt = ctx.data.get("attempt", 1)
        if attempt == 1:
            return False
        rec = self._current.get()
        return (rec is not None and rec.open and rec.kind == kind and rec.name == name
                and rec.key == key)

    def _framework_call(self, ctx: HookContext) -> bool:
        """True when ``ctx`` is a call the framework of a run opened by an adapter makes
        (and traces) itself (``framework_spans="decisions"``): one carrying the correlation
        id of the run's first ``BeforeAgentExecution``, which is the framework's agent. An
        llmspell agent the framework calls (in a tool, say) runs with a correlation id of
        its own, so it and its calls keep their spans."""
        run_id = current_run_id()
        framework = self._framework_runs.get(run_id) if run_id is not None else None
        if framework is None:
            return False
        if framework.correlation is None and ctx.point == HookPoint.BEFORE_AGENT_EXECUTION:
            framework.correlation = ctx.correlation_id
        return ctx.correlation_id == framework.correlation

    def _before_agent(self, ctx: HookContext) -> None:
        if self._framework_runs and self._framework_call(ctx):
            return
        name = ctx.component.name
        if self._retried(ctx, "agent", name):
            return
        self._start("agent", name, "", f"invoke_agent {name}", False, {
            ATTR_OPERATION: "invoke_agent", ATTR_AGENT_NAME: name,
            ATTR_CONVERSATION_ID: ctx.correlation_id,
        }, self._parent())

    def _after_agent(self, ctx: HookContext) -> None:
        rec = self._find("agent", ctx.component.name)
        if rec is None:
            return
        rec.end_hint = time.time_ns()
        result = ctx.data.get("result")
        if rec.recording and isinstance(result, dict):
            stop = result.get("stop_reason")
            if isinstance(stop, str):
                rec.span.set_attribute("llmspell.agent.stop_reason", _clean(stop))
            turns = _int(result.get("turns"))
            if turns is not None:
                rec.span.set_attribute("llmspell.agent.turns", turns)
        if HookPoint.AFTER_AGENT_EXECUTION.value not in self._decision_subs:
            self._finish(rec)  # no other hook here: nothing will change the outcome

    def _operation_error(self, ctx: HookContext) -> None:
        kind = str(ctx.component.type)  # a StrEnum, or a str from ComponentId(type="tool")
        rec = self._find(kind, ctx.component.name)
        if rec is None:
            return
        now = time.time_ns()
        failure = (now, *self._error_of(ctx.data))
        if rec.errors is None:
            rec.errors = [failure]
        else:
            rec.errors.append(failure)
        rec.end_hint = now
        if kind == "agent" and HookPoint.AGENT_ERROR.value not in self._decision_subs:
            self._finish(rec, error=failure[1:])  # no other hook here: the error stands

    def _before_model(self, ctx: HookContext) -> None:
        if self._framework_runs and self._framework_call(ctx):
            return
        data = ctx.data
        provider = str(data.get("provider") or "")
        model = str(data.get("model") or "")
        name = ctx.component.name
        if self._retried(ctx, "model", name):
            return
        attributes: dict[str, Any] = {
            ATTR_OPERATION: "chat", ATTR_PROVIDER: provider, ATTR_REQUEST_MODEL: model,
            ATTR_CONVERSATION_ID: ctx.correlation_id,
        }
        params = data.get("params")
        if isinstance(params, dict):
            temperature = params.get("temperature")
            if isinstance(temperature, int | float) and not isinstance(temperature, bool):
                attributes[_ATTR_TEMPERATURE] = float(temperature)
            max_tokens = _int(params.get("max_tokens"))
            if max_tokens is not None:
                attributes[_ATTR_MAX_TOKENS] = max_tokens
        parent = self._parent()
        if parent is not None and parent.kind == "agent" and not parent.model_set:
            parent.model_set = True
            if parent.recording:
                parent.span.set_attribute(ATTR_PROVIDER, _clean(provider))
                parent.span.set_attribute(ATTR_REQUEST_MODEL, _clean(model))
        self._start("model", name, "", f"chat {model}", True, attributes, parent)

    def _after_model(self, ctx: HookContext) -> None:
        rec = self._find("model", ctx.component.name)
        if rec is None or rec.parent is None or rec.parent.kind != "agent":
            return
        result = ctx.data.get("result")
        message = result.get("message") if isinstance(result, dict) else None
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        # The agent runs this answer's tool calls next, in order: their ids for the
        # execute_tool spans (the tool points do not carry them).
        rec.parent.calls = [(str(c.get("name")), str(c.get("id"))) for c in calls or ()
                            if isinstance(c, dict) and c.get("id")]

    def _before_tool(self, ctx: HookContext) -> None:
        if self._framework_runs and self._framework_call(ctx):
            return
        name = ctx.component.name
        if self._retried(ctx, "tool", name):
            return
        attributes: dict[str, Any] = {
            ATTR_OPERATION: "execute_tool", ATTR_TOOL_NAME: name, _ATTR_TOOL_TYPE: "function",
            ATTR_CONVERSATION_ID: ctx.correlation_id,
        }
        parent = self._parent()
        if parent is not None and parent.kind == "agent" and parent.calls:
            for i, (called, call_id) in enumerate(parent.calls):
                if called == name:
                    attributes[ATTR_TOOL_CALL_ID] = call_id
                    del parent.calls[i]
                    break
        self._start("tool", name, "", f"execute_tool {name}", False, attributes, parent)

    def _before_workflow(self, ctx: HookContext) -> None:
        data = ctx.data
        name = str(data.get("workflow") or ctx.component.name)
        workflow_id = str(data.get("workflow_id") or ctx.component.id)
        self._start("workflow", name, workflow_id, f"invoke_workflow {name}", False, {
            ATTR_OPERATION: "invoke_workflow", ATTR_WORKFLOW_NAME: name,
            "llmspell.workflow.id": workflow_id, _ATTR_CORRELATION: ctx.correlation_id,
        }, self._parent())

    def _before_stage(self, ctx: HookContext) -> None:
        data = ctx.data
        step = str(data.get("step") or "")
        key = f"{data.get('workflow_id')}\x00{step}"
        if self._retried(ctx, "step", step, key):
            return
        attributes: dict[str, Any] = {
            "llmspell.workflow.name": str(data.get("workflow") or ctx.component.name),
            "llmspell.workflow.step": step,
            "llmspell.workflow.step.kind": str(data.get("kind") or ""),
        }
        target = data.get("target")
        if isinstance(target, str) and target:
            attributes["llmspell.workflow.step.target"] = target
        index = _int(data.get("index"))
        if index is not None:
            attributes["llmspell.workflow.step.index"] = index
        self._start("step", step, key, f"step {step}", False, attributes,
                    self._parent())

    # -- ending ---------------------------------------------------------------------------
    def _finish(self, rec: _Open, *, error: tuple[str, str] | None = None,
                exc: BaseException | None = None, end_time: int | None = None,
                closed_by: str | None = None) -> None:
        """End ``rec`` (its open children first). ``error``: (type, message) it failed
        with; ``exc``: the exception itself, when the ending event was published while it
        was being handled."""
        if not rec.open:
            return
        if rec.children:  # cut off by this end: they fail with it, unless they failed
            for child in list(rec.children):
                if child.open:
                    self._closed_with_parent += 1
                    self._finish(child, error=None if child.errors else error,
                                 end_time=child.end_hint, closed_by=closed_by or "parent")
        rec.open = False
        self._open_spans.pop(id(rec), None)
        parent = rec.parent
        if parent is not None and parent.children:
            try:  # noqa: SIM105 - cheaper than contextlib.suppress on this path
                parent.children.remove(rec)
            except ValueError:
                pass
        self._ended += 1
        if error is None and closed_by is not None and rec.errors:
            error = rec.errors[-1][1:]  # it failed and nothing recovered it
        try:
            if rec.recording:
                self._close_span(rec, error, exc, closed_by)
        finally:
            rec.span.end(end_time=end_time)
        if parent is not None and parent.kind == "agent" and rec.kind == "model":
            parent.tokens_in += rec.tokens_in
            parent.tokens_out += rec.tokens_out
        current = self._current.get()
        if current is not None and not current.open:
            self._current.set(self._live(current))

    def _close_span(self, rec: _Open, error: tuple[str, str] | None,
                    exc: BaseException | None, closed_by: str | None) -> None:
        span = rec.span
        reason = getattr(exc, "reason", None) if exc is not None else None
        if isinstance(reason, str):
            reason = _free(reason, self._limit)
        for at, attributes in rec.pending or ():  # Cancels, waiting for their reason
            if isinstance(reason, str):
                attributes[ATTR_HOOK_REASON] = reason
            span.add_event(DECISION_EVENT, attributes, timestamp=at)
        room = self._limit + _NOTE_ROOM  # the texts were cut and masked when they came
        errors = rec.errors or []
        earlier = errors[:-1] if error is not None and errors else errors
        for at, kind, message in earlier:  # failed attempts a retry or recovery followed
            span.add_event("exception", {"exception.type": kind,
                                         "exception.message": _free(message, room)},
                           timestamp=at)
        if rec.kind == "agent" and (rec.tokens_in or rec.tokens_out):
            span.set_attribute(ATTR_INPUT_TOKENS, rec.tokens_in)
            span.set_attribute(ATTR_OUTPUT_TOKENS, rec.tokens_out)
        if closed_by is not None:
            span.set_attribute(_ATTR_CLOSED_BY, closed_by)
        if error is not None:
            kind, message = _clean(error[0], _MAX_NAME + _NOTE_ROOM), _free(error[1], room)
            span.set_attribute(ATTR_ERROR_TYPE, kind)
            span.set_status(self._status(self._status_error, message or kind))
            if exc is not None:
                span.add_event("exception", self._exception(exc))
            else:
                span.add_event("exception", {"exception.type": kind,
                                             "exception.message": message})

    def _exception(self, exc: BaseException) -> dict[str, Any]:
        """``Span.record_exception``'s attributes, with the message and the stack trace
        cut to ``max_content_chars`` (an exception may carry megabytes of data)."""
        cls = type(exc)
        module = cls.__module__
        name = f"{module}.{cls.__qualname__}" if module and module != "builtins" \
            else cls.__qualname__
        return {"exception.type": _clean(name),
                "exception.message": _free(exc, self._limit),
                "exception.stacktrace": _free(self._stack(exc), self._limit),
                "exception.escaped": "False"}

    @staticmethod
    def _stack(exc: BaseException) -> str:
        try:
            return "".join(traceback.format_exception(exc))
        except Exception:  # an exception whose __str__ fails, say
            return type(exc).__qualname__

    @staticmethod
    def _handled(error_type: str) -> BaseException | None:
        """The exception being handled where the failure event was published, if it is
        the one the event reports."""
        exc = sys.exc_info()[1]
        return exc if exc is not None and type(exc).__name__ == error_type else None

    def _error_of(self, data: Any) -> tuple[str, str]:
        """The (type, message) of a failure an event or a hook point reports, cut to fit
        a span."""
        if not isinstance(data, dict):
            return "Exception", ""
        return (_clean(data.get("error_type") or "Exception"),
                _free(data.get("error") or "", self._limit))

    def _failure(self, rec: _Open, data: Any) -> None:
        error = self._error_of(data)
        self._finish(rec, error=error, exc=self._handled(error[0]))

    # -- events ---------------------------------------------------------------------------
    def _on_tool_started(self, event: UniversalEvent) -> None:
        try:
            rec = self._find("tool", event.event_type[5:-8])
            data = event.data
            if rec is not None and rec.recording and isinstance(data, dict):
                rec.span.set_attribute(ATTR_TOOL_ARGUMENTS,
                                       _json(data.get("params"), self._limit))
        except Exception:
            self._failed("tool.started")

    def _on_tool_completed(self, event: UniversalEvent) -> None:
        try:
            rec = self._find("tool", event.event_type[5:-10])
            if rec is None:
                return
            data = event.data
            if rec.recording and isinstance(data, dict):
                span = rec.span
                attempts = _int(data.get("attempts"))
                if attempts is not None and attempts > 1:
                    span.set_attribute("llmspell.attempts", attempts)
                if data.get("cached"):
                    span.set_attribute("llmspell.cached", True)
                if self.capture:
                    span.set_attribute(ATTR_TOOL_RESULT, _json(data.get("result"), self._limit))
            self._finish(rec)
        except Exception:
            self._failed("tool.completed")

    def _on_tool_failed(self, event: UniversalEvent) -> None:
        try:
            rec = self._find("tool", event.event_type[5:-7])
            if rec is not None:
                self._failure(rec, event.data)
        except Exception:
            self._failed("tool.failed")

    def _model_record(self, event: UniversalEvent) -> _Open | None:
        data = event.data
        provider = event.event_type.split(".", 2)[1]
        model = data.get("model") if isinstance(data, dict) else None
        return self._find("model", f"{provider}/{model}")

    def _on_model_completed(self, event: UniversalEvent) -> None:
        try:
            rec = self._model_record(event)
            if rec is None:
                return
            data = event.data
            if rec.recording:
                self._model_attributes(rec, data)
            else:
                usage = data.get("usage")
                if isinstance(usage, dict):
                    rec.tokens_in = _int(usage.get("input_tokens")) or 0
                    rec.tokens_out = _int(usage.get("output_tokens")) or 0
            self._finish(rec)
        except Exception:
            self._failed("model.completed")

    def _model_attributes(self, rec: _Open, data: dict[str, Any]) -> None:
        span = rec.span
        answered = data.get("answered_by")
        if isinstance(answered, str) and answered:
            span.set_attribute(ATTR_RESPONSE_MODEL, _clean(answered))
        finish = data.get("finish_reason")
        if isinstance(finish, str) and finish:
            span.set_attribute(ATTR_FINISH_REASONS, (_clean(finish),))
        usage = data.get("usage")
        if isinstance(usage, dict):
            rec.tokens_in = _int(usage.get("input_tokens")) or 0
            rec.tokens_out = _int(usage.get("output_tokens")) or 0
            span.set_attribute(ATTR_INPUT_TOKENS, rec.tokens_in)
            span.set_attribute(ATTR_OUTPUT_TOKENS, rec.tokens_out)
            cached = _int(usage.get("cached_tokens"))
            if cached:
                span.set_attribute(_ATTR_CACHE_READ, cached)
            reasoning = _int(usage.get("reasoning_tokens"))
            if reasoning:
                span.set_attribute(_ATTR_REASONING, reasoning)
        cost = data.get("cost_usd")
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            span.set_attribute("llmspell.cost_usd", float(cost))
        for flag in ("cached", "replaced"):
            if data.get(flag):
                span.set_attribute(f"llmspell.{flag}", True)
        attempts = _int(data.get("attempts"))
        if attempts is not None and attempts > 1:
            span.set_attribute("llmspell.attempts", attempts)
        redirected = data.get("redirected_to")
        if isinstance(redirected, str):
            span.set_attribute("llmspell.redirected_to", _clean(redirected))
        if not self.capture:
            return
        request = data.get("request")
        messages = request.get("messages") if isinstance(request, dict) else None
        if isinstance(messages, list):
            system = [m for m in messages if isinstance(m, dict) and m.get("role") == "system"]
            rest = [_parts(m) for m in messages
                    if isinstance(m, dict) and m.get("role") != "system"]
            if system:
                span.set_attribute(ATTR_SYSTEM_INSTRUCTIONS, _json(
                    [p for m in system for p in _parts(m)["parts"]], self._limit))
            span.set_attribute(ATTR_INPUT_MESSAGES, _json(rest, self._limit))
        response = data.get("response")
        if isinstance(response, dict):
            out = _parts(response)
            if isinstance(finish, str):
                out["finish_reason"] = finish  # _json cleans the whole value
            span.set_attribute(ATTR_OUTPUT_MESSAGES, _json([out], self._limit))

    def _on_model_failed(self, event: UniversalEvent) -> None:
        try:
            rec = self._model_record(event)
            if rec is not None:
                self._failure(rec, event.data)
        except Exception:
            self._failed("model.failed")

    @staticmethod
    def _step_key(data: Any) -> str:
        return f"{data.get('workflow_id')}\x00{data.get('step')}" if isinstance(data, dict) \
            else ""

    def _on_stage_completed(self, event: UniversalEvent) -> None:
        try:
            rec = self._find("step", key=self._step_key(event.data))
            if rec is None:
                return
            data = event.data
            if rec.recording:
                attempts = _int(data.get("attempts"))
                if attempts is not None and attempts > 1:
                    rec.span.set_attribute("llmspell.attempts", attempts)
                if data.get("replaced"):
                    rec.span.set_attribute("llmspell.replaced", True)
            # A failed attempt that the step survived (a retry, on_error="continue", a
            # hook's Replace) stays on the span as an exception event.
            self._finish(rec)
        except Exception:
            self._failed("workflow stage_completed")

    def _on_stage_failed(self, event: UniversalEvent) -> None:
        try:
            rec = self._find("step", key=self._step_key(event.data))
            data = event.data
            if rec is None or not isinstance(data, dict):
                return
            now = time.time_ns()
            failure = (now, *self._error_of(data))
            if rec.errors is None:
                rec.errors = [failure]
            else:
                rec.errors.append(failure)
            rec.end_hint = now
        except Exception:
            self._failed("workflow stage_failed")

    def _workflow_record(self, event: UniversalEvent) -> _Open | None:
        data = event.data
        workflow_id = data.get("workflow_id") if isinstance(data, dict) else None
        return self._find("workflow", key=str(workflow_id))

    def _on_workflow_completed(self, event: UniversalEvent) -> None:
        try:
            rec = self._workflow_record(event)
            if rec is None:
                return
            status = event.data.get("status")
            if rec.recording and isinstance(status, str):
                rec.span.set_attribute("llmspell.workflow.status", _clean(status))
            self._finish(rec)
        except Exception:
            self._failed("workflow completed")

    def _on_workflow_failed(self, event: UniversalEvent) -> None:
        try:
            rec = self._workflow_record(event)
            if rec is not None:
                self._failure(rec, event.data)
        except Exception:
            self._failed("workflow failed")

    def _on_workflow_cancelled(self, event: UniversalEvent) -> None:
        try:
            rec = self._workflow_record(event)
            if rec is None:
                return
            data = event.data
            hook, reason = data.get("hook"), data.get("reason")
            message = f"cancelled by hook {hook!r}: {reason}" if hook else f"cancelled: {reason}"
            exc = sys.exc_info()[1]
            if not isinstance(exc, OperationCancelledError):
                exc = None
            kind = _CIRCUIT_OPEN if isinstance(exc, CircuitOpenError) else _CANCELLED
            self._finish(rec, error=(kind, _free(message, self._limit)), exc=exc)
        except Exception:
            self._failed("workflow cancelled")

    def _on_run_started(self, event: UniversalEvent) -> None:
        try:
            data = event.data
            run_id = str(data.get("run_id"))
            replay_of = data.get("replay_of")
            if isinstance(replay_of, str):
                mode = data.get("mode")
                if run_id not in self._replays and len(self._replays) >= \
                        self.config.max_open_spans:
                    # replays whose end was never seen (crashed, its end event dropped):
                    # oldest first, as the framework runs
                    _drop_oldest(self._replays)
                self._replays[run_id] = (_clean(replay_of),
                                         _clean(mode) if isinstance(mode, str) else None)
            kind, name = str(data.get("kind")), str(data.get("name"))
            framework = kind in self._skip_kinds
            if framework:
                if len(self._framework_runs) >= self.config.max_open_spans:
                    # runs whose end was never seen (an adapter dropped them): oldest first
                    _drop_oldest(self._framework_runs)
                self._framework_runs[run_id] = _Framework(
                    self._otel_current().get_span_context().span_id)
            if kind in _SPAN_RUN_KINDS or current_run_id() != run_id:
                return  # an agent or workflow span is the root; or not a run of this task
            rec = self._start("run", name, run_id, f"{kind} {name}", False, {
                "llmspell.run.kind": kind, "llmspell.run.name": name,
            }, self._parent())
            if framework:
                self._framework_runs[run_id].run = rec
        except Exception:
            self._failed("run.started")

    def _on_run_ended(self, event: UniversalEvent) -> None:
        try:
            data = event.data
            run_id = str(data.get("run_id"))
            self._replays.pop(run_id, None)
            self._framework_runs.pop(run_id, None)
            failure = data.get("error") if event.event_type == "run.failed" else None
            error = ((_clean(failure.get("type") or "Exception"),
                      _free(failure.get("message") or "", self._limit))
                     if isinstance(failure, dict) else None)
            left = [r for r in self._open_spans.copy().values() if r.run_id == run_id]
            for rec in left:  # outermost first: a parent ends its children
                if not rec.open:
                    continue
                if rec.kind == "run" and rec.key == run_id:
                    self._finish(rec, error=error)
                else:
                    self._closed_with_parent += 1
                    self._finish(rec, error=None if rec.errors else error,
                                 end_time=rec.end_hint, closed_by="run")
        except Exception:
            self._failed("run end")

    # -- hook decisions -------------------------------------------------------------------
    def _on_hook_event(self, event: UniversalEvent) -> None:
        try:
            self._decided(event)
        except Exception:
            self._failed("hook event")

    def _decided(self, event: UniversalEvent) -> None:
        data = event.data
        if self._framework_runs:
            run_id = current_run_id()
            framework = self._framework_runs.get(run_id) if run_id is not None else None
            if (framework is not None and framework.correlation is not None
                    and event.metadata.correlation_id == framework.correlation):
                self._framework_decided(event, str(run_id), framework)
                return
        point = str(data.get("point"))
        ctype = data.get("component_type")
        component = data.get("component")
        def about(r: _Open) -> bool:  # the span this dispatch was for
            return ((r.kind == ctype and r.name == component)
                    or (ctype == "workflow" and r.kind in ("workflow", "step")))

        rec = self._match(about)
        matched = rec is not None
        if rec is None:  # a point of something without a span (ToolValidation): the
            rec = self._parent()  # decision goes on the span it is in
            if rec is None:
                return
        if rec.recording:
            at = int(event.timestamp * 1e9)
            for _, kind, detail, attributes in _decisions(data, point, self.metadata.name,
                                                          self._limit):
                if kind == "cancel" and not detail:  # the reason comes with the error next
                    if rec.pending is None:
                        rec.pending = []
                    rec.pending.append((at, attributes))
                else:
                    rec.span.add_event(DECISION_EVENT, attributes, timestamp=at)
                self._decisions += 1
        if matched:
            self._end_on_decision(rec, point, str(data.get("result")), data.get("decided_by"))

    def _framework_decided(self, event: UniversalEvent, run_id: str,
                           framework: _Framework) -> None:
        """A decision about a call the framework traces itself: on OpenTelemetry's current
        span (the framework's span of the call) unless that is the span the run started
        under, else on the run's span."""
        span: Span | None = self._otel_current()
        context = span.get_span_context() if span is not None else None
        run = framework.run
        if (span is None or context is None or not context.is_valid
                or context.span_id == framework.outer or not span.is_recording()):
            if run is None or not run.open:
                run = self._parent()
            span = run.span if run is not None and run.recording else None
        if span is None:
            return
        data = event.data
        point = str(data.get("point"))
        at = int(event.timestamp * 1e9)
        decided_by, reason = data.get("decided_by"), data.get("reason")
        for hook, kind, detail, attributes in _decisions(data, point, self.metadata.name,
                                                         self._limit):
            attributes[ATTR_RUN_ID] = run_id
            if not detail and kind == "cancel" and hook == decided_by and isinstance(reason,
                                                                                    str):
                attributes[ATTR_HOOK_REASON] = _free(reason, self._limit)
            span.add_event(DECISION_EVENT, attributes, timestamp=at)
            self._decisions += 1

    def _end_on_decision(self, rec: _Open, point: str, result: str, hook: Any) -> None:
        """Agents publish no end event and a step a hook stopped publishes none either:
        their end is what the hooks at their points decided."""
        cancelled = (_CANCELLED,
                     _free(f"cancelled by hook {hook!r} at {point!r}", self._limit))
        if rec.kind == "agent":
            if point == HookPoint.BEFORE_AGENT_EXECUTION:
                if result == "cancel":
                    self._finish(rec, error=cancelled)
                elif result in ("replace", "redirect"):
                    self._finish(rec)
            elif point == HookPoint.AFTER_AGENT_EXECUTION:
                if result == "cancel":
                    self._finish(rec, error=cancelled, end_time=rec.end_hint)
                elif result != "retry":
                    self._finish(rec, end_time=rec.end_hint)
            elif point == HookPoint.AGENT_ERROR and result != "retry":
                if result == "cancel":
                    self._finish(rec, error=cancelled, end_time=rec.end_hint)
                elif result in ("replace", "redirect"):
                    self._finish(rec, end_time=rec.end_hint)  # recovered
                elif rec.errors:
                    self._finish(rec, error=rec.errors[-1][1:], end_time=rec.end_hint)
        elif rec.kind == "step" and point in _STEP_POINTS:
            if result == "cancel":
                self._finish(rec, error=cancelled)
            elif result == "redirect" and point == HookPoint.BEFORE_WORKFLOW_STAGE:
                self._finish(rec)


def otlp_tracer_provider(endpoint: str | None = None, *, service_name: str | None = None,
                         headers: dict[str, str] | None = None,
                         batch: bool = True) -> SdkTracerProvider:
    """An SDK tracer provider exporting over OTLP/HTTP (protobuf).

    ``endpoint``: the traces URL (``http://localhost:4318/v1/traces``); None reads the
    standard variables (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``; ``OTEL_EXPORTER_OTLP_HEADERS``).
    ``service_name``: the ``service.name`` resource attribute (None: ``OTEL_SERVICE_NAME``,
    else ``llmspell``). ``batch``: a ``BatchSpanProcessor`` (else one export per span,
    for short scripts and tests: each export then runs in the thread that ends the span,
    and a collector that is down or slow holds that thread, the event loop included, up to
    the exporter's timeout). Call ``provider.shutdown()`` at exit to send what is left.

    An endpoint that is not an ``http``/``https`` URL, or a header that is not one line of
    text, raises :class:`~llmspell.errors.InvalidValueError` here: the exporter would take
    it and then fail every export, losing every span.
    """
    _check_otlp(endpoint, headers, service_name)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider as SdkProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            SimpleSpanProcessor,
        )
    except ImportError as exc:
        raise ConfigurationError(
            "otlp_tracer_provider needs opentelemetry-sdk and "
            "opentelemetry-exporter-otlp-proto-http",
            hint="pip install 'llmspell[tracing]'") from exc
    name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "llmspell"
    provider = SdkProvider(resource=Resource.create({"service.name": name}))
    exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers)
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch
                                else SimpleSpanProcessor(exporter))
    return provider


_HEADER_NAME = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _check_otlp(endpoint: object, headers: object, service_name: object) -> None:
    """Refuse settings the OTLP exporter would accept and then fail every export with."""
    import urllib.parse  # noqa: PLC0415 - only for this check

    if endpoint is not None:
        try:
            parts = urllib.parse.urlsplit(endpoint) if isinstance(endpoint, str) else None
            host = parts.hostname if parts is not None else None
            if parts is not None:
                parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            parts = host = None
        if parts is None or parts.scheme not in ("http", "https") or not host \
                or _CONTROL_OR_SPACE.search(endpoint if isinstance(endpoint, str) else ""):
            raise InvalidValueError(
                f"otlp_tracer_provider: endpoint {str(endpoint)[:80]!r} is not an http(s) URL",
                hint="e.g. 'http://localhost:4318/v1/traces' (None reads "
                     "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)")
    if headers is not None:
        if not isinstance(headers, dict):
            raise InvalidValueError(
                f"otlp_tracer_provider: headers must be a dict of str to str, got "
                f"{type(headers).__name__}", hint="e.g. {'authorization': 'Bearer ...'}")
        for name, value in headers.items():
            if not isinstance(name, str) or not name or not set(name) <= _HEADER_NAME:
                raise InvalidValueError(
                    f"otlp_tracer_provider: header name {str(name)[:40]!r} is not an HTTP "
                    "token", hint="letters, digits and -, e.g. 'x-api-key'")
            if not isinstance(value, str) or _CONTROL.search(value) \
                    or value != value.strip():
                raise InvalidValueError(
                    f"otlp_tracer_provider: the value of header {name!r} is not one line of "
                    "text (a str without control characters or surrounding spaces)",
                    hint="a line break in a header would forge others: remove it")
    if service_name is not None and (not isinstance(service_name, str)
                                     or len(service_name) > _MAX_NAME):
        raise InvalidValueError(
            f"otlp_tracer_provider: service_name must be a str of at most {_MAX_NAME} "
            f"characters, got {str(service_name)[:40]!r}", hint="e.g. 'checkout-agent'")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
