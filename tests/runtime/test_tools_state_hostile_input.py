"""Hostile input against the archive tool, the process executor and the state backends:
regressions for the defects found.

Archives are built here, small on disk: a gzip stream may be several gzip members one
after the other, so one compressed MiB of zeros written many times is a bomb of as many
MiB. Timeouts are hang guards, never assertions about speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import os
import signal
import sys
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from llmspell.core import contained_process
from llmspell.core.errors import (
    ConfigurationError,
    NotJsonSafeError,
    StateError,
    ToolExecutionError,
)
from llmspell.runtime import StateScope, System, SystemConfig
from llmspell.runtime.state import MemoryStateBackend, SQLiteStateBackend
from llmspell.runtime.tools.library import archive_tool
from llmspell.runtime.tools.library.archive_tool import ArchiveHandlerTool
from llmspell.runtime.tools.library.process_executor import ProcessExecutorTool
from tests.runtime.tool_helpers import call, run

MIB = 1 << 20
_ZEROS_MIB = gzip.compress(bytes(MIB), 9)
"""One gzip member holding a MiB of zeros (about 1 KiB)."""


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _tar_gz_bomb(path: Path, mebibytes: int) -> None:
    """A tar.gz of one member of ``mebibytes`` MiB of zeros (about a KiB per MiB on disk)."""
    with path.open("wb") as out:
        out.write(gzip.compress(_header("zeros.bin", mebibytes * MIB)))
        for _ in range(mebibytes):
            out.write(_ZEROS_MIB)
        out.write(gzip.compress(bytes(1024)))  # the end-of-archive blocks


# -- archive_handler: bounded reading of compressed tars ------------------------------------


@pytest.mark.timeout(120)
def test_listing_a_tar_gz_bomb_stops_at_the_inflate_limit(tmp_path: Path) -> None:
    # 2 GiB of zeros in a 2 MiB file: listing inflated all of it (seconds per 2 MiB on
    # disk, so minutes for a file of a few hundred MiB) and then listed it.
    _tar_gz_bomb(tmp_path / "bomb.tar.gz", 2048)
    assert (tmp_path / "bomb.tar.gz").stat().st_size < 4 * MIB
    tool = ArchiveHandlerTool(tmp_path)
    with pytest.raises(ToolExecutionError, match="max_decompressed_bytes") as caught:
        call(tool, {"operation": "list", "archive": "bomb.tar.gz"})
    assert "more than 1073741824 bytes" in str(caught.value)
    assert caught.value.hint and "ArchiveHandlerTool(root, max_decompressed_bytes=" in (
        caught.value.hint)


def test_the_inflate_limit_is_checked_before_inflating(tmp_path: Path) -> None:
    # The member claims 64 MiB but the stream ends after its header: refusing it without
    # reading on is the proof that the limit is checked before the bytes are inflated
    # (reading on ends in "not a valid archive").
    (tmp_path / "claims.tar.gz").write_bytes(gzip.compress(_header("big", 64 * MIB)))
    tool = ArchiveHandlerTool(tmp_path, max_decompressed_bytes=MIB)
    for operation in ("list", "extract"):
        with pytest.raises(ToolExecutionError, match="max_decompressed_bytes"):
            call(tool, {"operation": operation, "archive": "claims.tar.gz",
                        "destination": "out"})
    assert not (tmp_path / "out" / "big").exists()


def test_extracting_stops_reading_once_the_declared_total_is_too_big(tmp_path: Path) -> None:
    # Declared sizes are known from the headers: extraction refused them only after
    # reading (inflating) the whole archive, here a stream cut after the first header.
    (tmp_path / "claims.tar.gz").write_bytes(gzip.compress(_header("big", 64 * MIB)))
    tool = ArchiveHandlerTool(tmp_path, max_total_bytes=MIB)
    with pytest.raises(ToolExecutionError, match=r"max_total_bytes") as caught:
        call(tool, {"operation": "extract", "archive": "claims.tar.gz"})
    assert "67108864 bytes" in str(caught.value)
    assert caught.value.hint and "max_total_bytes=" in caught.value.hint


def test_an_archive_within_the_limits_still_lists_and_extracts(tmp_path: Path) -> None:
    _tar_gz_bomb(tmp_path / "two.tar.gz", 2)
    tool = ArchiveHandlerTool(tmp_path, max_decompressed_bytes=3 * MIB,
                              max_total_bytes=3 * MIB)
    listed = call(tool, {"operation": "list", "archive": "two.tar.gz"})
    assert listed["members"] == [{"name": "zeros.bin", "type": "file", "size": 2 * MIB}]
    done = call(tool, {"operation": "extract", "archive": "two.tar.gz", "destination": "d"})
    assert done["bytes"] == 2 * MIB and (tmp_path / "d" / "zeros.bin").stat().st_size == 2 * MIB


def test_many_tiny_entries_hit_the_member_limit_with_a_way_to_raise_it(tmp_path: Path) -> None:
    # The count was already limited; the error now names the setting that raises it.
    body = b"".join(_header(f"f{i}", 0) for i in range(50)) + bytes(1024)
    (tmp_path / "many.tar.gz").write_bytes(gzip.compress(body))
    tool = ArchiveHandlerTool(tmp_path, max_members=10)
    with pytest.raises(ToolExecutionError, match="more than 10 members") as caught:
        call(tool, {"operation": "list", "archive": "many.tar.gz"})
    assert caught.value.hint and "ArchiveHandlerTool(root, max_members=" in caught.value.hint


@pytest.mark.parametrize("archive", ["chain.tar", "chain.tar.gz"])
def test_chained_long_name_headers_are_a_typed_error(tmp_path: Path, archive: str) -> None:
    # tarfile follows each GNU long-name header recursively: 3000 of them (3 MB) raised a
    # bare RecursionError out of the tool.
    link = _header("././@LongLink", 10, tarfile.GNUTYPE_LONGNAME) + b"longname\0\0".ljust(
        512, b"\0")
    body = link * 3000 + _header("f", 0) + bytes(1024)
    (tmp_path / archive).write_bytes(gzip.compress(body) if archive.endswith("gz") else body)
    with pytest.raises(ToolExecutionError, match="chains too many extended headers"):
        call(ArchiveHandlerTool(tmp_path), {"operation": "list", "archive": archive})


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


@pytest.mark.parametrize("archive", ["digits.tar", "digits.tar.gz"])
def test_a_pax_header_of_digits_is_refused_before_the_stdlib_parses_it(
        tmp_path: Path, archive: str) -> None:
    # CPython < 3.11.10 searches a pax header with a regex quadratic in a run of digits
    # (CVE-2024-6232): 100 KB of digits (a few hundred bytes gzipped) held the tool for
    # ~10 s here, 1 MB for about 17 minutes. A fixed CPython says "not valid" at once.
    digits = b"1" * 100_000
    body = (_header("pax", len(digits), tarfile.XHDTYPE) + _padded(digits)
            + _header("f", 0) + bytes(1024))
    (tmp_path / archive).write_bytes(gzip.compress(body) if archive.endswith("gz") else body)
    with pytest.raises(ToolExecutionError) as caught:
        call(ArchiveHandlerTool(tmp_path), {"operation": "list", "archive": archive})
    if archive_tool._QUADRATIC_PAX:
        assert "CVE-2024-6232" in str(caught.value)
        assert caught.value.hint and "3.11.10" in caught.value.hint


def test_ordinary_pax_headers_still_list(tmp_path: Path) -> None:
    # A long name, a time with a fraction and a run of digits in a name go through pax
    # records; they are no reason to refuse.
    name = "dir/" + "7" * 60 + "/" + "n" * 200 + ".txt"
    with tarfile.open(tmp_path / "pax.tar.gz", "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        info.mtime = 1_700_000_000.123456
        info.pax_headers = {"comment": "x" * 5000}
        tar.addfile(info, io.BytesIO(b"abc"))
    listed = call(ArchiveHandlerTool(tmp_path), {"operation": "list", "archive": "pax.tar.gz"})
    assert listed["members"] == [{"name": name, "type": "file", "size": 3}]


def test_a_stream_that_is_not_gzip_is_not_a_valid_archive(tmp_path: Path) -> None:
    (tmp_path / "bad.tar.gz").write_bytes(b"not gzip at all" * 10)
    broken = gzip.compress(b"x" * 100_000)
    (tmp_path / "broken.tar.gz").write_bytes(broken[:20] + b"\xff" * 40 + broken[60:])
    for name in ("bad.tar.gz", "broken.tar.gz"):
        with pytest.raises(ToolExecutionError, match=r"is not a valid tar\.gz archive"):
            call(ArchiveHandlerTool(tmp_path), {"operation": "list", "archive": name})


@pytest.mark.parametrize("setting", ["max_members", "max_total_bytes",
                                     "max_decompressed_bytes"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_archive_limits_must_be_positive_ints(tmp_path: Path, setting: str,
                                              value: object) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        ArchiveHandlerTool(tmp_path, **{setting: value})  # type: ignore[arg-type]


# -- process_executor: nothing outlives the call ---------------------------------------------

PY = sys.executable
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the subreaper supervisor is Linux only")


def _escaper(marker: Path, then: str) -> str:
    """A program whose grandchild leaves the process group and session (setsid), is
    orphaned, writes its pid to ``marker`` and sleeps; the program then runs ``then``."""
    return (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        open({str(marker)!r} + '.tmp', 'w').write(str(os.getpid()))\n"
        f"        os.rename({str(marker)!r} + '.tmp', {str(marker)!r})\n"
        "        time.sleep(300)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        f"while not os.path.exists({str(marker)!r}):\n"
        "    time.sleep(0.005)\n"
        "print('parent done', flush=True)\n"
        f"{then}\n"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def escaped() -> Iterator[list[int]]:
    """Pids to kill after the test, so a failing run leaves no sleeper behind."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@linux_only
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("then", "timeout", "timed_out"), [
    ("", 20, False),                   # the program ends; its setsid'd grandchild did not
    ("time.sleep(300)", 1, True),      # the program is killed on timeout
])
async def test_a_setsid_grandchild_does_not_outlive_the_call(
        tmp_path: Path, escaped: list[int], then: str, timeout: float,
        timed_out: bool) -> None:
    marker = tmp_path / "grandchild.pid"
    tool = ProcessExecutorTool(allow_commands=[PY], timeout=20)
    out = await run(tool, {"argv": [PY, "-c", _escaper(marker, then)], "timeout": timeout})
    pid = int(marker.read_text())
    escaped.append(pid)
    assert out["stdout"].strip() == "parent done" and out["timed_out"] is timed_out
    assert out["exit_code"] == (-signal.SIGKILL if timed_out else 0)
    # The supervisor reaps what it kills, so not even a zombie is left (no wait needed).
    assert not _alive(pid)


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups")
@pytest.mark.timeout(60)
async def test_without_the_supervisor_the_process_group_is_still_killed(
        tmp_path: Path, escaped: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    # What other POSIX systems get: a background child in the group does not outlive the
    # call (a setsid'd one would: the documented limit there).
    monkeypatch.setattr(contained_process, "supervisor_command", lambda: None)
    marker = tmp_path / "child.pid"
    script = ("import subprocess, sys\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; "
              "time.sleep(300)'])\n"
              f"open({str(marker)!r}, 'w').write(str(child.pid))\n")
    out = await run(ProcessExecutorTool(allow_commands=[PY], timeout=20),
                    {"argv": [PY, "-c", script]})
    pid = int(marker.read_text())
    escaped.append(pid)
    assert out["exit_code"] == 0 and out["timed_out"] is False
    # SIGKILL has been sent to the group when the call returns; on a loaded machine the
    # child may take a moment to be scheduled and die: gone, or a zombie waiting for its
    # reaper (an escaped child would still be sleeping after its 300 s).
    for _ in range(500):
        if not _alive(pid) or _state(pid) == "Z":
            break
        await asyncio.sleep(0.01)
    assert not _alive(pid) or _state(pid) == "Z"


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@pytest.mark.parametrize(("script", "code"), [
    ("import sys; sys.exit(3)", 3),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM),
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", -signal.SIGSEGV),
])
async def test_the_exit_code_is_the_programs(script: str, code: int) -> None:
    out = await run(ProcessExecutorTool(allow_commands=[PY]), {"argv": [PY, "-c", script]})
    assert out["exit_code"] == code and out["timed_out"] is False


@pytest.mark.skipif(not os.path.exists("/usr/bin/env"), reason="needs /usr/bin/env")
async def test_the_program_gets_exactly_the_chosen_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The supervisor is a Python whose start-up may add LC_CTYPE (PEP 538 coercion).
    monkeypatch.delenv("LC_CTYPE", raising=False)
    monkeypatch.setenv("DEMO_PASSED", "yes")
    tool = ProcessExecutorTool(allow_commands=["/usr/bin/env"], pass_env=["DEMO_PASSED"])
    out = await run(tool, {"argv": ["/usr/bin/env"]})
    names = sorted(line.split("=", 1)[0] for line in out["stdout"].splitlines())
    assert names == ["DEMO_PASSED", "PATH"]
    monkeypatch.setenv("LC_CTYPE", "C")
    tool = ProcessExecutorTool(allow_commands=["/usr/bin/env"], pass_env=["LC_CTYPE"])
    out = await run(tool, {"argv": ["/usr/bin/env"]})
    assert "LC_CTYPE=C" in out["stdout"].splitlines()


@pytest.mark.parametrize(("content", "mode", "reason"), [
    (b"#!/bin/sh\necho hi\n", 0o644, "Permission denied"),
    (b"\x7fELF not really", 0o755, "Exec format error"),
])
async def test_a_program_that_cannot_start_is_a_typed_error(
        tmp_path: Path, content: bytes, mode: int, reason: str) -> None:
    program = tmp_path / "program"
    program.write_bytes(content)
    program.chmod(mode)
    with pytest.raises(ToolExecutionError, match=f"cannot start .*{reason}") as caught:
        await run(ProcessExecutorTool(allow_commands=[str(program)]),
                  {"argv": [str(program)]})
    assert caught.value.hint


# -- state backends: lone surrogates --------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def system(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[System]:
    config = (SystemConfig(store="memory") if request.param == "memory"
              else SystemConfig(data_dir=str(tmp_path)))
    async with System(config) as sys_:
        yield sys_


@pytest.mark.parametrize(("value", "path"), [
    ("half \ud800", "note"),
    ({"text": ["ok", "half \udc80 of a pair"]}, "note.text[1]"),
    ({"k\ud800": 1}, "note (a key)"),
])
async def test_a_value_with_a_lone_surrogate_is_refused_by_both_backends(
        system: System, value: object, path: str) -> None:
    # The memory backend stored it; SQLite refused it.
    with pytest.raises(NotJsonSafeError, match="lone surrogate") as caught:
        await system.state.set("note", value)
    assert caught.value.path == path and caught.value.hint
    assert await system.state.keys() == [] and await system.state.snapshot() == {}


async def test_a_scope_id_with_a_lone_surrogate_is_refused_before_the_write(
        system: System) -> None:
    # The memory backend stored the value, then the event raised NotJsonSafeError; SQLite
    # raised a bare UnicodeEncodeError, on reads too.
    bad = "session-\ud800"
    with pytest.raises(StateError, match=r"scope id .* lone surrogate") as caught:
        await system.state.set("k", 1, scope="session", scope_id=bad)
    assert caught.value.hint
    for read in (system.state.get("k", scope="session", scope_id=bad),
                 system.state.keys("session", bad),
                 system.state.snapshot("session", bad),
                 system.state.delete("k", scope="session", scope_id=bad)):
        with pytest.raises(StateError, match="scope id"):
            await read
    assert await system.state.scopes("session") == []


async def test_a_key_prefix_with_a_lone_surrogate_or_of_another_type_is_refused(
        system: System) -> None:
    await system.state.set("a", 1)
    with pytest.raises(StateError, match=r"key prefix .* lone surrogate"):
        await system.state.keys(prefix="a\ud800")
    with pytest.raises(StateError, match="key prefix must be a string"):
        await system.state.keys(prefix=1)  # type: ignore[arg-type]
    assert await system.state.keys(prefix="a") == ["a"]


async def test_a_restore_with_a_lone_surrogate_loses_nothing(system: System) -> None:
    # restore cleared the scope first, then the write failed: "keep" was lost.
    await system.state.set("keep", "me")
    with pytest.raises(NotJsonSafeError, match="lone surrogate") as caught:
        await system.state.restore("global", "", {"other": "x", "bad": ["\ud800"]})
    assert caught.value.path == "bad[0]"
    assert await system.state.snapshot() == {"keep": "me"}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_backends_refuse_the_same_way_when_called_directly(tmp_path: Path,
                                                               kind: str) -> None:
    backend = (MemoryStateBackend() if kind == "memory"
               else SQLiteStateBackend(tmp_path / "state.db"))
    g = StateScope.GLOBAL
    try:
        with pytest.raises(NotJsonSafeError) as caught:
            backend.put(g, "", "k", {"a": "\ud800"}, None, 1.0)
        assert caught.value.path == "k.a"
        with pytest.raises(NotJsonSafeError) as caught:
            backend.apply(g, "", {"ok": 1, "bad": ["\udc80"]}, [], None, 1.0)
        assert caught.value.path == "bad[0]"
        for call_ in (lambda: backend.put(g, "", "k\ud800", 1, None, 1.0),
                      lambda: backend.apply(g, "", {"k\ud800": 1}, [], None, 1.0),
                      lambda: backend.apply(g, "", {}, ["k\ud800"], None, 1.0),
                      lambda: backend.get(g, "", "k\ud800"),
                      lambda: backend.delete(g, "", "k\ud800", None),
                      lambda: backend.keys(g, "", "k\ud800"),
                      lambda: backend.items(StateScope.SESSION, "s\ud800")):
            with pytest.raises(StateError, match="lone surrogate"):
                call_()
        assert backend.items(g, "") == {} and backend.scopes(StateScope.SESSION) == []
        # Values JSON cannot encode are the memory backend's to keep, but not with a
        # surrogate inside.
        if kind == "memory":
            odd = object()
            with pytest.raises(NotJsonSafeError, match="lone surrogate"):
                backend.put(g, "", "t", ("ok", {"x": odd, "y": "\ud800"}), None, 1.0)
            assert backend.put(g, "", "t", ("ok", {"x": odd}), None, 1.0) is not None
    finally:
        backend.close()
