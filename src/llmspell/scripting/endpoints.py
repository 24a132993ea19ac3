"""Which model endpoint a script may name, and which credentials go with it.

The host's configuration names the model endpoint (``LLMSPELL_BASE_URL``, else the
vendor's hosted API) and holds the API keys (``LLMSPELL_API_KEY``, ``OPENAI_API_KEY``,
``ANTHROPIC_API_KEY``). A key is bound to that endpoint: an agent a script creates with a
``base_url`` of its own is a network connection the script chose, so it needs
``--allow-net``, its host must pass the same address checks as the network tools (no
loopback, private, link-local or metadata addresses), and it is sent **no** key.

The address check resolves the host name when the agent is created; a name that later
resolves elsewhere (DNS rebinding) is not re-checked per request.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from urllib.parse import urlsplit

from llmspell.core.errors import InvalidValueError, PermissionDeniedError
from llmspell.runtime.providers.config import HOSTED_ENDPOINTS
from llmspell.runtime.tools.library.http_request import address_refusal

__all__ = ["check_script_endpoint", "configured_endpoint", "same_endpoint"]

_NET = "--allow-net"


def configured_endpoint(kind: str) -> str:
    """The endpoint the host configured for provider ``kind``."""
    return os.environ.get("LLMSPELL_BASE_URL") or HOSTED_ENDPOINTS.get(kind, "")


def same_endpoint(a: str, b: str) -> bool:
    """True when two base URLs name the same endpoint (case of scheme and host, a
    trailing slash and a default port ignored)."""
    return _normal(a) == _normal(b)


def _normal(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/")


def check_script_endpoint(url: str, *, agent: str, allow_net: bool,
                          allow_loopback: bool = False, allow_private: bool = False) -> None:
    """Raise unless a script may send model requests to ``url`` (see the module doc)."""
    if not allow_net:
        raise PermissionDeniedError(
            f"agent {agent!r}: a base_url of the script's own ({url}) is a network "
            f"connection: run with {_NET}",
            hint="or leave base_url out to use the endpoint the host configured "
                 "(LLMSPELL_BASE_URL)")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidValueError(f"agent {agent!r}: base_url {url!r} is not an http(s) URL",
                                hint='e.g. base_url = "https://llm.example.com/v1"')
    if parts.username or parts.password:
        raise InvalidValueError(f"agent {agent!r}: credentials in base_url are not accepted")
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise InvalidValueError(f"agent {agent!r}: base_url {url!r} has a bad port") from None
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise InvalidValueError(f"agent {agent!r}: cannot resolve {host!r}: {exc}") \
                from None
        addresses = sorted({str(info[4][0]) for info in infos})
    for address in addresses:
        why = address_refusal(address, allow_loopback=allow_loopback,
                              allow_private=allow_private)
        if why is not None:
            raise PermissionDeniedError(
                f"agent {agent!r}: base_url {url} is refused: {why}",
                hint="scripts may name public endpoints only; the host can point agents "
                     "at a local server with LLMSPELL_BASE_URL")
