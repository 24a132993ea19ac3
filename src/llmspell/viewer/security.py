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

Wrong tokens are throttled per client address (:class:`TokenThrottle`, bounded by
:class:`ThrottleLimits`): after ``max_failures`` wrong tokens an address is refused with
429 and a ``Retry-After`` for a back-off that doubles with every further wrong token (up
to ``max_backoff``), whatever it presents meanwhile, the right token included; the right
token (or the page's cookie) after the back-off forgets the address. Loopback clients are
throttled too: a reverse proxy on the same machine forwards everyone from a loopback
address. An IPv6 client is counted by its ``/64`` (one host usually holds a whole one).
The table of addresses is bounded (``max_clients``; the oldest are evicted), and each
back-off is logged once, with the address and never the token. Written here rather than
taken from a rate-limit library: it is a dict lookup on every request, needs the viewer's
own notion of a wrong token, and must run on an injected :class:`~llmspell.core.clock.Clock`.

The viewer only reads: it has no route that changes anything. Whatever the bind, a request
a browser marks as made by another site's page is refused before these checks
(:func:`llmspell.viewer.app.cross_site`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import os
import secrets
import threading
from collections import OrderedDict

import msgspec

from llmspell.core.clock import SYSTEM_CLOCK, Clock
from llmspell.core.errors import ConfigurationError, InvalidValueError
from llmspell.core.redact import get_logger
from llmspell.core.text import is_utf8

__all__ = ["COOKIE", "MIN_TOKEN_LENGTH", "TOKEN_ENV", "SessionCookie", "ThrottleLimits",
           "TokenThrottle", "check_bind", "client_key", "cookie_name", "host_of",
           "is_loopback", "same_token", "token_from_env"]

logger = get_logger("llmspell.viewer")

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


_KEY_LENGTH = 100
"""The longest client key kept (an address that is not an IP address is cut to it)."""
_EVICTION_SCAN = 32
"""How many of the oldest addresses eviction looks through for one that is not waiting
(past them, the oldest goes, waiting or not): eviction stays cheap under a spray."""


def client_key(host: str) -> str:
    """The key wrong tokens from client address ``host`` are counted under: an IPv4
    address as it is (also when IPv4-mapped, ``::ffff:a.b.c.d``), an IPv6 address as its
    ``/64`` network (one host usually holds a whole one, and could otherwise rotate through
    it), anything else (a Unix socket's name, a test client's) as it is, cut to 100
    characters."""
    text = host.strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return text[:_KEY_LENGTH]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address.packed, 64), strict=False))
    return str(address)


def _seconds(name: str, value: object, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 < value < math.inf:
        raise InvalidValueError(
            f"ThrottleLimits.{name} must be a number of seconds > 0, got {value!r}",
            hint=f"the default is {default:g}")
    return float(value)


class ThrottleLimits(msgspec.Struct, frozen=True, kw_only=True):
    """How the viewer throttles wrong tokens (see :class:`TokenThrottle`).

    ``max_failures``: wrong tokens an address may send before it must wait; ``backoff``:
    the first wait, in seconds, doubled by each further wrong token; ``max_backoff``: the
    longest wait; ``max_clients``: addresses tracked at once (past it the oldest not
    waiting is forgotten); ``forget``: seconds without a wrong token (counted from the end
    of its last wait) after which an address starts afresh. Bad values raise
    :class:`~llmspell.errors.InvalidValueError`.
    """

    max_failures: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    max_clients: int = 4096
    forget: float = 900.0

    def __post_init__(self) -> None:
        defaults = ThrottleLimits.__struct_defaults__
        for name in ("max_failures", "max_clients"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                default = defaults[self.__struct_fields__.index(name)]
                raise InvalidValueError(
                    f"ThrottleLimits.{name} must be a whole number >= 1, got {value!r}",
                    hint=f"the default is {default}")
        backoff = _seconds("backoff", self.backoff, 1.0)
        longest = _seconds("max_backoff", self.max_backoff, 60.0)
        _seconds("forget", self.forget, 900.0)
        if longest < backoff:
            raise InvalidValueError(
                f"ThrottleLimits.max_backoff ({self.max_backoff!r}) is shorter than the "
                f"first wait, backoff ({self.backoff!r})",
                hint="give a max_backoff at least as long as backoff")


class _Strikes:
    """One address's wrong tokens."""

    __slots__ = ("failures", "last", "refused", "until")

    def __init__(self) -> None:
        self.failures = 0
        self.last = 0.0  # when the last wrong token came
        self.until = -math.inf  # when its wait ends
        self.refused = 0  # requests refused during its current wait


class TokenThrottle:
    """Wrong tokens counted per client address (:func:`client_key`), in a table of at most
    ``limits.max_clients`` addresses, on ``clock``.

    The viewer asks :meth:`wait` before it looks at a request's token (a positive answer:
    refuse it, 429, whatever it presents), then tells :meth:`failed` of a wrong token and
    :meth:`succeeded` of a request let in. Thread-safe.
    """

    def __init__(self, limits: ThrottleLimits | None = None, *,
                 clock: Clock | None = None) -> None:
        self.limits = limits if limits is not None else ThrottleLimits()
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self._table: OrderedDict[str, _Strikes] = OrderedDict()  # oldest failure first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Addresses tracked."""
        return len(self._table)

    def failures(self, address: str) -> int:
        """Wrong tokens counted for ``address`` (0 when it is not tracked)."""
        strikes = self._table.get(client_key(address))
        return 0 if strikes is None else strikes.failures

    def wait(self, address: str) -> float:
        """Seconds ``address`` must still wait before its token is looked at (0.0: it may
        try now). A positive answer counts as one refused request of its wait."""
        if not self._table:  # the usual case: nobody has guessed wrong
            return 0.0
        strikes = self._table.get(client_key(address))
        if strikes is None:
            return 0.0
        remaining = strikes.until - self.clock.monotonic()
        if remaining <= 0:
            return 0.0
        strikes.refused += 1
        return remaining

    def failed(self, address: str) -> float:
        """Count a wrong token from ``address``; the wait it now has (0.0: none yet). A
        wait that starts is logged (once: the requests refused during it are not)."""
        key = client_key(address)
        limits = self.limits
        with self._lock:
            now = self.clock.monotonic()
            table = self._table
            strikes = table.get(key)
            if strikes is not None and now - max(strikes.last, strikes.until) \
                    >= limits.forget:
                del table[key]
                strikes = None
            if strikes is None:
                if len(table) >= limits.max_clients:
                    self._evict(now)
                strikes = table[key] = _Strikes()
            else:
                table.move_to_end(key)
            strikes.failures += 1
            strikes.last = now
            over = strikes.failures - limits.max_failures
            if over < 0:
                return 0.0
            wait = min(limits.backoff * 2.0 ** min(over, 64), limits.max_backoff)
            refused, strikes.refused = strikes.refused, 0
            strikes.until = now + wait
        logger.warning(
            "viewer: %d wrong tokens from %s: refusing it for %g s (HTTP 429)%s",
            strikes.failures, key, wait,
            f"; {refused} requests were refused during its last wait" if refused else "")
        return wait

    def succeeded(self, address: str) -> None:
        """A request from ``address`` was let in: forget its wrong tokens."""
        if self._table:
            with self._lock:
                self._table.pop(client_key(address), None)

    def _evict(self, now: float) -> None:
        """Forget the oldest address not waiting among the oldest few, else the oldest."""
        table = self._table
        for scanned, (key, strikes) in enumerate(table.items()):
            if scanned >= _EVICTION_SCAN:
                break
            if strikes.until <= now:
                del table[key]
                return
        table.popitem(last=False)
