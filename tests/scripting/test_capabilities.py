"""The capability flags (read, write, exec, net, all) in Lua and JavaScript: what each
grants, confinement to the path roots (``..`` and symlink escapes), and the errors that
name the missing flag."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from llmspell.errors import ScriptError
from llmspell.runtime import System, SystemConfig
from llmspell.scripting import Capabilities, LuaEngine, ScriptHost


@pytest.fixture
async def system() -> AsyncIterator[System]:
    sys = System(SystemConfig(store="memory"))
    await sys.start()
    yield sys
    await sys.shutdown()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ (readable: a.txt, lib.lua, sub/, escape -> ../secret.txt), root/out (writable),
    secret.txt outside both."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "a.txt").write_text("hello\nworld\n42 3.5\n")
    (root / "lib.lua").write_text("#!/usr/bin/env lua\nlocal x = ...\nreturn 7, python\n")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    return root


def caps(tree: Path, **extra: Any) -> Capabilities:
    return Capabilities(allow_read=(str(tree),), allow_write=(str(tree / "out"),), **extra)


def lua(host: ScriptHost, source: str, **paths: Path) -> Any:
    prefix = "".join(f"local {k} = {json.dumps(str(v))}\n" for k, v in paths.items())
    return host.run_lua(prefix + source)


def js(host: ScriptHost, source: str, **paths: Path) -> Any:
    prefix = "".join(f"const {k} = {json.dumps(str(v))};\n" for k, v in paths.items())
    return host.run_js(prefix + source)


# -- read -----------------------------------------------------------------------------------
def test_lua_reads_inside_the_roots(system: System, tree: Path) -> None:
    host = ScriptHost(system, allow=caps(tree))
    out = lua(host, """
      local f = assert(io.open(root .. "/a.txt"))
      local l1, l2 = f:read("l", "L")
      local n1, n2 = f:read("n", "n")
      local rest, eof, eol = f:read("a"), f:read("a"), f:read("l")
      local pos = f:seek("set", 1)
      local two = f:read(2)
      local size = f:seek("end")
      assert(io.type(f) == "file" and getmetatable(f) == false)
      assert(f:close() == true and io.type(f) == "closed file")
      local lines = {}
      for line in io.lines(root .. "/a.txt") do lines[#lines + 1] = line end
      local via = {}
      for a, b in io.lines(root .. "/a.txt", 1, "l") do via[#via + 1] = a .. "|" .. b end
      return {l1, l2, n1, n2, rest, eof, tostring(eol), pos, two, size, lines, via}
    """, root=tree)
    assert out == ["hello", "world\n", 42, 3.5, "\n", "", "nil", 1, "el", 19,
                   ["hello", "world", "42 3.5"], ["h|ello", "w|orld", "4|2 3.5"]]


def test_lua_dofile_and_loadfile_run_text_chunks_in_the_sandbox(system: System,
                                                                 tree: Path) -> None:
    (tree / "bin.luac").write_bytes(b"\x1bLua\x54\x00")
    host = ScriptHost(system, allow=caps(tree))
    out = lua(host, """
      local a, b = dofile(root .. "/lib.lua")
      local f = assert(loadfile(root .. "/lib.lua"))
      local nope, why = loadfile(root .. "/missing.lua")
      local bin, err = loadfile(root .. "/bin.luac")
      return {a, b == nil, f() , nope == nil, why, bin == nil, err}
    """, root=tree)
    assert out[:4] == [7, True, 7, True]
    assert out[4].startswith("cannot open ") and "No such file" in out[4]
    assert out[5] is True and "binary chunk" in out[6]


@pytest.mark.parametrize("path", ["../secret.txt", "sub/../../secret.txt", "escape"])
def test_reads_outside_the_roots_are_refused(system: System, tree: Path, path: str) -> None:
    host = ScriptHost(system, allow=caps(tree))
    target = f"{tree}/{path}"
    # the path as given, never where a symlink outside the roots points
    named = "secret" in path
    with pytest.raises(ScriptError, match="--allow-read") as info:
        lua(host, "return io.open(p)", p=Path(target))
    assert target in str(info.value) and ("secret.txt" in str(info.value)) == named
    with pytest.raises(ScriptError, match="--allow-read") as info:
        lua(host, "return dofile(p)", p=Path(target))
    assert ("secret.txt" in str(info.value)) == named
    out = js(host, """
      try { await fs.readTextFile(p); return "read"; }
      catch (e) { return e.name + ": " + e.message; }
    """, p=Path(target))
    assert out.startswith("PermissionDeniedError: ") and "--allow-read" in out
    assert ("secret.txt" in out) == named


def test_js_reads_inside_the_roots(system: System, tree: Path) -> None:
    host = ScriptHost(system, allow=caps(tree))
    out = js(host, """
      const text = await fs.readTextFile(root + "/a.txt");
      const names = (await fs.readDir(root)).map((e) => e.name + (e.is_dir ? "/" : ""));
      const info = await fs.stat(root + "/a.txt");
      let missing;
      try { await fs.stat(root + "/nope"); } catch (e) { missing = e.name; }
      return {text, names, size: info.size, file: info.is_file, missing};
    """, root=tree)
    assert out == {"text": "hello\nworld\n42 3.5\n",
                   "names": ["a.txt", "escape", "lib.lua", "out/", "sub/"],
                   "size": 19, "file": True, "missing": "FileNotFoundError"}


def test_only_regular_files_are_opened(system: System, tree: Path) -> None:
    os.mkfifo(tree / "fifo")
    host = ScriptHost(system, allow=caps(tree))
    out = lua(host, """
      local _, dir_msg, dir_errno = io.open(root .. "/sub")
      local _, fifo_msg = io.open(root .. "/fifo")
      return {dir_msg, dir_errno, fifo_msg}
    """, root=tree)
    assert "Is a directory" in out[0] and out[1] == 21
    assert "not a regular file" in out[2]


# -- write ----------------------------------------------------------------------------------
def test_lua_writes_removes_and_renames_inside_the_write_roots(system: System,
                                                               tree: Path) -> None:
    host = ScriptHost(system, allow=caps(tree))
    out = lua(host, """
      local f = assert(io.open(dir .. "/x.txt", "w"))
      assert(f:write("a", 1, " ", 2.5, "\\n") == f)
      f:close()
      f = assert(io.open(dir .. "/x.txt", "a")); f:write("more\\n"); f:close()
      f = assert(io.open(dir .. "/x.txt", "r+")); f:seek("set", 0); f:write("A"); f:close()
      f = assert(io.open(dir .. "/bin", "wb")); f:write("\\255\\0\\1end"); f:close()
      f = assert(io.open(dir .. "/bin", "rb")); local bin = f:read("a"); f:close()
      assert(os.rename(dir .. "/x.txt", dir .. "/y.txt") == true)
      local tmp = os.tmpname()
      local gone = {os.remove(dir .. "/nope")}
      io.output(dir .. "/out.txt"); io.write("via io.write"); io.close()
      local t = io.tmpfile(); t:write("scratch"); t:seek("set"); local s = t:read("a"); t:close()
      return {#bin, bin:byte(1), bin:sub(4), tmp, gone[2], gone[3], s}
    """, dir=tree / "out")
    assert (tree / "out" / "y.txt").read_text() == "A1 2.5\nmore\n"
    assert not (tree / "out" / "x.txt").exists()
    assert (tree / "out" / "out.txt").read_text() == "via io.write"
    assert out[:3] == [6, 255, "end"]
    assert Path(out[3]).parent == tree / "out" and Path(out[3]).exists()
    assert "No such file" in out[4] and out[5] == 2 and out[6] == "scratch"
    lua(host, "assert(os.remove(dir .. '/y.txt'))", dir=tree / "out")
    assert not (tree / "out" / "y.txt").exists()


def test_writes_outside_the_write_roots_are_refused(system: System, tree: Path) -> None:
    host = ScriptHost(system, allow=caps(tree))
    (tree / "out" / "link").symlink_to(tree / "a.txt")
    for source in ['io.open(root .. "/a.txt", "w")',
                   'io.open(root .. "/out/../a.txt", "a")',
                   'io.open(root .. "/out/link", "w")',
                   'os.remove(root .. "/a.txt")',
                   'os.rename(root .. "/out/link", root .. "/moved")',
                   'os.rename(root .. "/a.txt", root .. "/out/a.txt")',
                   'os.remove(root .. "/out")']:
        with pytest.raises(ScriptError, match="--allow-write") as info:
            lua(host, source, root=tree)
        assert str(tree) in str(info.value)
    assert (tree / "a.txt").read_text().startswith("hello")
    # removing a symlink removes the link, never its target
    lua(host, 'assert(os.remove(root .. "/out/link"))', root=tree)
    assert not (tree / "out" / "link").exists() and (tree / "a.txt").exists()


def test_js_writes(system: System, tree: Path) -> None:
    host = ScriptHost(system, allow=caps(tree))
    out = js(host, """
      await fs.writeTextFile(dir + "/a.txt", "one");
      await fs.writeTextFile(dir + "/a.txt", " two", {append: true});
      await fs.mkdir(dir + "/d/e", {recursive: true});
      await fs.rename(dir + "/a.txt", dir + "/d/b.txt");
      const text = await fs.readTextFile(dir + "/d/b.txt");
      await fs.remove(dir + "/d/b.txt");
      await fs.remove(dir + "/d", {recursive: true});
      let outside;
      try { await fs.writeTextFile(dir + "/../x.txt", "no"); }
      catch (e) { outside = e.message; }
      return {text, left: (await fs.readDir(dir)).length, outside};
    """, dir=tree / "out")
    assert out["text"] == "one two" and out["left"] == 0
    assert "--allow-write" in out["outside"] and "x.txt" in out["outside"]
    assert not (tree / "x.txt").exists()


# -- exec -----------------------------------------------------------------------------------
def test_lua_exec(system: System) -> None:
    host = ScriptHost(system, allow=Capabilities(allow_exec=True), time_budget=0.2)
    out = host.run_lua("""
      local ok, kind, code = os.execute("exit 3")
      local ok0 = os.execute("sleep 0.3; true")   -- host time is outside the script budget
      local p = io.popen("printf 'a\\\\nb\\\\n'; exit 4")
      local lines = {}
      for line in p:lines() do lines[#lines + 1] = line end
      local closed = {p:close()}
      return {ok == nil, kind, code, ok0, lines, closed[1] == nil, closed[2], closed[3],
              os.execute()}
    """)
    assert out == [True, "exit", 3, True, ["a", "b"], True, "exit", 4, True]
    with pytest.raises(ScriptError, match="timeout of 200 ms"):
        host.run_lua('os.execute("sleep 5", {timeout_ms = 200})')


def test_js_exec_without_a_shell(system: System, tmp_path: Path) -> None:
    host = ScriptHost(system, allow=Capabilities(allow_exec=True))
    out = host.run_js(f"""
      const r = await exec("sh", ["-c", "cat; pwd; echo oops >&2; exit 2"],
                           {{input: "in\\n", cwd: {json.dumps(str(tmp_path))}}});
      const literal = await exec("echo", ["$HOME", "a;b"]);
      let slow;
      try {{ await exec("sleep", ["5"], {{timeout_ms: 200}}); }} catch (e) {{ slow = e.message; }}
      let missing;
      try {{ await exec("/no/such/program"); }} catch (e) {{ missing = e.message; }}
      return {{r, literal: literal.stdout, slow, missing}};
    """)
    assert out["r"] == {"code": 2, "signal": None, "stdout": f"in\n{tmp_path}\n",
                        "stderr": "oops\n"}
    assert out["literal"] == "$HOME a;b\n"
    assert "timeout of 200 ms" in out["slow"] and "cannot run" in out["missing"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie waiting for its reaper is gone too
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("setsid") is None,
                    reason="a Linux child subreaper and the setsid program")
def test_nothing_a_command_starts_outlives_it(system: System, tmp_path: Path) -> None:
    # A child that left the session (setsid) escaped the process-group kill and lived on;
    # a background child holding the output pipe kept the call waiting until its timeout.
    marker = tmp_path / "sleeper.pid"
    host = ScriptHost(system, allow=Capabilities(allow_exec=True))
    out = host.run_lua(f"""
      local escaped = os.execute("setsid sleep 300 >/dev/null 2>&1 & echo $! > {marker}")
      local p = io.popen("sleep 300 & echo started")  -- waited for its 30 s timeout
      local line = p:read("l")
      return {{escaped, line, p:close()}}
    """)
    pid = int(marker.read_text())
    try:
        assert out == [True, "started", True, "exit", 0]
        assert not _alive(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- net ------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        payload = json.dumps({"method": self.command, "path": self.path, "body": body,
                              "token": self.headers.get("x-token")}).encode()
        self.send_response(404 if self.path == "/missing" else 200)
        self.send_header("content-type", "application/json")
        self.send_header("x-seen", "yes")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


async def test_lua_fetch(system: System, server: str) -> None:
    host = ScriptHost(system, allow=Capabilities(allow_net=True))
    out = await host.run_lua_async(f"""
      local r = fetch("{server}/post", {{method = "POST", body = "hi",
                                         headers = {{["X-Token"] = "t1"}}}})
      local missing = fetch("{server}/missing")
      return {{r.status, r.ok, r.headers["x-seen"], JSON.decode(r.body), missing.status,
               missing.ok}}
    """)
    assert out == [200, True, "yes",
                   {"method": "POST", "path": "/post", "body": "hi", "token": "t1"}, 404, False]


async def test_js_fetch(system: System, server: str) -> None:
    host = ScriptHost(system, allow=Capabilities(allow_net=True))
    out = await host.run_js_async(f"""
      const r = await fetch("{server}/x?y=1", {{headers: {{"x-token": "t2"}}}});
      const dead = await fetch("http://127.0.0.1:9/", {{timeout_ms: 2000}})
        .then(() => "answered", (e) => e.name);
      return {{status: r.status, ok: r.ok, seen: r.headers["x-seen"], data: r.json(),
               text: typeof r.text, dead}};
    """)
    assert out == {"status": 200, "ok": True, "seen": "yes", "text": "string",
                   "data": {"method": "GET", "path": "/x?y=1", "body": "", "token": "t2"},
                   "dead": "NetworkError"}


def test_lua_files_left_open_are_closed_once_collected(system: System, tree: Path) -> None:
    host = ScriptHost(system, allow=caps(tree))
    assert lua(host, """
      for i = 1, 200 do
        local f = assert(io.open(root .. "/a.txt"))
        for line in io.lines(root .. "/a.txt") do break end
      end
      return "ok"
    """, root=tree) == "ok"
    assert len(host.engine.io._files) <= 64


# -- denied and allow_all -------------------------------------------------------------------
@pytest.mark.parametrize(("source", "flag"), [
    ('io.open("/etc/hostname")', "--allow-read=PATH"),
    ('io.lines("/etc/hostname")', "--allow-read=PATH"),
    ('loadfile("/x.lua")', "--allow-read=PATH"),
    ('io.open("/tmp/x", "w")', "--allow-read=PATH"),
    ('os.rename("a", "b")', "--allow-write=PATH"),
    ("os.tmpname()", "--allow-write=PATH"),
    ("io.tmpfile()", "--allow-write=PATH"),
    ('io.popen("ls")', "--allow-exec"),
    ('os.execute("ls")', "--allow-exec"),
    ('fetch("http://127.0.0.1/")', "--allow-net"),
])
def test_lua_without_flags_names_the_flag(source: str, flag: str) -> None:
    with pytest.raises(ScriptError, match=re.escape(flag)):
        LuaEngine().run(source)


def test_lua_flags_grant_only_their_own_functions(tree: Path) -> None:
    engine = LuaEngine(allow=Capabilities(allow_read=(str(tree),)))
    with pytest.raises(ScriptError, match="--allow-write"):
        engine.run(f'io.open("{tree}/a.txt", "w")')
    with pytest.raises(ScriptError, match="--allow-write"):
        engine.run(f'io.open("{tree}/a.txt", "r+")')
    with pytest.raises(ScriptError, match="--allow-exec"):
        engine.run('os.execute("true")')
    writer = LuaEngine(allow=Capabilities(allow_write=(str(tree),)))
    with pytest.raises(ScriptError, match="--allow-read"):
        writer.run(f'io.open("{tree}/a.txt")')


def test_js_without_flags_names_the_flag(system: System) -> None:
    host = ScriptHost(system)
    out = host.run_js("""
      const calls = {
        read: () => fs.readTextFile("/etc/hostname"), dir: () => fs.readDir("/"),
        stat: () => fs.stat("/"), write: () => fs.writeTextFile("/tmp/x", "x"),
        remove: () => fs.remove("/tmp/x"), rename: () => fs.rename("/tmp/x", "/tmp/y"),
        mkdir: () => fs.mkdir("/tmp/x"), exec: () => exec("ls"),
        fetch: () => fetch("http://127.0.0.1/"),
      };
      const out = {};
      for (const [name, f] of Object.entries(calls)) {
        try { f(); out[name] = "allowed"; } catch (e) { out[name] = e.message; }
      }
      return out;
    """)
    flags = {"read": "--allow-read", "dir": "--allow-read", "stat": "--allow-read",
             "write": "--allow-write", "remove": "--allow-write", "rename": "--allow-write",
             "mkdir": "--allow-write", "exec": "--allow-exec", "fetch": "--allow-net"}
    for name, flag in flags.items():
        assert flag in out[name], (name, out[name])


def test_allow_all_allows_everything(system: System, tree: Path) -> None:
    host = ScriptHost(system, allow=Capabilities(allow_all=True))
    secret = tree.parent / "secret.txt"
    out = lua(host, """
      local f = assert(io.open(secret)); local s = f:read("a"); f:close()
      f = assert(io.open(secret .. ".copy", "w")); f:write(s); f:close()
      local p = io.popen("cat " .. secret .. ".copy"); local c = p:read("a"); p:close()
      assert(os.remove(secret .. ".copy"))
      return {s, c, os.getenv("PATH") ~= nil}
    """, secret=secret)
    assert out == ["secret", "secret", True]
    assert js(host, "return await fs.readTextFile(secret);", secret=secret) == "secret"


# -- a root is a directory, not a name prefix ---------------------------------------------------
@pytest.fixture
def siblings(tmp_path: Path) -> Path:
    """data/root (readable), data/out (writable), and siblings sharing their names' prefix:
    data/root-secrets/key.txt, data/rootx.txt, data/out-other/."""
    data = tmp_path / "data"
    for d in ("root", "out", "root-secrets", "out-other"):
        (data / d).mkdir(parents=True)
    (data / "root" / "ok.txt").write_text("fine")
    (data / "root-secrets" / "key.txt").write_text("secret")
    (data / "rootx.txt").write_text("secret")
    return data


@pytest.mark.parametrize("language", ["lua", "js"])
@pytest.mark.parametrize("relative", ["root-secrets/key.txt", "rootx.txt",
                                      "root/../root-secrets/key.txt"])
def test_reads_from_a_sibling_sharing_the_roots_prefix_are_refused(
        system: System, siblings: Path, language: str, relative: str) -> None:
    host = ScriptHost(system, allow=Capabilities(allow_read=(str(siblings / "root"),)))
    target = Path(f"{siblings}/{relative}")
    if language == "lua":
        assert lua(host, "return io.open(p):read('a')", p=siblings / "root" / "ok.txt") == \
            "fine"
        with pytest.raises(ScriptError, match="outside the --allow-read paths"):
            lua(host, "return io.open(p):read('a')", p=target)
    else:
        assert js(host, "return await fs.readTextFile(p)", p=siblings / "root" / "ok.txt") == \
            "fine"
        out = js(host, """
          try { return await fs.readTextFile(p); }
          catch (e) { return e.name + ": " + e.message; }
        """, p=target)
        assert out.startswith("PermissionDeniedError: ") and "--allow-read paths" in out


@pytest.mark.parametrize("language", ["lua", "js"])
@pytest.mark.parametrize("relative", ["out-other/new.txt", "outx.txt",
                                      "out/../out-other/new.txt"])
def test_writes_to_a_sibling_sharing_the_roots_prefix_are_refused(
        system: System, siblings: Path, language: str, relative: str) -> None:
    host = ScriptHost(system, allow=Capabilities(allow_write=(str(siblings / "out"),)))
    target = Path(f"{siblings}/{relative}")
    if language == "lua":
        assert lua(host, "local f = assert(io.open(p, 'w')) f:write('x') f:close() "
                         "return true", p=siblings / "out" / "ok.txt") is True
        with pytest.raises(ScriptError, match="outside the --allow-write paths"):
            lua(host, "return io.open(p, 'w')", p=target)
        with pytest.raises(ScriptError, match="outside the --allow-write paths"):
            lua(host, "return os.rename(a, p)", a=siblings / "out" / "ok.txt", p=target)
    else:
        js(host, "await fs.writeTextFile(p, 'x'); return true;", p=siblings / "out" / "ok.txt")
        out = js(host, """
          try { await fs.writeTextFile(p, "x"); return "written"; }
          catch (e) { return e.name + ": " + e.message; }
        """, p=target)
        assert out.startswith("PermissionDeniedError: ") and "--allow-write paths" in out
    assert not target.exists()
    assert (siblings / "out" / "ok.txt").read_text() == "x"


def test_a_write_through_a_symlink_out_of_the_roots_does_not_say_where_it_points(
        system: System, siblings: Path) -> None:
    (siblings / "out" / "link").symlink_to(siblings / "out-other")
    host = ScriptHost(system, allow=Capabilities(allow_write=(str(siblings / "out"),)))
    with pytest.raises(ScriptError, match="outside the --allow-write paths") as info:
        lua(host, "return io.open(p, 'w')", p=siblings / "out" / "link" / "f.txt")
    assert "out-other" not in str(info.value)


# -- the exact Lua sandbox, per capability set -------------------------------------------------
_LUA_SURFACE = """
local function keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = tostring(k) end
  table.sort(out)
  return out
end
local function granted(f)
  local ok, err = pcall(f)
  return ok or not string.find(tostring(err), "not available", 1, true)
end
local out = {}
for _, lib in ipairs({"io", "os"}) do
  for _, name in ipairs(keys(_G[lib])) do
    if type(_G[lib][name]) == "function" and granted(_G[lib][name]) then
      out[#out + 1] = lib .. "." .. name
    end
  end
end
for _, name in ipairs({"dofile", "loadfile", "require", "fetch", "collectgarbage"}) do
  if granted(_G[name]) then out[#out + 1] = name end
end
return {globals = keys(_G), io = keys(io), os = keys(os), string = keys(string),
        table = keys(table), math = keys(math), coroutine = keys(coroutine),
        utf8 = keys(utf8), debug = keys(debug), granted = out}
"""
_LUA_GLOBALS = sorted(" ".join([
    "Agent Event Hook JSON Logger Replay Session State Tool Workflow _G _VERSION assert",
    "collectgarbage coroutine debug dofile error fetch getmetatable io ipairs load loadfile",
    "math next os pairs pcall print rawequal rawget rawlen rawset require select",
    "setmetatable string table tonumber tostring type utf8 xpcall"]).split())
_LUA_LIBS = {
    "io": "close input lines open output popen read tmpfile type write",
    "os": "clock date difftime execute exit getenv remove rename setlocale time tmpname",
    "string": "byte char find format gmatch gsub len lower match pack packsize rep reverse "
              "sub unpack upper",
    "table": "concat insert move pack remove sort unpack",
    "math": "abs acos asin atan ceil cos deg exp floor fmod huge log max maxinteger min "
            "mininteger modf pi rad random randomseed sin sqrt tan tointeger type ult",
    "coroutine": "close create isyieldable resume running status wrap yield",
    "utf8": "char charpattern codepoint codes len offset",
    "debug": "",
}
_ALWAYS = {"collectgarbage", "io.type", "os.clock", "os.date", "os.difftime", "os.time"}
_READ_FNS = {"io.open", "io.lines", "io.input", "io.read", "io.close", "dofile", "loadfile"}
_WRITE_FNS = {"io.open", "io.close", "io.write", "io.output", "io.tmpfile", "os.remove",
              "os.rename", "os.tmpname"}


@pytest.mark.parametrize(("flags", "grants"), [
    ({}, set()),
    ({"allow_read": "dir"}, _READ_FNS),
    ({"allow_write": "dir"}, _WRITE_FNS),
    ({"allow_env": True}, {"os.getenv"}),
    ({"allow_exec": True}, {"io.popen", "os.execute"}),
    ({"allow_net": True}, {"fetch"}),
    ({"allow_all": True}, _READ_FNS | _WRITE_FNS | {"os.getenv", "io.popen", "os.execute",
                                                    "fetch"}),
], ids=["none", "read", "write", "env", "exec", "net", "all"])
def test_the_lua_sandbox_is_exactly_this(system: System, tmp_path: Path,
                                         flags: dict[str, Any], grants: set[str]) -> None:
    """Every global and every io/os entry, and which functions each flag makes real:
    a stray global (the real io table, a debug function...) fails here."""
    flags = {k: (str(tmp_path),) if v == "dir" else v for k, v in flags.items()}
    host = ScriptHost(system, allow=Capabilities(**flags))
    out = host.run_lua(_LUA_SURFACE)
    assert out["globals"] == _LUA_GLOBALS
    for lib, names in _LUA_LIBS.items():
        assert out[lib] == (sorted(names.split()) or {}), lib
    assert set(out["granted"]) == _ALWAYS | grants
    # never: os.exit, os.setlocale, require
    assert not {"os.exit", "os.setlocale", "require"} & set(out["granted"])
