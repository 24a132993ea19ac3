"""What every framework adapter shares; imports no framework.

* **Versions**: :func:`check_version` compares an installed distribution with the range an
  adapter supports (``">=2.60,<3"``) and raises
  :class:`~llmspell.errors.UnsupportedFrameworkVersionError`; :func:`installed_version` is
  the one lookup (tests monkeypatch it). :func:`require` imports an optional framework or
  raises a :class:`~llmspell.errors.ConfigurationError` naming the extra.
* **Results**: :func:`dispatch` runs a point's hooks through ``system.dispatch`` and checks
  the outcome against what the framework's seam can honour (:func:`check_results`); a
  result it cannot honour raises :class:`~llmspell.errors.UnsupportedHookResultError`
  naming the framework, point, result and hook, its hint listing what the point honours.
  :class:`CheckedSystem` does the same for the dispatches of ``run_hooked``.
* **Data**: the shapes llmspell's own runtime gives hooks, so the built-in hooks read a
  framework's calls unchanged: :func:`message_dict`, :func:`request_data`,
  :func:`response_data`, :func:`usage_dict`, :func:`model_error_data` (model points,
  as :mod:`llmspell.runtime.models`), :func:`tool_data` (tool points, as the tool
  pipeline), :func:`json_value` (anything a framework hands over, made JSON-safe).
* **Events**: :class:`EventSink` publishes ``agent.*``/``model.*``/``tool.*`` events the way
  the runtime does (masking, the content setting, never failing the call it records);
  :func:`run_scope` opens an llmspell run (``system.runs.start``) around a framework run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any, Final

from llmspell.builtin.cost import list_price_usd
from llmspell.core.errors import (
    ConfigurationError,
    EventError,
    EventTooLargeError,
    InvalidValueError,
    NotJsonSafeError,
    UnsupportedFrameworkVersionError,
    UnsupportedHookResultError,
)
from llmspell.core.redact import get_logger
from llmspell.core.text import error_text
from llmspell.core.values import to_json_safe
from llmspell.events.event import EventMetadata
from llmspell.hooks.context import ComponentId, ComponentType, HookContext
from llmspell.hooks.executor import NO_HOOKS, ChainResult
from llmspell.runtime.content import mask_value, record_message
from llmspell.runtime.withheld import publish_withheld

__all__ = [
    "ALL_RESULTS",
    "PASSING",
    "CheckedSystem",
    "EventSink",
    "check_results",
    "check_version",
    "component",
    "dispatch",
    "honoured_text",
    "hooks_at",
    "installed_version",
    "json_value",
    "message_dict",
    "model_error_data",
    "price_usd",
    "request_data",
    "request_settings",
    "settings_changed",
    "require",
    "response_data",
    "run_scope",
    "tool_call_dict",
    "tool_data",
    "usage_dict",
    "version_in_range",
]

logger = get_logger("llmspell.integrations")

ALL_RESULTS: Final = frozenset({"continue", "modified", "cancel", "redirect", "replace",
                                "retry", "fork", "cache", "skipped"})
"""The nine result kinds."""
PASSING: Final = frozenset({"continue", "skipped"})
"""Results every seam honours: they change nothing."""


# -- optional frameworks and their versions -----------------------------------------------

def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`ConfigurationError` naming the extra to install
    (``what``: who needs it, e.g. ``"the pydantic-ai adapter"``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(f"{what} needs {module!r}, which is not installed ({exc})",
                                 hint=f"pip install 'llmspell[{extra}]'") from None


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (a pip name), or None when absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


_RELEASE = re.compile(r"\s*v?(\d+(?:\.\d+)*)")
_CLAUSE = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*([0-9][0-9.]*)\s*")


def _release(version: str) -> tuple[int, ...]:
    match = _RELEASE.match(version)
    if match is None:
        raise InvalidValueError(f"cannot read the version {version!r}",
                                hint="versions look like '2.68.0'")
    parts = tuple(int(p) for p in match.group(1).split("."))
    return parts


def _pad(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def _is_prerelease(version: str) -> bool:
    match = _RELEASE.match(version)
    return match is not None and bool(re.match(r"[.\-_]?(a|b|rc|alpha|beta|dev|pre)",
                                                version[match.end():].lower()))


def version_in_range(version: str, supported: str) -> bool:
    """True when ``version`` (``"2.68.0"``) satisfies every clause of ``supported``
    (``">=2.60,<3"``; operators ``>= <= > < == !=`` on release numbers). A pre-release of
    an upper bound (``3.0.0rc1`` for ``<3``) is outside it, as pip treats it."""
    have = _release(version)
    clauses = [c for c in supported.split(",") if c.strip()]
    if not clauses:
        raise InvalidValueError(f"empty version range {supported!r}", hint="e.g. '>=2.60,<3'")
    for clause in clauses:
        match = _CLAUSE.fullmatch(clause)
        if match is None:
            raise InvalidValueError(f"cannot read the version clause {clause.strip()!r}",
                                    hint="write clauses like '>=2.60' or '<3', comma-separated")
        op, bound_text = match.groups()
        mine, bound = _pad(have, _release(bound_text))
        pre = _is_prerelease(version)
        ok = {
            ">=": mine >= bound and not (pre and mine == bound),
            "<=": mine <= bound,
            ">": mine > bound,
            "<": mine < bound and not (pre and mine == bound),
            "==": mine == bound,
            "!=": mine != bound,
        }[op]
        if not ok:
            return False
    return True


def check_version(framework: str, distribution: str, supported: str) -> str:
    """The installed version of ``distribution``; raises
    :class:`UnsupportedFrameworkVersionError` when it is outside ``supported`` and
    :class:`ConfigurationError` when it is not installed (``framework``: the extra's
    name, e.g. ``"pydantic-ai"``)."""
    version = installed_version(distribution)
    if version is None:
        raise ConfigurationError(f"{distribution} is not installed",
                                 hint=f"pip install 'llmspell[{framework}]'")
    if not version_in_range(version, supported):
        raise UnsupportedFrameworkVersionError(distribution, version, supported)
    return version


# -- hooks and their results ---------------------------------------------------------------

def _hook_that_returned(outcome: ChainResult, kind: str) -> str | None:
    if outcome.result.kind == kind:
        return outcome.decided_by
    return next((r.hook for r in outcome.records if r.kind == kind), None)


_RESULT_NAMES: Final = {"continue": "Continue", "skipped": "Skipped", "modified": "Modified",
                        "cancel": "Cancel", "redirect": "Redirect", "replace": "Replace",
                        "retry": "Retry", "fork": "Fork", "cache": "Cache"}
_ORDER: Final = tuple(_RESULT_NAMES)


def honoured_text(framework: str, point: str, honoured: Iterable[str]) -> str:
    """What a refusal's hint says about ``point``: the results the seam does honour
    (``"at agent_error the langchain adapter honours Continue, Skipped, Cancel, ..."``)."""
    allowed = set(honoured) | PASSING
    names = ", ".join(_RESULT_NAMES[k] for k in _ORDER if k in allowed)
    return f"at {point} the {framework} adapter honours {names}"


def check_results(framework: str, point: str, outcome: ChainResult,
                  honoured: Iterable[str], *, hint: str | None = None,
                  hooks: Sequence[str] = ()) -> None:
    """Raise :class:`UnsupportedHookResultError` when ``outcome`` holds a result kind
    (its decisive result, a ``Fork`` or a ``Cache``) not in ``honoured``; ``Continue`` and
    ``Skipped`` always pass. The error names the framework, point, result and hook; its
    hint (``hint``, then the results the point honours) says what to return instead.
    ``hooks``: the names of the point's hooks, for a ``Fork`` or ``Cache`` beside the
    decisive result when the dispatch kept no record of who returned it (one hook: that
    one; several: the hint lists them)."""
    allowed = honoured if isinstance(honoured, frozenset | set) else frozenset(honoured)
    kind = outcome.result.kind
    refused = None
    if kind not in allowed and kind not in PASSING:
        refused = kind
    elif outcome.forks and "fork" not in allowed:
        refused = "fork"
    elif outcome.cache is not None and "cache" not in allowed:
        refused = "cache"
    if refused is None:
        return
    hook = _hook_that_returned(outcome, refused)
    if hook is None and len(hooks) == 1:
        hook = hooks[0]
    supported = honoured_text(framework, str(point), allowed)
    if hook is None and hooks:
        supported += f"; it came from one of the hooks {', '.join(map(repr, hooks))}"
    raise UnsupportedHookResultError(
        framework, str(point), refused, hook,
        hint=f"{hint}; {supported}" if hint else
        f"{supported} (docs/integrations.md has every point's results)")


def hooks_at(system: Any, point: str) -> tuple[str, ...]:
    """The names of the hooks registered at ``point`` (for :func:`check_results`)."""
    chain = system.registry.chains.get(point) or ()
    return tuple(str(getattr(entry, "name", entry)) for entry in chain)


class CheckedSystem:
    """A System as :func:`~llmspell.runtime.calls.run_hooked` sees it: every outcome is
    checked against what the framework's seam honours at that point (:func:`check_results`)
    before ``run_hooked`` acts on it, so a result the seam would drop raises instead.
    ``honoured``: point -> result kinds; a point not in it honours every result."""

    __slots__ = ("_framework", "_honoured", "_system", "registry")

    def __init__(self, system: Any, framework: str,
                 honoured: Mapping[str, frozenset[str]]) -> None:
        self._system = system
        self._framework = framework
        self._honoured = honoured
        self.registry = system.registry

    async def dispatch(self, point: str, component: ComponentId, data: dict[str, Any], *,
                       parent: HookContext | None = None, correlation_id: str | None = None,
                       ) -> tuple[ChainResult, HookContext | None]:
        """``system.dispatch``, with the outcome checked."""
        outcome, ctx = await self._system.dispatch(point, component, data, parent=parent,
                                                   correlation_id=correlation_id)
        allowed = self._honoured.get(point)
        if allowed is not None and (outcome.forks or outcome.cache is not None
                                    or outcome.result.kind not in PASSING):
            check_results(self._framework, point, outcome, allowed,
                          hooks=hooks_at(self._system, point))
        return outcome, ctx


async def dispatch(system: Any, framework: str, point: str, component: ComponentId,
                   data: dict[str, Any], *, honoured: Iterable[str],
                   parent: HookContext | None = None, correlation_id: str | None = None,
                   hint: str | None = None) -> tuple[ChainResult, HookContext | None]:
    """``system.dispatch`` with the outcome checked against ``honoured``
    (:func:`check_results`). A point with no hooks costs one dict lookup."""
    if point not in system.registry.chains:
        return NO_HOOKS, None
    outcome, ctx = await system.dispatch(point, component, data, parent=parent,
                                         correlation_id=correlation_id)
    if outcome.forks or outcome.cache is not None or outcome.result.kind not in PASSING:
        check_results(framework, point, outcome, honoured, hint=hint,
                      hooks=hooks_at(system, point))
    return outcome, ctx


_COMPONENTS: dict[tuple[ComponentType, str], ComponentId] = {}


def component(kind: ComponentType, name: str) -> ComponentId:
    """The component id for ``kind`` and ``name`` (its id is the name, as the runtime's),
    built once."""
    key = (kind, name)
    found = _COMPONENTS.get(key)
    if found is None:
        if len(_COMPONENTS) > 4096:
            _COMPONENTS.clear()
        found = _COMPONENTS[key] = ComponentId(type=kind, name=name, id=name)
    return found


# -- data in the runtime's shapes -----------------------------------------------------------

JSON_VALUE_DEPTH: Final = 32
"""How deep :func:`json_value` converts containers; below that a marker text stands in.
Half the nesting an event's data may have: the value goes inside hook data and events."""


def json_value(value: Any, _depth: int = 0) -> Any:
    """``value`` as a JSON-safe value: as is when it already is; a pydantic model's
    JSON dump, a dataclass's fields, a mapping or sequence converted item by item; else its
    ``str``. For what frameworks hand over (tool arguments and results, outputs), which a
    model may have nested arbitrarily deep: past :data:`JSON_VALUE_DEPTH` containers a
    marker (``"<list nested too deep>"``) stands in for the rest."""
    if _depth >= JSON_VALUE_DEPTH:
        return _too_deep(value)
    try:
        return to_json_safe(value)
    except NotJsonSafeError:
        pass
    except RecursionError:  # deeper than the converter follows
        return _too_deep(value)
    depth = _depth + 1
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return to_json_safe(dump(mode="json"))
        except Exception:  # a model whose dump fails: fall through to its text
            logger.debug("model_dump of %s failed", type(value).__name__, exc_info=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_value(getattr(value, f.name), depth)
                for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): json_value(v, depth) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_value(v, depth) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    try:
        return str(value)
    except RecursionError:  # an object whose text nests too deep to print
        return _too_deep(value)


def _too_deep(value: Any) -> str:
    return f"<{type(value).__name__} nested too deep>"


def tool_call_dict(call_id: str | None, name: str, arguments: Any) -> dict[str, Any]:
    """A tool call as the model points show it: ``{"id", "name", "arguments"}``."""
    return {"id": call_id or "", "name": name,
            "arguments": arguments if isinstance(arguments, dict) else
            {"_raw": json_value(arguments)} if arguments is not None else {}}


def message_dict(role: str, content: str | None, *,
                 tool_calls: Sequence[dict[str, Any]] = (), tool_call_id: str | None = None,
                 name: str | None = None) -> dict[str, Any]:
    """A message as the model points show it (``role`` system/user/assistant/tool)."""
    return {"role": role, "content": content, "tool_calls": list(tool_calls),
            "tool_call_id": tool_call_id, "name": name}


def request_data(messages: list[dict[str, Any]], tools: list[dict[str, Any]], *,
                 temperature: float | None = None, max_tokens: int | None = None,
                 stream: bool = False,
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model request as ``ctx.data["params"]`` holds it (runtime.models.request_dict),
    with ``settings`` when the request carries any: what else in it can change the
    answer (see :func:`request_settings`), which the caching built-in keys on."""
    data: dict[str, Any] = {"messages": messages, "tools": tools,
                            "temperature": temperature, "max_tokens": max_tokens,
                            "stream": stream}
    if settings:
        data["settings"] = settings
    return data


def request_settings(settings: Mapping[str, Any] | None, *, skip: Iterable[str] = (),
                     **extra: Any) -> dict[str, Any]:
    """A request's ``params.settings``: the framework's model ``settings`` but
    ``temperature``, ``max_tokens`` (fields of their own) and those in ``skip`` (what
    cannot change the answer and may change on every call: timeouts, retry policies,
    extra headers, request metadata), then ``extra`` (the output the request asks for:
    output tools or type, response format, tool choice); unset (None) values left out,
    JSON-safe (:func:`json_value`), keys sorted."""
    skipped = {"temperature", "max_tokens", *skip}
    found = {str(key): value for key, value in (settings or {}).items()
             if value is not None and str(key) not in skipped}
    found.update((key, value) for key, value in extra.items() if value is not None)
    safe = json_value(found)
    return {k: safe[k] for k in sorted(safe)} if isinstance(safe, dict) else {}


def settings_changed(label: str, instead: str) -> InvalidValueError:
    """The error for a hook that changed ``params.settings`` (``label``: where, as the
    adapter names the point; ``instead``: what to do in that framework). Every adapter
    refuses it: the settings are shown for reading and for the cache key, and applying them
    would bypass the framework's own settings."""
    return InvalidValueError(
        f"{label}: params.settings cannot be changed by a hook",
        hint=f"it shows the request's other settings (for reading and the cache key); "
             f"{instead}")


def usage_dict(input_tokens: int, output_tokens: int, *, total_tokens: int | None = None,
               cached_tokens: int = 0, reasoning_tokens: int = 0) -> dict[str, Any]:
    """Token usage as the model points and the cost hook read it."""
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens if total_tokens is None
            else total_tokens,
            "cached_tokens": cached_tokens, "reasoning_tokens": reasoning_tokens}


def price_usd(provider: str, model: str, usage: Mapping[str, Any] | None) -> float | None:
    """The list price of a call with ``usage`` (None: no usage, or an unpriced model)."""
    if not usage:
        return None
    return list_price_usd(provider, model, int(usage.get("input_tokens") or 0),
                          int(usage.get("output_tokens") or 0))


def response_data(message: dict[str, Any], *, finish_reason: str | None, model: str,
                  usage: dict[str, Any] | None, cost_usd: float | None,
                  latency_ms: float) -> dict[str, Any]:
    """A model response as ``ctx.data["result"]`` holds it (runtime.models.response_dict)."""
    return {"message": message, "finish_reason": finish_reason, "model": model,
            "usage": usage, "cost_usd": cost_usd, "latency_ms": latency_ms}


def model_error_data(exc: BaseException) -> dict[str, Any]:
    """What ``ModelCallError`` hooks see of a failure: ``error``, ``error_type``,
    ``status`` (an HTTP status the exception carries as ``status``/``status_code``),
    ``retryable`` (its own flag, else 408/429/5xx) and ``retry_after``."""
    status = getattr(exc, "status", None)
    if not isinstance(status, int):
        status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) and not isinstance(status, bool) else None
    retryable = getattr(exc, "retryable", None)
    if not isinstance(retryable, bool):
        retryable = status is not None and (status in (408, 429) or status >= 500)
    after = getattr(exc, "retry_after", None)
    return {"error": error_text(exc), "error_type": type(exc).__name__, "status": status,
            "retryable": retryable,
            "retry_after": float(after) if isinstance(after, int | float) else None}


def tool_data(name: str, params: dict[str, Any], *, attempt: int = 1,
              **extra: Any) -> dict[str, Any]:
    """A tool point's data as the tool pipeline fills it: ``tool``, ``params``,
    ``attempt`` and, per point, ``result`` / ``error`` + ``error_type`` / ``valid``."""
    return {"tool": name, "params": params, "attempt": attempt, **extra}


# -- events and runs --------------------------------------------------------------------------

class EventSink:
    """Publishes an adapter's events as the runtime does: masked per
    ``system.config.mask_event_data``, messages per ``record_content``, only when a
    store or a subscriber keeps them, and never failing the call being recorded (a full
    store is logged; an oversized event is published with its largest values withheld, as
    the runtime's are: :mod:`llmspell.runtime.withheld`). ``source`` goes in each event's metadata.
    Built with anything but a System, it raises :class:`InvalidValueError` (each adapter
    builds one when installed)."""

    __slots__ = ("bus", "content_mode", "mask_data", "source", "system")

    def __init__(self, system: Any, source: str) -> None:
        missing = [a for a in ("bus", "registry", "dispatch", "config")
                   if not hasattr(system, a)]
        if missing:
            raise InvalidValueError(
                f"an adapter needs an llmspell System, got {type(system).__name__} "
                f"(it has no {', '.join(missing)})",
                hint="pass the System: async with System(SystemConfig(...)) as system: "
                     "...(system)")
        self.system = system
        self.bus = system.bus
        self.source = source
        config = system.config
        self.mask_data = bool(getattr(config, "mask_event_data", True))
        self.content_mode = str(getattr(config, "record_content", "masked"))

    def kept(self, event_type: str) -> bool:
        """True when publishing ``event_type`` has an effect."""
        return self.system.store is not None or self.bus.has_subscribers(event_type)

    def mask(self, value: Any) -> Any:
        """``value`` as the runtime's ``tool.*`` events publish it: sensitive keys' values
        and credential-shaped text in every string masked
        (:func:`~llmspell.runtime.content.mask_value`: a copy, as the framework keeps the
        value itself), unless the system says not to."""
        return mask_value(value, copied=True) if self.mask_data else value

    def record(self, message: dict[str, Any]) -> dict[str, Any]:
        """What the content setting keeps of one message."""
        return record_message(message, self.content_mode)

    def publish(self, event_type: str, data: dict[str, Any],
                correlation_id: str | None = None) -> None:
        """Publish ``event_type`` (when kept); errors of the bus or store are logged."""
        if not self.kept(event_type):
            return
        metadata = EventMetadata(correlation_id=correlation_id, source=self.source)
        try:
            try:
                self.bus.publish(event_type, data, metadata)
            except (EventTooLargeError, NotJsonSafeError) as refused:
                # A huge tool result or answer, or one holding a lone surrogate.
                publish_withheld(self.bus, refused, event_type, data, metadata)
        except EventError as exc:
            logger.warning("the %s event was not recorded: %s", event_type, exc)

    def model_completed(self, provider: str, *, model: str, caller: dict[str, str] | None,
                        turn: int | None, request: dict[str, Any],
                        response: dict[str, Any], attempts: int = 1, cached: bool = False,
                        replaced: bool = False, redirected_to: str | None = None,
                        correlation_id: str | None = None) -> None:
        """``model.<provider>.completed`` with the runtime's data: of the request the
        messages since the model last spoke (and the count), the response as recorded."""
        event_type = f"model.{provider}.completed"
        if not self.kept(event_type):
            return
        messages = request.get("messages") or []
        start = len(messages)
        while start > 0 and messages[start - 1].get("role") != "assistant":
            start -= 1
        kept_request: dict[str, Any] = {
            "messages": [self.record(m) for m in messages[start:]],
            "total_messages": len(messages)}
        tools = [t.get("name") for t in request.get("tools") or [] if isinstance(t, dict)]
        if tools:
            kept_request["tools"] = tools
        for key in ("temperature", "max_tokens"):
            if request.get(key) is not None:
                kept_request[key] = request[key]
        message = response.get("message")
        self.publish(event_type, {
            "model": model, "caller": caller, "turn": turn,
            "answered_by": response.get("model"), "finish_reason": response.get("finish_reason"),
            "usage": response.get("usage"), "cost_usd": response.get("cost_usd"),
            "latency_ms": response.get("latency_ms"), "attempts": attempts, "cached": cached,
            "replaced": replaced, "redirected_to": redirected_to, "request": kept_request,
            "response": self.record(message) if isinstance(message, dict) else None,
        }, correlation_id)

    def failed(self, event_type: str, exc: BaseException, correlation_id: str | None = None,
               **extra: Any) -> None:
        """A ``*.failed`` event: ``error``, ``error_type`` and ``extra`` (of a ``tool.*``
        event masked as :meth:`mask` does, as the runtime's are: an error message may
        quote a token)."""
        data = {**extra, "error": error_text(exc), "error_type": type(exc).__name__}
        if event_type.startswith("tool."):
            data = self.mask(data)
        self.publish(event_type, data, correlation_id)


@contextlib.asynccontextmanager
async def run_scope(system: Any, kind: str, name: str,
                    input: Any = None) -> AsyncIterator[Any]:
    """An llmspell run around a framework run (``system.runs.start``): events published
    inside carry its run id, and a run opened inside it (a sub-agent) is its child. Yields
    the run (set ``run.output`` to record what it produced), or None on a system without
    runs."""
    runs = getattr(system, "runs", None)
    if runs is None:
        yield None
        return
    async with runs.start(kind=kind, name=name, input=input) as run:
        yield run
