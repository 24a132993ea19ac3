"""Shared by the remote hook tests: hook servers in other processes, contexts, URLs.

A server is ``python -m llmspell hooks serve POLICY`` in a process of its own (the command
users run); it prints one ``serving ...`` line once it takes calls, and a ``stopped: served
N, refused M, failed K`` line when it stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from llmspell.hooks import ComponentId, ComponentType, HookContext, parse_point

POLICIES = Path(__file__).with_name("policies")
ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-0123456789abcdef-0123456789"
OTHER_KEY = "another-key-0123456789abcdef-012345"


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[Any]:
    """A bare nats-py connection: the hostile peer."""
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


def hook_url(nats_url: str) -> str:
    """``nats_url`` with a namespace of its own (remote hooks use no stream)."""
    return f"{nats_url}?namespace=rh{uuid.uuid4().hex[:10]}"


def tool_ctx(**data: object) -> HookContext:
    """A BeforeToolExecution context for tool ``shell``."""
    return HookContext(point=parse_point("BeforeToolExecution"),
                       component=ComponentId(type=ComponentType.TOOL, name="shell"),
                       data=dict(data))


class Server:
    """``llmspell hooks serve`` in another process."""

    def __init__(self, policy: str | Path, url: str, *args: str,
                 env: dict[str, str] | None = None) -> None:
        path = policy if isinstance(policy, Path) else POLICIES / policy
        environ = {k: v for k, v in os.environ.items() if k != "LLMSPELL_HOOK_KEY"}
        environ.update({"LLMSPELL_BUS": url, **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmspell", "hooks", "serve", str(path), "--bus", url,
             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ,
            cwd=ROOT)
        self.banner = ""

    async def ready(self, timeout: float = 60.0) -> Server:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline),
                                          timeout)
        except TimeoutError:
            self.proc.kill()
            pytest.fail(f"hook server {self.proc.args} said nothing for {timeout} s")
        if not line.startswith("serving "):
            _, err = self.proc.communicate(timeout=10)
            pytest.fail(f"hook server did not start ({self.proc.returncode}): {line}{err}")
        self.banner = line
        return self

    async def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM; wait for a clean exit; the counts it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(self.proc.communicate, None, timeout)
        assert self.proc.returncode == 0, f"hook server exited {self.proc.returncode}: {err}"
        match = re.search(r"stopped: served (\d+), refused (\d+), failed (\d+)", out)
        assert match, out + err
        served, refused, failed = map(int, match.groups())
        return {"served": served, "refused": refused, "failed": failed}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
