"""What the CLI tests share: each test's events go to its own data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

SETTINGS_FROM_THE_ENVIRONMENT = ("LLMSPELL_STORE", "LLMSPELL_BREAKER", "LLMSPELL_MONITOR",
                                 "LLMSPELL_RECORD", "LLMSPELL_RECORD_CONTENT", "NO_COLOR")


def isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in ``tmp_path`` with ``LLMSPELL_DATA_DIR`` at ``tmp_path / "data"`` and none of
    the environment's llmspell settings; returns the data folder."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data"
    monkeypatch.setenv("LLMSPELL_DATA_DIR", str(folder))
    for name in SETTINGS_FROM_THE_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    return folder
