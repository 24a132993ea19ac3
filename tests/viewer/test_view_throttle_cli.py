"""``llmspell view --throttle-*``: the wrong-token throttle set from the command line. Before,
``llmspell view`` always served with the default ``ThrottleLimits`` (the options were
unknown: a usage error)."""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from llmspell.cli import build_parser, main
from llmspell.errors import InvalidValueError
from llmspell.viewer import ViewerServer
from llmspell.viewer.security import ThrottleLimits, TokenThrottle
from tests.ci import require_module

require_module("uvicorn", install="llmspell[viewer]")

TOKEN = "a-long-enough-token-for-throttle-tests"
WRONG = "wrong-token-0123456789abcdef"
WAIT = 30.0  # a bound on waiting for the server to start, never a measured duration
ALL = ["--throttle-failures", "2", "--throttle-backoff", "3", "--throttle-max-backoff", "30",
       "--throttle-clients", "64", "--throttle-forget", "120"]


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSPELL_VIEW_TOKEN", raising=False)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def serving(check: Callable[[ViewerServer], None]) -> Callable[[ViewerServer], None]:
    """A stand-in for ViewerServer.run: serves on a thread, runs ``check`` against the real
    server, then stops it (so the command returns in-process)."""
    serve = ViewerServer.run

    def run_server(self: ViewerServer) -> None:
        thread = threading.Thread(target=serve, args=(self,), daemon=True)
        thread.start()
        deadline = time.monotonic() + WAIT
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            check(self)
        finally:
            self.stop()
            thread.join(WAIT)

    return run_server


def limits_served(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                  monkeypatch: pytest.MonkeyPatch) -> tuple[ThrottleLimits, str]:
    """The ThrottleLimits of the app ``llmspell view ARGV`` serves, and its stderr."""
    seen: list[ThrottleLimits] = []

    def check(server: ViewerServer) -> None:
        throttle = server.config.app.state.throttle
        assert isinstance(throttle, TokenThrottle)
        seen.append(throttle.limits)

    monkeypatch.setattr(ViewerServer, "run", serving(check))
    code, _, err = run(["view", "--store", str(tmp_path / "events.db"), "--port", "0",
                        *argv], capsys)
    assert code == 0, err
    return seen[0], err


def test_the_options_set_the_apps_throttle(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    limits, _ = limits_served(["--token", TOKEN, *ALL], tmp_path, capsys, monkeypatch)
    assert limits == ThrottleLimits(max_failures=2, backoff=3.0, max_backoff=30.0,
                                    max_clients=64, forget=120.0)


def test_one_option_keeps_the_other_defaults(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    limits, _ = limits_served(["--token", TOKEN, "--throttle-failures", "9"], tmp_path,
                              capsys, monkeypatch)
    assert limits == ThrottleLimits(max_failures=9)


def test_without_the_options_the_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    limits, err = limits_served(["--token", TOKEN], tmp_path, capsys, monkeypatch)
    assert limits == ThrottleLimits()
    assert "throttle" not in err


def test_without_a_token_the_options_are_said_to_do_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, err = limits_served(["--throttle-failures", "2"], tmp_path, capsys, monkeypatch)
    assert "--throttle-* options do nothing without a token" in err


def test_the_configured_failure_count_gets_429(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the command and a real server: two wrong tokens (the default allows five),
    then 429 with a Retry-After from --throttle-backoff (the default is 1 s), the right
    token included."""
    answers: list[httpx.Response] = []

    def check(server: ViewerServer) -> None:
        url = server.url + "api/check"
        answers.extend(httpx.get(url, params={"token": WRONG}, timeout=WAIT) for _ in range(2))
        answers.append(httpx.get(url, params={"token": TOKEN}, timeout=WAIT))

    monkeypatch.setattr(ViewerServer, "run", serving(check))
    code, _, err = run(["view", "--store", str(tmp_path / "events.db"), "--port", "0",
                        "--token", TOKEN, "--throttle-failures", "2", "--throttle-backoff",
                        "600", "--throttle-max-backoff", "600"], capsys)
    assert code == 0, err
    assert [answer.status_code for answer in answers] == [401, 401, 429]
    assert 100 < int(answers[2].headers["retry-after"]) <= 600


@pytest.mark.parametrize(("argv", "message", "hint"), [
    (["--throttle-failures", "0"], "--throttle-failures must be a whole number >= 1, got 0",
     "the default is 5"),
    (["--throttle-clients", "-3"], "--throttle-clients must be a whole number >= 1, got -3",
     "the default is 4096"),
    (["--throttle-backoff", "0"], "--throttle-backoff must be a number of seconds > 0",
     "the default is 1"),
    (["--throttle-max-backoff", "inf"], "--throttle-max-backoff must be a number of seconds",
     "the default is 60"),
    (["--throttle-forget", "nan"], "--throttle-forget must be a number of seconds > 0",
     "the default is 900"),
    (["--throttle-backoff", "120"],
     "--throttle-max-backoff (60.0) is shorter than the first wait, --throttle-backoff",
     "give a --throttle-max-backoff at least as long as --throttle-backoff"),
])
def test_bad_values_are_typed_errors_naming_the_option(
        argv: list[str], message: str, hint: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from llmspell.cli_view import throttle_limits  # here: old code fails each test, not import

    with pytest.raises(InvalidValueError) as caught:
        throttle_limits(build_parser().parse_args(["view", *argv]))
    assert message in caught.value.message and caught.value.hint == hint
    code, out, err = run(["view", "--token", TOKEN, "--port", "0",
                          "--store", str(tmp_path / "events.db"), *argv], capsys)
    assert code == 2 and out == ""
    assert f"llmspell: error: {message}" in err and f"hint: {hint}" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--throttle-failures", "x"], "argument --throttle-failures: 'x' is not a whole number"),
    (["--throttle-clients", "1.5"], "argument --throttle-clients: '1.5' is not a whole number"),
    (["--throttle-backoff", "soon"],
     "argument --throttle-backoff: 'soon' is not a number of seconds"),
    (["--throttle-forget"], "argument --throttle-forget: expected one argument"),
])
def test_values_that_are_not_numbers_are_usage_errors(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["view", *argv], capsys)
    assert code == 2 and out == ""
    assert message in err


def test_the_help_names_the_throttle_options() -> None:
    out = io.StringIO()
    sys_stdout = sys.stdout
    sys.stdout = out
    try:
        assert main(["view", "--help"]) == 0
    finally:
        sys.stdout = sys_stdout
    for flag in ("--throttle-failures N", "--throttle-backoff SECONDS",
                 "--throttle-max-backoff SECONDS", "--throttle-clients N",
                 "--throttle-forget SECONDS", "wrong-token throttle"):
        assert flag in out.getvalue()
