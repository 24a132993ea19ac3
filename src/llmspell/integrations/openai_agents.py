"""llmspell hooks, built-ins and events inside the OpenAI Agents SDK (``openai-agents`` 0.24).

Install: ``pip install 'llmspell[openai-agents]'``. One object, :class:`OpenAIAgentsAdapter`,
maps llmspell's points onto the SDK's own seams (docs/integrations/openai-agents.md has the
table of which results each seam honours):

* **the run** (``adapter.run`` / ``adapter.run_streamed`` around ``Runner.run`` /
  ``Runner.run_streamed``): one llmspell run (``system.runs``) per SDK run, with
  ``BeforeAgentExecution``/``AfterAgentExecution``/``AgentError`` around it through
  :func:`llmspell.runtime.calls.run_hooked` (all nine results);
* **model calls**: ``RunConfig.call_model_input_filter`` runs ``BeforeModelCall``
  (``Modified`` rewrites the input, ``Cancel`` raises
  :class:`~llmspell.errors.ModelCallCancelledError`), ``RunHooks.on_llm_end`` runs
  ``AfterModelCall`` (``Cancel``), and the SDK's retry policy
  (``ModelSettings.retry``) runs ``ModelCallError`` (``Retry``);
* **tool calls**: every function tool of the agent (and of its handoff targets) gets an
  input guardrail (``BeforeToolExecution``: ``Cancel`` rejects the call, the model is told
  why), an output guardrail (carries out an ``AfterToolExecution`` ``Cancel``) and a
  governed invoker (``Modified`` arguments, ``Replace``, ``Redirect``, ``Retry``, ``Fork``,
  ``Cache``, ``ToolError`` recovery); ``RunConfig.tool_error_formatter`` reports a tool's
  exception that the SDK's default failure handler caught;
* **observation**: ``RunHooks`` publish ``agent.*``, ``model.*`` and ``tool.*`` events;
  :class:`LlmspellTracingProcessor` forwards the SDK's spans as
  ``openai_agents.span.<type>`` events.

A result a seam cannot honour raises :class:`~llmspell.errors.UnsupportedHookResultError`
the first time a hook returns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import inspect
import itertools
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from llmspell.core.errors import (
    IntegrationError,
    InvalidValueError,
    ModelCallCancelledError,
    OperationCancelled,
    ToolExecutionError,
    UnsupportedHookResultError,
)
from llmspell.core.ids import new_id
from llmspell.core.operation_scope import OperationScope
from llmspell.hooks.context import ComponentType, HookContext
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import (
    Cancel,
    Continue,
    ForkOperation,
    Modified,
    Redirect,
    Replace,
    Retry,
    cancelled_error,
    model_call_cancelled_error,
)
from llmspell.integrations import _bridge as bridge
from llmspell.runtime.calls import (
    CallPoints,
    ResultCache,
    cache_key,
    context_as,
    current_context,
    in_fork,
    inherited_context,
    run_forks,
    run_hooked,
    scoped_cache,
)
from llmspell.runtime.models import messages_from
from llmspell.runtime.nesting import nested
from llmspell.runtime.tools.registry import (
    MAX_TOOL_REDIRECTS,
    SideEffects,
    ToolAttemptEffects,
    current_side_effects,
    redirect_loop_error,
)

if TYPE_CHECKING:
    from agents import Agent, ModelSettings, RunConfig, RunResult, RunResultStreaming
    from agents.tool import FunctionTool

__all__ = [
    "DISTRIBUTION",
    "FRAMEWORK",
    "HONOURED",
    "SUPPORTED",
    "LlmspellTracingProcessor",
    "OpenAIAgentsAdapter",
    "OpenAIAgentsRun",
    "StreamedRun",
    "check_version",
    "items_to_messages",
    "messages_to_items",
]

FRAMEWORK: Final = "openai-agents"
DISTRIBUTION: Final = "openai-agents"
SUPPORTED: Final = ">=0.24,<0.25"

_TOOL_POINTS = CallPoints(HookPoint.BEFORE_TOOL_EXECUTION, HookPoint.AFTER_TOOL_EXECUTION,
                          HookPoint.TOOL_ERROR)
_AGENT_POINTS = CallPoints(HookPoint.BEFORE_AGENT_EXECUTION, HookPoint.AFTER_AGENT_EXECUTION,
                           HookPoint.AGENT_ERROR)
HONOURED: Final[dict[str, frozenset[str]]] = {
    HookPoint.BEFORE_AGENT_EXECUTION: bridge.ALL_RESULTS,
    HookPoint.AFTER_AGENT_EXECUTION: bridge.ALL_RESULTS,
    HookPoint.AGENT_ERROR: bridge.ALL_RESULTS,
    HookPoint.BEFORE_MODEL_CALL: frozenset({"modified", "cancel"}),
    HookPoint.AFTER_MODEL_CALL: frozenset({"cancel"}),
    HookPoint.MODEL_CALL_ERROR: frozenset({"retry"}),
    HookPoint.BEFORE_TOOL_EXECUTION: bridge.ALL_RESULTS,
    HookPoint.AFTER_TOOL_EXECUTION: frozenset({"modified", "replace", "cancel", "retry",
                                               "redirect", "fork", "cache"}),
    HookPoint.TOOL_ERROR: frozenset({"replace", "retry", "redirect", "cancel"}),
}
"""Per point, the result kinds the adapter honours (``continue`` and ``skipped`` always)."""

_HINTS: Final[dict[str, str]] = {
    HookPoint.BEFORE_MODEL_CALL: "the SDK's call_model_input_filter can rewrite the input or "
    "stop the run, not answer for the model; see docs/integrations/openai-agents.md",
    HookPoint.AFTER_MODEL_CALL: "RunHooks.on_llm_end observes the answer; it can only stop "
    "the run (Cancel)",
    HookPoint.MODEL_CALL_ERROR: "the SDK's retry policy can only retry a failed model call",
    HookPoint.TOOL_ERROR: "a failed tool call can be recovered (Replace), retried, "
    "redirected or cancelled",
}
_UNSEAMED_PARAMS: Final[dict[str, str]] = {
    "temperature": "set it on the agent's model_settings (a clone: agent.clone("
    "model_settings=...)) or RunConfig.model_settings",
    "max_tokens": "set it on the agent's model_settings (a clone: agent.clone("
    "model_settings=...)) or RunConfig.model_settings",
    "tools": "withhold a tool with its is_enabled (a bool, or a callable of the run context "
    "and the agent), or run a clone of the agent with fewer tools",
    "stream": "stream with adapter.run_streamed, not from a hook",
}
"""The ``params`` fields of a model call the SDK's ``call_model_input_filter`` cannot
change (it rewrites only the input and instructions: the SDK resolves the model
settings and the tools on its own), with what to do instead."""
_MAX_MODEL_RETRIES = 10
_SOURCE = "llmspell.integrations.openai_agents"
_DECODE_JSON = msgspec.json.Decoder().decode


def check_version() -> str:
    """The installed openai-agents version; raises
    :class:`~llmspell.errors.UnsupportedFrameworkVersionError` outside :data:`SUPPORTED`."""
    return bridge.check_version(FRAMEWORK, DISTRIBUTION, SUPPORTED)


# -- the request as hooks see it ------------------------------------------------------------

def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    dump = getattr(item, "model_dump", None)
    if callable(dump):
        out: dict[str, Any] = dump(mode="json", exclude_none=True)
        return out
    return {"type": type(item).__name__, "text": str(item)}


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") if isinstance(p, Mapping) else getattr(p, "text", None)
                 for p in content]
        return "".join(p for p in parts if isinstance(p, str))
    return str(content)


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw:
        return {}
    try:
        parsed = _DECODE_JSON(raw)  # per tool call in every model call's conversation
    except msgspec.DecodeError:
        try:  # what msgspec refuses and json takes (NaN, huge numbers)
            parsed = json.loads(raw)
        except (ValueError, RecursionError):
            return {"_raw": raw}
    except RecursionError:  # nested past what a decoder will follow: shown as text
        return {"_raw": raw}
    return parsed if isinstance(parsed, dict) else {"_raw": parsed}


class _Attributes:
    """``.get(key)`` over an object's attributes (a pydantic output item), so that it
    reads like an input item's dict without being dumped."""

    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item

    def get(self, key: str) -> Any:
        return getattr(self.item, key, None)


def _fields(item: Any) -> Mapping[str, Any] | _Attributes:
    """An SDK item (a dict, as input items are, or a pydantic model, as output items
    are) readable with ``.get``, without copying or dumping it."""
    if type(item) is dict or isinstance(item, Mapping):
        return item
    return _Attributes(item)


_TRANSPORT_SETTINGS: Final = frozenset({
    "retry", "timeout", "metadata", "store", "include_usage", "extra_headers",
    "prompt_cache_retention", "prompt_cache_options", "preserve_raw_usage"})
"""ModelSettings fields that do not change the answer (retry policy, timeouts, request
metadata and headers, storage and usage reporting, prompt caching): left out of
``params.settings``, where a request id or a policy object would make every call a cache
miss."""


def _request_settings(agent: Any, settings: Any) -> dict[str, Any]:
    """``params.settings`` of a model call: the agent's model settings (with the run's
    laid over them) but temperature, max_tokens and :data:`_TRANSPORT_SETTINGS`
    (``top_p``, ``tool_choice``, ``parallel_tool_calls``, ``reasoning``...), the output
    type it asks for (``output``: name, JSON Schema, strict), the handoffs and the
    agent's tools other than function tools (hosted tools) it offers: what besides the
    messages and function tools can change the answer."""
    from agents.tool import FunctionTool  # noqa: PLC0415

    fields = {f.name: getattr(settings, f.name)
              for f in dataclasses.fields(settings)} if dataclasses.is_dataclass(
        settings) else {}
    output = _output_setting(agent.output_type)
    handoffs = [getattr(h, "tool_name", None) or getattr(h, "name", None) or repr(h)
                for h in agent.handoffs or ()]
    hosted = [bridge.json_value(t) for t in agent.tools or ()
              if not isinstance(t, FunctionTool)]
    return bridge.request_settings(fields, skip=_TRANSPORT_SETTINGS, output=output,
                                   handoffs=handoffs or None, hosted_tools=hosted or None)


_OUTPUTS: dict[Any, Any] = {}
_MAX_OUTPUTS = 256


def _output_setting(kind: Any) -> Any:
    """The ``output`` of ``params.settings`` for an agent's ``output_type``: its name,
    JSON Schema and strictness (None for text). Describing a type builds a pydantic
    adapter (about 0.2 ms), so a type's description is kept (at most
    :data:`_MAX_OUTPUTS` of them), not made again at every model call."""
    if kind is None or kind is str:
        return None
    try:
        return _OUTPUTS[kind]
    except (KeyError, TypeError):  # not seen yet, or not hashable (never kept)
        pass
    try:
        from agents import AgentOutputSchema, AgentOutputSchemaBase  # noqa: PLC0415

        schema = kind if isinstance(kind, AgentOutputSchemaBase) else AgentOutputSchema(kind)
        output = None if schema.is_plain_text() else {
            "name": schema.name(), "schema": schema.json_schema(),
            "strict": schema.is_strict_json_schema()}
    except Exception:  # a type the SDK cannot describe: its text stands for it
        output = {"type": repr(kind)}
    with contextlib.suppress(TypeError):
        if len(_OUTPUTS) < _MAX_OUTPUTS:
            _OUTPUTS[kind] = output
    return output


_SDK_MESSAGE = "_llmspell_sdk_message"
"""Where the error of a redirect target that the SDK's failure handler caught carries the
message the SDK made of it (for the model, once the failure has gone through llmspell)."""


def _said_by_sdk(error: BaseException, message: Any) -> None:
    with contextlib.suppress(AttributeError, TypeError):  # an error without a __dict__
        error.__dict__[_SDK_MESSAGE] = (message,)


def _sdk_message(error: BaseException) -> tuple[Any] | None:
    """``(message,)`` the SDK made of ``error`` (a redirect target's failure it caught),
    taken off the error; None for any other error."""
    found = getattr(error, "__dict__", {}).pop(_SDK_MESSAGE, None)
    return found if isinstance(found, tuple) else None


def items_to_messages(instructions: str | None, items: str | Sequence[Any]
                      ) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """The SDK's model input (Responses-format items) as llmspell messages, and for each
    message the indices of the items it came from (items with no message form, such as
    reasoning, travel with the next message)."""
    messages: list[dict[str, Any]] = []
    sources: list[list[int]] = []
    if instructions:
        messages.append(bridge.message_dict("system", instructions))
        sources.append([])
    if isinstance(items, str):
        messages.append(bridge.message_dict("user", items))
        sources.append([])
        return messages, sources
    pending: list[int] = []
    # Runs once per model call over the whole conversation: the messages are spelled as
    # dict literals (bridge.message_dict's shape) and the items read in place.
    for index, raw in enumerate(items):
        item = _fields(raw)
        kind = item.get("type")
        if kind == "function_call":
            call = bridge.tool_call_dict(item.get("call_id"), str(item.get("name") or ""),
                                         _arguments(item.get("arguments")))
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not pending and (
                    last["tool_calls"] or sources[-1]):
                last["tool_calls"].append(call)
                sources[-1].append(index)
                continue
            messages.append({"role": "assistant", "content": None, "tool_calls": [call],
                             "tool_call_id": None, "name": None})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                if type(item) is _Attributes:  # a model's parts: their JSON form
                    output = _as_dict(raw).get("output")
                output = json.dumps(output, default=str)
            messages.append({"role": "tool", "content": output, "tool_calls": [],
                             "tool_call_id": str(item.get("call_id") or ""),
                             "name": None})
        elif kind in (None, "message") and (role := item.get("role")) is not None:
            role = "system" if role == "developer" else role
            if role not in ("system", "user", "assistant"):
                pending.append(index)
                continue
            messages.append({"role": role, "content": _text(item.get("content")),
                             "tool_calls": [], "tool_call_id": None, "name": None})
        else:
            pending.append(index)
            continue
        sources.append([*pending, index] if pending else [index])
        pending = []
    if pending and sources:
        sources[-1].extend(pending)
    return messages, sources


def _message_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    role = message.get("role")
    if role == "tool":
        return [{"type": "function_call_output", "call_id": message.get("tool_call_id") or "",
                 "output": message.get("content") or ""}]
    items: list[dict[str, Any]] = []
    if message.get("content") is not None or not message.get("tool_calls"):
        items.append({"role": role, "content": message.get("content") or ""})
    items.extend({"type": "function_call", "call_id": call.get("id") or new_id(),
                  "name": call.get("name"),
                  "arguments": json.dumps(call.get("arguments") or {})}
                 for call in message.get("tool_calls") or [])
    return items


def messages_to_items(messages: list[dict[str, Any]], original: list[dict[str, Any]],
                      sources: list[list[int]], items: str | Sequence[Any]
                      ) -> tuple[str | None, list[Any]]:
    """The instructions and items for a message list a hook rewrote: a message left as it
    was keeps its original items; a changed one is rebuilt (rebuilt items carry no ids)."""
    messages_from(messages)  # typed errors naming a malformed field
    start = 0
    instructions_parts: list[str] = []
    while start < len(messages) and messages[start].get("role") == "system":
        instructions_parts.append(messages[start].get("content") or "")
        start += 1
    same_shape = len(messages) == len(original) and not isinstance(items, str)
    out: list[Any] = []
    for i in range(start, len(messages)):
        message = messages[i]
        if same_shape and message == original[i] and sources[i]:
            out.extend(items[j] for j in sources[i])
        else:
            if same_shape:  # items with no message form stay where they were
                out.extend(items[j] for j in sources[i]
                           if _fields(items[j]).get("type") not in
                           ("function_call", "function_call_output", "message", None))
            if message.get("role") == "system":
                out.append({"role": "system", "content": message.get("content") or ""})
            else:
                out.extend(_message_items(message))
    instructions = "\n\n".join(instructions_parts) if instructions_parts else None
    return instructions, out


def _refuse_unseamed(shown: dict[str, Any], changed: dict[str, Any],
                     hook: str | None) -> None:
    """Refuse what a ``BeforeModelCall`` ``Modified`` changed in ``params`` besides the
    messages (``shown``: the params the hooks were shown; a field left out is unchanged):
    ``settings`` as every adapter does (:class:`~llmspell.errors.InvalidValueError`), any
    other field with :class:`~llmspell.errors.UnsupportedHookResultError` naming it, since
    the SDK's ``call_model_input_filter`` can change only the input and instructions."""
    if "settings" in changed and (changed["settings"] or None) != (
            shown.get("settings") or None):  # none shown: left out of params
        raise bridge.settings_changed(
            "BeforeModelCall", "change the messages, or set the setting on the agent's "
            "model_settings or RunConfig.model_settings")
    for key, value in changed.items():
        if key in ("messages", "settings") or value == shown.get(key) or (
                key == "tools" and _tool_names(value) == _tool_names(shown.get(key))):
            continue
        instead = _UNSEAMED_PARAMS.get(
            key, "params holds messages, tools, temperature, max_tokens, stream and "
            "settings; a hook can change only the messages here")
        raise UnsupportedHookResultError(
            FRAMEWORK, str(HookPoint.BEFORE_MODEL_CALL), f"a changed params.{key} (Modified)",
            hook, hint="the SDK's call_model_input_filter can rewrite only the input and "
                       f"instructions (params.messages), not params.{key}: {instead}")


def _tool_names(tools: Any) -> Any:
    """The names of ``params.tools`` (an empty table, as a script's empty list may come
    back, is no tools), or ``tools`` itself when it is not a list."""
    if tools == {}:
        return []
    if not isinstance(tools, list | tuple):
        return tools
    return [t.get("name") if isinstance(t, dict) else t for t in tools]


def _response_message(output: Sequence[Any]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for raw in output:
        item = _fields(raw)
        kind = item.get("type")
        if kind == "function_call":
            calls.append(bridge.tool_call_dict(item.get("call_id"), str(item.get("name")),
                                               _arguments(item.get("arguments"))))
        elif kind == "message":
            text = _text(item.get("content"))
            if text:
                texts.append(text)
    return bridge.message_dict("assistant", "".join(texts) if texts else None,
                               tool_calls=calls)


def _usage(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    cached = getattr(getattr(usage, "input_tokens_details", None), "cached_tokens", 0) or 0
    reasoning = getattr(getattr(usage, "output_tokens_details", None),
                        "reasoning_tokens", 0) or 0
    return bridge.usage_dict(int(usage.input_tokens or 0), int(usage.output_tokens or 0),
                             total_tokens=int(usage.total_tokens or 0),
                             cached_tokens=int(cached), reasoning_tokens=int(reasoning))


# -- per-run state --------------------------------------------------------------------------

@dataclasses.dataclass
class _ToolCall:
    """What the input guardrail decided for one tool call, for the invoker to carry out."""

    params: dict[str, Any]
    raw: str | None = None
    """The model's own arguments text: what the tool is given while no hook rewrote
    ``params`` (text that is not a JSON object fails in the tool as it would without
    the adapter, instead of reaching it as ``{"_raw": ...}``)."""
    ctx: HookContext | None = None
    replace: tuple[bool, Any] = (False, None)
    cached: bool = False
    redirect: str | None = None
    forks: tuple[ForkOperation, ...] = ()
    cache_key: tuple[str, float | None] | None = None
    after_cancel: str | None = None


@dataclasses.dataclass
class _RunState:
    correlation: str
    streamed: bool
    agent_name: str
    turn: int = 0
    ctx: HookContext | None = None
    """The run's context (its ``BeforeAgentExecution``'s, else its parent; a redirect
    target's, the hook's): the parent of its model and tool calls (handoffs included), so
    the metadata naming the user reaches them."""
    request: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_ctx: HookContext | None = None
    model_started: float = 0.0
    in_flight: str | None = None
    calls: dict[str, _ToolCall] = dataclasses.field(default_factory=dict)
    tool_errors: dict[str, BaseException] = dataclasses.field(default_factory=dict)
    forks_with: tuple[Any, Mapping[str, Any], Any] = (None, {}, "")
    """What an agent ``Fork`` at one of the run's tool points runs with, as one at its agent
    points does: the run's own ``run_config`` (before the adapter extended it), its
    ``Runner.run`` keyword arguments (``context``, ``max_turns``) and its input."""


_CURRENT: contextvars.ContextVar[_RunState | None] = contextvars.ContextVar(
    "llmspell_openai_agents_run", default=None)


_CLONES: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
"""Every governed clone, by id, whichever adapter made it (so that no adapter governs
another's clone a second time)."""


def _weak_key(table: dict[int, Any], obj: Any) -> weakref.ref[Any]:
    """A weak reference to ``obj`` that removes ``table[id(obj)]`` when ``obj`` dies (an
    entry is ``(this reference, ...)``: one a later object with the same id put there
    stays). Agents are unhashable dataclasses, so no ``WeakKeyDictionary``."""
    key = id(obj)

    def forget(ref: weakref.ref[Any]) -> None:
        entry = table.get(key)
        if entry is not None and entry[0] is ref:
            del table[key]

    return weakref.ref(obj, forget)


_OURS = (UnsupportedHookResultError, OperationCancelled, ModelCallCancelledError,
         ToolExecutionError)


def _ours(exc: Exception) -> Exception:
    """The llmspell error a seam raised, when the SDK wrapped it (a tool's error becomes
    ``UserError("Error running tool ...")``); else ``exc``."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, _OURS):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _state() -> _RunState:
    state = _CURRENT.get()
    if state is None:
        raise IntegrationError(
            "an llmspell OpenAI Agents seam ran outside an adapter run",
            hint="run the agent with adapter.run(...) or adapter.run_streamed(...)")
    return state


# -- what a run produced --------------------------------------------------------------------

@dataclasses.dataclass
class OpenAIAgentsRun:
    """The outcome of :meth:`OpenAIAgentsAdapter.run`: the final output (the SDK's, or what
    a hook replaced it with), the SDK's ``RunResult`` (None when no SDK run produced the
    output) and how it came about."""

    final_output: Any
    result: RunResult | None
    run_id: str | None
    correlation_id: str
    attempts: int = 1
    cached: bool = False
    replaced: bool = False
    redirected_to: str | None = None
    forks: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class StreamedRun:
    """A streamed adapter run: ``async for event in run.stream_events()`` yields the SDK's
    stream events; afterwards ``final_output``, ``result`` and ``run_id`` are set. Events of
    an attempt a hook retried have already been yielded."""

    def __init__(self, adapter: OpenAIAgentsAdapter, agent: Agent[Any], input: Any,
                 kwargs: dict[str, Any]) -> None:
        self._adapter = adapter
        self._agent = agent
        self._input = input
        self._kwargs = kwargs
        self.final_output: Any = None
        self.result: RunResultStreaming | None = None
        self.outcome: OpenAIAgentsRun | None = None

    @property
    def run_id(self) -> str | None:
        """The llmspell run's id, once the run ended."""
        return self.outcome.run_id if self.outcome is not None else None

    async def stream_events(self) -> AsyncIterator[Any]:
        """Run the agent, yielding the SDK's stream events as they come."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        async def sink(event: Any) -> None:
            await queue.put(event)

        async def drive() -> OpenAIAgentsRun:
            try:
                return await self._adapter._run(self._agent, self._input, self._kwargs,
                                                stream_to=sink, streamed=self)
            finally:
                await queue.put(done)

        task = asyncio.ensure_future(drive())
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                yield item
            self.outcome = await task
            self.final_output = self.outcome.final_output
        finally:
            if not task.done():  # the caller stopped reading (cancelled, or broke out)
                task.cancel()
                # Waited for, so that the run has ended (its agent.*.failed published, the
                # run store's record closed) when the caller goes on; the caller's own
                # exception (CancelledError, GeneratorExit) is what propagates.
                await asyncio.wait((task,))
                if not task.cancelled():
                    task.exception()  # retrieved: not logged as never retrieved


# -- the adapter ----------------------------------------------------------------------------

class OpenAIAgentsAdapter:
    """Installs llmspell's hooks, built-ins and events into OpenAI Agents SDK runs.

    ``provider``: the provider name model points and events use (``"openai"``: the cost
    hook's prices for OpenAI models apply). ``tool_cancel``: what a ``Cancel`` at a tool
    point does: ``"reject"`` (the SDK's ``reject_content``: the model is told the call was
    refused and the run goes on, as an llmspell agent does) or ``"raise"`` (the SDK's
    tripwire: ``ToolInputGuardrailTripwireTriggered``/``ToolOutputGuardrailTripwireTriggered``
    ends the run). Raises :class:`~llmspell.errors.UnsupportedFrameworkVersionError` when the
    installed SDK is outside :data:`SUPPORTED`.
    """

    def __init__(self, system: Any, *, provider: str = "openai",
                 tool_cancel: str = "reject") -> None:
        check_version()
        bridge.require("agents", FRAMEWORK, "the OpenAI Agents SDK adapter")
        if tool_cancel not in ("reject", "raise"):
            raise InvalidValueError(f"tool_cancel must be 'reject' or 'raise', "
                                    f"got {tool_cancel!r}")
        if not isinstance(provider, str) or not provider:
            raise InvalidValueError("provider must be a non-empty name such as 'openai'")
        self.system = system
        self.provider = provider
        self.tool_cancel = tool_cancel
        self.sink = bridge.EventSink(system, _SOURCE)
        self.agent_cache = ResultCache()
        self.tool_cache = ResultCache()
        # Weak on the agents (a process may build an Agent per request): an original's
        # entry holds its clone, alive as long as the original is; a clone's entry (its
        # tools as the user gave them) lives as long as the clone does.
        self._governed: dict[int, tuple[weakref.ref[Any], Agent[Any]]] = {}
        self._by_name: weakref.WeakValueDictionary[str, Agent[Any]] = (
            weakref.WeakValueDictionary())
        self._originals: dict[int, tuple[weakref.ref[Any], dict[str, FunctionTool]]] = {}
        self._hooks = _make_run_hooks(self)
        self._checked = bridge.CheckedSystem(system, FRAMEWORK, HONOURED)
        self._fork_ids = itertools.count(1)  # the call ids of forked tool calls

    # -- public API ---------------------------------------------------------------------
    @property
    def hooks(self) -> Any:
        """The ``RunHooks`` the adapter passes to ``Runner.run``."""
        return self._hooks

    def govern(self, agent: Agent[Any]) -> Agent[Any]:
        """A clone of ``agent`` whose function tools carry the llmspell guardrails and
        invoker, and whose handoff agents are governed the same way (cycles kept). Cached:
        the same agent gives the same clone."""
        from agents import Agent  # noqa: PLC0415 - optional dependency
        from agents.tool import FunctionTool  # noqa: PLC0415

        if not isinstance(agent, Agent):
            raise InvalidValueError(
                f"the OpenAI Agents adapter runs an agents.Agent, got "
                f"{type(agent).__name__}",
                hint="pass the Agent itself: adapter.run(Agent(name=..., ...), input)")
        found = self._governed.get(id(agent))
        if found is not None and found[0]() is agent:
            return found[1]
        if self._tools_of(agent) is not None:  # already this adapter's clone
            return agent
        if _CLONES.get(id(agent)) is agent:
            raise IntegrationError(
                f"the agent {agent.name!r} is already governed by another "
                "OpenAIAgentsAdapter: its hooks would run twice on every call",
                hint="run it through the adapter that governed it, or give this adapter "
                     "the original agent")
        clone = agent.clone(model_settings=self._retrying(agent.model_settings))
        # Registered before the handoffs are governed: a handoff cycle finds this clone.
        self._governed[id(agent)] = (_weak_key(self._governed, agent), clone)
        _CLONES[id(clone)] = clone
        self._by_name.setdefault(agent.name, clone)
        self._originals[id(clone)] = (_weak_key(self._originals, clone),
                                      {t.name: t for t in agent.tools
                                       if isinstance(t, FunctionTool)})
        clone.tools = [self._govern_tool(t, clone) if isinstance(t, FunctionTool) else t
                       for t in agent.tools]
        clone.handoffs = [self.govern(h) if isinstance(h, Agent) else h
                          for h in agent.handoffs]
        return clone

    def _tools_of(self, clone: Any) -> dict[str, FunctionTool] | None:
        """The function tools (as given, ungoverned) of this adapter's clone ``clone``;
        None when ``clone`` is not one."""
        entry = self._originals.get(id(clone))
        if entry is None or entry[0]() is not clone:
            return None
        return entry[1]

    def run_config(self, base: RunConfig | None = None) -> RunConfig:
        """``base`` (or a new ``RunConfig``) with the adapter's model-input filter and tool
        error formatter (a base's own filter and formatter run first). The retry policy
        through which ``ModelCallError`` hooks decide sits on the governed agent's
        ``model_settings``; a ``base`` that sets its own ``model_settings.retry`` gets it
        there too (the SDK lets the run's retry settings override the agent's), its policy
        deciding when no hook did."""
        from agents import RunConfig  # noqa: PLC0415

        config = dataclasses.replace(base) if base is not None else RunConfig()
        own_filter = config.call_model_input_filter
        own_formatter = config.tool_error_formatter

        async def model_input(data: Any) -> Any:
            if own_filter is not None:
                changed = own_filter(data)
                changed = await changed if inspect.isawaitable(changed) else changed
                data = dataclasses.replace(data, model_data=changed)
            return await self._before_model(data)

        async def tool_error(args: Any) -> str | None:
            state = _CURRENT.get()
            if state is not None and args.kind == "tool_exception" and args.error is not None:
                state.tool_errors[args.call_id] = args.error
            if own_formatter is not None:
                message = own_formatter(args)
                text = await message if inspect.isawaitable(message) else message
                return text if isinstance(text, str) else None
            return None

        config.call_model_input_filter = model_input
        config.tool_error_formatter = tool_error
        settings = config.model_settings
        if settings is not None and settings.retry is not None:
            config.model_settings = self._retrying(settings)
        return config

    def _retrying(self, settings: ModelSettings) -> ModelSettings:
        """``settings`` whose retry policy asks the ModelCallError hooks first, then the
        policy ``settings`` had (no retry when neither decides).

        On the governed agent rather than only the run's config: the SDK merges a run's
        model settings into the agent's on every model call, which costs a validated copy
        of the settings each time when the run's config carries any."""
        from agents.retry import ModelRetrySettings  # noqa: PLC0415

        own_retry = settings.retry

        async def retry_policy(ctx: Any) -> Any:
            decided = await self._model_error(ctx)
            if decided is not None:
                return decided
            if own_retry is not None and own_retry.policy is not None:
                value = own_retry.policy(ctx)
                return await value if inspect.isawaitable(value) else value
            return False

        retries = max(_MAX_MODEL_RETRIES, (own_retry.max_retries or 0) if own_retry else 0)
        return dataclasses.replace(settings, retry=ModelRetrySettings(
            max_retries=retries, backoff=own_retry.backoff if own_retry else None,
            policy=retry_policy))

    async def run(self, agent: Agent[Any], input: Any, **kwargs: Any) -> OpenAIAgentsRun:
        """``Runner.run(agent, input, **kwargs)`` as one llmspell run, governed (see the
        module docstring). ``kwargs`` go to ``Runner.run`` (``run_config`` is extended,
        ``hooks`` run after the adapter's)."""
        return await self._run(agent, input, kwargs, stream_to=None, streamed=None)

    def run_streamed(self, agent: Agent[Any], input: Any, **kwargs: Any) -> StreamedRun:
        """``Runner.run_streamed`` as one llmspell run: iterate ``stream_events()``."""
        return StreamedRun(self, agent, input, kwargs)

    # -- the run ------------------------------------------------------------------------
    async def _run(self, agent: Agent[Any], input: Any, kwargs: dict[str, Any], *,
                   stream_to: Callable[[Any], Any] | None,
                   streamed: StreamedRun | None) -> OpenAIAgentsRun:
        from agents import Runner  # noqa: PLC0415

        governed = self.govern(agent)
        base_config = kwargs.pop("run_config", None)
        run_config = self.run_config(base_config)
        user_hooks = kwargs.pop("hooks", None)
        hooks = self._hooks if user_hooks is None else _chain_hooks(self._hooks, user_hooks)
        # A run a hook forked here is that hook's context's child (its correlation and
        # user); one a tool runs (a sub-agent) inherits the tool call's metadata (the user)
        # under a correlation id of its own: see inherited_context.
        parent = inherited_context()
        correlation = parent.correlation_id if parent is not None else new_id()
        results: list[tuple[dict[str, Any], Any]] = []  # (what hooks saw, the SDK result)
        system = self.system

        async def invoke_agent(target: Any, params: dict[str, Any], attempt: int,
                               ctx: HookContext | None, effects: list[SideEffects]) -> Any:
            state = _RunState(correlation=correlation, streamed=stream_to is not None,
                              agent_name=target.name, ctx=ctx,
                              forks_with=(base_config, kwargs, input))
            # The side effects the attempt's llmspell tool calls declare (the tool
            # pipeline notes them), for the AgentError data: collected only when someone
            # may read them (AgentError hooks, or an enclosing attempt's collector).
            effects_token: Any = None
            if HookPoint.AGENT_ERROR in system.registry.chains \
                    or current_side_effects() is not None:
                sink, effects_token = SideEffects.enter()
                effects[:] = (sink,)
            else:
                effects.clear()
            token = _CURRENT.set(state)
            live: Any = None
            try:
                sdk_input = params.get("input", input)
                result: Any
                if stream_to is None:
                    result = await Runner.run(target, sdk_input, hooks=hooks,
                                              run_config=run_config, **kwargs)
                else:
                    live = Runner.run_streamed(target, sdk_input, hooks=hooks,
                                               run_config=run_config, **kwargs)
                    if streamed is not None:
                        streamed.result = live
                    async for event in live.stream_events():
                        await stream_to(event)
                    result = live
            except BaseException as raised:  # a cancelled run (CancelledError) ends too
                exc = _ours(raised) if isinstance(raised, Exception) else raised
                if live is not None and not live.is_complete:
                    live.cancel()  # the SDK's run loop is a task of its own: stop it
                # A cancelled model call is no model failure (as the runtime's model calls
                # and the pydantic-ai adapter publish it); the agent's run failed either way.
                if state.in_flight is not None and isinstance(raised, Exception):
                    self.sink.failed(f"model.{self.provider}.failed", exc, correlation,
                                     model=state.in_flight,
                                     caller={"type": "agent", "name": state.agent_name},
                                     turn=state.turn)
                self.sink.failed(f"agent.{state.agent_name}.failed", exc, correlation,
                                 attempt=attempt)
                if exc is raised:
                    raise
                raise exc from raised
            finally:
                _CURRENT.reset(token)
                if effects_token is not None:
                    SideEffects.leave(effects_token)
            answer = {"output": bridge.json_value(result.final_output),
                      "last_agent": result.last_agent.name}
            results.append((answer, result))
            return answer

        attempt_effects: list[SideEffects] = []  # the latest attempt's collector, if any

        async def invoke(params: dict[str, Any], attempt: int) -> Any:
            return await invoke_agent(governed, params, attempt, current_context(),
                                      attempt_effects)

        def error_data(exc: BaseException, data: dict[str, Any]) -> dict[str, Any]:
            # What the failed attempt's tool calls may have changed: a Retry runs it all
            # again.
            return (attempt_effects[0].error_data() if attempt_effects
                    else {"side_effects": []})

        async def redirect(target: str, params: dict[str, Any], ctx: HookContext | None) -> Any:
            # The target is an operation of its own, as the runtime's agent Redirect runs
            # one: its agent points run (a hook guarding it holds; their contexts are
            # children of the hook that redirected: the run's user and correlation), a
            # further Redirect goes on, and an agent reached again inside its own redirect
            # is refused (AgentCycleError) instead of looping.
            # It is an SDK run of its own, so an llmspell run of its own too, a child of
            # the run that redirected (as a pydantic-ai or LangChain redirect target is, and
            # an agent Fork): its model and tool calls are steps of that child run.
            other = self._agent_named(target)
            other_effects: list[SideEffects] = []

            async def invoke_other(call_params: dict[str, Any], attempt: int) -> Any:
                return await invoke_agent(other, call_params, attempt, current_context(),
                                          other_effects)

            def other_error_data(exc: BaseException, data: dict[str, Any]) -> dict[str, Any]:
                return (other_effects[0].error_data() if other_effects
                        else {"side_effects": []})

            given = params.get("input", "")
            with nested("agent", other.name):
                async with bridge.run_scope(system, FRAMEWORK, other.name, {
                        "input": given if isinstance(given, str)
                        else bridge.json_value(given)}) as child:
                    redirected = await run_hooked(
                        system, points=_AGENT_POINTS, component=bridge.component(
                            ComponentType.AGENT, other.name),
                        base={"agent": other.name, "framework": FRAMEWORK}, params=params,
                        invoke=invoke_other, redirect=redirect, fork=fork,
                        cache=self.agent_cache, parent=ctx, correlation_id=correlation,
                        error_data=other_error_data)
                    if child is not None:
                        answer = redirected.result
                        child.output = {"output": bridge.json_value(
                            answer["output"] if isinstance(answer, dict) and "output" in answer
                            else answer)}
            return redirected.result

        async def fork(op: ForkOperation, ctx: HookContext | None) -> Any:
            target = self._by_name.get(op.target) if op.type == "agent" else None
            if target is not None:
                forked = await self._fork_run(target, op.parameters.get("input", input),
                                              base_config, kwargs, ctx)
                return bridge.json_value(forked.final_output)
            return await system.run_operation(op, ctx)

        text_input = input if isinstance(input, str) else bridge.json_value(input)
        async with bridge.run_scope(system, FRAMEWORK, agent.name,
                                    {"input": text_input}) as scope:
            outcome = await run_hooked(
                system, points=_AGENT_POINTS, component=bridge.component(
                    ComponentType.AGENT, agent.name),
                base={"agent": agent.name, "framework": FRAMEWORK},
                params={"input": text_input}, invoke=invoke, redirect=redirect, fork=fork,
                cache=self.agent_cache, parent=parent, correlation_id=correlation,
                error_data=error_data)
            value = outcome.result
            # The SDK's own output object when no hook replaced or rewrote the answer.
            own = None if outcome.rewritten else next(
                (r for seen, r in results if seen is value), None)
            sdk_result = own if own is not None else (
                results[-1][1] if results and not (outcome.replaced or outcome.cached)
                else None)
            final: Any = value
            if own is not None:
                final = own.final_output
            elif isinstance(value, dict) and "output" in value:
                final = value["output"]
            if scope is not None:
                scope.output = {"output": bridge.json_value(final)}
            run_id = getattr(scope, "run_id", None)
        return OpenAIAgentsRun(final_output=final, result=sdk_result, run_id=run_id,
                               correlation_id=correlation, attempts=outcome.attempts,
                               cached=outcome.cached, replaced=outcome.replaced,
                               redirected_to=outcome.redirected_to, forks=outcome.forks)

    async def _fork_run(self, target: Agent[Any], input: Any, base_config: RunConfig | None,
                        kwargs: Mapping[str, Any], ctx: HookContext | None
                        ) -> OpenAIAgentsRun:
        """A governed agent ``Fork``: an adapter run of its own (its agent points, the
        adapter's ``RunHooks`` and seams; a child llmspell run of the run it forks from, as
        a sub-agent's), isolated from that run: the adapter's
        per-run state starts afresh (the parent's turn count and tool calls are untouched),
        the SDK gets a context wrapper of its own (the user's ``context`` object, unwrapped
        from a ``RunContextWrapper``), the run is not streamed, and the parent's session,
        conversation and response ids and ``RunHooks`` stay with the parent. An agent
        forked again inside its own fork is refused (:class:`~llmspell.errors.AgentCycleError`,
        reported in the fork's ``error``). The fork is a child of ``ctx``, the context of
        the hook that forked it, as the runtime's and the other adapters' forks are: its
        points' contexts descend from it and its events carry its correlation id (so they
        tie to the run that forked it) and its metadata (the user, so budgets and rate
        limits see it)."""
        from agents import RunContextWrapper  # noqa: PLC0415

        fork_kwargs: dict[str, Any] = {"run_config": base_config}
        context = kwargs.get("context")
        if isinstance(context, RunContextWrapper):
            context = context.context
        if context is not None:
            fork_kwargs["context"] = context
        if "max_turns" in kwargs:
            fork_kwargs["max_turns"] = kwargs["max_turns"]
        token = _CURRENT.set(None)
        try:
            with nested("agent", target.name), context_as(ctx):  # the hook's child
                return await self._run(target, input, fork_kwargs, stream_to=None,
                                       streamed=None)
        finally:
            _CURRENT.reset(token)

    def _agent_named(self, name: str) -> Any:
        found = self._by_name.get(name)
        if found is None:
            raise IntegrationError(f"no OpenAI agent named {name!r} is governed by this adapter",
                                   hint="agents reach the adapter through adapter.run or "
                                        "adapter.govern; known: "
                                        + (", ".join(sorted(self._by_name)) or "none"))
        return found

    # -- model points -------------------------------------------------------------------
    def _model_name(self, agent: Any) -> str:
        model = agent.model
        if isinstance(model, str) and model:
            return model
        name = getattr(model, "model", None)
        if isinstance(name, str) and name:
            return name
        return type(model).__name__ if model is not None else "default"

    def _model_base(self, state: _RunState, agent: Any) -> dict[str, Any]:
        return {"provider": self.provider, "model": self._model_name(agent),
                "caller": {"type": "agent", "name": agent.name}, "turn": state.turn,
                "attempt": 1, "framework": FRAMEWORK}

    async def _before_model(self, data: Any) -> Any:
        from agents.run_config import ModelInputData  # noqa: PLC0415
        from agents.tool import FunctionTool  # noqa: PLC0415

        state = _state()
        agent = data.agent
        state.turn += 1
        state.agent_name = agent.name
        model_data = data.model_data
        messages, sources = items_to_messages(model_data.instructions, model_data.input)
        tools = [{"name": t.name, "description": t.description,
                  "parameters": t.params_json_schema}
                 for t in agent.tools if isinstance(t, FunctionTool)]
        settings = agent.model_settings
        run_settings = getattr(state.forks_with[0], "model_settings", None)
        if run_settings is not None:  # the SDK lays the run's settings over the agent's
            settings = settings.resolve(run_settings)
        params = bridge.request_data(messages, tools, temperature=settings.temperature,
                                     max_tokens=settings.max_tokens, stream=state.streamed,
                                     settings=_request_settings(agent, settings))
        state.request = params
        # What the hooks were shown (a hook may change params, or drop a tool, in place).
        shown = {**params, "tools": list(tools)}
        state.model_ctx = None
        base = self._model_base(state, agent)
        point = HookPoint.BEFORE_MODEL_CALL
        # What the hooks take for the call (a cost reservation) comes back at its after or
        # error point; when the model is not called, as soon as that is known.
        scope = OperationScope()
        try:
            with scope:
                outcome, ctx = await bridge.dispatch(
                    self.system, FRAMEWORK, point, bridge.component(
                        ComponentType.MODEL, f"{self.provider}/{base['model']}"),
                    {**base, "params": params}, honoured=HONOURED[point],
                    parent=state.ctx, correlation_id=state.correlation, hint=_HINTS[point])
            state.model_ctx = ctx if ctx is not None else state.ctx
            result = outcome.result
            if type(result) is Continue:  # every hook went on: the common case, no tests
                return model_data
            if isinstance(result, Cancel):
                raise model_call_cancelled_error(f"{self.provider}/{base['model']}",
                                                 str(point), result, outcome.decided_by)
            if isinstance(result, Modified) and ctx is not None:
                changed = ctx.data.get("params")
                if not isinstance(changed, dict):
                    raise InvalidValueError("BeforeModelCall Modified must keep data['params'] "
                                            "a request table",
                                            hint="return Modified({**ctx.data, 'params': ...})")
                _refuse_unseamed(shown, changed, outcome.decided_by)
                new_messages = changed.get("messages")
                instructions, items = messages_to_items(
                    new_messages if isinstance(new_messages, list) else [], messages, sources,
                    model_data.input)
                state.request = {**params, **changed}
                return ModelInputData(input=items, instructions=instructions)
            return model_data
        except BaseException:
            scope.end()
            raise

    def _llm_started(self, agent: Any) -> None:
        state = _CURRENT.get()
        if state is None:
            return
        state.model_started = time.perf_counter()
        model = self._model_name(agent)
        state.in_flight = model
        self.sink.publish(f"model.{self.provider}.started",
                          {"model": model, "caller": {"type": "agent", "name": agent.name},
                           "turn": state.turn, "attempt": 1}, state.correlation)

    async def _llm_ended(self, agent: Any, response: Any) -> None:
        state = _CURRENT.get()
        if state is None:
            return
        state.in_flight = None
        latency = (time.perf_counter() - state.model_started) * 1000
        base = self._model_base(state, agent)
        message = _response_message(response.output)
        usage = _usage(response.usage)
        result = bridge.response_data(
            message, finish_reason="tool_calls" if message["tool_calls"] else "stop",
            model=base["model"], usage=usage,
            cost_usd=bridge.price_usd(self.provider, base["model"], usage), latency_ms=latency)
        point = HookPoint.AFTER_MODEL_CALL
        outcome, _ = await bridge.dispatch(
            self.system, FRAMEWORK, point, bridge.component(
                ComponentType.MODEL, f"{self.provider}/{base['model']}"),
            {**base, "params": state.request, "result": result}, honoured=HONOURED[point],
            parent=state.model_ctx, correlation_id=state.correlation, hint=_HINTS[point])
        verdict = outcome.result
        if type(verdict) is not Continue and isinstance(verdict, Cancel):
            error = model_call_cancelled_error(f"{self.provider}/{base['model']}",
                                               str(point), verdict, outcome.decided_by)
            raise error
        self.sink.model_completed(self.provider, model=base["model"], caller=base["caller"],
                                  turn=state.turn, request=state.request, response=result,
                                  correlation_id=state.correlation)

    async def _model_error(self, ctx: Any) -> Any:
        from agents.retry import RetryDecision  # noqa: PLC0415

        state = _CURRENT.get()
        point = HookPoint.MODEL_CALL_ERROR
        if state is None or point not in self.system.registry.chains:
            return None
        model = state.in_flight or "default"
        error = ctx.error
        data = {"provider": self.provider, "model": model,
                "caller": {"type": "agent", "name": state.agent_name}, "turn": state.turn,
                "attempt": ctx.attempt, "params": state.request,
                **bridge.model_error_data(error)}
        normalized = getattr(ctx, "normalized", None)
        status = getattr(normalized, "status_code", None)
        if data["status"] is None and isinstance(status, int):
            data["status"] = status
            data["retryable"] = status in (408, 429) or status >= 500
        outcome, _ = await bridge.dispatch(
            self.system, FRAMEWORK, point, bridge.component(
                ComponentType.MODEL, f"{self.provider}/{model}"),
            data, honoured=HONOURED[point], parent=state.model_ctx,
            correlation_id=state.correlation, hint=_HINTS[point])
        result = outcome.result
        if isinstance(result, Retry):
            again = ctx.attempt < result.max_attempts
            return RetryDecision(retry=again, delay=result.delay if again else None,
                                 reason=f"llmspell hook {outcome.decided_by}")
        return None

    # -- tools ----------------------------------------------------------------------------
    def _govern_tool(self, tool: FunctionTool, owner: Any) -> FunctionTool:
        from agents.tool import invoke_function_tool  # noqa: PLC0415
        from agents.tool_context import ToolContext  # noqa: PLC0415
        from agents.tool_guardrails import (  # noqa: PLC0415
            ToolGuardrailFunctionOutput,
            ToolInputGuardrail,
            ToolOutputGuardrail,
        )

        name = tool.name
        adapter = self

        async def before(data: Any) -> Any:
            decision = await adapter._before_tool(name, data.context, owner)
            if isinstance(decision, str):
                if adapter.tool_cancel == "raise":
                    return ToolGuardrailFunctionOutput.raise_exception(output_info=decision)
                return ToolGuardrailFunctionOutput.reject_content(decision,
                                                                  output_info=decision)
            return ToolGuardrailFunctionOutput.allow()

        async def after(data: Any) -> Any:
            state = _CURRENT.get()
            call = state.calls.pop(data.context.tool_call_id, None) if state else None
            if call is not None and call.after_cancel is not None:
                if adapter.tool_cancel == "raise":
                    return ToolGuardrailFunctionOutput.raise_exception(
                        output_info=call.after_cancel)
                return ToolGuardrailFunctionOutput.reject_content(call.after_cancel,
                                                                  output_info=call.after_cancel)
            return ToolGuardrailFunctionOutput.allow()

        async def original(arguments: str, context: Any) -> Any:
            return await invoke_function_tool(function_tool=tool, context=context,
                                              arguments=arguments)

        async def on_invoke(context: ToolContext[Any], arguments: str) -> Any:
            return await adapter._invoke_tool(name, context, arguments, original, owner)

        # The SDK reads the invoker's signature and type hints on every call (to choose
        # which context to pass). Resolved here once: the module's string annotations
        # would be compiled and parsed per call, and ToolContext is not a module global.
        on_invoke.__annotations__ = {"context": ToolContext, "arguments": str}
        on_invoke.__signature__ = inspect.signature(on_invoke)  # type: ignore[attr-defined]

        return dataclasses.replace(
            tool, on_invoke_tool=on_invoke, timeout_seconds=None,
            tool_input_guardrails=[*(tool.tool_input_guardrails or []),
                                   ToolInputGuardrail(before, name="llmspell")],
            tool_output_guardrails=[*(tool.tool_output_guardrails or []),
                                    ToolOutputGuardrail(after, name="llmspell")])

    async def _before_tool(self, name: str, context: Any, owner: Any) -> str | None:
        """BeforeToolExecution: None lets the call go on (the decision is kept for the
        invoker); a text rejects it."""
        state = _state()
        params = _arguments(context.tool_arguments)
        raw = context.tool_arguments
        call = state.calls[context.tool_call_id] = _ToolCall(
            params=params, raw=raw if isinstance(raw, str) else None, ctx=state.ctx)
        point = HookPoint.BEFORE_TOOL_EXECUTION
        if point not in self.system.registry.chains:
            return None
        attempt = 1
        while True:
            outcome, ctx = await bridge.dispatch(
                self.system, FRAMEWORK, point, bridge.component(ComponentType.TOOL, name),
                bridge.tool_data(name, params, attempt=attempt, agent=owner.name,
                                 call_id=context.tool_call_id, framework=FRAMEWORK),
                honoured=HONOURED[point], parent=state.ctx, correlation_id=state.correlation)
            result = outcome.result
            if type(result) is Continue:  # every hook went on: the common case, no tests
                break
            if isinstance(result, Retry) and attempt < result.max_attempts:
                await asyncio.sleep(result.delay)
                attempt += 1
                continue
            break
        if ctx is not None:
            call.ctx = ctx
        if type(result) is Continue:
            pass
        elif isinstance(result, Cancel):
            state.calls.pop(context.tool_call_id, None)
            error = cancelled_error(point, result, outcome.decided_by)
            self.sink.failed(f"tool.{name}.failed", error, state.correlation,
                             call_id=context.tool_call_id, duration_ms=0.0)
            return str(error)
        elif isinstance(result, Modified) and ctx is not None:
            changed = ctx.data.get("params", params)
            if not isinstance(changed, dict):
                raise InvalidValueError(f"BeforeToolExecution Modified for {name!r} must keep "
                                        "data['params'] a table of arguments")
            call.params = dict(changed)
            call.raw = None
        elif isinstance(result, Replace):
            call.replace = (True, result.value)
        elif isinstance(result, Redirect):
            call.redirect = result.target
        call.forks = tuple(op for f in outcome.forks for op in f.operations)
        if outcome.cache is not None:
            key = cache_key(bridge.component(ComponentType.TOOL, name), outcome.cache)
            hit, value = scoped_cache(self.tool_cache).get(key)  # a replay's own
            if hit:
                call.replace, call.cached = (True, value), True
            else:
                call.cache_key = (key, outcome.cache.ttl)
        return None

    async def _invoke_tool(self, name: str, context: Any, arguments: str,
                           original: Callable[[str, Any], Any], owner: Any) -> Any:
        state = _state()
        call = state.calls.get(context.tool_call_id)
        if call is None:  # the input guardrail did not run (a nested continuation)
            call = state.calls[context.tool_call_id] = _ToolCall(params=_arguments(arguments),
                                                                 raw=arguments, ctx=state.ctx)
        started = time.perf_counter()
        correlation = state.correlation
        component = bridge.component(ComponentType.TOOL, name)
        forks: list[dict[str, Any]] = []

        fork_task: asyncio.Future[list[dict[str, Any]]] | None = None

        async def finish(value: Any, attempts: int, cached: bool = False) -> Any:
            nonlocal fork_task
            if fork_task is not None:  # forks ran beside the call: their results go along
                forks.extend(await fork_task)
                fork_task = None
            if self.sink.kept(f"tool.{name}.completed"):  # the data is built only if kept
                self.sink.publish(f"tool.{name}.completed", {
                    "result": self.sink.mask(bridge.json_value(value)), "attempts": attempts,
                    "cached": cached, "duration_ms": (time.perf_counter() - started) * 1000,
                    "call_id": context.tool_call_id, "agent": owner.name,
                    **({"forks": forks} if forks else {})}, correlation)
            return value

        if call.forks:
            fork_task = asyncio.ensure_future(self._run_forks(call.forks, owner, context,
                                                              call.ctx))
        if call.replace[0]:
            return await finish(call.replace[1], 0, call.cached)
        attempt, retry_limit = 1, 1
        cancelled = False
        # What the llmspell tool calls of the latest attempt (from the tool's code)
        # declared, for the ToolError data: a Retry runs the tool again.
        effects = ToolAttemptEffects()
        try:
            if call.redirect is not None:  # its failure ends this call too (below)
                redirected = await self._redirect_tool(call.redirect, call.params, context,
                                                       owner, call.ctx)
                return await finish(redirected, 1)
            while True:
                if self.sink.kept(f"tool.{name}.started"):
                    self.sink.publish(f"tool.{name}.started",
                                      {"params": self.sink.mask(call.params),
                                       "attempt": attempt, "call_id": context.tool_call_id,
                                       "agent": owner.name}, correlation)
                error: BaseException | None = None
                value: Any = None
                token = effects.enter(attempt, self.system.registry.chains)
                try:
                    with context_as(call.ctx, handed=False):  # what the tool starts
                        value = await original(call.raw if call.raw is not None
                                               else json.dumps(call.params), context)
                except Exception as exc:
                    error = exc
                finally:
                    if token is not None:
                        SideEffects.leave(token)
                handled = state.tool_errors.pop(context.tool_call_id, None)
                if error is None and handled is not None:
                    error = handled  # the SDK's default failure handler caught it
                if error is not None:
                    verdict, err_ctx = await self._tool_error(name, call, attempt, error,
                                                              owner, context, state,
                                                              effects)
                    if isinstance(verdict, Retry):
                        retry_limit = max(retry_limit, verdict.max_attempts)
                        if attempt < retry_limit:
                            await asyncio.sleep(verdict.delay)
                            attempt += 1
                            continue
                    elif isinstance(verdict, Replace):
                        return await finish(verdict.value, attempt)
                    elif isinstance(verdict, Redirect):
                        return await finish(await self._redirect_tool(verdict.target, call.params,
                                                                context, owner, err_ctx),
                                      attempt)
                    elif isinstance(verdict, Cancel):
                        raise cancelled_error(HookPoint.TOOL_ERROR, verdict, None) from error
                    if handled is not None:  # the SDK's message for the model stands
                        self.sink.failed(f"tool.{name}.failed", error, correlation,
                                         call_id=context.tool_call_id, attempts=attempt)
                        return value
                    raise error
                point = HookPoint.AFTER_TOOL_EXECUTION
                outcome, after_ctx = await bridge.dispatch(
                    self.system, FRAMEWORK, point, component,
                    bridge.tool_data(name, call.params, attempt=attempt,
                                     result=bridge.json_value(value), agent=owner.name,
                                     call_id=context.tool_call_id, framework=FRAMEWORK),
                    honoured=HONOURED[point], parent=call.ctx, correlation_id=correlation)
                result = outcome.result
                went_on = type(result) is Continue  # the common case: no isinstance tests
                if not went_on and isinstance(result, Retry):
                    retry_limit = max(retry_limit, result.max_attempts)
                    if attempt < retry_limit:
                        await asyncio.sleep(result.delay)
                        attempt += 1
                        continue
                if went_on:
                    pass
                elif isinstance(result, Cancel):
                    call.after_cancel = str(cancelled_error(point, result, outcome.decided_by))
                elif isinstance(result, Modified) and after_ctx is not None:
                    value = after_ctx.data.get("result", value)
                elif isinstance(result, Replace):
                    value = result.value
                elif isinstance(result, Redirect):
                    value = await self._redirect_tool(result.target, call.params, context,
                                                      owner, after_ctx)
                if outcome.forks:
                    forks.extend(await self._run_forks(
                        tuple(op for f in outcome.forks for op in f.operations), owner,
                        context, after_ctx))
                cache = scoped_cache(self.tool_cache)  # a replay's own in a replay
                if outcome.cache is not None:
                    cache.put(cache_key(component, outcome.cache),
                              bridge.json_value(value), outcome.cache.ttl)
                if call.cache_key is not None:
                    cache.put(call.cache_key[0], bridge.json_value(value),
                              call.cache_key[1])
                return await finish(value, attempt)
        except Exception as exc:
            self.sink.failed(f"tool.{name}.failed", exc, correlation,
                             call_id=context.tool_call_id,
                             duration_ms=(time.perf_counter() - started) * 1000)
            said = _sdk_message(exc)
            if said is not None:  # a redirect target's failure the SDK made a message of
                return said[0]
            raise
        except BaseException:
            cancelled = True
            raise
        finally:
            if fork_task is not None:
                if cancelled:  # the forks beside a cancelled call stop with it
                    fork_task.cancel()
                    await asyncio.wait((fork_task,))
                else:
                    await fork_task

    async def _tool_error(self, name: str, call: _ToolCall, attempt: int, error: BaseException,
                          owner: Any, context: Any, state: _RunState,
                          effects: ToolAttemptEffects) -> tuple[Any, HookContext | None]:
        point = HookPoint.TOOL_ERROR
        outcome, ctx = await bridge.dispatch(
            self.system, FRAMEWORK, point, bridge.component(ComponentType.TOOL, name),
            bridge.tool_data(name, call.params, attempt=attempt, error=str(error),
                             error_type=type(error).__name__, agent=owner.name,
                             call_id=context.tool_call_id, framework=FRAMEWORK,
                             **effects.error_data(attempt)),
            honoured=HONOURED[point], parent=call.ctx, correlation_id=state.correlation,
            hint=_HINTS[point])
        return outcome.result, ctx

    async def _redirect_tool(self, target: str, params: dict[str, Any], context: Any,
                             owner: Any, ctx: HookContext | None, depth: int = 1) -> Any:
        """The result of tool ``target`` for a redirected call (``depth``: how many
        redirects led here). One of the owner's function tools runs as a hooked call of
        its own, as the runtime's tool registry runs a redirect target: its
        ``BeforeToolExecution``/``AfterToolExecution``/``ToolError`` hooks run (``Modified``,
        ``Replace``, ``Retry``, ``Fork``, ``Cache``; a ``Cancel`` raises
        :class:`~llmspell.errors.OperationCancelled`) and a further ``Redirect`` goes one
        deeper; past ``MAX_TOOL_REDIRECTS`` redirects
        :class:`~llmspell.errors.ToolExecutionError` ends the loop. Any other name runs the
        llmspell tool of that name (through the tool registry, whose redirects go on
        counting from ``depth``: one bound for the whole chain)."""
        from agents.tool import invoke_function_tool  # noqa: PLC0415

        if depth > MAX_TOOL_REDIRECTS:
            raise redirect_loop_error(target, depth)
        tool = (self._tools_of(owner) or {}).get(target)
        if tool is None:  # not one of the agent's tools: an llmspell tool, if registered
            # The registry goes on counting from here: one bound for the whole chain.
            return (await self.system.tools.run(target, params, parent=ctx,
                                                _depth=depth)).result
        state = _CURRENT.get()
        correlation = state.correlation if state is not None else None
        call_id = context.tool_call_id
        started = time.perf_counter()
        mark = {"fork": True} if in_fork() else {}  # a redirect inside a fork
        effects = ToolAttemptEffects()  # for the ToolError data, as in _invoke_tool

        async def invoke(call_params: dict[str, Any], attempt: int) -> Any:
            if self.sink.kept(f"tool.{target}.started"):
                self.sink.publish(f"tool.{target}.started",
                                  {"params": self.sink.mask(call_params), "attempt": attempt,
                                   "call_id": call_id, "agent": owner.name, **mark},
                                  correlation)
            token = effects.enter(attempt, self.system.registry.chains)
            try:
                value = await invoke_function_tool(function_tool=tool, context=context,
                                                   arguments=json.dumps(call_params))
            finally:
                if token is not None:
                    SideEffects.leave(token)
            handled = state.tool_errors.pop(call_id, None) if state is not None else None
            if handled is not None:
                # The SDK's default failure handler caught the target's error and made a
                # message of it: a failure all the same, through ToolError (with the
                # attempt's side effects) and tool.<target>.failed, as the runtime's and
                # the other adapters' redirect targets fail. Unrecovered, the message
                # the SDK made still answers the model (see _invoke_tool).
                _said_by_sdk(handled, value)
                raise handled
            return value

        async def redirect(again: str, call_params: dict[str, Any],
                           hctx: HookContext | None) -> Any:
            return await self._redirect_tool(again, call_params, context, owner, hctx,
                                             depth + 1)

        async def fork(op: ForkOperation, hctx: HookContext | None) -> Any:
            return await self._fork(op, owner, context, hctx)

        def error_data(exc: BaseException, data: dict[str, Any]) -> dict[str, Any]:
            return effects.error_data(data["attempt"])

        try:
            outcome = await run_hooked(
                self._checked, points=_TOOL_POINTS,
                component=bridge.component(ComponentType.TOOL, target),
                base={"tool": target, "agent": owner.name, "call_id": call_id,
                      "framework": FRAMEWORK, **mark},
                params=params, invoke=invoke, redirect=redirect, fork=fork,
                cache=self.tool_cache, parent=ctx, correlation_id=correlation,
                error_data=error_data)
        except Exception as exc:
            self.sink.failed(f"tool.{target}.failed", exc, correlation, call_id=call_id,
                             duration_ms=(time.perf_counter() - started) * 1000, **mark)
            raise
        if self.sink.kept(f"tool.{target}.completed"):
            self.sink.publish(f"tool.{target}.completed", {
                "result": self.sink.mask(bridge.json_value(outcome.result)),
                "attempts": outcome.attempts, "cached": outcome.cached,
                "redirected_to": outcome.redirected_to, "call_id": call_id,
                "agent": owner.name, "duration_ms": (time.perf_counter() - started) * 1000,
                **({"forks": outcome.forks} if outcome.forks else {}), **mark},
                correlation)
        return outcome.result

    async def _run_forks(self, operations: tuple[ForkOperation, ...], owner: Any,
                         context: Any, ctx: HookContext | None) -> list[dict[str, Any]]:
        async def one(op: ForkOperation, parent: HookContext | None) -> Any:
            return bridge.json_value(await self._fork(op, owner, context, parent))

        return await run_forks(operations, one, ctx)

    async def _fork(self, op: ForkOperation, owner: Any, context: Any,
                    ctx: HookContext | None) -> Any:
        """What one ``Fork`` operation at a tool point gives: a function tool of ``owner``
        as a forked call (:meth:`_forked_tool`); an agent the adapter governs as a governed
        child run, as an agent ``Fork`` at the agent points runs it (:meth:`_fork_run`: the
        run's ``run_config``, ``context`` and ``max_turns``; its input the fork's
        ``parameters["input"]``, else the run's input); anything else through
        ``system.run_operation`` (llmspell's tools and agents). (Inside a forked call
        ``run_forks`` runs none: a forked operation does not fork again.)"""
        if op.type == "tool" and op.target in (self._tools_of(owner) or {}):
            return await self._forked_tool(op.target, dict(op.parameters), context, owner, ctx)
        target = self._by_name.get(op.target) if op.type == "agent" else None
        if target is not None:
            state = _CURRENT.get()
            base_config, kwargs, run_input = (state.forks_with if state is not None
                                              else (None, {}, ""))
            forked = await self._fork_run(target, op.parameters.get("input", run_input),
                                          base_config, kwargs, ctx)
            return bridge.json_value(forked.final_output)
        return await self.system.run_operation(op, ctx)

    async def _forked_tool(self, target: str, params: dict[str, Any], context: Any,
                           owner: Any, ctx: HookContext | None) -> Any:
        """Tool ``target`` of ``owner`` as a forked call, governed as the runtime's tool
        registry runs a forked tool: its ``BeforeToolExecution``/``AfterToolExecution``/
        ``ToolError`` hooks see it (``data["fork"]`` true, ``call_id``
        ``"<call id>:fork:<n>"``, parent context the point that forked it) and their
        results apply to it (a ``Cancel`` or an unrecovered failure raises, which the
        caller records in the fork's ``error``); its ``tool.<name>.*`` events are
        published. A ``Fork`` at its own points is not run. The tool's own SDK input and
        output guardrails run on its arguments and result (a rejection fails the fork),
        and a tool that needs approval is refused (a fork cannot ask for it).

        It runs outside the parent call's run state, as an agent ``Fork`` does: a
        :class:`~agents.tool_context.ToolContext` of its own (your ``context`` object, a
        fresh ``Usage``, its own call id), so what the SDK records on a call's context
        (a failure its default handler caught, prepared arguments) never lands on the
        call it forks from, and adapter state of its own (a failure of the fork is never
        taken for the parent call's)."""
        from agents.tool import invoke_function_tool  # noqa: PLC0415
        from agents.tool_context import ToolContext  # noqa: PLC0415
        from agents.tool_guardrails import (  # noqa: PLC0415
            ToolInputGuardrailData,
            ToolOutputGuardrailData,
        )
        from agents.usage import Usage  # noqa: PLC0415
        from openai.types.responses import ResponseFunctionToolCall  # noqa: PLC0415

        tool = (self._tools_of(owner) or {})[target]
        parent = _CURRENT.get()
        correlation = (ctx.correlation_id if ctx is not None
                       else parent.correlation if parent is not None else new_id())
        call_id = f"{context.tool_call_id}:fork:{next(self._fork_ids)}"
        state = _RunState(correlation=correlation, streamed=False, agent_name=owner.name,
                          turn=parent.turn if parent is not None else 0,
                          forks_with=parent.forks_with if parent is not None
                          else (None, {}, ""))
        started = time.perf_counter()
        mark = {"call_id": call_id, "agent": owner.name, "fork": True}
        effects = ToolAttemptEffects()  # for the ToolError data, as in _invoke_tool

        def error_data(exc: BaseException, data: dict[str, Any]) -> dict[str, Any]:
            return effects.error_data(data["attempt"])

        def tool_context(arguments: str) -> Any:
            return ToolContext(
                context.context, Usage(), target, call_id, arguments,
                ResponseFunctionToolCall(call_id=call_id, name=target, arguments=arguments,
                                         type="function_call"),
                agent=owner, run_config=getattr(context, "run_config", None),
                turn_input=list(getattr(context, "turn_input", None) or ()))

        def refuse(kind: str, guardrail: Any, result: Any) -> None:
            behavior = result.behavior if result is not None else {"type": "allow"}
            if behavior.get("type", "allow") != "allow":
                said = behavior.get("message") or result.output_info
                raise ToolExecutionError(
                    target, f"the tool's {kind} guardrail {guardrail.get_name()!r} refused "
                            f"the forked call" + (f": {said}" if said else ""),
                    hint="a forked call goes through the tool's own guardrails too")

        async def invoke(call_params: dict[str, Any], attempt: int) -> Any:
            if self.sink.kept(f"tool.{target}.started"):
                self.sink.publish(f"tool.{target}.started",
                                  {"params": self.sink.mask(call_params), "attempt": attempt,
                                   **mark}, correlation)
            if tool.needs_approval is not False:
                raise ToolExecutionError(
                    target, f"tool {target!r} needs approval, which a forked call cannot "
                            "ask for",
                    hint="fork a tool that needs no approval, or let the model call it")
            if not await _enabled(tool, context, owner):
                raise ToolExecutionError(
                    target, f"tool {target!r} is disabled for this run (its is_enabled "
                            "said no), so it cannot be forked either",
                    hint="fork a tool the agent may use in this run")
            arguments = json.dumps(call_params)
            call_context = tool_context(arguments)
            for guardrail in tool.tool_input_guardrails or ():
                refuse("input", guardrail, await guardrail.run(
                    ToolInputGuardrailData(context=call_context, agent=owner)))
            token = effects.enter(attempt, self.system.registry.chains)
            try:
                value = await invoke_function_tool(function_tool=tool, context=call_context,
                                                   arguments=arguments)
            finally:
                if token is not None:
                    SideEffects.leave(token)
            handled = state.tool_errors.pop(call_id, None)
            if handled is not None:  # the SDK's default failure handler caught it
                raise handled
            for check in tool.tool_output_guardrails or ():
                refuse("output", check, await check.run(
                    ToolOutputGuardrailData(context=call_context, agent=owner, output=value)))
            return value

        async def redirect(again: str, call_params: dict[str, Any],
                           hctx: HookContext | None) -> Any:
            return await self._redirect_tool(again, call_params, tool_context(
                json.dumps(call_params)), owner, hctx)

        async def fork(op: ForkOperation, hctx: HookContext | None) -> Any:
            return await self._fork(op, owner, context, hctx)  # run_forks runs none in a fork

        token = _CURRENT.set(state)
        try:
            with nested("tool", target):
                outcome = await run_hooked(
                    self._checked, points=_TOOL_POINTS,
                    component=bridge.component(ComponentType.TOOL, target),
                    base={"tool": target, **mark, "framework": FRAMEWORK}, params=params,
                    invoke=invoke, redirect=redirect, fork=fork, cache=self.tool_cache,
                    parent=ctx, correlation_id=correlation, error_data=error_data)
        except Exception as exc:
            self.sink.failed(f"tool.{target}.failed", exc, correlation, **mark,
                             duration_ms=(time.perf_counter() - started) * 1000)
            raise
        finally:
            _CURRENT.reset(token)
        if self.sink.kept(f"tool.{target}.completed"):
            self.sink.publish(f"tool.{target}.completed", {
                "result": self.sink.mask(bridge.json_value(outcome.result)),
                "attempts": outcome.attempts, "cached": outcome.cached,
                "redirected_to": outcome.redirected_to, **mark,
                "duration_ms": (time.perf_counter() - started) * 1000,
                **({"forks": outcome.forks} if outcome.forks else {})}, correlation)
        return outcome.result


async def _enabled(tool: Any, context: Any, owner: Any) -> bool:
    """What the function tool's ``is_enabled`` says for this run (a bool, or a callable of
    the run context and the agent, maybe async), as the SDK asks it before offering the
    tool to the model."""
    verdict = tool.is_enabled
    if isinstance(verdict, bool):
        return verdict
    answer = verdict(context, owner)
    if inspect.isawaitable(answer):
        answer = await answer
    return bool(answer)


# -- RunHooks --------------------------------------------------------------------------------

def _make_run_hooks(adapter: OpenAIAgentsAdapter) -> Any:
    """The adapter's ``RunHooks`` (built here so the SDK is imported only when used)."""
    from agents import RunHooks  # noqa: PLC0415
    from agents.tool import FunctionTool  # noqa: PLC0415

    sink = adapter.sink

    class LlmspellRunHooks(RunHooks[Any]):
        """Publishes agent, model and (non-function) tool events; runs the model after
        point."""

        async def on_agent_start(self, context: Any, agent: Any) -> None:
            state = _CURRENT.get()
            if state is not None:
                state.agent_name = agent.name
                sink.publish(f"agent.{agent.name}.started",
                             {"framework": FRAMEWORK, "model": adapter._model_name(agent)},
                             state.correlation)

        async def on_agent_end(self, context: Any, agent: Any, output: Any) -> None:
            state = _CURRENT.get()
            if state is not None and sink.kept(f"agent.{agent.name}.completed"):
                sink.publish(f"agent.{agent.name}.completed",
                             {"output": sink.mask(bridge.json_value(output)),
                              "turns": state.turn}, state.correlation)

        async def on_handoff(self, context: Any, from_agent: Any, to_agent: Any) -> None:
            state = _CURRENT.get()
            if state is not None:
                sink.publish(f"agent.{from_agent.name}.handoff",
                             {"from": from_agent.name, "to": to_agent.name},
                             state.correlation)
                sink.publish(f"agent.{from_agent.name}.completed",
                             {"output": None, "handoff": to_agent.name, "turns": state.turn},
                             state.correlation)

        async def on_llm_start(self, context: Any, agent: Any, system_prompt: Any,
                               input_items: Any) -> None:
            adapter._llm_started(agent)

        async def on_llm_end(self, context: Any, agent: Any, response: Any) -> None:
            await adapter._llm_ended(agent, response)

        async def on_tool_start(self, context: Any, agent: Any, tool: Any) -> None:
            state = _CURRENT.get()
            if state is not None and not isinstance(tool, FunctionTool):
                sink.publish(f"tool.{tool.name}.started", {"attempt": 1, "agent": agent.name},
                             state.correlation)

        async def on_tool_end(self, context: Any, agent: Any, tool: Any, result: Any) -> None:
            state = _CURRENT.get()
            if state is not None and not isinstance(tool, FunctionTool):
                sink.publish(f"tool.{tool.name}.completed",
                             {"result": sink.mask(bridge.json_value(result)), "attempts": 1,
                              "agent": agent.name}, state.correlation)

    return LlmspellRunHooks()


def _chain_hooks(first: Any, second: Any) -> Any:
    """RunHooks calling ``first`` then ``second`` for every callback."""
    from agents import RunHooks  # noqa: PLC0415

    class Chained(RunHooks[Any]):
        pass

    chained = Chained()
    for method in ("on_agent_start", "on_agent_end", "on_handoff", "on_llm_start",
                   "on_llm_end", "on_tool_start", "on_tool_end"):
        def make(name: str) -> Callable[..., Any]:
            async def both(*args: Any) -> None:
                await getattr(first, name)(*args)
                await getattr(second, name)(*args)
            return both
        setattr(chained, method, make(method))
    return chained


# -- tracing ---------------------------------------------------------------------------------

def _tracing_base() -> type:
    from agents.tracing import TracingProcessor  # noqa: PLC0415

    return TracingProcessor


class LlmspellTracingProcessor:
    """A ``TracingProcessor`` (register it with ``agents.add_trace_processor`` or
    ``agents.set_trace_processors``) that publishes each finished SDK span as
    ``openai_agents.span.<type>`` (``agent``, ``generation``, ``response``, ``function``,
    ``handoff``, ``guardrail``, ...) and each trace as ``openai_agents.trace.started`` /
    ``.completed``: ids, parent, times, error and the span's exported data. Spans inside an
    adapter run carry its run id and correlation id. Never raises into the SDK.

    Build it with :meth:`create` (it subclasses the SDK's ``TracingProcessor``)."""

    @staticmethod
    def create(system: Any) -> Any:
        """A processor publishing on ``system``'s bus."""
        base = _tracing_base()
        sink = bridge.EventSink(system, _SOURCE + ".tracing")

        def correlation() -> str | None:
            state = _CURRENT.get()
            return state.correlation if state is not None else None

        class Processor(base):  # type: ignore[misc, valid-type]
            """Forwards the SDK's spans as llmspell events."""

            def on_trace_start(self, trace: Any) -> None:
                sink.publish("openai_agents.trace.started",
                             {"trace_id": trace.trace_id, "name": trace.name},
                             correlation())

            def on_trace_end(self, trace: Any) -> None:
                sink.publish("openai_agents.trace.completed",
                             {"trace_id": trace.trace_id, "name": trace.name},
                             correlation())

            def on_span_start(self, span: Any) -> None:
                return None

            def on_span_end(self, span: Any) -> None:
                try:
                    kind = str(getattr(span.span_data, "type", None) or "span")
                    if not sink.kept(f"openai_agents.span.{kind}"):
                        return
                    exported = span.export() or {}
                    span_data = exported.get("span_data") or {}
                    data = {"trace_id": span.trace_id, "span_id": span.span_id,
                            "parent_id": span.parent_id, "started_at": span.started_at,
                            "ended_at": span.ended_at, "error": bridge.json_value(span.error),
                            "data": sink.mask(bridge.json_value(span_data))}
                    sink.publish(f"openai_agents.span.{kind}", data, correlation())
                except Exception:  # a tracing processor must never break the run
                    bridge.logger.exception("forwarding an SDK span failed")

            def shutdown(self) -> None:
                return None

            def force_flush(self) -> None:
                return None

        return Processor()
