"""Regular expressions from callers, run in linear time (RE2, the ``google-re2`` package).

Python's :mod:`re` backtracks: a pattern such as ``(a|a)*b``, ``a*a*a*a*a*b`` or
``^(a+)+$`` takes exponential (or high polynomial) time on a short input, holding the GIL
the whole while, and no shape check catches them all. Every pattern a tool's caller
supplies (text search and replace, file content search, validation rules, JSON Schema
``pattern`` and ``patternProperties``) is therefore compiled with RE2, whose matching time
is linear in the text. RE2 has no backreferences (``\\1`` in a pattern) and no lookaround
(``(?=``, ``(?!``, ``(?<=``, ``(?<!``); such patterns are refused with a typed error.
Python's ``\\Z`` is accepted (RE2 spells it ``\\z``). ``\\d``, ``\\w`` and ``\\s`` are ASCII
classes in RE2, unlike :mod:`re`'s Unicode ones.

:func:`linear_validator` gives a :mod:`jsonschema` validator class whose ``pattern``,
``patternProperties`` and ``additionalProperties`` keywords use RE2 too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol, cast

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
from jsonschema import ValidationError, validators

from llmspell.core.errors import ToolExecutionError

__all__ = [
    "MAX_PATTERN_LENGTH",
    "UserMatch",
    "UserRegex",
    "compile_user_regex",
    "linear_validator",
    "schema_patterns",
]

MAX_PATTERN_LENGTH: Final = 500
"""Longest regular expression accepted."""


class UserMatch(Protocol):
    """The part of a match object the tools use."""

    def group(self, *groups: int | str) -> Any:
        """The text of a group (0: the whole match)."""

    def expand(self, template: str) -> str:
        """``template`` with ``\\1`` / ``\\g<name>`` replaced by the groups' text."""


class UserRegex(Protocol):
    """A compiled linear-time pattern (the subset of :class:`re.Pattern` the tools use)."""

    @property
    def pattern(self) -> str:
        """The pattern's source text."""

    def search(self, text: str) -> UserMatch | None:
        """The first match anywhere in ``text``."""

    def match(self, text: str) -> UserMatch | None:
        """The match at the start of ``text``."""

    def subn(self, repl: Callable[[UserMatch], str], text: str,
             count: int = 0) -> tuple[str, int]:
        """``text`` with matches replaced, and how many were."""

    def split(self, text: str, maxsplit: int = 0) -> list[str | None]:
        """``text`` split at matches (groups included, like :func:`re.split`)."""


def _to_re2(pattern: str) -> str:
    """Python spellings RE2 lacks: ``\\Z`` (end of text) is RE2's ``\\z``."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            pair = pattern[i:i + 2]
            out.append("\\z" if pair == "\\Z" else pair)
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _unencodable(tool: str, what: str, exc: UnicodeEncodeError) -> ToolExecutionError:
    return ToolExecutionError(
        tool, f"the {what} holds {exc.object[exc.start:exc.end]!r} at {exc.start}, a lone "
        "surrogate (half of a UTF-16 pair), which a regular expression cannot match",
        hint="pass valid Unicode text (no unpaired surrogates)")


class _Linear:
    """An RE2 pattern whose failures are typed: RE2 works on UTF-8, so a text holding a
    lone surrogate would otherwise raise a bare :class:`UnicodeEncodeError`."""

    def __init__(self, compiled: Any, tool: str) -> None:
        self._compiled = compiled
        self._tool = tool

    @property
    def pattern(self) -> str:
        """The pattern's source text."""
        return cast(str, self._compiled.pattern)

    def search(self, text: str) -> UserMatch | None:
        """The first match anywhere in ``text``."""
        try:
            return cast(UserMatch | None, self._compiled.search(text))
        except UnicodeEncodeError as exc:
            raise _unencodable(self._tool, "text", exc) from None

    def match(self, text: str) -> UserMatch | None:
        """The match at the start of ``text``."""
        try:
            return cast(UserMatch | None, self._compiled.match(text))
        except UnicodeEncodeError as exc:
            raise _unencodable(self._tool, "text", exc) from None

    def subn(self, repl: Callable[[UserMatch], str], text: str,
             count: int = 0) -> tuple[str, int]:
        """``text`` with matches replaced, and how many were."""
        try:
            return cast(tuple[str, int], self._compiled.subn(repl, text, count=count))
        except UnicodeEncodeError as exc:
            raise _unencodable(self._tool, "text or replacement", exc) from None

    def split(self, text: str, maxsplit: int = 0) -> list[str | None]:
        """``text`` split at matches (groups included, like :func:`re.split`)."""
        try:
            return cast(list[str | None], self._compiled.split(text, maxsplit=maxsplit))
        except UnicodeEncodeError as exc:
            raise _unencodable(self._tool, "text", exc) from None


def compile_user_regex(pattern: str, tool: str, *, ignore_case: bool = False,
                       what: str = "regular expression",
                       max_length: int = MAX_PATTERN_LENGTH) -> UserRegex:
    """Compile a caller's ``pattern`` with RE2; raise :class:`ToolExecutionError` (naming
    ``tool``) when it is longer than ``max_length``, uses syntax RE2 does not have, or is
    later run on a text RE2 cannot take (a lone surrogate)."""
    if len(pattern) > max_length:
        raise ToolExecutionError(
            tool, f"the {what} is {len(pattern)} characters long, more than "
            f"{max_length}", hint="use a shorter pattern")
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    try:
        return _Linear(re2.compile(_to_re2(pattern), options), tool)
    except UnicodeEncodeError as exc:
        raise _unencodable(tool, what, exc) from None
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ToolExecutionError(
            tool, f"invalid {what} {pattern[:100]!r}: {detail}",
            hint="patterns use RE2 syntax (linear time): no backreferences (\\1) and no "
            "lookaround ((?=...), (?!...), (?<=...), (?<!...))") from None


def schema_patterns(schema: Any) -> Iterator[str]:
    """Every regular expression in a JSON Schema (``pattern`` values and
    ``patternProperties`` keys), however deeply nested."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                yield node["pattern"]
            if isinstance(node.get("patternProperties"), dict):
                yield from node["patternProperties"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str, tool: str) -> UserRegex:
    return compile_user_regex(pattern, tool, what="schema pattern")


def _search(pattern: str, text: str, tool: str) -> bool:
    return _compiled(pattern, tool).search(text) is not None


def _pattern(validator: Any, patrn: str, instance: Any, _schema: Any, *,
             tool: str) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _search(patrn, instance, tool):
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(validator: Any, pattern_properties: dict[str, Any], instance: Any,
                        _schema: Any, *, tool: str) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for key, value in instance.items():
            if _search(pattern, key, tool):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any,
                           schema: dict[str, Any], *, tool: str) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [key for key in instance if key not in properties
              and not any(_search(p, key, tool) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        if patterns:
            verb = "does" if len(extras) == 1 else "do"
            listed = ", ".join(repr(e) for e in sorted(extras))
            yield ValidationError(
                f"{listed} {verb} not match any of the regexes: "
                + ", ".join(repr(p) for p in sorted(patterns)))
        else:
            listed = ", ".join(repr(e) for e in extras)
            was = "was" if len(extras) == 1 else "were"
            yield ValidationError(
                f"Additional properties are not allowed ({listed} {was} unexpected)")


def linear_validator(cls: Any, tool: str, schema: Any) -> Any:
    """``cls`` (a :mod:`jsonschema` validator class) with its regex keywords run by RE2.

    Every pattern of ``schema`` is compiled first, so a bad one is a typed error naming
    ``tool``. A schema using both ``unevaluatedProperties`` and ``patternProperties`` is
    refused: jsonschema evaluates that pair with :mod:`re` internally.
    """
    patterns = list(schema_patterns(schema))
    for pattern in patterns:
        compile_user_regex(pattern, tool, what="schema pattern")
    if any(True for _ in _keyword_nodes(schema, "patternProperties")) and any(
            True for _ in _keyword_nodes(schema, "unevaluatedProperties")):
        raise ToolExecutionError(
            tool, "a schema using both unevaluatedProperties and patternProperties is not "
            "supported (those regexes would run without a time bound)",
            hint="use additionalProperties next to patternProperties instead")
    keywords = {"pattern": functools.partial(_pattern, tool=tool),
                "patternProperties": functools.partial(_pattern_properties, tool=tool),
                "additionalProperties": functools.partial(_additional_properties, tool=tool)}
    return validators.extend(cls, keywords)  # type: ignore[no-untyped-call]


def _keyword_nodes(schema: Any, keyword: str) -> Iterator[dict[str, Any]]:
    """Every object in ``schema`` that has ``keyword``."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if keyword in node:
                yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
