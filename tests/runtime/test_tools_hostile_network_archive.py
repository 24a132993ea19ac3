"""A hostile audit of the network, archive and template tools: arguments come from a model,
so they are treated as an attacker's (prompt injection).

Network traffic stays on loopback: real servers listen on 127.0.0.1 only, and anything
that would leave the machine goes through a mock transport with a patched resolver (no
real DNS lookup is made)."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import socket
import stat
import struct
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmspell.core.errors import SandboxViolationError, ToolError, ToolExecutionError
from llmspell.runtime.tools.library.archive_tool import ArchiveHandlerTool
from llmspell.runtime.tools.library.http_request import HttpRequestTool, address_refusal
from llmspell.runtime.tools.library.web_tools import UrlAnalyzerTool, WebScraperTool
from tests.runtime.tool_helpers import call, run

# -- a loopback server that records every request ------------------------------------------


class _Recorder(ThreadingHTTPServer):
    hits: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Recorder

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        body = b"secret"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    server = _Recorder(("127.0.0.1", 0), _Handler)
    server.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names resolved from this table (each lookup pops the next answer list while more
    than one is left, to play DNS rebinding); IP literals resolve to themselves; any other
    name fails. No real lookup is made."""
    table: dict[str, list[str]] = {}

    async def getaddrinfo(self: Any, host: str, port: Any, *args: Any, **kwargs: Any,
                          ) -> list[Any]:
        answers = table.get(host)
        if answers is None:
            try:
                answers = [socket.inet_ntoa(socket.inet_aton(host))]
            except OSError:
                if ":" not in host:
                    raise socket.gaierror(socket.EAI_NONAME, f"unknown {host}") from None
                answers = [host]
        elif len(answers) > 1:
            answers = [answers.pop(0)]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in answers]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)
    return table


def _mock_client(seen: list[tuple[str, str | None]]) -> httpx.AsyncClient:
    """A client that sends nothing: ``/start?to=X`` answers 302 to X, anything else 200."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("host")))
        if request.url.path == "/start":
            return httpx.Response(302, headers={"Location": request.url.params["to"]},
                                  stream=httpx.ByteStream(b""))
        return httpx.Response(200, headers={"Content-Type": "text/plain"},
                              stream=httpx.ByteStream(b"ok"))

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


# -- SSRF ------------------------------------------------------------------------------------

LOOPBACK_SPELLINGS = [
    "127.0.0.1", "2130706433", "0x7f.1", "127.1", "0", "0.0.0.0", "[::1]",
    "[::ffff:127.0.0.1]", "[0:0:0:0:0:ffff:7f00:1]", "[64:ff9b::7f00:1]", "[::]",
    "[::127.0.0.1]", "[2002:7f00:1::]", "localhost", "LOCALHOST",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
async def test_loopback_spellings_are_refused_without_traffic(recorder: _Recorder,
                                                              host: str) -> None:
    port = recorder.server_address[1]
    with pytest.raises(SandboxViolationError):
        await run(HttpRequestTool(timeout=5), {"url": f"http://{host}:{port}/x"})
    assert recorder.hits == []


@pytest.mark.parametrize("url", ["http://0177.0.0.1:{port}/", "http://evil@127.0.0.1:{port}/",
                                 "http://127.0.0.1:{port}\\@example.test/"])
async def test_odd_urls_fail_without_traffic(recorder: _Recorder, url: str) -> None:
    with pytest.raises(ToolError):
        await run(HttpRequestTool(timeout=5),
                  {"url": url.format(port=recorder.server_address[1])})
    assert recorder.hits == []


async def test_trailing_dot_localhost_is_checked_after_resolving(
        recorder: _Recorder, fake_dns: dict[str, list[str]]) -> None:
    fake_dns["localhost."] = ["127.0.0.1"]  # what a resolver honouring it answers
    with pytest.raises(SandboxViolationError):
        await run(HttpRequestTool(timeout=5),
                  {"url": f"http://localhost.:{recorder.server_address[1]}/"})
    assert recorder.hits == []


@pytest.mark.parametrize("address", ["fec0::1", "fec0:1::2", "feff::1"])
def test_site_local_ipv6_is_refused(address: str) -> None:
    # fec0::/10 is deprecated but still routed inside some networks; Python calls it global
    assert address_refusal(address) is not None
    assert address_refusal(address, allow_private=True) is None


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:9/", "http://[::ffff:127.0.0.1]/", "http://169.254.169.254/latest",
    "//127.0.0.1/", "http://[fe80::1]/", "http://10.0.0.1/", "http://[fec0::1]/",
    "http://inside.test/", "file:///etc/passwd", "gopher://127.0.0.1:25/",
])
async def test_redirect_targets_are_checked_again(fake_dns: dict[str, list[str]],
                                                  target: str) -> None:
    fake_dns["public.test"] = ["93.184.216.34"]
    fake_dns["inside.test"] = ["10.1.2.3"]
    seen: list[tuple[str, str | None]] = []
    tool = HttpRequestTool(client=_mock_client(seen))
    with pytest.raises((SandboxViolationError, ToolExecutionError)):
        await run(tool, {"url": "http://public.test/start", "query": {"to": target}})
    assert len(seen) == 1  # the first hop only: the redirect was never followed


async def test_dns_rebinding_connects_to_the_checked_address(
        fake_dns: dict[str, list[str]]) -> None:
    fake_dns["rebind.test"] = ["93.184.216.34", "127.0.0.1"]  # public, then loopback
    seen: list[tuple[str, str | None]] = []
    result = await run(HttpRequestTool(client=_mock_client(seen)),
                       {"url": "http://rebind.test/x"})
    assert result["body"] == "ok"
    assert seen == [("http://93.184.216.34/x", "rebind.test")]


async def test_proxy_variables_are_ignored(recorder: _Recorder,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = _Recorder(("127.0.0.1", 0), _Handler)
    proxy.hits = []
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.setenv("NO_PROXY", "")
        monkeypatch.setenv("no_proxy", "")
        url = f"http://127.0.0.1:{recorder.server_address[1]}/direct"
        assert (await run(HttpRequestTool(allow_loopback=True), {"url": url}))["body"] == (
            "secret")
        await run(WebScraperTool(allow_loopback=True), {"url": url})
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(5)
    assert recorder.hits == ["/direct", "/direct"] and proxy.hits == []


@pytest.mark.parametrize(("host", "address"), [
    ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"), ("0x7f000001", "127.0.0.1"),
])
def test_url_analyzer_reads_legacy_ipv4_spellings(host: str, address: str) -> None:
    info = call(UrlAnalyzerTool(), {"url": f"http://{host}/"})
    assert info["is_ip"] is True and info["address"] == address
    assert info["is_loopback"] is True and info["is_global"] is False
    assert any("unusual spelling" in i for i in info["issues"])
    assert any("refuse" in i for i in info["issues"])


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "[64:ff9b::7f00:1]"])
def test_url_analyzer_unwraps_ipv4_in_ipv6(host: str) -> None:
    info = call(UrlAnalyzerTool(), {"url": f"http://{host}/"})
    assert info["is_loopback"] is True and info["is_global"] is False
    assert any("refuse" in i for i in info["issues"])


def test_url_analyzer_public_and_named_hosts_stay_quiet() -> None:
    public = call(UrlAnalyzerTool(), {"url": "http://8.8.8.8/"})
    assert public["is_global"] is True and public["issues"] == []
    for host in ("example.com", "08.1", "1.2.3.4.5"):
        named = call(UrlAnalyzerTool(), {"url": f"http://{host}/"})
        assert named["is_ip"] is False and named["address"] is None


# -- archives ----------------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    (tmp_path / "sandbox").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path / "sandbox"


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0,
          link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


def _tar(path: Path, members: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w") as archive:
        for member in members:
            archive.addfile(member, io.BytesIO(b"x" * member.size) if member.size else None)


@pytest.mark.parametrize("members", [
    [_info("../evil", size=1)],
    [_info("/tmp/llmspell-h100-evil", size=1)],
    [_info("l", tarfile.SYMTYPE, link="../outside"), _info("l/pwn", size=1)],
    [_info("d", tarfile.DIRTYPE), _info("d/l", tarfile.SYMTYPE, link="../.."),
     _info("d/l/pwn", size=1)],
    [_info("h", tarfile.LNKTYPE, link="/etc/passwd")],
    [_info("h", tarfile.LNKTYPE, link="../outside/x")],
    [_info("f", tarfile.FIFOTYPE)],
    [_info("c", tarfile.CHRTYPE)],
    [_info("b", tarfile.BLKTYPE)],
], ids=["dotdot", "absolute", "symlink-out", "symlink-up", "hardlink-abs", "hardlink-up",
        "fifo", "chardev", "blockdev"])
def test_unsafe_tar_members_are_refused(sandbox: Path, members: list[tarfile.TarInfo]) -> None:
    _tar(sandbox / "a.tar", members)
    with pytest.raises(SandboxViolationError):
        call(ArchiveHandlerTool(sandbox), {"operation": "extract", "archive": "a.tar"})
    assert list((sandbox.parent / "outside").iterdir()) == []
    assert sorted(p.name for p in sandbox.iterdir()) == ["a.tar"]


@pytest.mark.parametrize("name", ["../evil", "/tmp/llmspell-h100-zevil", "..\\evil",
                                  "C:/evil"])
def test_unsafe_zip_names_are_refused(sandbox: Path, name: str) -> None:
    with zipfile.ZipFile(sandbox / "a.zip", "w") as archive:
        archive.writestr(name, "x")
    with pytest.raises(SandboxViolationError):
        call(ArchiveHandlerTool(sandbox), {"operation": "extract", "archive": "a.zip"})
    assert list((sandbox.parent / "outside").iterdir()) == []


def test_zip_symlink_and_device_entries_are_refused(sandbox: Path) -> None:
    for mode, target in ((stat.S_IFLNK | 0o777, "../outside"), (stat.S_IFCHR | 0o666, "")):
        entry = zipfile.ZipInfo("entry")
        entry.external_attr = mode << 16
        with zipfile.ZipFile(sandbox / "a.zip", "w") as archive:
            archive.writestr(entry, target)
        with pytest.raises(SandboxViolationError):
            call(ArchiveHandlerTool(sandbox), {"operation": "extract", "archive": "a.zip"})


def test_symlink_already_in_the_sandbox_does_not_redirect_writes(sandbox: Path) -> None:
    (sandbox / "link").symlink_to(sandbox.parent / "outside")
    with zipfile.ZipFile(sandbox / "a.zip", "w") as archive:
        archive.writestr("link/pwn", "x")
    with pytest.raises(SandboxViolationError):
        call(ArchiveHandlerTool(sandbox), {"operation": "extract", "archive": "a.zip"})
    assert list((sandbox.parent / "outside").iterdir()) == []


def test_zip_that_lies_about_its_size_is_cut_off(sandbox: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big", b"\0" * (4 * 1024 * 1024))
    raw = bytearray(buffer.getvalue())
    struct.pack_into("<I", raw, raw.find(b"PK\x03\x04") + 22, 10)  # declared: 10 bytes
    struct.pack_into("<I", raw, raw.find(b"PK\x01\x02") + 24, 10)
    (sandbox / "a.zip").write_bytes(bytes(raw))
    tool = ArchiveHandlerTool(sandbox, max_total_bytes=1024)
    with pytest.raises(ToolExecutionError):
        call(tool, {"operation": "extract", "archive": "a.zip", "destination": "out"})
    assert not any((sandbox / "out").rglob("big"))


def test_tar_gz_bomb_and_entry_count_limits(sandbox: Path) -> None:
    with tarfile.open(sandbox / "bomb.tar.gz", "w:gz") as archive:
        for i in range(3):
            archive.addfile(_info(f"z{i}", size=1024 * 1024), io.BytesIO(b"\0" * 1024 * 1024))
    tool = ArchiveHandlerTool(sandbox, max_total_bytes=2 * 1024 * 1024,
                              max_decompressed_bytes=64 * 1024 * 1024)
    with pytest.raises(ToolExecutionError, match="max_total_bytes"):
        call(tool, {"operation": "extract", "archive": "bomb.tar.gz"})
    small = ArchiveHandlerTool(sandbox, max_decompressed_bytes=512 * 1024)
    with pytest.raises(ToolExecutionError, match="max_decompressed_bytes"):
        call(small, {"operation": "list", "archive": "bomb.tar.gz"})
    _tar(sandbox / "many.tar", [_info(f"f{i}") for i in range(30)])
    with pytest.raises(ToolExecutionError, match="max_members"):
        call(ArchiveHandlerTool(sandbox, max_members=20),
             {"operation": "list", "archive": "many.tar"})
    assert sorted(p.name for p in sandbox.iterdir()) == ["bomb.tar.gz", "many.tar"]


def _zip_with(sandbox: Path, flag: int = 0, method: int | None = None) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("first", "hello")
        archive.writestr("second", "hello")
    raw = bytearray(buffer.getvalue())
    for signature, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = raw.rfind(signature)  # the second member: the first is extracted, then undone
        raw[start + flags_at] |= flag
        if method is not None:
            struct.pack_into("<H", raw, start + method_at, method)
    (sandbox / "a.zip").write_bytes(bytes(raw))


@pytest.mark.parametrize(("flag", "method"), [(1, None), (0, 9), (0, 99)],
                         ids=["encrypted", "deflate64", "aes"])
def test_unreadable_zip_members_are_a_typed_error(sandbox: Path, flag: int,
                                                  method: int | None) -> None:
    _zip_with(sandbox, flag, method)
    with pytest.raises(ToolExecutionError) as caught:
        call(ArchiveHandlerTool(sandbox),
             {"operation": "extract", "archive": "a.zip", "destination": "out"})
    assert caught.value.hint and "not supported" in caught.value.hint
    assert not (sandbox / "out" / "first").exists()  # what was written is removed


# -- templates ---------------------------------------------------------------------------------

needs_jinja = pytest.mark.skipif(importlib.util.find_spec("jinja2") is None,
                                 reason="jinja2 is not installed")


@needs_jinja
@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''|attr('__class__') }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ '{x.__class__}'.format_map({'x': 1}) }}",
    "{% include '/etc/passwd' %}",
    "{% for i in range(10**7) %}{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{% macro m(s) %}{{ m(s ~ s) }}{% endmacro %}{{ m('x') }}",
])
def test_template_injection_is_refused(template: str) -> None:
    from llmspell.runtime.tools.library.template_tool import TemplateEngineTool

    with pytest.raises(ToolExecutionError):
        call(TemplateEngineTool(), {"template": template})


@needs_jinja
def test_template_child_sees_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmspell.runtime.tools.library.template_tool import _child_env

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert "OPENAI_API_KEY" not in _child_env()
    assert set(_child_env()) <= {"PATH", "SYSTEMROOT", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"}
    assert os.environ["OPENAI_API_KEY"] == "sk-test"
