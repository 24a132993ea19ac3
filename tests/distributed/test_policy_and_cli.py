"""Policy files and ``llmspell hooks serve``: the conventions, errors, clean shutdown."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llmspell.cli import main
from llmspell.distributed import RemoteHook, load_policy
from llmspell.errors import ConfigurationError
from tests.distributed.support import POLICIES, ROOT, Server, hook_url, tool_ctx
from tests.events.nats_support import nats_url

__all__ = ["nats_url"]  # fixtures


def _write(tmp_path: Path, text: str, name: str = "policy.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_hooks_list_declares_what_is_served() -> None:
    [guard] = load_policy(POLICIES / "guard.py")
    assert guard.name == "guard" and guard.points == frozenset({"before_tool_execution"})
    assert guard.describe() == "guard (before_tool_execution)"


def test_without_hooks_list_the_decorated_functions_of_the_file_are_served(
        tmp_path: Path) -> None:
    path = _write(tmp_path, """
from llmspell.hooks import hook, Cancel
from tests.distributed.policies.guard import guard as imported  # not this file's

@hook("BeforeToolExecution", "AfterToolExecution", name="audit")
def audit(ctx):
    return None

@hook()
async def anywhere(ctx):
    return None

def helper(ctx):
    return None
""")
    served = {hook.name: hook for hook in load_policy(path)}
    assert set(served) == {"audit", "anywhere"}
    assert served["audit"].points == frozenset({"before_tool_execution",
                                                "after_tool_execution"})
    assert served["anywhere"].points is None and served["anywhere"].is_async


@pytest.mark.parametrize(("text", "complaint"), [
    ("HOOKS = []", "declares no hooks (HOOKS is empty)"),
    ("x = 1", "no HOOKS list and no @hook functions"),
    ("HOOKS = 'guard'", "HOOKS must be a list"),
    ("HOOKS = [42]", "HOOKS[0]: int is not a hook"),
    ("def a(ctx): ...\nHOOKS = [a, a]", "two hooks are named 'a'"),
    ("from llmspell.hooks import hook\n@hook(name='has space')\ndef a(ctx): ...",
     "cannot name a remote hook"),
    ("x = 1\nraise RuntimeError('no database')", "(line 2): importing the policy failed: "
                                                 "RuntimeError: no database"),
])
def test_bad_policies_are_refused_saying_why(tmp_path: Path, text: str,
                                             complaint: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_policy(_write(tmp_path, text))
    assert complaint in caught.value.message


def test_a_missing_or_non_python_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no such policy file"):
        load_policy(tmp_path / "missing.py")
    with pytest.raises(ConfigurationError, match=r"a Python \(.py\) file"):
        load_policy(_write(tmp_path, "x", "policy.lua"))


@pytest.mark.parametrize(("args", "complaint"), [
    (["hooks", "serve", "missing.py"], "missing.py: no such policy file"),
    (["hooks", "serve", str(POLICIES / "guard.py"), "--key-env", "LLMSPELL_NO_SUCH_KEY"],
     "environment variable LLMSPELL_NO_SUCH_KEY holds no key"),
    (["hooks", "serve", str(POLICIES / "guard.py"), "--bus", "http://x"], "scheme"),
    (["hooks", "serve", str(POLICIES / "guard.py"), "--bus", "nats://127.0.0.1:1"],
     "cannot reach the NATS server"),
    (["hooks", "serve", str(POLICIES / "guard.py"), "--hop-limit", "65"], "at most 64"),
    (["hooks", "serve", str(POLICIES / "guard.py"), "--max-payload", "100"],
     "max_payload must be an int >= 1024"),
])
def test_serve_errors_exit_2_with_the_reason(args: list[str], complaint: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert complaint in err and "hint:" in err


def test_serve_usage_errors_name_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hooks", "serve"]) == 2
    assert "llmspell hooks serve: error" in capsys.readouterr().err
    assert main(["hooks", "serve", "p.py", "--max-inflight", "0"]) == 2
    assert main(["hooks"]) == 2


def test_serve_help_documents_the_flags() -> None:
    out = io.StringIO()
    sys_stdout = sys.stdout
    try:
        sys.stdout = out
        assert main(["hooks", "serve", "--help"]) == 0
    finally:
        sys.stdout = sys_stdout
    for flag in ("--bus", "--key-env", "--queue", "--max-inflight", "--hop-limit",
                 "--max-payload"):
        assert flag in out.getvalue()


async def test_sigint_stops_the_server_cleanly_after_the_calls_it_took(nats_url: str) -> None:
    url = hook_url(nats_url)
    server = await Server("guard.py", url).ready()
    assert "guard (before_tool_execution)" in server.banner
    assert "signing OFF" in server.banner
    guard = RemoteHook("guard", "BeforeToolExecution", url=url, key=None, timeout=10)
    try:
        assert (await guard.execute(tool_ctx(command="ls"))).kind == "continue"
    finally:
        await guard.close()
    server.proc.send_signal(signal.SIGINT)
    out, err = await asyncio.to_thread(server.proc.communicate, None, 30)
    assert server.proc.returncode == 0, err
    assert "stopped: served 1, refused 0, failed 0" in out
    assert "stopping" in err


def test_the_module_runs_as_a_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "llmspell", "hooks", "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and "serve" in proc.stdout
