"""One NATS connection for remote hook clients and servers (the ``nats`` extra).

The URL is a bus URL (``nats://host:4222?namespace=shop``; see
:meth:`~llmspell.events.transport.nats.NatsConfig.from_url`): its servers, credentials and
namespace are used, its stream options are not (remote hooks use core NATS request/reply,
not JetStream). Without a URL, ``LLMSPELL_BUS`` and then ``nats://127.0.0.1:4222``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

from llmspell.core.errors import ConfigurationError, TransportUnavailableError
from llmspell.core.redact import get_logger
from llmspell.events.transport.nats import NatsConfig

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = ["DEFAULT_URL", "connect", "config_of", "resolve_url"]

logger = get_logger("llmspell.distributed")

DEFAULT_URL: Final = "nats://127.0.0.1:4222"


def resolve_url(url: str | None) -> str:
    """``url``, else ``LLMSPELL_BUS``, else :data:`DEFAULT_URL`."""
    return url or os.environ.get("LLMSPELL_BUS", "").strip() or DEFAULT_URL


def config_of(url: str | None) -> NatsConfig:
    """The parsed URL (``ConfigurationError`` naming what is wrong)."""
    return NatsConfig.from_url(resolve_url(url))


def _nats() -> Any:
    try:
        import nats  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise ConfigurationError(
            f"remote hooks need nats-py, which cannot be imported ({exc})",
            hint="pip install 'llmspell[nats]'") from None
    return nats


async def _log_error(exc: Exception) -> None:
    logger.debug("nats: %s: %s", type(exc).__name__, exc)


async def connect(config: NatsConfig, *, name: str) -> NatsClient:
    """Connect to ``config``'s servers (the first attempt bounded by its
    ``connect_timeout``, then reconnecting for as long as it takes). Raises
    :class:`~llmspell.errors.TransportUnavailableError` when no server answers."""
    nats = _nats()
    try:
        nc = await nats.connect(
            servers=list(config.servers), name=config.name or name,
            connect_timeout=config.connect_timeout, allow_reconnect=True,
            max_reconnect_attempts=1, reconnect_time_wait=0.5, error_cb=_log_error)
    except Exception as exc:
        hint = ("check the user and password in the URL"
                if "authorization" in str(exc).lower() else
                "start a server with `nats-server`, or point --bus / LLMSPELL_BUS at one")
        raise TransportUnavailableError(
            f"cannot reach the NATS server at {config.description}: "
            f"{type(exc).__name__}: {exc}", hint=hint) from None
    nc.options["max_reconnect_attempts"] = -1
    client: NatsClient = nc
    return client
