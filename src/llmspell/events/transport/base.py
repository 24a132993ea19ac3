"""What a bus needs from a distributed engine: the transport interface.

A :class:`Transport` moves events between processes. It knows events only (never hooks):

* **publish** a batch of already encoded events (:class:`OutgoingEvent`), each under its event
  id as the message id, so a retried publish is stored once; each gets a
  :class:`PublishAck` (the engine *accepted* it: stored, durable as the engine's storage is)
  or a :class:`PublishFailure` that says whether retrying can help;
* **subscribe** by event pattern, ephemeral (gone with the process) or durable (a named
  consumer that keeps its position on the server and resumes after a restart), with a
  handler that receives :class:`Delivery` objects and settles each one: ``ack`` (done),
  ``nak(delay)`` (deliver again later), ``term`` (never again), ``in_progress`` (still
  working, do not redeliver yet);
* **park** a delivery on the dead-letter subject of a durable subscription, and read the
  dead letters back;
* **replay** the stored events from a sequence number or a point in time;
* **close**.

The bus side (:class:`~llmspell.events.distributed.DistributedBus`) decides what to deliver
locally, when to ack, how to retry and when to park; an engine only implements the moves.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

import msgspec

from llmspell.core.errors import InvalidValueError
from llmspell.core.propagation import current_header_source
from llmspell.events.event import UniversalEvent, encode_event

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
    "PublishAnswers",
    "PublishFailure",
    "ReceivedHeaders",
    "StreamReset",
    "StreamState",
    "Transport",
    "TransportStats",
    "TransportSubscription",
    "validate_consumer_name",
]

ORIGIN_HEADER = "Llmspell-Origin"
"""The message header naming the bus (process) that published an event."""
TRACEPARENT_HEADER = "traceparent"
"""The W3C trace-context header: a message carrying it carries a distributed context."""
SIGNATURE_HEADER = "Llmspell-Signature"
"""The header holding the HMAC of a signed message's context headers and payload."""


class OutgoingEvent(msgspec.Struct, frozen=True):
    """An event ready to publish: its id (the message id), type (the subject), JSON, and
    the headers of the distributed context it was published in (None outside one)."""

    id: str
    event_type: str
    payload: bytes
    headers: Mapping[str, str] | None = None

    @classmethod
    def of(cls, event: UniversalEvent) -> OutgoingEvent:
        """Encode ``event`` (its JSON form, :func:`~llmspell.events.event.encode_event`),
        with the headers of the calling task's distributed context if it has one
        (:mod:`llmspell.core.propagation`)."""
        payload = encode_event(event)
        source = current_header_source()
        if source is None:
            return cls(event.id, event.event_type, payload)
        return cls(event.id, event.event_type, payload, dict(source(payload)))


class ReceivedHeaders(msgspec.Struct, frozen=True):
    """The headers a received event carried (those of a distributed context), and the
    SHA-256 digest of its payload when they hold a signature (to verify it)."""

    headers: dict[str, str]
    payload_digest: bytes | None = None


class PublishAck(msgspec.Struct, frozen=True, kw_only=True):
    """The engine accepted an event: the stream it is stored in and its sequence there.
    ``duplicate``: an event with this id was already stored (a retried publish); nothing
    new was stored."""

    stream: str
    sequence: int
    duplicate: bool = False


class PublishFailure(msgspec.Struct, frozen=True, kw_only=True):
    """The engine did not accept an event. ``retriable``: publishing it again (same id, so
    never stored twice) may succeed (no answer in time, connection down); otherwise the
    engine refused it (too large, no such stream) and retrying cannot help."""

    event_id: str
    error: str
    retriable: bool


PublishAnswers = Callable[[], Awaitable[list[PublishAck | PublishFailure]]]
"""What :meth:`Transport.send` returns: await it for one result per event sent."""


class StreamState(msgspec.Struct, frozen=True, kw_only=True):
    """What the engine holds for a namespace: messages, bytes, first and last sequence."""

    name: str
    messages: int
    bytes: int
    first_sequence: int
    last_sequence: int
    consumers: int


class ConsumerState(msgspec.Struct, frozen=True, kw_only=True):
    """A consumer as the server sees it: messages not yet delivered (``pending``), delivered
    but not acked (``ack_pending``), redelivered so far, and the stream sequence every
    message up to which is acked (``ack_floor``)."""

    name: str
    pending: int
    ack_pending: int
    redelivered: int
    ack_floor: int
    delivered: int


class TransportStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a transport: events accepted (and how many of them were duplicates),
    publish failures, messages received, skipped (own origin, outside the pattern),
    acks/naks/terms sent, ack failures, parked, disconnects and reconnects; streams this
    transport found gone and created again, consumers it created again (lost by the server,
    or moved to a replaced stream: see :class:`StreamReset`) and the events known to have
    gone with a replaced stream before its consumers here received them (a lower bound)."""

    connected: bool
    published: int
    duplicates: int
    publish_failures: int
    received: int
    skipped_own: int
    filtered: int
    acked: int
    naked: int
    terminated: int
    ack_failures: int
    parked: int
    undecodable: int
    disconnects: int
    reconnects: int
    streams_recreated: int = 0
    consumers_recreated: int = 0
    lost_with_stream: int = 0


class StreamReset(msgspec.Struct, frozen=True, kw_only=True):
    """A consumer found its stream replaced while in use (the stream was deleted, by an
    operator or another process, or lost with a server's memory storage, and created again)
    and was created again on the new stream, reading it from its first event.

    ``last_sequence``: the last sequence the consumer received from the old stream;
    ``unreceived``: how many events the old stream still held for it when it last heard
    from the server (gone with that stream: at least this many were never delivered);
    ``recreated``: this process created the stream again (False: another one had).
    """

    stream: str
    consumer: str
    pattern: str
    durable: bool
    last_sequence: int
    unreceived: int
    recreated: bool


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An event a durable subscription parked: the consumer, why (the handler's last error,
    or no ack after ``deliveries`` deliveries), and where it was in the stream."""

    consumer: str
    event: UniversalEvent | None
    payload: bytes
    reason: str
    error_type: str
    message: str
    deliveries: int
    stream_sequence: int
    dead_letter_sequence: int
    parked_at: float


class ConsumerOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How a transport subscription consumes.

    ``durable``: the consumer's name (kept on the server; every process subscribing with it
    shares its position and its messages), None for an ephemeral consumer. A *new* consumer
    starts at ``start_sequence`` or ``start_time`` (wall seconds) if given, else with every
    stored event (``start="all"``) or the events stored from now on (``start="new"``).
    Durable consumers need an explicit settle of every delivery: ``ack_wait`` seconds
    without one redelivers it, at most ``max_deliver`` deliveries in all, at most
    ``max_ack_pending`` unsettled at a time. Ephemeral consumers need no acks. ``batch``:
    how many messages the client asks for at once (and holds at most). ``skip_origin``:
    messages published by this origin are skipped (acked without a delivery).
    """

    durable: str | None = None
    start: str = "new"
    start_sequence: int | None = None
    start_time: float | None = None
    ack_wait: float = 30.0
    max_deliver: int = 6
    max_ack_pending: int = 1000
    batch: int = 64
    skip_origin: str | None = None

    def __post_init__(self) -> None:
        if self.durable is not None:
            validate_consumer_name(self.durable)
        if self.start not in ("new", "all"):
            raise InvalidValueError(f"unknown start {self.start!r}", hint="use 'new' or 'all'")
        if self.start_sequence is not None and self.start_sequence < 1:
            raise InvalidValueError("start_sequence must be >= 1 (stream sequences start at 1)")
        if not self.ack_wait > 0:
            raise InvalidValueError(f"ack_wait must be > 0 seconds, got {self.ack_wait!r}")
        if self.max_deliver < 1:
            raise InvalidValueError(f"max_deliver must be >= 1, got {self.max_deliver!r}")
        if self.max_ack_pending < 1:
            raise InvalidValueError("max_ack_pending must be >= 1")
        if not 1 <= self.batch <= 10_000:
            raise InvalidValueError(f"batch must be between 1 and 10000, got {self.batch!r}")


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def validate_consumer_name(name: str) -> str:
    """Return ``name`` if it can name a durable subscription (letters, digits, ``_``, ``-``;
    at most 64 characters), else raise ``InvalidValueError``."""
    if not isinstance(name, str) or not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise InvalidValueError(
            f"invalid durable subscription name {name!r}",
            hint="use 1 to 64 letters, digits, '_' or '-', e.g. 'billing-worker'")
    return name


class Delivery(abc.ABC):
    """One event handed to a transport subscription's handler, with how to settle it.

    ``origin``: the bus that published it (None if unknown); ``sequence``: its position in
    the stream; ``deliveries``: 1 the first time, more on redeliveries; ``size``: the
    payload's bytes; ``payload``: the encoded event; ``headers``: the message's headers
    (None when it had none).
    """

    __slots__ = ()

    event: UniversalEvent
    headers: Mapping[str, str] | None
    origin: str | None
    sequence: int
    deliveries: int
    size: int
    payload: bytes
    subject: str

    @abc.abstractmethod
    async def ack(self) -> None:
        """Settle as done, and wait until the server confirms it (``TransportError`` if it
        does not: then the event may be delivered again)."""

    @abc.abstractmethod
    async def nak(self, delay: float | None = None) -> None:
        """Deliver it again, after ``delay`` seconds (at once when None)."""

    @abc.abstractmethod
    async def term(self) -> None:
        """Never deliver it again (without calling it done)."""

    @abc.abstractmethod
    async def in_progress(self) -> None:
        """Still working on it: restart the ack timer."""


DeliveryHandler = Callable[[Delivery], Awaitable[None]]
"""A transport subscription's handler: called with one delivery at a time, in stream order;
it settles the delivery (or not: then the consumer's ack timer redelivers it)."""


class TransportSubscription(abc.ABC):
    """A live transport subscription (see :meth:`Transport.subscribe`)."""

    pattern: str
    name: str
    durable: bool

    @abc.abstractmethod
    async def stop(self, timeout: float = 5.0) -> None:
        """Stop receiving: the handler call in progress finishes (up to ``timeout``),
        messages received but not handled are released for redelivery. A durable consumer
        stays on the server (resume it by subscribing with its name); an ephemeral one is
        deleted."""

    @abc.abstractmethod
    async def state(self) -> ConsumerState:
        """The consumer's state on the server."""


class Transport(abc.ABC):
    """A distributed engine's connection, as a bus uses it (see the module docstring).

    ``description`` names the server and namespace (never credentials). Connection changes
    are reported to ``listeners`` (called with True on reconnect, False on disconnect); a
    stream replaced under a consumer to ``reset_listeners`` (called with a
    :class:`StreamReset` once the consumer reads the new stream).
    """

    description: str

    def __init__(self) -> None:
        self.listeners: list[Callable[[bool], object]] = []
        self.reset_listeners: list[Callable[[StreamReset], object]] = []

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while connected to the server."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect and make sure the namespace's stream exists. Raises
        :class:`~llmspell.errors.TransportUnavailableError` when the server cannot be
        reached (or has no persistence), :class:`~llmspell.errors.TransportError` when it
        refuses the stream."""

    @abc.abstractmethod
    async def publish(self, events: Sequence[OutgoingEvent], *, origin: str | None = None,
                      timeout: float = 5.0) -> list[PublishAck | PublishFailure]:
        """Publish ``events`` in order, each under its id as the message id; wait (at most
        ``timeout`` seconds) for the server to accept each. One result per event."""

    async def send(self, events: Sequence[OutgoingEvent], *, origin: str | None = None,
                   timeout: float = 5.0) -> PublishAnswers:
        """:meth:`publish` in two steps, so a caller can keep several batches in flight:
        awaiting ``send`` puts ``events`` on the wire, in order (a later ``send`` goes out
        after them); the function it returns waits (at most ``timeout`` seconds) for the
        server's answers and returns one result per event. This default publishes in the
        first step; an engine that can pipeline overrides it."""
        results = await self.publish(events, origin=origin, timeout=timeout)

        async def answers() -> list[PublishAck | PublishFailure]:
            return results

        return answers

    @abc.abstractmethod
    async def subscribe(self, pattern: str, handler: DeliveryHandler,
                        options: ConsumerOptions) -> TransportSubscription:
        """Consume the events whose type matches ``pattern`` (the bus's pattern syntax),
        one at a time, in stream order, calling ``handler`` with each."""

    @abc.abstractmethod
    async def park(self, delivery: Delivery, *, consumer: str, reason: str,
                   error_type: str, message: str) -> PublishAck:
        """Store ``delivery``'s event on ``consumer``'s dead-letter subject, with why; once
        per event and consumer however often it is called. The caller then terms the
        delivery. Raises ``TransportError`` if the server did not accept it."""

    @abc.abstractmethod
    def dead_letters(self, consumer: str) -> AsyncIterator[DeadLetter]:
        """The events ``consumer`` parked, oldest first."""

    @abc.abstractmethod
    def replay(self, pattern: str = "**", *, start_sequence: int | None = None,
               start_time: float | None = None, stop_sequence: int | None = None
               ) -> AsyncIterator[Delivery]:
        """The stored events matching ``pattern``, in stream order, from ``start_sequence``
        or ``start_time`` (wall seconds; the oldest stored when neither is given) up to
        ``stop_sequence`` or the last event stored when replay began. The deliveries need
        no settling."""

    @abc.abstractmethod
    async def delete_consumer(self, name: str) -> bool:
        """Delete durable consumer ``name`` from the server (its position is lost); False
        if there was none."""

    @abc.abstractmethod
    async def stream_state(self) -> StreamState:
        """The namespace's stream as the server holds it."""

    @abc.abstractmethod
    def stats(self) -> TransportStats:
        """The transport's counters."""

    def received_headers(self, event_id: str) -> ReceivedHeaders | None:
        """The distributed-context headers of a recently received event (a bounded number
        is kept), or None: the event carried none, was not received by this transport, or
        is too old. Engines that carry no headers return None."""
        del event_id
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every subscription, flush what was sent, disconnect. Idempotent."""
