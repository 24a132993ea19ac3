"""Who may open the viewer: loopback by default, a token for anything else."""

from __future__ import annotations

import pytest

from llmspell.errors import ConfigurationError
from llmspell.viewer.security import (
    MIN_TOKEN_LENGTH,
    check_bind,
    host_of,
    is_loopback,
    same_token,
    token_from_env,
)

TOKEN = "t" * MIN_TOKEN_LENGTH


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost",
                                  "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.4", "example.com",
                                  "localhost.example.com", ""])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize(("header", "host"), [("127.0.0.1:8787", "127.0.0.1"),
                                               ("[::1]:8787", "::1"), ("localhost", "localhost"),
                                               ("::1", "::1"), ("evil.test:80", "evil.test")])
def test_host_of_a_host_header(header: str, host: str) -> None:
    assert host_of(header) == host


def test_a_non_loopback_bind_without_a_token_is_refused() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_bind("0.0.0.0", None)
    assert "token" in caught.value.message
    assert "--token" in (caught.value.hint or "")
    check_bind("0.0.0.0", TOKEN)
    check_bind("127.0.0.1", None)


def test_a_short_token_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least"):
        check_bind("127.0.0.1", "short")


def test_tokens_compare_exactly() -> None:
    assert same_token(TOKEN, TOKEN)
    assert not same_token(TOKEN + "x", TOKEN)
    assert not same_token(None, TOKEN)
    assert not same_token("", TOKEN)


def test_the_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSPELL_VIEW_TOKEN", f"  {TOKEN} ")
    assert token_from_env() == TOKEN
    monkeypatch.setenv("LLMSPELL_VIEW_TOKEN", " ")
    assert token_from_env() is None
