"""System and communication tools: environment, processes, service checks, system
monitoring, databases and email.

Tools are called directly (``validate`` then ``execute``) like the pipeline calls them,
plus one test runs each through a :class:`System`. Network tests talk only to servers on
127.0.0.1 started here; PostgreSQL tests use the server at 127.0.0.1:5432 (database
``test``) and fail in CI when it is missing.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
import socket
import sqlite3
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from llmspell.core.errors import (
    ConfigurationError,
    SandboxViolationError,
    ToolExecutionError,
    ToolTimeoutError,
    ToolValidationError,
)
from llmspell.core.values import check_json_safe
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.tools.base import SecurityLevel, Tool
from llmspell.runtime.tools.library.database_connector import (
    DatabaseConnectorTool,
    json_safe_value,
    statement_keyword,
)
from llmspell.runtime.tools.library.email_sender import EmailSenderTool, valid_address
from llmspell.runtime.tools.library.environment_reader import MASK, EnvironmentReaderTool
from llmspell.runtime.tools.library.process_executor import ProcessExecutorTool
from llmspell.runtime.tools.library.service_checker import ServiceCheckerTool
from llmspell.runtime.tools.library.system_monitor import SystemMonitorTool
from tests.ci import unavailable
from tests.runtime.tool_helpers import call

PG_URL = "postgresql://postgres:hunter2@127.0.0.1:5432/test"
PY = sys.executable


async def run(tool: Tool, params: dict[str, Any]) -> Any:
    """Validate and execute like the pipeline does (blocking tools on a thread); results
    must be JSON-safe."""
    tool.validate(params)
    if tool.blocking:
        result = await asyncio.to_thread(tool.execute, params)
    else:
        result = tool.execute(params)
    if inspect.isawaitable(result):
        result = await result
    check_json_safe(result)
    return result




def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- environment_reader -----------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_MODE", "test")
    monkeypatch.setenv("APP_API_KEY", "sk-very-secret")
    monkeypatch.setenv("APP_DB_PASSWORD", "pw")
    monkeypatch.setenv("OTHER_TOKEN", "nope")
    monkeypatch.setenv("PLAIN", "plain-value")
    monkeypatch.delenv("APP_MISSING", raising=False)


def test_env_reads_allowed_and_masks_secrets(env: None) -> None:
    tool = EnvironmentReaderTool(allow=["APP_*", "PLAIN"])
    assert call(tool, {"operation": "get", "name": "APP_MODE"}) == {
        "name": "APP_MODE", "present": True, "value": "test", "masked": False}
    got = call(tool, {"operation": "get", "name": "APP_API_KEY"})
    assert got["value"] == MASK and got["masked"] is True
    assert "sk-very-secret" not in str(got)
    assert call(tool, {"operation": "get", "name": "APP_MISSING"})["present"] is False
    many = call(tool, {"operation": "get", "names": ["PLAIN", "APP_DB_PASSWORD"]})
    assert [v["value"] for v in many["variables"]] == ["plain-value", MASK]
    listed = call(tool, {"operation": "list"})["names"]
    assert {"APP_MODE", "APP_API_KEY", "APP_DB_PASSWORD", "PLAIN"} <= set(listed)
    assert "OTHER_TOKEN" not in listed and "PATH" not in listed
    shown = EnvironmentReaderTool(allow=["APP_API_KEY"], reveal_secrets=True)
    assert call(shown, {"operation": "get", "name": "APP_API_KEY"})["value"] == "sk-very-secret"


def test_env_refuses_names_off_the_allow_list(env: None) -> None:
    tool = EnvironmentReaderTool(allow=["APP_*"])
    with pytest.raises(SandboxViolationError, match="OTHER_TOKEN") as info:
        call(tool, {"operation": "get", "name": "OTHER_TOKEN"})
    assert "allow" in (info.value.hint or "") and "APP_*" in (info.value.hint or "")
    with pytest.raises(SandboxViolationError):  # one bad name refuses the whole call
        call(tool, {"operation": "get", "names": ["APP_MODE", "PATH"]})
    with pytest.raises(SandboxViolationError):
        call(EnvironmentReaderTool(), {"operation": "get", "name": "APP_MODE"})
    with pytest.raises(ToolExecutionError, match="needs 'name'"):
        call(tool, {"operation": "get"})
    with pytest.raises(ToolValidationError):
        call(tool, {"operation": "set", "name": "APP_MODE"})
    with pytest.raises(ConfigurationError):
        EnvironmentReaderTool(allow=["A*B"])


# -- process_executor -------------------------------------------------------------------


async def test_process_runs_and_reports() -> None:
    tool = ProcessExecutorTool(allow_commands=[PY])
    assert tool.security_level is SecurityLevel.PRIVILEGED
    out = await run(tool, {"argv": [PY, "-c", "print('hello')"]})
    assert out["stdout"].strip() == "hello" and out["exit_code"] == 0
    assert out["timed_out"] is False and out["duration_ms"] > 0
    failed = await run(tool, {"argv": [PY, "-c", "import sys; sys.stderr.write('bad'); "
                                       "sys.exit(3)"]})
    assert failed["exit_code"] == 3 and failed["stderr"] == "bad"
    echoed = await run(tool, {"argv": [PY, "-c", "import sys; print(sys.stdin.read())"],
                              "stdin": "from stdin"})
    assert echoed["stdout"].strip() == "from stdin"


async def test_process_arguments_are_literal_not_shell() -> None:
    tool = ProcessExecutorTool(allow_commands=[PY])
    nasty = ["; rm -rf /", "$(whoami)", "`id`", "a && b", "| cat", "*"]
    out = await run(tool, {"argv": [PY, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))",
                                    *nasty]})
    assert json.loads(out["stdout"]) == nasty


async def test_process_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_THING", "x")
    monkeypatch.setenv("PASSED_THROUGH", "yes")
    tool = ProcessExecutorTool(allow_commands=[PY], pass_env=["PASSED_THROUGH"])
    script = "import json, os; print(json.dumps(list(os.environ)))"
    out = await run(tool, {"argv": [PY, "-c", script]})
    names = json.loads(out["stdout"])
    assert "SECRET_THING" not in names and "PASSED_THROUGH" in names and "PATH" in names


async def test_process_timeout_kills() -> None:
    # A real timeout is the behaviour here; 2 s leaves a loaded machine time to start
    # Python and print before the kill. Nothing bounds how long the kill took.
    tool = ProcessExecutorTool(allow_commands=[PY], timeout=10)
    out = await run(tool, {"argv": [PY, "-c", "import time; print('start', flush=True); "
                                    "time.sleep(300)"], "timeout": 2})
    assert out["timed_out"] is True and out["exit_code"] != 0
    assert out["error"] == "the program ran longer than 2 s and was killed"
    assert out["stdout"].strip() == "start"


async def test_process_output_is_truncated() -> None:
    tool = ProcessExecutorTool(allow_commands=[PY], max_output=100)
    out = await run(tool, {"argv": [PY, "-c", "print('x' * 100000)"]})
    assert len(out["stdout"]) == 100 and out["stdout_truncated"] is True
    assert out["exit_code"] == 0  # the rest was drained, the child was not blocked


async def test_process_refuses_commands_off_the_allow_list(tmp_path: Path) -> None:
    tool = ProcessExecutorTool(allow_commands=[PY])
    for argv in (["sh", "-c", "echo hi"], ["/bin/sh", "-c", "echo hi"], ["./python"],
                 [str(tmp_path / "python")], [f"{PY} -c 1"]):
        with pytest.raises(SandboxViolationError, match=r"not allowed|relative"):
            await run(tool, {"argv": argv})
    with pytest.raises(ToolValidationError):
        await run(tool, {"argv": []})
    with pytest.raises(ToolValidationError):
        await run(tool, {"argv": "python -c 1"})
    with pytest.raises(ConfigurationError):
        ProcessExecutorTool(allow_commands=[])
    with pytest.raises(ConfigurationError):
        ProcessExecutorTool(allow_commands=["bin/python"])


async def test_process_allowed_by_name_uses_path(tmp_path: Path) -> None:
    name = next((n for n in ("python3", "python") if shutil.which(n)), None)
    if name is None:
        unavailable("no python3 or python on PATH here")
    tool = ProcessExecutorTool(allow_commands=[name], cwd=tmp_path)
    out = await run(tool, {"argv": [name, "-c", "import os; print(os.getcwd())"]})
    assert Path(out["stdout"].strip()).resolve() == tmp_path.resolve()


# -- service_checker --------------------------------------------------------------------


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/health" else 503
        body = b"ok" if status == 200 else b"down"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tcp_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


async def test_service_tcp_up_and_down(tcp_port: int) -> None:
    tool = ServiceCheckerTool(allow_loopback=True)
    up = await run(tool, {"check": "tcp", "host": "127.0.0.1", "port": tcp_port})
    assert up["up"] is True and up["latency_ms"] >= 0 and up["error"] is None
    down = await run(tool, {"check": "tcp", "host": "127.0.0.1", "port": free_port(),
                            "timeout": 2})
    assert down["up"] is False and down["error"]


async def test_service_http_health(http_server: str) -> None:
    tool = ServiceCheckerTool(allow_loopback=True)
    ok = await run(tool, {"check": "http", "url": f"{http_server}/health"})
    assert ok["up"] is True and ok["status"] == 200 and ok["latency_ms"] >= 0
    bad = await run(tool, {"check": "http", "url": f"{http_server}/other"})
    assert bad["up"] is False and bad["status"] == 503 and "503" in bad["error"]
    expected = await run(tool, {"check": "http", "url": f"{http_server}/other",
                                "expected_status": 503})
    assert expected["up"] is True
    gone = await run(tool, {"check": "http", "url": f"http://127.0.0.1:{free_port()}/",
                            "timeout": 2})
    assert gone["up"] is False and gone["status"] is None and gone["error"]


async def test_service_refuses_loopback_by_default(tcp_port: int, http_server: str) -> None:
    tool = ServiceCheckerTool()
    with pytest.raises(SandboxViolationError, match="loopback"):
        await run(tool, {"check": "tcp", "host": "127.0.0.1", "port": tcp_port})
    with pytest.raises(SandboxViolationError, match="loopback"):
        await run(tool, {"check": "tcp", "host": "localhost", "port": tcp_port})
    with pytest.raises(SandboxViolationError):
        await run(tool, {"check": "http", "url": f"{http_server}/health"})
    with pytest.raises(SandboxViolationError, match="link-local"):
        await run(ServiceCheckerTool(allow_loopback=True, allow_private=True),
                  {"check": "tcp", "host": "169.254.169.254", "port": 80})
    with pytest.raises(ToolValidationError):
        await run(tool, {"check": "tcp", "host": "127.0.0.1"})
    with pytest.raises(ToolValidationError):
        await run(tool, {"check": "http", "url": "ftp://example.com/"})
    with pytest.raises(ToolValidationError):
        await run(tool, {"check": "tcp", "host": "x", "port": 70000})


# -- system_monitor ---------------------------------------------------------------------


async def test_system_monitor_shape(tmp_path: Path) -> None:
    tool = SystemMonitorTool(read_roots=[tmp_path], process_users=True)
    out = await run(tool, {"interval": 0.05, "path": str(tmp_path), "top": 3})
    assert set(out) >= {"cpu", "memory", "disk", "load", "processes", "timestamp"}
    assert 0 <= out["cpu"]["percent"] <= 100 and out["cpu"]["count_logical"] >= 1
    assert out["memory"]["total"] > 0 and 0 <= out["memory"]["percent"] <= 100
    assert out["disk"]["path"] == str(tmp_path) and out["disk"]["total"] > 0
    assert 1 <= len(out["processes"]) <= 3
    assert set(out["processes"][0]) == {"pid", "name", "username", "cpu_percent",
                                        "memory_percent", "rss"}
    by_memory = await run(tool, {"metrics": ["processes"], "sort_by": "memory", "top": 5})
    assert set(by_memory) == {"processes", "timestamp"}
    percents = [p["memory_percent"] or 0 for p in by_memory["processes"]]
    assert percents == sorted(percents, reverse=True)


async def test_system_monitor_is_no_oracle_outside_the_read_roots(tmp_path: Path) -> None:
    """Red-team item 16: with no flag the tool answered for /etc/shadow (exists) versus a
    missing path, and listed every process with its user."""
    root = tmp_path / "data" / "root"
    sibling = tmp_path / "data" / "root-secrets"
    root.mkdir(parents=True)
    sibling.mkdir()
    (root / "escape").symlink_to(sibling)
    bare = SystemMonitorTool()
    scoped = SystemMonitorTool(read_roots=[root])
    outside = ("/etc/shadow", "/no/such/path", str(sibling), str(root / ".." / "root-secrets"),
               str(root / "escape"), "relative/path")
    for tool in (bare, scoped):
        for path in outside:
            with pytest.raises(SandboxViolationError, match="not inside the tool's read roots"
                               ) as info:
                await run(tool, {"metrics": ["disk"], "path": path})
            assert "No such file" not in str(info.value)
    inside = await run(scoped, {"metrics": ["disk"], "path": str(root)})
    assert inside["disk"]["path"] == str(root) and inside["disk"]["total"] > 0
    default = await run(bare, {"metrics": ["disk"]})
    assert default["disk"]["path"] == "/"
    listed = await run(bare, {"metrics": ["processes"], "sort_by": "memory", "top": 3})
    assert listed["processes"] and all("username" not in p for p in listed["processes"])
    from llmspell.runtime.tools.library import default_tools

    monitors = {t.tool_name: t for t in default_tools()}
    monitor = monitors["system_monitor"]
    assert isinstance(monitor, SystemMonitorTool)
    assert monitor.process_users is False and monitor.read_roots == ()
    exec_ok = {t.tool_name: t for t in default_tools(process_users=True,
                                                     read_roots=[root])}["system_monitor"]
    assert isinstance(exec_ok, SystemMonitorTool)
    assert exec_ok.process_users is True and exec_ok.read_roots == (root.resolve(),)


async def test_system_monitor_limits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tool = SystemMonitorTool(read_roots=[tmp_path])
    with pytest.raises(ToolValidationError):
        await run(tool, {"interval": 60})
    with pytest.raises(ToolValidationError):
        await run(tool, {"top": 1000})
    with pytest.raises(ToolValidationError):
        await run(tool, {"metrics": ["gpu"]})
    with pytest.raises(ToolExecutionError, match="disk usage"):
        await run(tool, {"metrics": ["disk"], "path": str(tmp_path / "no" / "such")})
    monkeypatch.setitem(sys.modules, "psutil", None)
    with pytest.raises(ConfigurationError) as info:
        await run(tool, {"metrics": ["memory"]})
    assert info.value.hint == "pip install 'llmspell[tools]'"


# -- database_connector -----------------------------------------------------------------


def test_statement_keyword_and_splitting() -> None:
    assert statement_keyword("  -- note\n/* c */ (SELECT 1);  ") == (
        "SELECT", "  -- note\n/* c */ (SELECT 1)")
    assert statement_keyword("select ';' as x")[0] == "SELECT"
    assert statement_keyword("SELECT $$;$$, E'\\';'", "postgresql")[0] == "SELECT"
    assert statement_keyword("SELECT \"a;b\" FROM t -- ;\n")[0] == "SELECT"
    for sql in ("SELECT 1; DROP TABLE t", "SELECT 1;;", "SELECT E'\\'' ; DROP TABLE t; --'"):
        with pytest.raises(SandboxViolationError, match="one SQL statement"):
            statement_keyword(sql, "postgresql")
    for sql in ("", "-- only a comment", "SELECT 'open", "/* open"):
        with pytest.raises(ToolExecutionError):
            statement_keyword(sql)


def test_json_safe_value() -> None:
    import datetime as dt
    import decimal

    assert json_safe_value(dt.date(2024, 1, 2)) == "2024-01-02"
    assert json_safe_value(decimal.Decimal("1.50")) == "1.50"
    assert json_safe_value(b"\x00\x01") == "AAE="
    assert json_safe_value(float("nan")) == "nan"
    assert json_safe_value({"a": [uuid.UUID(int=0)]}) == {"a": [str(uuid.UUID(int=0))]}


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    path = tmp_path / "data base.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price NUMERIC, "
                     "added DATE)")
        conn.executemany("INSERT INTO items (name, price, added) VALUES (?, ?, ?)",
                         [(f"item{i}", i * 1.5, f"2024-01-{i + 1:02d}") for i in range(20)])
    conn.close()
    return f"sqlite:///{path}"


async def test_sqlite_query_parameterised(sqlite_db: str) -> None:
    tool = DatabaseConnectorTool(urls={"main": sqlite_db}, max_rows=5)
    try:
        out = await run(tool, {"operation": "query", "connection": "main",
                               "sql": "SELECT id, name FROM items WHERE name = :name",
                               "params": {"name": "item3"}})
        assert out["rows"] == [{"id": 4, "name": "item3"}] and out["truncated"] is False
        sneaky = await run(tool, {"operation": "query", "connection": "main",
                                  "sql": "SELECT id FROM items WHERE name = :name",
                                  "params": {"name": "x' OR '1'='1"}})
        assert sneaky["rows"] == []
        limited = await run(tool, {"operation": "query", "connection": "main",
                                   "sql": "SELECT * FROM items ORDER BY id"})
        assert limited["row_count"] == 5 and limited["truncated"] is True
        fewer = await run(tool, {"operation": "query", "connection": "main",
                                 "sql": "SELECT * FROM items", "max_rows": 2})
        assert len(fewer["rows"]) == 2
        listed = await run(tool, {"operation": "connections"})
        assert listed["connections"][0]["name"] == "main" and listed["read_only"] is True
    finally:
        tool.close()


async def test_sqlite_read_only_refusals(sqlite_db: str) -> None:
    tool = DatabaseConnectorTool(urls={"main": sqlite_db})
    q = {"operation": "query", "connection": "main"}
    try:
        for sql in ("INSERT INTO items (name) VALUES ('x')", "DROP TABLE items",
                    "PRAGMA query_only = OFF", "ATTACH DATABASE 'x.db' AS x"):
            with pytest.raises(SandboxViolationError, match="only runs SELECT"):
                await run(tool, {**q, "sql": sql})
        with pytest.raises(SandboxViolationError, match="one SQL statement"):
            await run(tool, {**q, "sql": "SELECT 1; DROP TABLE items"})
        with pytest.raises(SandboxViolationError, match="read-only"):
            await run(tool, {"operation": "execute", "connection": "main",
                             "sql": "DELETE FROM items"})
        # A write hidden in a WITH is stopped by the database itself (mode=ro).
        with pytest.raises(ToolExecutionError, match=r"readonly|read-only"):
            await run(tool, {**q, "sql": "WITH x AS (SELECT 1) "
                                         "INSERT INTO items (name) SELECT 'y' FROM x"})
        with pytest.raises(ToolExecutionError, match="no connection named"):
            await run(tool, {**q, "connection": "other", "sql": "SELECT 1"})
        with pytest.raises(ToolValidationError):
            await run(tool, {"operation": "query", "connection": "main"})
        count = await run(tool, {**q, "sql": "SELECT count(*) AS n FROM items"})
        assert count["rows"] == [{"n": 20}]
    finally:
        tool.close()


async def test_sqlite_writes_when_allowed(sqlite_db: str) -> None:
    tool = DatabaseConnectorTool(urls={"main": sqlite_db}, read_only=False)
    try:
        out = await run(tool, {"operation": "execute", "connection": "main",
                               "sql": "UPDATE items SET price = :p WHERE id <= :n",
                               "params": {"p": 0, "n": 3}})
        assert out["rowcount"] == 3
        check = await run(tool, {"operation": "query", "connection": "main",
                                 "sql": "SELECT count(*) AS n FROM items WHERE price = 0"})
        assert check["rows"] == [{"n": 3}]
        with pytest.raises(SandboxViolationError, match="one SQL statement"):
            await run(tool, {"operation": "execute", "connection": "main",
                             "sql": "DELETE FROM items; DROP TABLE items"})
    finally:
        tool.close()


async def test_sqlite_statement_timeout(sqlite_db: str) -> None:
    tool = DatabaseConnectorTool(urls={"main": sqlite_db}, timeout=0.3)
    endless = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
               "SELECT count(*) FROM c")
    try:
        with pytest.raises(ToolTimeoutError, match="ran past"):
            await run(tool, {"operation": "query", "connection": "main", "sql": endless})
        ok = await run(tool, {"operation": "query", "connection": "main", "sql": "SELECT 1 AS x"})
        assert ok["rows"] == [{"x": 1}]  # the connection is still usable
    finally:
        tool.close()


async def test_sqlite_one_statement_by_construction(sqlite_db: str) -> None:
    """The sqlite3 driver itself refuses a second statement, whatever the scanner says."""
    for read_only in (True, False):
        tool = DatabaseConnectorTool(urls={"main": sqlite_db}, read_only=read_only)
        try:
            with pytest.raises(ToolExecutionError, match="one statement at a time"):
                await asyncio.to_thread(tool._run, "main", "sqlite",
                                        "SELECT 1 AS a$x$; DELETE FROM items", {}, 10,
                                        commit=not read_only)
            left = await run(tool, {"operation": "query", "connection": "main",
                                    "sql": "SELECT count(*) AS n FROM items"})
            assert left["rows"] == [{"n": 20}]
        finally:
            tool.close()


async def test_sqlite_result_size_is_bounded(sqlite_db: str) -> None:
    """Red-team item 12: three rows of zeroblob(4e8) took 3.2 GB. A value over max_bytes
    is now a typed error (SQLite refuses to build it), and rows stop at max_bytes of JSON."""
    rows3 = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3) "
    tool = DatabaseConnectorTool(urls={"main": sqlite_db})
    try:
        with pytest.raises(ToolExecutionError, match="larger than the tool's") as info:
            await run(tool, {"operation": "query", "connection": "main",
                             "sql": rows3 + "SELECT zeroblob(400000000) AS b FROM c"})
        assert "max_bytes" in (info.value.hint or "")
    finally:
        tool.close()
    small = DatabaseConnectorTool(urls={"main": sqlite_db}, max_bytes=600)
    try:
        out = await run(small, {"operation": "query", "connection": "main",
                                "sql": "SELECT id, name, price, added FROM items"})
        assert out["truncated"] is True and out["truncated_by"] == "max_bytes"
        assert 0 < out["row_count"] < 20
        assert len(json.dumps(out["rows"])) <= 600
        whole = await run(small, {"operation": "query", "connection": "main",
                                  "sql": "SELECT id FROM items", "max_rows": 5})
        assert whole["truncated_by"] == "max_rows" and whole["row_count"] == 5
        fits = await run(small, {"operation": "query", "connection": "main",
                                 "sql": "SELECT id FROM items WHERE id < 3"})
        assert fits["truncated"] is False and "truncated_by" not in fits
    finally:
        small.close()
    with pytest.raises(ConfigurationError, match="max_bytes"):
        DatabaseConnectorTool(urls={"main": sqlite_db}, max_bytes=0)


def test_database_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="read-only"):
        DatabaseConnectorTool(urls={"m": "mysql://u:p@example.com/db"})
    with pytest.raises(ConfigurationError, match="not a valid"):
        DatabaseConnectorTool(urls={"m": "not a url"})
    for driver in ("psycopg2", "pg8000", "asyncpg"):
        with pytest.raises(ConfigurationError, match="psycopg 3 only"):
            DatabaseConnectorTool(urls={"m": f"postgresql+{driver}://u@127.0.0.1/db"},
                                  read_only=driver != "pg8000")
    with pytest.raises(ConfigurationError):
        DatabaseConnectorTool(urls={})
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    with pytest.raises(ConfigurationError) as info:
        DatabaseConnectorTool(urls={"m": "sqlite://"})
    assert info.value.hint == "pip install 'llmspell[tools]'"


@pytest.fixture
def pg_table() -> Iterator[str]:
    """A uniquely named table in the local PostgreSQL, dropped afterwards."""
    import sqlalchemy as sa

    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test",
                              connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        engine.dispose()
        unavailable(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc.orig}")
    table = f"llmspell_t_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table} (id serial PRIMARY KEY, name text, "
                             "price numeric(10,2), at timestamptz DEFAULT now())")
        conn.exec_driver_sql(f"INSERT INTO {table} (name, price) VALUES ('a', 1.25), "
                             "('b', 2.50), ('c', 3.75)")
    try:
        yield table
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()


async def test_postgres_read_only(pg_table: str) -> None:
    tool = DatabaseConnectorTool(urls={"pg": PG_URL}, max_rows=2)
    q = {"operation": "query", "connection": "pg"}
    try:
        out = await run(tool, {**q, "sql": f"SELECT name, price, at FROM {pg_table} "
                                           "WHERE price > :p ORDER BY id", "params": {"p": 1}})
        assert [r["name"] for r in out["rows"]] == ["a", "b"] and out["truncated"] is True
        assert out["rows"][0]["price"] == "1.25" and isinstance(out["rows"][0]["at"], str)
        for sql in (f"INSERT INTO {pg_table} (name) VALUES ('x')", f"DROP TABLE {pg_table}"):
            with pytest.raises(SandboxViolationError):
                await run(tool, {**q, "sql": sql})
        with pytest.raises(SandboxViolationError, match="one SQL statement"):
            await run(tool, {**q, "sql": f"SELECT 1; DROP TABLE {pg_table}"})
        # Writes that pass the keyword check are stopped by the read-only transaction.
        for sql in (f"WITH d AS (DELETE FROM {pg_table} RETURNING id) SELECT * FROM d",
                    f"SELECT * INTO {pg_table}_copy FROM {pg_table}"):
            with pytest.raises(ToolExecutionError, match="read-only transaction") as info:
                await run(tool, {**q, "sql": sql})
            assert "hunter2" not in str(info.value)
        left = await run(tool, {**q, "sql": f"SELECT count(*) AS n FROM {pg_table}"})
        assert left["rows"] == [{"n": 3}]
        listed = await run(tool, {"operation": "connections"})
        assert "hunter2" not in str(listed) and "***" in listed["connections"][0]["url"]
    finally:
        tool.close()


async def test_postgres_read_only_survives_dollar_identifier_commit(pg_table: str) -> None:
    """Red-team item 2: ``$`` inside identifiers fooled the statement scanner into seeing a
    dollar quote, and with no bind parameters psycopg ran every statement, so a COMMIT ended
    the read-only transaction and the DELETE emptied the table."""
    attack = f"SELECT 1 AS a$x$; COMMIT; DELETE FROM {pg_table}; SELECT 1 AS b$x$"
    tool = DatabaseConnectorTool(urls={"pg": PG_URL})
    q = {"operation": "query", "connection": "pg"}
    try:
        with pytest.raises(SandboxViolationError, match="one SQL statement"):
            await run(tool, {**q, "sql": attack})
        # Read-only holds without the scanner too: the driver sends one statement per call
        # (extended protocol) and the session defaults to read-only transactions.
        for sql in (attack, f"COMMIT; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; "
                            f"DELETE FROM {pg_table}"):
            with pytest.raises(ToolExecutionError, match="multiple commands"):
                await asyncio.to_thread(tool._run, "pg", "postgresql",
                                        sql, {}, 10, commit=False)
        for sql in (f"DELETE FROM {pg_table}", "COMMIT"):
            with pytest.raises(ToolExecutionError):
                await asyncio.to_thread(tool._run, "pg", "postgresql",
                                        sql, {}, 10, commit=False)
        left = await run(tool, {**q, "sql": f"SELECT count(*) AS n FROM {pg_table}"})
        assert left["rows"] == [{"n": 3}]
        dollar = await run(tool, {**q, "sql": "SELECT 1 AS a$x$, $q$;$q$ AS b"})
        assert dollar["rows"] == [{"a$x$": 1, "b": ";"}]
    finally:
        tool.close()
    writer = DatabaseConnectorTool(urls={"pg": PG_URL}, read_only=False)
    try:  # writes also go one statement per call (prepared, extended protocol)
        with pytest.raises(ToolExecutionError, match="multiple commands"):
            await asyncio.to_thread(writer._run, "pg", "postgresql",
                                    f"DELETE FROM {pg_table} WHERE id = 1; "
                                    f"DELETE FROM {pg_table}", {}, 10, commit=True)
        left = await run(writer, {**q, "sql": f"SELECT count(*) AS n FROM {pg_table}"})
        assert left["rows"] == [{"n": 3}]
    finally:
        writer.close()


async def test_postgres_result_size_is_bounded(pg_table: str) -> None:
    """Rows stream one at a time and stop at max_bytes; the rest is never fetched."""
    tool = DatabaseConnectorTool(urls={"pg": PG_URL}, max_bytes=50_000)
    q = {"operation": "query", "connection": "pg"}
    try:
        out = await run(tool, {**q, "sql": "SELECT repeat('x', 1000) AS s "
                                           "FROM generate_series(1, 10000000)"})
        assert out["truncated_by"] == "max_bytes" and 0 < out["row_count"] < 50
        assert out["columns"] == ["s"]
        empty = await run(tool, {**q, "sql": f"SELECT name FROM {pg_table} WHERE false"})
        assert empty["rows"] == [] and empty["truncated"] is False
        again = await run(tool, {**q, "sql": "SELECT '%' AS p, :v AS v", "params": {"v": 2}})
        assert again["rows"] == [{"p": "%", "v": 2}]  # the connection is still usable
    finally:
        tool.close()
    slow = DatabaseConnectorTool(urls={"pg": PG_URL}, timeout=0.5)
    try:  # the server's statement_timeout, raised by psycopg outside SQLAlchemy
        with pytest.raises(ToolTimeoutError, match="ran past"):
            await run(slow, {**q, "sql": "SELECT pg_sleep(30)"})
        assert (await run(slow, {**q, "sql": "SELECT 1 AS x"}))["rows"] == [{"x": 1}]
    finally:
        slow.close()


async def test_postgres_writes_and_password_masking(pg_table: str) -> None:
    tool = DatabaseConnectorTool(urls={"pg": PG_URL}, read_only=False)
    try:
        out = await run(tool, {"operation": "execute", "connection": "pg",
                               "sql": f"INSERT INTO {pg_table} (name, price) "
                                      "VALUES (:n, :p) RETURNING id",
                               "params": {"n": "d'; DROP TABLE x; --", "p": 9.5}})
        assert out["rowcount"] == 1 and len(out["rows"]) == 1
        back = await run(tool, {"operation": "query", "connection": "pg",
                                "sql": f"SELECT name FROM {pg_table} WHERE price = 9.5"})
        assert back["rows"] == [{"name": "d'; DROP TABLE x; --"}]
        with pytest.raises(ToolExecutionError) as info:
            await run(tool, {"operation": "query", "connection": "pg",
                             "sql": "SELECT * FROM no_such_table_here"})
        assert "hunter2" not in str(info.value) and "***" in str(info.value)
    finally:
        tool.close()
    unreachable = DatabaseConnectorTool(
        urls={"pg": f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/test"}, timeout=3)
    with pytest.raises(ToolExecutionError) as info:
        await run(unreachable, {"operation": "query", "connection": "pg", "sql": "SELECT 1"})
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(info.value.__cause__)
    unreachable.close()


# -- email_sender -----------------------------------------------------------------------


class _Inbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[_Inbox, int]]:
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


async def test_email_arrives(smtp_server: tuple[_Inbox, int]) -> None:
    inbox, port = smtp_server
    tool = EmailSenderTool(host="127.0.0.1", port=port, tls="none", from_addr="bot@example.com",
                           allow_loopback=True)
    out = await run(tool, {"to": ["alice@example.com"], "cc": ["bob@example.com"],
                           "bcc": ["carol@example.com"], "subject": "Build finished",
                           "text": "All green.", "html": "<p>All <b>green</b>.</p>"})
    assert out["sent"] is True and out["recipients"] == 3 and out["refused"] == []
    (envelope,) = inbox.envelopes
    assert envelope.mail_from == "bot@example.com"
    assert envelope.rcpt_tos == ["alice@example.com", "bob@example.com", "carol@example.com"]
    content = envelope.content.decode()
    assert "Subject: Build finished" in content and "All green." in content
    assert "<b>green</b>" in content and "carol@example.com" not in content  # bcc hidden


async def test_email_limits_and_validation(smtp_server: tuple[_Inbox, int]) -> None:
    inbox, port = smtp_server
    tool = EmailSenderTool(host="127.0.0.1", port=port, tls="none", from_addr="bot@example.com",
                           allow_loopback=True, max_recipients=2)
    with pytest.raises(SandboxViolationError, match="limit of 2"):
        await run(tool, {"to": ["a@example.com", "b@example.com", "c@example.com"],
                         "text": "x"})
    for bad in ("not-an-address", "a@b", "x@example.com\r\nBcc: evil@example.com",
                "Name <a@example.com>"):
        with pytest.raises((ToolExecutionError, ToolValidationError)):
            await run(tool, {"to": [bad], "text": "x"})
    with pytest.raises(ToolValidationError):
        await run(tool, {"to": ["a@example.com"], "subject": "a\r\nBcc: evil@example.com",
                         "text": "x"})
    with pytest.raises(ToolValidationError):  # no body
        await run(tool, {"to": ["a@example.com"], "subject": "hi"})
    assert inbox.envelopes == []
    assert valid_address("first.last+tag@sub.example.org")


async def test_email_refuses_loopback_and_hides_password(
        smtp_server: tuple[_Inbox, int]) -> None:
    _, port = smtp_server
    refused = EmailSenderTool(host="127.0.0.1", port=port, tls="none",
                              from_addr="bot@example.com")
    with pytest.raises(SandboxViolationError, match="loopback"):
        await run(refused, {"to": ["a@example.com"], "text": "x"})
    with_password = EmailSenderTool(host="127.0.0.1", port=port, tls="none",
                                    from_addr="bot@example.com", allow_loopback=True,
                                    username="bot", password="hunter2-smtp")
    assert "hunter2-smtp" not in repr(with_password)
    with pytest.raises(ToolExecutionError) as info:  # the server offers no AUTH
        await run(with_password, {"to": ["a@example.com"], "text": "x"})
    assert "hunter2-smtp" not in str(info.value)
    starttls = EmailSenderTool(host="127.0.0.1", port=port, from_addr="bot@example.com",
                               allow_loopback=True)
    with pytest.raises(ToolExecutionError, match=r"STARTTLS|does not support"):
        await run(starttls, {"to": ["a@example.com"], "text": "x"})
    with pytest.raises(ConfigurationError):
        EmailSenderTool(host="h", port=25, from_addr="bad", tls="none")
    with pytest.raises(ConfigurationError):
        EmailSenderTool(host="h", port=25, from_addr="a@example.com", username="u")


# -- through the runtime ----------------------------------------------------------------


async def test_each_tool_through_the_system(
        monkeypatch: pytest.MonkeyPatch, sqlite_db: str, tcp_port: int,
        smtp_server: tuple[_Inbox, int]) -> None:
    monkeypatch.setenv("APP_MODE", "runtime")
    inbox, smtp_port = smtp_server
    database = DatabaseConnectorTool(urls={"main": sqlite_db})
    tools: list[Tool] = [
        EnvironmentReaderTool(allow=["APP_*"]),
        ProcessExecutorTool(allow_commands=[PY]),
        ServiceCheckerTool(allow_loopback=True),
        SystemMonitorTool(),
        database,
        EmailSenderTool(host="127.0.0.1", port=smtp_port, tls="none",
                        from_addr="bot@example.com", allow_loopback=True),
    ]
    async with System(SystemConfig(store="memory")) as system:
        for tool in tools:
            system.tools.register(tool)
        env_out = await system.tools.execute("environment_reader",
                                             {"operation": "get", "name": "APP_MODE"})
        assert env_out["value"] == "runtime"
        proc = await system.tools.execute("process_executor",
                                          {"argv": [PY, "-c", "print(6 * 7)"]})
        assert proc["stdout"].strip() == "42"
        check = await system.tools.execute("service_checker", {"check": "tcp",
                                                               "host": "127.0.0.1",
                                                               "port": tcp_port})
        assert check["up"] is True
        monitor = await system.tools.execute("system_monitor", {"metrics": ["memory"]})
        assert monitor["memory"]["total"] > 0
        rows = await system.tools.execute("database_connector", {
            "operation": "query", "connection": "main",
            "sql": "SELECT name FROM items WHERE id = :id", "params": {"id": 1}})
        assert rows["rows"] == [{"name": "item0"}]
        sent = await system.tools.execute("email_sender", {"to": ["a@example.com"],
                                                           "subject": "hi", "text": "body"})
        assert sent["sent"] is True and len(inbox.envelopes) == 1
        with pytest.raises(SandboxViolationError):
            await system.tools.execute("environment_reader",
                                       {"operation": "get", "name": "HOME"})
    database.close()


def test_read_only_query_refuses_explain_analyze(tmp_path: Path) -> None:
    from llmspell.errors import SandboxViolationError
    from llmspell.runtime.tools.library.database_connector import DatabaseConnectorTool

    tool = DatabaseConnectorTool(urls={"db": f"sqlite:///{tmp_path / 'x.db'}"})
    for sql in ("EXPLAIN ANALYZE SELECT 1", "explain (analyze) select 1",
                "EXPLAIN ANALYSE SELECT 1"):
        with pytest.raises(SandboxViolationError, match="ANALYZE"):
            tool.execute({"operation": "query", "connection": "db", "sql": sql})
