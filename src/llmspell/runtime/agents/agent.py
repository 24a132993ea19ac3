"""Agents: a lifecycle state machine around an LLM conversation with tool calling.

``await agent.run("question")`` initializes the agent if needed, then runs the hooked call
of :mod:`llmspell.runtime.calls` with ``BeforeAgentExecution``/``AfterAgentExecution``/
``AgentError``: inside it the agent goes Ready -> Running, talks to its provider, runs the
tools the model asks for through the tool pipeline, feeds the results back, and stops at a
final answer or at ``max_turns``; then Running -> Ready. Every model call goes through
``system.models`` (``BeforeModelCall``/``AfterModelCall``/``ModelCallError``), and after
each one ``agent.<name>.model_call`` is published with ``token_usage`` (input, output,
total, model, provider). ``MODEL_CALL`` (the old ``custom:agent_model_call``) is an alias
of ``AfterModelCall``.

What the model asks for is checked before anything runs: a tool the agent was not given,
a call whose arguments are not an object (or were not valid JSON: the provider keeps such
a call with ``ToolCall.argument_error`` set), and the calls past ``max_tool_calls`` in one
answer are answered with an error the model reads, never run, so the model can try again.
Tool-call ids the model left empty or repeated are made unique, so each result pairs with
exactly one call. What the model reads of a tool's result is cut to
``max_tool_result_chars`` characters, with a note saying how much was cut (the result the
tool pipeline reports is whole). The tool calls of the model's answer at ``max_turns`` are
not run (their results could never be read): the run ends with ``stop_reason="turn_limit"``
and lists them in ``AgentResponse.unrun_tool_calls``.

When a run fails, the ``AgentError`` data names the ``side_effects`` of the tool calls its
failed attempt ran (each call's ``side_effects_for`` its arguments, successful calls
included, and those of agents it ran through a tool), so a retry hook does not run it again
and send an e-mail twice; a run whose tools declare none has no such key.

A cancelled run leaves the agent Ready; a paused run waits before its next model or tool
call until the agent is resumed; a run whose agent is shut down stops at its next step
with :class:`AgentError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import msgspec

from llmspell.core.errors import (
    AgentError,
    AgentStateError,
    InvalidValueError,
    OperationCancelled,
    ToolError,
    ToolNotFoundError,
    ToolValidationError,
)
from llmspell.core.ids import new_id
from llmspell.core.text import error_text
from llmspell.events.event import EventMetadata, validate_event_type
from llmspell.hooks.context import ComponentId, ComponentType, HookContext
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import Cancel, Continue, ForkOperation, cancelled_error
from llmspell.runtime.agents.lifecycle import TRANSITIONS, AgentState, transition_point
from llmspell.runtime.calls import (
    CallPoints,
    ResultCache,
    current_context,
    inherited_context,
    run_hooked,
)
from llmspell.runtime.nesting import nested
from llmspell.runtime.providers.base import (
    Message,
    Provider,
    StreamDelta,
    TokenUsage,
    ToolCall,
)
from llmspell.runtime.runs.scope import current_run
from llmspell.runtime.tools.registry import SideEffects, current_side_effects, note_side_effects
from llmspell.runtime.withheld import json_safe_copy

__all__ = ["DEFAULT_MAX_TOOL_CALLS", "DEFAULT_MAX_TOOL_RESULT_CHARS", "MODEL_CALL", "Agent",
           "AgentDelta", "AgentResponse", "SideEffects", "note_side_effects"]

MODEL_CALL = HookPoint.AFTER_MODEL_CALL
"""The old custom point ``agent_model_call``: now an alias of ``AfterModelCall``."""
_POINTS = CallPoints(HookPoint.BEFORE_AGENT_EXECUTION, HookPoint.AFTER_AGENT_EXECUTION,
                     HookPoint.AGENT_ERROR)
_MAX_REDIRECTS = 4
_ENDED = frozenset({AgentState.TERMINATING, AgentState.TERMINATED})

DEFAULT_MAX_TOOL_CALLS = 32
"""How many of the tool calls in one model answer an agent runs (``max_tool_calls``); the
rest are answered with an error the model reads."""
DEFAULT_MAX_TOOL_RESULT_CHARS = 100_000
"""How many characters of a tool's result (its JSON text) the model reads
(``max_tool_result_chars``); the rest is cut, with a note saying how much."""
_ARGUMENTS_QUOTED = 200  # characters of unusable arguments text an error quotes back
_json = msgspec.json.Encoder()


def _model_text(result: Any) -> str:
    """A tool's result as the JSON text the model reads. A result JSON cannot carry as it is
    (a lone surrogate in a string, nesting past the encoder's depth) is sent as its
    :func:`~llmspell.runtime.withheld.json_safe_copy` rather than failing the run."""
    try:
        return _json.encode(result).decode()
    except (UnicodeEncodeError, TypeError, ValueError, RecursionError):
        return _json.encode(json_safe_copy(result)).decode()


def check_agent_name(name: object) -> str:
    """``name`` if it can name an agent: a non-empty text that makes valid event types
    (``agent.<name>.state_changed``), else :class:`InvalidValueError`. Checked when the
    agent is made, so a bad name fails there instead of at its first run (where it left
    the agent half-initialized)."""
    if not isinstance(name, str) or not name:
        raise InvalidValueError(f"an agent needs a non-empty name, got {name!r}"[:200],
                                hint="system.agents.create('helper', provider=...)")
    try:
        validate_event_type(f"agent.{name}.state_changed")
    except InvalidValueError:
        shown = repr(name) if len(name) <= 80 else f"{name[:80]!r}... ({len(name)} chars)"
        raise InvalidValueError(
            f"agent name {shown} cannot be used: agent events are named "
            "agent.<name>.state_changed",
            hint="use letters, digits, '_' and '-' (dots between them), at most 200 "
                 "characters, e.g. 'support_bot'") from None
    return name


class AgentDelta(msgspec.Struct, frozen=True, kw_only=True):
    """A piece of a model's answer as it streams in, in conversation turn ``turn``."""

    turn: int
    delta: StreamDelta

    @property
    def text(self) -> str:
        """The text this piece adds (empty for a tool-call piece)."""
        return self.delta.text


def _turn_sink(on_delta: Callable[[AgentDelta], Awaitable[None] | None],
               turn: int) -> Callable[[StreamDelta], Awaitable[None] | None]:
    def sink(delta: StreamDelta) -> Awaitable[None] | None:
        return on_delta(AgentDelta(turn=turn, delta=delta))

    return sink


def _with_unique_ids(message: Message, seen: set[str], turn: int) -> Message:
    """``message`` with every tool-call id unique in the conversation (``seen``, updated):
    an id the model left empty or used before gets a new one, so each tool result answers
    exactly one call (providers refuse a conversation where it does not)."""
    fixed: list[ToolCall] = []
    changed = False
    for index, call in enumerate(message.tool_calls):
        call_id: Any = call.id
        if not isinstance(call_id, str) or not call_id or call_id in seen:
            base = f"call_{turn}_{index + 1}"
            call_id, n = base, 1
            while call_id in seen:
                n += 1
                call_id = f"{base}_{n}"
            changed = True
        seen.add(call_id)
        fixed.append(call if call_id is call.id else
                     msgspec.structs.replace(call, id=call_id))
    return msgspec.structs.replace(message, tool_calls=tuple(fixed)) if changed else message


def _unrun(call: ToolCall) -> dict[str, Any]:
    """How :attr:`AgentResponse.unrun_tool_calls` reports a call that was not run."""
    entry: dict[str, Any] = {"id": call.id, "tool": call.name, "arguments": call.arguments}
    if call.argument_error is not None:
        entry["argument_error"] = call.argument_error
        entry["raw_arguments"] = call.raw_arguments
    return entry


def _quote(text: str) -> str:
    """The start of the model's unusable arguments text, quoted for the error it reads."""
    if len(text) <= _ARGUMENTS_QUOTED:
        return repr(text)
    return f"{text[:_ARGUMENTS_QUOTED]!r}... [{len(text) - _ARGUMENTS_QUOTED} more characters]"


class AgentResponse(msgspec.Struct, kw_only=True):
    """What a run produced: the answer, how it stopped, tool calls made, tokens used.

    ``stop_reason`` is ``final_answer`` (the model answered without asking for tools) or
    ``turn_limit`` (``max_turns`` model calls were made). ``tool_calls`` lists each call
    the model asked for that was answered (``tool``, ``arguments``, then ``result`` or
    ``error``; ``raw_arguments`` when the model's arguments were unusable).
    ``unrun_tool_calls`` lists the calls of the model's last answer when the run stopped
    at the turn limit (``id``, ``tool``, ``arguments``): they were not run, as the model
    could never have read their results.
    """

    agent: str
    output: Any
    stop_reason: str = "final_answer"
    turns: int = 0
    tool_calls: list[dict[str, Any]] = []
    unrun_tool_calls: list[dict[str, Any]] = []
    token_usage: dict[str, Any] = {}
    attempts: int = 1
    cached: bool = False
    replaced: bool = False
    redirected_to: str | None = None
    forks: list[dict[str, Any]] = []
    correlation_id: str | None = None


class Agent:
    """An agent: a name, a provider, instructions, the tools it may use, a lifecycle.

    ``tools`` (names; None: every registered tool) is also what the agent runs: a call the
    model makes to any other tool is refused. ``max_turns`` bounds the model calls of a
    run, ``max_tool_calls`` (default :data:`DEFAULT_MAX_TOOL_CALLS`) the tool calls run
    per model answer, ``max_tool_result_chars`` (default
    :data:`DEFAULT_MAX_TOOL_RESULT_CHARS`; None: unbounded) the characters of each tool
    result the model reads.
    """

    def __init__(
        self,
        system: Any,
        name: str,
        *,
        provider: Provider,
        instructions: str = "",
        tools: Iterable[str] | None = None,
        max_turns: int = 8,
        model: str | None = None,
        temperature: float | None = None,
        max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS,
        max_tool_result_chars: int | None = DEFAULT_MAX_TOOL_RESULT_CHARS,
    ) -> None:
        check_agent_name(name)
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            raise InvalidValueError(f"max_turns must be a whole number >= 1, got {max_turns!r}")
        if isinstance(max_tool_calls, bool) or not isinstance(max_tool_calls, int) \
                or max_tool_calls < 1:
            raise InvalidValueError(
                f"max_tool_calls must be a whole number >= 1, got {max_tool_calls!r}",
                hint=f"it bounds the tool calls run per model answer "
                     f"(default {DEFAULT_MAX_TOOL_CALLS})")
        if max_tool_result_chars is not None and (
                isinstance(max_tool_result_chars, bool)
                or not isinstance(max_tool_result_chars, int) or max_tool_result_chars < 1):
            raise InvalidValueError(
                f"max_tool_result_chars must be a whole number >= 1 or None, got "
                f"{max_tool_result_chars!r}",
                hint=f"it bounds the characters of a tool result the model reads "
                     f"(default {DEFAULT_MAX_TOOL_RESULT_CHARS}; None: unbounded)")
        if not callable(getattr(provider, "complete", None)) or \
                not isinstance(getattr(provider, "name", None), str):
            raise InvalidValueError(
                f"agent {name!r}: provider must be a model provider (a name and an async "
                f"complete()), got {type(provider).__name__}",
                hint="pass a provider from llmspell.runtime.providers, e.g. "
                     "OpenAICompatibleProvider(...) or ScriptedProvider([...])")
        tool_names = None if tools is None or isinstance(tools, str | bytes) \
            else list(tools)
        if tools is not None and (tool_names is None
                                  or not all(isinstance(tool, str) for tool in tool_names)):
            raise InvalidValueError(
                f"agent {name!r}: tools must be a list of tool names, got {tools!r}",
                hint="tools=['calculator', 'web_search'] (names of registered tools)")
        self.system = system
        self.name = name
        self.provider = provider
        self.instructions = instructions
        self.tool_names = tool_names
        self.max_turns = max_turns
        self.max_tool_calls = max_tool_calls
        self.max_tool_result_chars = max_tool_result_chars
        self.model = model
        self.temperature = temperature
        self.component = ComponentId(type=ComponentType.AGENT, name=name, id=name)
        self._caller = {"type": "agent", "name": name}
        models = getattr(system, "models", None)
        if models is not None:
            models.register(provider)
        self.cache = ResultCache()
        self._state = AgentState.UNINITIALIZED
        self._resume_to = AgentState.READY
        self._run_lock = asyncio.Lock()
        self._unpaused = asyncio.Event()  # clear exactly while the agent is Paused
        self._unpaused.set()

    @property
    def state(self) -> AgentState:
        """The current lifecycle state."""
        return self._state

    # -- lifecycle --------------------------------------------------------------------------
    def _set_state(self, target: AgentState) -> None:
        """Move to ``target`` (already checked): pausing remembers where to resume to, and
        a run waiting at a step is woken whenever the agent leaves Paused."""
        if target is AgentState.PAUSED:
            self._resume_to = self._state
            self._unpaused.clear()
        elif self._state is AgentState.PAUSED:
            self._unpaused.set()
        self._state = target

    async def _transition(self, target: AgentState, *, fire: bool = True,
                          data: dict[str, Any] | None = None,
                          parent: HookContext | None = None,
                          correlation_id: str | None = None) -> None:
        current = self._state
        if target not in TRANSITIONS[current]:
            raise AgentStateError(self.name, current.value, target.value,
                                  tuple(sorted(s.value for s in TRANSITIONS[current])))
        if fire:
            point = transition_point(current, target)
            if point is not None and point in self.system.registry.chains:
                outcome, _ = await self.system.dispatch(
                    point, self.component,
                    {"agent": self.name, "from": current.value, "to": target.value,
                     **(data or {})},
                    parent=parent, correlation_id=correlation_id,
                )
                result = outcome.result  # (Continue first: an isinstance miss is slow)
                if type(result) is not Continue and isinstance(result, Cancel):
                    raise cancelled_error(point, result, outcome.decided_by)
                if self._state is not current:
                    # Another caller moved the agent while the hooks ran: check again.
                    await self._transition(target, fire=False, data=data, parent=parent,
                                           correlation_id=correlation_id)
                    return
        self._set_state(target)
        await self.system.bus.publish_async(
            f"agent.{self.name}.state_changed",
            {"from": current.value, "to": target.value},
            EventMetadata(correlation_id=correlation_id, source="llmspell.agents")
            if correlation_id else None,
        )

    async def _fall_back(self, expected: AgentState, target: AgentState) -> None:
        """After a failed or cancelled move: ``expected`` -> ``target`` without hooks, when
        the agent is still in ``expected`` (so it is never left half-way)."""
        if self._state is expected:
            await self._transition(target, fire=False)

    async def initialize(self) -> None:
        """Uninitialized -> Initializing -> Ready, checking the agent's tools exist. A hook
        cancelling ``AfterAgentInit`` (or a cancelled task) leaves the agent in Error."""
        await self._transition(AgentState.INITIALIZING)
        try:
            for tool_name in self.tool_names or ():
                self.system.tools.get(tool_name)
            await self._transition(AgentState.READY)
        except BaseException:
            await self._fall_back(AgentState.INITIALIZING, AgentState.ERROR)
            raise

    async def pause(self) -> None:
        """Ready or Running -> Paused (fires ``custom:agent_pause``). A run in progress waits
        before its next model or tool call until :meth:`resume`."""
        await self._transition(AgentState.PAUSED)

    async def resume(self) -> None:
        """Paused -> the state it was paused in (fires ``custom:agent_resume``): Running
        when a run is waiting, else Ready. Only a paused agent can resume."""
        if self._state is not AgentState.PAUSED:
            raise AgentStateError(self.name, self._state.value, AgentState.READY.value,
                                  tuple(sorted(s.value for s in TRANSITIONS[self._state])))
        await self._transition(self._resume_to)

    async def recover(self) -> None:
        """Error -> Recovering -> Ready (fires ``custom:agent_recover`` twice). When the
        second move is cancelled or fails, the agent goes back to Error."""
        await self._transition(AgentState.RECOVERING)
        try:
            await self._transition(AgentState.READY)
        except BaseException:
            await self._fall_back(AgentState.RECOVERING, AgentState.ERROR)
            raise

    async def shutdown(self) -> None:
        """-> Terminating -> Terminated (``BeforeAgentShutdown``/``AfterAgentShutdown``).
        Idempotent once terminated. A run in progress stops at its next step."""
        if self._state is AgentState.TERMINATED:
            return
        if self._state is not AgentState.TERMINATING:
            await self._transition(AgentState.TERMINATING)
        await self._transition(AgentState.TERMINATED)

    async def _step(self) -> None:
        """Before each model or tool call of a run: wait while the agent is paused; stop
        when it was shut down."""
        while self._state is AgentState.PAUSED:
            await self._unpaused.wait()
        if self._state in _ENDED:
            raise AgentError(self.name, f"agent {self.name!r} was shut down during its run",
                             hint="shut an agent down once its runs are over; create a new "
                                  "agent to run again")

    async def _end_run(self, target: AgentState, correlation: str) -> None:
        """The run is over (``target``: Ready, or Error when it failed). A run that ends
        while the agent is paused leaves it paused (resuming goes to Ready); one whose
        agent was shut down leaves it shut down."""
        if self._state is AgentState.RUNNING:
            await self._transition(target, fire=False, correlation_id=correlation)
        elif self._state is AgentState.PAUSED:
            self._resume_to = AgentState.READY

    # -- running ------------------------------------------------------------------------------
    async def run(self, input: str | dict[str, Any], *,
                  parent: HookContext | None = None, _depth: int = 0,
                  on_delta: Callable[[AgentDelta], Awaitable[None] | None] | None = None,
                  ) -> AgentResponse:
        """Answer ``input`` (a string, or ``{"input": str, ...}``); see the module docstring.

        ``on_delta`` streams the model's answers: it is called with an :class:`AgentDelta`
        (the turn and the provider's :class:`StreamDelta`) as each piece arrives (see
        :meth:`stream` for an async iterator instead).

        ``parent``: the context the run is a child of (it inherits its metadata and
        correlation). Without one, a run started inside a hooked operation (a sub-agent a
        tool runs) inherits that operation's metadata, under a correlation id of its own.
        The run's model and tool calls are children of its ``BeforeAgentExecution``
        context (else of ``parent``), so the metadata that names the user reaches their
        hooks.

        Raises ``OperationCancelled`` when a hook cancels, ``AgentStateError`` when the agent
        is paused or terminated, ``AgentError`` when the conversation fails and no hook
        recovers it.
        """
        if _depth > _MAX_REDIRECTS:
            raise AgentError(self.name, f"redirects went {_depth} deep; stopping",
                             hint="check the hooks that return Redirect for a loop")
        if not isinstance(input, str | dict):
            raise InvalidValueError(
                f"an agent's input is a string (or {{'input': str}}), not {type(input).__name__}"
            )
        params: dict[str, Any] = {"input": input} if isinstance(input, str) else dict(input)
        if not isinstance(params.get("input"), str):
            raise InvalidValueError("an agent's input is a string (or {'input': str})")
        top = current_run() is None and parent is None and _depth == 0
        if parent is None:  # started inside a hooked operation (a tool, say)
            parent = inherited_context()
        if top:
            # A top-level agent run is a run of its own (system.runs): recorded, listable
            # and replayable.
            async with self.system.runs.start("agent", self.name, params,
                                              target={"agent": self.name}) as run:
                response = await self._run_locked(params, parent, _depth, on_delta)
                run.output = response.output
                return response
        return await self._run_locked(params, parent, _depth, on_delta)

    async def _run_locked(self, params: dict[str, Any], parent: HookContext | None,
                          _depth: int,
                          on_delta: Callable[[AgentDelta], Awaitable[None] | None] | None,
                          ) -> AgentResponse:
        # Refuse a cycle before taking the run lock: this agent inside its own run would
        # wait for the lock forever.
        with nested("agent", self.name):
            async with self._run_lock:
                if self._state is AgentState.UNINITIALIZED:
                    await self.initialize()
                if self._state is AgentState.ERROR:
                    await self.recover()
                if self._state is not AgentState.READY:
                    raise AgentStateError(
                        self.name, self._state.value, AgentState.RUNNING.value,
                        tuple(sorted(s.value for s in TRANSITIONS[self._state])))
                correlation = parent.correlation_id if parent is not None else new_id()
                return await self._run_hooked(params, parent, correlation, _depth, on_delta)

    async def stream(self, input: str | dict[str, Any], *,
                     parent: HookContext | None = None,
                     ) -> AsyncIterator[AgentDelta | AgentResponse]:
        """Run like :meth:`run`, yielding each :class:`AgentDelta` as the model's answers
        arrive (text and tool-call pieces, turn by turn) and the :class:`AgentResponse`
        last. The response reflects what hooks did to the assembled answers
        (``AfterModelCall`` runs on each whole answer), so its ``output`` can differ from
        the streamed text when a hook rewrote it. Errors are raised as :meth:`run` raises
        them (a stream the provider cut off is a ``ProviderStreamError`` inside the
        ``AgentError``)."""
        queue: asyncio.Queue[AgentDelta | None] = asyncio.Queue()
        task = asyncio.ensure_future(self.run(input, parent=parent,
                                              on_delta=queue.put_nowait))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                yield item
            yield await task
        finally:
            if not task.done():
                task.cancel()
                # Not `await task`: a cancellation of the closing task itself goes on.
                await asyncio.wait([task])
                if not task.cancelled():
                    task.exception()  # retrieved: the run's end is not the closer's error

    async def _run_hooked(self, params: dict[str, Any], parent: HookContext | None,
                          correlation: str, depth: int,
                          on_delta: Callable[[AgentDelta], Awaitable[None] | None] | None = None,
                          ) -> AgentResponse:
        system = self.system
        # The collector of the side effects of the latest attempt's tool calls: made only
        # when someone may read it (AgentError hooks, or an enclosing attempt's collector).
        attempt_effects: list[SideEffects] = []

        async def invoke(call_params: dict[str, Any], attempt: int) -> Any:
            if self._state is AgentState.ERROR:
                await self.recover()
            if self._state is not AgentState.READY:  # paused or shut down meanwhile
                await self._step()
            await self._transition(AgentState.RUNNING, fire=False, correlation_id=correlation)
            token = None
            if HookPoint.AGENT_ERROR in system.registry.chains \
                    or current_side_effects() is not None:
                sink, token = SideEffects.enter()
                attempt_effects[:] = (sink,)
            else:
                attempt_effects.clear()
            try:
                # The run's context (its BeforeAgentExecution's, else its parent) is the
                # parent of its model and tool calls: the metadata naming the user reaches
                # them.
                result = await self._converse(call_params, correlation, on_delta,
                                              current_context())
            except Exception:
                await self._end_run(AgentState.ERROR, correlation)
                raise
            except BaseException:  # cancelled: the run is over, the agent is not broken
                await self._end_run(AgentState.READY, correlation)
                raise
            finally:
                if token is not None:
                    SideEffects.leave(token)
            if self._state is AgentState.RUNNING:  # the common end, without a coroutine
                await self._transition(AgentState.READY, fire=False, correlation_id=correlation)
            else:
                await self._end_run(AgentState.READY, correlation)
            return result

        async def redirect(target: str, call_params: dict[str, Any],
                           ctx: HookContext | None) -> Any:
            other = system.agents.get(target)
            response = await other.run(call_params, parent=ctx, _depth=depth + 1)
            return msgspec.to_builtins(response)

        async def fork(op: ForkOperation, ctx: HookContext | None) -> Any:
            return await system.run_operation(op, ctx)

        def error_data(exc: BaseException, data: dict[str, Any]) -> dict[str, Any]:
            # What the failed attempt's tool calls (successful ones too) may have changed:
            # running the agent again runs them again.
            return (attempt_effects[0].error_data() if attempt_effects
                    else {"side_effects": []})

        try:
            outcome = await run_hooked(
                system, points=_POINTS, component=self.component, base={"agent": self.name},
                params=params, invoke=invoke, redirect=redirect, fork=fork, cache=self.cache,
                parent=parent, correlation_id=correlation, error_data=error_data,
            )
        except (OperationCancelled, AgentError):
            raise
        except Exception as exc:
            raise AgentError(self.name,
                             f"agent {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        if self._state is AgentState.ERROR:  # recovered by a hook (Replace/Redirect)
            await self.recover()
        value = outcome.result
        fields = value if isinstance(value, dict) and "output" in value else {"output": value}
        known = set(AgentResponse.__struct_fields__) - {"agent"}
        response = AgentResponse(agent=self.name, **{k: v for k, v in fields.items()
                                                     if k in known})
        response.attempts = outcome.attempts
        response.cached = outcome.cached
        response.replaced = outcome.replaced
        response.redirected_to = outcome.redirected_to
        response.forks = outcome.forks
        response.correlation_id = correlation
        return response

    async def _converse(self, params: dict[str, Any], correlation: str,
                        on_delta: Callable[[AgentDelta], Awaitable[None] | None] | None = None,
                        parent: HookContext | None = None) -> dict[str, Any]:
        system = self.system
        messages: list[Message] = []
        if self.instructions:
            messages.append(Message(role="system", content=self.instructions))
        messages.append(Message(role="user", content=params["input"]))
        specs = system.tools.specs(self.tool_names) if self.tool_names is None or \
            self.tool_names else []
        calls: list[dict[str, Any]] = []
        totals = {"input": 0, "output": 0, "total": 0, "calls": 0}
        meta = EventMetadata(correlation_id=correlation, source="llmspell.agents")
        content: str | None = None
        ids: set[str] = set()
        for turn in range(1, self.max_turns + 1):
            if self._state is not AgentState.RUNNING:  # paused or shut down meanwhile
                await self._step()
            sink = None if on_delta is None else _turn_sink(on_delta, turn)
            answer = await system.models.call(
                self.provider, messages, tools=specs, model=self.model,
                temperature=self.temperature, caller=self._caller, turn=turn,
                parent=parent, correlation_id=correlation, on_delta=sink)
            completion = answer.completion
            usage = completion.usage
            if usage is not None:
                totals["input"] += usage.input_tokens
                totals["output"] += usage.output_tokens
                totals["total"] += usage.total_tokens
                totals["calls"] += 1
                await self._report_usage(usage, turn, correlation, meta)
            message = completion.message
            if message.tool_calls:
                message = _with_unique_ids(message, ids, turn)
            messages.append(message)
            content = message.content
            if not message.tool_calls:
                return self._answer(content, "final_answer", turn, calls, totals)
            if turn == self.max_turns:
                # No model call follows: results the model could never read are not worth
                # the tools' side effects.
                return self._answer(content, "turn_limit", turn, calls, totals,
                                    [_unrun(call) for call in message.tool_calls])
            asked = len(message.tool_calls)
            for index, call in enumerate(message.tool_calls):
                if self._state is not AgentState.RUNNING:  # paused or shut down meanwhile
                    await self._step()
                entry: dict[str, Any] = {"tool": call.name, "arguments": call.arguments}
                if call.argument_error is not None:
                    entry["raw_arguments"] = call.raw_arguments
                refusal = self._refusal(call, index, asked)
                if refusal is not None:
                    entry["error"] = refusal
                    payload = _json.encode({"error": refusal}).decode()
                else:
                    # The tool pipeline notes the call's side effects in the attempt's
                    # collector (succeeded or not: an e-mail sent).
                    try:
                        result = await system.tools.execute(call.name, call.arguments,
                                                            parent=parent,
                                                            correlation_id=correlation)
                        entry["result"] = result
                        payload = self._shown(_model_text(result))
                    except (ToolError, OperationCancelled) as exc:
                        entry["error"] = error_text(exc)
                        payload = self._shown(_json.encode({"error": entry["error"]}).decode())
                calls.append(entry)
                messages.append(Message(
                    role="tool", content=payload, tool_call_id=call.id,
                    name=call.name if isinstance(call.name, str) else None))
        # Reached only when max_turns was set below 1 after creation: no model call ran.
        return self._answer(content, "turn_limit", self.max_turns, calls, totals)

    def _shown(self, payload: str) -> str:
        """What the model reads of a tool's result (its JSON text): at most
        ``max_tool_result_chars`` characters, then a note saying how much was cut."""
        limit = self.max_tool_result_chars
        if limit is None or len(payload) <= limit:
            return payload
        return (f"{payload[:limit]}\n[tool result cut: the first {limit} of {len(payload)} "
                f"characters are shown, {len(payload) - limit} were cut]")

    def _refusal(self, call: ToolCall, index: int, asked: int) -> str | None:
        """Why the model's ``index``-th tool call (of ``asked``) is not run, as the model
        reads it; None when it may run."""
        name: Any = call.name
        if index >= self.max_tool_calls:
            return error_text(ToolError(
                str(name), f"tool call {index + 1} of {asked} was not run: at most "
                           f"{self.max_tool_calls} tool calls of one answer run",
                hint="ask for the remaining calls in your next answer"))
        if not isinstance(name, str) or not name:
            return error_text(ToolNotFoundError(
                str(name), "a tool call that names no tool was not run",
                hint="name one of the tools on offer"))
        if self.tool_names is not None and name not in self.tool_names:
            return error_text(ToolNotFoundError(
                name, f"tool {name!r} is not one of this agent's tools; it was not run",
                hint="this agent's tools: " + (", ".join(self.tool_names) or "none")))
        if call.argument_error is not None:
            quoted = "" if call.raw_arguments is None else \
                f" (received {_quote(call.raw_arguments)})"
            return error_text(ToolValidationError(
                name, f"the call to {name!r} was not run: its arguments were "
                      f"{call.argument_error}{quoted}",
                hint="send the arguments again as one JSON object of named parameters"))
        if not isinstance(call.arguments, dict):
            return error_text(ToolValidationError(
                name, f"the arguments of a call to {name!r} must be a JSON object, not "
                      f"{type(call.arguments).__name__}; it was not run",
                hint="give the arguments as an object of named parameters"))
        return None

    def _answer(self, content: str | None, stop: str, turns: int,
                calls: list[dict[str, Any]], totals: dict[str, int],
                unrun: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {"output": content or "", "stop_reason": stop, "turns": turns,
                "tool_calls": calls, "unrun_tool_calls": unrun or [],
                "token_usage": {**totals, "model": self.model or self.provider.model,
                                "provider": self.provider.name}}

    async def _report_usage(self, usage: TokenUsage, turn: int, correlation: str,
                            meta: EventMetadata) -> None:
        token_usage = {"input": usage.input_tokens, "output": usage.output_tokens,
                       "total": usage.total_tokens, "model": usage.model,
                       "provider": usage.provider}
        await self.system.bus.publish_async(
            f"agent.{self.name}.model_call", {"turn": turn, "token_usage": token_usage}, meta)

    def __repr__(self) -> str:
        return f"<Agent {self.name!r} {self._state.value}>"
