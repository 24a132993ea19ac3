"""A reader of the CLI's output that goes away (``llmspell runs list | head``) ends the
command quietly with exit code 141 (128 + SIGPIPE), not a ``BrokenPipeError`` traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmspell.cli import EXIT_BROKEN_PIPE
from llmspell.runtime import System, SystemConfig


async def _record(folder: Path, runs: int) -> None:
    async with System(SystemConfig(data_dir=str(folder), store="sqlite")) as system:
        for i in range(runs):
            async with system.runs.start(kind="custom", name=f"r{i}"):
                pass


@pytest.mark.parametrize("command", [["runs", "list", "--limit", "1000"],
                                     ["events", "query", "--limit", "2000"],
                                     ["events", "query", "--limit", "2000", "--json"]])
async def test_a_reader_that_goes_away_ends_the_command_quietly(
        tmp_path: Path, command: list[str]) -> None:
    await _record(tmp_path, 1000)
    env = {**os.environ, "LLMSPELL_DATA_DIR": str(tmp_path)}
    child = subprocess.Popen([sys.executable, "-m", "llmspell", *command], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.readline()  # the reader takes one line, then goes away (as `head -1`)
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
