"""A CSV analyzer: column statistics, row filters, conversion to JSON records or CSV, head.

Why hand-written on the stdlib :mod:`csv` module: CSV text from a model needs only
parsing with a chosen dialect, a few aggregates and a filter, and the limits (input
size, rows) must be enforced before any work. Values stay strings unless they are
compared or summarised as numbers (a value is numeric when it parses as a finite float).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import Counter
from typing import Any, Final

from llmspell.core.errors import ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, Tool

__all__ = ["CsvAnalyzerTool", "write_csv"]

_NAME = "csv_analyzer"
OPERATIONS: Final = ("stats", "filter", "convert", "head")
COMPARISONS: Final = ("==", "!=", "<", ">", "<=", ">=", "contains")


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def _number(value: str) -> float | None:
    """``value`` as a finite float, or None."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _plain(number: float) -> int | float:
    """An integral float as an int (``3.0`` -> ``3``), for readable results."""
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def write_csv(columns: list[str], rows: list[list[str]]) -> str:
    """CSV text (``\\n`` line ends) with a header row. Fields are quoted when needed; when
    any field holds a carriage return, every field is (the writer would otherwise leave
    it bare, and a reader would take it for a line end)."""
    awkward = any("\r" in cell for row in [columns, *rows] for cell in row)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n",
                        quoting=csv.QUOTE_ALL if awkward else csv.QUOTE_MINIMAL)
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


class CsvAnalyzerTool(Tool):
    """Analyse CSV text: stats, filter, convert, head."""

    name = _NAME
    description = (
        "Analyse CSV text given in 'csv'. operations: stats (per column: count, empty, "
        "distinct, top values, and min/max/mean/median when numeric), filter ('column', "
        "'op' one of == != < > <= >= contains, 'value'), convert ('format' json -> "
        "records, or csv; 'columns' selects columns), head ('limit' rows). Dialect: "
        "'delimiter', 'quotechar', 'has_header' (default true; else columns are col1, "
        "col2, ...)."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": list(OPERATIONS), "description": "What to do."},
            "csv": {"type": "string", "description": "The CSV text."},
            "delimiter": {"type": "string", "minLength": 1, "maxLength": 1,
                          "description": "Field delimiter (default ',')."},
            "quotechar": {"type": "string", "minLength": 1, "maxLength": 1,
                          "description": "Quote character (default '\"')."},
            "has_header": {"type": "boolean",
                           "description": "The first row names the columns (default true)."},
            "column": {"type": "string", "description": "filter: the column compared."},
            "op": {"enum": list(COMPARISONS), "description": "filter: the comparison."},
            "value": {"type": ["string", "number"],
                      "description": "filter: compared numerically when both sides are "
                                     "numbers, else as text."},
            "columns": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                        "maxItems": 1000,
                        "description": "convert/filter/head: the columns kept, in order."},
            "format": {"enum": ["json", "csv"],
                       "description": "convert: json records (default) or csv text."},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10_000,
                      "description": "head: rows (default 10); filter/convert: most rows "
                                     "returned (default 1000)."},
            "top": {"type": "integer", "minimum": 1, "maximum": 50,
                    "description": "stats: how many top values per column (default 5)."},
        },
        "required": ["operation", "csv"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"operation": {"const": "filter"}}},
             "then": {"required": ["column", "op", "value"]}},
        ],
    }
    timeout = 30.0
    security_level = SecurityLevel.SAFE

    def __init__(self, *, max_bytes: int = 5 * 1024 * 1024, max_rows: int = 100_000,
                 max_columns: int = 1000) -> None:
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self.max_columns = max_columns

    # -- parsing -------------------------------------------------------------------------

    def _parse(self, params: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        text: str = params["csv"]
        size = len(text.encode("utf-8"))
        if size > self.max_bytes:
            raise _fail(f"the CSV text is {size} bytes, more than the limit of "
                        f"{self.max_bytes}", hint="pass a smaller sample")
        reader = csv.reader(io.StringIO(text, newline=""),
                            delimiter=params.get("delimiter", ","),
                            quotechar=params.get("quotechar", '"'), strict=True)
        rows: list[list[str]] = []
        allowed = self.max_rows + (1 if params.get("has_header", True) else 0)
        try:
            for row in reader:
                if not row:
                    continue  # blank lines
                if len(rows) >= allowed:
                    raise _fail(f"the CSV has more than {self.max_rows} rows",
                                hint="pass a smaller sample")
                rows.append(row)
        except csv.Error as exc:
            raise _fail(f"invalid CSV at line {reader.line_num}: {exc}",
                        hint="check 'delimiter' and 'quotechar'") from None
        if not rows:
            raise _fail("the CSV text has no rows")
        width = max(len(row) for row in rows)
        if width > self.max_columns:
            raise _fail(f"the CSV has {width} columns, more than the limit of "
                        f"{self.max_columns}")
        if params.get("has_header", True):
            header, data = rows[0], rows[1:]
            if len(set(header)) != len(header):
                duplicates = sorted({h for h in header if header.count(h) > 1})
                raise _fail(f"duplicate column names: {duplicates}",
                            hint="rename them, or pass has_header=false")
        else:
            header, data = [f"col{i + 1}" for i in range(width)], rows
        for number, row in enumerate(data, start=2 if params.get("has_header", True) else 1):
            if len(row) > len(header):
                raise _fail(f"row {number} has {len(row)} fields, more than the "
                            f"{len(header)} columns", hint="check 'delimiter' and quoting")
            if len(row) < len(header):
                row.extend([""] * (len(header) - len(row)))
        return header, data

    @staticmethod
    def _index(header: list[str], column: str) -> int:
        try:
            return header.index(column)
        except ValueError:
            raise _fail(f"no column {column!r}",
                        hint="columns: " + ", ".join(map(repr, header[:50]))) from None

    def _select(self, header: list[str], params: dict[str, Any]) -> list[int]:
        if "columns" not in params:
            return list(range(len(header)))
        return [self._index(header, column) for column in params["columns"]]

    # -- operations ----------------------------------------------------------------------

    blocking = True  # a worker thread runs it: the event loop never waits on it

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``params["operation"]`` on ``params["csv"]``."""
        header, data = self._parse(params)
        operation: str = params["operation"]
        if operation == "stats":
            return self._stats(header, data, params.get("top", 5))
        if operation == "filter":
            return self._filter(header, data, params)
        if operation == "convert":
            return self._convert(header, data, params)
        if operation == "head":
            picked = self._select(header, params)
            limit: int = params.get("limit", 10)
            return {"columns": [header[i] for i in picked],
                    "rows": [{header[i]: row[i] for i in picked} for row in data[:limit]],
                    "total_rows": len(data)}
        raise _fail(f"unknown operation {operation!r}", hint="one of: " + ", ".join(OPERATIONS))

    @staticmethod
    def _stats(header: list[str], data: list[list[str]], top: int) -> dict[str, Any]:
        columns: list[dict[str, Any]] = []
        for index, name in enumerate(header):
            values = [row[index] for row in data if row[index] != ""]
            counts = Counter(values)
            column: dict[str, Any] = {
                "name": name,
                "count": len(values),
                "empty": len(data) - len(values),
                "distinct": len(counts),
                "top": [{"value": v, "count": c} for v, c in counts.most_common(top)],
                "numeric": False,
            }
            numbers = [_number(v) for v in values]
            if values and all(n is not None for n in numbers):
                real = [n for n in numbers if n is not None]
                column.update(numeric=True, min=_plain(min(real)), max=_plain(max(real)),
                              mean=statistics.fmean(real),
                              median=_plain(float(statistics.median(real))))
            columns.append(column)
        return {"rows": len(data), "columns": columns}

    def _filter(self, header: list[str], data: list[list[str]],
                params: dict[str, Any]) -> dict[str, Any]:
        index = self._index(header, params["column"])
        op: str = params["op"]
        wanted = params["value"]
        text = wanted if isinstance(wanted, str) else str(_plain(float(wanted)))
        wanted_number = float(wanted) if not isinstance(wanted, str) else _number(wanted)
        picked = self._select(header, params)
        limit: int = params.get("limit", 1000)
        rows: list[dict[str, str]] = []
        matched = 0
        for row in data:
            if self._matches(row[index], op, text, wanted_number, isinstance(wanted, str)):
                matched += 1
                if len(rows) < limit:
                    rows.append({header[i]: row[i] for i in picked})
        return {"columns": [header[i] for i in picked], "rows": rows, "matched": matched,
                "total_rows": len(data), "truncated": matched > len(rows)}

    @staticmethod
    def _matches(cell: str, op: str, text: str, number: float | None,
                 textual: bool) -> bool:
        if op == "contains":
            return text in cell
        cell_number = _number(cell)
        left: Any
        right: Any
        if number is not None and cell_number is not None:
            left, right = cell_number, number
        elif not textual:
            return op == "!="  # a number never equals (nor orders against) text
        else:
            left, right = cell, text
        if op == "==":
            return bool(left == right)
        if op == "!=":
            return bool(left != right)
        if op == "<":
            return bool(left < right)
        if op == ">":
            return bool(left > right)
        if op == "<=":
            return bool(left <= right)
        return bool(left >= right)

    def _convert(self, header: list[str], data: list[list[str]],
                 params: dict[str, Any]) -> dict[str, Any]:
        picked = self._select(header, params)
        limit: int = params.get("limit", 1000)
        rows = data[:limit]
        columns = [header[i] for i in picked]
        result: dict[str, Any] = {"columns": columns, "total_rows": len(data),
                                  "truncated": len(data) > limit}
        if params.get("format", "json") == "json":
            result["records"] = [{header[i]: row[i] for i in picked} for row in rows]
            return result
        result["csv"] = write_csv(columns, [[row[i] for i in picked] for row in rows])
        return result
