"""Running a hostile case in a child process with a kill timer, so a regression (a loop the
time budget no longer stops) fails its test instead of hanging the suite."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def run_in_child(target: Callable[..., None], *args: Any, seconds: float,
                 failure: str) -> None:
    """Run ``target(*args)`` in a spawned process; fail with ``failure`` when it is still
    running after ``seconds`` (then it is killed), or when it exits with an error."""
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args)
    proc.start()
    proc.join(seconds)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise AssertionError(failure)
    assert proc.exitcode == 0
