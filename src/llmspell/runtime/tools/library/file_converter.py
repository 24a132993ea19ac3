"""A file converter confined to one directory: text encodings, line endings, and CSV /
JSON / YAML formats.

Why hand-written: each conversion is a few lines of stdlib (or PyYAML) code, and the
point is the confinement and the limits. Source and destination are resolved with
:func:`resolve_in_root` (absolute paths, ``..`` and symlink escapes are refused), the
source is read up to ``max_bytes``, and the destination is written to a temporary file
and moved into place. YAML goes through PyYAML's safe loader and ``yaml.safe_dump`` only;
PyYAML is the optional ``tools`` extra and imported on first use. A YAML source is
composed first and weighed with its aliases expanded: one that would grow past
:data:`YAML_EXPANSION_FACTOR` times its own size (an alias bomb), or whose aliases form a
cycle, is refused before any data is built.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Final

from llmspell.core.errors import ConfigurationError, SandboxViolationError, ToolExecutionError
from llmspell.runtime.tools.base import SecurityLevel, SideEffect, Tool
from llmspell.runtime.tools.library.csv_tool import write_csv
from llmspell.runtime.tools.library.file_search import check_root, resolve_in_root

__all__ = ["FileConverterTool"]

_NAME = "file_converter"
FORMATS: Final = ("csv", "json", "yaml")
_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_EXTENSIONS: Final = {".csv": "csv", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}
YAML_EXPANSION_FACTOR: Final = 8
"""A YAML source may expand (aliases resolved) to at most this many times its own length
(counted in nodes plus scalar characters, at least 8 KiB)."""


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def _yaml() -> Any:
    """The PyYAML module, or a :class:`ConfigurationError` saying how to install it."""
    try:
        return importlib.import_module("yaml")
    except ImportError:
        raise ConfigurationError("YAML conversion needs PyYAML, which is not installed",
                                 hint="pip install 'llmspell[tools]'") from None


def _check_yaml_expansion(root: Any, limit: int, raw: str) -> None:
    """Refuse a composed YAML document whose size with every alias expanded (one per node
    plus the characters of each scalar) passes ``limit``, or whose aliases form a cycle:
    the "billion laughs" shape, where a few hundred bytes of nested aliases expand to
    gigabytes once written out. Each distinct node is weighed once (memoised), so the
    check costs time linear in the document, not in its expansion."""
    weights: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        value = node.value
        if isinstance(value, str):  # a scalar
            weights[key] = 1 + len(value)
            continue
        children = [part for item in value
                    for part in (item if isinstance(item, tuple) else (item,))]
        if finished:
            open_nodes.discard(key)
            weight = 1 + sum(weights[id(child)] for child in children)
            if weight > limit:
                raise _fail(
                    f"{raw!r} expands to more than {limit} YAML nodes and characters once "
                    f"its aliases (*name) are resolved",
                    hint="an alias repeats its anchor's whole content; write the data out, "
                    "or use fewer nested aliases")
            weights[key] = weight
            continue
        if key in weights:
            continue
        if key in open_nodes:
            raise _fail(f"{raw!r} has a YAML alias that refers to itself (a cycle)",
                        hint="JSON, CSV and YAML output need data without cycles")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in weights)


def _codec(name: str) -> str:
    try:
        "".encode(name)  # refuses unknown codecs and non-text ones (rot13, base64)
    except LookupError:
        raise _fail(f"unknown text encoding {name!r}",
                    hint="e.g. utf-8, latin-1, cp1252, utf-16") from None
    return name


def _cell(value: Any) -> str:
    """A JSON/YAML value as one CSV field: scalars as text, containers as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


class FileConverterTool(Tool):
    """Convert files under one sandbox directory between encodings, line endings and
    formats."""

    name = _NAME
    description = (
        "Convert a file inside a sandbox directory (paths relative to it) and write the "
        "result to 'destination' (default: the source itself, needs overwrite=true). "
        "operations: encoding ('from_encoding' -> 'to_encoding', default utf-8), "
        "line_endings ('line_ending' lf or crlf), format ('from_format' / 'to_format': "
        "csv, json, yaml; taken from the file extensions unless given; CSV is a list of "
        "records with the first row as header)."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": ["encoding", "line_endings", "format"],
                          "description": "What to convert."},
            "source": {"type": "string", "minLength": 1, "maxLength": 4096,
                       "description": "The file to read."},
            "destination": {"type": "string", "minLength": 1, "maxLength": 4096,
                            "description": "The file to write (default: source)."},
            "from_encoding": {"type": "string", "maxLength": 64,
                              "description": "The source's encoding (default utf-8)."},
            "to_encoding": {"type": "string", "maxLength": 64,
                            "description": "The destination's encoding (default utf-8)."},
            "line_ending": {"enum": ["lf", "crlf"],
                            "description": "line_endings: the line ending written."},
            "from_format": {"enum": list(FORMATS), "description": "format: source format."},
            "to_format": {"enum": list(FORMATS), "description": "format: target format."},
            "overwrite": {"type": "boolean",
                          "description": "Replace an existing destination (default false)."},
        },
        "required": ["operation", "source"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"operation": {"const": "line_endings"}}},
             "then": {"required": ["line_ending"]}},
        ],
    }
    timeout = 30.0
    security_level = SecurityLevel.RESTRICTED
    side_effects = frozenset({SideEffect.FILE_WRITE})
    blocking = True

    def __init__(self, root: Path | str, *, max_bytes: int = 10 * 1024 * 1024) -> None:
        self.root = check_root(root)
        self.max_bytes = max_bytes

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Convert ``params["source"]`` into ``params["destination"]``."""
        source = resolve_in_root(self.root, params["source"], _NAME)
        target_raw: str = params.get("destination", params["source"])
        target = resolve_in_root(self.root, target_raw, _NAME)
        if target == self.root or target.is_dir():
            raise _fail(f"the destination {target_raw!r} is a directory")
        if target.exists() and not params.get("overwrite", False):
            raise _fail(f"the destination {target_raw!r} exists",
                        hint="pass overwrite=true to replace it")
        if not target.parent.is_dir():
            raise _fail(f"the directory of {target_raw!r} does not exist")
        from_encoding = _codec(params.get("from_encoding", "utf-8"))
        to_encoding = _codec(params.get("to_encoding", "utf-8"))
        operation: str = params["operation"]
        if operation == "format":
            from_format = self._format(params.get("from_format"), source)
            to_format = self._format(params.get("to_format"), target)
        text = self._read(source, params["source"], from_encoding)
        result: dict[str, Any] = {"source": self._relative(source),
                                  "destination": self._relative(target),
                                  "operation": operation}
        if operation == "encoding":
            output = text
            result.update(from_encoding=from_encoding, to_encoding=to_encoding)
        elif operation == "line_endings":
            newline = "\r\n" if params["line_ending"] == "crlf" else "\n"
            output, breaks = _LINE_BREAK.subn(newline, text)
            result.update(line_ending=params["line_ending"], line_breaks=breaks)
        else:
            data = self._load(text, from_format, params["source"])
            output = self._dump(data, to_format)
            result.update(from_format=from_format, to_format=to_format)
            if isinstance(data, list):
                result["records"] = len(data)
        try:
            encoded = output.encode(to_encoding)
        except UnicodeEncodeError as exc:
            raise _fail(f"the text cannot be encoded as {to_encoding} (character "
                        f"{exc.start}: {exc.reason})", hint="use utf-8") from None
        if len(encoded) > self.max_bytes:
            raise _fail(f"the result is {len(encoded)} bytes, more than the limit of "
                        f"{self.max_bytes}")
        self._write(target, encoded)
        result["bytes_written"] = len(encoded)
        return result

    # -- reading and writing -------------------------------------------------------------

    def _read(self, path: Path, raw: str, encoding: str) -> str:
        if not path.is_file():
            raise _fail(f"no such file: {raw!r}")
        try:
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                data = handle.read(self.max_bytes + 1)
        except OSError as exc:
            raise _fail(f"cannot read {raw!r}: {exc.strerror or exc}") from None
        if size > self.max_bytes or len(data) > self.max_bytes:
            raise _fail(f"{raw!r} is larger than the limit of {self.max_bytes} bytes")
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise _fail(f"{raw!r} is not valid {encoding} (byte {exc.start}: {exc.reason})",
                        hint="pass the right 'from_encoding', e.g. latin-1") from None

    def _write(self, target: Path, data: bytes) -> None:
        if target.is_symlink():
            raise SandboxViolationError(_NAME, "the destination is a symlink; it is not "
                                        "written through")
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                             suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.chmod(temp_name, 0o644)
            os.replace(temp_name, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise

    # -- formats ---------------------------------------------------------------------------

    @staticmethod
    def _format(given: str | None, path: Path) -> str:
        if given is not None:
            return given
        found = _EXTENSIONS.get(path.suffix.lower())
        if found is None:
            raise _fail(f"cannot tell the format of {path.name!r} from its extension",
                        hint="pass 'from_format' / 'to_format' (csv, json, yaml)")
        return found

    def _load(self, text: str, fmt: str, raw: str) -> Any:
        if fmt == "csv":
            reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
            records: list[dict[str, Any]] = []
            try:
                for row in reader:
                    if None in row:
                        raise _fail(f"{raw!r} line {reader.line_num} has more fields than "
                                    "the header")
                    records.append({k: ("" if v is None else v) for k, v in row.items()})
            except csv.Error as exc:
                raise _fail(f"{raw!r} is not valid CSV: {exc}") from None
            return records
        if fmt == "json":
            try:
                return json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise _fail(f"{raw!r} is not valid JSON: {exc}") from None
        yaml = _yaml()
        loader = yaml.SafeLoader(text)
        try:
            # Compose the node graph first (aliases are shared nodes there, so it stays
            # as small as the text), weigh it as if every alias were expanded, and only
            # then build the Python data that the JSON / YAML writers would expand.
            node = loader.get_single_node()
            if node is None:
                return None
            limit = YAML_EXPANSION_FACTOR * max(len(text), 1024)
            _check_yaml_expansion(node, limit, raw)
            return loader.construct_document(node)
        except (yaml.YAMLError, RecursionError) as exc:
            raise _fail(f"{raw!r} is not valid YAML: {exc}") from None
        finally:
            loader.dispose()

    @staticmethod
    def _dump(data: Any, fmt: str) -> str:
        if fmt == "json":
            return json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n"
        if fmt == "yaml":
            # JSON-normalise first so the YAML holds only plain types.
            plain = json.loads(json.dumps(data, default=str))
            dumped: str = _yaml().safe_dump(plain, allow_unicode=True, sort_keys=False)
            return dumped
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise _fail("only a list of objects (records) can be written as CSV",
                        hint="e.g. [{\"name\": \"a\", \"n\": 1}, ...]")
        columns: list[str] = []
        for record in data:
            for key in record:
                if str(key) not in columns:
                    columns.append(str(key))
        rows: list[list[str]] = []
        for record in data:
            cells = {str(k): _cell(v) for k, v in record.items()}
            rows.append([cells.get(column, "") for column in columns])
        return write_csv(columns, rows)
