"""``llmspell view``: the refusals, and a real server started and stopped."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmspell.cli import main
from llmspell.events.distributed import make_bus
from llmspell.viewer import ViewerServer
from tests.ci import require_module
from tests.events.nats_support import nats_url
from tests.viewer.support import record_agent_run

require_module("uvicorn", install="llmspell[viewer]")

__all__ = ["nats_url"]  # a fixture

TOKEN = "a-long-enough-token-for-tests"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSPELL_VIEW_TOKEN", raising=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "viewer.example"])
def test_a_non_loopback_address_without_a_token_is_refused(
        host: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(["view", "--host", host, "--port", "0",
                          "--store", str(tmp_path / "events.db")], capsys)
    assert code == 2 and out == ""
    assert "without a token" in err and "--token" in err


def test_a_short_token_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["view", "--token", "short"], capsys)
    assert code == 2 and "at least 16" in err


def test_store_and_bus_are_one_or_the_other(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["view", "--store", "x.db", "--bus", "nats://127.0.0.1:4222"], capsys)
    assert code == 2 and "not allowed with" in err


def test_a_store_that_keeps_nothing_has_nothing_to_follow(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSPELL_STORE", "memory")
    code, _, err = run(["view", "--port", "0"], capsys)
    assert code == 2 and "keeps nothing" in err


def test_a_bad_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["view", "--port", "99999"], capsys)
    assert code == 2 and "0-65535" in err


def start(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "llmspell", "view", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("llmspell view: serving http://"), (line, proc.stderr.read()
                                                               if proc.stderr else "")
    url = line.split("serving ", 1)[1].split(" ", 1)[0]
    return proc, url


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serving_the_configured_store_until_interrupted(tmp_path: Path) -> None:
    record_agent_run(tmp_path)
    proc, url = start(["--port", "0"], {"LLMSPELL_DATA_DIR": str(tmp_path)})
    try:
        state = httpx.get(url + "api/state", timeout=10).json()
        assert state["runs"][0]["name"] == "helper"
        assert state["stats"]["source"]["where"] == str(tmp_path / "events.db")
    finally:
        assert stop(proc) == 0


def test_serving_elsewhere_with_a_token_from_the_environment(tmp_path: Path) -> None:
    proc, url = start(["--host", "0.0.0.0", "--port", "0", "--store",
                       str(tmp_path / "later.db")], {"LLMSPELL_VIEW_TOKEN": TOKEN})
    local = url.replace("0.0.0.0", "127.0.0.1")
    try:
        assert httpx.get(local + "api/state", timeout=10).status_code == 401
        answer = httpx.get(local + "api/state", params={"token": TOKEN}, timeout=10)
        assert answer.status_code == 200
        assert answer.json()["stats"]["source"]["status"] == "waiting"
    finally:
        assert stop(proc) == 0


def test_the_help_names_the_options() -> None:
    out = io.StringIO()
    sys_stdout = sys.stdout
    sys.stdout = out
    try:
        assert main(["view", "--help"]) == 0
    finally:
        sys.stdout = sys_stdout
    for flag in ("--store", "--bus", "--host", "--port", "--token"):
        assert flag in out.getvalue()


def serve_once(check: Any) -> Any:
    """A stand-in for ViewerServer.run that serves on a thread, runs ``check(url)`` against
    the real server, then stops it (so the command returns in-process)."""

    serve = ViewerServer.run

    def run(self: ViewerServer) -> None:
        thread = threading.Thread(target=serve, args=(self,), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            check(self.url)
        finally:
            self.stop()
            thread.join(30)

    return run


def test_the_command_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    record_agent_run(tmp_path)
    seen: list[Any] = []
    monkeypatch.setattr(ViewerServer, "run", serve_once(
        lambda url: seen.append(httpx.get(url + "api/state", timeout=10).json())))
    code, out, _ = run(["view", "--store", str(tmp_path / "events.db"), "--port", "0"], capsys)
    assert code == 0 and "serving http://127.0.0.1:" in out and "Ctrl-C" in out
    assert seen[0]["runs"][0]["name"] == "helper"


def test_a_store_path_that_is_a_folder_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["view", "--store", str(tmp_path), "--port", "0"], capsys)
    assert code == 2 and "is not a file" in err


def test_following_a_distributed_bus(nats_url: str, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = f"viewer{uuid.uuid4().hex[:10]}"
    url = f"{nats_url}?namespace={namespace}&max_age=600"
    got: list[Any] = []

    def check(viewer_url: str) -> None:
        async def publish() -> None:
            bus = make_bus(url)
            await bus.connect()
            try:
                for i in range(3):
                    await bus.publish_async("remote.work", {"i": i}, durable=True)
            finally:
                await bus.close()

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            asyncio.run(publish())
            state = httpx.get(viewer_url + "api/state", timeout=10).json()
            got.append(state["stats"])
            if state["stats"]["total"] >= 3:
                return
            time.sleep(0.2)

    monkeypatch.setattr(ViewerServer, "run", serve_once(check))
    code, out, _ = run(["view", "--bus", url, "--port", "0"], capsys)
    assert code == 0 and f"bus {nats_url}" in out
    assert got[-1]["total"] >= 3
    assert got[-1]["source"] == {"kind": "bus", "where": url, "status": "subscribed",
                                 "held": got[-1]["total"], "evicted": 0, "problem": None}
