"""The data and file tools: CSV analyzer, GraphQL client, archives, file converter, file
search and file watcher.

Tools are called directly (``validate`` then ``execute``), the way the pipeline calls them,
and once each through a running system. GraphQL tests talk only to a local server on
127.0.0.1 started here.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.core.clock import ManualClock
from llmspell.core.errors import (
    ConfigurationError,
    SandboxViolationError,
    ToolExecutionError,
    ToolValidationError,
)
from llmspell.events import UniversalEvent
from llmspell.runtime import System, SystemConfig
from llmspell.runtime.tools.library.archive_tool import ArchiveHandlerTool
from llmspell.runtime.tools.library.csv_tool import CsvAnalyzerTool
from llmspell.runtime.tools.library.file_converter import FileConverterTool
from llmspell.runtime.tools.library.file_search import FileSearchTool, glob_regex
from llmspell.runtime.tools.library.file_watcher import FileWatcherTool
from llmspell.runtime.tools.library.graphql_tool import GraphqlQueryTool
from tests.runtime.tool_helpers import call, run

# -- csv_analyzer ------------------------------------------------------------------------

PEOPLE = "name,age,city\nAda,36,London\nAlan,41,Wilmslow\nGrace,85,New York\nLinus,,Helsinki\n"


@pytest.fixture
def csv_tool() -> CsvAnalyzerTool:
    return CsvAnalyzerTool(max_bytes=10_000, max_rows=50)


def test_csv_stats(csv_tool: CsvAnalyzerTool) -> None:
    result = call(csv_tool, {"operation": "stats", "csv": PEOPLE, "top": 2})
    assert result["rows"] == 4
    age = next(c for c in result["columns"] if c["name"] == "age")
    assert age == {"name": "age", "count": 3, "empty": 1, "distinct": 3, "numeric": True,
                   "top": [{"value": "36", "count": 1}, {"value": "41", "count": 1}],
                   "min": 36, "max": 85, "mean": pytest.approx(54.0), "median": 41}
    city = next(c for c in result["columns"] if c["name"] == "city")
    assert city["numeric"] is False and "mean" not in city and city["distinct"] == 4


@pytest.mark.parametrize(("op", "value", "names"), [
    ("==", "Ada", ["Ada"]),
    ("!=", "Ada", ["Alan", "Grace", "Linus"]),
    (">", 40, ["Alan", "Grace"]),
    (">=", "41", ["Alan", "Grace"]),
    ("<", 41, ["Ada"]),
    ("<=", 41.0, ["Ada", "Alan"]),
    ("contains", "l", ["Alan"]),
])
def test_csv_filter(csv_tool: CsvAnalyzerTool, op: str, value: Any, names: list[str]) -> None:
    column = "name" if op in ("==", "!=", "contains") else "age"
    result = call(csv_tool, {"operation": "filter", "csv": PEOPLE, "column": column,
                             "op": op, "value": value, "columns": ["name"]})
    assert [r["name"] for r in result["rows"]] == names
    assert result["matched"] == len(names) and result["columns"] == ["name"]


def test_csv_convert_head_and_dialect(csv_tool: CsvAnalyzerTool) -> None:
    text = "a;b\n1;'x;y'\n2;z\n"
    records = call(csv_tool, {"operation": "convert", "csv": text, "delimiter": ";",
                              "quotechar": "'"})
    assert records["records"] == [{"a": "1", "b": "x;y"}, {"a": "2", "b": "z"}]
    out = call(csv_tool, {"operation": "convert", "csv": PEOPLE, "format": "csv",
                          "columns": ["city", "name"], "limit": 2})
    assert out["csv"] == "city,name\nLondon,Ada\nWilmslow,Alan\n" and out["truncated"]
    head = call(csv_tool, {"operation": "head", "csv": "1,2\n3,4\n", "has_header": False,
                           "limit": 1})
    assert head == {"columns": ["col1", "col2"], "rows": [{"col1": "1", "col2": "2"}],
                    "total_rows": 2}


def test_csv_bad_input(csv_tool: CsvAnalyzerTool) -> None:
    with pytest.raises(ToolValidationError):
        csv_tool.validate({"operation": "filter", "csv": PEOPLE, "column": "age"})
    with pytest.raises(ToolValidationError):
        csv_tool.validate({"operation": "stats", "csv": PEOPLE, "delimiter": ";;"})
    with pytest.raises(ToolExecutionError, match="no column 'nope'"):
        call(csv_tool, {"operation": "filter", "csv": PEOPLE, "column": "nope", "op": "==",
                        "value": 1})
    with pytest.raises(ToolExecutionError, match="duplicate column"):
        call(csv_tool, {"operation": "head", "csv": "a,a\n1,2\n"})
    with pytest.raises(ToolExecutionError, match="row 2 has 3 fields"):
        call(csv_tool, {"operation": "head", "csv": "a,b\n1,2,3\n"})
    with pytest.raises(ToolExecutionError, match="invalid CSV"):
        call(csv_tool, {"operation": "head", "csv": 'a,b\n"1,2\n'})
    with pytest.raises(ToolExecutionError, match="no rows"):
        call(csv_tool, {"operation": "head", "csv": ""})


def test_csv_limits(csv_tool: CsvAnalyzerTool) -> None:
    with pytest.raises(ToolExecutionError, match="more than the limit of 10000"):
        call(csv_tool, {"operation": "head", "csv": "a\n" + "x\n" * 6000})
    with pytest.raises(ToolExecutionError, match="more than 50 rows"):
        call(csv_tool, {"operation": "head", "csv": "a\n" + "1\n" * 51})
    assert call(csv_tool, {"operation": "head", "csv": "a\n" + "1\n" * 50})["total_rows"] == 50
    with pytest.raises(ToolExecutionError, match="more than 50 rows"):
        call(csv_tool, {"operation": "head", "csv": "1\n" * 51, "has_header": False})


_cell = st.text(st.characters(min_codepoint=1, max_codepoint=0xD7FF), max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_cell, _cell), min_size=1, max_size=8))
def test_csv_json_round_trip(rows: list[tuple[str, str]]) -> None:
    records = [{"k": a, "v": b} for a, b in rows]
    out = io.StringIO()
    writer = csv.DictWriter(out, ["k", "v"], lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writeheader()
    writer.writerows(records)
    tool = CsvAnalyzerTool()
    result = call(tool, {"operation": "convert", "csv": out.getvalue()})
    assert result["records"] == records
    back = call(tool, {"operation": "convert", "csv": out.getvalue(), "format": "csv"})
    assert call(tool, {"operation": "convert", "csv": back["csv"]})["records"] == records


# -- graphql_query -----------------------------------------------------------------------


class _GraphqlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, value: Any, status: int = 200, content_type: str = "application/json",
              ) -> None:
        body = json.dumps(value).encode() if content_type.endswith("json") else value
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = json.loads(raw)
        path = self.path
        if path == "/graphql":
            self._json({"data": {"echo": request,
                                 "auth": self.headers.get("Authorization"),
                                 "trace": self.headers.get("X-Trace")}})
        elif path == "/errors":
            self._json({"data": None, "errors": [{"message": "Cannot query field 'nope'"}]})
        elif path == "/http-error":
            self._json({"errors": [{"message": "bad token"}]}, 401)
        elif path == "/html":
            self._json(b"<html>hi</html>", 200, "text/html")
        elif path == "/big":
            self._json({"data": {"x": "y" * 5000}})
        else:
            self._json({"error": "not found"}, 404)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def gql_server() -> Iterator[str]:
    httpd = _Server(("127.0.0.1", 0), _GraphqlHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def gql() -> GraphqlQueryTool:
    return GraphqlQueryTool(allow_loopback=True, timeout=5, max_bytes=2000)


async def test_graphql_query(gql_server: str, gql: GraphqlQueryTool) -> None:
    result = await run(gql, {"url": f"{gql_server}/graphql", "query": "query Q($n: Int) { n }",
                             "variables": {"n": 3}, "operation_name": "Q",
                             "bearer_token": "s3cret", "headers": {"X-Trace": "t1"}})
    assert result["errors"] == [] and result["status"] == 200
    data = result["data"]
    assert data["echo"] == {"query": "query Q($n: Int) { n }", "variables": {"n": 3},
                            "operationName": "Q"}
    assert data["auth"] == "Bearer s3cret" and data["trace"] == "t1"


async def test_graphql_errors_are_results(gql_server: str, gql: GraphqlQueryTool) -> None:
    result = await run(gql, {"url": f"{gql_server}/errors", "query": "{ nope }"})
    assert result["data"] is None
    assert result["errors"] == [{"message": "Cannot query field 'nope'"}]


@pytest.mark.parametrize(("path", "message"), [
    ("/http-error", "HTTP 401 Unauthorized: bad token"),
    ("/missing", "HTTP 404"),
    ("/html", "not a GraphQL response"),
    ("/big", "more than the limit of 2000"),
])
async def test_graphql_http_failures(gql_server: str, gql: GraphqlQueryTool, path: str,
                                     message: str) -> None:
    with pytest.raises(ToolExecutionError, match=message) as caught:
        await run(gql, {"url": f"{gql_server}{path}", "query": "{ a }"})
    assert caught.value.tool == "graphql_query"


async def test_graphql_refuses_internal_addresses(gql_server: str) -> None:
    guarded = GraphqlQueryTool()
    for url in (f"{gql_server}/graphql", "http://10.0.0.1/graphql",
                "http://169.254.169.254/graphql", "http://[::1]:9/graphql"):
        with pytest.raises(SandboxViolationError) as caught:
            await run(guarded, {"url": url, "query": "{ a }"})
        assert caught.value.tool == "graphql_query"
    with pytest.raises(SandboxViolationError, match="private"):
        await run(GraphqlQueryTool(allow_loopback=True), {"url": "http://192.168.1.1/",
                                                         "query": "{ a }"})


def test_graphql_bad_params(gql: GraphqlQueryTool) -> None:
    for bad in ({"url": "ftp://x/", "query": "{ a }"}, {"url": "http://x/"},
                {"url": "http://x/", "query": ""},
                {"url": "http://x/", "query": "{ a }", "variables": [1]}):
        with pytest.raises(ToolValidationError):
            gql.validate(bad)


# -- archive_handler -----------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox"
    root.mkdir()
    (root / "docs").mkdir()
    (root / "docs" / "a.txt").write_text("alpha\n")
    (root / "docs" / "sub").mkdir()
    (root / "docs" / "sub" / "b.txt").write_text("beta\n")
    (tmp_path / "secret.txt").write_text("top secret\n")
    return root


@pytest.mark.parametrize(("archive", "fmt"), [("out.zip", "zip"), ("out.tar", "tar"),
                                             ("out.tar.gz", "tar.gz"), ("out.tgz", "tar.gz")])
def test_archive_create_list_extract(sandbox: Path, archive: str, fmt: str) -> None:
    tool = ArchiveHandlerTool(sandbox)
    created = call(tool, {"operation": "create", "archive": archive, "sources": ["docs"]})
    assert created["format"] == fmt
    assert created["members"] == ["docs", "docs/sub", "docs/a.txt", "docs/sub/b.txt"]
    listed = call(tool, {"operation": "list", "archive": archive})
    files = {m["name"].rstrip("/"): m for m in listed["members"]}
    assert files["docs/a.txt"]["size"] == 6 and files["docs/sub"]["type"] == "dir"
    result = call(tool, {"operation": "extract", "archive": archive, "destination": "out"})
    assert sorted(result["extracted"]) == ["docs/a.txt", "docs/sub/b.txt"]
    assert (sandbox / "out" / "docs" / "sub" / "b.txt").read_text() == "beta\n"
    with pytest.raises(ToolExecutionError, match="exists"):
        call(tool, {"operation": "extract", "archive": archive, "destination": "out"})
    again = call(tool, {"operation": "extract", "archive": archive, "destination": "out",
                        "overwrite": True})
    assert again["bytes"] == 11


def _zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as handle:
        for name, data in members.items():
            handle.writestr(name, data)


def _tar(path: Path, members: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w") as handle:
        for info in members:
            data = io.BytesIO(b"x" * info.size) if info.isreg() else None
            handle.addfile(info, data)


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0,
          ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size
    return info


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt",
                                  "C:/evil.txt", "..\\evil.txt"])
def test_archive_refuses_traversal(sandbox: Path, name: str) -> None:
    tool = ArchiveHandlerTool(sandbox)
    _zip(sandbox / "bad.zip", {"ok.txt": b"fine", name: b"evil"})
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "extract", "archive": "bad.zip", "destination": "x"})
    assert not (sandbox / "x" / "ok.txt").exists()  # nothing is written before the checks
    assert not (sandbox.parent / "evil.txt").exists()


@pytest.mark.parametrize(("member", "message"), [
    (_info("link", tarfile.SYMTYPE, "../../secret.txt"), "outside the destination"),
    (_info("link", tarfile.SYMTYPE, "/etc/passwd"), "outside the destination"),
    (_info("hard", tarfile.LNKTYPE, "../secret.txt"), "outside the destination"),
    (_info("dev", tarfile.CHRTYPE), "device file"),
    (_info("fifo", tarfile.FIFOTYPE), "device file"),
])
def test_archive_refuses_unsafe_tar_members(sandbox: Path, member: tarfile.TarInfo,
                                            message: str) -> None:
    tool = ArchiveHandlerTool(sandbox)
    _tar(sandbox / "bad.tar", [_info("ok.txt", size=3), member])
    with pytest.raises(SandboxViolationError, match=message):
        call(tool, {"operation": "extract", "archive": "bad.tar"})
    assert not (sandbox / "ok.txt").exists()


@pytest.mark.parametrize(("mode", "content", "message"), [
    (0o120777, b"../../secret.txt", "outside the destination"),
    (0o020644, b"", "device file"),
])
def test_archive_refuses_unsafe_zip_members(sandbox: Path, mode: int, content: bytes,
                                            message: str) -> None:
    info = zipfile.ZipInfo("odd")
    info.external_attr = mode << 16
    with zipfile.ZipFile(sandbox / "odd.zip", "w") as handle:
        handle.writestr(info, content)
    tool = ArchiveHandlerTool(sandbox)
    assert call(tool, {"operation": "list", "archive": "odd.zip"})["members"][0]["type"] in (
        "symlink", "other")
    with pytest.raises(SandboxViolationError, match=message):
        call(tool, {"operation": "extract", "archive": "odd.zip"})
    assert not os.path.lexists(sandbox / "odd")


def test_archive_skips_inner_links_and_never_writes_through_symlinks(sandbox: Path) -> None:
    tool = ArchiveHandlerTool(sandbox)
    _tar(sandbox / "links.tar", [_info("ok.txt", size=3),
                                 _info("inner", tarfile.SYMTYPE, "ok.txt")])
    result = call(tool, {"operation": "extract", "archive": "links.tar", "destination": "d"})
    assert result["extracted"] == ["ok.txt"] and result["skipped_links"] == ["inner"]
    assert not os.path.lexists(sandbox / "d" / "inner")
    # A symlink already in the sandbox cannot redirect a member outside.
    (sandbox / "escape").symlink_to(sandbox.parent)
    _zip(sandbox / "through.zip", {"escape/pwned.txt": b"x"})
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "extract", "archive": "through.zip"})
    assert not (sandbox.parent / "pwned.txt").exists()
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "extract", "archive": "through.zip", "destination": "escape"})


def test_archive_bombs(sandbox: Path) -> None:
    tool = ArchiveHandlerTool(sandbox, max_members=5, max_total_bytes=1000)
    _zip(sandbox / "big.zip", {"zeros.bin": b"\0" * 100_000})  # compresses to ~100 bytes
    assert (sandbox / "big.zip").stat().st_size < 1000
    with pytest.raises(ToolExecutionError, match="more than the limit of 1000"):
        call(tool, {"operation": "extract", "archive": "big.zip"})
    _zip(sandbox / "many.zip", {f"f{i}.txt": b"" for i in range(6)})
    with pytest.raises(ToolExecutionError, match="more than 5 members"):
        call(tool, {"operation": "list", "archive": "many.zip"})
    _tar(sandbox / "many.tar", [_info(f"f{i}") for i in range(6)])
    with pytest.raises(ToolExecutionError, match="more than 5 members"):
        call(tool, {"operation": "extract", "archive": "many.tar"})
    assert not (sandbox / "f0").exists() and not (sandbox / "zeros.bin").exists()


def test_archive_member_lying_about_its_size(sandbox: Path) -> None:
    """A zip member that declares less than it holds fails extraction (zipfile stops at the
    declared size and the CRC check fails), and what was written is removed."""
    tool = ArchiveHandlerTool(sandbox, max_total_bytes=1000)
    # Declared sizes within the limit, but the zip's central directory lies: 10 bytes each.
    data = b"y" * 2000
    with zipfile.ZipFile(sandbox / "liar.zip", "w") as handle:
        handle.writestr("a.bin", data)
    raw = (sandbox / "liar.zip").read_bytes()
    # Patch the declared uncompressed size in the central directory entry (offset 24).
    cd = raw.rfind(b"PK\x01\x02")
    patched = raw[:cd + 24] + (10).to_bytes(4, "little") + raw[cd + 28:]
    (sandbox / "liar.zip").write_bytes(patched)
    with pytest.raises(ToolExecutionError):
        call(tool, {"operation": "extract", "archive": "liar.zip", "destination": "z"})
    assert not (sandbox / "z" / "a.bin").exists()
    assert list((sandbox / "z").iterdir()) == []


def test_archive_bad_input(sandbox: Path) -> None:
    tool = ArchiveHandlerTool(sandbox)
    with pytest.raises(ToolValidationError):
        tool.validate({"operation": "create", "archive": "a.zip"})
    with pytest.raises(ToolValidationError):
        tool.validate({"operation": "list", "archive": "a.zip", "format": "rar"})
    with pytest.raises(ToolExecutionError, match="cannot tell the archive format"):
        call(tool, {"operation": "list", "archive": "docs/a.txt"})
    with pytest.raises(ToolExecutionError, match="not a valid zip"):
        call(tool, {"operation": "list", "archive": "docs/a.txt", "format": "zip"})
    with pytest.raises(ToolExecutionError, match="no archive file"):
        call(tool, {"operation": "list", "archive": "none.zip"})
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "create", "archive": "x.zip", "sources": ["../secret.txt"]})
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "create", "archive": "/tmp/x.zip", "sources": ["docs"]})
    (sandbox / "out").symlink_to(sandbox.parent)
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "create", "archive": "out/x.zip", "sources": ["docs"]})


def test_archive_create_leaves_symlinks_out(sandbox: Path) -> None:
    (sandbox / "docs" / "leak").symlink_to(sandbox.parent / "secret.txt")
    tool = ArchiveHandlerTool(sandbox)
    created = call(tool, {"operation": "create", "archive": "d.zip", "sources": ["docs"]})
    assert "docs/leak" not in created["members"]
    with zipfile.ZipFile(sandbox / "d.zip") as handle:
        assert b"top secret" not in b"".join(handle.read(n) for n in handle.namelist())


# -- file_converter ----------------------------------------------------------------------


def test_convert_encoding_and_line_endings(sandbox: Path) -> None:
    tool = FileConverterTool(sandbox)
    (sandbox / "latin.txt").write_bytes("café\r\nnaïve\rend\n".encode("latin-1"))
    result = call(tool, {"operation": "encoding", "source": "latin.txt",
                         "destination": "utf8.txt", "from_encoding": "latin-1"})
    assert result["bytes_written"] == len("café\r\nnaïve\rend\n".encode())
    assert (sandbox / "utf8.txt").read_bytes() == "café\r\nnaïve\rend\n".encode()
    call(tool, {"operation": "line_endings", "source": "utf8.txt", "line_ending": "lf",
                "overwrite": True})
    assert (sandbox / "utf8.txt").read_bytes() == "café\nnaïve\nend\n".encode()
    result = call(tool, {"operation": "line_endings", "source": "utf8.txt",
                         "destination": "crlf.txt", "line_ending": "crlf"})
    assert result["line_breaks"] == 3
    assert (sandbox / "crlf.txt").read_bytes() == "café\r\nnaïve\r\nend\r\n".encode()


def test_convert_formats(sandbox: Path) -> None:
    tool = FileConverterTool(sandbox)
    (sandbox / "p.csv").write_text("name,age\nAda,36\nAlan,41\n")
    result = call(tool, {"operation": "format", "source": "p.csv", "destination": "p.json"})
    assert result["records"] == 2
    assert json.loads((sandbox / "p.json").read_text()) == [{"name": "Ada", "age": "36"},
                                                             {"name": "Alan", "age": "41"}]
    call(tool, {"operation": "format", "source": "p.json", "destination": "p.yaml"})
    assert "- name: Ada" in (sandbox / "p.yaml").read_text()
    call(tool, {"operation": "format", "source": "p.yaml", "destination": "q.csv"})
    assert (sandbox / "q.csv").read_text() == "name,age\nAda,36\nAlan,41\n"
    (sandbox / "n.json").write_text('[{"a": 1, "b": {"c": true}}, {"a": null, "d": "x"}]')
    call(tool, {"operation": "format", "source": "n.json", "destination": "n.txt",
                "to_format": "csv"})
    assert (sandbox / "n.txt").read_text() == 'a,b,d\n1,"{""c"": true}",\n,,x\n'


def test_convert_refuses_unsafe_yaml_and_bad_input(sandbox: Path) -> None:
    tool = FileConverterTool(sandbox, max_bytes=100)
    (sandbox / "evil.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ToolExecutionError, match="not valid YAML"):
        call(tool, {"operation": "format", "source": "evil.yaml", "destination": "e.json"})
    (sandbox / "obj.json").write_text('{"a": 1}')
    with pytest.raises(ToolExecutionError, match="list of objects"):
        call(tool, {"operation": "format", "source": "obj.json", "destination": "o.csv"})
    (sandbox / "big.txt").write_text("x" * 101)
    with pytest.raises(ToolExecutionError, match="larger than the limit of 100"):
        call(tool, {"operation": "encoding", "source": "big.txt", "destination": "b2.txt"})
    (sandbox / "l1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ToolExecutionError, match="not valid utf-8"):
        call(tool, {"operation": "encoding", "source": "l1.txt", "destination": "l2.txt"})
    with pytest.raises(ToolExecutionError, match="unknown text encoding"):
        call(tool, {"operation": "encoding", "source": "l1.txt", "destination": "l2.txt",
                    "from_encoding": "rot13"})
    with pytest.raises(ToolExecutionError, match="exists"):
        call(tool, {"operation": "encoding", "source": "l1.txt", "from_encoding": "latin-1"})
    with pytest.raises(ToolExecutionError, match="cannot tell the format"):
        call(tool, {"operation": "format", "source": "l1.txt", "destination": "x.json"})
    with pytest.raises(ToolValidationError):
        tool.validate({"operation": "line_endings", "source": "a.txt"})
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "encoding", "source": "../secret.txt", "destination": "s"})
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "encoding", "source": "l1.txt", "destination": "/tmp/x",
                    "from_encoding": "latin-1"})
    (sandbox / "link.txt").symlink_to(sandbox.parent / "secret.txt")
    with pytest.raises(SandboxViolationError):
        call(tool, {"operation": "encoding", "source": "link.txt", "destination": "s.txt"})


def test_convert_without_pyyaml(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # importing it now raises ImportError
    (sandbox / "a.json").write_text("[]")
    with pytest.raises(ConfigurationError, match="PyYAML") as caught:
        call(FileConverterTool(sandbox), {"operation": "format", "source": "a.json",
                                          "destination": "a.yaml"})
    assert caught.value.hint == "pip install 'llmspell[tools]'"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.fixed_dictionaries({"k": _cell, "v": _cell}), max_size=6))
def test_convert_csv_json_round_trip(records: list[dict[str, str]]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        tool = FileConverterTool(Path(root))
        Path(root, "r.json").write_text(json.dumps(records))
        call(tool, {"operation": "format", "source": "r.json", "destination": "r.csv"})
        call(tool, {"operation": "format", "source": "r.csv", "destination": "back.json"})
        assert json.loads(Path(root, "back.json").read_text()) == records


# -- file_search -------------------------------------------------------------------------


def test_glob_regex() -> None:
    assert glob_regex("*.txt").match("a/b/c.txt") and glob_regex("*.txt").match("c.txt")
    assert not glob_regex("docs/*.txt").match("docs/sub/b.txt")
    assert glob_regex("docs/**/*.txt").match("docs/sub/b.txt")
    assert glob_regex("docs/**/*.txt").match("docs/a.txt")
    assert glob_regex("[ab].tx?").match("b.txt") and not glob_regex("[!ab].txt").match("a.txt")


def test_file_search_glob_and_content(sandbox: Path) -> None:
    tool = FileSearchTool(sandbox)
    (sandbox / "docs" / "bin.dat").write_bytes(b"alpha\0beta")
    assert call(tool, {"pattern": "*.txt"})["files"] == ["docs/a.txt", "docs/sub/b.txt"]
    assert call(tool, {"pattern": "*.txt", "path": "docs/sub"})["files"] == ["docs/sub/b.txt"]
    found = call(tool, {"query": "ALPHA", "case_sensitive": False})
    assert found["matches"] == [{"file": "docs/a.txt", "line": 1, "text": "alpha"}]
    assert found["skipped"] == ["docs/bin.dat"]
    found = call(tool, {"query": r"^(al|be)\w+$", "regex": True, "pattern": "*.txt"})
    assert [m["file"] for m in found["matches"]] == ["docs/a.txt", "docs/sub/b.txt"]
    assert call(tool, {"query": "a", "max_results": 1})["truncated"] is True


def test_file_search_limits_and_safety(sandbox: Path) -> None:
    (sandbox / "docs" / "leak.txt").symlink_to(sandbox.parent / "secret.txt")
    (sandbox / "outside").symlink_to(sandbox.parent)
    (sandbox / "docs" / "c.txt").write_text("gamma\n")
    tool = FileSearchTool(sandbox, max_files=2, max_file_bytes=5)
    found = call(tool, {"query": "secret"})
    assert found["matches"] == [] and found["file_limit_reached"] is True
    assert "docs/leak.txt" not in call(FileSearchTool(sandbox), {})["files"]
    assert call(tool, {"query": "alpha"})["skipped"] == ["docs/a.txt", "docs/c.txt"]  # big
    for path in ("../", "/etc", "outside"):
        with pytest.raises(SandboxViolationError):
            call(tool, {"path": path})
    # A backtracking bomb is just a pattern that does not match (RE2, linear time).
    assert call(tool, {"query": "(a+)+$", "regex": True})["matches"] == []
    with pytest.raises(ToolExecutionError, match="invalid regular expression"):
        call(tool, {"query": "(", "regex": True})
    with pytest.raises(ToolExecutionError, match="invalid regular expression"):
        call(tool, {"query": r"(a)\1", "regex": True})
    with pytest.raises(ToolExecutionError, match="not a directory"):
        call(tool, {"path": "docs/a.txt"})
    with pytest.raises(ToolExecutionError, match="invalid glob"):
        call(tool, {"pattern": "[z-a].txt"})
    with pytest.raises(ToolValidationError):
        tool.validate({"query": "x" * 501})
    with pytest.raises(ConfigurationError):
        FileSearchTool(sandbox / "missing")


# -- file_watcher --------------------------------------------------------------------------


def manual_sleep(clock: ManualClock, slept: list[float],
                 on_sleep: Callable[[int], None] = lambda n: None,
                 ) -> Callable[[float], Any]:
    """A sleep that records the wait, calls ``on_sleep(n)`` (n: 1 for the first wait) and
    moves ``clock`` on instead of waiting."""

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        on_sleep(len(slept))
        clock.advance(seconds)

    return sleep


async def test_file_watcher_reports_changes(sandbox: Path) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    clock, slept = ManualClock(), []

    def change(n: int) -> None:  # during the second wait: all three are seen by one poll
        if n == 2:
            (sandbox / "docs" / "new.txt").write_text("new")
            (sandbox / "docs" / "a.txt").write_text("alpha, longer now\n")
            (sandbox / "docs" / "sub" / "b.txt").unlink()

    tool = FileWatcherTool(sandbox, publish=lambda kind, data: seen.append((kind, data)),
                           clock=clock, sleep=manual_sleep(clock, slept, change))
    result = await run(tool, {"paths": ["docs"], "duration": 5, "interval": 0.25,
                              "stop_on_change": True})
    kinds = {(c["type"], c["path"]) for c in result["changes"]}
    assert kinds == {("created", "docs/new.txt"), ("modified", "docs/a.txt"),
                     ("deleted", "docs/sub/b.txt")}
    # a quiet poll, then the poll that saw the changes stops the watch (not the duration)
    assert slept == [0.25, 0.25] and result["polls"] == 2 and result["elapsed"] == 0.5
    assert {c["elapsed"] for c in result["changes"]} == {0.5}
    assert [k for k, _ in seen] == ["tool.file_watcher.change"] * 3


async def test_file_watcher_polls_at_the_interval_until_the_duration(sandbox: Path) -> None:
    clock, slept = ManualClock(), []
    tool = FileWatcherTool(sandbox, clock=clock, sleep=manual_sleep(clock, slept))
    quiet = await run(tool, {"paths": ["docs/a.txt"], "duration": 1, "interval": 0.375,
                             "recursive": False})
    assert slept == [0.375, 0.375, 0.25]  # the last wait ends at the deadline
    assert quiet["changes"] == [] and quiet["polls"] == 3 and quiet["watched_files"] == 1
    assert quiet["elapsed"] == 1.0


async def test_file_watcher_limits_and_safety(sandbox: Path) -> None:
    tool = FileWatcherTool(sandbox, max_files=1)
    with pytest.raises(ToolExecutionError, match="more than 1 files"):
        await run(tool, {"duration": 0.05})
    quiet = await run(FileWatcherTool(sandbox), {"paths": ["docs/a.txt"], "duration": 0.1,
                                                 "interval": 0.03, "recursive": False})
    assert quiet["changes"] == [] and quiet["polls"] >= 1  # the real clock and sleep
    with pytest.raises(SandboxViolationError):
        await run(tool, {"paths": ["../secret.txt"], "duration": 0.1})
    for bad in ({"duration": 61}, {"duration": 0}, {}, {"duration": 1, "interval": 0}):
        with pytest.raises(ToolValidationError):
            tool.validate(bad)


# -- through the runtime -------------------------------------------------------------------


async def test_tools_through_the_runtime(sandbox: Path, gql_server: str) -> None:
    async with System(SystemConfig(store="memory")) as system:
        events: list[UniversalEvent] = []
        system.bus.subscribe("tool.file_watcher.change", events.append)
        clock, slept = ManualClock(), []

        def touch(n: int) -> None:
            if n == 1:
                (sandbox / "docs" / "fresh.txt").write_text("hi")

        watcher = FileWatcherTool(sandbox, publish=system.bus.publish, clock=clock,
                                  sleep=manual_sleep(clock, slept, touch))
        for tool in (CsvAnalyzerTool(), GraphqlQueryTool(allow_loopback=True, timeout=5),
                     ArchiveHandlerTool(sandbox), FileConverterTool(sandbox),
                     FileSearchTool(sandbox), watcher):
            system.tools.register(tool)
        stats = await system.tools.execute("csv_analyzer", {"operation": "stats",
                                                            "csv": PEOPLE})
        assert stats["rows"] == 4
        answer = await system.tools.execute("graphql_query", {"url": f"{gql_server}/errors",
                                                              "query": "{ nope }"})
        assert answer["errors"][0]["message"] == "Cannot query field 'nope'"
        made = await system.tools.execute("archive_handler", {
            "operation": "create", "archive": "d.tar.gz", "sources": ["docs"]})
        assert "docs/a.txt" in made["members"]
        await system.tools.execute("file_converter", {
            "operation": "line_endings", "source": "docs/a.txt", "destination": "a.crlf",
            "line_ending": "crlf"})
        assert (sandbox / "a.crlf").read_bytes() == b"alpha\r\n"
        found = await system.tools.execute("file_search", {"query": "beta"})
        assert found["matches"][0]["file"] == "docs/sub/b.txt"
        with pytest.raises(ToolValidationError):
            await system.tools.execute("file_search", {"nope": 1})

        watched = await system.tools.execute("file_watcher", {
            "paths": ["docs"], "duration": 5, "interval": 0.05, "stop_on_change": True})
        assert watched["changes"][0]["path"] == "docs/fresh.txt" and slept == [0.05]
        assert [e.data["path"] for e in events] == ["docs/fresh.txt"]
        assert events[0].data["type"] == "created"
