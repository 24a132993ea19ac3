"""An HTTP client tool that refuses to reach internal networks.

Why hand-written around :mod:`httpx` rather than using its redirect and retry features:
the address checks must run on *every* hop. Before each request the host is resolved with
``getaddrinfo`` and every address it resolves to is checked with :mod:`ipaddress`
(loopback, private, link-local, multicast, reserved, unspecified; IPv4-mapped, 6to4 and
Teredo addresses are unwrapped first). The request is then sent to the checked address
itself, with the original ``Host`` header and TLS server name, so a DNS answer that changes
between the check and the connection (DNS rebinding) cannot redirect it. Redirects are
followed by hand so each target is checked the same way, and retries are a small loop
(connect errors, 429 and 5xx, with a short exponential backoff) because httpx retries
only connection failures. The body is streamed and cut off past ``max_bytes`` (counted
after decompression, so a compressed bomb is cut off too).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import socket
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import httpx

from llmspell.core.errors import (
    SandboxViolationError,
    ToolError,
    ToolExecutionError,
    ToolTimeoutError,
)
from llmspell.runtime.tools.base import SecurityLevel, SideEffect, Tool

__all__ = ["HttpRequestTool", "address_refusal", "renamed_error"]

_NAME = "http_request"
METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
MAX_RETRIES: Final = 5
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_MANAGED_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding",
                                     "connection"})
_TEXT_TYPES: Final = frozenset({
    "application/xml", "application/javascript", "application/x-www-form-urlencoded",
    "application/xhtml+xml", "application/x-ndjson", "image/svg+xml",
})
_DECODED: Final = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16,
                   "deflate": zlib.MAX_WBITS}
"""Content codings the tool decodes (its ``Accept-Encoding``), with their zlib ``wbits``."""
_MAX_BACKOFF: Final = 2.0
_MAX_RETRY_AFTER: Final = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _fail(message: str, hint: str | None = None) -> ToolExecutionError:
    return ToolExecutionError(_NAME, message, hint=hint)


def _refuse(message: str, hint: str | None = None) -> SandboxViolationError:
    return SandboxViolationError(_NAME, message, hint=hint)


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """The addresses to check for ``ip``: an IPv4-mapped address is its IPv4 address; 6to4
    and Teredo addresses are checked along with the IPv4 addresses they carry."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    found: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.sixtofour is not None:
            found.append(ip.sixtofour)
        if ip.teredo is not None:
            found.extend(ip.teredo)
    return found


def address_refusal(address: str, *, allow_loopback: bool = False,
                    allow_private: bool = False) -> str | None:
    """Why connecting to ``address`` (an IP literal) is refused, or None when it is allowed.

    Loopback needs ``allow_loopback``; private ranges (RFC 1918, unique-local, site-local,
    shared address space, documentation and the like) need ``allow_private``; link-local (cloud
    metadata lives there), multicast, reserved and unspecified addresses are always refused.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    for candidate in _embedded(ip):
        if candidate.is_loopback:
            if not allow_loopback:
                return f"{address} is a loopback address"
            continue
        if candidate.is_unspecified:
            return f"{address} is an unspecified address"
        if candidate.is_link_local:
            return f"{address} is a link-local address"
        if candidate.is_multicast:
            return f"{address} is a multicast address"
        if candidate.is_reserved:
            return f"{address} is a reserved address"
        if not candidate.is_global and not allow_private:
            return f"{address} is a private (non-global) address"
        if (isinstance(candidate, ipaddress.IPv6Address) and candidate.is_site_local
                and not allow_private):  # fec0::/10: deprecated, but still routed locally
            return f"{address} is a site-local (private) address"
    return None


class HttpRequestTool(Tool):
    """Make an HTTP(S) request to a public address and return the response.

    ``sleep`` waits between retries (default ``asyncio.sleep``; a test may record instead).
    """

    name = _NAME
    description = (
        "Make an HTTP or HTTPS request. 'url' (required), 'method' (GET POST PUT PATCH "
        "DELETE HEAD; default GET), 'headers', 'query' (added to the URL), 'json' or 'body' "
        "(text), 'auth' ({type: bearer, token} or {type: basic, username, password}), "
        "'timeout' (seconds, whole call), 'retries' (0-5; on connection errors, 429 and 5xx). "
        "Returns status, headers, body (parsed when JSON), elapsed_ms and the final url. "
        "Internal network addresses are refused."
    )
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "url": {"type": "string", "maxLength": 8192,
                    "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                    "description": "An http:// or https:// URL."},
            "method": {"enum": list(METHODS), "description": "The HTTP method (default GET)."},
            "headers": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Request headers."},
            "query": {
                "type": "object",
                "additionalProperties": {
                    "anyOf": [
                        {"type": ["string", "number", "boolean"]},
                        {"type": "array", "items": {"type": ["string", "number", "boolean"]}},
                    ],
                },
                "description": "Query parameters added to the URL.",
            },
            "json": {"description": "A JSON request body."},
            "body": {"type": "string", "description": "A text request body."},
            "auth": {
                "oneOf": [
                    {"type": "object",
                     "properties": {"type": {"const": "bearer"}, "token": {"type": "string"}},
                     "required": ["type", "token"], "additionalProperties": False},
                    {"type": "object",
                     "properties": {"type": {"const": "basic"}, "username": {"type": "string"},
                                    "password": {"type": "string"}},
                     "required": ["type", "username", "password"],
                     "additionalProperties": False},
                ],
                "description": "Credentials: bearer token or basic username/password.",
            },
            "timeout": {"type": "number", "exclusiveMinimum": 0,
                        "description": "Seconds for the whole call, retries and redirects "
                                       "included (capped by the tool's configuration)."},
            "retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES,
                        "description": "Retries on connection errors, 429 and 5xx "
                                       "(default 0)."},
        },
        "required": ["url"],
        "additionalProperties": False,
        "not": {"required": ["json", "body"]},
    }
    security_level = SecurityLevel.RESTRICTED
    side_effects = frozenset({SideEffect.NETWORK_WRITE})

    def side_effects_for(self, params: dict[str, Any]) -> frozenset[SideEffect]:
        """``network_write`` for every method but GET and HEAD."""
        method = str(params.get("method", "GET")).upper()
        return frozenset() if method in ("GET", "HEAD") else self.side_effects

    def __init__(
        self,
        *,
        allow_loopback: bool = False,
        allow_private: bool = False,
        max_bytes: int = 1024 * 1024,
        timeout: float = 30.0,
        max_redirects: int = 3,
        client: httpx.Client | httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.allow_loopback = allow_loopback
        self._sleep = sleep  # the backoff between retries (tests record it instead)
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.request_timeout = timeout
        self.max_redirects = max_redirects
        self.client = client
        # The pipeline's timeout is a backstop; the tool enforces ``timeout`` itself.
        self.timeout = timeout + 5.0

    # -- checks ------------------------------------------------------------------------

    def _check_url(self, raw: str | httpx.URL) -> httpx.URL:
        try:
            url = httpx.URL(raw)
        except httpx.InvalidURL as exc:
            raise _fail(f"invalid URL {str(raw)!r}: {exc}") from None
        if url.scheme not in ("http", "https"):
            raise _refuse(f"the URL scheme {url.scheme!r} is not allowed",
                          hint="only http:// and https:// URLs can be fetched")
        if not url.host:
            raise _fail(f"the URL {str(raw)!r} has no host")
        if url.userinfo:
            raise _fail("credentials in the URL are not accepted",
                        hint="pass them in 'auth' instead")
        return url

    async def _addresses(self, url: httpx.URL) -> list[str]:
        """The host's addresses, every one checked; raise when any is refused."""
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise _fail(f"cannot resolve the host {host!r}: {exc}") from None
        addresses: list[str] = []
        for info in infos:
            address = str(info[4][0]).split("%", 1)[0]
            if address not in addresses:
                addresses.append(address)
        for address in addresses:
            reason = address_refusal(address, allow_loopback=self.allow_loopback,
                                     allow_private=self.allow_private)
            if reason is not None:
                raise _refuse(
                    f"refusing to connect to {host!r}: {reason}",
                    hint="this tool only reaches public addresses unless configured with "
                    "allow_loopback / allow_private",
                )
        if not addresses:
            raise _fail(f"the host {host!r} resolved to no address")
        return addresses

    def _headers(self, params: dict[str, Any]) -> dict[str, str]:
        headers: dict[str, str] = {}
        for key, value in params.get("headers", {}).items():
            if not key or any(c in key for c in "\r\n:") or any(c in value for c in "\r\n"):
                raise _fail(f"invalid header {key!r}",
                            hint="header names and values cannot contain line breaks")
            if key.lower() in _MANAGED_HEADERS:
                raise _fail(f"the header {key!r} is set by the tool itself")
            headers[key] = value
        auth = params.get("auth")
        if auth is not None:
            if any(k.lower() == "authorization" for k in headers):
                raise _fail("pass credentials either in 'auth' or as an Authorization "
                            "header, not both")
            if auth["type"] == "bearer":
                headers["Authorization"] = f"Bearer {auth['token']}"
            else:
                pair = f"{auth['username']}:{auth['password']}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return headers

    # -- the request ---------------------------------------------------------------------

    async def execute(self, params: dict[str, Any]) -> dict[str, Any]:
        """Send the request described by ``params``; see the class description."""
        started = time.perf_counter()
        budget = min(float(params.get("timeout", self.request_timeout)), self.request_timeout)
        url = self._check_url(params["url"])
        if "query" in params:
            url = url.copy_merge_params(params["query"])
        method: str = params.get("method", "GET")
        headers = self._headers(params)
        if not any(k.lower() == "accept-encoding" for k in headers):
            headers["Accept-Encoding"] = "gzip, deflate"  # what _Decoder can bound
        content: bytes | None = None
        if "json" in params:
            content = json.dumps(params["json"], ensure_ascii=False).encode("utf-8")
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        elif "body" in params:
            content = params["body"].encode("utf-8")
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "text/plain; charset=utf-8"
        retries: int = params.get("retries", 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        redirects: list[str] = []
        try:
            async with contextlib.AsyncExitStack() as stack:
                client: httpx.Client | httpx.AsyncClient
                if self.client is not None:
                    client = self.client
                else:
                    client = await stack.enter_async_context(
                        httpx.AsyncClient(trust_env=False, follow_redirects=False))
                async with asyncio.timeout_at(deadline):
                    while True:
                        response, body, attempts = await self._with_retries(
                            client, method, url, headers, content, retries, deadline)
                        location = response.headers.get("location")
                        if response.status_code not in _REDIRECTS or not location:
                            break
                        if len(redirects) >= self.max_redirects:
                            raise _fail(f"too many redirects (more than {self.max_redirects})",
                                        hint="the last one pointed to " + location)
                        target = self._check_url(url.join(location))
                        if (target.scheme, target.host, target.port) != (
                                url.scheme, url.host, url.port):
                            headers = {k: v for k, v in headers.items()
                                       if k.lower() not in ("authorization", "cookie")}
                        if response.status_code == 303 or (
                                response.status_code in (301, 302) and method == "POST"):
                            method = "GET" if method != "HEAD" else method
                            content = None
                            headers = {k: v for k, v in headers.items()
                                       if k.lower() != "content-type"}
                        url = target
                        redirects.append(str(url))
        except ToolTimeoutError:
            raise
        except TimeoutError:  # the whole-call deadline
            raise ToolTimeoutError(
                _NAME, f"the request to {url.host!r} took longer than {budget:g} s",
                hint="raise 'timeout' (up to the tool's configured limit)",
            ) from None
        return {
            "status": response.status_code,
            "reason": response.reason_phrase,
            "headers": dict(response.headers.items()),
            **self._body(response, body, method),
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
            "url": str(url),
            "redirects": redirects,
            "attempts": attempts,
        }

    async def _with_retries(
        self,
        client: httpx.Client | httpx.AsyncClient,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        content: bytes | None,
        retries: int,
        deadline: float,
    ) -> tuple[httpx.Response, bytes, int]:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            attempt += 1
            last = attempt > retries
            try:
                response, body = await self._send_once(client, method, url, headers, content,
                                                       deadline)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if last:
                    raise _fail(f"could not connect to {url.host!r}: {exc}",
                                hint="check the URL, or pass 'retries'") from None
                delay = min(0.1 * 2 ** (attempt - 1), _MAX_BACKOFF)
            else:
                status = response.status_code
                if last or not (status == 429 or status >= 500):
                    return response, body, attempt
                delay = min(0.1 * 2 ** (attempt - 1), _MAX_BACKOFF)
                retry_after = response.headers.get("retry-after", "")
                if retry_after.isdigit():
                    delay = max(delay, min(float(retry_after), _MAX_RETRY_AFTER))
            await self._sleep(max(0.0, min(delay, deadline - loop.time())))

    async def _send_once(
        self,
        client: httpx.Client | httpx.AsyncClient,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        content: bytes | None,
        deadline: float,
    ) -> tuple[httpx.Response, bytes]:
        """Resolve and check the host, then send to a checked address (the first that
        accepts a connection) with the original Host header and TLS server name."""
        addresses = await self._addresses(url)
        loop = asyncio.get_running_loop()
        host_header = url.netloc.decode("ascii")
        extensions: dict[str, Any] = {}
        if url.scheme == "https":
            extensions["sni_hostname"] = url.raw_host.decode("ascii")
        error: httpx.TransportError | None = None
        for address in addresses:
            remaining = max(deadline - loop.time(), 0.001)
            request = client.build_request(
                method, url.copy_with(host=address), headers={**headers, "Host": host_header},
                content=content, timeout=httpx.Timeout(remaining), extensions=extensions,
            )
            try:
                if isinstance(client, httpx.AsyncClient):
                    return await self._transmit(client, request)
                return await asyncio.to_thread(self._transmit_sync, client, request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = exc
            except httpx.TimeoutException as exc:
                raise ToolTimeoutError(_NAME, f"the request to {url.host!r} timed out: "
                                       f"{type(exc).__name__}") from None
            except httpx.HTTPError as exc:
                raise _fail(f"the request to {url.host!r} failed: {exc}") from None
        assert error is not None
        raise error

    def _check_length(self, response: httpx.Response) -> None:
        declared = response.headers.get("content-length", "")
        if response.request.method == "HEAD" or not declared.isdigit():
            return
        if int(declared) > self.max_bytes:
            raise _fail(f"the response body is {declared} bytes, more than the limit of "
                        f"{self.max_bytes}")

    def _too_big(self) -> ToolExecutionError:
        return _fail(f"the response body is larger than the limit of {self.max_bytes} bytes",
                     hint="ask for less (a range, a page, a filter)")

    def _collect(self, decoder: _Decoder, body: bytearray, raw: bytes) -> None:
        room = self.max_bytes - len(body)
        chunk = decoder.decode(raw, room)
        if len(chunk) > room:
            raise self._too_big()
        body += chunk

    async def _transmit(self, client: httpx.AsyncClient,
                        request: httpx.Request) -> tuple[httpx.Response, bytes]:
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            self._check_length(response)
            decoder = _Decoder(response.headers.get("content-encoding", ""))
            body = bytearray()
            async for raw in response.aiter_raw():
                self._collect(decoder, body, raw)
            self._collect(decoder, body, b"")
        finally:
            await response.aclose()
        return response, bytes(body)

    def _transmit_sync(self, client: httpx.Client,
                       request: httpx.Request) -> tuple[httpx.Response, bytes]:
        response = client.send(request, stream=True, follow_redirects=False)
        try:
            self._check_length(response)
            decoder = _Decoder(response.headers.get("content-encoding", ""))
            body = bytearray()
            for raw in response.iter_raw():
                self._collect(decoder, body, raw)
            self._collect(decoder, body, b"")
        finally:
            response.close()
        return response, bytes(body)

    @staticmethod
    def _body(response: httpx.Response, body: bytes, method: str) -> dict[str, Any]:
        """The body as parsed JSON, text, or base64 (for binary content)."""
        if method == "HEAD" or not body:
            return {"body": "", "body_encoding": "text"}
        media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        charset = response.charset_encoding or "utf-8"
        try:
            text: str | None = body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            text = None
        if text is not None and (media == "application/json" or media.endswith("+json")):
            try:
                return {"body": json.loads(text, parse_constant=_no_constant),
                        "body_encoding": "json"}
            except (ValueError, RecursionError):
                pass  # not valid (or not JSON-safe) JSON after all: return it as text
        if media.startswith("text/") or media in _TEXT_TYPES or media.endswith(
                ("+xml", "+json")) or response.charset_encoding:
            shown = text if text is not None else body.decode("utf-8", "replace")
            return {"body": shown, "body_encoding": "text"}
        if text is not None and "\x00" not in text:
            return {"body": text, "body_encoding": "text"}
        return {"body": base64.b64encode(body).decode("ascii"), "body_encoding": "base64"}


class _Decoder:
    """Undoes a response's ``Content-Encoding`` (none, or one layer of gzip or deflate),
    never producing more than the caller has room for.

    Why not httpx's decoding: it inflates each network chunk whole, and stacked codings
    (``gzip, gzip``) multiply, so a response of a few kilobytes becomes gigabytes in memory
    before any size check can run.
    """

    def __init__(self, header: str) -> None:
        codings = [c.strip().lower() for c in header.split(",")]
        codings = [c for c in codings if c not in ("", "identity")]
        if len(codings) > 1 or (codings and codings[0] not in _DECODED):
            raise _fail(f"the response has the content encoding {header!r}, which this "
                        "tool does not decode",
                        hint="only one layer of gzip or deflate is decoded")
        self._coding = codings[0] if codings else None
        self._zlib: Any = None
        if self._coding is not None:
            self._zlib = zlib.decompressobj(_DECODED[self._coding])
        self._started = False

    def decode(self, data: bytes, room: int) -> bytes:
        """``data`` decoded: at most ``room + 1`` bytes, so more than ``room`` means the
        body is too big. ``b""`` at the end flushes what is left."""
        if self._zlib is None:
            return data
        try:
            if not data:
                return bytes(self._zlib.flush())[:room + 1]
            if self._coding == "deflate" and not self._started:
                self._started = True
                try:  # "deflate" should have a zlib header; some servers send it raw
                    return bytes(self._zlib.decompress(data, room + 1))
                except zlib.error:
                    self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            return bytes(self._zlib.decompress(data, room + 1))
        except zlib.error as exc:
            raise _fail(f"the response body is not valid {self._coding} data: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON-safe")


def renamed_error(name: str, exc: ToolError, *, message: str | None = None,
                  hint: str | None = None) -> ToolError:
    """``exc`` (raised by an :class:`HttpRequestTool` a tool wraps) re-raised under the
    wrapping tool's ``name``, keeping its kind (sandbox refusal, timeout, failure)."""
    kind: type[ToolError]
    if isinstance(exc, SandboxViolationError):
        kind = SandboxViolationError
    elif isinstance(exc, ToolTimeoutError):
        kind = ToolTimeoutError
    else:
        kind = ToolExecutionError
    return kind(name, exc.message if message is None else message,
                hint=exc.hint if hint is None else hint)
