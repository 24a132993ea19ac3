"""Script operations on the runtime: ``Tool``, ``Agent``, ``Workflow``, ``State``, ``Session``
(and ``Replay``, from :mod:`llmspell.scripting.replay_ops`).

Each operation takes and returns plain data. Running a tool, an agent or a workflow, and
every state and session operation, is asynchronous (the script waits for it); creating
agents and workflows and listing tools is synchronous.

Agents are created from ``{name, model = "provider/model", system_prompt, temperature,
max_tokens, tools, max_turns, max_tool_calls, max_tool_result_chars, replies}``
(``max_tool_result_chars = false``, or ``null`` in JavaScript: no limit). The provider
comes from ``providers(kind, model, spec)`` when the host was given that function and it
returns one; else ``scripted`` (or any model with ``replies``) plays back the ``replies``
list, and ``openai``/``anthropic`` are built from configuration (``LLMSPELL_BASE_URL`` and
the API key variables, see :mod:`llmspell.runtime.providers.config`). A model without a
provider prefix uses ``LLMSPELL_PROVIDER``. A ``base_url`` of the script's own needs
``--allow-net``, must be a public address and is sent no API key
(:mod:`llmspell.scripting.endpoints`).
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from llmspell.core.errors import (
    BusClosedError,
    ConfigurationError,
    InvalidValueError,
    SessionConflictError,
    SessionError,
    ToolValidationError,
    WorkflowError,
)
from llmspell.core.ids import new_id
from llmspell.core.redact import get_logger
from llmspell.runtime.agents.agent import DEFAULT_MAX_TOOL_CALLS, DEFAULT_MAX_TOOL_RESULT_CHARS
from llmspell.runtime.providers.base import Provider
from llmspell.runtime.providers.config import ProviderConfig, provider_from_config
from llmspell.runtime.providers.scripted import ScriptedProvider
from llmspell.runtime.sessions import Session
from llmspell.runtime.workflows import Workflow, WorkflowFailedError
from llmspell.scripting.endpoints import check_script_endpoint, configured_endpoint, same_endpoint
from llmspell.scripting.replay_ops import ReplayOps
from llmspell.scripting.workflow_spec import build_workflow, result_view

__all__ = ["DEFAULT_MAX_WORKFLOWS", "ProviderFactory", "RuntimeOps"]

DEFAULT_MAX_WORKFLOWS = 10_000
"""How many workflows one script host keeps at once (``Workflow.create`` past it fails)."""

ProviderFactory = Callable[[str, str, dict[str, Any]], Provider | None]
_AGENT_KEYS = frozenset({"name", "model", "system_prompt", "instructions", "temperature",
                         "max_tokens", "tools", "max_turns", "replies", "description",
                         "base_url", "timeout", "max_tool_calls", "max_tool_result_chars"})


class RuntimeOps:
    """The runtime operations for one script host on ``system``."""

    allow_loopback_endpoints = False
    """Let a script's own ``base_url`` be a loopback address (tests set it; the network
    tools' rule otherwise)."""

    def __init__(self, system: Any, language: str, *,
                 providers: ProviderFactory | None = None, allow_net: bool = False,
                 max_workflows: int = DEFAULT_MAX_WORKFLOWS) -> None:
        if not isinstance(max_workflows, int) or isinstance(max_workflows, bool) \
                or max_workflows < 1:
            raise InvalidValueError(f"max_workflows must be an int >= 1, got {max_workflows!r}",
                                    hint=f"the default is {DEFAULT_MAX_WORKFLOWS}")
        self.system = system
        self.language = language
        self.providers = providers
        self.allow_net = allow_net
        self.max_workflows = max_workflows
        """The most workflows kept at once: each is kept (with its initial state) until the
        host closes, as a script may run it again, so creating more fails instead."""
        self.workflows: dict[str, Workflow] = {}
        self.initial_state: dict[str, dict[str, Any]] = {}
        """The initial state of each workflow in ``workflows`` that declared one."""
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        """The session objects these scripts use, by id, least recently used first; past
        :data:`MAX_CACHED_SESSIONS` the oldest is dropped (a later reference loads the
        session again), so a long-lived host does not keep every session it ever started."""
        self.agents: list[tuple[Any, bool]] = []
        """The agents these scripts created, each with whether it owns its provider (built
        for it, not the host's factory's): the host forgets them when it closes."""
        self.replay = ReplayOps(system, language)
        """The ``Replay`` global's operations (the bindings give it the engine's
        capabilities: ``replay.caller``)."""

    def operations(self) -> dict[str, Callable[..., Any]]:
        """Operation name -> implementation."""
        return {
            "tool.invoke": self.tool_invoke, "tool.list": self.tool_list,
            "agent.create": self.agent_create, "agent.execute": self.agent_execute,
            "agent.list": self.agent_list,
            "workflow.create": self.workflow_create, "workflow.execute": self.workflow_execute,
            "state.get": self.state_get, "state.set": self.state_set,
            "state.delete": self.state_delete, "state.list": self.state_list,
            **{name: self._script_hints(name, fn) for name, fn in (
                ("session.start", self.session_start), ("session.save", self.session_save),
                ("session.checkpoint", self.session_checkpoint),
                ("session.restore", self.session_restore), ("session.end", self.session_end),
                ("session.get", self.session_get), ("session.list", self.session_list),
                ("session.delete", self.session_delete), ("session.purge", self.session_purge))},
            **self.replay.operations(),
        }

    def _script_hints(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (the operation ``name``) with the runtime's hints that name the Python API
        (``system.sessions``) given in the script's language instead, and a wrong number
        of arguments said in the script's terms (not Python's ``TypeError`` text)."""
        wait = "" if self.language == "lua" else "await "

        async def op(*args: Any) -> Any:
            try:
                call = fn(*args)  # an async function: only binding its arguments can fail
            except TypeError:
                raise InvalidValueError(
                    f"{name}: wrong number of arguments ({len(args)} given)",
                    hint="see docs/scripting.md for what each call takes") from None
            try:
                return await call
            except SessionError as exc:
                if not exc.hint or "system.sessions." not in exc.hint:
                    raise
                hint = exc.hint.replace("system.sessions.", wait + "Session.")
                raise SessionError(exc.message, hint=hint) from exc

        return op

    # -- Tool ---------------------------------------------------------------------------
    async def tool_invoke(self, name: Any, params: Any = None) -> Any:
        """Run tool ``name`` with one parameter table through the full pipeline."""
        if not isinstance(name, str):
            raise InvalidValueError("Tool.invoke(name, params) needs a tool name",
                                    hint='e.g. Tool.invoke("calculator", {expression = "1+2"})')
        if params == {} or params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidValueError("Tool.invoke: params must be a table of named parameters")
        try:
            return await self.system.tools.execute(name, params)
        except ToolValidationError as exc:  # the hint in the script's language, not Python's
            listing = "Tool.list()" if self.language == "lua" else "await Tool.list()"
            raise ToolValidationError(
                exc.tool, exc.message, exc.path,
                hint=f"{listing} gives each tool's parameters (a JSON Schema)") from exc

    def tool_list(self) -> list[dict[str, Any]]:
        """The registered tools: name, description, JSON Schema of the parameters."""
        return [msgspec.to_builtins(spec) for spec in self.system.tools.specs()]

    # -- Agent --------------------------------------------------------------------------
    def agent_create(self, spec: Any) -> dict[str, Any]:
        """Create and register an agent from a script's table; returns ``{name, model}``."""
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidValueError("Agent.create needs a table with a name",
                                    hint='Agent.create({name = "helper", model = "openai/gpt-4o"})')
        unknown = set(spec) - _AGENT_KEYS
        if unknown:
            raise InvalidValueError(f"Agent.create: unknown field(s) {sorted(unknown)}",
                                    hint="fields: " + ", ".join(sorted(_AGENT_KEYS)))
        tools = spec.get("tools")
        if tools is not None and tools != {} and not isinstance(tools, list):
            raise InvalidValueError(f"Agent.create: tools must be a list of tool names, got a "
                                    f"{type(tools).__name__}",
                                    hint='e.g. tools = {"calculator"}')
        temperature = spec.get("temperature")
        if temperature is not None and (isinstance(temperature, bool)
                                        or not isinstance(temperature, int | float)):
            raise InvalidValueError(f"Agent.create: temperature must be a number, got a "
                                    f"{type(temperature).__name__}",
                                    hint="e.g. temperature = 0.2, or leave it out")
        max_turns = _whole(spec, "max_turns", 8, unbounded=False)
        assert max_turns is not None
        shared = None if self.providers is None else self.providers(*_model_parts(spec), spec)
        provider = shared if shared is not None else self._provider(spec)
        agent = self.system.agents.create(
            spec["name"], provider=provider,
            instructions=str(spec.get("system_prompt", spec.get("instructions", "")) or ""),
            tools=None if tools is None or tools == {} else list(tools),
            max_turns=max_turns, temperature=temperature,
            max_tool_calls=_whole(spec, "max_tool_calls", DEFAULT_MAX_TOOL_CALLS,
                                  unbounded=False),
            max_tool_result_chars=_whole(spec, "max_tool_result_chars",
                                         DEFAULT_MAX_TOOL_RESULT_CHARS, unbounded=True))
        self.agents.append((agent, shared is None))
        return {"name": agent.name, "model": provider.model}

    def release_agents(self) -> None:
        """Forget the agents these scripts created, so a later script may create them again
        (a long-lived System running scripts would otherwise refuse the name and keep every
        agent); each is shut down, and its provider closed, on the running loop if any."""
        agents, self.agents = self.agents, []
        registry = self.system.agents
        released = [(agent, owned) for agent, owned in agents
                    if agent.name in registry and registry.get(agent.name) is agent]
        for agent, _ in released:
            registry.remove(agent.name)
        if not released:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to end them on: they are dropped as they are
        task = loop.create_task(_end_agents(released))
        _ENDING.add(task)
        task.add_done_callback(_ENDING.discard)

    def _provider(self, spec: dict[str, Any]) -> Provider:
        """A provider built for this agent alone (the host's ``providers`` factory gave
        none): the agent owns it, and it is closed with the agent."""
        kind, name = _model_parts(spec)
        replies = spec.get("replies")
        if replies is not None:
            if not isinstance(replies, list):
                raise ConfigurationError(
                    f"agent {spec['name']!r}: a scripted model needs a list of replies",
                    hint='replies = {"first answer", "second answer"}')
            return ScriptedProvider(replies, model=name or "scripted")
        kind = kind or os.environ.get("LLMSPELL_PROVIDER", "").strip().lower()
        if kind == "scripted":  # the host's replies (LLMSPELL_REPLIES / _FILE): offline
            try:
                return provider_from_config(ProviderConfig(kind="scripted",
                                                           model=name or "scripted"))
            except ConfigurationError as exc:
                raise ConfigurationError(
                    f"agent {spec['name']!r}: {exc.message}",
                    hint='give replies = {"first answer", ...} in Agent.create, or set '
                         "LLMSPELL_REPLIES / LLMSPELL_REPLIES_FILE") from None
        if not kind:
            raise ConfigurationError(
                f"agent {spec['name']!r}: no provider for model {spec.get('model')!r}",
                hint='write model = "openai/<model>" or "anthropic/<model>", set '
                     "LLMSPELL_PROVIDER, or give replies for a scripted model")
        timeout = spec.get("timeout", 60.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not 0 < timeout <= 600:
            raise InvalidValueError(f"agent {spec['name']!r}: timeout must be a number of "
                                    f"seconds in (0, 600], got {timeout!r}")
        configured = configured_endpoint(kind)
        own = spec.get("base_url")
        if own is not None and not isinstance(own, str):
            raise InvalidValueError(f"agent {spec['name']!r}: base_url must be a string")
        if own and not same_endpoint(own, configured):
            # The script chose where to connect: the network flag, the address checks, and
            # no credentials (keys are bound to the endpoint the host configured).
            check_script_endpoint(own, agent=spec["name"], allow_net=self.allow_net,
                                  allow_loopback=self.allow_loopback_endpoints)
            return provider_from_config(ProviderConfig(
                kind=kind, model=name or None, base_url=own,
                max_tokens=spec.get("max_tokens"), timeout=float(timeout)), environ={})
        return provider_from_config(ProviderConfig(
            kind=kind, model=name or None, base_url=configured or None,
            max_tokens=spec.get("max_tokens"), timeout=float(timeout)))

    async def agent_execute(self, name: Any, request: Any = None) -> dict[str, Any]:
        """Run agent ``name`` on ``request`` (a string or ``{text|prompt|input = ...}``)."""
        if isinstance(name, dict):
            name = name.get("name")
        agent = self.system.agents.get(str(name))
        text = request
        if isinstance(request, dict):
            text = request.get("text", request.get("prompt", request.get("input")))
        if not isinstance(text, str):
            raise InvalidValueError("agent:execute needs text",
                                    hint='agent:execute({text = "What is 2+2?"})')
        response = await agent.run(text)
        data = msgspec.to_builtins(response)
        assert isinstance(data, dict)
        output = data.get("output")
        data.update(success=True, text=output if isinstance(output, str) else None,
                    content=output, usage=data.get("token_usage"))
        return data

    def agent_list(self) -> list[str]:
        """Registered agent names."""
        return list(self.system.agents.names())

    # -- Workflow -----------------------------------------------------------------------
    def workflow_create(self, kind: Any, spec: Any) -> dict[str, Any]:
        """Build a workflow of pattern ``kind`` from a table; returns ``{id, name, kind}``.
        Raises :class:`WorkflowError` when the host already keeps ``max_workflows``."""
        if len(self.workflows) >= self.max_workflows:
            name = spec.get("name") if isinstance(spec, dict) else None
            raise WorkflowError(
                str(name or kind),
                f"this script host already keeps {len(self.workflows)} workflows (its "
                f"max_workflows); each is kept until the script ends, as it may run again",
                hint="create a workflow once and execute it as often as needed, instead of "
                     "creating one per run")
        workflow = build_workflow(str(kind), spec, self.workflows)
        wf_id = new_id()
        self.workflows[wf_id] = workflow
        initial = spec.get("state") if isinstance(spec, dict) else None
        if isinstance(initial, dict) and initial:
            self.initial_state[wf_id] = initial
        return {"id": wf_id, "name": workflow.name, "kind": workflow.kind}

    def release_workflows(self) -> None:
        """Forget the workflows these scripts created and their initial states (the host
        closes: nothing can run them any more)."""
        self.workflows.clear()
        self.initial_state.clear()

    async def workflow_execute(self, wf_id: Any, input: Any = None) -> dict[str, Any]:
        """Run a created workflow; ``{success, status, output, outputs, state, error}``
        (a failed step is reported, not raised; a hook's Cancel raises)."""
        if isinstance(wf_id, dict):
            wf_id = wf_id.get("id")
        workflow = self.workflows.get(wf_id) if isinstance(wf_id, str) else None
        if workflow is None:
            raise InvalidValueError(f"no workflow {wf_id!r} created by this script host",
                                    hint="create it with Workflow.sequential({...}) first")
        try:
            result = await workflow.run(self.system, input,
                                        state=dict(self.initial_state.get(wf_id, {})))
        except WorkflowFailedError as exc:
            view = result_view(exc.result)
            view["error"] = str(exc)
            return view
        return result_view(result)

    # -- State --------------------------------------------------------------------------
    @staticmethod
    def _scope(options: Any) -> dict[str, Any]:
        if options is None or options == {}:
            return {}
        if isinstance(options, str):
            return {"scope": options}
        if not isinstance(options, dict):
            raise InvalidValueError("State options are a table {scope = ..., scope_id = ...}")
        return {k: options[k] for k in ("scope", "scope_id") if k in options}

    async def state_get(self, key: Any, options: Any = None) -> Any:
        """The value of ``key`` (nil when absent)."""
        default = options.get("default") if isinstance(options, dict) else None
        return await self.system.state.get(_key(key), default=default, **self._scope(options))

    async def state_set(self, key: Any, value: Any, options: Any = None) -> int:
        """Write ``value``; returns the new version (``expected_version`` makes it
        conditional)."""
        extra = self._scope(options)
        if isinstance(options, dict) and options.get("expected_version") is not None:
            extra["expected_version"] = int(options["expected_version"])
        entry = await self.system.state.set(_key(key), value, **extra)
        return int(entry.version)

    async def state_delete(self, key: Any, options: Any = None) -> bool:
        """Delete ``key``; True if it was there."""
        return bool(await self.system.state.delete(_key(key), **self._scope(options)))

    async def state_list(self, options: Any = None) -> list[str]:
        """The keys of a scope (``prefix`` filters)."""
        scope = self._scope(options)
        prefix = options.get("prefix", "") if isinstance(options, dict) else ""
        return list(await self.system.state.keys(scope.get("scope", "global"),
                                                 scope.get("scope_id", ""), str(prefix)))

    # -- Session ------------------------------------------------------------------------
    @staticmethod
    def _session_id(ref: Any) -> str:
        session_id = ref.get("id") if isinstance(ref, dict) else ref
        if not isinstance(session_id, str):
            raise SessionError(f"not a session: {ref!r}",
                               hint="pass the value Session.start returned (or its id)")
        return session_id

    async def _session(self, ref: Any) -> Session:
        session_id = self._session_id(ref)
        session = self.sessions.get(session_id)
        if session is None:
            session = await self.system.sessions.load(session_id)
        self._keep(session)
        return session

    def _keep(self, session: Session) -> None:
        """Cache ``session`` as the most recently used, dropping the oldest past the bound."""
        sessions = self.sessions
        sessions[session.id] = session
        sessions.move_to_end(session.id)
        while len(sessions) > MAX_CACHED_SESSIONS:
            sessions.popitem(last=False)

    async def session_start(self, options: Any = None) -> dict[str, Any]:
        """Start a session (``{name, metadata}``); returns its record."""
        opts = options if isinstance(options, dict) else {"name": options} if options else {}
        session: Session = await self.system.sessions.start(opts.get("name"),
                                                            opts.get("metadata"))
        self._keep(session)
        return session.to_dict()

    async def session_save(self, ref: Any) -> dict[str, Any]:
        """Persist the session record; returns it."""
        session = await self._session(ref)
        try:
            await session.save()
        except SessionConflictError:
            self._forget_stale(session)
            raise
        return session.to_dict()

    def _forget_stale(self, session: Session) -> None:
        """Drop the cached object of a session saved elsewhere since it was read: the
        script's next call on the session reads it afresh (else every call would refuse)."""
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

    async def session_checkpoint(self, ref: Any, label: Any = None) -> str:
        """Checkpoint the session's state; returns the label."""
        session = await self._session(ref)
        return await session.checkpoint(_label(label, "Session.checkpoint"))

    async def session_restore(self, ref: Any, label: Any = None) -> dict[str, Any]:
        """Restore the session's state from a checkpoint; returns the restored values."""
        session = await self._session(ref)
        values: dict[str, Any] = await session.restore(_label(label, "Session.restore"))
        return values

    async def session_end(self, ref: Any) -> dict[str, Any]:
        """End the session; returns its final record."""
        session = await self._session(ref)
        try:
            await session.end()
        except SessionConflictError:
            self._forget_stale(session)
            raise
        # Persisted as ended: a later reference loads it again, and a long-lived host does
        # not keep every session it ever ran.
        self.sessions.pop(session.id, None)
        return session.to_dict()

    async def session_get(self, ref: Any, key: Any = None) -> Any:
        """The session's record, or with ``key`` a value of its state."""
        session = await self._session(ref)
        if key is None:
            return session.to_dict()
        return await session.get(_key(key))

    async def session_list(self, options: Any = None) -> list[dict[str, Any]]:
        """Saved sessions (``{status = "active"}`` filters)."""
        status = options.get("status") if isinstance(options, dict) else None
        return [s.to_dict() for s in await self.system.sessions.list(status=status)]

    async def session_delete(self, ref: Any, options: Any = None) -> None:
        """Delete the session and everything kept under it (``{force = true}`` deletes an
        active one)."""
        session_id = self._session_id(ref)
        example = self._example("Session.delete(s, {force = true})",
                                "await Session.delete(s, {force: true})")
        if options is not None and not isinstance(options, dict):
            raise InvalidValueError(f"Session.delete options must be a table, got {options!r}",
                                    hint=example)
        force = (options or {}).get("force", False)
        if not isinstance(force, bool):
            raise InvalidValueError(f"Session.delete: force must be true or false, got "
                                    f"{force!r}", hint=example)
        try:
            await self.system.sessions.delete(self.sessions.get(session_id, session_id),
                                              force=force)
        except SessionError as exc:
            if "still active" not in exc.message:
                self.sessions.pop(session_id, None)  # gone: forget a stale handle
                raise
            hint = self._example('Session["end"](s) first, or ' + example,
                                 "await Session.end(s) first, or " + example)
            raise SessionError(exc.message, hint=hint) from exc
        self.sessions.pop(session_id, None)

    async def session_purge(self, options: Any = None) -> int:
        """Delete every ended session that ended ``older_than`` seconds ago or earlier
        (``{older_than = 86400}``, or the number alone); returns how many."""
        older_than = options.get("older_than") if isinstance(options, dict) else options
        example = self._example("Session.purge({older_than = 86400})",
                                "await Session.purge({older_than: 86400})")
        if isinstance(older_than, bool) or not isinstance(older_than, int | float):
            raise InvalidValueError(
                f"Session.purge needs older_than, a number of seconds, got {older_than!r}",
                hint=f"{example} deletes the sessions that ended a day ago or earlier")
        try:
            removed: int = await self.system.sessions.purge(older_than)
        except SessionError as exc:
            raise SessionError(exc.message, hint=example) from exc
        for session_id, session in list(self.sessions.items()):
            if not session.active:  # maybe purged: the next reference loads it again
                del self.sessions[session_id]
        return removed

    def _example(self, lua: str, js: str) -> str:
        """``lua`` or ``js``: an example call in the script's language."""
        return lua if self.language == "lua" else js


def _key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidValueError(f"a state key is a non-empty string, got {key!r}",
                                hint='e.g. State.set("counter", 1)')
    return key


MAX_CACHED_SESSIONS = 1024
"""The most session objects a script host keeps between calls (see ``RuntimeOps.sessions``)."""


def _label(label: Any, where: str) -> str | None:
    """A checkpoint label from a script: text, or a number as its text (as before); a
    boolean or a table is refused rather than made ``"True"`` or a dict's repr."""
    if label is None or isinstance(label, str):
        return label
    if isinstance(label, int | float) and not isinstance(label, bool):
        return str(label)
    raise InvalidValueError(f"{where}: a checkpoint label is text, got a "
                            f"{type(label).__name__}",
                            hint='e.g. Session.checkpoint(session, "before-refund")')


_ENDING: set[asyncio.Task[None]] = set()
"""Shutdowns of released agents still running (held so they are not collected mid-way)."""


def _whole(spec: dict[str, Any], key: str, default: int, *, unbounded: bool) -> int | None:
    """``spec[key]`` as a whole number >= 1 (``default`` when absent; a Lua float such as
    ``1e5`` counts when it is whole); with ``unbounded``, ``false`` or ``null`` is None (no
    limit)."""
    if key not in spec:
        return default
    value = spec[key]
    if unbounded and (value is None or value is False):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        no_limit = " (or false/null for no limit)" if unbounded else ""
        raise InvalidValueError(
            f"Agent.create: {key} must be a whole number >= 1{no_limit}, got {value!r}",
            hint=f"leave it out for the default, {default}")
    return value


def _model_parts(spec: dict[str, Any]) -> tuple[str, str]:
    """``(kind, name)`` of an agent spec's ``model`` ("openai/gpt-4o": kind and name)."""
    model = str(spec.get("model") or "")
    kind, _, name = model.partition("/") if "/" in model else ("", "", model)
    return kind, name


async def _end_agents(agents: list[tuple[Any, bool]]) -> None:
    for agent, owned in agents:
        try:
            await agent.shutdown()
        except BusClosedError:
            pass  # the System closed first: nothing is left to tell
        except Exception as exc:  # a hook refusing the shutdown: the agent is gone anyway
            get_logger("llmspell.scripting").warning(
                "agent %r did not shut down cleanly: %s", agent.name, exc)
        close = getattr(agent.provider, "aclose", None) if owned else None
        if close is not None:
            try:
                await close()
            except Exception as exc:
                get_logger("llmspell.scripting").warning(
                    "the provider of agent %r did not close cleanly: %s", agent.name, exc)
