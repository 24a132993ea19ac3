"""A tool that queries SQL databases through named connections (SQLAlchemy, the optional
``tools`` extra: ``pip install 'llmspell[tools]'``).

The caller names a connection configured on the tool, never a URL, and URLs are shown only
with their password masked (errors are scrubbed of it too). SQL runs through
``sqlalchemy.text`` with a dict of bind parameters (``:name`` placeholders), one statement
per call. In read-only mode (the default) the database stays unchanged by construction, not
by parsing: the driver sends exactly one statement per call (sqlite3 refuses more;
PostgreSQL gets the extended query protocol, which carries one statement), and the database
itself is opened read-only: SQLite files with ``mode=ro`` (and ``PRAGMA query_only``),
PostgreSQL sessions with ``default_transaction_read_only=on`` and each call's transaction
with ``SET TRANSACTION READ ONLY``. On top of that the statement must start with SELECT,
WITH or EXPLAIN (after comments). Other databases are refused in read-only mode, since it
could not be enforced there. Queries are always rolled back; ``execute`` (writes, only when
``read_only=False``) commits.

Results are bounded: rows are pulled one at a time (PostgreSQL in single-row mode) and the
pull stops at ``max_rows`` rows or ``max_bytes`` of row JSON, with ``truncated`` and
``truncated_by`` in the result. SQLite connections also cap any string or blob at
``max_bytes``, so one huge value is an error, not an out-of-memory.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any, Final
from urllib.parse import quote

from llmspell.core.errors import (
    ConfigurationError,
    SandboxViolationError,
    ToolExecutionError,
    ToolTimeoutError,
)
from llmspell.runtime.tools.base import SecurityLevel, SideEffect, Tool

__all__ = [
    "DEFAULT_MAX_BYTES",
    "READ_KEYWORDS",
    "DatabaseConnectorTool",
    "json_safe_value",
    "statement_keyword",
]

_NAME = "database_connector"
_WRITE_WORD: Final = re.compile(
    r"\b(INSERT|UPDATE|DELETE|MERGE|INTO|CREATE|DROP|ALTER|TRUNCATE)\b", re.IGNORECASE)
READ_KEYWORDS: Final = frozenset({"SELECT", "WITH", "EXPLAIN"})
_EXPLAIN_RUNS: Final = re.compile(r"^\s*EXPLAIN\s*(\(\s*)?ANALY[SZ]E\b", re.IGNORECASE)
_READ_ONLY_DIALECTS: Final = frozenset({"sqlite", "postgresql"})
_MAX_ERROR: Final = 600
DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024
"""Default cap of a query's returned rows, as JSON text (and, on SQLite, of any value)."""


def _sqlalchemy() -> ModuleType:
    try:
        import sqlalchemy  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise ConfigurationError("the database_connector tool needs SQLAlchemy",
                                 hint="pip install 'llmspell[tools]'") from None
    return sqlalchemy


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


# -- SQL scanning --------------------------------------------------------------------------


def _skip_quoted(sql: str, i: int, quote_char: str, *, backslash: bool) -> int:
    """The index after the quoted text that opens at ``i``; doubled quotes escape."""
    n = len(sql)
    j = i + 1
    while j < n:
        c = sql[j]
        if backslash and c == "\\":
            j += 2
            continue
        if c == quote_char:
            if j + 1 < n and sql[j + 1] == quote_char:
                j += 2
                continue
            return j + 1
        j += 1
    raise _fail("the SQL has an unterminated quoted string or identifier")


def _dollar_tag(sql: str, i: int) -> str | None:
    """The PostgreSQL dollar-quote tag (``$$`` or ``$name$``) opening at ``i``, if any.

    A ``$`` right after an identifier character is part of that identifier (``a$x$``),
    or of a positional parameter (``$1``), never the start of a dollar quote.
    """
    if i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$"):
        return None
    j = i + 1
    while j < len(sql) and (sql[j].isalnum() or sql[j] == "_"):
        j += 1
    if j < len(sql) and sql[j] == "$" and not sql[i + 1:j][:1].isdigit():
        return sql[i:j + 1]
    return None


def statement_keyword(sql: str, dialect: str = "postgresql") -> tuple[str, str]:
    """The first keyword (upper case) of ``sql`` and the statement without a trailing
    semicolon; raise when ``sql`` holds more than one statement or none.

    Strings, quoted identifiers and comments are skipped the way ``dialect`` reads them
    (PostgreSQL ``E''`` and dollar quotes, MySQL backslash escapes), so a semicolon inside
    them is not a statement break.
    """
    n = len(sql)
    i = 0
    keyword = ""
    end: int | None = None  # index of the statement-ending semicolon
    postgres = dialect == "postgresql"
    while i < n:
        c = sql[i]
        if sql.startswith("--", i) or (c == "#" and dialect == "mysql"):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0:
                raise _fail("the SQL has an unterminated /* comment")
            i = j + 2
            continue
        if end is not None:
            if c.isspace():
                i += 1
                continue
            raise SandboxViolationError(
                _NAME, "only one SQL statement per call is allowed",
                hint="send each statement in its own call")
        if c == ";":
            end = i
            i += 1
            continue
        if c == "'":
            escape = dialect == "mysql" or (
                postgres and i > 0 and sql[i - 1] in "eE"
                and (i == 1 or not (sql[i - 2].isalnum() or sql[i - 2] == "_")))
            i = _skip_quoted(sql, i, "'", backslash=escape)
            keyword = keyword or "?"
            continue
        if c in "\"`":
            i = _skip_quoted(sql, i, c, backslash=False)
            keyword = keyword or "?"
            continue
        if c == "[" and dialect == "sqlite":
            j = sql.find("]", i + 1)
            if j < 0:
                raise _fail("the SQL has an unterminated [identifier]")
            i = j + 1
            continue
        if c == "$" and postgres:
            tag = _dollar_tag(sql, i)
            if tag is not None:
                j = sql.find(tag, i + len(tag))
                if j < 0:
                    raise _fail("the SQL has an unterminated dollar-quoted string")
                i = j + len(tag)
                keyword = keyword or "?"
                continue
        if not keyword and c.isalpha():
            j = i
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            keyword = sql[i:j].upper()
            i = j
            continue
        if not keyword and not c.isspace() and c != "(":
            keyword = "?"
        i += 1
    if not keyword:
        raise _fail("the SQL holds no statement")
    return keyword, sql[:end] if end is not None else sql


# -- values --------------------------------------------------------------------------------


def json_safe_value(value: Any) -> Any:
    """``value`` from a database row as JSON-safe data: dates, times, decimals and UUIDs
    become strings, bytes become base64 text, non-finite floats become strings."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID, dt.timedelta)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): json_safe_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe_value(v) for v in value]
    return str(value)


# -- the tool ------------------------------------------------------------------------------


class DatabaseConnectorTool(Tool):
    """Run parameterised SQL on named database connections; read-only by default."""

    name = _NAME
    description = (
        "Query a SQL database. operation 'connections' lists the configured connection "
        "names; 'query' runs one SELECT/WITH/EXPLAIN statement on 'connection' and returns "
        "rows (list of objects, at most 'max_rows' rows and the configured byte limit; "
        "'truncated' says a limit cut the result and 'truncated_by' which); 'execute' runs "
        "one write statement (only when the tool is not read-only). Put values in 'params' "
        "and refer to them as :name in 'sql'; never paste values into the SQL."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "operation": {"enum": ["connections", "query", "execute"],
                          "description": "What to do."},
            "connection": {"type": "string", "minLength": 1, "maxLength": 200,
                           "description": "A configured connection name."},
            "sql": {"type": "string", "minLength": 1, "maxLength": 100000,
                    "description": "One SQL statement with :name placeholders."},
            "params": {"type": "object",
                       "additionalProperties": {"type": ["string", "number", "boolean",
                                                         "null"]},
                       "description": "Values for the :name placeholders."},
            "max_rows": {"type": "integer", "minimum": 1,
                         "description": "At most this many rows (capped by configuration)."},
        },
        "required": ["operation"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"operation": {"enum": ["query", "execute"]}}},
             "then": {"required": ["connection", "sql"]}},
        ],
    }
    security_level = SecurityLevel.RESTRICTED
    side_effects = frozenset({SideEffect.DATABASE_WRITE})

    def side_effects_for(self, params: dict[str, Any]) -> frozenset[SideEffect]:
        """``database_write`` for ``execute`` and for a ``query`` whose text names a writing
        keyword (a data-modifying ``WITH``, ``SELECT ... INTO``); none for ``connections``
        and plain reads."""
        operation = params.get("operation")
        if operation == "execute":
            return self.side_effects
        if operation == "query" and _WRITE_WORD.search(str(params.get("sql", ""))):
            return self.side_effects
        return frozenset()

    blocking = True

    def __init__(self, *, urls: Mapping[str, str], read_only: bool = True,
                 max_rows: int = 1000, max_bytes: int = DEFAULT_MAX_BYTES,
                 timeout: float = 30.0) -> None:
        sa = _sqlalchemy()
        if not urls:
            raise ConfigurationError("DatabaseConnectorTool needs at least one connection",
                                     hint="pass urls={'main': 'sqlite:///data.db'}")
        if max_rows < 1 or max_bytes < 1 or timeout <= 0:
            raise ConfigurationError("max_rows, max_bytes and timeout must be positive")
        self._urls: dict[str, Any] = {}
        self._secrets: list[str] = []
        for name, raw in urls.items():
            try:
                url = sa.engine.make_url(raw)
            except (sa.exc.ArgumentError, ValueError):
                raise ConfigurationError(
                    f"the URL of connection {name!r} is not a valid database URL",
                    hint="use dialect+driver://user:password@host/database") from None
            self._urls[name] = url
            self._secrets.append(raw)
            if url.password:
                self._secrets += [str(url.password), quote(str(url.password), safe="")]
            if url.get_backend_name() == "postgresql" and url.drivername not in (
                    "postgresql", "postgresql+psycopg"):
                raise ConfigurationError(
                    f"connection {name!r}: PostgreSQL is used through psycopg 3 only, not "
                    f"{url.drivername}",
                    hint="write postgresql:// or postgresql+psycopg:// (psycopg 3 sends one "
                    "statement per call, which read-only mode relies on)")
            if read_only and url.get_backend_name() not in _READ_ONLY_DIALECTS:
                raise ConfigurationError(
                    f"connection {name!r}: read-only mode is only enforced for SQLite and "
                    f"PostgreSQL, not {url.get_backend_name()}",
                    hint="use a read-only database user and read_only=False, or another "
                    "database")
        self._secrets = sorted({s for s in self._secrets if s}, key=len, reverse=True)
        self.read_only = read_only
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.query_timeout = timeout
        self.timeout = timeout + 5.0
        self._engines: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- helpers -----------------------------------------------------------------------

    def masked_url(self, name: str) -> str:
        """The URL of connection ``name`` with its password hidden."""
        return str(self._urls[name].render_as_string(hide_password=True))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text if len(text) <= _MAX_ERROR else text[:_MAX_ERROR] + "..."

    def _error(self, exc: BaseException, name: str) -> ToolExecutionError:
        orig = getattr(exc, "orig", None)
        if "string or blob too big" in str(orig if orig is not None else exc):
            return _fail(f"a value on connection {name!r} is larger than the tool's "
                         f"{self.max_bytes}-byte limit",
                         hint="select a part of it (substr) or configure a larger max_bytes")
        detail = str(orig if orig is not None else exc).strip().splitlines()
        message = self._scrub(f"{type(orig or exc).__name__}: {detail[0] if detail else ''}")
        return _fail(f"database error on connection {name!r}: {message}",
                     hint=f"connection {name!r} is {self.masked_url(name)}")

    def _url_for_engine(self, url: Any) -> Any:
        backend = url.get_backend_name()
        if backend == "postgresql":
            # psycopg 3 always: its extended-protocol calls carry one statement each.
            url = url.set(drivername="postgresql+psycopg")
        if backend == "sqlite" and self.read_only:
            database = url.database or ":memory:"
            query = dict(url.query)
            if database == ":memory:" or query.get("mode") == "memory":
                return url  # nothing to protect on disk; PRAGMA query_only still applies
            if not (database.startswith("file:") and query.get("uri") in ("true", "1")):
                database = "file:" + quote(os.path.abspath(database), safe="/")
            query.update({"mode": "ro", "uri": "true"})
            url = url.set(database=database, query=query)
        return url

    def _engine(self, name: str) -> Any:
        with self._lock:
            engine = self._engines.get(name)
            if engine is not None:
                return engine
            sa = _sqlalchemy()
            url = self._url_for_engine(self._urls[name])
            connect_args: dict[str, Any] = {}
            backend = url.get_backend_name()
            if backend == "postgresql":
                connect_args["connect_timeout"] = max(1, int(self.query_timeout))
                if self.read_only:
                    # Every transaction of the session starts read-only, so even a statement
                    # that ended the tool's own read-only transaction would land in another.
                    options = str(url.query.get("options", ""))
                    connect_args["options"] = (
                        options + " -c default_transaction_read_only=on").strip()
            elif backend == "sqlite":
                connect_args["timeout"] = self.query_timeout
            try:
                engine = sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)
            except ImportError as exc:
                raise ConfigurationError(
                    f"the database driver for connection {name!r} is not installed: {exc.name}",
                    hint="pip install 'llmspell[tools]' (PostgreSQL: postgresql+psycopg://)",
                ) from None
            except Exception as exc:
                raise self._error(exc, name) from None
            if backend == "sqlite":
                sa.event.listen(engine, "connect", self._sqlite_connect)
            self._engines[name] = engine
            return engine

    def close(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()

    # -- operations --------------------------------------------------------------------

    def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run the operation described by ``params``; see the class description."""
        operation = params["operation"]
        if operation == "connections":
            return {"read_only": self.read_only,
                    "connections": [{"name": n, "url": self.masked_url(n),
                                     "dialect": str(u.get_backend_name())}
                                    for n, u in self._urls.items()]}
        name: str = params["connection"]
        if name not in self._urls:
            raise _fail(f"no connection named {name!r}",
                        hint="configured: " + ", ".join(sorted(self._urls)))
        dialect = str(self._urls[name].get_backend_name())
        keyword, sql = statement_keyword(params["sql"], dialect)
        if operation == "execute" and self.read_only:
            raise SandboxViolationError(
                _NAME, "'execute' is refused: the tool is read-only",
                hint="configure DatabaseConnectorTool(read_only=False) to allow writes")
        if operation == "query" and keyword not in READ_KEYWORDS:
            raise SandboxViolationError(
                _NAME, f"'query' only runs SELECT, WITH or EXPLAIN statements, not {keyword}",
                hint="use operation 'execute' for writes (needs read_only=False)")
        if operation == "query" and keyword == "EXPLAIN" and _EXPLAIN_RUNS.match(sql):
            # EXPLAIN ANALYZE executes its statement: not a read.
            raise SandboxViolationError(
                _NAME, "'query' refuses EXPLAIN ANALYZE: it runs the statement it explains",
                hint="use plain EXPLAIN, or operation 'execute' (needs read_only=False)")
        limit = min(int(params.get("max_rows", self.max_rows)), self.max_rows)
        return self._run(name, dialect, sql, params.get("params", {}), limit,
                         commit=operation == "execute")

    def _run(self, name: str, dialect: str, sql: str, binds: dict[str, Any], limit: int,
             *, commit: bool) -> dict[str, Any]:
        sa = _sqlalchemy()
        engine = self._engine(name)
        started = time.perf_counter()
        try:
            statement = sa.text(sql)
        except sa.exc.ArgumentError as exc:
            raise _fail(f"invalid SQL: {exc}") from None
        deadline = time.monotonic() + self.query_timeout
        try:
            with engine.connect() as conn:
                if dialect == "postgresql":
                    out = self._run_postgres(conn, statement, binds, limit, commit=commit)
                else:
                    out = self._run_sqlite(conn, statement, binds, limit, deadline,
                                           commit=commit)
        except sa.exc.OperationalError as exc:
            if time.monotonic() > deadline or "interrupted" in str(exc).lower() or (
                    "statement timeout" in str(exc).lower()):
                raise self._timeout(name) from None
            raise self._error(exc, name) from None
        except sa.exc.SQLAlchemyError as exc:
            raise self._error(exc, name) from None
        except ToolExecutionError:
            raise
        except Exception as exc:  # driver errors outside SQLAlchemy's wrapping (psycopg)
            if "statement timeout" in str(exc).lower():
                raise self._timeout(name) from None
            raise self._error(exc, name) from None
        out = {"connection": name, **out,
               "duration_ms": round((time.perf_counter() - started) * 1000, 3)}
        return out

    def _timeout(self, name: str) -> ToolTimeoutError:
        return ToolTimeoutError(
            _NAME, f"the statement on {name!r} ran past {self.query_timeout:g} s",
            hint="narrow the query or raise the tool's timeout")

    def _collect(self, rows: Iterator[Any], columns: Callable[[], list[str]],
                 limit: int) -> dict[str, Any]:
        """Rows as objects, stopping at ``limit`` rows or ``max_bytes`` of JSON; rows are
        pulled one at a time, so what is left unread is never held in memory."""
        kept: list[dict[str, Any]] = []
        size = 0
        stopped: str | None = None
        names: list[str] | None = None
        for row in rows:
            if len(kept) >= limit:
                stopped = "max_rows"
                break
            if names is None:
                names = columns()
            item = {c: json_safe_value(v) for c, v in zip(names, row, strict=False)}
            size += len(json.dumps(item, ensure_ascii=False)) + 1
            if size > self.max_bytes:
                stopped = "max_bytes"
                break
            kept.append(item)
        out: dict[str, Any] = {"columns": names if names is not None else columns(),
                               "rows": kept, "row_count": len(kept),
                               "truncated": stopped is not None}
        if stopped is not None:
            out["truncated_by"] = stopped
        return out

    def _run_sqlite(self, conn: Any, statement: Any, binds: dict[str, Any], limit: int,
                    deadline: float, *, commit: bool) -> dict[str, Any]:
        # sqlite3 itself refuses more than one statement per execute() call.
        raw = conn.connection.dbapi_connection
        raw.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10000)
        try:
            result = conn.execute(statement, binds)
            out: dict[str, Any] = {}
            if result.returns_rows:
                out = self._collect(iter(result), lambda: [str(c) for c in result.keys()],  # noqa: SIM118
                                    limit)
                result.close()
            if commit:
                out["rowcount"] = result.rowcount
                conn.commit()
            else:
                conn.rollback()
            return out
        finally:
            raw.set_progress_handler(None, 0)

    def _run_postgres(self, conn: Any, statement: Any, binds: dict[str, Any], limit: int,
                      *, commit: bool) -> dict[str, Any]:
        compiled = statement.compile(dialect=conn.dialect)
        values = compiled.construct_params(binds)
        if self.read_only:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        conn.exec_driver_sql(
            f"SET LOCAL statement_timeout = {int(self.query_timeout * 1000)}")
        raw = conn.connection.dbapi_connection
        # Both calls below use the extended query protocol, which carries exactly one
        # statement: "SELECT 1; COMMIT; DELETE ..." is refused by the server, whatever the
        # statement scanner made of it. Reads stream row by row (libpq single-row mode), so
        # a huge result is never buffered whole; leaving the stream early cancels the query.
        with raw.cursor() as cursor:
            def columns() -> list[str]:
                return [str(d.name) for d in cursor.description or ()]

            out: dict[str, Any] = {}
            if commit:
                cursor.execute(str(compiled), values, prepare=True)
                if cursor.description is not None:
                    out = self._collect(iter(cursor), columns, limit)
                out["rowcount"] = cursor.rowcount
                conn.commit()
            else:
                stream = cursor.stream(str(compiled), values)
                try:
                    out = self._collect(stream, columns, limit)
                finally:
                    stream.close()
                conn.rollback()
            return out


    def _sqlite_connect(self, dbapi_connection: Any, _record: Any) -> None:
        """Set up each pooled SQLite connection: no string or blob longer than
        ``max_bytes`` can be built (so one huge value cannot exhaust memory before the
        row limit is checked), and in read-only mode writes are refused."""
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.max_bytes)
        if self.read_only:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA query_only = ON")
            finally:
                cursor.close()
