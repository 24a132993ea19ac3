"""llmspell inside LangChain v1: hooks, built-in hooks, events and runs for LangChain agents,
chains and LangGraph graphs (``pip install 'llmspell[langchain]'``).

Two objects, one per kind of LangChain seam (docs/integrations/langchain.md has the tables):

* :class:`LlmspellMiddleware`, an ``AgentMiddleware`` for
  ``langchain.agents.create_agent(..., middleware=[LlmspellMiddleware(system)])``. Its
  ``before_agent``/``after_agent`` nodes are ``BeforeAgentExecution``/
  ``AfterAgentExecution``, its ``wrap_model_call`` runs every model request as the hooked
  operation ``BeforeModelCall``/``AfterModelCall``/``ModelCallError`` and its
  ``wrap_tool_call`` every tool call as ``BeforeToolExecution``/``AfterToolExecution``/
  ``ToolError`` (both through :func:`~llmspell.runtime.calls.run_hooked`, so the nine
  results mean what they mean in llmspell's own runtime); an error that would end the agent
  fires ``AgentError`` first. The error points (``AgentError``, ``ModelCallError``,
  ``ToolError``) honour ``Replace``, ``Redirect``, ``Retry`` and ``Cancel``; ``Modified``,
  ``Fork`` and ``Cache`` there raise :class:`~llmspell.errors.UnsupportedHookResultError`
  (:data:`HONOURED`). Sync (``invoke``/``stream``) and async (``ainvoke``/``astream``)
  runs alike. One framework run is one llmspell run: its events carry the run id, an agent
  called from a tool of another (a sub-agent) is a child run, and however the graph run
  ends (also failed, cancelled or closed between two nodes) the llmspell run ends once.
* :class:`LlmspellCallbackHandler` (sync) and :class:`AsyncLlmspellCallbackHandler`
  (async), callback handlers for chains and graphs, whose seams only observe: they fire
  the same points and publish the same events, honour ``Cancel`` by raising
  :class:`~llmspell.errors.OperationCancelled` (the operation stops), and raise
  :class:`~llmspell.errors.UnsupportedHookResultError` for results an observer cannot
  honour. :func:`llmspell_callbacks` installs one for every LangChain run in a context
  (a context variable registered with LangChain's ``register_configure_hook``).

Installing either checks the installed ``langchain``/``langchain-core`` against the
supported range and raises :class:`~llmspell.errors.UnsupportedFrameworkVersionError`
outside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import json
import operator
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import FunctionType
from typing import Annotated, Any, Final, NotRequired, TypeVar, cast
from uuid import UUID

from llmspell.core.errors import (
    ConfigurationError,
    IntegrationError,
    InvalidValueError,
    OperationCancelled,
    ToolNotFoundError,
    ToolValidationError,
    brief,
)
from llmspell.core.ids import new_id
from llmspell.core.loops import thread_loop
from llmspell.core.text import error_text
from llmspell.hooks.context import ComponentId, ComponentType, HookContext
from llmspell.hooks.executor import ChainResult
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
from llmspell.integrations import _bridge
from llmspell.runtime.calls import (
    CallOutcome,
    CallPoints,
    ResultCache,
    cache_key,
    context_as,
    inherited_context,
    run_forks,
    run_hooked,
    scoped_cache,
)
from llmspell.runtime.content import has_sensitive_key
from llmspell.runtime.models import MODEL_POINTS, completion_from, request_args
from llmspell.runtime.nesting import nested
from llmspell.runtime.tools.registry import (
    MAX_TOOL_REDIRECTS,
    SideEffects,
    ToolAttemptEffects,
    current_side_effects,
    redirect_loop_error,
)

_bridge.require("langchain.agents.middleware", "langchain", "the LangChain adapter")

from langchain.agents.middleware.types import (  # noqa: E402 - after the extra check
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    PrivateStateAttr,
    hook_config,
)
from langchain_core.callbacks import (  # noqa: E402
    AsyncCallbackHandler,
    BaseCallbackHandler,
    BaseCallbackManager,
)
from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import (  # noqa: E402
    AIMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import LLMResult  # noqa: E402
from langchain_core.runnables import RunnableBinding  # noqa: E402
from langchain_core.runnables.config import (  # noqa: E402
    RunnableConfig,
    var_child_runnable_config,
)
from langchain_core.tools import BaseTool  # noqa: E402
from langchain_core.tracers.context import register_configure_hook  # noqa: E402
from langchain_core.utils.function_calling import convert_to_openai_tool  # noqa: E402
from langgraph.config import get_config  # noqa: E402
from langgraph.constants import TAG_NOSTREAM  # noqa: E402
from langgraph.errors import GraphBubbleUp  # noqa: E402
from langgraph.graph.message import REMOVE_ALL_MESSAGES  # noqa: E402
from langgraph.prebuilt.tool_node import ToolCallRequest  # noqa: E402
from langgraph.types import Command  # noqa: E402
from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError  # noqa: E402

__all__ = [
    "FRAMEWORK",
    "HONOURED",
    "SHADOW_TAG",
    "SUPPORTED",
    "AsyncLlmspellCallbackHandler",
    "LlmspellCallbackHandler",
    "LlmspellMiddleware",
    "check_versions",
    "llmspell_callbacks",
]

FRAMEWORK = "langchain"
SUPPORTED: Mapping[str, str] = {"langchain": ">=1.2,<2", "langchain-core": ">=1.2,<2"}
"""The distributions the adapter needs and the version ranges it supports (the extra's)."""

STATE_KEY = "llmspell_run"
"""The private agent-state field that ties a LangChain agent run to its llmspell run."""

MAX_OPEN_RUNS = 4096
"""Agent runs an adapter keeps track of at once. A run paused at an interrupt that is never
resumed is forgotten once this many newer ones are open."""

_TOOL_POINTS = CallPoints(HookPoint.BEFORE_TOOL_EXECUTION, HookPoint.AFTER_TOOL_EXECUTION,
                          HookPoint.TOOL_ERROR)
_ALL = frozenset({"modified", "cancel", "replace", "redirect", "retry", "fork", "cache"})
_RECOVER = frozenset({"replace", "redirect", "retry", "cancel"})
HONOURED: Mapping[str, frozenset[str]] = {
    HookPoint.BEFORE_AGENT_EXECUTION: _ALL,
    HookPoint.AFTER_AGENT_EXECUTION: _ALL,
    HookPoint.AGENT_ERROR: _RECOVER,
    HookPoint.BEFORE_MODEL_CALL: _ALL,
    HookPoint.AFTER_MODEL_CALL: _ALL,
    HookPoint.MODEL_CALL_ERROR: _RECOVER,
    HookPoint.BEFORE_TOOL_EXECUTION: _ALL,
    HookPoint.AFTER_TOOL_EXECUTION: _ALL,
    HookPoint.TOOL_ERROR: _RECOVER,
}
"""Per point, the results (besides ``Continue`` and ``Skipped``) :class:`LlmspellMiddleware`
honours; another one raises :class:`~llmspell.errors.UnsupportedHookResultError` naming
the hook, the point and the result. An error point has nothing to modify, fork beside or
cache: it recovers (``Replace``, ``Redirect``, ``Retry``) or stops (``Cancel``).
``AfterModelCall`` honours ``Retry`` and ``Redirect`` only for a model call whose answer is
not streamed to the consumer (``stream_mode="messages"``, ``astream_events``): a streamed
answer already reached it."""
_STREAMED_AFTER_MODEL = HONOURED[HookPoint.AFTER_MODEL_CALL] - {"retry", "redirect"}
_STREAM_HINT = ("the model's answer was streamed to the consumer (stream_mode=\"messages\", "
                "astream_events) before AfterModelCall: Retry or Redirect it at "
                "ModelCallError, correct it with Modified/Replace or stop it with Cancel at "
                "AfterModelCall (params.stream says whether a call is streamed), or stream "
                "with another mode (\"updates\", \"values\")")
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool",
          "AIMessageChunk": "assistant"}
_SEGMENT = re.compile(r"[^A-Za-z0-9_-]+")
_T = TypeVar("_T")


def check_versions() -> dict[str, str]:
    """The installed ``langchain`` and ``langchain-core`` versions; raises
    :class:`~llmspell.errors.UnsupportedFrameworkVersionError` when one is outside
    :data:`SUPPORTED`."""
    return {dist: _bridge.check_version(FRAMEWORK, dist, supported)
            for dist, supported in SUPPORTED.items()}


# -- small helpers ---------------------------------------------------------------------------

def _segment(name: str) -> str:
    """``name`` as one event-type segment (letters, digits, ``_``, ``-``)."""
    return _SEGMENT.sub("_", name).strip("_") or "unnamed"


def _blocking(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from sync code: on this thread's private loop, or, when
    a loop already runs on this thread (a sync ``invoke`` inside async code, or an agent
    invoked from a tool of another), on a new thread with a copy of this context."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return thread_loop().run_until_complete(coro)
    context = contextvars.copy_context()
    box: dict[str, Any] = {}

    def work() -> None:
        loop = asyncio.new_event_loop()
        try:
            box["value"] = context.run(loop.run_until_complete, coro)
        except BaseException as exc:
            box["error"] = exc
        finally:
            loop.close()

    thread = threading.Thread(target=work, name="llmspell-langchain", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return cast(_T, box["value"])


def _text(content: Any) -> str:
    """A message's content (a string or a list of content blocks) as text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return "" if content is None else str(content)


def _as_text(value: Any) -> str:
    """A hook's value as message text: a string as is, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("output"), str):
        return str(value["output"])
    return json.dumps(_bridge.json_value(value))


def message_to_dict(message: BaseMessage) -> dict[str, Any]:
    """A LangChain message as llmspell's model points show it."""
    role = _ROLES.get(message.type, "user")
    calls: list[dict[str, Any]] = []
    if isinstance(message, AIMessage):
        calls = [_bridge.tool_call_dict(c.get("id"), c["name"], c.get("args"))
                 for c in message.tool_calls]
    return _bridge.message_dict(
        role, _text(message.content), tool_calls=calls,
        tool_call_id=message.tool_call_id if isinstance(message, ToolMessage) else None,
        name=message.name)


def _message_from(raw: dict[str, Any]) -> BaseMessage:
    """A validated message dict (llmspell's shape) as a LangChain message."""
    role, content = raw["role"], raw.get("content") or ""
    name = raw.get("name")
    if role == "system":
        return SystemMessage(content=content, name=name)
    if role == "user":
        return HumanMessage(content=content, name=name)
    if role == "tool":
        return ToolMessage(content=content, tool_call_id=raw["tool_call_id"], name=name)
    calls = [{"id": c.get("id") or f"call_{new_id()}", "name": c["name"],
              "args": c.get("arguments") or {}, "type": "tool_call"}
             for c in raw.get("tool_calls") or []]
    return AIMessage(content=content, tool_calls=calls, name=name)


def _usage(message: AIMessage) -> dict[str, Any] | None:
    meta = message.usage_metadata
    if not meta:
        return None
    cached = (meta.get("input_token_details") or {}).get("cache_read") or 0
    reasoning = (meta.get("output_token_details") or {}).get("reasoning") or 0
    return _bridge.usage_dict(int(meta.get("input_tokens") or 0),
                              int(meta.get("output_tokens") or 0),
                              total_tokens=int(meta.get("total_tokens") or 0) or None,
                              cached_tokens=int(cached), reasoning_tokens=int(reasoning))


def _response_dict(message: AIMessage, provider: str, model: str,
                   latency_ms: float) -> dict[str, Any]:
    """A model's answer as llmspell's ``AfterModelCall`` shows it (``ctx.data["result"]``)."""
    meta = message.response_metadata or {}
    answered = str(meta.get("model_name") or meta.get("model") or model)
    usage = _usage(message)
    finish = meta.get("finish_reason") or meta.get("stop_reason") or (
        "tool_calls" if message.tool_calls else "stop")
    return _bridge.response_data(message_to_dict(message), finish_reason=str(finish),
                                 model=answered, usage=usage,
                                 cost_usd=_bridge.price_usd(provider, answered, usage),
                                 latency_ms=latency_ms)


def _ai_message_from(raw: Any, model: str) -> AIMessage:
    """A response dict (a hook's ``Modified``/``Replace``, a cached value) as an
    ``AIMessage``; validated like llmspell's own model calls."""
    completion = completion_from(raw, model)
    message = completion.message
    calls = [{"id": c.id or f"call_{new_id()}", "name": c.name, "args": dict(c.arguments),
              "type": "tool_call"} for c in message.tool_calls]
    ai = AIMessage(content=message.content or "", tool_calls=calls,
                   response_metadata={"finish_reason": completion.finish_reason,
                                      "model_name": completion.model})
    usage = completion.usage
    if usage is not None:
        ai.usage_metadata = {"input_tokens": usage.input_tokens,
                             "output_tokens": usage.output_tokens,
                             "total_tokens": usage.total_tokens}
    return ai


def _first_ai(response: ModelResponse[Any]) -> AIMessage:
    for message in response.result:
        if isinstance(message, AIMessage):
            return message
    raise InvalidValueError("the model answered without an AIMessage",
                            hint="a wrap_model_call handler must return the model's answer")


_NAMES_MAX: Final = 256
"""How many chat models :func:`model_names` remembers (then it starts over)."""
_names: dict[int, tuple[weakref.ref[Any] | None, Any, list[Any], tuple[str, str]]] = {}
""":func:`model_names`'s answers by ``id(model)``: (a weak reference to the model, the
model itself when it takes none, its naming state, the answer)."""
_pydantic_getattr: Final = getattr(BaseModel, "__getattr__", None)


def _naming_state(model: Any) -> list[Any] | None:
    """What a chat model's names can depend on, as objects compared by identity: its type
    and the keys and values of its ``__dict__`` and of pydantic's private and extra
    attribute dicts. None when its attributes are not all there (no ``__dict__``, or its
    own ``__getattr__``/``__getattribute__``, as a ``RunnableBinding`` forwarding to the
    model it binds): such a model is not cached."""
    kind = type(model)
    if getattr(kind, "__getattribute__", None) is not object.__getattribute__:
        return None
    hook = getattr(kind, "__getattr__", None)
    if hook is not None and hook is not _pydantic_getattr:
        return None
    own = getattr(model, "__dict__", None)
    if type(own) is not dict:
        return None
    state: list[Any] = [kind]
    for found in (own, getattr(model, "__pydantic_private__", None),
                  getattr(model, "__pydantic_extra__", None)):
        if type(found) is dict:
            state.append(len(found))
            state.extend(found)
            state.extend(found.values())
        else:
            state.append(found)
    return state


def _forget_names(key: int, ref: weakref.ref[Any]) -> None:
    """A cached chat model is gone: drop its entry (unless a newer one took the key)."""
    entry = _names.get(key)
    if entry is not None and entry[0] is ref:
        _names.pop(key, None)


def model_names(model: Any) -> tuple[str, str]:
    """The provider and model name of a LangChain chat model (from its LangSmith params,
    the framework's own description of it).

    Asked on every model call, and ``_get_ls_params`` is slow, so the answer is cached per
    model object: by ``id(model)``, the entry holding a weak reference to the model (the
    model itself if it takes none, so an id is never reused while its entry lives; a dead
    model's entry is dropped), at most :data:`_NAMES_MAX` entries. An entry holds while the
    model's naming state (:func:`_naming_state`) is the same objects: assigning any
    attribute (``model.model_name = ...``, a pydantic field, private or extra attribute)
    asks ``_get_ls_params`` again. Not seen, so not to be done to a model in use: changing
    a value in place (``model.model_kwargs["model"] = ...``, an attribute of a nested
    object) or the model's class. Not cached: a model without a ``__dict__`` or with its
    own ``__getattr__``/``__getattribute__`` (a binding forwarding to another model), and
    an answer taken while ``_get_ls_params`` raised (the fallback names, computed again
    on every call as before)."""
    key = id(model)
    entry = _names.get(key)
    state = _naming_state(model)
    if entry is not None and state is not None:
        weak, _, known, answer = entry
        if ((weak() if weak is not None else entry[1]) is model and len(known) == len(state)
                and all(map(operator.is_, known, state))):
            return answer
    params: Mapping[str, Any] = {}
    failed = False
    getter = getattr(model, "_get_ls_params", None)
    if callable(getter):
        try:
            params = getter()
        except Exception:
            failed = True
    provider = params.get("ls_provider") or getattr(model, "_llm_type", None) or "langchain"
    name = (params.get("ls_model_name") or getattr(model, "model_name", None)
            or getattr(model, "model", None) or type(model).__name__)
    answer = (str(provider), str(name))
    if state is not None and not failed:
        try:
            weak = weakref.ref(model, functools.partial(_forget_names, key))
            strong = None
        except TypeError:  # an object without weak references: the entry keeps it alive
            weak, strong = None, model
        if len(_names) >= _NAMES_MAX:
            _names.clear()
        _names[key] = (weak, strong, state, answer)
    return answer


# -- runs ---------------------------------------------------------------------------------------

_Lineage = tuple[dict[str, str] | None, int | None, str | None, HookContext | None]
"""What a model call a hook made of another keeps of it: (caller, turn, correlation id,
parent context)."""


@dataclass
class _Run:
    """One LangChain agent run as llmspell sees it, from ``before_agent`` to ``after_agent``."""

    key: str
    agent: str
    params: dict[str, Any]
    correlation: str
    llm: _OpenRun | None = None
    ctx: HookContext | None = None
    started: float = field(default_factory=time.perf_counter)
    attempt: int = 1
    turns: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0,
                                                           "total": 0, "calls": 0})
    tools: dict[str, BaseTool] = field(default_factory=dict)
    input_messages: list[BaseMessage] = field(default_factory=list)
    decided: str | None = None
    cache_key: tuple[str, float | None] | None = None
    forks: list[dict[str, Any]] = field(default_factory=list)
    final: str | None = None
    graph: UUID | None = None


def _open_run(system: Any, kind: str, name: str, input: dict[str, Any]) -> _OpenRun | None:
    """Open an llmspell run (a child of the current one, if any) and return it without
    leaving it current: a LangChain run starts and ends in different callbacks, so each
    callback makes it current for its own work (:func:`_in_run`). None on a system without
    runs (events then carry no run id)."""
    runs = getattr(system, "runs", None)
    if runs is None:
        return None
    active = runs.open(kind, name, input)
    active.leave()
    return _OpenRun(runs, active)


@dataclass
class _OpenRun:
    """An llmspell run opened by :func:`_open_run`: the system's runs and the run. Opened
    and closed without awaiting, so a callback that cannot await (a graph run ending where
    no seam saw it) closes it too."""

    runs: Any
    active: Any

    @property
    def run_id(self) -> str:
        return str(self.active.run_id)

    def close(self, output: Any = None, error: BaseException | None = None) -> None:
        """Close the run: completed with ``output``, or failed with ``error``."""
        self.active.enter()  # closing leaves the run: make it current here first
        if error is None:
            self.runs.close(self.active, output=_bridge.json_value(output))
        else:
            self.runs.close(self.active, error=error)


@contextlib.contextmanager
def _in_run(run: _OpenRun | None) -> Iterator[None]:
    """Make ``run`` the current run for the body: events published inside carry its id,
    steps are recorded in it, and a run opened inside (a sub-agent) is its child."""
    if run is None:
        yield
        return
    # Bodies of one run overlap (parallel tool calls, in tasks or threads), each in its own
    # context: each leaves its own entry, not the latest one.
    entry = run.active.enter()
    try:
        yield
    finally:
        run.active.leave(entry)


# -- graph runs that end where no seam sees it ----------------------------------------------------

class _GraphWatch(BaseCallbackHandler):
    """Closes the llmspell run of an agent whose graph run fails or is cancelled where no
    middleware seam sees it: between two nodes, in a node of another middleware, in
    LangGraph itself (a checkpoint being saved), or a stream closed early. LangGraph tells
    a graph run's callbacks how it ended (``on_chain_error``, also for a cancellation),
    but a middleware is no callback of the graph run; so once a middleware exists this
    handler is in every LangChain run of the process (LangChain's configure hook, as
    :func:`llmspell_callbacks` uses), where it only follows graph nodes: which graph run
    each node runs in (a seam finds its graph from its node) and how the graph runs a
    middleware follows end. A graph that ends normally (done, or paused at an interrupt)
    leaves its llmspell run to the seams; an interrupt passing through a subgraph is no
    failure."""

    run_inline = True
    raise_error = False
    ignore_llm = True
    ignore_retry = True
    ignore_agent = True
    ignore_retriever = True
    ignore_chat_model = True
    ignore_custom_event = True

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._nodes: dict[UUID, UUID] = {}
        """Graph node runs now running -> the graph run each runs in."""
        self._graphs: dict[UUID, Callable[[BaseException], None]] = {}
        """Graph runs a middleware follows -> what closes its run when the graph fails."""

    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *,
                       run_id: UUID, parent_run_id: UUID | None = None,
                       metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Note a graph node's graph run (a node run is named after its node)."""
        if parent_run_id is None or not metadata or \
                metadata.get("langgraph_node") != kwargs.get("name"):
            return
        with self._lock:
            if len(self._nodes) >= MAX_OPEN_RUNS * 16:  # runs whose end was never seen
                self._nodes.pop(next(iter(self._nodes)))
            self._nodes[run_id] = parent_run_id

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Forget a node or a graph that ended normally."""
        if self._nodes or self._graphs:
            with self._lock:
                self._nodes.pop(run_id, None)
                self._graphs.pop(run_id, None)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """A followed graph failed, was cancelled or closed early: close its run."""
        if not (self._nodes or self._graphs):
            return
        with self._lock:
            self._nodes.pop(run_id, None)
            close = self._graphs.pop(run_id, None)
        if close is not None and not isinstance(error, GraphBubbleUp):
            try:
                close(error)
            except Exception:  # a callback must not fail the run it reports on
                _bridge.logger.exception("closing the llmspell run of a failed graph failed")

    def follow(self, run: _Run, close: Callable[[BaseException], None]) -> None:
        """Follow the graph run the calling node runs in, for ``run`` (a seam calls this:
        its node's run is the parent of the callbacks LangGraph gives the node)."""
        callbacks = _node_callbacks()
        node = getattr(callbacks, "parent_run_id", None)
        if node is None:
            return
        with self._lock:
            graph = self._nodes.get(node)
            if graph is None or run.graph == graph:
                return
            if len(self._graphs) >= MAX_OPEN_RUNS:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[graph] = close
        run.graph = graph


def _node_callbacks() -> Any:
    try:
        return get_config().get("callbacks")
    except RuntimeError:  # called outside a runnable (a seam called directly)
        return None


_WATCH = _GraphWatch()
_watch_var: contextvars.ContextVar[_GraphWatch | None] = contextvars.ContextVar(
    "llmspell_langchain_graph_watch", default=_WATCH)
_watching = False


def _watch_graphs() -> None:
    """Put :data:`_WATCH` into every LangChain run from now on (once per process)."""
    global _watching
    with _register_lock:
        if not _watching:
            register_configure_hook(_watch_var, True)
            _watching = True


# -- model calls streamed to the consumer --------------------------------------------------------

# LangChain has no public flag for "this model call is streamed": a chat model streams (or
# hands its whole answer on at its end) to whichever callback handler of the call consumes
# it. The handlers are public (the node's config, ``BaseCallbackManager.handlers``); which
# of them feed a stream is not: LangChain marks them with the private protocol
# ``langchain_core.tracers._streaming._StreamingCallbackHandler`` (a runtime-checkable
# protocol: its ``tap_output_iter``/``tap_output_aiter`` methods), and LangGraph's
# ``messages`` handler (``langgraph.pregel._messages``, private) skips calls tagged
# ``nostream`` and calls in subgraphs it was not asked to stream. The private pieces are
# looked up defensively: if they move, the protocol's method names still find streaming
# handlers, and every streaming handler counts (a refusal, never a silently wrong answer).
_streaming_handler: type[Any] | None
_messages_handler: type[Any] | None
_graph_namespace: Callable[[Mapping[str, Any]], tuple[str, ...]] | None
try:
    from langchain_core.tracers import _streaming as _lc_streaming

    _streaming_handler = _lc_streaming._StreamingCallbackHandler
except (ImportError, AttributeError):  # pragma: no cover - a LangChain that moved it
    _streaming_handler = None
try:
    from langgraph.pregel import _messages as _lg_messages

    _messages_handler = _lg_messages.StreamMessagesHandler
    _graph_namespace = _lg_messages.graph_namespace
except (ImportError, AttributeError):  # pragma: no cover - a LangGraph that moved them
    _messages_handler = _graph_namespace = None

_MODEL_OUTPUT = ("on_llm_new_token", "on_llm_end", "on_stream_event")
"""The callbacks through which a chat model's answer reaches a handler."""


_TAPS: Final = ("tap_output_iter", "tap_output_aiter")
"""The streaming-handler methods (the members of LangChain's protocol)."""
_STREAMING_TYPES_MAX: Final = 256
"""How many handler types :func:`_is_streaming` remembers (then it starts over)."""
_streaming_types: dict[type[Any], tuple[Any, Any, Any, Any, bool]] = {}
""":func:`_is_streaming`'s answers by handler type: (the type's two :data:`_TAPS`
attributes and the two markers it was computed with, the answer)."""
_PLAIN_ATTRIBUTES: Final = (FunctionType, staticmethod, classmethod)
"""Class attributes whose value is the same for every instance."""


def _type_decides(kind: type[Any]) -> bool:
    """Whether :func:`_is_streaming`'s answer for an instance of ``kind`` follows from the
    type alone (the instance's own ``__dict__`` not defining the :data:`_TAPS`): attributes
    looked up the ordinary way, and the :data:`_TAPS` absent from the type or plain
    functions or values there, not descriptors (a property, a ``__slots__`` member) whose
    value an instance decides."""
    if getattr(kind, "__getattribute__", None) is not object.__getattribute__ or \
            getattr(kind, "__getattr__", None) is not None:
        return False
    for name in _TAPS:
        for base in kind.__mro__:
            if name in base.__dict__:
                found = base.__dict__[name]
                if not isinstance(found, _PLAIN_ATTRIBUTES) and \
                        hasattr(type(found), "__get__"):
                    return False
                break
    return True


def _is_streaming(handler: Any) -> bool:
    """Whether ``handler`` is one of LangChain's streaming handlers (they feed a stream
    consumer: ``stream_mode="messages"``, ``astream_events``, ``astream_log``): it has the
    streaming-handler methods or is an instance of the classes that mark them.

    Asked for every handler of every model call, and an ``isinstance`` against LangChain's
    runtime-checkable protocol is slow, so the answer is cached per handler type when the
    type decides it (:func:`_type_decides`; the instance's ``__class__`` its type and its
    ``__dict__`` without the :data:`_TAPS`: instance attributes can make the protocol
    match). An entry holds while the type's :data:`_TAPS` attributes and the two markers
    are the objects it was computed with. Not seen: other changes to a handler class after
    its first use (a ``__getattr__`` added), or registering a class with the protocol's
    ``register``."""
    kind = type(handler)
    own = getattr(handler, "__dict__", None)
    by_type = handler.__class__ is kind and not (
        type(own) is dict and (_TAPS[0] in own or _TAPS[1] in own))
    taps = (None, None)
    if by_type:
        taps = getattr(kind, _TAPS[0], None), getattr(kind, _TAPS[1], None)
        entry = _streaming_types.get(kind)
        if entry is not None and entry[0] is taps[0] and entry[1] is taps[1] and \
                entry[2] is _streaming_handler and entry[3] is _messages_handler:
            return entry[4]
    streaming = _compute_streaming(handler)
    if by_type and _type_decides(kind):
        if len(_streaming_types) >= _STREAMING_TYPES_MAX:
            _streaming_types.clear()
        _streaming_types[kind] = (*taps, _streaming_handler, _messages_handler, streaming)
    return streaming


def _compute_streaming(handler: Any) -> bool:
    """:func:`_is_streaming` uncached."""
    streaming = (callable(getattr(handler, "tap_output_iter", None))
                 and callable(getattr(handler, "tap_output_aiter", None)))
    for marker in (_streaming_handler, _messages_handler):
        if not streaming and marker is not None:
            with contextlib.suppress(TypeError):  # a protocol LangChain made non-checkable
                streaming = isinstance(handler, marker)
    return streaming


def _feeds_stream(handler: Any) -> bool:
    """Whether ``handler`` is a streaming handler that passes a chat model's answer on: it
    has LangChain's streaming-handler methods, does not ignore model calls and implements a
    callback that receives the answer (LangGraph's ``tools`` mode handler does not)."""
    if not _is_streaming(handler):
        return False
    if getattr(handler, "ignore_llm", False) is True or \
            getattr(handler, "ignore_chat_model", False) is True:
        return False
    kind = type(handler)
    return any(getattr(kind, name, None) not in (getattr(BaseCallbackHandler, name, None),
                                                 getattr(AsyncCallbackHandler, name, None))
               for name in _MODEL_OUTPUT)


def _model_tags(model: Any) -> set[str]:
    """The tags a chat model (or a binding of one) adds to its calls."""
    tags: set[str] = set()
    for _ in range(8):  # a binding of a binding ...; never a cycle, but bounded anyway
        if model is None:
            break
        own = getattr(model, "tags", None)
        config = getattr(model, "config", None)
        for found in (own, config.get("tags") if isinstance(config, Mapping) else None):
            if isinstance(found, list | tuple):
                tags.update(t for t in found if isinstance(t, str))
        model = getattr(model, "bound", None)
    return tags


def _skips(handler: Any, metadata: Mapping[str, Any], tags: set[str]) -> bool:
    """Whether LangGraph's ``messages`` handler leaves this call out of its stream (as its
    ``on_chat_model_start`` decides); False for any other handler, or when unsure."""
    if _messages_handler is None or not isinstance(handler, _messages_handler):
        return False
    if TAG_NOSTREAM in tags:
        return True
    if getattr(handler, "subgraphs", True) is not False or _graph_namespace is None:
        return False
    try:
        namespace = _graph_namespace(metadata)
    except Exception:  # metadata LangGraph did not write: count the call as streamed
        return False
    return len(namespace) > 0 and namespace != getattr(handler, "parent_ns", None)


def _streamed(model: Any) -> bool:
    """Whether the model call a seam is about to make reaches a stream consumer as it is
    made (``stream_mode="messages"``, ``astream_events``, ``astream_log``): then the
    consumer has the answer before ``AfterModelCall`` sees it."""
    try:
        config = get_config()
    except RuntimeError:  # called outside a runnable (a seam called directly)
        return False
    callbacks = config.get("callbacks")
    handlers = callbacks if isinstance(callbacks, list) else getattr(callbacks, "handlers",
                                                                     None)
    if not isinstance(handlers, list) or not handlers:
        return False
    metadata = config.get("metadata") or {}
    tags = {t for t in config.get("tags") or () if isinstance(t, str)} | _model_tags(model)
    return any(_feeds_stream(h) and not _skips(h, metadata, tags) for h in handlers)


SHADOW_TAG = "llmspell_shadow"
"""The tag of the LangChain runs a ``Fork`` makes (a shadow model call, a forked tool or
agent), besides LangGraph's ``nostream``: tracers show it; no stream consumer sees them."""


@contextlib.contextmanager
def _unstreamed() -> Iterator[None]:
    """Run the body's LangChain calls (a ``Fork``'s shadow) out of every stream: they
    inherit the node's configuration (its tracers, its metadata) without the streaming
    handlers (``stream_mode="messages"``, ``astream_events``, ``astream_log``), and are
    tagged ``nostream`` (LangGraph's ``messages`` handler skips such calls, should one be
    installed some other way) and :data:`SHADOW_TAG`. The body runs in its own task or
    context (a fork of ``run_hooked`` does), so the real call beside it is unaffected."""
    current = var_child_runnable_config.get()
    config: dict[str, Any] = dict(current) if current else {}
    callbacks = config.get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        kept = callbacks.copy()
        for handler in [*callbacks.handlers, *callbacks.inheritable_handlers]:
            if _is_streaming(handler):
                kept.remove_handler(handler)
        config["callbacks"] = kept
    elif isinstance(callbacks, list):
        config["callbacks"] = [h for h in callbacks if not _is_streaming(h)]
    config["tags"] = [*(config.get("tags") or ()), TAG_NOSTREAM, SHADOW_TAG]
    token = var_child_runnable_config.set(cast(RunnableConfig, config))
    try:
        yield
    finally:
        var_child_runnable_config.reset(token)


class _StreamedChecks:
    """The middleware's checked system for a model call streamed to the consumer: as
    :class:`~llmspell.integrations._bridge.CheckedSystem`, but ``AfterModelCall`` refuses
    ``Retry`` and ``Redirect`` (they would take back an answer the consumer already has)
    with a hint saying what to do instead."""

    __slots__ = ("_checked", "_system", "registry")

    def __init__(self, system: Any, checked: _bridge.CheckedSystem) -> None:
        self._system = system
        self._checked = checked
        self.registry = system.registry

    async def dispatch(self, point: str, component: ComponentId, data: dict[str, Any], *,
                       parent: HookContext | None = None, correlation_id: str | None = None,
                       ) -> tuple[ChainResult, HookContext | None]:
        """``system.dispatch``, with the outcome checked (the stricter way at
        ``AfterModelCall``)."""
        if point != HookPoint.AFTER_MODEL_CALL:
            return await self._checked.dispatch(point, component, data, parent=parent,
                                                correlation_id=correlation_id)
        return await _bridge.dispatch(self._system, FRAMEWORK, point, component, data,
                                      honoured=_STREAMED_AFTER_MODEL, parent=parent,
                                      correlation_id=correlation_id, hint=_STREAM_HINT)


# -- the middleware ------------------------------------------------------------------------------

class _State(AgentState[Any]):
    """The agent state plus the private field naming the llmspell run."""

    llmspell_run: NotRequired[Annotated[str | None, PrivateStateAttr]]


_ModelHandler = Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]]
_ToolHandler = Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]]


class _InterruptedError(BaseException):
    """A LangGraph interrupt (``GraphBubbleUp``) on its way through the hooked call: not an
    error for the error points (a ``Retry`` must not re-run it), re-raised as it was."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        super().__init__(str(original))


async def _no_interrupt(step: Awaitable[_T]) -> _T:
    """``await step``, with a LangGraph interrupt wrapped so the hooked call passes it on."""
    try:
        return await step
    except GraphBubbleUp as exc:
        raise _InterruptedError(exc) from None


class _ToolFailedError(Exception):
    """A tool answered with an error message (``status="error"``): the ``ToolError``
    point sees it as a failure; unrecovered, the model gets the message as it was."""

    def __init__(self, message: ToolMessage) -> None:
        self.message = message
        super().__init__(_text(message.content))


_CACHES: weakref.WeakKeyDictionary[Any, tuple[ResultCache, ResultCache, ResultCache]] = (
    weakref.WeakKeyDictionary())
_caches_lock = threading.Lock()


def _caches(system: Any) -> tuple[ResultCache, ResultCache, ResultCache]:
    """What ``Cache`` results store at the tool, model and agent points: one set per system,
    shared by every LangChain agent on it (as the runtime's tool and model caches are)."""
    with _caches_lock:
        found = _CACHES.get(system)
        if found is None:
            found = _CACHES[system] = (ResultCache(), ResultCache(), ResultCache())
        return found


def _middlewares_of(graph: Any) -> list[LlmspellMiddleware]:
    """The ``LlmspellMiddleware`` instances a compiled LangChain agent graph runs: found
    through its nodes, which ``create_agent`` makes of the middleware's bound hook methods
    (``graph.nodes[...].bound.afunc``/``.func``). Anything else (a plain runnable, a graph
    whose layout LangGraph changed) has none: refused as a target, never run unguarded."""
    found: list[LlmspellMiddleware] = []
    nodes = getattr(graph, "nodes", None)
    if not isinstance(nodes, Mapping):
        return found
    for node in nodes.values():
        bound = getattr(node, "bound", None)
        for attribute in ("afunc", "func"):
            owner = getattr(getattr(bound, attribute, None), "__self__", None)
            if isinstance(owner, LlmspellMiddleware) and not any(m is owner for m in found):
                found.append(owner)
    return found


class LlmspellMiddleware(AgentMiddleware[_State, Any, Any]):
    """llmspell's hooks, built-in hooks, events and runs for a LangChain v1 agent.

    ``system``: the llmspell ``System`` whose hooks run and whose bus gets the events.
    ``agent_name``: the agent's name in points and events (default: the ``name`` given to
    ``create_agent``, else ``"agent"``). ``models``: chat models a model ``Redirect`` or a
    ``Fork`` of type ``model`` may name. ``agents``: LangChain agents (``create_agent``
    graphs) an agent ``Redirect`` may name (llmspell agents registered on the system are
    found by name too); each must run an ``LlmspellMiddleware`` of the same system, since
    LangChain cannot add middleware to a compiled graph and a target without it would run
    with no llmspell hooks: anything else raises
    :class:`~llmspell.errors.IntegrationError` (here, and at the redirect for an entry
    added to ``agents`` later). ``tool_cancel``: what a cancelled tool call gives
    the agent: ``"message"`` (an error ``ToolMessage`` the model reads, as llmspell's own
    agents do) or ``"raise"`` (the run fails with ``OperationCancelled``).
    """

    state_schema = _State

    def __init__(self, system: Any, *, agent_name: str | None = None,
                 models: Mapping[str, Any] | None = None,
                 agents: Mapping[str, Any] | None = None,
                 tool_cancel: str = "message", name: str | None = None) -> None:
        check_versions()
        if tool_cancel not in ("message", "raise"):
            raise InvalidValueError(f"tool_cancel must be 'message' or 'raise', got "
                                    f"{tool_cancel!r}",
                                    hint="'message' lets the model read why the call was "
                                         "refused")
        self.system = system
        self.agent_name = agent_name
        self.models = dict(models or {})
        self.agents = dict(agents or {})
        for target_name, target in self.agents.items():
            self._check_governed(target_name, target)
        self.tool_cancel = tool_cancel
        self._name = name or "LlmspellMiddleware"
        self.tools = []
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._specs: dict[int, tuple[Any, dict[str, Any]]] = {}
        self._model_settings: dict[int, tuple[Any, dict[str, Any]]] = {}
        self.sink = _bridge.EventSink(system, "llmspell.langchain")
        self.tool_cache, self.model_cache, self.agent_cache = _caches(system)
        self._checked = _bridge.CheckedSystem(system, FRAMEWORK, HONOURED)
        self._streamed_checks = _StreamedChecks(system, self._checked)
        _watch_graphs()

    @property
    def name(self) -> str:
        """The middleware's node name in the agent graph."""
        return self._name

    # -- runs ---------------------------------------------------------------------------
    def _run_of(self, state: Any) -> _Run | None:
        key = state.get(STATE_KEY) if isinstance(state, Mapping) else getattr(
            state, STATE_KEY, None)
        if not isinstance(key, str):
            return None
        run = self._runs.get(key)
        if run is not None:
            self._follow(run)
        return run

    def _follow(self, run: _Run) -> None:
        """Have the graph run this seam runs in close ``run`` if it fails unseen (a resumed
        run is a new graph run: each seam checks)."""
        _WATCH.follow(run, lambda error: self._close(run, error=error))

    def _resolve_name(self) -> str:
        if self.agent_name:
            return self.agent_name
        name: Any = None
        with contextlib.suppress(Exception):
            from langgraph.config import get_config  # noqa: PLC0415 - inside a node only

            name = (get_config().get("metadata") or {}).get("lc_agent_name")
        return str(name) if name else "agent"

    # -- before_agent -------------------------------------------------------------------
    @hook_config(can_jump_to=["end"])
    def before_agent(self, state: _State, runtime: Any) -> dict[str, Any] | None:
        """``BeforeAgentExecution`` (sync runs); opens the llmspell run."""
        return _blocking(self._before_agent(state))

    @hook_config(can_jump_to=["end"])
    async def abefore_agent(self, state: _State, runtime: Any) -> dict[str, Any] | None:
        """``BeforeAgentExecution`` (async runs); opens the llmspell run."""
        return await self._before_agent(state)

    async def _before_agent(self, state: Mapping[str, Any]) -> dict[str, Any]:
        name = self._resolve_name()
        messages: list[BaseMessage] = list(state.get("messages") or [])
        human = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
        params: dict[str, Any] = {"input": _text(human.content) if human else ""}
        llm = _open_run(self.system, FRAMEWORK, name, params)
        # A run a hook redirected or forked here is that hook's context's child; one a tool
        # runs inherits the tool call's metadata (the user): see inherited_context.
        parent = inherited_context()
        run = _Run(key=new_id(), agent=name, params=params, llm=llm,
                   correlation=parent.correlation_id if parent is not None else new_id(),
                   ctx=parent, input_messages=messages)
        with self._lock:
            if len(self._runs) >= MAX_OPEN_RUNS:  # runs whose end was never seen
                self._runs.pop(next(iter(self._runs)))
            self._runs[run.key] = run
        self._follow(run)
        update: dict[str, Any] = {STATE_KEY: run.key}
        with _in_run(llm):
            started = f"agent.{_segment(name)}.started"
            if self.sink.kept(started):
                self.sink.publish(started, {"params": self.sink.mask(params)}, run.correlation)
            try:
                output = await self._before_agent_hooks(run)
            except BaseException as exc:
                await self._finish(run, error=exc)
                raise
        if output is not None:  # Replace, Redirect or a cache hit: the agent does not run
            update["messages"] = [AIMessage(content=_as_text(output))]
            update["jump_to"] = "end"
        elif run.params.get("input") != params["input"] and human is not None:
            update["messages"] = [HumanMessage(content=str(run.params["input"]), id=human.id)]
            run.input_messages = [m if m is not human else update["messages"][0]
                                  for m in messages]
        return update

    async def _before_agent_hooks(self, run: _Run) -> Any:
        """Run ``BeforeAgentExecution``; the output that replaces the agent's, or None."""
        system = self.system
        point = HookPoint.BEFORE_AGENT_EXECUTION
        if point not in system.registry.chains:
            return None
        comp = _bridge.component(ComponentType.AGENT, run.agent)
        parent = run.ctx
        while True:
            outcome, ctx = await system.dispatch(
                point, comp, {"agent": run.agent, "params": run.params,
                              "attempt": run.attempt}, parent=parent,
                correlation_id=run.correlation)
            result = outcome.result
            if ctx is not None:
                run.ctx = ctx
                run.correlation = ctx.correlation_id
            if type(result) is Continue:  # every hook went on: the common case, no tests
                break
            if isinstance(result, Retry) and run.attempt < result.max_attempts:
                await asyncio.sleep(result.delay)
                run.attempt += 1
                continue
            break
        run.attempt = 1
        if type(result) is not Continue:
            if isinstance(result, Cancel):
                raise cancelled_error(point, result, outcome.decided_by)
            if isinstance(result, Modified) and ctx is not None:
                changed = ctx.data.get("params")
                if not isinstance(changed, dict) or not isinstance(changed.get("input"), str):
                    raise InvalidValueError("BeforeAgentExecution: Modified params must be "
                                            "a table with an 'input' string",
                                            hint="return Modified({'params': {'input': "
                                                 "'...'}})")
                run.params = changed
            if isinstance(result, Replace):
                run.decided = "replaced"
                return result.value
            if isinstance(result, Redirect):
                run.decided = "redirected"
                return await self._other_agent(result.target, run, ctx)
        if outcome.forks:
            run.forks.extend(await self._forks(outcome.forks, ctx))
        if outcome.cache is not None:
            key = cache_key(comp, outcome.cache)
            hit, value = scoped_cache(self.agent_cache).get(key)  # a replay's own
            if hit:
                run.decided = "cached"
                return value
            run.cache_key = (key, outcome.cache.ttl)
        return None

    async def _forks(self, forks: Sequence[Any], ctx: HookContext | None) -> list[dict[str, Any]]:
        with _unstreamed():  # the forks' tasks copy this context as they are made
            return await run_forks(tuple(op for fork in forks for op in fork.operations),
                                   self.system.run_operation, ctx)

    def _check_governed(self, name: str, agent: Any) -> None:
        """Refuse ``agent`` (``agents[name]``) as a ``Redirect`` target unless it runs an
        ``LlmspellMiddleware`` of this system: LangChain cannot add middleware to a compiled
        graph, so a target without one would run with no llmspell hooks at all (a guard
        hook on it, a budget, the security hooks silently not applying)."""
        found = _middlewares_of(agent)
        if any(m.system is self.system for m in found):
            return
        why = ("its LlmspellMiddleware belongs to another llmspell System" if found
               else "it runs no LlmspellMiddleware")
        raise IntegrationError(
            f"agent {name!r} in LlmspellMiddleware(agents=...) is not governed by this "
            f"System: {why}, so a Redirect to it would run without llmspell's hooks "
            "(LangChain cannot add middleware to a compiled graph)",
            hint="build it with create_agent(..., middleware=[LlmspellMiddleware(system)]) "
                 "on the same system, or register an llmspell agent under that name and "
                 "leave it out of agents=")

    async def _other_agent(self, target: str, run: _Run, ctx: HookContext | None) -> Any:
        """The output of agent ``target`` (a LangChain agent in ``agents``, governed by an
        ``LlmspellMiddleware`` of this system, else an llmspell agent on the system) given
        this run's input."""
        other = self.agents.get(target)
        if other is not None:
            self._check_governed(target, other)  # an entry added after construction too
            messages = [m for m in run.input_messages if not isinstance(m, AIMessage)] or [
                HumanMessage(content=str(run.params.get("input", "")))]
            with nested("agent", target), context_as(ctx):  # the hook's context's child
                state = await other.ainvoke({"messages": messages})
            answer = next((m for m in reversed(state.get("messages") or [])
                           if isinstance(m, AIMessage)), None)
            return _text(answer.content) if answer is not None else ""
        registry = getattr(self.system, "agents", None)
        if registry is not None and target in getattr(registry, "names", lambda: [])():
            response = await registry.get(target).run(str(run.params.get("input", "")),
                                                      parent=ctx)
            return response.output
        known = sorted(self.agents) + list(getattr(registry, "names", lambda: [])())
        raise ConfigurationError(f"no agent named {target!r} to redirect to",
                                 hint="pass LlmspellMiddleware(agents={...}) or register an "
                                      "llmspell agent; known: " + (", ".join(known) or "none"))

    # -- after_agent --------------------------------------------------------------------
    @hook_config(can_jump_to=["model"])
    def after_agent(self, state: _State, runtime: Any) -> dict[str, Any] | None:
        """``AfterAgentExecution`` (sync runs); closes the llmspell run."""
        return _blocking(self._after_agent(state))

    @hook_config(can_jump_to=["model"])
    async def aafter_agent(self, state: _State, runtime: Any) -> dict[str, Any] | None:
        """``AfterAgentExecution`` (async runs); closes the llmspell run."""
        return await self._after_agent(state)

    async def _after_agent(self, state: Mapping[str, Any]) -> dict[str, Any] | None:
        run = self._run_of(state)
        if run is None:
            return None
        messages: list[BaseMessage] = list(state.get("messages") or [])
        last = messages[-1] if messages else None
        final = last if isinstance(last, AIMessage) else None
        output: Any = _text(final.content) if final is not None else ""
        update: dict[str, Any] | None = None
        with _in_run(run.llm):
            try:
                if run.decided is None:
                    verdict = await self._after_agent_hooks(run, output)
                    if verdict == "retry":
                        return {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES),
                                             *run.input_messages], "jump_to": "model"}
                    if verdict is not None:
                        output = verdict[0]
                        text = _as_text(output)
                        update = {"messages": [AIMessage(content=text, id=final.id)
                                               if final is not None and final.id
                                               else AIMessage(content=text)]}
                # Only the agent's own answer: not a fallback an AgentError hook recovered
                # with (Replace) nor another agent's (Redirect), as the runtime's agents.
                if run.cache_key is not None and run.decided is None:
                    scoped_cache(self.agent_cache).put(run.cache_key[0], output,
                                                       run.cache_key[1])
            except BaseException as exc:
                await self._finish(run, error=exc)
                raise
            await self._finish(run, output=output)
        return update

    async def _after_agent_hooks(self, run: _Run, output: Any) -> Any:
        """Run ``AfterAgentExecution``: ``(new output,)``, ``"retry"`` or None."""
        system = self.system
        point = HookPoint.AFTER_AGENT_EXECUTION
        if point not in system.registry.chains:
            return None
        comp = _bridge.component(ComponentType.AGENT, run.agent)
        outcome, ctx = await system.dispatch(
            point, comp, {"agent": run.agent, "params": run.params, "attempt": run.attempt,
                          "result": self._result(run, output)},
            parent=run.ctx, correlation_id=run.correlation)
        result = outcome.result
        changed: Any = None
        if type(result) is Continue:  # every hook went on: the common case, no tests
            pass
        elif isinstance(result, Retry) and run.attempt < result.max_attempts:
            await asyncio.sleep(result.delay)
            run.attempt += 1
            return "retry"
        elif isinstance(result, Cancel):
            raise cancelled_error(point, result, outcome.decided_by)
        elif isinstance(result, Modified) and ctx is not None:
            value = ctx.data.get("result")
            changed = (value.get("output") if isinstance(value, dict) else value,)
        elif isinstance(result, Replace):
            changed = (result.value,)
        elif isinstance(result, Redirect):
            run.decided = "redirected"
            changed = (await self._other_agent(result.target, run, ctx),)
        if outcome.forks:
            run.forks.extend(await self._forks(outcome.forks, ctx))
        if outcome.cache is not None:
            value = changed[0] if changed is not None else output
            scoped_cache(self.agent_cache).put(cache_key(comp, outcome.cache), value,
                                               outcome.cache.ttl)
        return changed

    def _result(self, run: _Run, output: Any) -> dict[str, Any]:
        return {"output": output, "turns": run.turns, "tool_calls": run.tool_calls,
                "token_usage": dict(run.usage)}

    async def _finish(self, run: _Run, *, output: Any = None,
                      error: BaseException | None = None) -> None:
        """Publish ``agent.<name>.completed``/``failed`` and close the run (once)."""
        self._close(run, output=output, error=error)

    def _close(self, run: _Run, *, output: Any = None,
               error: BaseException | None = None) -> None:
        """:meth:`_finish` without awaiting (for a graph's callback); only the first call
        for a run has an effect."""
        with self._lock:
            if self._runs.pop(run.key, None) is None:
                return
        topic = f"agent.{_segment(run.agent)}"
        duration = (time.perf_counter() - run.started) * 1000
        with _in_run(run.llm):
            if error is None and self.sink.kept(f"{topic}.completed"):
                data = {**self.sink.mask(self._result(run, output)),
                        "duration_ms": duration, "attempts": run.attempt}
                if run.decided is not None:
                    data[run.decided] = True
                if run.forks:
                    data["forks"] = [{k: v for k, v in f.items() if k != "result"}
                                     for f in run.forks]
                self.sink.publish(f"{topic}.completed", data, run.correlation)
            elif error is not None:
                self.sink.failed(f"{topic}.failed", error, run.correlation,
                                 duration_ms=duration)
        if run.llm is not None:
            run.llm.close(output, error)

    def _step_effects(self, run: _Run | None) -> tuple[SideEffects | None, Any]:
        """A collector for what the llmspell tool calls of one step attempt (a model or
        tool step) declare they change (the tool pipeline notes them: a call from the
        LangChain tool's code, a hook's ``Redirect`` or ``Fork``), made current, and the
        token to leave it with; ``(None, None)`` when nobody may read it (no ``AgentError``
        hook and no enclosing attempt's collector)."""
        if run is not None and (HookPoint.AGENT_ERROR in self.system.registry.chains
                                or current_side_effects() is not None):
            return SideEffects.enter()
        return None, None

    async def _agent_error(self, run: _Run | None, exc: Exception, step: str,
                           effects: SideEffects | None = None) -> Any:
        """``AgentError`` for an error that would end the agent: ``(value,)`` to recover
        with, ``"retry"`` to run the failing step again, or None (the error stands; the
        run is closed as failed). ``effects``: the failed step attempt's collector; its
        ``side_effects`` are in the data (a ``Retry`` runs that step again: the retry
        built-in does not when its tools sent an e-mail)."""
        if run is None or isinstance(exc, GraphBubbleUp):
            return None
        point = HookPoint.AGENT_ERROR
        try:
            if point in self.system.registry.chains:
                comp = _bridge.component(ComponentType.AGENT, run.agent)
                with _in_run(run.llm):
                    outcome, ctx = await self._checked.dispatch(
                        point, comp, {"agent": run.agent, "params": run.params,
                                      "attempt": run.attempt, "step": step,
                                      "error": error_text(exc), "error_type": type(exc).__name__,
                                      **(effects.error_data() if effects is not None
                                         else {"side_effects": []})},
                        parent=run.ctx, correlation_id=run.correlation)
                result = outcome.result
                if isinstance(result, Retry) and run.attempt < result.max_attempts:
                    await asyncio.sleep(result.delay)
                    run.attempt += 1
                    return "retry"
                if isinstance(result, Replace):
                    run.decided = "replaced"
                    return (result.value,)
                if isinstance(result, Redirect):
                    run.decided = "redirected"
                    return (await self._other_agent(result.target, run, ctx),)
                if isinstance(result, Cancel):
                    raise cancelled_error(point, result, outcome.decided_by) from exc
        except BaseException as error:
            await self._finish(run, error=error)
            raise
        await self._finish(run, error=exc)
        return None

    async def _abandoned(self, run: _Run | None, exc: BaseException) -> None:
        """A model or tool step ended by something that is not an error (the task was
        cancelled, an abandoned stream was closed, the process is stopping): the agent
        will not reach ``after_agent``, so its run is closed here as failed."""
        if run is not None:
            await self._finish(run, error=exc)

    # -- model calls --------------------------------------------------------------------
    def wrap_model_call(self, request: ModelRequest[Any],
                        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
                        ) -> ModelResponse[Any]:
        """A model request as the hooked operation (sync runs)."""

        async def call(req: ModelRequest[Any]) -> ModelResponse[Any]:
            return handler(req)

        return _blocking(self._model_step(request, call))

    async def awrap_model_call(
            self, request: ModelRequest[Any],
            handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """A model request as the hooked operation (async runs)."""
        return await self._model_step(request, handler)

    async def _model_step(self, request: ModelRequest[Any],
                          handler: _ModelHandler) -> ModelResponse[Any]:
        run = self._run_of(request.state)
        if run is not None and run.final is not None:  # an AgentError hook answered
            return ModelResponse(result=[AIMessage(content=run.final)])
        while True:
            # One collector per attempt of the step: a Retry runs only this step again.
            effects, token = self._step_effects(run)
            try:
                try:
                    with _in_run(run.llm if run is not None else None):
                        return await self._model_call(request, handler, run)
                finally:
                    if token is not None:
                        SideEffects.leave(token)
            except Exception as exc:
                verdict = await self._agent_error(run, exc, "model", effects)
                if verdict == "retry":
                    continue
                if verdict is None:
                    raise
                return ModelResponse(result=[AIMessage(content=_as_text(verdict[0]))])
            except BaseException as exc:
                await self._abandoned(run, exc)
                raise

    def _tool_spec(self, tool: Any) -> dict[str, Any]:
        known = self._specs.get(id(tool))
        if known is not None and known[0] is tool:
            return known[1]
        if isinstance(tool, dict):
            spec = {"name": str(tool.get("name") or tool.get("type") or "tool"),
                    "description": str(tool.get("description") or ""),
                    "parameters": _bridge.json_value(tool.get("parameters") or {})}
        else:
            function = convert_to_openai_tool(tool)["function"]
            spec = {"name": function["name"], "description": function.get("description", ""),
                    "parameters": function.get("parameters") or {"type": "object"}}
        if len(self._specs) > 1024:
            self._specs.clear()
        self._specs[id(tool)] = (tool, spec)
        return spec

    def _settings_of(self, model: Any) -> dict[str, Any]:
        """What ``model`` (the chat model instance) is configured with that can change its
        answer (:func:`_instance_settings`), worked out once per instance."""
        known = self._model_settings.get(id(model))
        if known is not None and known[0] is model:
            return known[1]
        found = _instance_settings(model)
        if len(self._model_settings) > 1024:
            self._model_settings.clear()
        self._model_settings[id(model)] = (model, found)
        return found

    def _request_params(self, request: ModelRequest[Any], streamed: bool,
                        ) -> tuple[dict[str, Any], list[BaseMessage]]:
        messages: list[BaseMessage] = list(request.messages)
        if request.system_message is not None:
            messages.insert(0, request.system_message)
        settings = request.model_settings or {}
        model = request.model
        temperature = settings.get("temperature", getattr(model, "temperature", None))
        max_tokens = settings.get("max_tokens", getattr(model, "max_tokens", None))
        return _bridge.request_data(
            [message_to_dict(m) for m in messages],
            [self._tool_spec(t) for t in request.tools],
            temperature=temperature if isinstance(temperature, int | float) else None,
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            stream=streamed or getattr(model, "streaming", False) is True,
            settings=_bridge.request_settings(
                {**self._settings_of(model), **settings}, skip=_TRANSPORT_SETTINGS,
                tool_choice=request.tool_choice,
                response_format=_response_format(request.response_format))), messages

    def _apply_request(self, request: ModelRequest[Any], original: dict[str, Any],
                       sent: list[BaseMessage], params: dict[str, Any]) -> ModelRequest[Any]:
        """``request`` with what a hook changed in ``params`` (validated first)."""
        if params is original:
            return request
        if params.get("settings", original.get("settings")) != original.get("settings"):
            raise _bridge.settings_changed(
                "model call", "change messages, tools, temperature or max_tokens, or set "
                "the setting in another middleware")
        _, tools, temperature, max_tokens = request_args(params)
        before = original["messages"]
        messages = [sent[i] if i < len(before) and raw == before[i] else _message_from(raw)
                    for i, raw in enumerate(params["messages"])]
        system_message = None
        if messages and isinstance(messages[0], SystemMessage):
            system_message = cast(SystemMessage, messages.pop(0))
        by_name = {self._tool_spec(t)["name"]: t for t in request.tools}
        chosen = []
        for i, spec in enumerate(tools):
            if spec.name not in by_name:
                raise InvalidValueError(
                    f"model call: params.tools[{i}] names {spec.name!r}, which the agent "
                    "does not have", hint="a hook may drop tools, not add new ones")
            chosen.append(by_name[spec.name])
        settings = dict(request.model_settings or {})
        if temperature != original.get("temperature"):
            settings["temperature"] = temperature
        if max_tokens != original.get("max_tokens"):
            settings["max_tokens"] = max_tokens
        return request.override(messages=cast(list[Any], messages), system_message=system_message,
                                tools=chosen, model_settings=settings)

    def _resolve_model(self, target: str) -> Any:
        model = self.models.get(target)
        if model is None:
            raise ConfigurationError(
                f"no chat model named {target!r} to send the call to",
                hint="pass LlmspellMiddleware(models={name: chat_model}); known: "
                     + (", ".join(sorted(self.models)) or "none"))
        return model

    async def _model_call(self, request: ModelRequest[Any], handler: _ModelHandler,
                          run: _Run | None,
                          lineage: _Lineage | None = None) -> ModelResponse[Any]:
        """One model call through the model points. ``lineage``: a call a hook made of
        another (a ``Redirect``, a shadow ``Fork``), which keeps the caller it is given, the
        turn, the correlation and, as its parent, the context of the hook that made it (so
        the metadata that names the user, and with it budgets and rate limits, reach it).
        Each call is nested in the chain of operations it runs in, so a model ``Redirect``
        loop ends as the runtime's does: past the nesting bound
        (:data:`~llmspell.runtime.nesting.MAX_DEPTH`) with
        :class:`~llmspell.errors.OperationDepthError`."""
        system = self.system
        provider, model = model_names(request.model)
        if run is not None:
            run.turns += 1
            for tool in request.tools:
                if isinstance(tool, BaseTool):
                    run.tools[tool.name] = tool
        if lineage is not None:
            caller, turn, correlation, parent = lineage
        else:
            caller = {"type": "agent", "name": run.agent} if run is not None else None
            turn = run.turns if run is not None else None
            correlation = run.correlation if run is not None else None
            parent = run.ctx if run is not None else None
        streamed = _streamed(request.model)
        params, sent = self._request_params(request, streamed)
        base = {"provider": provider, "model": model, "caller": caller, "turn": turn}
        comp = _bridge.component(ComponentType.MODEL, f"{provider}/{model}")
        topic = f"model.{_segment(provider)}"
        answered: list[tuple[dict[str, Any], ModelResponse[Any]]] = []

        async def invoke(call_params: dict[str, Any], attempt: int) -> Any:
            req = self._apply_request(request, params, sent, call_params)
            if self.sink.kept(f"{topic}.started"):
                self.sink.publish(f"{topic}.started", {"model": model, "caller": caller,
                                                       "turn": turn, "attempt": attempt},
                                  correlation)
            started = time.perf_counter()
            response = await _no_interrupt(handler(req))
            latency = (time.perf_counter() - started) * 1000
            value = _response_dict(_first_ai(response), provider, model, latency)
            answered.append((value, response))
            return value

        async def other(target: str, call_params: dict[str, Any], ctx: HookContext | None,
                        as_caller: dict[str, str] | None) -> ModelResponse[Any]:
            # A loop of redirects ends at the nesting bound (OperationDepthError), as the
            # runtime's model redirects and the other adapters' do.
            req = self._apply_request(request, params, sent, call_params).override(
                model=self._resolve_model(target))
            return await self._model_call(req, handler, None,
                                          (as_caller, turn, correlation, ctx))

        async def redirect(target: str, call_params: dict[str, Any],
                           ctx: HookContext | None) -> Any:
            response = await other(target, call_params, ctx, caller)
            value = _response_dict(_first_ai(response), *model_names(
                self._resolve_model(target)), 0.0)
            answered.append((value, response))
            return value

        async def fork(op: ForkOperation, ctx: HookContext | None) -> Any:
            if op.type != "model":
                with _unstreamed():
                    return await system.run_operation(op, ctx)
            with _unstreamed():  # the shadow's answer must never reach a stream consumer
                shadow = await other(op.target, {**params, **op.parameters}, ctx,
                                     {"type": "shadow", "name": f"{provider}/{model}"})
            value = _response_dict(_first_ai(shadow), provider, model, 0.0)
            self.sink.publish(f"{topic}.shadow", {
                "model": op.target, "shadowing": f"{provider}/{model}", "caller": caller,
                "turn": turn, "usage": value["usage"],
                "response": self.sink.record(value["message"])}, correlation)
            return value

        try:
            with nested("model", comp.name):
                outcome: CallOutcome = await run_hooked(
                    self._streamed_checks if streamed else self._checked,
                    points=MODEL_POINTS, component=comp, base=base,
                    params=params,
                    invoke=invoke, redirect=redirect, fork=fork, cache=self.model_cache,
                    parent=parent, correlation_id=correlation,
                    error_data=_model_error_extra)
        except _InterruptedError as interrupted:
            raise interrupted.original  # noqa: B904 - the interrupt as LangGraph raised it
        except OperationCancelled as exc:
            self.sink.failed(f"{topic}.failed", exc, correlation, model=model,
                             caller=caller, turn=turn)
            raise model_call_cancelled_error(f"{provider}/{model}", exc.point, exc,
                                             exc.hook) from exc
        except Exception as exc:
            self.sink.failed(f"{topic}.failed", exc, correlation, model=model,
                             caller=caller, turn=turn)
            raise
        value = outcome.result
        own = None if outcome.rewritten else next(
            (r for v, r in answered if v is value), None)
        response = own if own is not None else ModelResponse(
            result=[_ai_message_from(value, model)])
        recorded = value if isinstance(value, dict) and "message" in value else \
            _response_dict(_first_ai(response), provider, model, 0.0)
        if run is not None:
            usage = recorded.get("usage") or {}
            if usage:
                run.usage["input"] += int(usage.get("input_tokens") or 0)
                run.usage["output"] += int(usage.get("output_tokens") or 0)
                run.usage["total"] += int(usage.get("total_tokens") or 0)
                run.usage["calls"] += 1
        self.sink.model_completed(
            _segment(provider), model=model, caller=caller, turn=turn, request=params,
            response=recorded, attempts=outcome.attempts, cached=outcome.cached,
            replaced=outcome.replaced, redirected_to=outcome.redirected_to,
            correlation_id=correlation)
        return response

    # -- tool calls ----------------------------------------------------------------------
    def wrap_tool_call(self, request: ToolCallRequest,
                       handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
                       ) -> ToolMessage | Command[Any]:
        """A tool call as the hooked operation (sync runs)."""

        async def call(req: ToolCallRequest) -> ToolMessage | Command[Any]:
            return handler(req)

        return _blocking(self._tool_step(request, call))

    async def awrap_tool_call(
            self, request: ToolCallRequest,
            handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """A tool call as the hooked operation (async runs)."""
        return await self._tool_step(request, handler)

    async def _tool_step(self, request: ToolCallRequest,
                         handler: _ToolHandler) -> ToolMessage | Command[Any]:
        run = self._run_of(request.state)
        while True:
            # One collector per attempt of the step: a Retry runs only this tool call again.
            effects, token = self._step_effects(run)
            try:
                try:
                    with _in_run(run.llm if run is not None else None):
                        return await self._tool_call(request, handler, run)
                finally:
                    if token is not None:
                        SideEffects.leave(token)
            except Exception as exc:
                verdict = await self._agent_error(run, exc, "tool", effects)
                if verdict == "retry":
                    continue
                if verdict is None:
                    raise
                call = request.tool_call
                # The hook's value is the agent's answer: the next model step gives it
                # without asking the model (a tool node cannot end the agent itself).
                text = _as_text(verdict[0])
                if run is not None:
                    run.final = text
                return ToolMessage(content=text, tool_call_id=call.get("id") or "",
                                   name=call["name"], status="error")
            except BaseException as exc:
                await self._abandoned(run, exc)
                raise

    async def _tool_call(self, request: ToolCallRequest, handler: _ToolHandler,
                         run: _Run | None, *, parent: HookContext | None = None,
                         path: tuple[str, ...] = ()) -> ToolMessage | Command[Any]:
        """One tool call through the tool points. ``path``: for a redirect target (see
        ``redirect`` below), the tools the call went through before it, the model's own
        call first, and ``parent`` the context of the hook that redirected (the parent of
        the target's points: its metadata, which names the user, and its correlation). A
        redirect target's failure (a ``Cancel`` too) is raised to the call that redirected,
        after its own ``tool.<target>.failed`` event."""
        system = self.system
        call = request.tool_call
        name = call["name"]
        call_id = call.get("id") or ""
        args: dict[str, Any] = dict(call.get("args") or {})
        comp = _bridge.component(ComponentType.TOOL, name)
        topic = f"tool.{_segment(name)}"
        if parent is None and run is not None:
            parent = run.ctx
        correlation = (parent.correlation_id if path and parent is not None
                       else run.correlation if run is not None else None)
        here = (*path, name)
        produced: list[tuple[Any, ToolMessage | Command[Any]]] = []
        started = time.perf_counter()
        entry: dict[str, Any] = {"tool": name, "arguments": args}
        # What the llmspell tool calls of the latest attempt (from the LangChain tool's
        # code) declared, for the ToolError data: a Retry runs the tool again.
        effects = ToolAttemptEffects()

        async def invoke(call_params: dict[str, Any], attempt: int) -> Any:
            if path and request.tool is not None:  # a redirect target: LangChain's check
                _check_arguments(request.tool, call_params, path)
            req = request if call_params is args else request.override(
                tool_call={**call, "args": call_params})
            if self.sink.kept(f"{topic}.started"):
                self.sink.publish(f"{topic}.started", {"params": self.sink.mask(call_params),
                                                       "attempt": attempt}, correlation)
            token = effects.enter(attempt, system.registry.chains)
            try:
                out = await _no_interrupt(handler(req))
            finally:
                if token is not None:
                    SideEffects.leave(token)
            if isinstance(out, ToolMessage) and out.status == "error":
                raise _ToolFailedError(out)
            value = _tool_value(out)
            produced.append((value, out))
            return value

        async def redirect(target: str, call_params: dict[str, Any],
                           ctx: HookContext | None) -> Any:
            # One of the agent's own tools runs as a tool call of its own: its tool points
            # (a security hook guarding it holds), its events, a further Redirect one deeper.
            if len(here) > MAX_TOOL_REDIRECTS:
                raise redirect_loop_error(target, len(here), here)
            tool = run.tools.get(target) if run is not None else None
            if tool is not None:
                out = await self._tool_call(request.override(
                    tool_call={**call, "name": target, "args": call_params}, tool=tool),
                    handler, run, parent=ctx, path=here)
                value = _tool_value(out)
                produced.append((value, out))
                return value
            if target in system.tools:  # its redirects go on counting: one bound in all
                return (await system.tools.run(target, call_params, parent=ctx,
                                               correlation_id=correlation,
                                               _depth=len(here))).result
            raise ToolNotFoundError(target, f"no tool named {target!r} to redirect to",
                                    hint="name a tool of the agent or an llmspell tool")

        async def fork(op: ForkOperation, ctx: HookContext | None) -> Any:
            with _unstreamed():
                return await system.run_operation(op, ctx)

        def error_data(exc: BaseException, data: dict[str, Any]) -> dict[str, Any]:
            return effects.error_data(data["attempt"])

        try:
            with nested("tool", name):
                outcome: CallOutcome = await run_hooked(
                    self._checked, points=_TOOL_POINTS, component=comp, base={"tool": name},
                    params=args, invoke=invoke, redirect=redirect, fork=fork,
                    cache=self.tool_cache, parent=parent, correlation_id=correlation,
                    error_data=error_data)
        except _InterruptedError as interrupted:
            if path:  # a redirect target's: the call that redirected passes it on
                raise
            raise interrupted.original  # noqa: B904 - the interrupt as LangGraph raised it
        except OperationCancelled as exc:
            self._tool_failed(topic, exc, started, correlation, run, entry)
            if self.tool_cancel == "raise" or path:
                raise
            return ToolMessage(content=json.dumps({"error": error_text(exc)}), tool_call_id=call_id,
                               name=name, status="error")
        except _ToolFailedError as failed:
            self._tool_failed(topic, failed, started, correlation, run, entry)
            if path:
                raise
            return failed.message
        except Exception as exc:
            self._tool_failed(topic, exc, started, correlation, run, entry)
            raise
        value = outcome.result
        own = None if outcome.rewritten else next((o for v, o in produced if v is value), None)
        out = own if own is not None else ToolMessage(
            content=value if isinstance(value, str) else json.dumps(_bridge.json_value(value)),
            tool_call_id=call_id, name=name)
        duration = (time.perf_counter() - started) * 1000
        if self.sink.kept(f"{topic}.completed"):
            self.sink.publish(f"{topic}.completed", {
                "result": self.sink.mask(value), "attempts": outcome.attempts,
                "cached": outcome.cached, "replaced": outcome.replaced,
                "redirected_to": outcome.redirected_to, "duration_ms": duration}, correlation)
        if run is not None:
            entry["result"] = value
            run.tool_calls.append(entry)
        return out

    def _tool_failed(self, topic: str, exc: BaseException, started: float,
                     correlation: str | None, run: _Run | None,
                     entry: dict[str, Any]) -> None:
        self.sink.failed(f"{topic}.failed", exc, correlation,
                         duration_ms=(time.perf_counter() - started) * 1000)
        if run is not None:
            entry["error"] = str(exc)
            run.tool_calls.append(entry)


_TRANSPORT_SETTINGS: Final = ("timeout", "request_timeout", "max_retries", "extra_headers",
                               "metadata", "tags", "callbacks", "run_name", "run_id")
"""Model settings that do not change the answer (how long to wait, how often to try
again, headers and tracing metadata, which may change on every call)."""


_MODEL_FRAMEWORK_FIELDS: Final = frozenset(BaseChatModel.model_fields) - {"output_version"}
"""Fields every LangChain chat model has that do not change its answer (its name, cache,
callbacks, tags, metadata, rate limiter, token counter, profile, streaming switch)."""

_TRANSPORT_FIELD: Final = re.compile(
    r"timeout|retr(?:y|ies)|client|header|proxy|callback|verbose|rate_limit|stream|"
    r"^(?:cache|tags|metadata|run_name|run_id|name)$")
"""Names of chat model fields about how a call is made, not what it answers (timeouts,
retries, HTTP clients, headers, proxies, callbacks, streaming: ``params.stream`` says
that), left out of ``params.settings`` as :data:`_TRANSPORT_SETTINGS` are."""

_DROP: Final = object()


def _instance_settings(model: Any) -> dict[str, Any]:
    """The settings a chat model instance was configured with that can change its answer
    (for ``params.settings``): its pydantic fields whose value is not the field's default
    (what LangChain's own serialization, and with it its LLM cache key, keeps), such as
    ``model``/``model_id``, ``top_p``, ``top_k``, ``stop``, ``seed``, the penalties,
    ``model_kwargs``, a bound ``response_format``; a ``RunnableBinding``'s ``kwargs`` over
    its model's. Never secrets (``SecretStr`` values, the model's ``lc_secrets``, keys that
    look sensitive: :func:`~llmspell.runtime.content.has_sensitive_key`, at any depth)
    nor transport (:data:`_TRANSPORT_FIELD`, :data:`_TRANSPORT_SETTINGS`); JSON-safe."""
    if isinstance(model, RunnableBinding):
        return {**_instance_settings(model.bound), **_plain_settings(model.kwargs)}
    if not isinstance(model, BaseModel):
        return {}
    secrets: set[str] = set()
    with contextlib.suppress(Exception):  # a property a model may compute
        secrets.update(str(k) for k in (getattr(model, "lc_secrets", None) or {}))
    raw: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        if (name in _MODEL_FRAMEWORK_FIELDS or info.exclude is True or name in secrets
                or (info.alias is not None and info.alias in secrets)):
            continue
        value = getattr(model, name, None)
        if value is None:
            continue
        try:
            if value == info.get_default(call_default_factory=True):
                continue
        except Exception:  # a default that cannot be made or compared: kept
            _bridge.logger.debug("default of %s.%s", type(model).__name__, name,
                                 exc_info=True)
        raw[name] = value
    return _plain_settings(raw)


def _plain_settings(raw: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key)
        if _TRANSPORT_FIELD.search(name) or name in _TRANSPORT_SETTINGS:
            continue
        plain = _plain(name, value, 0)
        if plain is not _DROP and plain is not None:
            found[name] = plain
    return found


def _plain(key: str, value: Any, depth: int) -> Any:
    """``value`` (of ``key``) JSON-safe, without secrets: :data:`_DROP` for a secret (a
    ``SecretStr``/``SecretBytes``, a sensitive key) or for what is not data (a function,
    an iterator, a client: its text would differ per object and may tell too much)."""
    if has_sensitive_key({key: None}) or isinstance(value, SecretStr | SecretBytes):
        return _DROP
    if depth >= _bridge.JSON_VALUE_DEPTH:
        return f"<{type(value).__name__} nested too deep>"
    if isinstance(value, Enum):
        value = value.value
    if value is None or isinstance(value, str | bool | int | float):
        return _bridge.json_value(value)  # a str or int subclass plain; NaN as its text
    if isinstance(value, Mapping):
        items = ((str(k), _plain(str(k), v, depth + 1)) for k, v in value.items())
        return {k: v for k, v in items if v is not _DROP}
    if isinstance(value, set | frozenset):
        value = sorted(value, key=repr)
    if isinstance(value, list | tuple):
        return [v for v in (_plain(key, v, depth + 1) for v in value) if v is not _DROP]
    try:
        if isinstance(value, BaseModel):  # a response format, a config: its fields
            return _plain(key, value.model_dump(mode="json"), depth + 1)
        if isinstance(value, type) and issubclass(value, BaseModel):  # a schema
            return _plain(key, value.model_json_schema(), depth + 1)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return _plain(key, {f.name: getattr(value, f.name)
                                for f in dataclasses.fields(value)}, depth + 1)
    except Exception:  # a model pydantic cannot dump: left out like other objects
        _bridge.logger.debug("settings value %r", key, exc_info=True)
    return _DROP


def _response_format(response_format: Any) -> Any:
    """What a request's ``response_format`` asks for, for ``params.settings``: the
    strategy and its schemas (name, description, JSON Schema, strict), not the Python
    objects behind them; else its JSON-safe form."""
    if response_format is None:
        return None
    specs = getattr(response_format, "schema_specs", None)
    single = getattr(response_format, "schema_spec", None)
    if specs is None and single is not None:
        specs = [single]
    if isinstance(specs, list | tuple):
        return {"strategy": type(response_format).__name__,
                "schemas": [{"name": getattr(spec, "name", None),
                             "description": getattr(spec, "description", None),
                             "schema": _bridge.json_value(getattr(spec, "json_schema", None)),
                             "strict": getattr(spec, "strict", None)} for spec in specs],
                "tool_message_content": _bridge.json_value(
                    getattr(response_format, "tool_message_content", None))}
    schema = getattr(response_format, "schema", response_format)
    dump = getattr(schema, "model_json_schema", None)
    if callable(dump):
        try:
            return {"strategy": type(response_format).__name__, "schema": dump()}
        except Exception:  # a schema pydantic cannot describe: its text below
            _bridge.logger.debug("model_json_schema of %r failed", schema, exc_info=True)
    return _bridge.json_value(response_format)


def _check_arguments(tool: BaseTool, params: dict[str, Any], path: tuple[str, ...]) -> None:
    """Validate a redirect target's arguments as LangChain validates a call's (the tool's
    ``tool_call_schema``, the arguments a model may give): arguments it refuses raise
    :class:`~llmspell.errors.ToolValidationError` naming the first bad field."""
    schema = tool.tool_call_schema
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        return  # a JSON-schema tool: LangChain does not validate its arguments either
    try:
        schema.model_validate(params)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        loc = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else ""
        where = f"params.{loc}" if loc else "params"
        reason = f"{where}: {errors[0].get('msg', '')}" if errors else brief(exc)
        raise ToolValidationError(
            tool.name, f"a call redirected from tool {path[-1]!r} to tool {tool.name!r} has "
                       f"arguments {tool.name!r} refuses ({reason})", where,
            hint=f"redirect to a tool whose parameters match the call's, or repair the "
                 f"arguments for {tool.name!r} with Modified at its BeforeToolExecution "
                 f"hooks") from exc


def _tool_value(out: ToolMessage | Command[Any]) -> Any:
    """What the tool points show as a tool's result: its message's content."""
    if isinstance(out, ToolMessage):
        return _bridge.json_value(out.content)
    return {"command": _bridge.json_value(getattr(out, "update", None))}


def _model_error_extra(exc: BaseException, data: dict[str, Any]) -> dict[str, Any]:
    data = _bridge.model_error_data(exc)
    return {k: v for k, v in data.items() if k not in ("error", "error_type")}


# -- callbacks: observation for chains and graphs ---------------------------------------------

_OBSERVED = frozenset({"cancel"})
"""What a callback seam honours besides Continue/Skipped: Cancel (the callback raises
OperationCancelled, so the operation does not run, or its result is discarded)."""


@dataclass
class _Span:
    """One LangChain run a callback handler follows (a root chain, a model or a tool call)."""

    kind: str
    name: str
    correlation: str
    llm: _OpenRun | None
    started: float
    ctx: HookContext | None = None
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class _Observer:
    """What both callback handlers do, as coroutines."""

    def __init__(self, system: Any) -> None:
        check_versions()
        self.system = system
        self.sink = _bridge.EventSink(system, "llmspell.langchain")
        self.spans: dict[UUID, _Span] = {}
        self.roots: dict[UUID, UUID] = {}
        self._lock = threading.Lock()

    def _root(self, parent: UUID | None) -> _Span | None:
        if parent is None:
            return None
        root = self.roots.get(parent, parent)
        return self.spans.get(root)

    def _link(self, run_id: UUID, parent: UUID | None) -> None:
        with self._lock:
            if parent is not None:
                if len(self.roots) >= MAX_OPEN_RUNS * 16:  # runs whose end was never seen
                    self.roots.pop(next(iter(self.roots)))
                self.roots[run_id] = self.roots.get(parent, parent)

    def _keep(self, run_id: UUID, span: _Span) -> None:
        """Follow ``span`` (under the lock), forgetting the oldest past the bound."""
        if len(self.spans) >= MAX_OPEN_RUNS * 16:  # runs whose end was never seen
            self.spans.pop(next(iter(self.spans)))
        self.spans[run_id] = span

    async def _dispatch(self, point: str, comp: ComponentId, data: dict[str, Any],
                        span: _Span, parent: HookContext | None) -> HookContext | None:
        outcome, ctx = await _bridge.dispatch(
            self.system, FRAMEWORK, point, comp, data, honoured=_OBSERVED, parent=parent,
            correlation_id=span.correlation,
            hint="a LangChain callback only observes: use LlmspellMiddleware on a "
                 "create_agent agent to change what runs")
        result = outcome.result
        if type(result) is not Continue and isinstance(result, Cancel):
            raise cancelled_error(point, result, outcome.decided_by)
        return ctx

    # -- chains (the root one is the run) ------------------------------------------------
    async def chain_start(self, serialized: Mapping[str, Any] | None, inputs: Any,
                          run_id: UUID, parent: UUID | None, name: str | None) -> None:
        if parent is not None:
            self._link(run_id, parent)
            return
        label = name or (serialized or {}).get("name") or "chain"
        params = {"input": _bridge.json_value(_chain_input(inputs))}
        llm = _open_run(self.system, FRAMEWORK, str(label), params)
        span = _Span("agent", str(label), new_id(), llm, time.perf_counter(), params=params)
        with self._lock:
            self._keep(run_id, span)
        with _in_run(llm):
            self.sink.publish(f"agent.{_segment(span.name)}.started",
                              {"params": self.sink.mask(params)}, span.correlation)
            try:
                span.ctx = await self._dispatch(
                    HookPoint.BEFORE_AGENT_EXECUTION,
                    _bridge.component(ComponentType.AGENT, span.name),
                    {"agent": span.name, "params": params, "attempt": 1}, span, None)
            except BaseException as exc:
                await self._end_root(run_id, error=exc)
                raise

    async def chain_end(self, outputs: Any, run_id: UUID) -> None:
        span = self.spans.get(run_id)
        if span is None or span.kind != "agent":
            return
        output = _bridge.json_value(_chain_output(outputs))
        with _in_run(span.llm):
            try:
                await self._dispatch(
                    HookPoint.AFTER_AGENT_EXECUTION,
                    _bridge.component(ComponentType.AGENT, span.name),
                    {"agent": span.name, "params": span.params, "attempt": 1,
                     "result": {"output": output}}, span, span.ctx)
            except BaseException as exc:
                await self._end_root(run_id, error=exc)
                raise
        await self._end_root(run_id, output=output)

    async def chain_error(self, error: BaseException, run_id: UUID) -> None:
        span = self.spans.get(run_id)
        if span is None or span.kind != "agent":
            return
        try:
            with _in_run(span.llm):
                await self._dispatch(
                    HookPoint.AGENT_ERROR, _bridge.component(ComponentType.AGENT, span.name),
                    {"agent": span.name, "params": span.params, "attempt": 1,
                     "error": error_text(error), "error_type": type(error).__name__},
                    span, span.ctx)
        finally:
            await self._end_root(run_id, error=error)

    async def _end_root(self, run_id: UUID, *, output: Any = None,
                        error: BaseException | None = None) -> None:
        with self._lock:
            span = self.spans.pop(run_id, None)
            for child in [c for c, r in self.roots.items() if r == run_id]:
                del self.roots[child]
        if span is None:
            return
        topic = f"agent.{_segment(span.name)}"
        duration = (time.perf_counter() - span.started) * 1000
        with _in_run(span.llm):
            if error is None:
                self.sink.publish(f"{topic}.completed",
                                  {"output": self.sink.mask(output), "duration_ms": duration},
                                  span.correlation)
            else:
                self.sink.failed(f"{topic}.failed", error, span.correlation,
                                 duration_ms=duration)
        if span.llm is not None:
            span.llm.close(output, error)

    def _child(self, kind: str, name: str, run_id: UUID, parent: UUID | None,
               params: dict[str, Any], **extra: Any) -> tuple[_Span, _Span | None]:
        self._link(run_id, parent)
        root = self._root(parent)
        span = _Span(kind, name, root.correlation if root is not None else new_id(),
                     root.llm if root is not None else None,
                     time.perf_counter(), params=params, extra=extra)
        with self._lock:
            self._keep(run_id, span)
        return span, root

    def _pop(self, run_id: UUID, kind: str) -> _Span | None:
        with self._lock:
            span = self.spans.get(run_id)
            if span is None or span.kind != kind:
                return None
            del self.spans[run_id]
            self.roots.pop(run_id, None)
            return span

    # -- model calls ------------------------------------------------------------------------
    async def model_start(self, serialized: Mapping[str, Any] | None,
                          messages: Sequence[Sequence[BaseMessage]], run_id: UUID,
                          parent: UUID | None, metadata: Mapping[str, Any] | None,
                          invocation: Mapping[str, Any] | None) -> None:
        meta = metadata or {}
        provider = str(meta.get("ls_provider") or "langchain")
        model = str(meta.get("ls_model_name") or (serialized or {}).get("name") or "model")
        call = invocation or {}
        tools = [{"name": str(t.get("function", t).get("name", "tool")),
                  "description": str(t.get("function", t).get("description", "")),
                  "parameters": _bridge.json_value(t.get("function", t).get("parameters",
                                                                            {}))}
                 for t in call.get("tools") or [] if isinstance(t, dict)]
        params = _bridge.request_data(
            [message_to_dict(m) for m in (messages[0] if messages else [])], tools,
            temperature=meta.get("ls_temperature"), max_tokens=meta.get("ls_max_tokens"),
            stream=bool(call.get("stream")))
        span, root = self._child("model", model, run_id, parent, params, provider=provider)
        caller = {"type": "agent", "name": root.name} if root is not None else None
        span.extra["caller"] = caller
        with _in_run(span.llm):
            self.sink.publish(f"model.{_segment(provider)}.started",
                              {"model": model, "caller": caller, "turn": None, "attempt": 1},
                              span.correlation)
            span.ctx = await self._dispatch(
                HookPoint.BEFORE_MODEL_CALL,
                _bridge.component(ComponentType.MODEL, f"{provider}/{model}"),
                {"provider": provider, "model": model, "caller": caller, "turn": None,
                 "params": params, "attempt": 1}, span, root.ctx if root else None)

    async def model_end(self, response: LLMResult, run_id: UUID) -> None:
        span = self._pop(run_id, "model")
        if span is None:
            return
        provider = span.extra["provider"]
        latency = (time.perf_counter() - span.started) * 1000
        generation = response.generations[0][0] if response.generations and \
            response.generations[0] else None
        message = getattr(generation, "message", None)
        if isinstance(message, AIMessage):
            value = _response_dict(message, provider, span.name, latency)
        else:
            text = getattr(generation, "text", "") if generation is not None else ""
            value = _bridge.response_data(_bridge.message_dict("assistant", text),
                                          finish_reason="stop", model=span.name, usage=None,
                                          cost_usd=None, latency_ms=latency)
        with _in_run(span.llm):
            await self._dispatch(
                HookPoint.AFTER_MODEL_CALL,
                _bridge.component(ComponentType.MODEL, f"{provider}/{span.name}"),
                {"provider": provider, "model": span.name, "caller": span.extra["caller"],
                 "turn": None, "params": span.params, "attempt": 1, "result": value},
                span, span.ctx)
            self.sink.model_completed(_segment(provider), model=span.name,
                                      caller=span.extra["caller"], turn=None,
                                      request=span.params, response=value,
                                      correlation_id=span.correlation)

    async def model_error(self, error: BaseException, run_id: UUID) -> None:
        span = self._pop(run_id, "model")
        if span is None:
            return
        provider = span.extra["provider"]
        with _in_run(span.llm):
            self.sink.failed(f"model.{_segment(provider)}.failed", error, span.correlation,
                             model=span.name, caller=span.extra["caller"], turn=None)
            await self._dispatch(
                HookPoint.MODEL_CALL_ERROR,
                _bridge.component(ComponentType.MODEL, f"{provider}/{span.name}"),
                {"provider": provider, "model": span.name, "caller": span.extra["caller"],
                 "turn": None, "params": span.params, "attempt": 1,
                 **_bridge.model_error_data(error)}, span, span.ctx)

    # -- tool calls -------------------------------------------------------------------------
    async def tool_start(self, serialized: Mapping[str, Any] | None, input_str: str,
                         run_id: UUID, parent: UUID | None, name: str | None,
                         inputs: Mapping[str, Any] | None,
                         metadata: Mapping[str, Any] | None = None) -> None:
        tool = str(name or (serialized or {}).get("name") or "tool")
        params = _bridge.json_value(dict(inputs)) if isinstance(inputs, Mapping) else \
            {"input": input_str}
        span, root = self._child("tool", tool, run_id, parent, params)
        span.extra["side_effects"] = _declared_effects(self.system, tool, params, metadata)
        with _in_run(span.llm):
            self.sink.publish(f"tool.{_segment(tool)}.started",
                              {"params": self.sink.mask(params), "attempt": 1},
                              span.correlation)
            span.ctx = await self._dispatch(
                HookPoint.BEFORE_TOOL_EXECUTION,
                _bridge.component(ComponentType.TOOL, tool),
                _bridge.tool_data(tool, params), span, root.ctx if root else None)

    async def tool_end(self, output: Any, run_id: UUID) -> None:
        span = self._pop(run_id, "tool")
        if span is None:
            return
        value = _tool_value(output) if isinstance(output, ToolMessage | Command) else \
            _bridge.json_value(output)
        with _in_run(span.llm):
            await self._dispatch(
                HookPoint.AFTER_TOOL_EXECUTION, _bridge.component(ComponentType.TOOL,
                                                                  span.name),
                _bridge.tool_data(span.name, span.params, result=value), span, span.ctx)
            self.sink.publish(f"tool.{_segment(span.name)}.completed", {
                "result": self.sink.mask(value), "attempts": 1, "cached": False,
                "duration_ms": (time.perf_counter() - span.started) * 1000},
                span.correlation)

    async def tool_error(self, error: BaseException, run_id: UUID) -> None:
        span = self._pop(run_id, "tool")
        if span is None:
            return
        with _in_run(span.llm):
            self.sink.failed(f"tool.{_segment(span.name)}.failed", error, span.correlation,
                             duration_ms=(time.perf_counter() - span.started) * 1000)
            await self._dispatch(
                HookPoint.TOOL_ERROR, _bridge.component(ComponentType.TOOL, span.name),
                _bridge.tool_data(span.name, span.params, error=str(error),
                                  error_type=type(error).__name__,
                                  side_effects=span.extra.get("side_effects", [])),
                span, span.ctx)


def _declared_effects(system: Any, tool: str, params: Any,
                      metadata: Mapping[str, Any] | None) -> list[str]:
    """The side effects a tool call the callback handlers observe declares, for its
    ``ToolError`` data: an llmspell tool's (a tool of ``system.tools`` of that name, its
    ``side_effects_for`` the call's arguments) and those named under ``"side_effects"`` in
    the run's metadata (a LangChain tool's ``metadata={"side_effects": ["email"]}``, or
    the config's), sorted. A plain LangChain tool declares none (``[]``): the handlers
    only observe, so unlike the middleware they cannot see the llmspell tool calls the
    tool's code makes."""
    found: set[str] = set()
    tools = getattr(system, "tools", None)
    if tools is not None and tool in tools:
        own = tools.get(tool)
        try:
            found.update(str(e) for e in own.side_effects_for(
                params if isinstance(params, dict) else {}))
        except Exception:  # arguments its check cannot read: what it declares in general
            found.update(str(e) for e in own.side_effects)
    declared = (metadata or {}).get("side_effects")
    if isinstance(declared, str):
        declared = [declared]
    if isinstance(declared, list | tuple | set | frozenset):
        found.update(str(e) for e in declared if isinstance(e, str))
    return sorted(found)


def _chain_input(inputs: Any) -> Any:
    if isinstance(inputs, Mapping) and "messages" in inputs:
        messages = inputs["messages"]
        if isinstance(messages, list) and messages:
            last = messages[-1]
            if isinstance(last, BaseMessage):
                return _text(last.content)
            if isinstance(last, Mapping):
                return last.get("content")
    return inputs


def _chain_output(outputs: Any) -> Any:
    if isinstance(outputs, Mapping) and "messages" in outputs:
        messages = outputs["messages"]
        if isinstance(messages, list) and messages and isinstance(messages[-1], BaseMessage):
            return _text(messages[-1].content)
    if isinstance(outputs, BaseMessage):
        return _text(outputs.content)
    return outputs


class LlmspellCallbackHandler(BaseCallbackHandler):
    """llmspell's points and events for any LangChain run (sync callbacks).

    The root chain of a run (a chain, a LangGraph graph) is an llmspell run and an agent
    (``BeforeAgentExecution``/``AfterAgentExecution``/``AgentError``); each chat-model
    call fires the model points and each tool call the tool points, with the data
    llmspell's own runtime gives them. Callbacks observe: ``Cancel`` stops the operation
    (``OperationCancelled`` is raised from the callback); any other result that would
    change what runs raises :class:`~llmspell.errors.UnsupportedHookResultError`. Use
    :class:`LlmspellMiddleware` on ``create_agent`` agents for full control (and do not
    install both on the same agent: its points would fire twice).
    """

    raise_error = True
    run_inline = True

    def __init__(self, system: Any) -> None:
        self.observer = _Observer(system)

    def on_chain_start(self, serialized: dict[str, Any], inputs: dict[str, Any], *,
                       run_id: UUID, parent_run_id: UUID | None = None,
                       **kwargs: Any) -> None:
        """The root chain starts: the run and ``BeforeAgentExecution``."""
        _blocking(self.observer.chain_start(serialized, inputs, run_id, parent_run_id,
                                            kwargs.get("name")))

    def on_chain_end(self, outputs: dict[str, Any], *, run_id: UUID,
                     parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """The root chain ends: ``AfterAgentExecution``; the run completes."""
        _blocking(self.observer.chain_end(outputs, run_id))

    def on_chain_error(self, error: BaseException, *, run_id: UUID,
                       parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """The root chain fails: ``AgentError``; the run fails."""
        _blocking(self.observer.chain_error(error, run_id))

    def on_chat_model_start(self, serialized: dict[str, Any],
                            messages: list[list[BaseMessage]], *, run_id: UUID,
                            parent_run_id: UUID | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """``BeforeModelCall``."""
        _blocking(self.observer.model_start(serialized, messages, run_id, parent_run_id,
                                            metadata, kwargs.get("invocation_params")))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID,
                   parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """``AfterModelCall``."""
        _blocking(self.observer.model_end(response, run_id))

    def on_llm_error(self, error: BaseException, *, run_id: UUID,
                     parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """``ModelCallError``."""
        _blocking(self.observer.model_error(error, run_id))

    def on_tool_start(self, serialized: dict[str, Any], input_str: str, *, run_id: UUID,
                      parent_run_id: UUID | None = None,
                      inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """``BeforeToolExecution``."""
        _blocking(self.observer.tool_start(serialized, input_str, run_id, parent_run_id,
                                           kwargs.get("name"), inputs, kwargs.get("metadata")))

    def on_tool_end(self, output: Any, *, run_id: UUID,
                    parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """``AfterToolExecution``."""
        _blocking(self.observer.tool_end(output, run_id))

    def on_tool_error(self, error: BaseException, *, run_id: UUID,
                      parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """``ToolError``."""
        _blocking(self.observer.tool_error(error, run_id))


class AsyncLlmspellCallbackHandler(AsyncCallbackHandler):
    """:class:`LlmspellCallbackHandler` with async callbacks (for ``ainvoke``/``astream``:
    hooks run on the caller's event loop)."""

    raise_error = True

    def __init__(self, system: Any) -> None:
        self.observer = _Observer(system)

    async def on_chain_start(self, serialized: dict[str, Any], inputs: dict[str, Any], *,
                             run_id: UUID, parent_run_id: UUID | None = None,
                             **kwargs: Any) -> None:
        """The root chain starts: the run and ``BeforeAgentExecution``."""
        await self.observer.chain_start(serialized, inputs, run_id, parent_run_id,
                                        kwargs.get("name"))

    async def on_chain_end(self, outputs: dict[str, Any], *, run_id: UUID,
                           parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """The root chain ends: ``AfterAgentExecution``; the run completes."""
        await self.observer.chain_end(outputs, run_id)

    async def on_chain_error(self, error: BaseException, *, run_id: UUID,
                             parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """The root chain fails: ``AgentError``; the run fails."""
        await self.observer.chain_error(error, run_id)

    async def on_chat_model_start(self, serialized: dict[str, Any],
                                  messages: list[list[BaseMessage]], *, run_id: UUID,
                                  parent_run_id: UUID | None = None,
                                  metadata: dict[str, Any] | None = None,
                                  **kwargs: Any) -> None:
        """``BeforeModelCall``."""
        await self.observer.model_start(serialized, messages, run_id, parent_run_id,
                                        metadata, kwargs.get("invocation_params"))

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID,
                         parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """``AfterModelCall``."""
        await self.observer.model_end(response, run_id)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID,
                           parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """``ModelCallError``."""
        await self.observer.model_error(error, run_id)

    async def on_tool_start(self, serialized: dict[str, Any], input_str: str, *,
                            run_id: UUID, parent_run_id: UUID | None = None,
                            inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """``BeforeToolExecution``."""
        await self.observer.tool_start(serialized, input_str, run_id, parent_run_id,
                                       kwargs.get("name"), inputs, kwargs.get("metadata"))

    async def on_tool_end(self, output: Any, *, run_id: UUID,
                          parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """``AfterToolExecution``."""
        await self.observer.tool_end(output, run_id)

    async def on_tool_error(self, error: BaseException, *, run_id: UUID,
                            parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """``ToolError``."""
        await self.observer.tool_error(error, run_id)


# -- global installation ------------------------------------------------------------------------

_handler_var: contextvars.ContextVar[BaseCallbackHandler | None] = contextvars.ContextVar(
    "llmspell_langchain_handler", default=None)
_registered = False
_register_lock = threading.Lock()


def _register() -> None:
    global _registered
    with _register_lock:
        if not _registered:
            register_configure_hook(_handler_var, True)
            _registered = True


@contextlib.contextmanager
def llmspell_callbacks(system: Any, *, asynchronous: bool = False,
                       ) -> Iterator[BaseCallbackHandler]:
    """Give every LangChain run started inside the ``with`` block (in this context, and
    tasks started from it) llmspell's callback handler, as LangChain's own
    ``get_usage_metadata_callback`` does: through a context variable LangChain's
    configuration reads (``register_configure_hook``). ``asynchronous``: the async
    handler (hooks run on the caller's loop; for ``ainvoke``/``astream``)."""
    _register()
    handler: BaseCallbackHandler = (AsyncLlmspellCallbackHandler(system) if asynchronous
                                    else LlmspellCallbackHandler(system))
    token = _handler_var.set(handler)
    try:
        yield handler
    finally:
        _handler_var.reset(token)
