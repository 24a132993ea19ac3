"""Agents created by scripts: a script-chosen endpoint needs --allow-net, passes the network
tools' address checks and never carries the host's API key (loopback only: the test server
on 127.0.0.1 stands in for any outside host)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from llmspell.core.errors import ScriptError
from llmspell.runtime import System, SystemConfig
from llmspell.scripting import ScriptHost
from llmspell.scripting.endpoints import same_endpoint
from llmspell.scripting.lua import Capabilities
from llmspell.scripting.runtime_ops import RuntimeOps

OPENAI_REPLY = {"id": "x", "model": "m", "choices": [
    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
ANTHROPIC_REPLY = {"id": "x", "type": "message", "role": "assistant", "model": "m",
                   "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                   "usage": {"input_tokens": 1, "output_tokens": 1}}


class ModelServer:
    """A loopback model API that records every request's headers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                self.rfile.read(length)
                seen.append({k.lower(): v for k, v in self.headers.items()})
                reply = ANTHROPIC_REPLY if self.path.endswith("/messages") else OPENAI_REPLY
                body = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    server = ModelServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def host_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's configuration holds keys a script must never see sent elsewhere."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-host-anthropic")
    monkeypatch.delenv("LLMSPELL_API_KEY", raising=False)
    monkeypatch.delenv("LLMSPELL_BASE_URL", raising=False)
    monkeypatch.delenv("LLMSPELL_PROVIDER", raising=False)


async def _run(source: str, allow: Capabilities | None = None, *,
               loopback_counts_as_public: bool = False) -> Any:
    system = System(SystemConfig(store="memory"))
    await system.start()
    host = ScriptHost(system, allow=allow, time_budget=5)
    if loopback_counts_as_public:
        host.bindings.api.runtime.allow_loopback_endpoints = True
    try:
        return await host.run_lua_async(source)
    finally:
        host.close()
        await system.shutdown()


def _agent(model: str, base_url: str) -> str:
    return f"""
        return Agent.create({{name = "a", model = "{model}", base_url = "{base_url}"}})
    """


def _ask(model: str, base_url: str) -> str:
    return f"""
        Agent.create({{name = "a", model = "{model}", base_url = "{base_url}"}})
        local agent = Agent.get("a")
        return agent:execute({{text = "hello"}}).text
    """


@pytest.mark.parametrize("model", ["openai/gpt-x", "anthropic/claude-x"])
async def test_script_endpoint_needs_allow_net(model_server: ModelServer, model: str) -> None:
    with pytest.raises(ScriptError, match="--allow-net"):
        await _run(_agent(model, model_server.url + "/v1"))
    assert model_server.requests == []


@pytest.mark.parametrize("model", ["openai/gpt-x", "anthropic/claude-x"])
async def test_script_endpoint_passes_the_network_tools_address_checks(
        model_server: ModelServer, model: str) -> None:
    for url in (model_server.url + "/v1", "http://localhost:1/v1", "http://[::1]:1/v1",
                "http://169.254.169.254/v1", "http://10.0.0.1/v1", "http://0.0.0.0:1/v1"):
        with pytest.raises(ScriptError, match="is refused"):
            await _run(_agent(model, url), Capabilities(allow_net=True))
    assert model_server.requests == []


@pytest.mark.parametrize("model, header", [("openai/gpt-x", "authorization"),
                                           ("anthropic/claude-x", "x-api-key")])
async def test_script_endpoint_never_carries_the_hosts_key(
        model_server: ModelServer, model: str, header: str) -> None:
    # Treat the loopback server as the public host a script could name with --allow-net.
    reply = await _run(_ask(model, model_server.url + "/v1"), Capabilities(allow_net=True),
                       loopback_counts_as_public=True)
    assert reply == "hi"
    assert len(model_server.requests) == 1
    assert header not in model_server.requests[0]
    assert "sk-host" not in json.dumps(model_server.requests[0])


@pytest.mark.parametrize("model, header, key", [
    ("openai/gpt-x", "authorization", "Bearer sk-host-openai"),
    ("anthropic/claude-x", "x-api-key", "sk-host-anthropic")])
async def test_the_configured_endpoint_gets_the_key_without_flags(
        model_server: ModelServer, monkeypatch: pytest.MonkeyPatch, model: str, header: str,
        key: str) -> None:
    monkeypatch.setenv("LLMSPELL_BASE_URL", model_server.url + "/v1")
    ask = ('Agent.create({name = "a", model = "' + model + '"})\n'
           'return Agent.get("a"):execute({text = "hello"}).text')
    assert await _run(ask) == "hi"
    # Naming the configured endpoint explicitly is the same endpoint, not a new one.
    assert await _run(_ask(model, model_server.url + "/v1/")) == "hi"
    assert [r[header] for r in model_server.requests] == [key, key]


@pytest.mark.parametrize("url, message", [
    ("ftp://example.com/v1", "not an http"), ("http://user:pw@example.com/v1", "credentials"),
    ("http://example.com:99999/v1", "bad port")])
async def test_bad_script_endpoints_are_typed_errors(url: str, message: str) -> None:
    with pytest.raises(ScriptError, match=message):
        await _run(_agent("openai/gpt-x", url), Capabilities(allow_net=True))


async def test_agent_timeout_is_checked() -> None:
    with pytest.raises(ScriptError, match="timeout must be"):
        await _run('Agent.create({name = "a", model = "openai/x", timeout = 1e99})')


def test_same_endpoint_ignores_spelling_differences() -> None:
    assert same_endpoint("HTTPS://API.openai.com/v1/", "https://api.openai.com:443/v1")
    assert not same_endpoint("https://api.openai.com/v1", "https://api.openai.com.evil/v1")
    assert not same_endpoint("https://api.openai.com/v1", "http://api.openai.com/v1")
    assert RuntimeOps.allow_loopback_endpoints is False


async def test_a_script_endpoint_cannot_redirect_the_call_elsewhere(
        model_server: ModelServer) -> None:
    """A permitted endpoint answering 307 to another address (here: the loopback model
    server, which the script may not name) is not followed: providers never follow
    redirects, so the address checks cannot be bypassed through one."""

    class Redirector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(307)
            self.send_header("location", model_server.url + "/v1/chat/completions")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        with pytest.raises(ScriptError, match="307"):
            await _run(_ask("openai/gpt-x", url), Capabilities(allow_net=True),
                       loopback_counts_as_public=True)
    finally:
        server.shutdown()
        server.server_close()
    assert model_server.requests == []
