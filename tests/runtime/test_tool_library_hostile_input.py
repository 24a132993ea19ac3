"""The standard tool library against hostile arguments: regressions for the defects found.

Tools are called directly (``validate`` then ``execute``), the way the pipeline calls them.
Network tests talk only to a local server on 127.0.0.1 started here. Timeouts are hang
guards, never assertions about speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmspell.core.errors import ToolExecutionError
from llmspell.runtime.tools.library.archive_tool import ArchiveHandlerTool
from llmspell.runtime.tools.library.data_validation import DataValidationTool
from llmspell.runtime.tools.library.file_operations import FileOperationsTool
from llmspell.runtime.tools.library.file_search import FileSearchTool, glob_regex
from llmspell.runtime.tools.library.http_request import HttpRequestTool
from llmspell.runtime.tools.library.json_processor import JsonProcessorTool
from llmspell.runtime.tools.library.process_executor import ProcessExecutorTool
from llmspell.runtime.tools.library.text_manipulator import TextManipulatorTool
from tests.runtime.tool_helpers import call, run

LONE = json.loads('"a\\ud800b"')
"""A string holding a lone surrogate, as ``json.loads`` gives it for ``"\\ud800"``."""

posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")


# -- file_search: globs ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_glob_with_many_stars_does_not_backtrack(tmp_path: Path) -> None:
    # With re this took minutes on one long name (polynomial backtracking).
    pattern = "*a" * 20 + "b"
    assert glob_regex(pattern).match("a" * 200) is None
    (tmp_path / ("a" * 200)).write_text("x")
    result = call(FileSearchTool(tmp_path), {"pattern": pattern})
    assert result["files"] == [] and result["files_scanned"] == 1


def test_glob_still_matches_and_reports_bad_globs(tmp_path: Path) -> None:
    assert glob_regex("docs/**/*.txt").match("docs/a/b/c.txt")
    assert not glob_regex("docs/*.txt").match("docs/a/c.txt")
    with pytest.raises(ToolExecutionError, match="invalid glob pattern"):
        call(FileSearchTool(tmp_path), {"pattern": "[z-a]"})


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="needs byte file names")
def test_glob_over_an_undecodable_file_name(tmp_path: Path) -> None:
    (tmp_path / os.fsdecode(b"x\xffy.txt")).write_text("x")
    result = call(FileSearchTool(tmp_path), {"pattern": "x?y.txt"})
    assert len(result["files"]) == 1


# -- FIFOs in the sandbox ------------------------------------------------------------------


@pytest.fixture
def fifo_root(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "a.txt").write_text("hello\n")
    return tmp_path


@posix_only
@pytest.mark.timeout(60)
def test_file_search_skips_a_fifo(fifo_root: Path) -> None:
    result = call(FileSearchTool(fifo_root), {"query": "hello"})
    assert result["skipped"] == ["pipe"]
    assert [m["file"] for m in result["matches"]] == ["a.txt"]


@posix_only
@pytest.mark.timeout(60)
@pytest.mark.parametrize("params", [
    {"operation": "read", "path": "pipe"},
    {"operation": "append", "path": "pipe", "content": "x"},
])
def test_file_operations_refuse_a_fifo(fifo_root: Path, params: dict[str, str]) -> None:
    with pytest.raises(ToolExecutionError, match="not a regular file") as caught:
        call(FileOperationsTool(fifo_root), params)
    assert caught.value.hint


@posix_only
@pytest.mark.timeout(60)
def test_archive_create_refuses_a_fifo(fifo_root: Path) -> None:
    with pytest.raises(ToolExecutionError, match="not a regular file or directory"):
        call(ArchiveHandlerTool(fifo_root),
             {"operation": "create", "archive": "out.zip", "sources": ["pipe"]})
    assert sorted(p.name for p in fifo_root.iterdir()) == ["a.txt", "pipe"]


# -- RE2 and lone surrogates ---------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"operation": "replace", "text": LONE, "find": "a", "replacement": "x", "regex": True},
    {"operation": "replace", "text": "abc", "find": LONE, "replacement": "x", "regex": True},
    {"operation": "replace", "text": LONE, "find": "A", "replacement": "x",
     "ignore_case": True},
    {"operation": "split", "text": LONE, "separator": "a", "regex": True},
])
def test_text_regex_on_a_lone_surrogate_is_a_typed_error(params: dict[str, object]) -> None:
    with pytest.raises(ToolExecutionError, match="lone surrogate") as caught:
        call(TextManipulatorTool(), params)
    assert caught.value.tool == "text_manipulator" and caught.value.hint


def test_validation_patterns_on_a_lone_surrogate_are_typed_errors() -> None:
    with pytest.raises(ToolExecutionError, match="lone surrogate"):
        call(DataValidationTool(), {"data": {"a": LONE},
                                    "rules": [{"path": "a", "rule": "pattern", "value": "b"}]})
    with pytest.raises(ToolExecutionError, match="lone surrogate") as caught:
        call(DataValidationTool(), {"data": LONE,
                                    "schema": {"type": "string", "pattern": "b"}})
    assert caught.value.tool == "data_validation"
    with pytest.raises(ToolExecutionError, match="lone surrogate") as caught:
        call(JsonProcessorTool(), {"operation": "validate", "data": {LONE: 1},
                                   "schema": {"patternProperties": {"a": {}}}})
    assert caught.value.tool == "json_processor"


# -- process_executor ----------------------------------------------------------------------

PY = sys.executable


@pytest.mark.timeout(60)
async def test_process_stdin_is_fed_while_output_is_read() -> None:
    # The child echoes stdin as it reads it: writing all of stdin before reading any output
    # deadlocked on the two full pipes until the timeout.
    tool = ProcessExecutorTool(allow_commands=[PY], timeout=20)
    echo = "import sys, shutil; shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer)"
    out = await run(tool, {"argv": [PY, "-c", echo], "stdin": "x" * 1_000_000})
    assert out["timed_out"] is False and out["exit_code"] == 0
    assert out["stdout_truncated"] is True and out["stdout"] == "x" * tool.max_output


@posix_only
@pytest.mark.timeout(60)
async def test_process_background_children_are_killed(tmp_path: Path) -> None:
    tool = ProcessExecutorTool(allow_commands=[PY], timeout=20)
    marker = tmp_path / "child.pid"
    script = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
        "print('started')\n"
    )
    out = await run(tool, {"argv": [PY, "-c", script]})
    # The child kept the output pipes open: the call waited for the timeout, reported
    # "killed", and left the child running.
    assert out["timed_out"] is False and out["exit_code"] == 0
    assert out["stdout"].strip() == "started"
    pid = int(marker.read_text())
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                           text=True, check=False).stdout.strip()
    assert state in ("", "Z")  # gone, or a zombie waiting for init to reap it


@pytest.mark.parametrize(("params", "what"), [
    ({"argv": [PY, "-c", "pass"], "stdin": LONE}, "stdin"),
    ({"argv": [PY, "-c", LONE]}, "an argument"),
])
async def test_process_lone_surrogates_are_typed_errors(params: dict[str, object],
                                                        what: str) -> None:
    tool = ProcessExecutorTool(allow_commands=[PY])
    with pytest.raises(ToolExecutionError, match=f"^{what} holds") as caught:
        await run(tool, params)
    assert caught.value.tool == "process_executor" and caught.value.hint


# -- http_request: compressed responses ----------------------------------------------------


def _gzip_zeros(megabytes: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(1 << 20)
    return b"".join(packer.compress(block) for _ in range(megabytes)) + packer.flush()


BOMB = _gzip_zeros(100)
DOUBLE_BOMB = zlib.compress(BOMB, 9)  # deflate over gzip


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        bodies = {"/gzip": ("gzip", BOMB), "/stacked": ("gzip, deflate", DOUBLE_BOMB),
                  "/deflate": ("deflate", zlib.compress(b"hello")),
                  "/raw-deflate": ("deflate", zlib.compress(b"hello")[2:-4]),
                  "/zstd": ("zstd", b"whatever"), "/bad": ("gzip", b"not gzip")}
        coding, body = bodies[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Encoding", coding)
        self.send_header("X-Seen-Accept-Encoding", self.headers.get("Accept-Encoding", ""))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(60)
async def test_gzip_bomb_is_cut_off_without_inflating_it(base_url: str) -> None:
    tool = HttpRequestTool(allow_loopback=True, timeout=20)
    tracemalloc.start()
    try:
        with pytest.raises(ToolExecutionError, match="larger than the limit"):
            await run(tool, {"url": base_url + "/gzip"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # httpx inflated each network chunk whole (tens of MB from a 64 KiB read).
    assert peak < 16 * tool.max_bytes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/stacked", "/zstd"])
async def test_undecodable_content_encodings_are_refused(base_url: str, path: str) -> None:
    tool = HttpRequestTool(allow_loopback=True, timeout=20)
    with pytest.raises(ToolExecutionError, match="content encoding") as caught:
        await run(tool, {"url": base_url + path})
    assert caught.value.hint


@pytest.mark.timeout(60)
async def test_deflate_and_bad_gzip(base_url: str) -> None:
    tool = HttpRequestTool(allow_loopback=True, timeout=20)
    for path in ("/deflate", "/raw-deflate"):
        result = await run(tool, {"url": base_url + path})
        assert result["body"] == "hello"
        assert result["headers"]["x-seen-accept-encoding"] == "gzip, deflate"
    with pytest.raises(ToolExecutionError, match="not valid gzip data"):
        await run(tool, {"url": base_url + "/bad"})
