"""A diff tool: unified diffs of texts and structural diffs of JSON values.

Text diffs come from :func:`difflib.unified_diff` with a chosen number of context lines.
JSON diffs are computed here by a recursive walk: objects are compared key by key, arrays
index by index, and every difference is reported as added, removed or changed with a path
in the syntax of the JSON processor tool (``users[0].name``, ``$`` for the whole value).
Inputs are capped in size, nesting depth and (for texts) line count, and the matching work
of a text diff is counted and capped (:data:`MAX_DIFF_WORK`), since difflib's matching is
quadratic or worse on texts of a few often-repeated lines: such a pair is refused with an
error rather than computed for minutes. The number of reported differences is capped too,
and the tool runs on a worker thread, never on the event loop.
"""

from __future__ import annotations

import difflib
import json
from typing import Any, Final

from llmspell.core.errors import ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool
from llmspell.runtime.tools.library.json_processor import Segment, format_path

__all__ = ["DiffCalculatorTool", "json_diff"]

_NAME = "diff_calculator"
MAX_TEXT_CHARS: Final = 500_000
"""Longest text accepted on either side, in characters."""
MAX_LINES: Final = 20_000
"""Most lines accepted on either side of a text diff."""
MAX_JSON_CHARS: Final = 1_000_000
"""Largest JSON value accepted on either side, serialised, in characters."""
MAX_DEPTH: Final = 100
"""Deepest nesting walked in a JSON diff."""
MAX_CHANGES: Final = 10_000
"""Most differences reported by a JSON diff (the result says when it was truncated)."""
MAX_DIFF_WORK: Final = 20_000_000
"""Most line comparisons a text diff may make (difflib's matching, counted before it runs);
past it the tool refuses with an error instead of computing for minutes."""



def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: ``1 == 1.0`` but ``1 != true`` and ``0 != false``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


class _Differ:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.changes: list[dict[str, Any]] = []
        self.truncated = False

    def add(self, change: dict[str, Any]) -> None:
        if len(self.changes) >= self.limit:
            self.truncated = True
        else:
            self.changes.append(change)

    def walk(self, old: Any, new: Any, path: tuple[Segment, ...], depth: int) -> None:
        if self.truncated:
            return
        if depth > MAX_DEPTH:
            raise _fail(f"the JSON values are nested more than {MAX_DEPTH} levels deep")
        if isinstance(old, dict) and isinstance(new, dict):
            for key in old:
                if key not in new:
                    self.add({"path": format_path((*path, key)), "type": "removed",
                              "old": old[key]})
            for key in old:
                if key in new:
                    self.walk(old[key], new[key], (*path, key), depth + 1)
            for key in new:
                if key not in old:
                    self.add({"path": format_path((*path, key)), "type": "added", "new": new[key]})
        elif isinstance(old, list) and isinstance(new, list):
            for i in range(min(len(old), len(new))):
                self.walk(old[i], new[i], (*path, i), depth + 1)
            for i in range(len(new), len(old)):
                self.add({"path": format_path((*path, i)), "type": "removed", "old": old[i]})
            for i in range(len(old), len(new)):
                self.add({"path": format_path((*path, i)), "type": "added", "new": new[i]})
        elif not _same(old, new):
            self.add({"path": format_path(path) or "$", "type": "changed", "old": old, "new": new})


def json_diff(old: Any, new: Any, *, limit: int = MAX_CHANGES) -> dict[str, Any]:
    """The differences from ``old`` to ``new``: ``{"equal", "changes", "summary",
    "truncated"}``; each change has a ``path`` (JSON processor syntax, ``$`` for the whole
    value), a ``type`` (added, removed, changed) and the ``old`` and/or ``new`` value."""
    differ = _Differ(limit)
    differ.walk(old, new, (), 0)
    summary = {kind: sum(1 for c in differ.changes if c["type"] == kind)
               for kind in ("added", "removed", "changed")}
    return {"equal": not differ.changes, "changes": differ.changes, "summary": summary,
            "truncated": differ.truncated}


def _json_size(value: Any, what: str) -> None:
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise _fail(f"the {what} value is not JSON: {exc}") from None
    except RecursionError:
        raise _fail(f"the {what} value is nested too deeply") from None
    if size > MAX_JSON_CHARS:
        raise _fail(f"the {what} value is {size} characters of JSON, more than "
                    f"{MAX_JSON_CHARS}")


class _BudgetMatcher(difflib.SequenceMatcher[str]):
    """A :class:`difflib.SequenceMatcher` that stops with a typed error once its work
    passes a budget. Each search for a longest match is charged, before it runs, the number
    of candidate positions it may visit, so the refusal comes before the time is spent
    (difflib is quadratic or worse on texts made of a few often-repeated lines)."""

    def __init__(self, a: list[str], b: list[str], budget: int) -> None:
        self.budget = budget
        self._old = a
        super().__init__(None, a, b)

    def find_longest_match(self, alo: int = 0, ahi: int | None = None, blo: int = 0,
                           bhi: int | None = None) -> difflib.Match:
        """Charge the work, then find the longest matching block as difflib does."""
        top = len(self._old) if ahi is None else ahi
        b2j: dict[str, list[int]] = self.b2j  # type: ignore[attr-defined]
        self.budget -= (top - alo) + sum(len(b2j.get(line, ())) for line in self._old[alo:top])
        if self.budget < 0:
            raise _fail(
                "the texts are too costly to diff: they repeat the same lines so often that "
                f"matching them would take more than {MAX_DIFF_WORK} steps",
                hint="diff smaller parts, or compare them as JSON (mode 'json')")
        return super().find_longest_match(alo, ahi, blo, bhi)


def _range(start: int, stop: int) -> str:
    """A unified-diff line range (``3,2``; a single line is just ``3``)."""
    beginning, length = start + 1, stop - start
    if length == 1:
        return str(beginning)
    if not length:
        beginning -= 1
    return f"{beginning},{length}"


def _unified(matcher: difflib.SequenceMatcher[str], a: list[str], b: list[str],
             old_name: str, new_name: str, context: int) -> list[str]:
    """The lines of :func:`difflib.unified_diff`, from an existing matcher."""
    out: list[str] = []
    for group in matcher.get_grouped_opcodes(context):
        if not out:
            out += [f"--- {old_name}\n", f"+++ {new_name}\n"]
        first, last = group[0], group[-1]
        out.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out += [" " + line for line in a[i1:i2]]
                continue
            if tag in ("replace", "delete"):
                out += ["-" + line for line in a[i1:i2]]
            if tag in ("replace", "insert"):
                out += ["+" + line for line in b[j1:j2]]
    return out


def _text_diff(old: str, new: str, context: int, old_name: str,
               new_name: str) -> dict[str, Any]:
    for what, text in (("old", old), ("new", new)):
        if len(text) > MAX_TEXT_CHARS:
            raise _fail(f"the {what} text is {len(text)} characters long, more than "
                        f"{MAX_TEXT_CHARS}")
    old_lines = old.splitlines(keepends=True)
    new_lines = new.splitlines(keepends=True)
    for what, lines in (("old", old_lines), ("new", new_lines)):
        if len(lines) > MAX_LINES:
            raise _fail(f"the {what} text has {len(lines)} lines, more than {MAX_LINES}")
    matcher = _BudgetMatcher(old_lines, new_lines, MAX_DIFF_WORK)
    diff_lines = _unified(matcher, old_lines, new_lines, old_name, new_name, context)
    added = sum(1 for ln in diff_lines if ln.startswith("+") and not ln.startswith("+++"))
    removed = sum(1 for ln in diff_lines if ln.startswith("-") and not ln.startswith("---"))
    text = "".join(ln if ln.endswith("\n") else ln + "\n\\ No newline at end of file\n"
                   for ln in diff_lines)
    ratio = matcher.ratio()  # reuses the matching blocks computed for the diff
    return {"mode": "text", "equal": old == new, "diff": text, "added_lines": added,
            "removed_lines": removed, "similarity": round(ratio, 6)}


class DiffCalculatorTool(Tool):
    """Compare two texts (unified diff) or two JSON values (paths added, removed, changed)."""

    name = _NAME
    description = (
        "Compare two texts as a unified diff (mode 'text', with 'context' lines), or two JSON "
        "values structurally (mode 'json'): the paths added, removed and changed."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "mode": {"enum": ["text", "json"], "default": "text"},
            "old": {"description": "The original: a string for text mode, any JSON value for "
                                   "json mode."},
            "new": {"description": "The changed version, like 'old'."},
            "context": {"type": "integer", "minimum": 0, "maximum": 100, "default": 3,
                        "description": "Text mode: unchanged lines shown around changes."},
            "old_name": {"type": "string", "maxLength": 200, "default": "old"},
            "new_name": {"type": "string", "maxLength": 200, "default": "new"},
        },
        "required": ["old", "new"],
        "additionalProperties": False,
    }
    timeout = 10.0
    security_level = SecurityLevel.SAFE
    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Diff ``params["old"]`` against ``params["new"]``."""
        mode: str = params.get("mode", "text")
        old, new = params["old"], params["new"]
        if mode == "text":
            if not isinstance(old, str) or not isinstance(new, str):
                raise _fail("text mode compares two strings",
                            hint="use mode 'json' to compare other values")
            return _text_diff(old, new, params.get("context", 3),
                              params.get("old_name", "old"), params.get("new_name", "new"))
        _json_size(old, "old")
        _json_size(new, "new")
        return {"mode": "json", **json_diff(old, new)}
