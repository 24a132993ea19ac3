"""llmspell hooks, built-in hooks and events inside pydantic-ai agents.

``Agent(model, capabilities=[LlmspellCapability(system)])`` installs one pydantic-ai
capability that maps the agent's own seams onto llmspell's points (docs/integrations/
pydantic-ai.md has the full table):

* the run (``wrap_run``): ``BeforeAgentExecution``, ``AfterAgentExecution``, ``AgentError``;
  the run is an llmspell run (``system.runs.start(kind="pydantic-ai")``) and publishes
  ``agent.<name>.started``/``.completed``/``.failed``;
* each model request (``wrap_model_request``, ``after_model_request``,
  ``on_model_request_error``): ``BeforeModelCall``, ``AfterModelCall``, ``ModelCallError``
  with the data ``system.models.call`` gives them (``provider``, ``model``, ``caller``,
  ``turn``, ``attempt``, ``params`` = messages/tools/temperature/max_tokens/stream,
  ``result`` = message/finish_reason/model/usage/cost_usd/latency_ms), publishing
  ``model.<provider>.started``/``.completed``/``.failed``;
* each tool call (``wrap_tool_validate``, ``wrap_tool_execute``): ``ToolValidation``,
  ``BeforeToolExecution``, ``AfterToolExecution``, ``ToolError`` with the tool pipeline's
  data (``tool``, ``params``, ``attempt``, ``result``, ``error``), publishing
  ``tool.<name>.started``/``.completed``/``.failed``.

Results go through pydantic-ai's own controls: a cancelled tool call is a ``ToolFailed``
the model sees, a replaced tool result skips the tool, a replaced model answer skips the
request, a retried or redirected model request is a ``RetryModelRequest``, a redirected
tool call runs another of the agent's tools (through its own tool points, its arguments
validated as pydantic-ai validates a call's), else an llmspell tool, a recovered error is
the value the seam returns. A result a seam cannot honour raises
:class:`~llmspell.errors.UnsupportedHookResultError` when a hook returns it. The provider
is the pydantic-ai model's ``system`` (``openai``, ``anthropic``, ``function``, ``test``),
the model its ``model_name``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Final, Literal

from llmspell.core.errors import (
    ConfigurationError,
    InvalidValueError,
    OperationCancelledError,
    ToolExecutionError,
    ToolValidationError,
    UnsupportedHookResultError,
    brief,
)
from llmspell.core.ids import new_id
from llmspell.core.operation_scope import OperationScope
from llmspell.core.text import error_text
from llmspell.hooks.context import ComponentId, ComponentType, HookContext
from llmspell.hooks.executor import ChainResult
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import (
    MAX_RETRY_DELAY,
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
from llmspell.runtime.models import (
    MODEL_POINTS,
    completion_from,
    messages_from,
    request_args,
    request_dict,
)
from llmspell.runtime.nesting import nested
from llmspell.runtime.tools.registry import (
    MAX_TOOL_REDIRECTS,
    SideEffects,
    ToolAttemptEffects,
    current_side_effects,
    redirect_loop_error,
)

try:
    from pydantic import ValidationError
    from pydantic_ai import RunContext
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.capabilities.abstract import (
        RawToolArgs,
        ValidatedToolArgs,
        WrapModelRequestHandler,
        WrapRunHandler,
        WrapToolExecuteHandler,
        WrapToolValidateHandler,
    )
    from pydantic_ai.exceptions import (
        ApprovalRequired,
        CallDeferred,
        ModelRetry,
        RetryModelRequest,
        SkipToolExecution,
        ToolFailed,
    )
    from pydantic_ai.messages import (
        InstructionPart,
        ModelMessage,
        ModelRequest,
        ModelRequestPart,
        ModelResponse,
        ModelResponsePart,
        RetryPromptPart,
        SystemPromptPart,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
        UserPromptPart,
    )
    from pydantic_ai.models import (
        Model,
        ModelRequestContext,
        ModelRequestParameters,
        infer_model,
    )
    from pydantic_ai.run import AgentRunResult
    from pydantic_ai.settings import ModelSettings
    from pydantic_ai.tools import ToolDefinition
    from pydantic_ai.usage import RequestUsage
except ImportError as _exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        f"llmspell.integrations.pydantic_ai needs pydantic-ai ({_exc})",
        hint="pip install 'llmspell[pydantic-ai]'") from None

__all__ = ["FRAMEWORK", "HONOURED", "SUPPORTED", "LlmspellCapability"]

FRAMEWORK: Final = "pydantic-ai"
"""The framework's name: the extra, the run kind, the name in errors."""
DISTRIBUTION: Final = "pydantic-ai-slim"
SUPPORTED: Final = ">=2.60,<3"
"""The pydantic-ai-slim versions this adapter supports (the extra's range)."""
_SOURCE: Final = "llmspell.integrations.pydantic_ai"

_ALL: Final = frozenset({"modified", "cancel", "replace", "redirect", "retry", "fork",
                         "cache"})
_RECOVER: Final = frozenset({"replace", "redirect", "retry", "cancel"})
HONOURED: Final[Mapping[str, frozenset[str]]] = {
    HookPoint.BEFORE_AGENT_EXECUTION: _ALL,
    HookPoint.AFTER_AGENT_EXECUTION: _ALL,
    HookPoint.AGENT_ERROR: _RECOVER,
    HookPoint.BEFORE_MODEL_CALL: _ALL,
    HookPoint.AFTER_MODEL_CALL: _ALL,
    HookPoint.MODEL_CALL_ERROR: _RECOVER,
    HookPoint.TOOL_VALIDATION: frozenset({"modified", "cancel"}),
    HookPoint.BEFORE_TOOL_EXECUTION: _ALL,
    HookPoint.AFTER_TOOL_EXECUTION: _ALL,
    HookPoint.TOOL_ERROR: _RECOVER,
}
"""Per point, the results (besides ``Continue`` and ``Skipped``) the adapter honours.
``AfterModelCall`` honours ``Retry`` and ``Redirect`` only for a request that is not
streamed (a streamed answer already reached the consumer)."""

_TOOL_POINTS = CallPoints(HookPoint.BEFORE_TOOL_EXECUTION, HookPoint.AFTER_TOOL_EXECUTION,
                          HookPoint.TOOL_ERROR)
_FINISH = {"stop": "stop", "tool_calls": "tool_call", "tool_call": "tool_call",
           "length": "length", "content_filter": "content_filter", "error": "error"}
_STREAM_HINT = ("a streamed answer has reached the consumer: Retry or Redirect it at "
                "ModelCallError, or use Modified/Replace/Cancel at AfterModelCall")


class _RunState:
    """One pydantic-ai run as the adapter tracks it (a context variable holds it)."""

    __slots__ = ("agent", "caller", "component", "correlation", "ctx", "effects", "failing",
                 "history", "prompt", "recovered", "redirected", "rewrite", "settled")

    def __init__(self, agent: str, correlation: str, prompt: str | None,
                 history: list[ModelMessage], ctx: HookContext | None = None) -> None:
        self.agent = agent
        self.ctx = ctx
        """The run's context (its ``BeforeAgentExecution``'s, else its parent): the parent
        of its model requests and tool calls, so the metadata naming the user reaches
        them."""
        self.component = _bridge.component(ComponentType.AGENT, agent)
        self.caller = {"type": "agent", "name": agent}
        self.correlation = correlation
        self.prompt = prompt
        self.history = history
        self.rewrite: str | None = None
        self.failing: tuple[dict[str, Any], dict[str, Any], HookContext | None, int] | None \
            = None
        """What an ``AgentError`` dispatch of the current attempt carries: params, base
        data, the ``BeforeAgentExecution`` context, the attempt."""
        self.settled = False
        """True once ``on_run_error`` took the run from its failed body to its end (its
        result or error is the run's)."""
        self.redirected = False
        """Another agent answered (a ``Redirect`` at ``AgentError``/``AfterAgentExecution``):
        its output is not this run's to cache."""
        self.recovered = False
        """An ``AgentError`` hook's ``Replace`` answered: a fallback, never cached as the
        run's output (a ``BeforeAgentExecution`` ``Cache`` does not store it)."""
        self.effects: SideEffects | None = None
        """The side effects the current attempt's llmspell tool calls declare (the tool
        pipeline notes them), for its ``AgentError`` data; None when nobody reads them."""


class _Step:
    """One model request step (``wrap_model_request``), read by its attempts' hooks."""

    __slots__ = ("attempts", "before", "component", "forks", "key", "model", "params",
                 "provider", "recovered", "redirected_to", "response", "run", "started",
                 "tools", "turn")

    def __init__(self, run: _RunState, before: HookContext | None, params: dict[str, Any],
                 provider: str, model: str, component: ComponentId, turn: int,
                 tools: list[ToolDefinition] | None = None) -> None:
        self.run = run
        self.tools: list[ToolDefinition] = tools or []
        """The function tools the request offers (what a shadow call may offer too)."""
        self.turn = turn
        self.before = before
        self.params = params
        self.provider = provider
        self.model = model
        self.component = component
        self.started = time.perf_counter()
        self.attempts = 1
        self.response: dict[str, Any] | None = None
        self.forks: list[dict[str, Any]] = []
        self.redirected_to: str | None = None
        """The model an attempt was redirected to (``AfterModelCall``/``ModelCallError``):
        its answer is not this request's to cache."""
        self.recovered = False
        """A ``ModelCallError`` hook's ``Replace`` answered: a fallback, never cached as
        the request's answer (a ``BeforeModelCall`` ``Cache`` does not store it)."""
        self.key: tuple[str | None, Any, Any] | None = None
        """What identifies the request for the cache's aliases besides ``params`` (see
        :func:`_request_key`), taken once at the before point."""


_RUN: ContextVar[_RunState | None] = ContextVar("llmspell_pydantic_ai_run", default=None)
_STEP: ContextVar[_Step | None] = ContextVar("llmspell_pydantic_ai_step", default=None)
_AGAIN: ContextVar[_RunState | None] = ContextVar("llmspell_pydantic_ai_again", default=None)
"""Set while the adapter runs an agent again for ``Retry``: that inner run is the same
llmspell run, so its ``wrap_run`` only passes through."""
_PASSING: ContextVar[_RunState | None] = ContextVar("llmspell_pydantic_ai_passing",
                                                    default=None)
"""The run an inner run (see ``_AGAIN``) belongs to: its ``on_run_error`` passes the error
on to the attempt loop of that run, which decides about it."""


class _Redirected:
    """A tool call a hook's ``Redirect`` sent to another of the agent's tools, as the
    capability's own tool seams find it (``_REDIRECTED``) when pydantic-ai runs that tool."""

    __slots__ = ("call_id", "ctx", "path", "tool")

    def __init__(self, tool: str, call_id: str, ctx: HookContext | None,
                 path: tuple[str, ...]) -> None:
        self.tool = tool
        self.call_id = call_id
        self.ctx = ctx
        """The context of the hook that redirected: the parent of the target's points (its
        metadata, which names the user, and its correlation)."""
        self.path = path
        """The tools the call went through before ``tool``, the model's own call first."""

    def names(self, call: ToolCallPart) -> bool:
        return call.tool_name == self.tool and call.tool_call_id == self.call_id


_REDIRECTED: ContextVar[_Redirected | None] = ContextVar("llmspell_pydantic_ai_redirected",
                                                         default=None)
"""Set while the adapter runs a redirect target through pydantic-ai's tool manager: the
target's ``wrap_tool_validate``/``wrap_tool_execute`` take their parent context and the
redirect depth from it."""


class _PassThroughError(OperationCancelledError):
    """Carries pydantic-ai's control flow (a skipped or deferred call) through
    ``run_hooked``, which re-raises cancellations without dispatching ``ToolError``."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(HookPoint.BEFORE_TOOL_EXECUTION, type(original).__name__)
        self.original = original


class LlmspellCapability(AbstractCapability[Any]):
    """A pydantic-ai capability that runs llmspell's hooks at the agent's run, model-request
    and tool seams and records the run's events (see the module docstring).

    ``system``: the llmspell System (hooks, built-ins, bus, store). ``name``: the agent's
    name in points and events (default: the pydantic-ai agent's ``name``, else
    ``"agent"``). ``models``: ``Redirect`` targets at the model points by name (a pydantic-ai
    ``Model`` or model string); other targets are model names pydantic-ai infers
    (``"test"``, ``"openai:gpt-4o"``, ``"openai/gpt-4o"``). ``agents``: ``Redirect``
    targets at the agent points and ``Fork`` targets of type ``agent`` (pydantic-ai agents
    by name; else an agent registered in ``system.agents``; a forked or redirected
    pydantic-ai agent runs governed by this capability when it has none of its own).
    ``tool_cancel``: what a cancelled tool call does: ``"fail"`` (the default) reports it
    to the model as a failed tool call (pydantic-ai's ``ToolFailed``), ``"raise"`` ends the run with
    :class:`~llmspell.errors.OperationCancelledError`.

    Raises :class:`~llmspell.errors.UnsupportedFrameworkVersionError` when the installed
    pydantic-ai-slim is outside :data:`SUPPORTED`.
    """

    def __init__(self, system: Any, *, name: str | None = None,
                 models: Mapping[str, Model | str] | None = None,
                 agents: Mapping[str, Any] | None = None,
                 tool_cancel: Literal["fail", "raise"] = "fail") -> None:
        _bridge.check_version(FRAMEWORK, DISTRIBUTION, SUPPORTED)
        if not all(hasattr(system, a) for a in ("dispatch", "registry", "bus", "config")):
            raise InvalidValueError(
                f"LlmspellCapability needs an llmspell System, got {type(system).__name__}",
                hint="LlmspellCapability(System()) - see llmspell.runtime.System")
        if tool_cancel not in ("fail", "raise"):
            raise InvalidValueError(f"tool_cancel must be 'fail' or 'raise', got "
                                    f"{tool_cancel!r}",
                                    hint="'fail' tells the model the call failed; 'raise' "
                                         "ends the run")
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidValueError("name must be a non-empty string",
                                    hint="LlmspellCapability(system, name='support-agent')")
        super().__init__()
        self.system = system
        self.name = name
        self.models = dict(models or {})
        self.agents = dict(agents or {})
        self.tool_cancel = tool_cancel
        self.model_cache = ResultCache()
        """What ``Cache`` results store at the model points (response dicts)."""
        self.tool_cache = ResultCache()
        """What ``Cache`` results store at the tool points."""
        self.run_cache = ResultCache()
        """What ``Cache`` results store at the agent points (run outputs)."""
        self._chains = system.registry.chains
        self._checked = _bridge.CheckedSystem(system, FRAMEWORK, HONOURED)
        self._events = _bridge.EventSink(system, _SOURCE)

    # -- shared -----------------------------------------------------------------------------
    async def _dispatch(self, point: HookPoint, component: ComponentId,
                        data: dict[str, Any], *, parent: HookContext | None = None,
                        correlation: str | None = None,
                        honoured: frozenset[str] | None = None,
                        hint: str | None = None) -> tuple[ChainResult, HookContext | None]:
        return await _bridge.dispatch(
            self.system, FRAMEWORK, point, component, data,
            honoured=HONOURED[point] if honoured is None else honoured,
            parent=parent, correlation_id=correlation, hint=hint)

    async def _forks(self, operations: tuple[ForkOperation, ...],
                     ctx: HookContext | None) -> list[dict[str, Any]]:
        return await run_forks(operations, self._fork, ctx)

    async def _fork(self, op: ForkOperation, ctx: HookContext | None) -> Any:
        if op.type == "model":
            step = _STEP.get()
            if step is None:
                raise ConfigurationError("a model fork runs beside a model call",
                                         hint="return Fork of type 'model' at a model point")
            return await self._shadow(op, step, ctx)
        if op.type == "agent" and op.target in self.agents:
            given = op.parameters.get("input")
            if given is None:  # the prompt of the run it forks from (a hook's rewrite too)
                state = _RUN.get()
                given = (state.rewrite or state.prompt) if state is not None else None
            return _bridge.json_value(await self._agent_output(
                op.target, "" if given is None else str(given), ctx, govern=True))
        return await self.system.run_operation(op, ctx)

    async def _agent_output(self, target: str, prompt: str, ctx: HookContext | None, *,
                            govern: bool) -> Any:
        """The output of the pydantic-ai agent ``self.agents[target]`` (a ``Fork`` or
        ``Redirect`` target) for ``prompt``: a run of its own, never streamed, its model
        requests and tool calls its own (the adapter state of the run it came from does not
        reach it). ``govern`` (a ``Fork`` or ``Redirect``): the run is governed even when the
        agent has no :class:`LlmspellCapability` (this one is added for this run: agent
        points, model and tool seams, events, a child llmspell run); an agent with one of
        its own is governed by it alone, never twice. An agent reached again inside its own
        fork or redirect is refused with :class:`~llmspell.errors.AgentCycleError`, so a
        hook that forks or redirects on every run cannot loop. Its run is a child of
        ``ctx``, the context of the hook that forked or redirected (its metadata, which
        names the user, and its correlation)."""
        agent = self.agents[target]
        with nested("agent", target), context_as(ctx):
            run_token = _RUN.set(None)
            step_token = _STEP.set(None)
            again_token = _AGAIN.set(None)
            passing_token = _PASSING.set(None)
            try:
                result = await agent.run(
                    prompt, capabilities=[self] if govern and not _governed(agent) else None)
            finally:
                _PASSING.reset(passing_token)
                _AGAIN.reset(again_token)
                _STEP.reset(step_token)
                _RUN.reset(run_token)
        return result.output

    def _agent_name(self, ctx: RunContext[Any]) -> str:
        if self.name is not None:
            return self.name
        agent = ctx.agent
        name = getattr(agent, "name", None) if agent is not None else None
        return name if isinstance(name, str) and name else "agent"

    # -- the run ------------------------------------------------------------------------------
    async def wrap_run(self, ctx: RunContext[Any], *,
                       handler: WrapRunHandler) -> AgentRunResult[Any]:
        """The run as an llmspell run, with the agent points around it."""
        again = _AGAIN.get()
        if again is not None:  # the adapter runs this agent again (Retry): the same run
            _AGAIN.set(None)
            _RUN.set(again)
            _PASSING.set(again)
            return await handler()
        name = self._agent_name(ctx)
        prompt = _prompt_text(ctx.prompt)
        async with _bridge.run_scope(self.system, FRAMEWORK, name, {"prompt": prompt}) as run:
            # A run a hook redirected or forked here is that hook's context's child; one a
            # tool runs (a delegated sub-agent) inherits the tool call's metadata.
            parent = inherited_context()
            state = _RunState(name, parent.correlation_id if parent is not None else new_id(),
                              prompt, list(ctx.messages), parent)
            token = _RUN.set(state)
            step_token = _STEP.set(None)  # a sub-agent's requests are not its caller's
            started = time.perf_counter()
            self._events.publish(f"agent.{name}.started",
                                 {"input": prompt, "framework": FRAMEWORK}, state.correlation)
            try:
                result = await self._run(ctx, handler, state)
            except BaseException as exc:
                self._events.failed(f"agent.{name}.failed", exc, state.correlation,
                                    framework=FRAMEWORK,
                                    duration_ms=(time.perf_counter() - started) * 1000)
                raise
            finally:
                _STEP.reset(step_token)
                _RUN.reset(token)
            output = _bridge.json_value(result.output)
            if run is not None:
                run.output = {"output": output}
            if self._events.kept(f"agent.{name}.completed"):  # data built only if kept
                self._events.publish(
                    f"agent.{name}.completed",
                    {"output": self._events.mask(output), "framework": FRAMEWORK,
                     "usage": _run_usage(result),
                     "duration_ms": (time.perf_counter() - started) * 1000},
                    state.correlation)
            return result

    async def _run(self, ctx: RunContext[Any], handler: WrapRunHandler,
                   state: _RunState) -> AgentRunResult[Any]:
        chains = self._chains
        point = HookPoint.BEFORE_AGENT_EXECUTION
        component = state.component
        parent = state.ctx
        params: dict[str, Any] = {"input": state.prompt}
        base = {"agent": state.agent, "framework": FRAMEWORK}
        before: HookContext | None = None
        outcome: ChainResult | None = None
        if point in chains:
            attempt = 1
            while True:
                outcome, before = await self._dispatch(
                    point, component, {**base, "params": params, "attempt": attempt},
                    parent=parent, correlation=state.correlation)
                if before is not None:
                    state.correlation = before.correlation_id
                    state.ctx = before
                verdict = outcome.result
                if type(verdict) is Continue:  # every hook went on: the common case
                    break
                if isinstance(verdict, Cancel):
                    raise cancelled_error(point, verdict, outcome.decided_by)
                if isinstance(verdict, Retry) and attempt < verdict.max_attempts:
                    await asyncio.sleep(verdict.delay)
                    attempt += 1
                    continue
                break
            verdict = outcome.result
            if type(verdict) is Continue:
                pass
            elif isinstance(verdict, Modified) and before is not None:
                new = before.data.get("params", params)
                text = new.get("input") if isinstance(new, dict) else None
                if not isinstance(text, str):
                    raise InvalidValueError(
                        "BeforeAgentExecution: Modified params.input must be a string",
                        hint="return Modified({'params': {'input': 'the new prompt'}})")
                if text != state.prompt:
                    state.rewrite = text
                params = {"input": text}
            elif isinstance(verdict, Replace):
                return _result(verdict.value)
            elif isinstance(verdict, Redirect):
                return _result(await self._other_agent(verdict.target, params, before))
        before_key: tuple[str, float | None] | None = None
        if outcome is not None and outcome.cache is not None:
            before_key = (cache_key(component, outcome.cache), outcome.cache.ttl)
            hit, value = scoped_cache(self.run_cache).get(before_key[0])  # a replay's own
            if hit:
                return _result(value)
        forks = (asyncio.ensure_future(self._forks(
            tuple(op for f in outcome.forks for op in f.operations), before))
            if outcome is not None and outcome.forks else None)
        try:
            with context_as(state.ctx, handed=False):  # what the run's tools start
                result = await self._body(ctx, handler, state, params, base,
                                          before or parent)
        finally:
            if forks is not None:
                await forks
        if before_key is not None and not state.redirected and not state.recovered:
            scoped_cache(self.run_cache).put(before_key[0], _bridge.json_value(result.output),
                                             before_key[1])
        return result

    async def _body(self, ctx: RunContext[Any], handler: WrapRunHandler, state: _RunState,
                    params: dict[str, Any], base: dict[str, Any],
                    before: HookContext | None) -> AgentRunResult[Any]:
        state.failing = (params, base, before, 1)
        state.settled = False
        token = _enter_attempt(self._chains, state)
        try:
            result = await handler()
        except Exception as exc:
            if state.settled:  # on_run_error settled the failed run: its error stands
                raise
            # A failure on_run_error did not see: settled here (a recovery is kept; an
            # error raised here gives way to pydantic-ai's own).
            return await self._settle(ctx, state, params, base, before, 1, None, exc)
        finally:
            if token is not None:
                SideEffects.leave(token)
        if state.settled:  # on_run_error recovered the failed run
            return result
        return await self._settle(ctx, state, params, base, before, 1, result, None)

    async def _settle(self, ctx: RunContext[Any], state: _RunState, params: dict[str, Any],
                      base: dict[str, Any], before: HookContext | None, attempt: int,
                      result: AgentRunResult[Any] | None,
                      failure: Exception | None) -> AgentRunResult[Any]:
        """From attempt ``attempt``'s outcome (its ``result``, or the ``failure`` it ended
        with) to the run's: ``AgentError`` decides about a failure, ``AfterAgentExecution``
        about a result, and a ``Retry`` at either runs the agent again and settles that
        attempt the same way (so a ``Cancel`` of a retried attempt ends the run as a first
        one does)."""
        chains = self._chains
        component = state.component
        retry_limit = 1
        while True:
            if failure is not None:
                if HookPoint.AGENT_ERROR not in chains:
                    raise failure
                state.failing = (params, base, before, attempt)
                outcome, err_ctx = await self._agent_error(state, failure)
                verdict = outcome.result
                if isinstance(verdict, Retry):
                    retry_limit = max(retry_limit, verdict.max_attempts)
                    if attempt < retry_limit:
                        await asyncio.sleep(verdict.delay)
                        attempt += 1
                        result, failure = await self._run_again(ctx, state)
                        continue
                    raise failure
                if isinstance(verdict, Replace):
                    state.recovered = True  # a fallback: not cached as the run's output
                    return _result(verdict.value)
                if isinstance(verdict, Redirect):
                    state.redirected = True
                    return _result(await self._other_agent(verdict.target, params, err_ctx))
                if isinstance(verdict, Cancel):
                    raise cancelled_error(HookPoint.AGENT_ERROR, verdict,
                                          outcome.decided_by) from failure
                raise failure
            assert result is not None
            if HookPoint.AFTER_AGENT_EXECUTION not in chains:
                return result
            output = _bridge.json_value(result.output)
            out, after = await self._dispatch(
                HookPoint.AFTER_AGENT_EXECUTION, component,
                {**base, "params": params, "attempt": attempt, "result": output},
                parent=before, correlation=state.correlation)
            verdict = out.result
            went_on = type(verdict) is Continue  # the common case: no isinstance tests
            if not went_on and isinstance(verdict, Retry):
                retry_limit = max(retry_limit, verdict.max_attempts)
                if attempt < retry_limit:
                    await asyncio.sleep(verdict.delay)
                    attempt += 1
                    result, failure = await self._run_again(ctx, state)
                    continue
            if went_on:
                pass
            elif isinstance(verdict, Cancel):
                raise cancelled_error(HookPoint.AFTER_AGENT_EXECUTION, verdict,
                                      out.decided_by)
            elif isinstance(verdict, Modified) and after is not None:
                new = after.data.get("result", output)
                if new != output:
                    result = dataclasses.replace(result, output=new)
            elif isinstance(verdict, Replace):
                result = dataclasses.replace(result, output=verdict.value)
            elif isinstance(verdict, Redirect):
                state.redirected = True
                return _result(await self._other_agent(verdict.target, params, after))
            if out.forks:
                await self._forks(tuple(op for f in out.forks for op in f.operations), after)
            if out.cache is not None:
                key = cache_key(component, out.cache)
                scoped_cache(self.run_cache).put(key, _bridge.json_value(result.output),
                                                 out.cache.ttl)
            return result

    async def _run_again(self, ctx: RunContext[Any], state: _RunState
                         ) -> tuple[AgentRunResult[Any] | None, Exception | None]:
        """Run the agent again (``Retry``) with the same prompt, deps and history: its
        result, or the error it failed with. pydantic-ai runs a run's body once, so the
        agent is run anew inside this run (its ``wrap_run`` passes through). The attempts
        share the run's ``UsageLimits`` and usage: the limits bound the run as a whole,
        however often hooks retry it; a capability given to ``run(...)`` rather than to the
        ``Agent`` is given again."""
        agent = ctx.agent
        if agent is None:
            raise ConfigurationError("Retry at the agent points needs the run's agent",
                                     hint="run the agent with agent.run(...)")
        token = _AGAIN.set(state)
        effects_token = _enter_attempt(self._chains, state)
        try:
            prompt = state.rewrite if state.rewrite is not None else ctx.prompt
            result: AgentRunResult[Any] = await agent.run(
                prompt, deps=ctx.deps, message_history=state.history or None,
                usage_limits=ctx.usage_limits, usage=ctx.usage,
                capabilities=None if _governed(agent) else [self])
        except Exception as exc:
            return None, exc
        finally:
            if effects_token is not None:
                SideEffects.leave(effects_token)
            _AGAIN.reset(token)
        return result, None

    async def on_run_error(self, ctx: RunContext[Any], *,
                           error: BaseException) -> AgentRunResult[Any]:
        """The failed run body, settled here (``AgentError``; for a retried attempt
        ``AfterAgentExecution`` too): pydantic-ai keeps what this hook returns or raises,
        while an error ``wrap_run`` raises after the body failed gives way to the body's
        own (so a ``Cancel`` decided there would be lost)."""
        state = _RUN.get()
        if state is None or state.failing is None or not isinstance(error, Exception) or \
                HookPoint.AGENT_ERROR not in self._chains or _PASSING.get() is state:
            raise error
        params, base, before, attempt = state.failing
        state.settled = True
        return await self._settle(ctx, state, params, base, before, attempt, None, error)

    async def _agent_error(self, state: _RunState, error: BaseException
                           ) -> tuple[ChainResult, HookContext | None]:
        assert state.failing is not None
        params, base, before, attempt = state.failing
        return await self._dispatch(
            HookPoint.AGENT_ERROR, state.component,
            {**base, "params": params, "attempt": attempt,
             "error": error_text(error), "error_type": type(error).__name__,
             **(state.effects.error_data() if state.effects is not None
                else {"side_effects": []})},
            parent=before, correlation=state.correlation)

    async def _other_agent(self, target: str, params: dict[str, Any],
                           ctx: HookContext | None) -> Any:
        """``Redirect`` at an agent point: ``target`` answers the prompt instead. A
        pydantic-ai target runs governed (as a ``Fork`` target): by its own
        :class:`LlmspellCapability` when it has one, else by this one, so its agent points,
        model requests and tool calls go through the hooks, budgets and security checks."""
        text = str(params.get("input") or "")
        if target in self.agents:
            return await self._agent_output(target, text, ctx, govern=True)
        agents = getattr(self.system, "agents", None)
        if agents is not None and target in agents.names():
            response = await agents.get(target).run(text, parent=ctx)
            return response.output
        raise ConfigurationError(
            f"cannot redirect the run to agent {target!r}: no such agent",
            hint="pass agents={'name': Agent(...)} to LlmspellCapability, or register an "
                 "llmspell agent under that name")

    # -- model requests -------------------------------------------------------------------
    async def wrap_model_request(self, ctx: RunContext[Any], *,
                                 request_context: ModelRequestContext,
                                 handler: WrapModelRequestHandler) -> ModelResponse:
        """``BeforeModelCall`` once per request step, then the attempts (whose hooks see
        this step), then the ``model.<provider>.completed`` record. Each dispatch of
        ``BeforeModelCall`` runs in an :class:`OperationScope`, ended when the step is over
        (what a hook took for the call, such as a cost reservation, comes back even when
        the call is refused, replaced or served from a cache)."""
        state = _RUN.get()
        if state is None:
            return await handler(request_context)
        scopes: list[OperationScope] = []
        try:
            return await self._model_request(ctx, request_context, handler, state, scopes)
        finally:
            for scope in scopes:
                scope.end()

    async def _model_request(self, ctx: RunContext[Any], request_context: ModelRequestContext,
                             handler: WrapModelRequestHandler, state: _RunState,
                             scopes: list[OperationScope]) -> ModelResponse:
        if state.rewrite is not None:
            request_context = _rewrite_prompt(ctx, request_context, state)
        chains = self._chains
        hooked = (HookPoint.BEFORE_MODEL_CALL in chains or HookPoint.AFTER_MODEL_CALL in chains
                  or HookPoint.MODEL_CALL_ERROR in chains)
        events = self._events
        model = request_context.model
        provider, name = model.system, model.model_name
        component = _model_component(provider, name)
        shown = _request_messages(request_context) if hooked or events.kept(
            f"model.{provider}.completed") else ([], [])
        params = _bridge.request_data(
            shown[0], _tool_dicts(request_context), stream=request_context.streaming,
            settings=_request_settings(request_context) if hooked else None,
            **_settings(request_context))
        base = {"provider": provider, "model": name, "caller": state.caller,
                "turn": ctx.run_step}
        before: HookContext | None = None
        outcome: ChainResult | None = None
        redirected: str | None = None
        point = HookPoint.BEFORE_MODEL_CALL
        if point in chains:
            attempt = 1
            while True:
                scope = OperationScope()
                scopes.append(scope)
                with scope:
                    outcome, before = await self._dispatch(
                        point, component, {**base, "params": params, "attempt": attempt},
                        parent=state.ctx, correlation=state.correlation)
                verdict = outcome.result
                if type(verdict) is Continue:  # every hook went on: the common case
                    break
                if isinstance(verdict, Cancel):
                    raise model_call_cancelled_error(f"{provider}/{name}", point, verdict,
                                                     outcome.decided_by)
                if isinstance(verdict, Retry) and attempt < verdict.max_attempts:
                    scope.end()  # this dispatch's call is not made: the next one asks again
                    await asyncio.sleep(verdict.delay)
                    attempt += 1
                    continue
                break
            verdict = outcome.result
            if type(verdict) is Continue:
                pass
            elif isinstance(verdict, Modified) and before is not None:
                new = before.data.get("params", params)
                if new != params:
                    request_context = _apply_request(request_context, shown, params, new)
                    params = new
            elif isinstance(verdict, Replace):
                response = _response_from(verdict.value, name)
                self._completed(state, provider, name, ctx.run_step, params, response,
                                replaced=True)
                return response
            elif isinstance(verdict, Redirect):
                request_context = dataclasses.replace(
                    request_context, model=self._model(verdict.target))
                redirected = verdict.target
        before_key: tuple[str, float | None] | None = None
        cache = scoped_cache(self.model_cache)  # in a replay, the replay's own (never live)
        # A redirected request is another model's call: it neither serves nor stores what is
        # cached for this one (as the runtime's Redirect, which returns before its cache).
        if outcome is not None and outcome.cache is not None and redirected is None:
            before_key = (cache_key(component, outcome.cache), outcome.cache.ttl)
            hit, value = cache.get(before_key[0])
            if hit:
                response = _response_from(value, name)
                self._completed(state, provider, name, ctx.run_step, params, response,
                                cached=True)
                return response
        # What besides params decides the answer (output tools, every setting) and whom it
        # is for: taken once, when an alias may be looked up or made (see _request_key).
        key = (_request_key(request_context, before or state.ctx)
               if cache.aliased or HookPoint.AFTER_MODEL_CALL in chains else None)
        fingerprint = (_fingerprint(component, params, key)
                       if cache.aliased and redirected is None else None)
        if fingerprint is not None:
            hit, value = cache.get_aliased(fingerprint)
            if hit:
                response = _response_from(value, name)
                self._completed(state, provider, name, ctx.run_step, params, response,
                                cached=True)
                return response
        step = _Step(state, before or state.ctx, params, provider, name, component,
                     ctx.run_step,
                     request_context.model_request_parameters.function_tools)
        step.key = key
        token = _STEP.set(step)
        forks = (asyncio.ensure_future(self._forks(
            tuple(op for f in outcome.forks for op in f.operations), before))
            if outcome is not None and outcome.forks else None)
        self._started(step, request_context.model, 1)
        try:
            response = await handler(request_context)
        except BaseException as exc:  # a cancelled request (no Exception) ends its events too
            self._failed(step, request_context.model, exc)
            raise
        finally:
            _STEP.reset(token)
            if forks is not None:
                step.forks.extend(await forks)
        if before_key is not None and step.redirected_to is None and not step.recovered:
            cache.put(before_key[0], step.response or _response_dict(
                response, provider, 0.0), before_key[1])
        self._completed(state, provider, name, ctx.run_step, params, response,
                        step=step, redirected_to=redirected or step.redirected_to)
        return response

    async def after_model_request(self, ctx: RunContext[Any], *,
                                  request_context: ModelRequestContext,
                                  response: ModelResponse) -> ModelResponse:
        """``AfterModelCall`` on each attempt's answer."""
        step = _STEP.get()
        if step is None:
            return response
        serving = request_context.model
        provider, name = serving.system, serving.model_name
        latency = (time.perf_counter() - step.started) * 1000
        shown = _response_dict(response, provider, latency)
        step.response = shown
        step.attempts = request_context.attempt
        point = HookPoint.AFTER_MODEL_CALL
        if point not in self._chains:
            return response
        component = _model_component(provider, name)
        honoured = HONOURED[point] - ({"retry", "redirect"} if request_context.streaming
                                      else frozenset())
        out, after = await self._dispatch(
            point, component,
            {"provider": provider, "model": name, "caller": step.run.caller,
             "turn": ctx.run_step, "params": step.params, "attempt": request_context.attempt,
             "result": shown},
            parent=step.before, correlation=step.run.correlation, honoured=honoured,
            hint=_STREAM_HINT if request_context.streaming else None)
        verdict = out.result
        if type(verdict) is Continue:  # every hook went on: the common case, no tests
            pass
        elif isinstance(verdict, Cancel):
            raise model_call_cancelled_error(f"{provider}/{name}", point, verdict,
                                             out.decided_by)
        elif isinstance(verdict, Retry) and request_context.attempt < verdict.max_attempts:
            await asyncio.sleep(verdict.delay)
            self._again(step, serving, request_context.attempt + 1)
            raise RetryModelRequest()
        elif isinstance(verdict, Redirect):
            other = self._model(verdict.target)
            step.redirected_to = verdict.target
            self._again(step, other, request_context.attempt + 1)
            raise RetryModelRequest(other)
        elif isinstance(verdict, Modified) and after is not None:
            new = after.data.get("result", shown)
            if new != shown:
                response = _response_from(new, name)
                step.response = new if isinstance(new, dict) else _response_dict(
                    response, provider, latency)
        elif isinstance(verdict, Replace):
            response = _response_from(verdict.value, name)
            step.response = _response_dict(response, provider, latency)
        if out.forks:
            step.forks.extend(await self._forks(
                tuple(op for f in out.forks for op in f.operations), after))
        # A fallback ModelCallError recovered with (pydantic-ai runs this hook on it too)
        # is not the model's answer: never cached, neither under the key nor as an alias.
        if out.cache is not None and not step.recovered:
            key = cache_key(component, out.cache)
            cache = scoped_cache(self.model_cache)  # a replay's own: its alias too
            cache.put(key, step.response, out.cache.ttl)
            if step.key is None:  # an after hook registered while the request ran
                step.key = _request_key(request_context, step.before)
            fingerprint = _fingerprint(component, step.params, step.key)
            if fingerprint is not None:
                cache.alias(fingerprint, key)
        return response

    async def on_model_request_error(self, ctx: RunContext[Any], *,
                                     request_context: ModelRequestContext,
                                     error: Exception) -> ModelResponse:
        """``ModelCallError``: recover (``Replace``), try again (``Retry``), fall back to
        another model (``Redirect``) or cancel."""
        step = _STEP.get()
        point = HookPoint.MODEL_CALL_ERROR
        if step is None or point not in self._chains:
            raise error
        serving = request_context.model
        provider, name = serving.system, serving.model_name
        details = _bridge.model_error_data(error)
        out, _ = await self._dispatch(
            point, _model_component(provider, name),
            {"provider": provider, "model": name, "caller": step.run.caller,
             "turn": ctx.run_step, "params": step.params, "attempt": request_context.attempt,
             **details},
            parent=step.before, correlation=step.run.correlation)
        verdict = out.result
        if isinstance(verdict, Retry):
            if request_context.attempt >= verdict.max_attempts:
                raise error
            after = details.get("retry_after")
            delay = (min(float(after), MAX_RETRY_DELAY)
                     if isinstance(after, float) and after > verdict.delay else verdict.delay)
            await asyncio.sleep(delay)
            self._again(step, serving, request_context.attempt + 1)
            raise RetryModelRequest() from error
        if isinstance(verdict, Replace):
            answer = _response_from(verdict.value, name)  # a hook's answer: validated
            step.recovered = True  # a fallback: not cached as the request's answer
            return answer
        if isinstance(verdict, Redirect):
            other = self._model(verdict.target)
            step.redirected_to = verdict.target
            self._again(step, other, request_context.attempt + 1)
            raise RetryModelRequest(other) from error
        if isinstance(verdict, Cancel):
            raise model_call_cancelled_error(f"{provider}/{name}", point, verdict,
                                             out.decided_by) from error
        raise error

    def _model(self, target: str) -> Model:
        """The model a ``Redirect``/``Fork`` target names."""
        if not isinstance(target, str) or not target.strip():
            raise InvalidValueError("a model Redirect/Fork target is a model name",
                                    hint="e.g. Redirect('test') or Redirect('openai:gpt-4o')")
        found = self.models.get(target)
        if isinstance(found, Model):
            return found
        name = found if isinstance(found, str) else target
        if ":" not in name and "/" in name:
            name = name.replace("/", ":", 1)
        try:
            return infer_model(name)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot reach model target {target!r}: {exc}",
                hint="pass models={'name': Model(...)} to LlmspellCapability, or name a "
                     "model pydantic-ai knows ('provider:model')") from exc

    async def _shadow(self, op: ForkOperation, step: _Step,
                      ctx: HookContext | None) -> dict[str, Any]:
        """A ``Fork`` of type ``model``: the request (``op.parameters`` override its fields)
        sent to another model as a governed call of its own, as the runtime's shadow calls
        are. Its model points run (``caller`` is ``{"type": "shadow", "name":
        "<provider>/<model>"}``, the call it shadows; its contexts are children of the one
        that forked), so security, budgets and rate limits see it, and what its
        ``BeforeModelCall`` hooks took comes back however it ends; it publishes its own
        ``model.<provider>.started``/``.completed``/``.failed`` and, once answered,
        ``model.<provider>.shadow``. Its answer is attached to the call's forks, never given
        to the agent or a stream. A ``Cancel`` or a failure ends the shadow alone (the
        fork's ``error``); a ``Fork`` at its own points is not run (a shadow does not fork
        again)."""
        shadowing = f"{step.provider}/{step.model}"
        params = {**step.params, **op.parameters, "stream": False}
        correlation = ctx.correlation_id if ctx is not None else step.run.correlation
        shown, provider, name = await self._shadow_call(
            self._model(op.target), params, step, {"type": "shadow", "name": shadowing},
            ctx, correlation)
        self._events.publish(f"model.{provider}.shadow",
                             {"model": name, "shadowing": shadowing,
                              "caller": step.run.caller, "turn": step.turn,
                              "usage": shown.get("usage"),
                              "latency_ms": shown.get("latency_ms"),
                              "response": self._events.record(shown["message"])},
                             correlation)
        return shown

    async def _shadow_call(self, model: Model, params: dict[str, Any], step: _Step,
                           caller: dict[str, str], parent: HookContext | None,
                           correlation: str) -> tuple[dict[str, Any], str, str]:
        """One governed shadow request to ``model`` (through ``run_hooked``, the runtime's
        hooked-call path): its response dict, the provider and the model that answered."""
        provider, name = model.system, model.model_name
        component = _model_component(provider, name)
        base = {"provider": provider, "model": name, "caller": caller, "turn": step.turn}
        events = self._events

        async def invoke(request: dict[str, Any], attempt: int) -> Any:
            sent, offered, temperature, max_tokens = request_args(request)  # typed errors
            settings: ModelSettings = {}
            if temperature is not None:
                settings["temperature"] = temperature
            if max_tokens is not None:
                settings["max_tokens"] = max_tokens
            names = {t.name for t in offered}  # a hook can withhold tools, not invent them
            parameters = ModelRequestParameters(
                function_tools=[t for t in step.tools if t.name in names])
            messages = _messages_from_dicts(request_dict(sent, (), None, None)["messages"])
            started_type = f"model.{provider}.started"
            if self.system.bus.has_subscribers(started_type):
                events.publish(started_type, {"model": name, "caller": caller,
                                              "turn": step.turn, "attempt": attempt},
                               correlation)
            started = time.perf_counter()
            answer = await model.request(messages, settings or None, parameters)
            return _response_dict(answer, provider, (time.perf_counter() - started) * 1000)

        async def redirect(target: str, request: dict[str, Any],
                           hctx: HookContext | None) -> Any:
            return (await self._shadow_call(self._model(target), request, step, caller, hctx,
                                            correlation))[0]

        async def fork(op: ForkOperation, hctx: HookContext | None) -> Any:
            raise ConfigurationError(
                f"a shadow model call does not fork again (Fork to {op.type} {op.target!r})",
                hint="fork only calls whose ctx.data['caller']['type'] is not 'shadow'")

        try:
            with nested("model", component.name):  # a redirect loop ends at the depth bound
                outcome: CallOutcome = await run_hooked(
                    self._checked, points=MODEL_POINTS, component=component, base=base,
                    params=params, invoke=invoke, redirect=redirect, fork=fork,
                    cache=self.model_cache, parent=parent, correlation_id=correlation,
                    error_data=_error_extra)
            value = outcome.result
            answer = _response_from(value, name)  # a hook's answer: validated
        except BaseException as exc:  # a cancelled shadow (no Exception) ends its events too
            details = _bridge.model_error_data(exc)
            details.pop("error")
            details.pop("error_type")
            events.failed(f"model.{provider}.failed", exc, correlation, model=name,
                          caller=caller, turn=step.turn, **details)
            if isinstance(exc, OperationCancelledError) and not isinstance(
                    exc, UnsupportedHookResultError):
                raise model_call_cancelled_error(f"{provider}/{name}", exc.point, exc,
                                                 exc.hook) from exc
            raise
        shown = value if isinstance(value, dict) and isinstance(value.get("message"), dict) \
            else _response_dict(answer, provider, 0.0)
        events.model_completed(provider, model=name, caller=caller, turn=step.turn,
                               request=params, response=shown, attempts=outcome.attempts,
                               cached=outcome.cached, replaced=outcome.replaced,
                               redirected_to=outcome.redirected_to, correlation_id=correlation)
        return shown, provider, name

    # -- model events -----------------------------------------------------------------------
    def _started(self, step: _Step, model: Model, attempt: int) -> None:
        event_type = f"model.{model.system}.started"
        if self.system.bus.has_subscribers(event_type):
            self._events.publish(event_type, {"model": model.model_name,
                                              "caller": step.run.caller, "turn": step.turn,
                                              "attempt": attempt}, step.run.correlation)

    def _again(self, step: _Step, model: Model, attempt: int) -> None:
        """Another attempt of ``step`` is about to run on ``model``."""
        step.started = time.perf_counter()
        step.recovered = False  # its answer is the model's again
        self._started(step, model, attempt)

    def _failed(self, step: _Step, model: Model, exc: BaseException) -> None:
        details = _bridge.model_error_data(exc)
        details.pop("error")
        details.pop("error_type")
        self._events.failed(f"model.{model.system}.failed", exc, step.run.correlation,
                            model=model.model_name, caller=step.run.caller, turn=step.turn,
                            **details)

    def _completed(self, state: _RunState, provider: str, model: str, turn: int,
                   params: dict[str, Any], response: ModelResponse, *,
                   step: _Step | None = None, cached: bool = False, replaced: bool = False,
                   redirected_to: str | None = None) -> None:
        events = self._events
        if not events.kept(f"model.{provider}.completed"):
            return
        shown = step.response if step is not None and step.response is not None else \
            _response_dict(response, provider, 0.0)
        events.model_completed(provider, model=model, caller=state.caller, turn=turn,
                               request=params, response=shown,
                               attempts=step.attempts if step is not None else 1,
                               cached=cached, replaced=replaced, redirected_to=redirected_to,
                               correlation_id=state.correlation)

    # -- tools ------------------------------------------------------------------------------
    async def wrap_tool_validate(self, ctx: RunContext[Any], *, call: ToolCallPart,
                                 tool_def: ToolDefinition, args: RawToolArgs,
                                 handler: WrapToolValidateHandler) -> ValidatedToolArgs:
        """``ToolValidation`` after pydantic-ai validated the arguments (``valid`` says
        whether it passed): ``Modified`` repairs them (validated again), ``Cancel``
        refuses the call. A redirect target's is a child of the hook that redirected."""
        point = HookPoint.TOOL_VALIDATION
        if point not in self._chains:
            return await handler(args)
        parent, correlation = _tool_parent(_RUN.get(), _redirect_of(call))
        error: Exception | None = None
        validated: ValidatedToolArgs | None = None
        try:
            validated = await handler(args)
        except (ValidationError, ModelRetry) as exc:
            error = exc
        params = _raw_params(args)
        name = call.tool_name
        outcome, vctx = await self._dispatch(
            point, _bridge.component(ComponentType.TOOL, name),
            {"tool": name, "params": params, "valid": error is None,
             "error": None if error is None else str(error)},
            parent=parent, correlation=correlation)
        verdict = outcome.result
        if type(verdict) is Continue:  # every hook went on: the common case, no tests
            pass
        elif isinstance(verdict, Cancel):
            self._tool_cancelled(cancelled_error(point, verdict,
                                                 outcome.decided_by))
        elif isinstance(verdict, Modified) and vctx is not None:
            new = vctx.data.get("params", params)
            if new != params:
                if not isinstance(new, dict):
                    raise InvalidValueError("ToolValidation: Modified params must be a dict",
                                            hint="return Modified({'params': {...}})")
                return await handler(new)
        if error is not None:
            raise error
        assert validated is not None
        return validated

    def _tool_cancelled(self, exc: OperationCancelledError) -> None:
        if self.tool_cancel == "raise":
            raise exc
        raise ToolFailed(str(exc)) from exc

    async def wrap_tool_execute(self, ctx: RunContext[Any], *, call: ToolCallPart,
                                tool_def: ToolDefinition, args: ValidatedToolArgs,
                                handler: WrapToolExecuteHandler) -> Any:
        """The tool call through llmspell's hooked-call path (``run_hooked``):
        ``BeforeToolExecution``, the tool (pydantic-ai's own execution lifecycle),
        ``AfterToolExecution`` or ``ToolError``, with every result as the runtime gives
        it (a ``Redirect``: see :meth:`_redirect_tool`)."""
        mark = _redirect_of(call)
        if mark is None:
            return await self._tool_execute(ctx, call, args, handler, None)
        token = _REDIRECTED.set(None)  # what the target runs is not redirected itself
        try:
            return await self._tool_execute(ctx, call, args, handler, mark)
        finally:
            _REDIRECTED.reset(token)

    async def _tool_execute(self, ctx: RunContext[Any], call: ToolCallPart,
                            args: ValidatedToolArgs, handler: WrapToolExecuteHandler,
                            mark: _Redirected | None) -> Any:
        chains = self._chains
        events = self._events
        name = call.tool_name
        hooked = (HookPoint.BEFORE_TOOL_EXECUTION in chains
                  or HookPoint.AFTER_TOOL_EXECUTION in chains
                  or HookPoint.TOOL_ERROR in chains)
        if not hooked and not events.kept(f"tool.{name}.completed"):
            return await handler(args)
        parent, correlation = _tool_parent(_RUN.get(), mark)
        if correlation is None:
            correlation = new_id()
        path = (*mark.path, name) if mark is not None else (name,)
        params = _bridge.json_value(args)
        if not isinstance(params, dict):
            params = {"args": params}
        component = _bridge.component(ComponentType.TOOL, name)
        answered: dict[int, Any] = {}
        started = time.perf_counter()
        # What the llmspell tool calls of the latest attempt (from the tool's code)
        # declared, for the ToolError data: a Retry runs the tool again.
        effects = ToolAttemptEffects()

        async def invoke(call_params: dict[str, Any], attempt: int) -> Any:
            if events.kept(f"tool.{name}.started"):  # data built only if kept
                events.publish(f"tool.{name}.started",
                               {"params": events.mask(call_params), "attempt": attempt},
                               correlation)
            given = args if call_params is params else _revalidate(ctx, name, call_params)
            token = effects.enter(attempt, chains)
            try:
                raw = await handler(given)
            except (SkipToolExecution, CallDeferred, ApprovalRequired) as exc:
                raise _PassThroughError(exc) from exc
            finally:
                if token is not None:
                    SideEffects.leave(token)
            shown = _bridge.json_value(raw)
            answered[id(shown)] = raw
            return shown

        async def redirect(target: str, call_params: dict[str, Any],
                           hctx: HookContext | None) -> Any:
            return await self._redirect_tool(ctx, call, target, call_params, hctx, path,
                                             correlation)

        async def fork(op: ForkOperation, hctx: HookContext | None) -> Any:
            return await self._fork(op, hctx)

        def error_data(exc: BaseException, data: dict[str, Any]) -> dict[str, Any]:
            return effects.error_data(data["attempt"])

        try:
            outcome = await run_hooked(
                self._checked, points=_TOOL_POINTS, component=component, base={"tool": name},
                params=params, invoke=invoke, redirect=redirect, fork=fork,
                cache=self.tool_cache, parent=parent, correlation_id=correlation,
                error_data=error_data)
        except _PassThroughError as exc:
            raise exc.original from None
        except asyncio.CancelledError as exc:  # a cancelled call ends its events too
            events.failed(f"tool.{name}.failed", exc, correlation,
                          duration_ms=(time.perf_counter() - started) * 1000)
            raise
        except Exception as exc:
            events.failed(f"tool.{name}.failed", exc, correlation,
                          duration_ms=(time.perf_counter() - started) * 1000)
            if isinstance(exc, OperationCancelledError) and not isinstance(
                    exc, UnsupportedHookResultError):
                self._tool_cancelled(exc)
            raise
        value = outcome.result
        if events.kept(f"tool.{name}.completed"):  # data built only if kept
            shown = value if outcome.redirected_to is None else _bridge.json_value(value)
            events.publish(f"tool.{name}.completed",
                           {"result": events.mask(shown), "attempts": outcome.attempts,
                            "cached": outcome.cached,
                            "duration_ms": (time.perf_counter() - started) * 1000},
                           correlation)
        return answered.get(id(value), value) if not outcome.rewritten else value

    async def _redirect_tool(self, ctx: RunContext[Any], call: ToolCallPart, target: str,
                             params: dict[str, Any], hctx: HookContext | None,
                             path: tuple[str, ...], correlation: str) -> Any:
        """The result of tool ``target`` for a call a hook redirected (``path``: the tools
        the call went through, the model's own call first). One of the agent's own function
        tools runs as pydantic-ai runs a call the model makes (its tool manager, with the
        capabilities' tool hooks): ``params`` validated by the tool's own validator (and
        ``ToolValidation``), arguments it refuses raising
        :class:`~llmspell.errors.ToolValidationError`; its ``BeforeToolExecution``/
        ``AfterToolExecution``/``ToolError`` hooks see it (``tool`` is ``target``, their
        contexts children of ``hctx``, the hook's that redirected) and its
        ``tool.<target>.*`` events are published; a further ``Redirect`` goes one deeper.
        Past ``MAX_TOOL_REDIRECTS`` redirects :class:`~llmspell.errors.ToolExecutionError`
        ends the loop. Any other name runs the llmspell tool of that name
        (``system.tools``, whose redirects go on counting from here: one bound for the whole
        chain)."""
        depth = len(path)
        if depth > MAX_TOOL_REDIRECTS:
            raise redirect_loop_error(target, depth, path)
        manager = ctx.tool_manager
        tool = manager.tools.get(target) if manager is not None and manager.tools else None
        if manager is None or tool is None:  # not one of the agent's tools: an llmspell tool
            # The registry goes on counting from here: one bound for the whole chain.
            return (await self.system.tools.run(target, params, parent=hctx,
                                                correlation_id=correlation,
                                                _depth=depth)).result
        kind = tool.tool_def.kind
        if kind != "function":
            raise ToolExecutionError(
                target, f"cannot redirect a tool call to {target!r}: it is the agent's "
                        f"{kind!r} tool, which pydantic-ai does not run during the run",
                hint="redirect to one of the agent's function tools or to an llmspell tool")
        part = ToolCallPart(tool_name=target, args=dict(params),
                            tool_call_id=call.tool_call_id)
        token = _REDIRECTED.set(_Redirected(target, call.tool_call_id, hctx, path))
        try:
            try:
                validated = await manager.validate_tool_call(part,
                                                             wrap_validation_errors=False)
            except (ValidationError, ModelRetry) as exc:
                raise _bad_arguments(target, path, exc) from exc
            try:
                return await manager.execute_tool_call(validated,
                                                       wrap_validation_errors=False)
            except (CallDeferred, ApprovalRequired) as exc:
                raise ToolExecutionError(
                    target, f"tool {target!r} asked to defer the redirected call "
                            f"({type(exc).__name__}), which a redirect cannot do",
                    hint="redirect to a tool that runs at once (no approval, not "
                         "deferred)") from exc
        finally:
            _REDIRECTED.reset(token)


# -- conversions ----------------------------------------------------------------------------

def _enter_attempt(chains: Any, state: _RunState) -> Any:
    """Open the collector of an attempt's side effects (``state.effects``) when someone may
    read it (``AgentError`` hooks, or an enclosing attempt's collector); the token
    :meth:`SideEffects.leave` takes, or None."""
    if HookPoint.AGENT_ERROR in chains or current_side_effects() is not None:
        state.effects, token = SideEffects.enter()
        return token
    state.effects = None
    return None


def _redirect_of(call: ToolCallPart) -> _Redirected | None:
    """The redirect ``call`` is the target of (see ``_REDIRECTED``), else None."""
    mark = _REDIRECTED.get()
    return mark if mark is not None and mark.names(call) else None


def _tool_parent(state: _RunState | None,
                 mark: _Redirected | None) -> tuple[HookContext | None, str | None]:
    """The parent context and correlation of a tool call's points: a redirect target's are
    the redirecting hook's context (its metadata, which names the user, and its
    correlation); a call the model made has the run's."""
    if mark is not None and mark.ctx is not None:
        return mark.ctx, mark.ctx.correlation_id
    if state is None:
        return None, None
    return state.ctx, state.correlation


def _bad_arguments(target: str, path: tuple[str, ...],
                   exc: ValidationError | ModelRetry) -> ToolValidationError:
    """What a redirect target's refused arguments raise: the first bad field named."""
    where = ""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False)
        if errors:
            loc = ".".join(str(p) for p in errors[0].get("loc", ()))
            where = f"params.{loc}" if loc else "params"
            reason = f"{where}: {errors[0].get('msg', '')}"
        else:
            reason = brief(exc)
    else:
        reason = brief(exc.message)
    return ToolValidationError(
        target, f"a call redirected from tool {path[-1]!r} to tool {target!r} has arguments "
                f"{target!r} refuses ({reason})", where,
        hint=f"redirect to a tool whose parameters match the call's, or repair the arguments "
             f"for {target!r} with Modified at its ToolValidation hooks")

def _error_extra(exc: BaseException, data: dict[str, Any]) -> dict[str, Any]:
    """``run_hooked``'s ``error_data`` for a shadow call: what ``ModelCallError`` hooks see
    of the failure (as at the run's own model requests)."""
    return _bridge.model_error_data(exc)


def _governed(agent: Any) -> bool:
    """Whether the pydantic-ai ``agent`` has an :class:`LlmspellCapability` of its own."""
    root = getattr(agent, "root_capability", None)
    if not isinstance(root, AbstractCapability):
        return False
    found: list[AbstractCapability[Any]] = []
    root.apply(lambda cap: found.append(cap) if isinstance(cap, LlmspellCapability) else None)
    return bool(found)


def _result(output: Any) -> AgentRunResult[Any]:
    """A run result that carries ``output`` (a hook's answer instead of the run's)."""
    if isinstance(output, AgentRunResult):
        return output
    return AgentRunResult(output=output)


def _run_usage(result: AgentRunResult[Any]) -> dict[str, Any] | None:
    try:
        usage = result.usage
    except Exception:  # a result a hook made has no run state behind it
        return None
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "requests": usage.requests, "tool_calls": usage.tool_calls}


def _prompt_text(prompt: Any) -> str | None:
    if prompt is None or isinstance(prompt, str):
        return prompt
    return "".join(p if isinstance(p, str) else f"<{type(p).__name__}>" for p in prompt)


def _model_component(provider: str, model: str) -> ComponentId:
    return _bridge.component(ComponentType.MODEL, f"{provider}/{model}")


_FINGERPRINT = json.JSONEncoder(sort_keys=True, allow_nan=False)


_REQUEST_KEY = json.JSONEncoder(sort_keys=True, default=repr)


def _request_key(rc: ModelRequestContext,
                 ctx: HookContext | None) -> tuple[str | None, Any, Any]:
    """What identifies a model request besides its hooks' ``params``, for the cache's
    aliases: a digest of what else decides the answer (the output mode, output tools and
    object schema, whether text or images may answer, the native tools, thinking, and
    every model setting: ``top_p``, ``seed``, ``stop_sequences``...; None when that cannot
    be encoded: the request is then not aliased), and the user and session it is made for
    (``ctx.metadata``), so one caller's answer is never another's."""
    mrp = rc.model_request_parameters
    tools = [[t.name, t.description, t.parameters_json_schema, t.strict, t.kind]
             for t in mrp.output_tools]
    obj = mrp.output_object
    shape = {
        "output_mode": mrp.output_mode, "output_tools": tools,
        "output_object": None if obj is None else [obj.name, obj.description,
                                                   obj.json_schema, obj.strict],
        "prompted_output_template": mrp.prompted_output_template,
        "allow_text_output": mrp.allow_text_output,
        "allow_image_output": mrp.allow_image_output,
        "native_tools": [repr(t) for t in mrp.native_tools],
        "thinking": mrp.thinking, "settings": dict(rc.model_settings or {}),
    }
    try:
        blob = _REQUEST_KEY.encode(shape)
        digest: str | None = hashlib.blake2b(blob.encode("utf-8", "surrogatepass"),
                                             digest_size=16).hexdigest()
    except Exception:  # a setting whose repr fails, too deep: not aliased (never wrong)
        digest = None
    metadata = ctx.metadata if ctx is not None else None
    if not metadata:
        return digest, None, None
    return digest, metadata.get("user"), metadata.get("session")


def _fingerprint(component: ComponentId, params: dict[str, Any],
                 key: tuple[str | None, Any, Any] | None = None) -> bytes | None:
    """What identifies a model request for the cache's aliases (component and params, and
    ``key``: the rest of the request and its caller, see :func:`_request_key`), or None
    (the request is not aliased: neither served from nor stored as an alias) when the
    params' JSON does not read back as them: NaN and infinities, bytes, dates, sets, tuples
    and other objects a hook put there would share a fingerprint with other params, or
    when ``key`` holds no digest. A blake2b-128 digest, so an alias costs 16 bytes however
    long the conversation."""
    material: list[Any] = [component.type.value, component.name, params]
    if key is not None:
        if key[0] is None:
            return None
        material.extend(key)
    try:
        blob = _FINGERPRINT.encode(material)
        if json.loads(blob)[2] != params:
            return None
    except (TypeError, ValueError, RecursionError):
        return None
    return hashlib.blake2b(blob.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        return "".join(_content_text(c) for c in content)
    return f"<{type(content).__name__}>"


def _part_dict(part: ModelRequestPart) -> dict[str, Any] | None:
    if isinstance(part, SystemPromptPart):
        return _bridge.message_dict("system", part.content)
    if isinstance(part, UserPromptPart):
        return _bridge.message_dict("user", _content_text(part.content))
    if isinstance(part, ToolReturnPart):
        return _bridge.message_dict("tool", part.model_response_str(),
                                    tool_call_id=part.tool_call_id, name=part.tool_name)
    if isinstance(part, RetryPromptPart):
        if part.tool_name is not None:
            return _bridge.message_dict("tool", part.model_response(),
                                        tool_call_id=part.tool_call_id, name=part.tool_name)
        return _bridge.message_dict("user", part.model_response())
    return None


def _call_args(part: ToolCallPart) -> dict[str, Any]:
    try:
        args: dict[str, Any] = part.args_as_dict()
    except Exception:  # arguments the model sent as broken JSON: shown as they came
        return {"_raw": str(part.args)}
    return _bridge.json_value(args)  # type: ignore[no-any-return]


def _assistant_dict(response: ModelResponse) -> dict[str, Any]:
    text = "".join(p.content for p in response.parts if isinstance(p, TextPart))
    calls = [_bridge.tool_call_dict(p.tool_call_id, p.tool_name, _call_args(p))
             for p in response.parts if isinstance(p, ToolCallPart)]
    return _bridge.message_dict("assistant", text or None, tool_calls=calls)


_Origin = tuple[int, int | None] | None
"""Where a message dict came from: (message index, part index), (index, None) for a whole
response, None for the instructions."""


def _request_messages(rc: ModelRequestContext) -> tuple[list[dict[str, Any]],
                                                         list[_Origin]]:
    """The request's messages in the model-call shape, the instructions first (as a
    system message), and where each came from."""
    dicts: list[dict[str, Any]] = []
    origins: list[_Origin] = []
    instructions = _instructions(rc)
    if instructions:
        dicts.append(_bridge.message_dict("system", instructions))
        origins.append(None)
    for i, message in enumerate(rc.messages):
        if isinstance(message, ModelResponse):
            dicts.append(_assistant_dict(message))
            origins.append((i, None))
            continue
        for j, part in enumerate(message.parts):
            shown = _part_dict(part)
            if shown is not None:
                dicts.append(shown)
                origins.append((i, j))
    return dicts, origins


def _instructions(rc: ModelRequestContext) -> str | None:
    parts = rc.model_request_parameters.instruction_parts
    if parts:
        return "\n\n".join(p.content for p in parts if p.content) or None
    for message in reversed(rc.messages):
        if isinstance(message, ModelRequest):
            return message.instructions
    return None


def _tool_dicts(rc: ModelRequestContext) -> list[dict[str, Any]]:
    return [{"name": t.name, "description": t.description or "",
             "parameters": t.parameters_json_schema}
            for t in rc.model_request_parameters.function_tools]


def _settings(rc: ModelRequestContext) -> dict[str, Any]:
    settings = rc.model_settings or {}
    temperature = settings.get("temperature")
    max_tokens = settings.get("max_tokens")
    return {"temperature": temperature if isinstance(temperature, int | float) else None,
            "max_tokens": max_tokens if isinstance(max_tokens, int) else None}


_TRANSPORT_SETTINGS: Final = ("timeout", "request_timeout", "first_event_timeout",
                               "max_retries", "extra_headers")
"""Model settings that do not change the answer (how long to wait, how often to try
again, the HTTP headers: a request id there would make every call a cache miss)."""


def _request_settings(rc: ModelRequestContext) -> dict[str, Any]:
    """``params.settings`` of a request: every model setting but temperature, max_tokens
    and :data:`_TRANSPORT_SETTINGS` (``top_p``, ``seed``, ``stop_sequences``,
    ``tool_choice``, ``thinking``...), the output it asks for (``output``: the mode, the
    output tools, the output object's schema, the prompted-output template, whether text
    or images may answer), its native tools, and a digest of each non-text user content
    (an image, a document: the messages show it only as ``<ImageUrl>``), so that the
    caching built-in's key tells apart requests that differ in any of them."""
    mrp = rc.model_request_parameters
    obj = mrp.output_object
    output = {
        "mode": mrp.output_mode,
        "tools": [{"name": t.name, "description": t.description or "",
                   "parameters": t.parameters_json_schema, "strict": t.strict,
                   "kind": t.kind} for t in mrp.output_tools],
        "object": None if obj is None else {
            "name": obj.name, "description": obj.description, "schema": obj.json_schema,
            "strict": obj.strict},
        "template": mrp.prompted_output_template,
        "allow_text": mrp.allow_text_output, "allow_image": mrp.allow_image_output}
    attachments = [
        [i, j, hashlib.blake2b(repr(item).encode("utf-8", "surrogatepass"),
                               digest_size=16).hexdigest()]
        for i, message in enumerate(rc.messages) if isinstance(message, ModelRequest)
        for j, part in enumerate(message.parts)
        if isinstance(part, UserPromptPart) and not isinstance(part.content, str)
        for item in part.content if not isinstance(item, str)]
    return _bridge.request_settings(
        rc.model_settings, skip=_TRANSPORT_SETTINGS, output=output,
        native_tools=[repr(t) for t in mrp.native_tools] or None,
        attachments=attachments or None)


def _new_part(message: dict[str, Any]) -> ModelRequestPart:
    role, content = message["role"], message.get("content") or ""
    if role == "system":
        return SystemPromptPart(content=content)
    if role == "tool":
        return ToolReturnPart(tool_name=message.get("name") or "tool", content=content,
                              tool_call_id=message.get("tool_call_id") or "")
    return UserPromptPart(content=content)


def _new_response(message: dict[str, Any], model: str | None = None) -> ModelResponse:
    parts: list[ModelResponsePart] = []
    if message.get("content"):
        parts.append(TextPart(content=message["content"]))
    parts.extend(ToolCallPart(tool_name=call["name"], args=call.get("arguments") or {},
                              tool_call_id=call.get("id") or new_id())
                 for call in message.get("tool_calls") or [])
    if not parts:
        parts.append(TextPart(content=""))
    return ModelResponse(parts=parts, model_name=model)


def _messages_from_dicts(raw: list[dict[str, Any]]) -> list[ModelMessage]:
    """Messages built anew from model-call dicts (a shadow call's request)."""
    out: list[ModelMessage] = []
    pending: list[ModelRequestPart] = []
    for message in raw:
        if message.get("role") == "assistant":
            if pending:
                out.append(ModelRequest(parts=pending))
                pending = []
            out.append(_new_response(message))
        else:
            pending.append(_new_part(message))
    if pending:
        out.append(ModelRequest(parts=pending))
    return out


def _apply_request(rc: ModelRequestContext, shown: tuple[list[dict[str, Any]],
                                                         list[_Origin]],
                   old: dict[str, Any], new: Any) -> ModelRequestContext:
    """The request context with a ``BeforeModelCall`` ``Modified`` applied: messages
    (unchanged ones keep their pydantic-ai objects), the instructions (the first system
    message when there were instructions), the tools offered (by name: a hook can only
    withhold tools), temperature and max_tokens."""
    if not isinstance(new, dict):
        raise InvalidValueError("BeforeModelCall: Modified params must be a dict",
                                hint="return Modified({'params': {...}}) with the request")
    if new.get("settings", old.get("settings")) != old.get("settings"):
        raise _bridge.settings_changed(
            "BeforeModelCall", "change messages, tools, temperature or max_tokens, or set "
            "the setting on the agent's model_settings")
    changes: dict[str, Any] = {}
    old_messages, origins = shown
    messages = new.get("messages", old_messages)
    if messages != old_messages:
        messages_from(messages)  # typed errors name the bad field
        rebuilt, instructions = _rebuild(rc, old_messages, origins, messages)
        changes["messages"] = rebuilt
        if instructions is not False:
            changes["model_request_parameters"] = dataclasses.replace(
                rc.model_request_parameters,
                instruction_parts=[InstructionPart(content=instructions)] if instructions
                else [])
    tools = new.get("tools", old["tools"])
    if tools != old["tools"]:
        if not isinstance(tools, list | tuple) and tools != {}:
            raise InvalidValueError("BeforeModelCall: params.tools must be a list",
                                    hint="keep the tools a hook allows, by name")
        names = {t.get("name") if isinstance(t, dict) else t for t in tools or []}
        params = changes.get("model_request_parameters", rc.model_request_parameters)
        changes["model_request_parameters"] = dataclasses.replace(
            params, function_tools=[t for t in params.function_tools if t.name in names])
    settings = dict(rc.model_settings or {})
    for key, kind in (("temperature", float), ("max_tokens", int)):
        value = new.get(key, old.get(key))
        if value != old.get(key):
            if value is None:
                settings.pop(key, None)
            elif isinstance(value, bool) or not isinstance(value, int | float) or (
                    kind is int and not float(value).is_integer()):
                raise InvalidValueError(f"BeforeModelCall: params.{key} must be a number or "
                                        f"null, got {value!r}",
                                        hint="keep the model-call shape (docs/hook-points.md)")
            else:
                settings[key] = kind(value)
            changes["model_settings"] = settings
    return dataclasses.replace(rc, **changes) if changes else rc


def _rebuild(rc: ModelRequestContext, old: list[dict[str, Any]], origins: list[_Origin],
             new: list[dict[str, Any]]) -> tuple[list[ModelMessage], str | Literal[False] | None]:
    """Messages for the new dicts, and the new instructions (False: unchanged)."""
    instructions: str | Literal[False] | None = False
    if origins and origins[0] is None:
        if new and new[0].get("role") == "system":
            if new[0] != old[0]:
                instructions = new[0].get("content") or None
            new = new[1:]
        else:
            instructions = None
        old, origins = old[1:], origins[1:]
    out: list[ModelMessage] = []
    pending: list[ModelRequestPart] = []
    sources: list[_Origin] = []

    def flush() -> None:
        if not pending:
            return
        first = sources[0]
        if first is not None and all(s is not None and s[0] == first[0] for s in sources):
            original = rc.messages[first[0]]
            if isinstance(original, ModelRequest) and list(original.parts) == pending:
                out.append(original)
                pending.clear()
                sources.clear()
                return
        out.append(ModelRequest(parts=list(pending)))
        pending.clear()
        sources.clear()

    for k, message in enumerate(new):
        same = k < len(old) and old[k] == message
        origin = origins[k] if same else None
        if message.get("role") == "assistant":
            flush()
            if origin is not None:
                out.append(rc.messages[origin[0]])
            else:
                out.append(_new_response(message))
            continue
        if origin is not None and origin[1] is not None:
            original = rc.messages[origin[0]]
            assert isinstance(original, ModelRequest)
            pending.append(original.parts[origin[1]])
        else:
            pending.append(_new_part(message))
        sources.append(origin)
    flush()
    return out, instructions


def _rewrite_prompt(ctx: RunContext[Any], rc: ModelRequestContext,
                    state: _RunState) -> ModelRequestContext:
    """Apply a ``BeforeAgentExecution`` ``Modified`` prompt to the run's first request
    and to its history (so the history shows what the model was asked)."""
    old, new = state.prompt, state.rewrite
    state.rewrite = None
    if new is None:
        return rc

    def swap(messages: list[ModelMessage]) -> list[ModelMessage]:
        out: list[ModelMessage] = []
        for message in messages:
            if isinstance(message, ModelRequest) and any(
                    isinstance(p, UserPromptPart) and p.content == old for p in message.parts):
                out.append(dataclasses.replace(message, parts=[
                    dataclasses.replace(p, content=new)
                    if isinstance(p, UserPromptPart) and p.content == old else p
                    for p in message.parts]))
            else:
                out.append(message)
        return out

    ctx.messages[:] = swap(ctx.messages)
    return dataclasses.replace(rc, messages=swap(rc.messages))


def _response_dict(response: ModelResponse, provider: str,
                   latency_ms: float) -> dict[str, Any]:
    """An answer as ``ctx.data["result"]`` shows it."""
    usage = response.usage
    shown_usage = _bridge.usage_dict(usage.input_tokens, usage.output_tokens,
                                     cached_tokens=usage.cache_read_tokens)
    model = response.model_name or ""
    message = _assistant_dict(response)
    finish = response.finish_reason or ("tool_calls" if message["tool_calls"] else "stop")
    return _bridge.response_data(message, finish_reason=finish, model=model,
                                 usage=shown_usage,
                                 cost_usd=_bridge.price_usd(provider, model, shown_usage),
                                 latency_ms=latency_ms)


def _response_from(value: Any, model: str) -> ModelResponse:
    """A hook's answer (a response dict, a text, a pydantic-ai ``ModelResponse``) as a
    ``ModelResponse``; a malformed one is an :class:`InvalidValueError` naming the field."""
    if isinstance(value, ModelResponse):
        return value
    completion = completion_from(value, model)
    message = completion.message
    parts: list[ModelResponsePart] = []
    if message.content:
        parts.append(TextPart(content=message.content))
    parts.extend(ToolCallPart(tool_name=call.name, args=dict(call.arguments),
                              tool_call_id=call.id or new_id())
                 for call in message.tool_calls)
    if not parts:
        parts.append(TextPart(content=""))
    usage = completion.usage
    return ModelResponse(
        parts=parts, model_name=completion.model,
        usage=RequestUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
        if usage is not None else RequestUsage(),
        finish_reason=_FINISH.get(completion.finish_reason))  # type: ignore[arg-type]


def _raw_params(args: RawToolArgs) -> dict[str, Any]:
    """Raw tool arguments (a dict, or the model's JSON text) as a params dict."""
    parsed: Any = args
    if isinstance(args, str):
        try:
            parsed = json.loads(args or "{}")
        except (ValueError, RecursionError):  # not JSON, or nested past what it follows
            return {"_raw": args}
    shown = _bridge.json_value(parsed)
    return shown if isinstance(shown, dict) else {"_raw": shown}


def _revalidate(ctx: RunContext[Any], name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Arguments a hook rewrote, validated by the tool's own validator (so a tool taking
    a pydantic model gets one); a tool pydantic-ai cannot find gets them as they are."""
    manager = ctx.tool_manager
    tool = manager.tools.get(name) if manager is not None and manager.tools else None
    if tool is None:
        return params
    validated: dict[str, Any] = tool.args_validator.validate_python(
        params, context=ctx.validation_context)
    return validated
