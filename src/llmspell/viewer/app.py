"""The viewer's web application: a Starlette app with one static page and read-only routes.

=========================== ==========================================================
route                       what it returns
=========================== ==========================================================
``GET /``                   the page (``static/index.html``; no build step, no CDN)
``GET /static/{file}``      its script and style sheet
``GET /events``             the Server-Sent Events stream (:meth:`Hub.stream`):
                            ``?pattern=`` filters the events, ``?tail=`` sets how many
                            a new page starts with; ``Last-Event-ID`` resumes
``GET /api/state``          every run the viewer holds and the tables, as JSON
``GET /api/runs/{run_id}``  one run with all its steps (404 when not held)
``GET /api/events/{id}``    one whole event (the stream cuts large data to a preview)
``GET /api/check``          whether ``?pattern=`` is a valid pattern, and why not
=========================== ==========================================================

Every other method is refused (405): the viewer only reads. Access is checked by
:class:`Guard` (see :mod:`llmspell.viewer.security`), which first refuses what another
site's page in the browser asks for (:func:`cross_site`) and WebSocket connections, and
adds headers that keep the page from being framed or its content sniffed, and keep the
token out of referrers. With a token, wrong tokens are throttled per client address
(:class:`~llmspell.viewer.security.TokenThrottle`): an address that sent too many is
refused with 429 and ``Retry-After`` on every route, the event stream included, before its
token is looked at.

Starlette, sse-starlette and uvicorn are the ``viewer`` extra: ``pip install
'llmspell[viewer]'``; without them :func:`create_app` raises a
:class:`~llmspell.errors.ConfigurationError` naming it.
"""

from __future__ import annotations

import contextlib
import http.cookies
import importlib.resources
import math
import urllib.parse
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec

from llmspell.core.clock import Clock
from llmspell.core.errors import ConfigurationError, InvalidValueError, LlmspellError
from llmspell.events.pattern import compile_pattern
from llmspell.viewer.feed import UNSHOWABLE, unshown
from llmspell.viewer.hub import Hub, HubLimits
from llmspell.viewer.security import (
    SessionCookie,
    ThrottleLimits,
    TokenThrottle,
    cookie_name,
    host_of,
    is_loopback,
    same_token,
)
from llmspell.viewer.source import Source

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Guard", "create_app", "cross_site", "require_viewer_extra"]

_STATIC = {"app.js": "text/javascript; charset=utf-8",
           "style.css": "text/css; charset=utf-8"}
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
]
_encode = msgspec.json.Encoder().encode


def require_viewer_extra() -> None:
    """Raise :class:`ConfigurationError` naming the extra when Starlette, sse-starlette or
    uvicorn is missing."""
    missing = []
    for module in ("starlette", "sse_starlette", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module.replace("_", "-"))
    if missing:
        raise ConfigurationError(
            f"the viewer needs {', '.join(missing)}, which are not installed",
            hint="pip install 'llmspell[viewer]'")


def cross_site(scope: Scope, headers: dict[str, str]) -> bool:
    """Whether a browser says the request comes from another site's page (an attacker's
    page open in the operator's browser: it cannot read the answers, but each request it
    makes still opens a stream and reads the store). ``Sec-Fetch-Site`` is set by the
    browser and names where the request comes from: ``cross-site`` and ``same-site`` (another
    port of the same host is another program) are refused, except a top-level navigation
    to the page itself (a link to the viewer). A browser without ``Sec-Fetch-*`` headers is
    judged by ``Origin``, which it sends with cross-origin requests: one that names another
    host and port than ``Host`` (or ``null``) is refused. Requests without either header (a
    program, ``curl``) are not a browser's cross-site requests and are let through to the
    usual checks."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        if site.strip().lower() in ("same-origin", "none"):
            return False
        return not (headers.get("sec-fetch-mode") == "navigate"
                    and headers.get("sec-fetch-dest", "document") == "document"
                    and scope.get("path") == "/")
    origin = headers.get("origin")
    if origin is None:
        return False
    parsed = urllib.parse.urlsplit(origin.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return True  # "null" (a sandboxed frame, a file, a redirect chain) or garbage
    default = "443" if parsed.scheme == "https" else "80"
    netloc = parsed.netloc.lower()
    host = headers.get("host", "").strip().lower()
    return _with_port(netloc, default) != _with_port(host, default)


def _with_port(authority: str, default: str) -> str:
    """``host:port`` of an authority (``[::1]`` -> ``[::1]:80`` for default port 80)."""
    if authority.rsplit(":", 1)[-1].isdigit() and not authority.endswith("]"):
        return authority
    return f"{authority}:{default}"


class Guard:
    """ASGI middleware: refuses what another site's page asks (:func:`cross_site`) and
    WebSocket connections (there is no WebSocket route), checks every request's access (a
    token when one is set, else a loopback ``Host``), refuses an address that sent too
    many wrong tokens (``throttle``, 429) and adds the security headers to every
    response."""

    def __init__(self, app: ASGIApp, token: str | None,
                 throttle: TokenThrottle | None = None) -> None:
        self.app = app
        self.token = token
        self.cookie = SessionCookie(token) if token is not None else None
        self.throttle = throttle if throttle is not None else TokenThrottle()

    def _allowed(self, scope: Scope, headers: dict[str, str]) -> tuple[bool, bool, bool]:
        """(allowed, set the cookie, a token was given): a request that gave a token (in
        the query or a header, even an empty one) and was not let in guessed wrong; one
        with nothing, or only a cookie (after a restart, every open page sends a stale
        one; and an HMAC under a key drawn at start cannot be guessed), did not."""
        token = self.token
        if token is None:
            return is_loopback(host_of(headers.get("host", ""))), False, False
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"),
                                      keep_blank_values=True)
        given = (query.get("token") or [None])[0]
        if same_token(given, token):
            return True, True, True
        auth = headers.get("authorization", "")
        bearer = auth.lower().startswith("bearer") and auth[6:7] in ("", " ")
        if bearer and same_token(auth[7:].strip(), token):
            return True, True, True
        header = headers.get("x-llmspell-token")
        if same_token(header, token):
            return True, False, True
        guessed = given is not None or bearer or header is not None
        cookie = http.cookies.SimpleCookie()
        with contextlib.suppress(http.cookies.CookieError):
            cookie.load(headers.get("cookie", ""))
        morsel = cookie.get(_cookie_of(scope))
        session = self.cookie
        return (session is not None
                and session.accepts(morsel.value if morsel is not None else None)), \
            False, guessed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # no route takes one; refused before any route runs
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        allowed, set_cookie = False, False
        extra: list[tuple[bytes, bytes]] = []
        client = scope.get("client")
        address = str(client[0]) if isinstance(client, tuple | list) and client else ""
        if cross_site(scope, headers):
            body = (b"this viewer answers only its own page: a request another site's page "
                    b"made is refused (open the viewer's address itself)")
            status = 403
        elif self.token is not None and (wait := self.throttle.wait(address)) > 0:
            # refused before any token is looked at: the right one too, until the wait ends
            seconds = str(max(1, math.ceil(wait)))
            body = (f"too many wrong tokens from this address: try again in {seconds} s"
                    ).encode()
            status = 429
            extra.append((b"retry-after", seconds.encode()))
        else:
            allowed, set_cookie, guessed = self._allowed(scope, headers)
            if self.token is not None:
                if allowed:
                    self.throttle.succeeded(address)
                elif guessed:
                    self.throttle.failed(address)
            body = (b"this viewer needs its token: open it with ?token=TOKEN"
                    if self.token is not None else
                    b"this viewer answers only requests addressed to a loopback host")
            status = 401 if self.token is not None else 403
        if not allowed:
            await send({"type": "http.response.start",
                        "status": status,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode()),
                                    *extra, *_HEADERS]})
            await send({"type": "http.response.body", "body": body})
            return
        cookie = (self.cookie.header(_cookie_of(scope))
                  if set_cookie and self.cookie is not None else None)

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = list(_HEADERS)
                if cookie is not None:
                    extra.append((b"set-cookie", cookie))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, guarded_send)


class _QuietStartup:
    """ASGI middleware: when the app could not start for a reason llmspell names (a bus it
    cannot reach), the server is told so without Starlette's traceback, which it would log;
    :class:`~llmspell.viewer.server.ViewerServer` raises the error itself (message and
    hint) once the server has given up."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        state = getattr(scope.get("app"), "state", None)

        async def quiet_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and isinstance(
                    getattr(state, "startup_error", None), LlmspellError):
                message = {"type": message["type"], "message": ""}
            await send(message)

        await self.app(scope, receive, quiet_send)


def _static(name: str) -> bytes:
    return (importlib.resources.files("llmspell.viewer") / "static" / name).read_bytes()


def create_app(source: Source | Hub, *, token: str | None = None,
               limits: HubLimits | None = None, throttle: ThrottleLimits | None = None,
               clock: Clock | None = None) -> Starlette:
    """The viewer's Starlette app over ``source`` (or a ready :class:`Hub`). With
    ``token`` every request must present it, and wrong tokens are throttled per client
    address as ``throttle`` says (:class:`~llmspell.viewer.security.ThrottleLimits`; its
    waits are timed on ``clock``, the system clock by default); without, only loopback
    ``Host`` names are served (bind checks are
    :func:`~llmspell.viewer.security.check_bind`'s job). The hub starts and stops with the
    app's lifespan; the throttle is ``app.state.throttle``."""
    if throttle is not None and not isinstance(throttle, ThrottleLimits):
        raise InvalidValueError(
            f"throttle must be a ThrottleLimits, got {type(throttle).__name__}",
            hint="pass llmspell.viewer.ThrottleLimits(max_failures=..., ...), or leave it "
                 "out for the defaults")
    require_viewer_extra()
    # The viewer extra is optional: imported only when an app is made.
    from sse_starlette import EventSourceResponse  # noqa: PLC0415
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.middleware import Middleware  # noqa: PLC0415
    from starlette.responses import Response  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    hub = source if isinstance(source, Hub) else Hub(source, limits=limits)

    class _Admitted(EventSourceResponse):
        """The stream of a connection :meth:`Hub.admit` let in: gives its place back when
        the response ends, however it ends (even before the stream started)."""

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                hub.release()
    page = _static("index.html")
    assets = {name: _static(name) for name in _STATIC}

    def json(data: Any, status: int = 200) -> Response:
        return Response(_encode(data), status_code=status, media_type="application/json")

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return Response(b"not found", status_code=404, media_type="text/plain")
        return Response(assets[name], media_type=_STATIC[name])

    def _pattern(request: Request) -> str | None:
        pattern = request.query_params.get("pattern", "").strip()
        if not pattern or pattern == "**":
            return None
        compile_pattern(pattern)
        return pattern

    async def events(request: Request) -> Response:
        try:
            pattern = _pattern(request)
            tail_text = request.query_params.get("tail")
            if tail_text is not None and not (tail_text.isascii() and tail_text.isdigit()
                                              and len(tail_text) < 10):
                raise ValueError("tail must be a whole number >= 0")
            tail = None if tail_text is None else int(tail_text)
        except (InvalidValueError, ValueError) as exc:
            return json({"error": str(exc)}, 400)
        if not hub.admit():
            return json({"error": f"the viewer serves at most {hub.limits.max_clients} "
                                  "connections at once"}, 503)
        last_id = request.headers.get("last-event-id") or request.query_params.get("after")
        stream: AsyncIterator[bytes] = hub.stream(pattern=pattern, last_id=last_id,
                                                  tail=tail)
        return _Admitted(stream, ping=15, send_timeout=60)

    async def state(request: Request) -> Response:
        await hub.ready.wait()
        return Response(b'{"runs":' + _encode(hub.summary.runs_since(0)) + b',"stats":'
                        + hub.stats_json() + b"}", media_type="application/json")

    async def run(request: Request) -> Response:
        found = hub.summary.run(request.path_params["run_id"])
        if found is None:
            return json({"error": "the viewer does not hold this run (it keeps the newest "
                                  f"{hub.limits.max_runs})"}, 404)
        return json(found)

    async def event(request: Request) -> Response:
        cursor = hub.source.parse_id(request.path_params["event_id"])
        found = None if cursor is None else await hub.source.get(cursor)
        if found is None:
            return json({"error": "no such event (or no longer held)"}, 404)
        try:
            body = found.to_json()
        except UNSHOWABLE as exc:  # data nested deeper than the encoder recurses
            return json({"id": str(found.id), "event_type": str(found.event_type),
                         "timestamp": found.timestamp, "data": unshown(exc)})
        return Response(body, media_type="application/json")

    async def check(request: Request) -> Response:
        try:
            pattern = _pattern(request)
        except InvalidValueError as exc:
            return json({"ok": False, "error": exc.message, "hint": exc.hint})
        return json({"ok": True, "pattern": pattern})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await hub.start()
        except BaseException as exc:
            app.state.startup_error = exc  # for ViewerServer to raise (see _QuietStartup)
            with contextlib.suppress(Exception):
                await hub.stop()
            raise
        try:
            yield
        finally:
            await hub.stop()

    get = ["GET"]
    routes = [
        Route("/", index, methods=get),
        Route("/static/{name}", static, methods=get),
        Route("/events", events, methods=get),
        Route("/api/state", state, methods=get),
        Route("/api/runs/{run_id}", run, methods=get),
        Route("/api/events/{event_id}", event, methods=get),
        Route("/api/check", check, methods=get),
    ]
    guard_throttle = TokenThrottle(throttle, clock=clock)
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(_QuietStartup),
                                Middleware(Guard, token=token, throttle=guard_throttle)])
    app.state.hub = hub
    app.state.throttle = guard_throttle
    app.state.startup_error = None
    return app


def _cookie_of(scope: Scope) -> str:
    """The cookie name of the viewer serving ``scope`` (one per port it serves on)."""
    server = scope.get("server")
    port = server[1] if isinstance(server, tuple | list) and len(server) == 2 else None
    return cookie_name(port if isinstance(port, int) else None)
