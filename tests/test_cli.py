"""The ``llmspell`` command: real scripts run through ``main`` (and once as a process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmspell import __version__
from llmspell.cli import main


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every run stores its events and state under the test's own folder, which is also
    the working directory (scripts are named relative to it, as a user would)."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data"
    monkeypatch.setenv("LLMSPELL_DATA_DIR", str(folder))
    for name in ("LLMSPELL_STORE", "LLMSPELL_BREAKER", "LLMSPELL_MONITOR"):
        monkeypatch.delenv(name, raising=False)
    return folder


def write(tmp_path: Path, name: str, source: str) -> str:
    """Write the script into ``tmp_path`` (the working directory); return its name."""
    (tmp_path / name).write_text(source)
    return name


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


LUA_OK = """
local a, b = ...
print("adding", a, b)
local r = Tool.invoke("calculator", {expression = a .. " + " .. b})
State.set("sum", r.result)
return {sum = State.get("sum"), args = {...}, n = select("#", ...)}
"""


def test_lua_script_result_is_json_on_stdout(tmp_path: Path, data_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    script = write(tmp_path, "add.lua", LUA_OK)
    code, out, err = run(capsys, "run", script, "--", "2", "40")
    assert code == 0, err
    assert json.loads(out) == {"sum": 42, "args": ["2", "40"], "n": 2}
    assert "[lua] adding\t2\t40" in err  # what the script prints goes to stderr
    assert (data_dir / "events.db").exists()  # the default store is SQLite


def test_js_script_gets_arguments_and_tools(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    script = write(tmp_path, "mul.js", """
        console.log("args", arguments.length);
        const r = await Tool.invoke("calculator", {expression: arguments[0] + " * 3"});
        return {result: r.result, args: [...arguments]};
    """)
    code, out, err = run(capsys, "run", script, "--", "7", "--not-an-option")
    assert code == 0, err
    assert json.loads(out) == {"result": 21, "args": ["7", "--not-an-option"]}
    assert "[javascript] args 2" in err


def test_no_result_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, source in (("quiet.lua", "local x = 1"), ("quiet.js", "const x = 1;")):
        code, out, err = run(capsys, "run", write(tmp_path, name, source))
        assert (code, out) == (0, ""), err


@pytest.mark.parametrize(("name", "source", "where"), [
    ("bad.lua", "local x = 1\nlocal function f()\n  error('boom')\nend\nf()\n", "bad.lua:3: boom"),
    ("bad.js", "const x = 1;\nfunction f() {\n  throw new Error('boom');\n}\nf();\n",
     "bad.js:3: Error: boom"),
])
def test_script_error_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          name: str, source: str, where: str) -> None:
    script = write(tmp_path, name, source)
    code, out, err = run(capsys, "run", script)
    assert code == 1
    assert out == ""
    first, *rest = err.splitlines()
    assert first == where
    # the script's traceback follows: the failing function and its caller, with lines
    assert f"{name}:3" in "\n".join(rest) and f"{name}:5" in "\n".join(rest)


def test_script_error_hint_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = write(tmp_path, "missing_tool.lua", 'return Tool.invoke("no-such-tool", {})')
    code, _, err = run(capsys, "run", script)
    assert code == 1
    assert "missing_tool.lua" in err.splitlines()[0]
    assert "no-such-tool" in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "run", str(tmp_path / "nope.lua"))
    assert (code, out) == (2, "")
    assert "nope.lua: no such file" in err and "hint:" in err


def test_unknown_extension(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = write(tmp_path, "script.py", "print('hi')")
    code, out, err = run(capsys, "run", script)
    assert (code, out) == (2, "")
    assert "cannot tell the language" in err and "*.lua" in err


def test_directory_is_not_a_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "dir.lua"
    folder.mkdir()
    code, _, err = run(capsys, "run", str(folder))
    assert code == 2 and "not a file" in err


def test_denied_capability_names_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LLMSPELL_CLI_TEST", "visible")
    lua = write(tmp_path, "env.lua", 'local v = os.getenv("LLMSPELL_CLI_TEST")\nreturn v\n')
    code, out, err = run(capsys, "run", lua)
    assert (code, out) == (1, "")
    assert err.splitlines()[0].endswith("env.lua:1: os.getenv is not available: "
                                        "run with --allow-env")
    code, out, err = run(capsys, "run", "--allow-env", lua)
    assert (code, json.loads(out)) == (0, "visible"), err
    code, out, err = run(capsys, "run", lua, "--allow-all")
    assert (code, json.loads(out)) == (0, "visible"), err

    js = write(tmp_path, "env.js", "return process.env.LLMSPELL_CLI_TEST;")
    code, _, err = run(capsys, "run", js)
    assert code == 1 and "--allow-env" in err
    code, out, err = run(capsys, "run", js, "--allow-env")
    assert (code, json.loads(out)) == (0, "visible"), err


def test_flags_become_the_capabilities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from llmspell import cli
    from llmspell.scripting import ScriptHost
    from llmspell.scripting.lua import MIB, Capabilities

    seen: list[dict[str, object]] = []

    def spy(system: object, **kwargs: object) -> ScriptHost:
        seen.append(kwargs)
        return ScriptHost(system, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "ScriptHost", spy)
    script = write(tmp_path, "ok.lua", "return 1")
    code, _, err = run(capsys, "run", script, "--allow-read=/a", "--allow-read=/b",
                       "--allow-write=/c", "--allow-exec", "--allow-net",
                       "--time-budget", "2.5", "--max-memory", "64")
    assert code == 0, err
    assert seen[-1] == {"allow": Capabilities(allow_read=("/a", "/b"), allow_write=("/c",),
                                              allow_exec=True, allow_net=True),
                        "max_memory": 64 * MIB, "time_budget": 2.5}
    assert run(capsys, "run", script, "--allow-all")[0] == 0
    assert seen[-1]["allow"] == Capabilities(allow_all=True)


def test_reading_a_file_needs_allow_read(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "note.txt").write_text("hello")
    lua = write(tmp_path, "read.lua", 'local f = io.open("note.txt")\n'
                                      'local s = f:read("a")\nf:close()\nreturn s\n')
    code, out, err = run(capsys, "run", lua)
    assert (code, out) == (1, "")
    assert "read.lua:1: io.open is not available: run with --allow-read=PATH" in err
    code, out, err = run(capsys, "run", lua, f"--allow-read={tmp_path}")
    # file access from scripts is being wired: either it works, or the sandbox says so
    assert (code, out) == (0, '"hello"\n') or "not supported yet" in err, err


def test_time_budget_stops_an_endless_js_loop(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    script = write(tmp_path, "loop.js",
                   "let n = 0;\nfunction spin() {\n  while (true) { n++; }\n}\nspin();\n")
    code, out, err = run(capsys, "run", script, "--time-budget", "0.2")
    assert (code, out) == (1, "")
    assert "loop.js:3: the script ran past its time budget of 0.2 s and was stopped in spin" \
        in err
    assert "hint:" in err


def test_long_lua_path_keeps_its_file_name(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / ("deep" * 10) / ("er" * 10)
    folder.mkdir(parents=True)
    script = folder / "fails.lua"
    script.write_text("\nerror('boom')\n")
    code, _, err = run(capsys, "run", str(script))
    assert code == 1
    assert err.splitlines()[0] == f"{script}:2: boom"


def test_time_budget_stops_an_endless_lua_loop(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    script = write(tmp_path, "loop.lua", "local n = 0\nwhile true do n = n + 1 end\n")
    code, out, err = run(capsys, "run", script, "--time-budget", "0.2")
    assert (code, out) == (1, "")
    assert "loop.lua:2: the script ran past its time budget of 0.2 s" in err


def test_max_memory_limits_the_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = write(tmp_path, "hog.lua",
                   "local t = {}\nfor i = 1, 1e7 do t[i] = {i} end\nreturn #t\n")
    code, _, err = run(capsys, "run", script, "--max-memory", "2")
    assert code == 1
    assert "memory" in err


def test_config_file_is_used(tmp_path: Path, data_dir: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "llmspell.toml", '[llmspell]\nstore = "memory"\n')
    script = write(tmp_path, "ok.lua", "return 1")
    code, out, err = run(capsys, "run", script, "--config", config)
    assert (code, out) == (0, "1\n"), err
    args = write(tmp_path, "args.lua", "return {...}")
    code, out, err = run(capsys, "run", args, "one", "--config", config, "--", "two", "--", "-x")
    assert (code, json.loads(out)) == (0, ["one", "two", "--", "-x"]), err
    assert not (data_dir / "events.db").exists()


def test_configuration_error_exits_2_with_hint(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "bad.toml", 'store = "bogus"\n')
    code, out, err = run(capsys, "run", write(tmp_path, "ok.lua", "return 1"), "--config", config)
    assert (code, out) == (2, "")
    assert "unknown store 'bogus'" in err and "hint: use one of" in err
    code, _, err = run(capsys, "run", write(tmp_path, "ok.lua", "return 1"),
                       "--config", str(tmp_path / "absent.toml"))
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("argv", [
    [], ["run"], ["frobnicate"], ["run", "x.lua", "--bogus"],
    ["run", "x.lua", "--time-budget", "0"], ["run", "x.lua", "--time-budget", "soon"],
    ["run", "x.lua", "--max-memory", "0"],
])
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert "usage: llmspell" in err and "error:" in err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert (code, out) == (0, f"llmspell {__version__}\n")
    code, out, _ = run(capsys, "run", "--help")
    assert code == 0 and "--allow-env" in out and "--time-budget" in out


def test_python_dash_m_llmspell(tmp_path: Path, data_dir: Path) -> None:
    script = write(tmp_path, "hello.js", """
        const seen = [];
        const sub = await Event.subscribe("greeting");
        await Event.publish("greeting", {who: arguments[0]});
        const e = await Event.receive(sub, 1000);
        return {hello: e.data.who};
    """)
    env = {"LLMSPELL_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "llmspell", "run", script, "--", "world"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"hello": "world"}
    proc = subprocess.run([sys.executable, "-m", "llmspell", "run",
                           write(tmp_path, "bad.lua", "\n\nerror('nope')")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert proc.stdout == "" and "bad.lua:3: nope" in proc.stderr


def test_the_config_file_grants_the_same_switches(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    script = write(tmp_path, "env.lua", "return os.getenv('PATH') ~= nil")
    config = tmp_path / "llmspell.toml"
    config.write_text('[llmspell]\nstore = "memory"\n[llmspell.scripting]\nallow_env = true\n'
                      "time_budget = 5\n")
    code, out, _ = run(capsys, "run", script, "--config", str(config))
    assert (code, out.strip()) == (0, "true")
    config.write_text('[llmspell]\nstore = "memory"\n[llmspell.scripting]\nallow_nope = true\n')
    code, _, err = run(capsys, "run", script, "--config", str(config))
    assert code == 2 and "allow_nope" in err


# -- hardening: flags, input files, capabilities of tools, state per run -------------------

@pytest.mark.parametrize("flag, meant", [("--allow-ne", "--allow-net"),
                                         ("--allow-a", "--allow-all"),
                                         ("--allow-nett", "--allow-net"),
                                         ("--time-budge=3", "--time-budget")])
def test_abbreviated_or_misspelt_flags_are_refused_and_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, meant: str) -> None:
    script = write(tmp_path, "ok.lua", "return 'ran'")
    code, out, err = run(capsys, "run", flag, script)
    assert (code, out) == (2, "")  # the script did not run
    assert "usage: llmspell run" in err  # the run command's usage, not the top level's
    assert f"unrecognized option: {flag} (did you mean {meant}?)" in err


def test_unknown_flag_after_the_script_is_named(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    script = write(tmp_path, "ok.lua", "return 'ran'")
    code, out, err = run(capsys, "run", script, "--bogus", "--allow-nett")
    assert (code, out) == (2, "")
    assert "unrecognized options: --bogus, --allow-nett (did you mean --allow-net?)" in err


def test_an_unknown_flags_value_is_not_named_as_an_option(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "view", "--prot", "9000")
    assert (code, out) == (2, "")
    assert "unrecognized option: --prot (did you mean --port?) (with 9000)" in err


@pytest.mark.parametrize("flag", ["--allow-read", "--allow-write"])
def test_path_flags_need_their_value_joined(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            flag: str) -> None:
    script = write(tmp_path, "ok.lua", "return 'ran'")
    code, out, err = run(capsys, "run", flag, script)
    assert (code, out) == (2, "")
    assert f"write {flag}=PATH" in err
    code, out, err = run(capsys, "run", f"{flag}={tmp_path}", script)
    assert (code, json.loads(out)) == (0, "ran"), err


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_time_budget_must_be_finite(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    value: str) -> None:
    script = write(tmp_path, "ok.lua", "return 1")
    code, out, err = run(capsys, "run", script, "--time-budget", value)
    assert (code, out) == (2, "")
    assert "--time-budget" in err


def test_config_time_budget_must_be_finite(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    script = write(tmp_path, "ok.lua", "return 1")
    config = tmp_path / "c.toml"
    config.write_text("[llmspell.scripting]\ntime_budget = inf\n")
    code, _, err = run(capsys, "run", script, "--config", str(config))
    assert code == 2 and "time_budget must be finite" in err


def test_script_that_is_not_utf8_exits_2(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.lua").write_bytes(b"return '\xff\xfe'")
    code, out, err = run(capsys, "run", "bad.lua")
    assert (code, out) == (2, "")
    assert "not UTF-8 text (byte 0xff at offset 8)" in err and "Traceback" not in err


def test_script_with_a_byte_order_mark_runs(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bom.lua").write_bytes(b"\xef\xbb\xbfreturn 'bom'")
    (tmp_path / "bom.js").write_bytes(b"\xef\xbb\xbfreturn 'bom';")
    for name in ("bom.lua", "bom.js"):
        code, out, err = run(capsys, "run", name)
        assert (code, json.loads(out)) == (0, "bom"), err


def test_config_that_is_not_utf8_exits_2_and_a_bom_is_fine(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = write(tmp_path, "ok.lua", "return 1")
    config = tmp_path / "c.toml"
    config.write_bytes(b'store = "memory"\n# \xff\n')
    code, _, err = run(capsys, "run", script, "--config", str(config))
    assert code == 2 and "is not UTF-8 text" in err and "Traceback" not in err
    config.write_bytes(b'\xef\xbb\xbfstore = "memory"\n')
    assert run(capsys, "run", script, "--config", str(config))[0] == 0
    code, _, err = run(capsys, "run", script, "--config", str(tmp_path))
    assert code == 2 and "is a directory" in err


NETWORK_TOOLS = {"http_request", "graphql_query", "service_checker", "web_scraper",
                 "api_tester", "webhook_caller", "webpage_monitor", "sitemap_crawler"}


def test_network_tools_need_allow_net(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    script = write(tmp_path, "tools.lua", """
        local names = {}
        for _, t in ipairs(Tool.list()) do names[#names + 1] = t.name end
        return names
    """)
    code, out, err = run(capsys, "run", script)
    assert code == 0, err
    assert not NETWORK_TOOLS & set(json.loads(out))
    assert "calculator" in json.loads(out)
    code, out, err = run(capsys, "run", script, "--allow-net")
    assert code == 0, err
    assert set(json.loads(out)) >= NETWORK_TOOLS
    code, out, err = run(capsys, "run", script, "--allow-all")
    assert set(json.loads(out)) >= NETWORK_TOOLS
    # Invoking one without the flag fails as an unknown tool, before any connection.
    denied = write(tmp_path, "get.lua",
                   'return Tool.invoke("http_request", {url = "http://127.0.0.1:9/"})')
    code, out, err = run(capsys, "run", denied)
    assert (code, out) == (1, "")
    assert "http_request" in err


def test_state_and_sessions_do_not_outlive_a_run_by_default(
        tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    writer = write(tmp_path, "w.lua", """
        State.set("token", "s3cret")
        local s = Session.start({name = "kept"})
        Session.save(s)
        return s.id
    """)
    reader = write(tmp_path, "r.lua", """
        return {token = State.get("token"), sessions = #Session.list()}
    """)
    assert run(capsys, "run", writer)[0] == 0
    code, out, err = run(capsys, "run", reader)
    assert (code, json.loads(out)) == (0, {"sessions": 0}), err
    assert not (data_dir / "state.db").exists()
    # Opting in keeps them.
    assert run(capsys, "run", writer, "--persist-state")[0] == 0
    code, out, err = run(capsys, "run", reader, "--persist-state")
    assert (code, json.loads(out)) == (0, {"token": "s3cret", "sessions": 1}), err
    config = tmp_path / "c.toml"
    config.write_text("[llmspell.scripting]\npersist_state = true\n")
    code, out, err = run(capsys, "run", reader, "--config", str(config))
    assert json.loads(out)["token"] == "s3cret", err


def test_what_a_run_may_store_is_bounded(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[llmspell.scripting]\nmax_state_bytes = 10000\n")
    script = write(tmp_path, "fill.lua", """
        local chunk = string.rep("x", 4000)
        State.set("a", chunk)
        State.set("a", chunk)          -- overwriting does not count twice
        State.set("b", chunk)
        local ok, err = pcall(State.set, "c", chunk)
        State.delete("a")              -- deleting gives the bytes back
        State.set("c", chunk)
        return {refused = not ok, message = tostring(err)}
    """)
    code, out, err = run(capsys, "run", script, "--config", str(config))
    assert code == 0, err
    result = json.loads(out)
    assert result["refused"] and "state quota exceeded" in result["message"]
    config.write_text("[llmspell.scripting]\nmax_state_bytes = 0\n")
    code, _, err = run(capsys, "run", script, "--config", str(config))
    assert code == 2 and "max_state_bytes" in err


def test_system_monitor_follows_the_read_and_exec_flags(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "inside").mkdir()
    script = write(tmp_path, "mon.lua", """
        local path = ...
        local ok, disk = pcall(Tool.invoke, "system_monitor", {metrics = {"disk"}, path = path})
        local procs = Tool.invoke("system_monitor", {metrics = {"processes"}})
        local users = false
        for _, p in ipairs(procs.processes or {}) do
            if p.username ~= nil then users = true end
        end
        return {disk = ok, users = users}
    """)
    inside = str(tmp_path / "inside")
    code, out, err = run(capsys, "run", script, "--", inside)
    assert (code, json.loads(out)) == (0, {"disk": False, "users": False}), err
    code, out, err = run(capsys, "run", script, f"--allow-read={inside}", "--", inside)
    assert (code, json.loads(out)) == (0, {"disk": True, "users": False}), err
    code, out, err = run(capsys, "run", script, "--allow-exec", "--", "/etc/shadow")
    assert (code, json.loads(out)) == (0, {"disk": False, "users": True}), err
