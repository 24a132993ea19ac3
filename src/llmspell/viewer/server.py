"""Serving the viewer with uvicorn: in the foreground (``llmspell view``) or on a
background thread (a notebook, a test, a benchmark).

The socket is bound here, before uvicorn starts, so an address in use or not available is a
:class:`~llmspell.errors.ConfigurationError` with a hint instead of uvicorn's log line and
exit.

uvicorn keeps a connection open for as long as its client takes to send a request's headers
(or a body nobody reads), so a client could hold connections (and up to 16 KiB of
half-sent headers each) open for ever before any token is checked: :func:`_protocol` closes
one that has not sent a whole request ``header_timeout`` seconds after it opened or after
its last answer.
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from llmspell.core.errors import ConfigurationError, InvalidValueError, LlmspellError
from llmspell.viewer.app import require_viewer_extra

if TYPE_CHECKING:
    import uvicorn

__all__ = ["HEADER_TIMEOUT", "ViewerServer", "bind_socket"]

HEADER_TIMEOUT = 10.0
"""Seconds a connection has to send a whole request's headers (after it opens, or after
its last answer) before the viewer closes it."""


def _protocol(header_timeout: float) -> type[Any]:
    """uvicorn's h11 protocol, closing a connection that has no request in progress
    ``header_timeout`` seconds after it opened or after its last answer (uvicorn has no such
    limit: a client sending headers a byte at a time, or never, held it for ever). It reads
    uvicorn's ``H11Protocol.cycle`` and overrides ``on_response_complete``: the viewer
    extra pins uvicorn to the releases this was checked on."""
    # The viewer extra is optional: imported only when a server is made.
    from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: PLC0415

    class HeaderDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _expire(self) -> None:
            self._deadline = None
            cycle = self.cycle
            if (cycle is None or cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

    return HeaderDeadline


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port)."""
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"port {port} is out of range", hint="use 1-65535, or 0 for "
                                 "any free port")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:  # ValueError: a name IDNA cannot encode (bytes
        # that are not UTF-8, a label over 63 characters) or one with a NUL in it
        raise ConfigurationError(f"cannot resolve the host {host!r}: {exc}",
                                 hint="give an address such as 127.0.0.1 or ::1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)  # now: with SO_REUSEADDR a bind alone succeeds on a busy port
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="choose another --port (0 picks a free one), or stop what uses it") from None
    sock.set_inheritable(True)
    return sock


class ViewerServer:
    """uvicorn serving ``app`` on ``host``:``port``: :meth:`run` in the foreground (Ctrl-C
    stops it), or :meth:`start` / :meth:`stop` on a background thread. A connection that
    has not sent a whole request ``header_timeout`` seconds after it opened or after its
    last answer is closed (see :data:`HEADER_TIMEOUT`)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *,
                 log_level: str = "warning", graceful_timeout: int = 2,
                 header_timeout: float = HEADER_TIMEOUT) -> None:
        if isinstance(header_timeout, bool) or not isinstance(header_timeout, int | float) \
                or not 0 < header_timeout < math.inf:
            raise InvalidValueError(
                f"header_timeout must be a number of seconds > 0, got {header_timeout!r}",
                hint=f"the default is {HEADER_TIMEOUT:g}")
        require_viewer_extra()
        import uvicorn  # noqa: PLC0415 - optional dependency (the viewer extra)

        self.host = host
        self.socket = bind_socket(host, port)
        self.port: int = self.socket.getsockname()[1]
        self.config = uvicorn.Config(app, log_level=log_level, access_log=False,
                                     http=_protocol(header_timeout),
                                     lifespan="on", timeout_graceful_shutdown=graceful_timeout)
        self.server: uvicorn.Server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None
        self._error: LlmspellError | None = None

    @property
    def url(self) -> str:
        """``http://host:port/`` (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") \
            else self.host
        return f"http://{host}:{self.port}/"

    def run(self) -> None:
        """Serve until interrupted (blocks). When the app cannot start (a bus it cannot
        reach), raises the reason: the app's own :class:`~llmspell.errors.LlmspellError`,
        else a :class:`ConfigurationError` (uvicorn exits the process instead)."""
        try:
            self.server.run(sockets=[self.socket])
        except SystemExit:
            if self.server.started:
                raise
            error = getattr(getattr(self.config.app, "state", None), "startup_error", None)
            if isinstance(error, LlmspellError):
                raise error from None
            raise ConfigurationError("the viewer's server stopped while starting",
                                     hint="see the log above for uvicorn's reason") from None
        finally:
            self.socket.close()

    def _serve_in_thread(self) -> None:
        try:
            self.run()
        except LlmspellError as exc:  # raised by start(), in the caller's thread
            self._error = exc

    def start(self, timeout: float = 10.0) -> str:
        """Serve on a daemon thread; return the URL once it accepts connections (raise
        what :meth:`run` would when it cannot start)."""
        self._thread = threading.Thread(target=self._serve_in_thread, name="llmspell-viewer",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                if self._error is not None:
                    raise self._error
                raise ConfigurationError("the viewer's server stopped while starting",
                                         hint="see the log above for uvicorn's reason")
            if time.monotonic() > deadline:
                raise ConfigurationError(f"the viewer did not start within {timeout} s",
                                         hint="the machine may be overloaded; try again")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (open streams are closed after the graceful timeout) and wait."""
        hub = getattr(getattr(self.config.app, "state", None), "hub", None)
        if hub is not None:
            hub.close_streams()  # open event streams end now instead of at the timeout
        self.server.should_exit = True
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
