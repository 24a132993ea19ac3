"""The model call as a hooked operation: ``BeforeModelCall``, ``AfterModelCall``,
``ModelCallError`` around every provider call the runtime makes.

``system.models.call(provider, messages, ...)`` runs one chat completion through
:func:`~llmspell.runtime.calls.run_hooked`, so every hook result means what it means for
tools and agents (docs/runtime.md). The context's data (docs/hook-points.md):
``provider``, ``model``, ``caller`` (``{"type", "name"}`` or None), ``turn``, ``attempt``,
``params`` (the request: ``messages``, ``tools``, ``temperature``, ``max_tokens``,
``stream``) and, after the call, ``result`` (the response: ``message``,
``finish_reason``, ``model``, ``usage``, ``cost_usd``, ``latency_ms``); at
``ModelCallError`` also ``error``, ``error_type``, ``status``, ``retryable``,
``retry_after``.

* ``Redirect("anthropic/claude-x")`` (or a bare model name: the same provider) sends the
  call to another model; ``Fork`` operations of type ``model`` are shadow calls with the
  same request, attached to the result and published as ``model.<provider>.shadow``.
* ``Cancel`` raises :class:`~llmspell.errors.ModelCallCancelledError`, which an agent
  treats as a failed step (its ``AgentError`` hooks may recover).
* A request or response a hook rewrote is validated before it is used: a malformed one is
  an :class:`~llmspell.errors.InvalidValueError` naming the field, and the provider is not
  called with it.

Each call publishes ``model.<provider>.started``/``.completed``/``.failed``; how much of
the prompt and the reply they carry is ``SystemConfig.record_content``
(:mod:`llmspell.runtime.content`). With no hook at any model point the call skips the
context entirely (the request stays in its Struct form).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from llmspell.builtin.cost import list_price_usd
from llmspell.core.errors import (
    ConfigurationError,
    EventError,
    EventTooLargeError,
    InvalidValueError,
    NotJsonSafeError,
    OperationCancelled,
    ProviderError,
    ProviderStreamError,
)
from llmspell.core.redact import get_logger
from llmspell.core.text import error_text
from llmspell.events.event import EventMetadata
from llmspell.hooks.context import ComponentId, ComponentType, HookContext
from llmspell.hooks.points import HookPoint
from llmspell.hooks.result import ForkOperation, model_call_cancelled_error
from llmspell.runtime.calls import (
    CallOutcome,
    CallPoints,
    ResultCache,
    inherited_context,
    run_hooked,
)
from llmspell.runtime.content import mask_text, record_message
from llmspell.runtime.delta_content import DeltaContent
from llmspell.runtime.nesting import nested
from llmspell.runtime.providers.base import (
    Completion,
    Message,
    Provider,
    StreamDelta,
    TokenUsage,
    ToolCall,
    ToolSpec,
)
from llmspell.runtime.runs.input_digest import step_input
from llmspell.runtime.runs.scope import (
    current_frame,
    current_run,
    delta_sink,
    enter_step,
    exit_step,
)
from llmspell.runtime.withheld import publish_withheld

__all__ = ["DELTA_FLUSH_CHARS", "MODEL_POINTS", "DeltaSink", "ModelCallResult", "ModelCalls",
           "completion_from", "request_args",
           "messages_from", "request_dict", "response_dict"]

logger = get_logger("llmspell.models")

MODEL_POINTS = CallPoints(before=HookPoint.BEFORE_MODEL_CALL,
                          after=HookPoint.AFTER_MODEL_CALL,
                          error=HookPoint.MODEL_CALL_ERROR)
_ROLES = frozenset({"system", "user", "assistant", "tool"})
_encode = msgspec.to_builtins
_MESSAGE_TYPE = frozenset({Message})
"""What every message's exact type must be for a conversation to go unchecked (the test
runs in C, not a generator step per message on every call of a growing conversation)."""


class ModelCallResult(msgspec.Struct, kw_only=True):
    """What one hooked model call produced: the completion and how it came about."""

    completion: Completion
    provider: str
    model: str
    latency_ms: float = 0.0
    cost_usd: float | None = None
    attempts: int = 1
    cached: bool = False
    replaced: bool = False
    redirected_to: str | None = None
    forks: list[dict[str, Any]] = []


# -- the request and response as hooks see them --------------------------------------------

def _call_dict(call: ToolCall, *, raw_text: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"id": call.id, "name": call.name, "arguments": call.arguments}
    if call.argument_error is not None:  # the model's arguments were unusable
        out["argument_error"] = call.argument_error
        if raw_text:
            out["raw_arguments"] = call.raw_arguments
    return out


def _message_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content,
                           "tool_calls": [_call_dict(c) for c in message.tool_calls],
                           "tool_call_id": message.tool_call_id, "name": message.name}
    return out


def request_dict(messages: Sequence[Message], tools: Sequence[ToolSpec],
                 temperature: float | None, max_tokens: int | None,
                 stream: bool = False) -> dict[str, Any]:
    """The request as hooks see it under ``ctx.data["params"]``."""
    return {"messages": [_message_dict(m) for m in messages],
            "tools": [{"name": t.name, "description": t.description,
                       "parameters": t.parameters} for t in tools],
            "temperature": temperature, "max_tokens": max_tokens, "stream": stream}


def _usage_dict(usage: TokenUsage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "cached_tokens": usage.cached_tokens, "reasoning_tokens": usage.reasoning_tokens}


def cost_of(provider: str, completion: Completion) -> float | None:
    """The call's list price in USD (None: no usage, or a model with no known price)."""
    usage = completion.usage
    if usage is None:
        return None
    return list_price_usd(provider, completion.model, usage.input_tokens,
                          usage.output_tokens)


def response_dict(completion: Completion, latency_ms: float,
                  cost_usd: float | None = None) -> dict[str, Any]:
    """The response as hooks see it under ``ctx.data["result"]``."""
    return {"message": _message_dict(completion.message),
            "finish_reason": completion.finish_reason, "model": completion.model,
            "usage": _usage_dict(completion.usage), "cost_usd": cost_usd,
            "latency_ms": latency_ms}


def _bad(path: str, problem: str) -> InvalidValueError:
    return InvalidValueError(f"model call: {path} {problem}",
                             hint="a hook's Modified/Replace must keep the model-call shape "
                                  "(docs/hook-points.md)")


def _message_from(raw: Any, path: str) -> Message:
    if isinstance(raw, Message):
        return raw
    if not isinstance(raw, dict):
        raise _bad(path, f"must be a message table, not {type(raw).__name__}")
    role = raw.get("role")
    if role not in _ROLES:
        raise _bad(f"{path}.role", f"must be one of {sorted(_ROLES)}, got {role!r}")
    content = raw.get("content")
    if content is not None and not isinstance(content, str):
        raise _bad(f"{path}.content", f"must be text or null, not {type(content).__name__}")
    calls_raw = raw.get("tool_calls") or []
    if not isinstance(calls_raw, list | tuple):
        raise _bad(f"{path}.tool_calls", "must be a list")
    calls: list[ToolCall] = []
    for i, call in enumerate(calls_raw):
        where = f"{path}.tool_calls[{i}]"
        if not isinstance(call, dict):
            raise _bad(where, "must be a table {id, name, arguments}")
        name, call_id, arguments = call.get("name"), call.get("id"), call.get("arguments", {})
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.name", "must be a non-empty string")
        if not isinstance(call_id, str):
            raise _bad(f"{where}.id", "must be a string")
        if not isinstance(arguments, dict):
            raise _bad(f"{where}.arguments", "must be a table")
        problem, raw_text = call.get("argument_error"), call.get("raw_arguments")
        for key, value in (("argument_error", problem), ("raw_arguments", raw_text)):
            if value is not None and not isinstance(value, str):
                raise _bad(f"{where}.{key}", "must be a string or null")
        calls.append(ToolCall(id=call_id, name=name, arguments=arguments,
                              argument_error=problem, raw_arguments=raw_text))
    for key in ("tool_call_id", "name"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise _bad(f"{path}.{key}", "must be a string or null")
    if role == "tool" and not raw.get("tool_call_id"):
        raise _bad(f"{path}.tool_call_id", "is required for a tool message")
    return Message(role=role, content=content, tool_calls=tuple(calls),
                   tool_call_id=raw.get("tool_call_id"), name=raw.get("name"))


def messages_from(raw: Any) -> list[Message]:
    """Validate ``params.messages``; typed errors name the bad field."""
    if not isinstance(raw, list | tuple) or not raw:
        raise _bad("params.messages", "must be a non-empty list of messages")
    return [_message_from(m, f"params.messages[{i}]") for i, m in enumerate(raw)]


def _tools_from(raw: Any) -> list[ToolSpec]:
    if raw is None or raw == {}:  # an empty Lua table arrives as {}
        return []
    if not isinstance(raw, list | tuple):
        raise _bad("params.tools", "must be a list")
    tools: list[ToolSpec] = []
    for i, spec in enumerate(raw):
        if isinstance(spec, ToolSpec):
            tools.append(spec)
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise _bad(f"params.tools[{i}]", "must be a table with a name")
        parameters = spec.get("parameters", {"type": "object"})
        if not isinstance(parameters, dict):
            raise _bad(f"params.tools[{i}].parameters", "must be a JSON Schema table")
        tools.append(ToolSpec(name=spec["name"], description=str(spec.get("description", "")),
                              parameters=parameters))
    return tools


def _number(raw: Any, path: str, kind: type) -> Any:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or (
            kind is int and not float(raw).is_integer()):
        raise _bad(path, f"must be a {'whole ' if kind is int else ''}number or null, "
                         f"got {raw!r}")
    return kind(raw)


def request_args(request: dict[str, Any]) -> tuple[list[Message], list[ToolSpec],
                                                  float | None, int | None]:
    """Validate a request dict (``ctx.data["params"]`` after a hook): messages, tools,
    temperature, max_tokens; typed errors name the bad field."""
    return (messages_from(request.get("messages")), _tools_from(request.get("tools")),
            _number(request.get("temperature"), "params.temperature", float),
            _number(request.get("max_tokens"), "params.max_tokens", int))


def completion_from(raw: Any, default_model: str) -> Completion:
    """Validate a response dict (a hook's Modified/Replace, a cached value) into a
    :class:`Completion`; a bare string is an assistant message with that text."""
    if isinstance(raw, Completion):
        return raw
    if isinstance(raw, str):
        return Completion(message=Message(role="assistant", content=raw),
                          finish_reason="stop", model=default_model)
    if not isinstance(raw, dict):
        raise _bad("result", f"must be a response table or text, not {type(raw).__name__}")
    message = _message_from(raw.get("message"), "result.message")
    if message.role != "assistant":
        raise _bad("result.message.role", f"must be 'assistant', got {message.role!r}")
    usage_raw = raw.get("usage")
    usage: TokenUsage | None = None
    if isinstance(usage_raw, dict):
        try:
            numbers = {k: int(usage_raw.get(k) or 0)
                       for k in ("input_tokens", "output_tokens", "total_tokens")}
        except (TypeError, ValueError):
            raise _bad("result.usage", "token counts must be whole numbers") from None
        usage = TokenUsage(model=str(raw.get("model") or default_model), provider="hook",
                           **numbers)
    elif usage_raw is not None:
        raise _bad("result.usage", "must be a table or null")
    return Completion(message=message, finish_reason=str(raw.get("finish_reason") or "stop"),
                      model=str(raw.get("model") or default_model), usage=usage)


# -- the operation --------------------------------------------------------------------------

class ModelCalls:
    """Every model call the runtime makes, hooked (``system.models``).

    ``register(provider)`` makes a provider reachable by name for ``Redirect`` and shadow
    ``Fork`` targets (``"<provider>/<model>"``); agents register theirs. ``cache`` holds
    what ``Cache`` results store at the model points.
    """

    def __init__(self, system: Any) -> None:
        self._system = system
        self._providers: dict[str, Provider] = {}
        self._components: dict[str, ComponentId] = {}
        self._content_mode = str(getattr(system.config, "record_content", "masked"))
        self.cache = ResultCache()

    # -- providers ------------------------------------------------------------------------
    def register(self, provider: Provider) -> None:
        """Make ``provider`` a Redirect/Fork target under its name."""
        self._providers.setdefault(provider.name, provider)

    def resolve(self, target: str, current: Provider) -> tuple[Provider, str]:
        """The provider and model ``target`` names: ``"<provider>/<model>"`` (a registered
        provider, else one built from the host's configuration), or a bare model name on
        ``current``."""
        if not isinstance(target, str) or not target.strip():
            raise InvalidValueError("a model Redirect/Fork target is 'provider/model'",
                                    hint='e.g. Redirect("anthropic/claude-3-5-haiku-latest")')
        kind, slash, model = target.partition("/")
        if not slash:
            return current, target
        if not model:
            raise InvalidValueError(f"model target {target!r} names no model",
                                    hint="write '<provider>/<model>'")
        known = self._providers.get(kind)
        if known is not None:
            return known, model
        if current.name == kind:
            return current, model
        from llmspell.runtime.providers.config import (  # noqa: PLC0415 - only for new targets
            ProviderConfig,
            provider_from_config,
        )
        try:
            made = provider_from_config(ProviderConfig(kind=kind, model=model))
        except ConfigurationError as exc:
            raise ConfigurationError(f"cannot reach model target {target!r}: {exc.message}",
                                     hint=exc.hint) from exc
        self._providers[kind] = made
        return made, model

    def _component(self, provider: str, model: str) -> ComponentId:
        name = f"{provider}/{model}"
        component = self._components.get(name)
        if component is None:
            if len(self._components) > 4096:
                self._components.clear()
            component = self._components[name] = ComponentId(
                type=ComponentType.MODEL, name=name, id=name)
        return component

    # -- calls --------------------------------------------------------------------------
    async def call(self, provider: Provider, messages: Sequence[Message], *,
                   tools: Sequence[ToolSpec] = (), model: str | None = None,
                   temperature: float | None = None, max_tokens: int | None = None,
                   caller: dict[str, str] | None = None, turn: int | None = None,
                   parent: HookContext | None = None,
                   correlation_id: str | None = None,
                   on_delta: DeltaSink | None = None) -> ModelCallResult:
        """One chat completion through the model points (see the module docstring).

        ``on_delta`` (a function, sync or async, taking a :class:`StreamDelta`) streams the
        answer: a provider that can stream is asked to, and each delta is handed over as it
        arrives; ``AfterModelCall`` then runs on the assembled response. Deltas are also
        published as ``model.<provider>.delta`` events, coalesced, whenever someone
        subscribes to them (with or without ``on_delta``). Given neither ``parent`` nor
        ``correlation_id``, a call started inside a hooked operation inherits its metadata
        (see ``inherited_context``)."""
        if parent is None and correlation_id is None:
            parent = inherited_context()
        model_name = model or provider.model
        if not set(map(type, messages)) <= _MESSAGE_TYPE:  # dicts from a caller: checked
            messages = messages_from(list(messages))
        if tools and not all(type(t) is ToolSpec for t in tools):
            tools = _tools_from(list(tools))
        chains = self._system.registry.chains
        hooked = (HookPoint.BEFORE_MODEL_CALL in chains or HookPoint.AFTER_MODEL_CALL in chains
                  or HookPoint.MODEL_CALL_ERROR in chains or self.cache.aliased)
        meta = EventMetadata(correlation_id=parent.correlation_id if parent is not None
                             else correlation_id, source="llmspell.models")
        answer = _Answerer(self._system.bus, provider, model_name, caller, turn, meta, on_delta,
                           self._content_mode)
        run = current_run()
        if run is not None and run.replay is not None and (
                on_delta is not None or delta_sink.get() is not None):
            # A replay hands a served call's recorded deltas to this call's consumer.
            token = delta_sink.set(on_delta if answer.streams else None)
            try:
                if not hooked:
                    return await self._direct_recorded(answer, messages, tools, temperature,
                                                       max_tokens)
                return await self._hooked(answer, messages, tools, temperature, max_tokens,
                                          parent, correlation_id)
            finally:
                delta_sink.reset(token)
        if not hooked:
            if run is not None and run.recording:  # a recorded run keeps the call
                return await self._direct_recorded(answer, messages, tools, temperature,
                                                   max_tokens)
            return await self._direct(answer, messages, tools, temperature, max_tokens)
        return await self._hooked(answer, messages, tools, temperature, max_tokens, parent,
                                  correlation_id)

    async def _direct(self, answer: _Answerer, messages: Sequence[Message],
                      tools: Sequence[ToolSpec], temperature: float | None,
                      max_tokens: int | None) -> ModelCallResult:
        """No hook at any model point: no context, no dict form of the request."""
        provider, model, caller, turn, meta = (answer.provider, answer.model, answer.caller,
                                               answer.turn, answer.meta)
        topic = answer.topic
        started = time.perf_counter()
        try:
            completion = await answer(messages, tools, temperature, max_tokens, 1)
        except BaseException as exc:  # a cancelled call (no Exception) ends its events too
            self._failed(topic, model, caller, turn, exc, meta)
            raise
        latency = (time.perf_counter() - started) * 1000
        result = ModelCallResult(completion=completion, provider=provider.name, model=model,
                                 latency_ms=latency,
                                 cost_usd=cost_of(provider.name, completion))
        self._completed(topic, result, caller, turn, meta, messages,
                        [t.name for t in tools], temperature, max_tokens)
        return result

    async def _direct_recorded(self, answer: _Answerer, messages: Sequence[Message],
                               tools: Sequence[ToolSpec], temperature: float | None,
                               max_tokens: int | None) -> ModelCallResult:
        """No hook at any model point, inside a recorded run: the call is a step of the run
        (a replay serves its response from the recording) without building the request's
        dict form or going through the points."""
        provider, model, caller, turn, meta = (answer.provider, answer.model, answer.caller,
                                               answer.turn, answer.meta)
        topic = answer.topic
        opened = enter_step("model", f"{provider.name}/{model}",
                            step_input(messages, tools, temperature, max_tokens),
                            lambda run: run.model_input_digest(messages, tools, temperature,
                                                               max_tokens))
        if opened is None or opened[0].run.replay is None:
            # The call is made here; recorded, its attempt is kept on the step's frame
            # (what StepFrame.call would do, without its coroutine and a closure).
            try:
                started = time.perf_counter()
                completion = await answer(messages, tools, temperature, max_tokens, 1)
                latency_ms = (time.perf_counter() - started) * 1000
                cost_usd = cost_of(provider.name, completion)
            except BaseException as exc:  # a cancelled call ends its events too
                if opened is not None:
                    opened[0].failed(exc)
                    exit_step(opened, None, exc)
                self._failed(topic, model, caller, turn, exc, meta)
                raise
            if opened is not None:
                response = response_dict(completion, latency_ms, cost_usd)
                opened[0].answered(response, completion.message.tool_calls)
                exit_step(opened, response, None)
        else:  # a replay: the recording may serve the response
            latency = {"ms": 0.0}
            answered: list[Completion] = []

            async def invoke() -> Any:
                started = time.perf_counter()
                completion = await answer(messages, tools, temperature, max_tokens, 1)
                latency["ms"] = (time.perf_counter() - started) * 1000
                answered.append(completion)
                return response_dict(completion, latency["ms"],
                                     cost_of(provider.name, completion))

            try:
                response = await opened[0].call(1, invoke)
            except BaseException as exc:
                exit_step(opened, None, exc)
                self._failed(topic, model, caller, turn, exc, meta)
                raise
            exit_step(opened, response, None)
            completion = answered[0] if answered else completion_from(response, model)
            cost = response.get("cost_usd") if isinstance(response, dict) else None
            latency_ms = latency["ms"]
            cost_usd = cost if isinstance(cost, int | float) else None
        result = ModelCallResult(completion=completion, provider=provider.name, model=model,
                                 latency_ms=latency_ms, cost_usd=cost_usd)
        self._completed(topic, result, caller, turn, meta, messages,
                        [t.name for t in tools], temperature, max_tokens)
        return result

    async def _hooked(self, answer: _Answerer, messages: Sequence[Message],
                      tools: Sequence[ToolSpec], temperature: float | None,
                      max_tokens: int | None, parent: HookContext | None,
                      correlation_id: str | None) -> ModelCallResult:
        system = self._system
        bus = system.bus
        provider, model, caller, turn, meta = (answer.provider, answer.model, answer.caller,
                                               answer.turn, answer.meta)
        topic = answer.topic
        params = request_dict(messages, tools, temperature, max_tokens, answer.streams)
        base = {"provider": provider.name, "model": model, "caller": caller, "turn": turn}
        component = self._component(provider.name, model)
        latency = {"ms": 0.0}
        answered: list[tuple[dict[str, Any], Completion]] = []

        async def invoke(request: dict[str, Any], attempt: int) -> Any:
            if request is params:  # no hook rewrote it: the Structs we were given
                args = (list(messages), list(tools), temperature, max_tokens)
            else:
                args = request_args(request)
            started = time.perf_counter()
            completion = await answer(*args, attempt)
            latency["ms"] = (time.perf_counter() - started) * 1000
            response = response_dict(completion, latency["ms"],
                                     cost_of(provider.name, completion))
            answered.append((response, completion))
            return response

        async def other_model(target: str, request: dict[str, Any], ctx: HookContext | None,
                              who: dict[str, str] | None,
                              sink: DeltaSink | None) -> tuple[dict[str, Any], str, str]:
            """The same request answered by ``target`` (through its own points): the
            response, the provider's name and the model."""
            other, name = self.resolve(target, provider)
            sent, offered, temp, cap = request_args(request)
            with nested("model", f"{other.name}/{name}"):
                done = await self.call(other, sent, tools=offered, model=name,
                                       temperature=temp, max_tokens=cap, caller=who,
                                       turn=turn, parent=ctx, on_delta=sink)
            return (response_dict(done.completion, done.latency_ms, done.cost_usd),
                    other.name, name)

        async def redirect(target: str, request: dict[str, Any],
                           ctx: HookContext | None) -> Any:
            return (await other_model(target, request, ctx, caller, answer.sink))[0]

        async def fork(op: ForkOperation, ctx: HookContext | None) -> Any:
            if op.type != "model":
                return await system.run_operation(op, ctx)
            shadowing = f"{provider.name}/{model}"
            shadow, other, name = await other_model(
                op.target, {**params, **op.parameters}, ctx,
                {"type": "shadow", "name": shadowing}, None)
            _record_event(bus, f"model.{other}.shadow",
                          {"model": name, "shadowing": shadowing, "caller": caller, "turn": turn,
                           "usage": shadow["usage"], "latency_ms": shadow["latency_ms"],
                           "response": self._record(shadow["message"])}, meta)
            return shadow

        try:
            outcome: CallOutcome = await run_hooked(
                system, points=MODEL_POINTS, component=component, base=base, params=params,
                invoke=invoke, redirect=redirect, fork=fork, cache=self.cache, parent=parent,
                correlation_id=correlation_id, error_data=_error_point_data,
                step_input=step_input(messages, tools, temperature, max_tokens),
                step_digest=lambda run: run.model_input_digest(messages, tools, temperature,
                                                               max_tokens))
        except OperationCancelled as exc:
            self._failed(topic, model, caller, turn, exc, meta)
            raise model_call_cancelled_error(f"{provider.name}/{model}", exc.point, exc,
                                             exc.hook) from exc
        except BaseException as exc:  # a cancelled call (no Exception) ends its events too
            self._failed(topic, model, caller, turn, exc, meta)
            raise
        value = outcome.result
        # The provider's own Completion when no hook replaced or rewrote the response (a
        # hook that changed the dict in place and returned Modified: it is read again).
        own = None if outcome.rewritten else next((c for r, c in answered if r is value), None)
        completion = own if own is not None else completion_from(value, model)
        cost = value.get("cost_usd") if isinstance(value, dict) else None
        result = ModelCallResult(
            completion=completion, provider=provider.name, model=model,
            latency_ms=latency["ms"], cost_usd=cost if isinstance(cost, int | float) else None,
            attempts=outcome.attempts, cached=outcome.cached, replaced=outcome.replaced,
            redirected_to=outcome.redirected_to, forks=outcome.forks)
        self._completed(topic, result, caller, turn, meta, params.get("messages") or [],
                        [t.get("name") for t in params.get("tools") or []
                         if isinstance(t, dict)],
                        params.get("temperature"), params.get("max_tokens"))
        return result

    # -- events ---------------------------------------------------------------------------
    def _kept(self, event_type: str) -> bool:
        """True when publishing ``event_type`` has an effect (a store or a subscriber)."""
        return self._system.store is not None or self._system.bus.has_subscribers(event_type)

    def _mode(self) -> str:
        return self._content_mode

    def _record(self, message: Message | dict[str, Any]) -> dict[str, Any]:
        """What the content setting keeps of one message (the empty fields left out). The
        model's unusable tool-call arguments text (``raw_arguments``) is left out: the
        content setting does not mask it, and the error answering the call quotes it."""
        if isinstance(message, Message):
            raw: dict[str, Any] = {"role": message.role, "content": message.content}
            if message.tool_calls:
                raw["tool_calls"] = [_call_dict(c, raw_text=False) for c in message.tool_calls]
            if message.tool_call_id is not None:
                raw["tool_call_id"] = message.tool_call_id
            if message.name is not None:
                raw["name"] = message.name
        else:
            raw = message
            calls = raw.get("tool_calls")
            if isinstance(calls, list) and any(isinstance(c, dict) and "raw_arguments" in c
                                               for c in calls):
                raw = {**raw, "tool_calls": [
                    {k: v for k, v in c.items() if k != "raw_arguments"}
                    if isinstance(c, dict) else c for c in calls]}
        return record_message(raw, self._content_mode)

    def _completed(self, topic: str, result: ModelCallResult, caller: dict[str, str] | None,
                   turn: int | None, meta: EventMetadata,
                   messages: Sequence[Message | dict[str, Any]], tools: list[Any],
                   temperature: Any, max_tokens: Any) -> None:
        """Publish ``model.<provider>.completed``. Of the request it keeps the messages
        added since the model last spoke (a conversation resends its history on every
        call: recording it whole would store it again and again) and the count."""
        event_type = f"{topic}.completed"
        if not self._kept(event_type):
            return
        completion = result.completion
        usage = completion.usage
        start = len(messages)
        while start > 0 and _role(messages[start - 1]) != "assistant":
            start -= 1
        request: dict[str, Any] = {
            "messages": [self._record(m) for m in messages[start:]],
            "total_messages": len(messages)}
        if tools:
            request["tools"] = tools
        if temperature is not None:
            request["temperature"] = temperature
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        data: dict[str, Any] = {
            "model": result.model, "caller": caller, "turn": turn,
            "answered_by": completion.model, "finish_reason": completion.finish_reason,
            "usage": _usage_dict(usage), "cost_usd": result.cost_usd,
            "latency_ms": result.latency_ms, "attempts": result.attempts,
            "cached": result.cached, "replaced": result.replaced,
            "redirected_to": result.redirected_to,
            "request": request, "response": self._record(completion.message),
        }
        if result.forks:
            data["forks"] = [{k: v for k, v in f.items() if k != "result"} for f in result.forks]
        _record_event(self._system.bus, event_type, data, meta)

    def _failed(self, topic: str, model: str, caller: dict[str, str] | None,
                turn: int | None, exc: BaseException, meta: EventMetadata) -> None:
        bus = self._system.bus
        event_type = f"{topic}.failed"
        if not self._kept(event_type):
            return
        error = error_text(exc)
        if error and self._content_mode != "full":
            # A provider's error may quote the request or the key it was sent with.
            error = mask_text(error)
        data = {"model": model, "caller": caller, "turn": turn, **_error_data(exc),
                "error": error, "error_type": type(exc).__name__}
        if isinstance(exc, Exception):
            _record_event(bus, event_type, data, meta)
            return
        if not data["error"]:
            data["error"] = ("cancelled" if isinstance(exc, asyncio.CancelledError)
                             else type(exc).__name__)
        try:
            _record_event(bus, event_type, data, meta)
        except Exception as publish_error:  # the cancellation goes on: the event is lost
            logger.warning("the %s event was not recorded: %s", event_type, publish_error)


def _error_point_data(exc: BaseException, data: dict[str, Any]) -> dict[str, Any]:
    """``run_hooked``'s ``error_data``: :func:`_error_data`."""
    return _error_data(exc)


def _error_data(exc: BaseException) -> dict[str, Any]:
    """What ``ModelCallError`` hooks see of a failure beyond its message and type."""
    if isinstance(exc, ProviderError):
        return {"status": exc.status, "retryable": exc.retryable,
                "retry_after": getattr(exc, "retry_after", None)}
    return {"status": None, "retryable": False, "retry_after": None}


def _record_event(bus: Any, event_type: str, data: dict[str, Any],
                  meta: EventMetadata) -> None:
    """Publish a model call's record. A call that has its answer does not fail because the
    record could not be kept (a full or failing store, an event over the size limit): that
    is logged, and the bus and store count it."""
    try:
        try:
            bus.publish(event_type, data, meta)
        except (EventTooLargeError, NotJsonSafeError) as exc:
            # A huge answer or prompt: its text is withheld; a lone surrogate or an argument
            # nested too deep: the event's copy is made safe (the answer is the model's own).
            publish_withheld(bus, exc, event_type, data, meta)
    except EventError as exc:
        logger.warning("the %s event was not recorded: %s", event_type, exc)


def _role(message: Message | dict[str, Any]) -> Any:
    return message.role if isinstance(message, Message) else message.get("role")


DeltaSink = Callable[[StreamDelta], "Awaitable[None] | None"]
"""Where streamed deltas go: a function, sync or async, taking a :class:`StreamDelta`."""

DELTA_FLUSH_CHARS = 256
"""Coalescing: a ``model.<provider>.delta`` event is published once this many characters
(text and argument fragments) have arrived, or when the stream ends."""


class _Answerer:
    """Asks the provider for one answer: streamed (deltas to the sink and, coalesced, to
    ``model.<provider>.delta`` subscribers) when someone wants the deltas and the provider
    can stream, else in one piece."""

    __slots__ = ("bus", "caller", "content", "meta", "model", "provider", "sink", "streams",
                 "topic", "turn")

    def __init__(self, bus: Any, provider: Provider, model: str,
                 caller: dict[str, str] | None, turn: int | None, meta: EventMetadata,
                 sink: DeltaSink | None, content: str = "masked") -> None:
        self.content = content  # the record_content setting, for the delta events
        self.bus = bus
        self.provider = provider
        self.model = model
        self.caller = caller
        self.turn = turn
        self.meta = meta
        self.sink = sink
        self.topic = f"model.{provider.name}"
        wanted = sink is not None or bus.has_subscribers(f"{self.topic}.delta")
        self.streams = wanted and callable(getattr(provider, "stream", None))

    async def __call__(self, messages: Sequence[Message], tools: Sequence[ToolSpec],
                       temperature: float | None, max_tokens: int | None,
                       attempt: int) -> Completion:
        bus, topic = self.bus, self.topic
        if bus.has_subscribers(event_type := f"{topic}.started"):
            data = {"model": self.model, "caller": self.caller, "turn": self.turn,
                    "attempt": attempt}
            try:
                bus.publish(event_type, data, self.meta)
            except (EventTooLargeError, NotJsonSafeError) as exc:  # a caller's odd name
                publish_withheld(bus, exc, event_type, data, self.meta)
        kwargs: dict[str, Any] = {"tools": tools, "model": self.model,
                                  "temperature": temperature}
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if not self.streams:
            completion: Completion = await self.provider.complete(messages, **kwargs)
            return completion
        return await self._stream(messages, kwargs, attempt)

    async def _stream(self, messages: Sequence[Message], kwargs: dict[str, Any],
                      attempt: int) -> Completion:
        stream = self.provider.stream(messages, **kwargs)  # type: ignore[attr-defined]
        publish = self.bus.has_subscribers(f"{self.topic}.delta")
        shown = DeltaContent(self.content)
        pending: list[StreamDelta] = []
        size = 0
        sent = 0
        final: Completion | None = None
        kept: list[Any] | None = None
        if self.sink is not None:
            # In a recorded run, the step keeps what its consumer was handed (a replay hands
            # it over again): appended as it goes, encoded only with the step's record.
            frame = current_frame()
            if frame is not None and frame.kind == "model" and frame.parent is not None:
                kept = frame.deltas = []
        try:
            async for item in stream:
                if isinstance(item, Completion):
                    final = item
                    continue
                if self.sink is not None:
                    if kept is not None:
                        kept.append(item)
                    done = self.sink(item)
                    if done is not None:
                        await done
                if publish:
                    pending.append(item)
                    size += len(item.text) + len(item.arguments_text)
                    if size >= DELTA_FLUSH_CHARS:
                        sent = self._publish_deltas(pending, sent, attempt, shown, False)
                        pending, size = [], 0
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                await closer()
        if publish and (pending or shown.holding):
            self._publish_deltas(pending, sent, attempt, shown, True)
        if final is None:
            raise ProviderStreamError(self.provider.name,
                                      "the stream ended without its answer")
        return final

    def _publish_deltas(self, deltas: list[StreamDelta], sent: int, attempt: int,
                        shown: DeltaContent, last: bool) -> int:
        """One event for several deltas: the text joined, tool-call fragments listed, as
        much of them as the content setting keeps (``shown``)."""
        calls = [{"index": d.tool_call_index, "id": d.tool_call_id, "name": d.tool_name,
                  **shown.arguments(d.tool_call_index, d.arguments_text)}
                 for d in deltas if d.tool_call_index is not None]
        data: dict[str, Any] = {"model": self.model, "caller": self.caller, "turn": self.turn,
                                "attempt": attempt, "seq": sent,
                                **shown.text("".join(d.text for d in deltas), last=last)}
        if calls:
            data["tool_calls"] = calls
        event_type = f"{self.topic}.delta"
        try:
            self.bus.publish(event_type, data, self.meta, False)
        except (EventTooLargeError, NotJsonSafeError) as exc:  # the stream goes on
            publish_withheld(self.bus, exc, event_type, data, self.meta, False)
        return sent + 1
