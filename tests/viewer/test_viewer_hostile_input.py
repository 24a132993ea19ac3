"""Hostile setups of the viewer: a store under a path that is not UTF-8, a host name IDNA
cannot encode, a token that is not UTF-8, a source that cannot start (a bus it cannot
reach). Each is served, or refused with a typed error (message and hint), never a 500, a
traceback or uvicorn's exit code."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.ci import require_module

require_module("starlette", install="llmspell[viewer]")
require_module("sse_starlette", install="llmspell[viewer]")
require_module("uvicorn", install="llmspell[viewer]")

from starlette.testclient import TestClient  # noqa: E402

from llmspell.cli import main  # noqa: E402
from llmspell.core.errors import ConfigurationError, TransportUnavailableError  # noqa: E402
from llmspell.events.event import UniversalEvent  # noqa: E402
from llmspell.events.store.sqlite import SQLiteStore  # noqa: E402
from llmspell.viewer import StoreSource, ViewerServer, check_bind, create_app  # noqa: E402
from llmspell.viewer.server import bind_socket  # noqa: E402

TOKEN = "hostile-test-token-0123456789"


def test_a_store_under_a_path_that_is_not_utf8_is_served(tmp_path: Path) -> None:
    folder = tmp_path / "d\udcffata"  # the bytes d, 0xff, ata: a valid Linux file name
    store = SQLiteStore(folder / "events.db")
    store.append(UniversalEvent.create("boot"))
    store.close()
    shown = str(tmp_path / "d\ufffdata" / "events.db")
    with TestClient(create_app(StoreSource(store.path)), base_url="http://127.0.0.1") as c:
        reply = c.get("/api/state")
        assert reply.status_code == 200
        assert reply.json()["stats"]["source"]["where"] == shown
        with c.stream("GET", "/events", params={"tail": "5"}) as stream:
            assert stream.status_code == 200
            kinds: list[str] = []
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
                elif line.startswith("data: ") and kinds[-1] == "hello":
                    assert json.loads(line[6:])["source"]["where"] == shown
                elif line.startswith("data: ") and kinds[-1] == "events":
                    assert [e["t"] for e in json.loads(line[6:])] == ["boot"]
                    break


@pytest.mark.parametrize("host", ["\udcff", "a" * 70, "a\x00b"])
def test_a_host_name_that_cannot_be_looked_up_is_a_configuration_error(host: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        bind_socket(host, 0)
    assert caught.value.message.startswith("cannot resolve the host")
    assert caught.value.hint


def test_a_token_that_is_not_utf8_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigurationError, match="not valid UTF-8") as caught:
        check_bind("127.0.0.1", "\udcff" + TOKEN)
    assert caught.value.hint
    assert main(["view", "--port", "0", "--token", "\udcff" + TOKEN]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmspell: error: the viewer's token is not valid UTF-8 text")
    assert "Traceback" not in err


@pytest.mark.parametrize("token", [" " * 40, "\t" * 20, TOKEN + " ", "a" * 10 + " " + "b" * 10])
def test_a_token_with_whitespace_is_refused(token: str) -> None:
    with pytest.raises(ConfigurationError, match="holds whitespace") as caught:
        check_bind("0.0.0.0", token)
    assert caught.value.hint


class Unreachable(StoreSource):
    """A source that cannot start, as a bus source whose server is down."""

    async def start(self) -> None:
        raise TransportUnavailableError("cannot reach the NATS server at nats://x:1",
                                        hint="start a server")


def test_a_source_that_cannot_start_is_raised_not_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: Starlette's traceback was logged and uvicorn exited the process with code 3
    (``SystemExit``); the caller now gets the source's own error, message and hint."""
    caplog.set_level(logging.ERROR)
    server = ViewerServer(create_app(Unreachable(tmp_path / "events.db")))
    with pytest.raises(TransportUnavailableError, match="cannot reach the NATS server"):
        server.run()
    assert "Traceback" not in caplog.text
    server = ViewerServer(create_app(Unreachable(tmp_path / "events.db")))
    with pytest.raises(TransportUnavailableError, match="cannot reach the NATS server"):
        server.start()


def test_view_with_a_bus_it_cannot_reach_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("nats")
    code = main(["view", "--port", "0", "--bus", "nats://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "llmspell: error: cannot reach the NATS server" in err
    assert "\nhint: " in err
    assert "Traceback" not in err
