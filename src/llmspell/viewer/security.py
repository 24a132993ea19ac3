"""Who may open the viewer: loopback by default, a token for anything else.

The page shows every event (prompts, replies, tool arguments, hook decisions), so:

* bound to a loopback address (``127.0.0.1``, ``::1``, ``localhost``) it needs no token,
  but answers only requests whose ``Host`` names a loopback host, so a web page the user
  visits cannot reach it through a DNS name rebound to 127.0.0.1;
* bound to any other address (``0.0.0.0``, a LAN address, a host name) it must have a token
  (:func:`check_bind` refuses to start without one), and every request must present it:
  ``?token=...``, ``Authorization: Bearer ...``, ``X-Llmspell-Token: ...`` or the cookie
  the page sets when it is opened with the token. Tokens are compared in constant time.

The cookie is not the token: it is an HMAC-SHA256 of the token under a key drawn at random
when the viewer starts (:class:`SessionCookie`), so a cookie read off a disk, a proxy log or
a browser profile does not give away the token (which also opens the page from elsewhere, by
header), and every cookie given out stops working when the viewer restarts.

The viewer only reads: it has no route that changes anything. Whatever the bind, a request
a browser marks as made by another site's page is refused before these checks
(:func:`llmspell.viewer.app.cross_site`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets

from llmspell.core.errors import ConfigurationError
from llmspell.core.text import is_utf8

__all__ = ["COOKIE", "MIN_TOKEN_LENGTH", "TOKEN_ENV", "SessionCookie", "check_bind",
           "cookie_name", "host_of", "is_loopback", "same_token", "token_from_env"]

TOKEN_ENV = "LLMSPELL_VIEW_TOKEN"
"""The environment variable ``llmspell view`` reads its token from when ``--token`` is not
given."""
COOKIE = "llmspell_view"


def cookie_name(port: int | None) -> str:
    """The name of the cookie of the viewer serving on ``port``: browsers scope cookies by
    host, not port, so two viewers on one host under one name would overwrite each
    other's cookie (each page then asked for its token again)."""
    return COOKIE if port is None else f"{COOKIE}_{port}"
"""The cookie the page is given when opened with the token (HttpOnly, SameSite=Strict,
Path=/); its value is :meth:`SessionCookie.value`, not the token."""
MIN_TOKEN_LENGTH = 16
"""The shortest token accepted (a guessable token would defeat it)."""

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name, IPv6 with or without brackets) is a
    loopback address. Names other than ``localhost`` are not trusted to be."""
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8787`` -> ``::1``). A host followed by
    anything but ``:port`` (``[::1]evil.example``, ``localhost:x``) is returned whole, so it
    is no loopback host."""
    text = header.strip()
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1:] if close > 0 else ""
        if close > 0 and (not rest or (rest[0] == ":" and rest[1:].isascii()
                                       and rest[1:].isdigit())):
            return text[1:close]
        return text
    if text.count(":") != 1:
        return text
    host, port = text.split(":")
    return host if port.isascii() and port.isdigit() else text


def token_from_env() -> str | None:
    """``$LLMSPELL_VIEW_TOKEN`` when set and not blank."""
    value = os.environ.get(TOKEN_ENV, "").strip()
    return value or None


def check_bind(host: str, token: str | None) -> None:
    """Refuse a bind the viewer must not make: a non-loopback ``host`` without a token, or
    a token shorter than :data:`MIN_TOKEN_LENGTH`, holding whitespace or not UTF-8 text.
    Raises
    :class:`~llmspell.errors.ConfigurationError`."""
    if token is not None and not is_utf8(token):
        raise ConfigurationError(
            "the viewer's token is not valid UTF-8 text: a browser could never send it",
            hint="make one with: python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    if token is not None and any(char.isspace() for char in token):
        raise ConfigurationError(
            "the viewer's token holds whitespace: a URL or header cannot carry it as it is "
            "(and a token of spaces guesses easily)",
            hint="make one with: python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(
            f"the viewer's token is {len(token)} characters long; it must have at least "
            f"{MIN_TOKEN_LENGTH}",
            hint="make one with: python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    if token is None and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the viewer on {host!r} without a token: it is not a loopback "
            "address, and the page shows every event (prompts, tool arguments, results) to "
            "whoever can reach it",
            hint=f"pass --token TOKEN (or set {TOKEN_ENV}) and open the page with "
                 "?token=TOKEN, or bind to 127.0.0.1 (the default)")


def same_token(given: str | None, expected: str) -> bool:
    """``given == expected``, in time that does not depend on where they differ."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


class SessionCookie:
    """The value of the viewer's cookie: ``HMAC-SHA256(key, token)`` in hex, under a
    ``key`` of 32 random bytes drawn when the object is made (once per viewer process, so
    a restart invalidates every cookie given out before it). Checked in constant time."""

    def __init__(self, token: str, key: bytes | None = None) -> None:
        self._value = hmac.new(key if key is not None else secrets.token_bytes(32),
                               token.encode("utf-8"), hashlib.sha256).hexdigest()

    def value(self) -> str:
        """What the cookie holds."""
        return self._value

    def header(self, name: str = COOKIE) -> bytes:
        """The ``Set-Cookie`` header's value (``name``: see :func:`cookie_name`)."""
        return f"{name}={self._value}; Path=/; HttpOnly; SameSite=Strict".encode("ascii")

    def accepts(self, given: str | None) -> bool:
        """Whether ``given`` (the cookie a request sent) is this viewer's cookie."""
        return same_token(given, self._value)
