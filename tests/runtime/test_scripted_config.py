"""The scripted (offline) provider from configuration and the environment, and from
``llmspell run`` (agent scripts run with no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmspell.cli import main
from llmspell.errors import ConfigurationError
from llmspell.runtime.providers.base import Message
from llmspell.runtime.providers.config import (
    ProviderConfig,
    provider_from_config,
    provider_from_env,
)

HI = [Message(role="user", content="hi")]


async def _answers(provider: object, n: int) -> list[str | None]:
    out = []
    for _ in range(n):
        completion = await provider.complete(HI)  # type: ignore[attr-defined]
        out.append(completion.message.content)
    return out


async def test_replies_in_the_config() -> None:
    provider = provider_from_config(ProviderConfig(kind="scripted", model="m",
                                                   replies=["one", "two"]), environ={})
    assert provider.model == "m"
    assert await _answers(provider, 2) == ["one", "two"]


async def test_replies_from_the_environment_inline() -> None:
    provider = provider_from_env(environ={"LLMSPELL_PROVIDER": "scripted",
                                          "LLMSPELL_REPLIES": '["a", {"content": "b"}]'})
    assert provider is not None and await _answers(provider, 2) == ["a", "b"]
    single = provider_from_env(environ={"LLMSPELL_PROVIDER": "scripted",
                                        "LLMSPELL_REPLIES": "just this"})
    assert single is not None and await _answers(single, 1) == ["just this"]


async def test_replies_from_a_file(tmp_path: Path) -> None:
    listed = tmp_path / "replies.json"
    listed.write_text(json.dumps(["x", {"tool_calls": [{"name": "add", "arguments": {}}]}]))
    provider = provider_from_env(environ={"LLMSPELL_PROVIDER": "scripted",
                                          "LLMSPELL_REPLIES_FILE": str(listed)})
    assert provider is not None and await _answers(provider, 1) == ["x"]
    lines = tmp_path / "replies.txt"
    lines.write_text("first line\n\nsecond line\n")
    provider = provider_from_config(ProviderConfig(kind="scripted",
                                                   replies_file=str(lines)), environ={})
    assert await _answers(provider, 2) == ["first line", "second line"]


@pytest.mark.parametrize("environ, message", [
    ({}, "needs its replies"),
    ({"LLMSPELL_REPLIES": "[not json"}, "not valid JSON"),
    ({"LLMSPELL_REPLIES_FILE": "/nonexistent/replies.json"}, "cannot read"),
    ({"LLMSPELL_REPLIES": "[42]"}, "bad scripted replies"),
])
def test_bad_replies_are_configuration_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        provider_from_config(ProviderConfig(kind="scripted"), environ=environ)


def test_llmspell_run_runs_an_agent_script_offline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMSPELL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LLMSPELL_PROVIDER", "scripted")
    monkeypatch.setenv("LLMSPELL_REPLIES", '["Paris."]')
    (tmp_path / "ask.lua").write_text("""
        Agent.create({name = "geo", model = "geo-model"})
        return Agent.get("geo"):execute({text = "Capital of France?"}).text
    """)
    code = main(["run", "ask.lua"])
    out, err = capsys.readouterr()
    assert (code, json.loads(out)) == (0, "Paris."), err
