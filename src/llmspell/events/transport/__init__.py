"""Transports: the bridge from the event bus to a distributed engine.

:mod:`~llmspell.events.transport.base` is the interface a bus needs;
:mod:`~llmspell.events.transport.nats` implements it over NATS JetStream (the ``nats``
extra, imported only when a NATS transport connects). :func:`transport_from_url` picks the
implementation from a bus URL's scheme.
"""

from __future__ import annotations

from llmspell.core.errors import ConfigurationError
from llmspell.events.transport.base import (
    ORIGIN_HEADER,
    SIGNATURE_HEADER,
    TRACEPARENT_HEADER,
    ConsumerOptions,
    ConsumerState,
    DeadLetter,
    Delivery,
    DeliveryHandler,
    OutgoingEvent,
    PublishAck,
    PublishFailure,
    ReceivedHeaders,
    StreamReset,
    StreamState,
    Transport,
    TransportStats,
    TransportSubscription,
    validate_consumer_name,
)

__all__ = [
    "ORIGIN_HEADER",
    "SIGNATURE_HEADER",
    "TRACEPARENT_HEADER",
    "ConsumerOptions",
    "ConsumerState",
    "DeadLetter",
    "Delivery",
    "DeliveryHandler",
    "OutgoingEvent",
    "PublishAck",
    "PublishFailure",
    "ReceivedHeaders",
    "StreamReset",
    "StreamState",
    "Transport",
    "TransportStats",
    "TransportSubscription",
    "transport_from_url",
    "validate_bus_url",
    "validate_consumer_name",
]

_NATS_SCHEMES = ("nats://", "tls://", "ws://", "wss://")


def transport_from_url(url: str) -> Transport:
    """The transport for a bus URL: ``nats://``, ``tls://``, ``ws://`` or ``wss://`` (NATS
    JetStream; see :meth:`~llmspell.events.transport.nats.NatsConfig.from_url` for the
    query options). Not connected yet. Raises ``ConfigurationError`` for a bad URL."""
    validate_bus_url(url)
    from llmspell.events.transport.nats import NatsTransport  # noqa: PLC0415 - nats is optional

    return NatsTransport(url)


def validate_bus_url(url: str) -> str:
    """Return ``url`` if it is a bus URL a transport understands (and well formed), else
    raise ``ConfigurationError`` saying what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("the bus URL is empty",
                                 hint="e.g. nats://127.0.0.1:4222, or leave it unset for the "
                                      "in-process bus")
    if not url.strip().lower().startswith(_NATS_SCHEMES):
        raise ConfigurationError(
            f"unsupported bus URL {url.rsplit('@', maxsplit=1)[-1]!r}",
            hint="use a NATS URL (nats://host:4222, tls://host:4222), or leave the bus unset "
                 "for the in-process bus")
    from llmspell.events.transport.nats import NatsConfig  # noqa: PLC0415 - nats is optional

    NatsConfig.from_url(url)
    return url
