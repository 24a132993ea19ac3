"""A text tool: case changes, trimming, replacing, splitting, joining, truncating, counting,
slugs and identifier styles.

Why hand-written: each operation is a few lines over :mod:`str` and :mod:`re`, and the
identifier and slug helpers in libraries differ in exactly the edge cases (acronyms,
digits, accents) that matter, so they are spelled out here. Regular expressions run on
RE2 (:mod:`llmspell.runtime.tools.library.safe_regex`), whose matching time is linear in the
text, so no pattern can backtrack catastrophically; patterns are capped in length and the
text a pattern runs on is capped. Output size is capped too, so a replacement cannot
multiply the text beyond the limit. The tool runs on a worker thread (``blocking``), never
inline on the event loop.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Final

from llmspell.core.errors import ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool
from llmspell.runtime.tools.library.safe_regex import (
    MAX_PATTERN_LENGTH,
    UserMatch,
    UserRegex,
    compile_user_regex,
)

__all__ = ["MAX_PATTERN_LENGTH", "TextManipulatorTool", "check_regex", "split_words"]

_NAME = "text_manipulator"
DEFAULT_MAX_BYTES: Final = 1024 * 1024
"""Default cap of the input (and output) text, in UTF-8 bytes."""
MAX_REGEX_INPUT: Final = 200_000
"""Longest text (characters) a regular expression is run over."""

OPERATIONS: Final = (
    "uppercase", "lowercase", "title", "reverse", "trim", "replace", "split", "join",
    "truncate", "word_count", "char_count", "slugify", "snake_case", "camel_case",
)


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def check_regex(pattern: str, *, ignore_case: bool = False) -> UserRegex:
    """Compile a caller's ``pattern`` with RE2, whose matching time is linear in the text
    (no catastrophic backtracking: ``(a|a)*b`` and ``(a+)+$`` are as fast as ``a``);
    raise :class:`ToolExecutionError` for a pattern too long or not in RE2 syntax."""
    return compile_user_regex(pattern, _NAME, ignore_case=ignore_case)


def split_words(text: str) -> list[str]:
    """Words of ``text`` for identifier styles: runs of letters and digits, split at
    ``camelCase`` boundaries and at the end of acronyms (``HTTPServer`` -> HTTP, Server)."""
    words: list[str] = []
    current: list[str] = []
    for index, char in enumerate(text):
        if not char.isalnum():
            if current:
                words.append("".join(current))
                current = []
            continue
        if current:
            prev = current[-1]
            following = text[index + 1] if index + 1 < len(text) else ""
            if char.isupper() and (
                prev.islower() or prev.isdigit()
                or (prev.isupper() and following.islower())
            ):
                words.append("".join(current))
                current = []
        current.append(char)
    if current:
        words.append("".join(current))
    return words


def _slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def _title(text: str) -> str:
    return re.sub(r"[^\W_]+(?:['\u2019][^\W_]+)*",
                  lambda m: m.group()[0].upper() + m.group()[1:].lower(), text)


def _reverse(text: str) -> str:
    """Reverse by character, keeping combining marks on their base character."""
    clusters: list[str] = []
    for char in text:
        if clusters and unicodedata.combining(char):
            clusters[-1] += char
        else:
            clusters.append(char)
    return "".join(reversed(clusters))


class TextManipulatorTool(Tool):
    """Transform or measure text; one ``operation`` per call."""

    name = _NAME
    description = (
        "Transform or measure text. operations: uppercase, lowercase, title, reverse, trim "
        "('characters', 'side'), replace ('find', 'replacement', 'regex', 'count', "
        "'ignore_case'), split ('separator', 'regex', 'max_splits'), join ('items', "
        "'separator'), truncate ('length', 'suffix', 'word_boundary'), word_count, "
        "char_count, slugify, snake_case, camel_case."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": list(OPERATIONS), "description": "What to do."},
            "text": {"type": "string", "description": "The text (all operations but join)."},
            "find": {"type": "string", "description": "replace: what to look for."},
            "replacement": {"type": "string",
                            "description": "replace: the new text (with regex, \\1 or "
                                           "\\g<name> refer to groups)."},
            "regex": {"type": "boolean",
                      "description": "replace/split: treat find/separator as a regular "
                                     "expression (default false)."},
            "ignore_case": {"type": "boolean", "description": "replace: case-insensitive."},
            "count": {"type": "integer", "minimum": 0,
                      "description": "replace: most replacements, 0 for all (default)."},
            "separator": {"type": "string",
                          "description": "split: the separator (default: runs of "
                                         "whitespace); join: the glue (default '')."},
            "max_splits": {"type": "integer", "minimum": -1,
                           "description": "split: most splits, -1 for all (default)."},
            "items": {"type": "array", "items": {"type": "string"},
                      "description": "join: the strings to join."},
            "length": {"type": "integer", "minimum": 0,
                       "description": "truncate: the longest result, suffix included."},
            "suffix": {"type": "string", "description": "truncate: appended when cut "
                                                         "(default '...')."},
            "word_boundary": {"type": "boolean",
                              "description": "truncate: cut at a word boundary."},
            "characters": {"type": "string",
                           "description": "trim: the characters to strip (default "
                                          "whitespace)."},
            "side": {"enum": ["both", "left", "right"], "description": "trim: which end."},
        },
        "required": ["operation"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"operation": {"const": "join"}}},
             "then": {"required": ["items"]},
             "else": {"required": ["text"]}},
            {"if": {"properties": {"operation": {"const": "replace"}}},
             "then": {"required": ["find", "replacement"]}},
            {"if": {"properties": {"operation": {"const": "truncate"}}},
             "then": {"required": ["length"]}},
        ],
    }
    timeout = 10.0
    security_level = SecurityLevel.SAFE

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes

    def _check_size(self, text: str, what: str) -> None:
        # Cheap bound first: a UTF-8 character is at most 4 bytes.
        if len(text) * 4 > self.max_bytes and len(text.encode("utf-8", "surrogatepass")) > \
                self.max_bytes:
            raise _fail(f"{what} is larger than the limit of {self.max_bytes} bytes",
                        hint="split the text and work on the parts")

    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``params["operation"]`` on ``params["text"]`` (or ``items`` for join)."""
        operation: str = params["operation"]
        if operation == "join":
            items: list[str] = params["items"]
            separator: str = params.get("separator", "")
            self._check_size(separator, "the separator")
            total = sum(len(i) for i in items) + len(separator) * max(len(items) - 1, 0)
            if total * 4 > self.max_bytes:
                self._check_size("".join(items), "the joined text")
            result = separator.join(items)
            self._check_size(result, "the joined text")
            return {"result": result}
        text: str = params["text"]
        self._check_size(text, "the text")
        if operation == "uppercase":
            return {"result": text.upper()}
        if operation == "lowercase":
            return {"result": text.lower()}
        if operation == "title":
            return {"result": _title(text)}
        if operation == "reverse":
            return {"result": _reverse(text)}
        if operation == "trim":
            return {"result": self._trim(text, params)}
        if operation == "replace":
            return self._replace(text, params)
        if operation == "split":
            return self._split(text, params)
        if operation == "truncate":
            return self._truncate(text, params)
        if operation == "word_count":
            return {"result": len(text.split())}
        if operation == "char_count":
            return {
                "result": len(text),
                "without_whitespace": sum(1 for c in text if not c.isspace()),
                "bytes": len(text.encode("utf-8", "surrogatepass")),
                "lines": len(text.splitlines()),
            }
        if operation == "slugify":
            return {"result": _slugify(text)}
        if operation == "snake_case":
            return {"result": "_".join(w.lower() for w in split_words(text))}
        if operation == "camel_case":
            words = split_words(text)
            camel = "".join(
                w.lower() if i == 0 else w[0].upper() + w[1:].lower()
                for i, w in enumerate(words)
            )
            return {"result": camel}
        raise _fail(f"unknown operation {operation!r}", hint="one of: " + ", ".join(OPERATIONS))

    @staticmethod
    def _trim(text: str, params: dict[str, Any]) -> str:
        characters: str | None = params.get("characters")
        side = params.get("side", "both")
        if side == "left":
            return text.lstrip(characters)
        if side == "right":
            return text.rstrip(characters)
        return text.strip(characters)

    def _regex(self, text: str, pattern: str, *, ignore_case: bool = False) -> UserRegex:
        if len(text) > MAX_REGEX_INPUT:
            raise _fail(
                f"regular expressions run on at most {MAX_REGEX_INPUT} characters; the text "
                f"has {len(text)}",
                hint="use a literal (regex: false) or split the text first",
            )
        return check_regex(pattern, ignore_case=ignore_case)

    def _replace(self, text: str, params: dict[str, Any]) -> dict[str, Any]:
        find: str = params["find"]
        replacement: str = params["replacement"]
        count: int = params.get("count", 0)
        ignore_case: bool = params.get("ignore_case", False)
        if params.get("regex", False) or ignore_case:
            pattern = self._regex(text, find if params.get("regex", False) else re.escape(find),
                                  ignore_case=ignore_case)
            budget = [self.max_bytes - len(text)]
            literal = not params.get("regex", False)

            def substitute(match: UserMatch) -> str:
                try:
                    new = replacement if literal else match.expand(replacement)
                except (re.error, IndexError, ValueError, KeyError) as exc:
                    raise _fail(f"bad replacement template {replacement!r}: {exc}") from None
                budget[0] -= len(new) - len(match.group())
                if budget[0] < 0:
                    raise _fail(f"the result would be larger than {self.max_bytes} bytes")
                return new

            result, made = pattern.subn(substitute, text, count=count)
        else:
            occurrences = text.count(find)
            made = occurrences if count == 0 else min(count, occurrences)
            growth = made * (len(replacement) - len(find))
            if len(text) + growth > self.max_bytes:
                raise _fail(f"the result would be larger than {self.max_bytes} bytes")
            result = text.replace(find, replacement, count if count else -1)
        self._check_size(result, "the result")
        return {"result": result, "replacements": made}

    def _split(self, text: str, params: dict[str, Any]) -> dict[str, Any]:
        separator: str | None = params.get("separator")
        max_splits: int = params.get("max_splits", -1)
        if params.get("regex", False):
            if not separator:
                raise _fail("a regex split needs a non-empty 'separator'")
            compiled = self._regex(text, separator)
            if max_splits == 0:
                parts = [text]
            else:  # re.split's maxsplit=0 means "all"; unmatched groups give None
                raw = compiled.split(text, maxsplit=max(max_splits, 0))
                parts = ["" if p is None else p for p in raw]
        else:
            if separator == "":
                raise _fail("the separator is empty",
                            hint="omit it to split on whitespace")
            parts = text.split(separator, max_splits)
        return {"result": parts, "count": len(parts)}

    @staticmethod
    def _truncate(text: str, params: dict[str, Any]) -> dict[str, Any]:
        length: int = params["length"]
        suffix: str = params.get("suffix", "...")
        if len(text) <= length:
            return {"result": text, "truncated": False}
        keep = max(length - len(suffix), 0)
        head = text[:keep]
        if params.get("word_boundary", False) and keep < len(text) and not text[keep].isspace():
            cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
            if cut > 0:
                head = head[:cut]
        result = (head.rstrip() + suffix)[:length]
        return {"result": result, "truncated": True}
