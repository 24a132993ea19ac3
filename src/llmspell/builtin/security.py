"""``SecurityHook``: rules, a parameter size limit and a masked, append-only audit log.

The hook watches tool validation and the before/after points of tools, agents and model
calls. On every call it

1. refuses parameters whose JSON encoding is longer than ``max_param_bytes`` (at the
   "inbound" points: ``tool_validation``, ``before_tool_execution``,
   ``before_agent_execution``);
2. evaluates every :class:`SecurityRule` whose ``points`` cover the current point, in
   order. A rule's ``condition`` is a Python callable ``(ctx) -> bool`` or a declarative
   :class:`Match` (also written as a dict, ``{"path": "params.command", "matches": "rm "}``).
   A rule that matches does what its ``action`` says:

   * ``log``: records an audit entry;
   * ``alert``: records an audit entry and publishes ``security.alert``;
   * ``block``: records an audit entry, publishes ``security.violation``, calls the
     ``violation_sink`` (for example ``System.report`` of the ``SecurityViolation`` point)
     and returns ``Cancel("security rule '<name>': ...")``. Later rules are not evaluated;
   * ``mask``: replaces every match of the condition's ``matches`` pattern in the values at
     its ``path`` with the rule's ``replacement`` and returns ``Modified`` with the new
     data (at a before point the operation gets the masked parameters; at an after point
     the caller gets the masked result), records an audit entry of the *masked* data, and
     goes on with the next rule, which sees the masked data.

   A path segment ``*`` stands for every element of a list (or value of a dict):
   ``params.messages.*.content`` is the text of every message of a model call, and a rule
   on it matches when any of them does. :func:`redact_rule` builds the usual one
   (:data:`EMAIL_PATTERN`, :data:`API_KEY_PATTERN`): redact what a prompt must not carry
   before it leaves for the provider.

A declarative test sees text in every spelling an attacker might use: as written, and
normalised (invisible characters removed, NFKC); a deny test also sees it percent-decoded,
and every string a container holds at any depth (keys and JSON documents inside strings
too). An allow test (``negate``) must hold for the written and the normalised spelling. A
mask that cannot replace every match it found blocks the call instead. Data nested deeper
than :data:`SCAN_MAX_DEPTH` levels cannot be scanned, so a rule that needs to look inside it
blocks the call.

The hook is ``fail_closed``: a rule whose callable raises makes the hook fail with
:class:`SecurityRuleError`, and the executor turns that into ``Cancel``.

Every audit entry (timestamp, point, component, correlation id, rule, severity, action,
message and the *masked* data) goes to a bounded in-memory log (query it with
:meth:`SecurityHook.audit`) and, when the hook has a bus, is published as a
``security.audit`` event (a bus with a store persists it). Secrets — values of keys such
as ``api_key``, ``password``, ``token`` — are masked in everything the hook logs, publishes
or passes to the sink.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import re
import unicodedata
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote

import msgspec

from llmspell.builtin.base import (
    MODEL_AFTER,
    MODEL_BEFORE,
    OPERATION_AFTER,
    OPERATION_BEFORE,
    BuiltinHook,
)
from llmspell.builtin.masking import DEFAULT_SENSITIVE_KEYS, Masker, truncate
from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import HookExecutionError, InvalidValueError
from llmspell.core.redact import get_logger
from llmspell.core.values import MAX_DEPTH
from llmspell.events.bus import EventBus
from llmspell.events.event import EventMetadata
from llmspell.hooks.context import HookContext
from llmspell.hooks.hook import HookOutput
from llmspell.hooks.metadata import ErrorPolicy
from llmspell.hooks.points import HookPoint, parse_point
from llmspell.hooks.result import Cancel, Modified

__all__ = [
    "AUDIT_EVENT",
    "ALERT_EVENT",
    "API_KEY_PATTERN",
    "DEFAULT_MAX_PARAM_BYTES",
    "EMAIL_PATTERN",
    "MESSAGE_CONTENT",
    "REPLY_CONTENT",
    "SCAN_MAX_DEPTH",
    "SECURITY_PRIORITY",
    "SIZE_RULE",
    "VIOLATION_EVENT",
    "AuditEntry",
    "Match",
    "RuleCondition",
    "SecurityConfig",
    "SecurityHook",
    "SecurityRule",
    "SecurityRuleError",
    "SecurityStats",
    "redact_rule",
]

logger = get_logger("llmspell.builtin.security")

SECURITY_PRIORITY = -1000
"""Default priority of :class:`SecurityHook`: very early, before anything acts on the data."""

DEFAULT_MAX_PARAM_BYTES = 1024 * 1024
"""Default limit on the JSON size of an operation's parameters (1 MiB)."""

SIZE_RULE = "max_param_bytes"
"""The rule name audit entries and stats use for the parameter size limit."""

AUDIT_EVENT = "security.audit"
ALERT_EVENT = "security.alert"
VIOLATION_EVENT = "security.violation"

MESSAGE_CONTENT = "params.messages.*.content"
"""The path of every message's text in a model call's request (``BeforeModelCall``)."""
REPLY_CONTENT = "result.message.content"
"""The path of the reply's text in a model call's response (``AfterModelCall``)."""
EMAIL_PATTERN = r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9.\-]{1,255}\.[A-Za-z]{2,63}"
"""An e-mail address (a local part of at most 64 characters, a domain of at most 255: the
limits of RFC 5321). The bounds keep a search linear in the text's length: unbounded, a long
run of letters without an address made Python's ``re`` try every start and scan the whole
run from each (quadratic: minutes for a 1 MB prompt or reply)."""
API_KEY_PATTERN = (
    r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|xox[baprs]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{35})"
)
"""Common API key shapes: OpenAI/Anthropic (``sk-...``), AWS access key ids (``AKIA...``),
GitHub tokens (``ghp_...``), Slack tokens (``xoxb-...``), Google API keys (``AIza...``).
Not exhaustive: add your own patterns for other secrets."""

Severity: TypeAlias = Literal["low", "medium", "high", "critical"]
Action: TypeAlias = Literal["log", "block", "alert", "mask"]
_SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
_ACTIONS: tuple[str, ...] = ("log", "block", "alert", "mask")
_RANK = {s: i for i, s in enumerate(_SEVERITIES)}
_LOG_LEVEL = {"log": logging.INFO, "alert": logging.WARNING, "block": logging.WARNING,
              "error": logging.ERROR, "allow": logging.DEBUG, "mask": logging.INFO}
_INBOUND = frozenset(str(p) for p in (HookPoint.TOOL_VALIDATION, *OPERATION_BEFORE))
_GLOB = frozenset("*?[")
_MISSING: Any = object()
_ENCODE = msgspec.json.encode


SCAN_MAX_DEPTH = MAX_DEPTH
"""How deep (in containers, counting JSON held in a string as one more level) the hook
scans data. Data nested deeper cannot be shown clean, so a rule that has to look inside it
blocks the call (fail-closed) instead of letting it through unscanned."""

_INVISIBLE = re.compile(
    "[\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160"
    "\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164"
    "\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
    "\U000e0100-\U000e01ef]"
)
"""Characters that show nothing: format characters (zero-width space and joiners, soft
hyphen, bidi embeddings, overrides and isolates, the BOM, tag characters), variation
selectors and fillers. They are removed from the normalised form a rule also sees."""


def _normalize(text: str) -> str:
    """``text`` as a reader (or a model) takes it: invisible characters removed, then NFKC
    (full-width and compatibility forms folded: full-width ``rm`` is ``rm``, U+FF20 is ``@``)."""
    if text.isascii():
        return text
    text = _INVISIBLE.sub("", text)
    if not unicodedata.is_normalized("NFKC", text):
        text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
    return text


def _variants(text: str, wide: bool) -> Iterator[str]:
    """The spellings of ``text`` a rule is tested on: itself, its normalised form and, when
    ``wide``, the normalised form percent-decoded (``%2e%2e%2f`` is ``../``)."""
    yield text
    norm = _normalize(text)
    if norm != text:
        yield norm
    if wide and "%" in norm:
        decoded = unquote(norm)
        if decoded != norm:
            yield decoded


_CONTEXT = re.compile(r"[\^$]|\\[AZbBG]|\(\?(?:[=!]|<[=!])")
"""What makes a pattern's match depend on the text around it (anchors, word boundaries,
lookarounds; conservatively any ``^``, a negated class's included)."""


def _plain(text: str) -> bool:
    """True when ``text`` has one spelling (ASCII, nothing percent-encoded) and holds no
    JSON document: a rule tests it as it is."""
    return text.isascii() and "%" not in text and text.lstrip()[:1] not in ("{", "[", '"')


def _plain_strings(value: Any, depth: int) -> Iterator[str]:
    """Every string and dict key in ``value`` (JSON whose text escapes nothing: no string
    holds a JSON document with strings of its own). Past :data:`SCAN_MAX_DEPTH` levels
    raises ``_ScanLimitError``."""
    if depth >= SCAN_MAX_DEPTH:
        raise _ScanLimitError(f"data nested deeper than {SCAN_MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield key
            if isinstance(item, str):
                yield item
            elif isinstance(item, (list, dict)):
                yield from _plain_strings(item, depth + 1)
    else:
        for item in value:
            if isinstance(item, str):
                yield item
            elif isinstance(item, (list, dict)):
                yield from _plain_strings(item, depth + 1)


class _ScanLimitError(Exception):
    """Data a rule cannot scan in full (too deep) or a mask cannot rewrite: fail closed."""


def _embedded_json(text: str, depth: int) -> Any:
    """The container (or string) a JSON document in ``text`` holds, or ``_MISSING``."""
    head = text.lstrip()[:1]
    if head not in ("{", "[", '"'):
        return _MISSING
    try:
        value = msgspec.json.decode(text)
    except RecursionError:
        raise _ScanLimitError(f"data nested deeper than {SCAN_MAX_DEPTH} levels") from None
    except (msgspec.DecodeError, UnicodeError, ValueError):
        return _MISSING
    return value if isinstance(value, (str, list, dict)) else _MISSING


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    """Every string in ``value`` at any depth: strings, dict keys, and the strings of a JSON
    document held in a string. Past :data:`SCAN_MAX_DEPTH` levels raises ``_ScanLimitError``."""
    if isinstance(value, str):
        yield value
        inner = _embedded_json(value, depth)
        if inner is not _MISSING:
            yield from _strings(inner, depth + 1)
        return
    if not isinstance(value, (list, dict)):
        return
    if depth >= SCAN_MAX_DEPTH:
        raise _ScanLimitError(f"data nested deeper than {SCAN_MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield from _strings(key, depth + 1)
            yield from _strings(item, depth + 1)
    else:
        for item in value:
            yield from _strings(item, depth + 1)


class SecurityRuleError(HookExecutionError):
    """A rule's condition raised. The hook is fail-closed, so the operation is cancelled.

    The message names the rule and the error type only (an error message may quote the
    data, and the data may hold secrets); the original error is ``__cause__``.
    """


# -- conditions ----------------------------------------------------------------------------
class Match(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A declarative rule condition: every test given must hold (``negate`` inverts).

    ``path``: dotted path of the value to test, into ``ctx.data`` (``"params.command"``,
    ``"params.items.0"``) or, when it starts with ``metadata.``, into ``ctx.metadata``. A
    ``*`` segment is every element of a list or value of a dict
    (``"params.messages.*.content"``); the tests then hold when they hold for any value.
    ``matches``: a regular expression searched in the value (in its JSON text when it is
    not a string). ``contains``: a substring of a string value, an element of a list, a key
    of a dict. ``equals``: equality. ``exists``: whether the path resolves at all.
    ``component``: a glob on ``"<type>:<name>"`` (``"tool:http_*"``), or on the name alone
    when it has no ``:``. ``ignore_case`` applies to ``matches``, ``contains`` (strings)
    and ``component``. ``matches`` and ``contains`` on text also test its normalised
    spelling (see the module's docstring).
    """

    path: str | None = None
    matches: str | None = None
    contains: Any = msgspec.UNSET
    equals: Any = msgspec.UNSET
    exists: bool | None = None
    component: str | None = None
    ignore_case: bool = False
    negate: bool = False

    def __post_init__(self) -> None:
        value_tests = (self.matches is not None or self.contains is not msgspec.UNSET
                       or self.equals is not msgspec.UNSET or self.exists is not None)
        if not value_tests and self.component is None:
            raise InvalidValueError(
                "a Match needs at least one test",
                hint="give matches=, contains=, equals= or exists= with a path, "
                     "or component=",
            )
        if value_tests and not self.path:
            raise InvalidValueError(
                "Match.path is required with matches=, contains=, equals= or exists=",
                hint="for example path='params.command'",
            )
        if self.matches is not None:
            try:
                re.compile(self.matches)
            except re.error as exc:
                raise InvalidValueError(
                    f"Match.matches is not a valid regular expression: {exc}",
                    hint="write a Python `re` pattern, e.g. r'rm\\s+-rf'",
                ) from None


RuleCondition: TypeAlias = Callable[[HookContext], bool] | Match | dict[str, Any]
"""A rule's condition: a callable ``(ctx) -> bool``, a :class:`Match`, or a Match as a dict."""


def _as_match(value: dict[str, Any], rule: str) -> Match:
    try:
        return msgspec.convert(value, Match)
    except (msgspec.ValidationError, InvalidValueError) as exc:
        fields = ", ".join(Match.__struct_fields__)
        raise InvalidValueError(
            f"rule {rule!r}: bad condition {value!r}: {exc}",
            hint=f"a declarative condition takes: {fields}",
        ) from None


class SecurityRule(msgspec.Struct, frozen=True, kw_only=True):
    """One rule: where it applies, when it matches, how bad that is, what to do.

    ``points``: point names in any form (``"BeforeToolExecution"``,
    ``"before_tool_execution"``) or globs (``"before_*"``, ``"*tool*"``, matched without
    case against the snake_case and PascalCase names); empty means every point the hook is
    installed at. ``condition``: see :data:`RuleCondition`. ``severity``: ``low``,
    ``medium``, ``high`` or ``critical``. ``action``: ``log``, ``alert``, ``block`` or
    ``mask`` (needs a :class:`Match` with ``path`` and ``matches``; every match is replaced
    with ``replacement``). ``description``: goes into the audit entry and the ``Cancel``
    reason.
    """

    name: str
    condition: RuleCondition
    points: tuple[str, ...] = ()
    severity: Severity = "medium"
    action: Action = "log"
    description: str = ""
    replacement: str = "[REDACTED]"

    def __post_init__(self) -> None:
        force = msgspec.structs.force_setattr
        if not isinstance(self.name, str) or not self.name:
            raise InvalidValueError("SecurityRule.name must be a non-empty string",
                                    hint="name the rule after what it prevents")
        if self.severity not in _SEVERITIES:
            raise InvalidValueError(
                f"rule {self.name!r}: unknown severity {self.severity!r}",
                hint=f"use one of: {', '.join(_SEVERITIES)}",
            )
        if self.action not in _ACTIONS:
            raise InvalidValueError(
                f"rule {self.name!r}: unknown action {self.action!r}",
                hint=f"use one of: {', '.join(_ACTIONS)}",
            )
        if isinstance(self.points, str):
            raise InvalidValueError(
                f"rule {self.name!r}: points must be a collection, not one string",
                hint=f"write points=({self.points!r},)",
            )
        points = tuple(self.points)
        for p in points:
            if not isinstance(p, str) or not p:
                raise InvalidValueError(f"rule {self.name!r}: points must be non-empty strings")
            if not _GLOB.intersection(p):
                parse_point(p)  # an unknown name raises, suggesting close ones
        force(self, "points", points)
        condition = self.condition
        if isinstance(condition, dict):
            force(self, "condition", _as_match(condition, self.name))
        elif isinstance(condition, Match):
            pass
        elif callable(condition):
            if inspect.iscoroutinefunction(condition) or inspect.iscoroutinefunction(
                getattr(condition, "__call__", None)  # noqa: B004
            ):
                raise InvalidValueError(
                    f"rule {self.name!r}: the condition must be a plain function",
                    hint="rules run on every call; make the condition synchronous",
                )
        else:
            raise InvalidValueError(
                f"rule {self.name!r}: condition must be a callable, a Match or a dict, "
                f"not {type(condition).__name__}",
                hint="e.g. {'path': 'params.command', 'matches': 'rm -rf'}",
            )
        if self.action == "mask":
            match = self.condition
            if not isinstance(match, Match) or not match.path or match.matches is None \
                    or match.negate or match.path.startswith("metadata."):
                raise InvalidValueError(
                    f"rule {self.name!r}: a 'mask' rule needs a Match with a data path and "
                    "a 'matches' pattern (what to replace), without negate",
                    hint=f"e.g. {{'path': {MESSAGE_CONTENT!r}, 'matches': EMAIL_PATTERN}}",
                )
        if not isinstance(self.replacement, str):
            raise InvalidValueError(f"rule {self.name!r}: replacement must be a string")
        if self.action == "mask" and isinstance(self.condition, Match):
            pattern = re.compile(self.condition.matches or "",
                                 re.IGNORECASE if self.condition.ignore_case else 0)
            if pattern.search(self.replacement) is not None:
                raise InvalidValueError(
                    f"rule {self.name!r}: the replacement {self.replacement!r} matches the "
                    "rule's own pattern, so masked data would still match",
                    hint="choose a replacement the pattern does not match, e.g. '***'",
                )

    def applies_to(self, point: str) -> bool:
        """True when this rule covers ``point``."""
        if not self.points:
            return True
        parsed = parse_point(point)
        value = str.__str__(parsed)
        pascal = parsed.pascal_name.lower()
        for p in self.points:
            if _GLOB.intersection(p):
                pat = p.lower()
                if fnmatch.fnmatchcase(value, pat) or fnmatch.fnmatchcase(pascal, pat):
                    return True
            elif str.__str__(parse_point(p)) == value:
                return True
        return False


class SecurityConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of :class:`SecurityHook`.

    ``sensitive_keys``: key fragments whose values are masked. ``max_param_bytes``: limit
    on the JSON size of the parameters (None: no limit). ``rules``: the
    :class:`SecurityRule` list (dicts are accepted and converted). ``audit_size``: entries
    kept in memory (the oldest are dropped; the bus keeps them all). ``audit_max_chars``:
    long strings in audited data are cut to about this many characters. ``audit_every_call``:
    also record an ``allow`` entry for calls no rule stopped.
    """

    sensitive_keys: tuple[str, ...] = DEFAULT_SENSITIVE_KEYS
    max_param_bytes: int | None = DEFAULT_MAX_PARAM_BYTES
    rules: tuple[SecurityRule, ...] = ()
    audit_size: int = 10_000
    audit_max_chars: int = 1000
    audit_every_call: bool = False

    def __post_init__(self) -> None:
        force = msgspec.structs.force_setattr
        if isinstance(self.sensitive_keys, str):
            raise InvalidValueError(
                "SecurityConfig.sensitive_keys must be a collection of key fragments, "
                "not one string", hint=f"write sensitive_keys=({self.sensitive_keys!r},)",
            )
        keys = tuple(self.sensitive_keys)
        if not all(isinstance(k, str) and k for k in keys):
            raise InvalidValueError("SecurityConfig.sensitive_keys must be non-empty strings")
        force(self, "sensitive_keys", keys)
        if self.max_param_bytes is not None and (
            not isinstance(self.max_param_bytes, int) or isinstance(self.max_param_bytes, bool)
            or self.max_param_bytes < 1
        ):
            raise InvalidValueError(
                f"SecurityConfig.max_param_bytes must be an int >= 1 or None, "
                f"got {self.max_param_bytes!r}",
                hint=f"the default is {DEFAULT_MAX_PARAM_BYTES} (1 MiB); None disables it",
            )
        for field in ("audit_size", "audit_max_chars"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidValueError(f"SecurityConfig.{field} must be an int >= 1, "
                                        f"got {value!r}")
        rules: list[SecurityRule] = []
        for item in self.rules:
            rule = item
            if isinstance(item, dict):
                try:
                    rule = SecurityRule(**item)
                except TypeError as exc:
                    raise InvalidValueError(
                        f"SecurityConfig.rules: bad rule {item!r}: {exc}",
                        hint="a rule takes name, condition, points, severity, action, "
                             "description",
                    ) from None
            if not isinstance(rule, SecurityRule):
                raise InvalidValueError(
                    f"SecurityConfig.rules must hold SecurityRule values, "
                    f"not {type(rule).__name__}",
                )
            rules.append(rule)
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1} | (set(names) & {SIZE_RULE}))
        if dupes:
            raise InvalidValueError(
                f"SecurityConfig.rules: duplicate or reserved rule name(s): {', '.join(dupes)}",
                hint=f"give every rule its own name; {SIZE_RULE!r} is the size limit's",
            )
        force(self, "rules", tuple(rules))


# -- audit and stats -------------------------------------------------------------------------
class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One audit record. ``data`` is the masked (and truncated) context data.

    ``action`` is the rule's action (``log``, ``alert``, ``block``), ``error`` for a rule
    that raised, or ``allow`` for a call recorded by ``audit_every_call``.
    """

    timestamp: float
    point: str
    component: str
    correlation_id: str
    rule: str | None
    severity: str
    action: str
    message: str
    data: Any = None


class SecurityStats(msgspec.Struct, frozen=True, kw_only=True):
    """What :class:`SecurityHook` did: ``calls`` seen, calls ``blocked``, ``alerts`` raised,
    ``logged`` entries of ``log`` rules, calls whose data ``mask`` rules ``masked``, rule
    ``errors``, ``by_rule`` (times each rule matched; the size limit counts as
    ``max_param_bytes``), ``audit_entries`` recorded in total, ``publish_errors`` (audit
    events the bus refused) and ``sink_errors``."""

    calls: int
    blocked: int
    alerts: int
    logged: int
    errors: int
    by_rule: dict[str, int]
    audit_entries: int
    publish_errors: int
    sink_errors: int
    masked: int = 0


# -- compiled conditions ----------------------------------------------------------------------
def _compile_path(path: str) -> tuple[bool, tuple[str, ...]]:
    parts = tuple(path.split("."))
    if parts[0] == "metadata" and len(parts) > 1:
        return True, parts[1:]
    return False, parts


def _resolve(ctx: HookContext, in_metadata: bool, parts: tuple[str, ...]) -> Any:
    return _walk(ctx.metadata if in_metadata else ctx.data, parts)


def _walk(value: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
            if value is _MISSING:
                return _MISSING
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _resolve_all(value: Any, parts: tuple[str, ...]) -> list[Any]:
    """Every value at ``parts`` (a ``*`` segment fans out over a list or dict)."""
    if not parts:
        return [value]
    part, rest = parts[0], parts[1:]
    if part == "*":
        items = value if isinstance(value, list) else (
            list(value.values()) if isinstance(value, dict) else [])
        return [found for item in items for found in _resolve_all(item, rest)]
    if isinstance(value, dict):
        if part not in value:
            return []
        return _resolve_all(value[part], rest)
    if isinstance(value, list) and part.isdigit() and int(part) < len(value):
        return _resolve_all(value[int(part)], rest)
    return []


def _substitute(value: Any, parts: tuple[str, ...], regex: re.Pattern[str],
                replacement: str) -> tuple[Any, int]:
    """``value`` with every match of ``regex`` in the strings at ``parts`` replaced, and
    how many were replaced. Copies only what it changes."""
    if not parts:
        return _substitute_all(value, regex, replacement, 0)
    part, rest = parts[0], parts[1:]
    if isinstance(value, list):
        indexes = (range(len(value)) if part == "*" else
                   [int(part)] if part.isdigit() and int(part) < len(value) else [])
        out: list[Any] | None = None
        total = 0
        for i in indexes:
            new, count = _substitute(value[i], rest, regex, replacement)
            if count:
                out = out if out is not None else list(value)
                out[i] = new
                total += count
        return (out, total) if out is not None else (value, 0)
    if isinstance(value, dict):
        keys = list(value) if part == "*" else [part] if part in value else []
        changed: dict[str, Any] | None = None
        total = 0
        for key in keys:
            new, count = _substitute(value[key], rest, regex, replacement)
            if count:
                changed = changed if changed is not None else dict(value)
                changed[key] = new
                total += count
        return (changed, total) if changed is not None else (value, 0)
    return value, 0


def _substitute_all(value: Any, regex: re.Pattern[str], replacement: str, depth: int
                    ) -> tuple[Any, int]:
    """``value`` with every match of ``regex`` replaced in everything it holds at any depth:
    strings, dict keys, numbers (a number with a match becomes its masked JSON text) and
    JSON documents held in a string; a match the raw text hides (zero-width characters,
    full-width forms, percent-encoding) is replaced in the normalised text. A mask rule whose
    path names a container masks what the container holds, as its test found it there.
    Copies only what it changes. Past :data:`SCAN_MAX_DEPTH` levels, and when two masked
    keys of a dict collide, raises ``_ScanLimitError`` (the hook then blocks)."""
    if isinstance(value, str):
        return _substitute_text(value, regex, replacement, depth)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        new_text, count = regex.subn(lambda _m: replacement, _ENCODE(value).decode())
        return (new_text, count) if count else (value, 0)
    if not isinstance(value, (list, dict)):
        return value, 0
    if depth >= SCAN_MAX_DEPTH:
        raise _ScanLimitError(f"data nested deeper than {SCAN_MAX_DEPTH} levels")
    if isinstance(value, list):
        out: list[Any] | None = None
        total = 0
        for i, item in enumerate(value):
            new, count = _substitute_all(item, regex, replacement, depth + 1)
            if count:
                out = out if out is not None else list(value)
                out[i] = new
                total += count
        return (out, total) if out is not None else (value, 0)
    pairs: list[tuple[Any, Any]] = []
    total = 0
    for key, item in value.items():
        new_key, key_count = ((_substitute_text(key, regex, replacement, depth + 1))
                              if isinstance(key, str) else (key, 0))
        new, count = _substitute_all(item, regex, replacement, depth + 1)
        pairs.append((new_key, new))
        total += key_count + count
    if not total:
        return value, 0
    changed = dict(pairs)
    if len(changed) != len(value):
        raise _ScanLimitError("masked keys of a dict collide")
    return changed, total


def _substitute_text(text: str, regex: re.Pattern[str], replacement: str, depth: int
                     ) -> tuple[str, int]:
    def literal(_m: re.Match[str]) -> str:
        return replacement  # taken literally

    new, total = regex.subn(literal, text)
    inner = _embedded_json(new, depth)
    if inner is not _MISSING:
        masked, count = _substitute_all(inner, regex, replacement, depth + 1)
        if count:
            new, total = _ENCODE(masked).decode(), total + count
    hidden = list(_variants(new, True))[1:]  # normalised, then percent-decoded
    for variant in reversed(hidden):  # the most decoded spelling that shows a match
        if regex.search(variant) is not None:
            new, count = regex.subn(literal, variant)
            total += count
            break
    return new, total


def _compile_match(m: Match) -> Callable[[HookContext], bool]:
    """Turn a :class:`Match` into a fast predicate."""
    flags = re.IGNORECASE if m.ignore_case else 0
    regex = re.compile(m.matches, flags) if m.matches is not None else None
    # A match such a pattern finds in one string it finds in any text holding that string.
    context_free = m.matches is not None and _CONTEXT.search(m.matches) is None
    in_metadata, parts = _compile_path(m.path) if m.path else (False, ())
    contains = m.contains
    if m.ignore_case and isinstance(contains, str):
        contains = contains.lower()
    has_contains = contains is not msgspec.UNSET
    equals = m.equals
    has_equals = equals is not msgspec.UNSET
    exists = m.exists
    comp = m.component
    comp_full = comp is not None and ":" in comp
    comp_re = (re.compile(fnmatch.translate(comp), re.IGNORECASE if m.ignore_case else 0)
               if comp is not None else None)
    ignore_case = m.ignore_case
    negate = m.negate
    fan_out = "*" in parts
    wants_value = regex is not None or has_contains or has_equals

    def text_holds(text: str) -> bool:
        if regex is not None and regex.search(text) is None:
            return False
        if has_contains:
            return isinstance(contains, str) and contains in (
                text.lower() if ignore_case else text)
        return True

    def holds(value: Any) -> bool:
        # Text is tested in every spelling (see _variants). A deny rule holds when any
        # spelling matches, and also looks at every string the value holds at any depth
        # (the JSON text escapes a tab as \t, so `rm\s+-rf` would miss it there). A
        # negated (allow) rule must hold for the raw and the normalised spelling alike.
        if has_equals and not bool(value == equals):
            return False
        if regex is None and not has_contains:
            return True
        if isinstance(value, str):
            if _plain(value):  # one spelling, no JSON inside: the common case, tested once
                return text_holds(value)
            if negate:
                return all(text_holds(t) for t in _variants(value, False))
            return any(text_holds(t) for s in _strings(value)
                       for t in _variants(s, True))
        if has_contains and not (isinstance(value, (list, dict)) and contains in value):
            return False
        if regex is None:
            return True
        text = _ENCODE(value).decode()
        if negate:
            return all(regex.search(t) is not None for t in _variants(text, False))
        if regex.search(text) is not None:
            return True
        if text.isascii() and "\\" not in text and "%" not in text:
            # Every string is in the JSON text as written (nothing escaped, so no JSON
            # document inside a string, one spelling each): a pattern that looks at no
            # context (no anchor, boundary or lookaround) found in none of them missed the
            # text above; any other is tested on each string alone.
            if context_free:
                return False
            return any(regex.search(s) is not None for s in _plain_strings(value, 0))
        if any(regex.search(t) is not None for t in _variants(text, False)):
            return True
        return any(regex.search(t) is not None for s in _strings(value)
                   for t in _variants(s, True))

    def test(ctx: HookContext) -> bool:
        ok = True
        if comp_re is not None:
            c = ctx.component
            ok = comp_re.match(f"{c.type}:{c.name}" if comp_full else c.name) is not None
        if ok and parts:
            if fan_out:
                values = _resolve_all(ctx.metadata if in_metadata else ctx.data, parts)
                found = bool(values)
                if (exists is not None and found != exists) or (not found and wants_value):
                    ok = False
                elif found and wants_value:
                    ok = any(holds(v) for v in values if v is not None)
            else:
                value = _resolve(ctx, in_metadata, parts)
                found = value is not _MISSING
                if (exists is not None and found != exists) or (not found and wants_value):
                    ok = False
                elif found and wants_value:
                    ok = holds(value)
        return ok != negate

    return test


def _log_text(data: Any) -> str:
    """``data`` as JSON for a log line; ``repr`` when it is no JSON (a lone surrogate)."""
    try:
        return _ENCODE(data).decode()
    except (TypeError, ValueError, OverflowError, RecursionError):
        return repr(data)


class _Compiled:
    """A rule ready to run: its predicate and what to do when it matches."""

    __slots__ = ("action", "description", "mask", "name", "severity", "test", "user_code")

    def __init__(self, rule: SecurityRule) -> None:
        self.name = rule.name
        self.severity = rule.severity
        self.action = rule.action
        self.description = rule.description
        condition = rule.condition
        self.test: Callable[[HookContext], bool]
        self.mask: Callable[[dict[str, Any]], tuple[dict[str, Any], int]] | None = None
        if isinstance(condition, Match):
            self.test = _compile_match(condition)
            self.user_code = False
            if rule.action == "mask" and condition.path and condition.matches is not None:
                regex = re.compile(condition.matches,
                                   re.IGNORECASE if condition.ignore_case else 0)
                parts = tuple(condition.path.split("."))
                replacement = rule.replacement

                def mask(data: dict[str, Any]) -> tuple[dict[str, Any], int]:
                    new, count = _substitute(data, parts, regex, replacement)
                    return new, count

                self.mask = mask
        else:
            self.test = condition  # type: ignore[assignment]
            self.user_code = True


def redact_rule(name: str, pattern: str, *, path: str = MESSAGE_CONTENT,
                points: Iterable[str] = (str(MODEL_BEFORE),),
                replacement: str = "[REDACTED]", ignore_case: bool = False,
                severity: Severity = "medium", description: str = "") -> SecurityRule:
    """A ``mask`` rule: every match of ``pattern`` in the values at ``path`` (default:
    every message of a model call's prompt, at ``BeforeModelCall``) is replaced with
    ``replacement`` before the operation sees it. E.g.
    ``redact_rule("no-emails", EMAIL_PATTERN)``."""
    return SecurityRule(
        name=name, points=tuple(points), severity=severity, action="mask",
        replacement=replacement, description=description or f"redacts {name}",
        condition=Match(path=path, matches=pattern, ignore_case=ignore_case))


# -- the hook ---------------------------------------------------------------------------------
class SecurityHook(BuiltinHook):
    """Enforces security rules and a parameter size limit; keeps a masked audit log.

    ``bus``: where audit, alert and violation events go (none: in-memory log only).
    ``violation_sink``: called with a masked dict describing each block (``rule``,
    ``severity``, ``action``, ``point``, ``component`` ``{type, name}``, ``correlation_id``,
    ``reason``, ``data``); if it returns an awaitable, the hook awaits it before
    cancelling — so ``lambda v: system.report(HookPoint.SECURITY_VIOLATION, ..., v)``
    fires the ``SecurityViolation`` point. A sink that raises is counted and logged; the
    block stands.
    """

    default_points: tuple[str, ...] = (
        HookPoint.BEFORE_TOOL_EXECUTION, HookPoint.BEFORE_AGENT_EXECUTION,
        HookPoint.TOOL_VALIDATION, *OPERATION_AFTER, MODEL_BEFORE, MODEL_AFTER,
    )

    def __init__(
        self,
        config: SecurityConfig | None = None,
        *,
        points: Iterable[str] | None = None,
        priority: int = SECURITY_PRIORITY,
        bus: EventBus | None = None,
        violation_sink: Callable[[dict[str, Any]], object] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(
            name="security", priority=priority, points=points,
            error_policy=ErrorPolicy.FAIL_CLOSED,
            tags=("builtin", "security"),
            description="security rules, parameter size limit, masked audit log",
        )
        self.config = config if config is not None else SecurityConfig()
        self.bus = bus
        self.violation_sink = violation_sink
        self._clock = clock
        self._masker = Masker(self.config.sensitive_keys)
        self._compiled = tuple(_Compiled(r) for r in self.config.rules)
        self._by_point: dict[str, tuple[_Compiled, ...]] = {}
        self._max_bytes = self.config.max_param_bytes
        self._audit: deque[AuditEntry] = deque(maxlen=self.config.audit_size)
        self._every = self.config.audit_every_call
        self.calls = 0
        self.blocked = 0
        self.alerts = 0
        self.logged = 0
        self.masked = 0
        self.errors = 0
        self.audit_entries = 0
        self.publish_errors = 0
        self.sink_errors = 0
        self._by_rule: dict[str, int] = {}

    # -- the hot path -------------------------------------------------------------------
    def _rules_for(self, point: str) -> tuple[_Compiled, ...]:
        rules = tuple(c for c, r in zip(self._compiled, self.config.rules, strict=True)
                      if r.applies_to(point))
        self._by_point[point] = rules
        return rules

    def execute(self, ctx: HookContext) -> HookOutput:
        """Check the size limit, then every rule for this point, in order."""
        self.calls += 1
        point = ctx.point
        rules = self._by_point.get(point)
        if rules is None:
            rules = self._rules_for(point)
        if self._max_bytes is not None and point in _INBOUND:
            params = ctx.data.get("params")
            if params is not None:
                try:
                    size = len(_ENCODE(params))
                except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                    return self._block(ctx, SIZE_RULE, "high",
                                       f"parameters cannot be encoded as JSON "
                                       f"({type(exc).__name__})")
                if size > self._max_bytes:
                    return self._block(
                        ctx, SIZE_RULE, "high",
                        f"parameters are {size} bytes, over the limit of "
                        f"{self._max_bytes} bytes",
                    )
        view = ctx  # after a mask: the masked data, which later rules and audits see
        for rule in rules:
            try:
                hit = rule.test(view)
            except _ScanLimitError as exc:
                return self._unscannable(view, rule, str(exc))
            except Exception as exc:
                self.errors += 1
                self._record(view, rule.name, rule.severity, "error",
                             f"rule raised {type(exc).__name__}")
                raise SecurityRuleError(
                    self.metadata.name, point,
                    f"rule {rule.name!r} raised {type(exc).__name__}",
                    hint="fix the rule's condition; the hook is fail-closed, so the "
                         "operation was cancelled",
                ) from exc
            if not hit:
                continue
            self._by_rule[rule.name] = self._by_rule.get(rule.name, 0) + 1
            message = rule.description or "condition matched"
            if rule.action == "block":
                return self._block(view, rule.name, rule.severity, message)
            if rule.mask is not None:
                try:
                    data, count = rule.mask(view.data)
                    masked = msgspec.structs.replace(view, data=data)
                    left = rule.test(masked)  # what the mask could not reach
                except _ScanLimitError as exc:
                    return self._unscannable(view, rule, str(exc))
                if left:
                    return self._block(
                        view, rule.name, rule.severity,
                        f"{message}: a match could not be masked (it spans values or "
                        "keys); blocked rather than passed on")
                if not count:
                    continue
                view = masked
                self.masked += 1
                self._record(view, rule.name, rule.severity, "mask",
                             f"{message} ({count} replaced)")
                continue
            entry = self._record(view, rule.name, rule.severity, rule.action, message)
            if rule.action == "alert":
                self.alerts += 1
                self._publish(ALERT_EVENT, entry, view)
            else:
                self.logged += 1
        if self._every:
            self._record(view, None, "low", "allow", "allowed")
        if view is not ctx:
            return Modified(view.data)
        return None

    def _unscannable(self, ctx: HookContext, rule: _Compiled, why: str) -> HookOutput:
        """Fail closed on data a rule cannot scan in full: block the call."""
        self._by_rule[rule.name] = self._by_rule.get(rule.name, 0) + 1
        return self._block(ctx, rule.name, rule.severity,
                           f"{why}: cannot be scanned in full, blocked (fail-closed)")

    # -- effects -------------------------------------------------------------------------
    def _record(self, ctx: HookContext, rule: str | None, severity: str, action: str,
                message: str) -> AuditEntry:
        """Append an audit entry (masked data), log it and publish ``security.audit``."""
        c = ctx.component
        component = f"{c.type}:{c.name}"
        data = truncate(self._masker.mask(ctx.data), self.config.audit_max_chars)
        entry = AuditEntry(
            timestamp=self._clock.now(), point=str.__str__(ctx.point), component=component,
            correlation_id=ctx.correlation_id, rule=rule, severity=severity, action=action,
            message=message, data=data,
        )
        self._audit.append(entry)
        self.audit_entries += 1
        level = _LOG_LEVEL[action]
        if action == "block" and severity == "critical":
            level = logging.ERROR
        if logger.isEnabledFor(level):
            logger.log(
                level, "security %s: rule=%s severity=%s point=%s component=%s corr=%s "
                "message=%s data=%s", action, rule, severity, entry.point, component,
                ctx.correlation_id, message, _log_text(data),
            )
        self._publish(AUDIT_EVENT, entry, ctx)
        return entry

    def _publish(self, event_type: str, entry: AuditEntry, ctx: HookContext) -> None:
        bus = self.bus
        if bus is None:
            return
        try:
            bus.publish(event_type, msgspec.to_builtins(entry),
                        EventMetadata(correlation_id=ctx.correlation_id,
                                      source="llmspell.security"))
        except Exception as exc:
            self.publish_errors += 1
            logger.warning("security: could not publish %s (%s)", event_type,
                           type(exc).__name__)

    def _block(self, ctx: HookContext, rule: str, severity: str, message: str) -> HookOutput:
        """Record, publish ``security.violation``, tell the sink, and cancel."""
        if rule == SIZE_RULE:
            self._by_rule[rule] = self._by_rule.get(rule, 0) + 1
        self.blocked += 1
        entry = self._record(ctx, rule, severity, "block", message)
        self._publish(VIOLATION_EVENT, entry, ctx)
        cancel = Cancel(f"security rule {rule!r}: {message} (severity {severity})")
        sink = self.violation_sink
        if sink is None:
            return cancel
        c = ctx.component
        violation = {
            "rule": rule, "severity": severity, "action": "block", "point": entry.point,
            "component": {"type": c.type.value, "name": c.name},
            "correlation_id": ctx.correlation_id, "reason": cancel.reason, "data": entry.data,
        }
        try:
            out = sink(violation)
        except Exception as exc:
            self._sink_failed(exc)
            return cancel
        if inspect.isawaitable(out):
            return self._await_sink(out, cancel)
        return cancel

    async def _await_sink(self, awaitable: Awaitable[object], cancel: Cancel) -> Cancel:
        try:
            await awaitable
        except Exception as exc:
            self._sink_failed(exc)
        return cancel

    def _sink_failed(self, exc: Exception) -> None:
        self.sink_errors += 1
        logger.warning("security: the violation sink raised %s; the block stands",
                       type(exc).__name__)

    # -- queries --------------------------------------------------------------------------
    def audit(
        self,
        *,
        rule: str | None = None,
        severity: str | None = None,
        min_severity: str | None = None,
        action: str | None = None,
        correlation_id: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Audit entries kept in memory, oldest first, filtered by ``rule``, exact
        ``severity`` or ``min_severity`` and above, ``action`` and ``correlation_id``;
        ``limit`` keeps the newest ``limit``."""
        for value in (severity, min_severity):
            if value is not None and value not in _RANK:
                raise InvalidValueError(f"unknown severity {value!r}",
                                        hint=f"use one of: {', '.join(_SEVERITIES)}")
        floor = _RANK[min_severity] if min_severity is not None else -1
        found = [
            e for e in list(self._audit)
            if (rule is None or e.rule == rule)
            and (severity is None or e.severity == severity)
            and _RANK.get(e.severity, 0) >= floor
            and (action is None or e.action == action)
            and (correlation_id is None or e.correlation_id == correlation_id)
        ]
        if limit is not None:
            found = found[-limit:] if limit > 0 else []
        return found

    def stats(self) -> SecurityStats:
        """Counters since the hook was made."""
        return SecurityStats(
            calls=self.calls, blocked=self.blocked, alerts=self.alerts, logged=self.logged,
            errors=self.errors, by_rule=dict(self._by_rule),
            audit_entries=self.audit_entries, publish_errors=self.publish_errors,
            sink_errors=self.sink_errors, masked=self.masked,
        )
