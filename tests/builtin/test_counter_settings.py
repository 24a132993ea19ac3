"""Shared counter backends refuse a zero or non-numeric ``timeout``/``max_attempts``
(an explicit 0 was taken for "unset" and silently became the default)."""

from __future__ import annotations

from typing import Any

import pytest

from llmspell.builtin.nats_counters import NatsCounters
from llmspell.builtin.redis_counters import RedisCounters
from llmspell.errors import ConfigurationError

BACKENDS = [(RedisCounters, "redis://127.0.0.1:6379/0"), (NatsCounters, "nats://127.0.0.1:4222")]


@pytest.mark.parametrize(("backend", "url"), BACKENDS, ids=["redis", "nats"])
@pytest.mark.parametrize("settings", [
    {"timeout": 0}, {"max_attempts": 0}, {"timeout": -1}, {"timeout": "2"},
    {"max_attempts": 1.5}, {"timeout": float("inf")}, {"max_attempts": float("nan")},
    {"max_attempts": float("inf")}, {"timeout": True},
])
def test_a_bad_setting_is_refused(backend: Any, url: str, settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(settings))):
        backend(url, **settings)


@pytest.mark.parametrize(("backend", "url"), BACKENDS, ids=["redis", "nats"])
def test_a_zero_timeout_in_the_url_is_refused_and_defaults_hold(backend: Any, url: str) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        backend(f"{url}?timeout=0")
    counters = backend(url)
    assert (counters.timeout, counters.max_attempts) == (2.0, 64)
    given = backend(url, timeout=0.5, max_attempts=3)
    assert (given.timeout, given.max_attempts) == (0.5, 3)
