"""The NATS JetStream transport (``nats-py`` 2.x, the ``nats`` extra).

**Streams and subjects.** One stream per namespace (``llmspell-<namespace>`` unless
named) holds the namespace's events under ``<prefix>.ev.<event type>`` and the parked
events of durable subscriptions under ``<prefix>.dlq.<subscription>``; the prefix is
``llmspell.<namespace>`` unless set. Retention: ``max_age`` (7 days by default),
``max_msgs`` and ``max_bytes`` (unlimited by default), file storage. The first process to
connect creates the stream; later ones use it as it is.

**Publishing.** Every event is published with ``Nats-Msg-Id`` = its id, so the server
stores it once however often a publish is retried within the duplicate window (2 minutes by
default), and with ``Llmspell-Origin`` = the publishing bus. The server's PubAck is what
*accepted* means. Publishes are pipelined (``publish_async``) and each one's PubAck is
awaited with a timeout; an unanswered publish is reported as retriable.

**Patterns to subjects.** A pattern maps to the narrowest subject filter that covers it:
a literal segment stays, ``*`` stays ``*``, a trailing ``**`` becomes ``>`` (plus the
subject without it, since ``**`` also matches zero segments: two filters on servers from
2.10, one level wider before), a ``**`` elsewhere becomes ``>`` from there on, and a
segment with a glob inside (``calc*``) becomes ``*``. When the filter is wider than the
pattern, each message's event type is checked with llmspell's own pattern matcher and the
ones outside are skipped (acked, for durable consumers) without a delivery.

**Consuming.** Every subscription is a pull consumer read by one long-lived worker task:
the client keeps at most ``batch`` messages requested or held, asks for more as the
worker takes them (so a slow handler slows the fetching, never the server), and watches the
server's idle heartbeats; pull requests lost to a reconnect are made again, and a consumer
the server lost (an ephemeral one after a restart) is created again from the next sequence.
Durable consumers (explicit acks, ``max_deliver``, ``ack_wait``) keep their position on the
server; a member that stops gives back (naks) what it received but did not handle, and
waits for its open pull requests to end (at most ``DURABLE_PULL_EXPIRES``), giving back
what they still bring, so no event waits for ``ack_wait`` after a clean stop. Ephemeral
consumers (no acks) are deleted on stop, and by the server when their process has been gone
for a minute.

Why a hand-written pull loop rather than nats-py's ``fetch``: a ``fetch(batch)`` returns
only when the batch is full or its request expires, so a lone event would wait for the
expiry; here each message is handed on as it arrives.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import math
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from llmspell.core.errors import (
    ConfigurationError,
    InvalidValueError,
    SerializationError,
    TransportError,
    TransportUnavailableError,
    brief,
)
from llmspell.core.ids import new_id
from llmspell.core.redact import get_logger
from llmspell.core.values import MAX_INT64, MIN_INT64
from llmspell.events.event import UniversalEvent, decode_event, validate_event_type
from llmspell.events.pattern import EventPattern, compile_pattern
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
    PublishAnswers,
    PublishFailure,
    ReceivedHeaders,
    StreamReset,
    StreamState,
    Transport,
    TransportStats,
    TransportSubscription,
)

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSubscription
    from nats.js.api import ConsumerConfig
    from nats.js.client import JetStreamContext

__all__ = ["NatsConfig", "NatsTransport", "pattern_subjects"]

logger = get_logger("llmspell.events.transport")

_SCHEMES = ("nats", "tls", "ws", "wss")
_DEFAULT_URL = "nats://127.0.0.1:4222"

PULL_EXPIRES = 10.0
"""Seconds a pull request of an ephemeral consumer stays open on the server."""
DURABLE_PULL_EXPIRES = 2.0
"""The same for a durable consumer: short, because a member that stops waits for its open
requests to end (giving back what they bring) so that no event sits unseen until ack_wait."""
HEARTBEAT = 1.0
"""Seconds between the server's idle heartbeats on an open pull request."""
EPHEMERAL_INACTIVE = 60.0
"""Seconds after which the server deletes an ephemeral consumer nobody reads."""
ACK_TIMEOUT = 5.0
"""Seconds an ack waits for the server's confirmation."""
RECREATE_DELAY = 1.0
"""Seconds a consumer (or publisher) that found the stream gone waits before making it
again: the server says so while it is still deleting the stream, and a stream (or consumer)
made again meanwhile can be left half-working (it stores events it never delivers)."""
RECEIVED_HEADERS = 4096
"""How many received events' distributed-context headers are kept for
:meth:`NatsTransport.received_headers` (the most recent ones)."""

_DEAD = "Llmspell-Dead-"
_STORAGE = ("file", "memory")


class NatsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where the NATS server is and how the namespace's stream is kept.

    ``servers``: one or more ``nats://``/``tls://`` URLs (credentials may be in them).
    ``namespace``: separates applications sharing a server (its own stream and subjects).
    ``stream``/``subject_prefix``: override the derived names. ``max_age`` (seconds),
    ``max_msgs``, ``max_bytes`` (-1: unlimited): the stream's retention; ``storage``:
    ``file`` or ``memory``; ``replicas``: copies in a cluster; ``duplicate_window``:
    seconds during which a retried publish of the same event id is stored once.
    ``connect_timeout``: seconds for the first connection; ``name``: the connection's name
    in the server's monitoring.
    """

    servers: tuple[str, ...] = (_DEFAULT_URL,)
    namespace: str = "default"
    stream: str | None = None
    subject_prefix: str | None = None
    max_age: float = 7 * 86400.0
    max_msgs: int = -1
    max_bytes: int = -1
    storage: str = "file"
    replicas: int = 1
    duplicate_window: float = 120.0
    connect_timeout: int = 2
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.servers:
            raise ConfigurationError("a NATS transport needs at least one server URL",
                                     hint=f"e.g. {_DEFAULT_URL}")
        for server in self.servers:
            _check_server(server)
        _check_token("namespace", self.namespace)
        if self.stream is not None:
            _check_token("stream", self.stream)
        if self.subject_prefix is not None:
            for token in self.subject_prefix.split("."):
                _check_token("subject prefix segment", token)
        if not self.max_age > 0:
            raise ConfigurationError(f"max_age must be > 0 seconds, got {self.max_age!r}",
                                     hint="e.g. 604800 (7 days)")
        if self.storage not in _STORAGE:
            raise ConfigurationError(f"unknown storage {self.storage!r}",
                                     hint="use 'file' or 'memory'")
        if self.replicas < 1:
            raise ConfigurationError("replicas must be >= 1", hint="1 on a single server")
        if not self.duplicate_window > 0:
            raise ConfigurationError("duplicate_window must be > 0 seconds",
                                     hint="e.g. 120 (the server's default)")
        if self.connect_timeout < 1:
            raise ConfigurationError("connect_timeout must be >= 1 second", hint="e.g. 2")
        if self.max_msgs == 0 or self.max_msgs < -1 or self.max_bytes == 0 or self.max_bytes < -1:
            raise ConfigurationError("max_msgs and max_bytes must be -1 (unlimited) or >= 1",
                                     hint="leave them out for no limit")

    @property
    def stream_name(self) -> str:
        """The stream's name."""
        return self.stream or f"llmspell-{self.namespace}"

    @property
    def prefix(self) -> str:
        """The subject prefix."""
        return self.subject_prefix or f"llmspell.{self.namespace}"

    @property
    def description(self) -> str:
        """The servers (without credentials) and the namespace."""
        hosts = ",".join(_redact(s) for s in self.servers)
        return f"{hosts} (namespace {self.namespace!r})"

    @classmethod
    def from_url(cls, url: str) -> NatsConfig:
        """Parse ``nats://host:port[,nats://host2:port]?namespace=...&max_age=...``.

        Query keys: ``namespace``, ``stream``, ``prefix``, ``max_age``, ``max_msgs``,
        ``max_bytes``, ``storage``, ``replicas``, ``duplicate_window``, ``connect_timeout``,
        ``name``. Raises ``ConfigurationError`` naming what is wrong.
        """
        if not isinstance(url, str) or not url.strip():
            raise ConfigurationError("an empty bus URL", hint=f"e.g. {_DEFAULT_URL}")
        base, _, query = url.strip().partition("?")
        servers = tuple(s.strip() for s in base.split(",") if s.strip())
        values: dict[str, Any] = {"servers": servers}
        try:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True,
                                           strict_parsing=bool(query))
        except ValueError as exc:
            raise ConfigurationError(f"bad query in bus URL {_redact(url)!r}: {exc}",
                                     hint="use key=value pairs joined by '&'") from None
        for key, raw in pairs:
            spec = _QUERY.get(key)
            if spec is None:
                raise ConfigurationError(
                    f"unknown option {key!r} in bus URL {_redact(url)!r}",
                    hint=f"valid options: {', '.join(sorted(_QUERY))}")
            field, kind = spec
            try:
                values[field] = kind(raw)
            except ValueError:
                raise ConfigurationError(
                    f"option {key}={raw!r} in bus URL is not a valid {kind.__name__}",
                    hint=f"give a {kind.__name__}, e.g. {key}={_EXAMPLES[key]}") from None
        return cls(**values)


_QUERY: dict[str, tuple[str, type]] = {
    "namespace": ("namespace", str),
    "stream": ("stream", str),
    "prefix": ("subject_prefix", str),
    "max_age": ("max_age", float),
    "max_msgs": ("max_msgs", int),
    "max_bytes": ("max_bytes", int),
    "storage": ("storage", str),
    "replicas": ("replicas", int),
    "duplicate_window": ("duplicate_window", float),
    "connect_timeout": ("connect_timeout", int),
    "name": ("name", str),
}

_EXAMPLES = {"namespace": "prod", "stream": "llmspell-prod", "prefix": "llmspell.prod",
             "max_age": "604800", "max_msgs": "1000000", "max_bytes": "1073741824",
             "storage": "file", "replicas": "3", "duplicate_window": "120",
             "connect_timeout": "2", "name": "worker-1"}

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _check_token(what: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > 64 \
            or not set(value) <= _TOKEN_CHARS:
        raise ConfigurationError(f"invalid {what} {value!r}",
                                 hint="use 1 to 64 letters, digits, '_' or '-'")


def _check_server(server: str) -> None:
    try:
        parts = urllib.parse.urlsplit(server)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"bad NATS server URL {_redact(server)!r}: {exc}",
                                 hint=f"e.g. {_DEFAULT_URL}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"bad NATS server URL {_redact(server)!r}: scheme {parts.scheme or '(none)'!r}",
            hint=f"use one of {', '.join(s + '://' for s in _SCHEMES)}, e.g. {_DEFAULT_URL}")
    if not parts.hostname:
        raise ConfigurationError(f"bad NATS server URL {_redact(server)!r}: no host",
                                 hint=f"e.g. {_DEFAULT_URL}")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigurationError(f"bad NATS server URL {_redact(server)!r}: a path or "
                                 "fragment", hint="give scheme://host:port only")
    del port


def _redact(url: str) -> str:
    """``url`` without its user and password."""
    head, sep, tail = url.partition("://")
    if not sep or "@" not in tail.split("/", 1)[0]:
        return url
    return f"{head}://***@{tail.split('@', 1)[1]}"


def pattern_subjects(pattern: str | EventPattern, root: str, *, multi_filter: bool
                     ) -> tuple[tuple[str, ...], bool]:
    """The subject filters covering ``pattern`` under ``root`` (``<prefix>.ev``), and
    whether they are wider than the pattern (then each message must be checked with the
    pattern). ``multi_filter``: the server takes several filters per consumer (2.10+)."""
    compiled = pattern if isinstance(pattern, EventPattern) else compile_pattern(pattern)
    segments: list[str] = []
    for segment in compiled.source.split("."):
        if segment == "**" and segments and segments[-1] == "**":
            continue  # '**.**' is '**'
        segments.append(segment)
    tokens: list[str] = []
    wider = False
    for index, segment in enumerate(segments):
        if segment == "**":
            if index + 1 < len(segments):  # a '**' with segments after it
                return (_join(root, [*tokens, ">"]),), True
            if not tokens:
                return (f"{root}.>",), wider
            if multi_filter:
                return (_join(root, tokens), _join(root, [*tokens, ">"])), wider
            return (_join(root, [*tokens[:-1], ">"]),), True
        if segment == "*":
            tokens.append("*")
        elif any(c in segment for c in "*?["):
            tokens.append("*")
            wider = True
        else:
            tokens.append(segment)
    return (_join(root, tokens),), wider


def _join(root: str, tokens: list[str]) -> str:
    return ".".join([root, *tokens])


def _header_text(value: str, limit: int = 512) -> str:
    """A header value: one line, at most ``limit`` characters."""
    return " ".join(value.split())[:limit]


def _nats() -> Any:
    try:
        import nats  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise ConfigurationError(
            f"the NATS transport needs nats-py, which cannot be imported ({exc})",
            hint="pip install 'llmspell[nats]'") from None
    return nats


class _Counters:
    """The transport's counters (all touched on its event loop only)."""

    __slots__ = ("ack_failures", "acked", "consumers_recreated", "disconnects", "duplicates",
                 "filtered", "lost_with_stream", "naked", "parked", "publish_failures",
                 "published", "received", "reconnects", "skipped_own", "streams_recreated",
                 "terminated", "undecodable")

    def __init__(self) -> None:
        self.ack_failures = 0
        self.acked = 0
        self.consumers_recreated = 0
        self.lost_with_stream = 0
        self.streams_recreated = 0
        self.disconnects = 0
        self.duplicates = 0
        self.filtered = 0
        self.naked = 0
        self.parked = 0
        self.publish_failures = 0
        self.published = 0
        self.received = 0
        self.reconnects = 0
        self.skipped_own = 0
        self.terminated = 0
        self.undecodable = 0

class _NatsDelivery(Delivery):
    """A message of a pull consumer, decoded."""

    __slots__ = ("_counters", "_explicit", "_msg", "deliveries", "event", "headers", "origin",
                 "payload", "sequence", "size", "subject")

    def __init__(self, msg: Msg, event: UniversalEvent, explicit: bool,
                 counters: _Counters) -> None:
        self._msg = msg
        self._explicit = explicit
        self._counters = counters
        self.event = event
        headers = msg.headers
        self.headers = headers
        self.origin = headers.get(ORIGIN_HEADER) if headers else None
        metadata = msg.metadata
        self.sequence = metadata.sequence.stream
        self.deliveries = metadata.num_delivered
        self.payload = msg.data
        self.size = len(msg.data)
        self.subject = msg.subject

    async def ack(self) -> None:
        """See :meth:`Delivery.ack`."""
        if not self._explicit:
            return
        try:
            await self._msg.ack_sync(timeout=ACK_TIMEOUT)
        except Exception as exc:
            self._counters.ack_failures += 1
            raise TransportError(
                f"the server did not confirm the ack of event {self.event.id} "
                f"(sequence {self.sequence}): {type(exc).__name__}: {exc}",
                hint="the event may be delivered again (delivery is at-least-once)") from None
        self._counters.acked += 1

    async def nak(self, delay: float | None = None) -> None:
        """See :meth:`Delivery.nak`."""
        if self._explicit:
            await _settle(self._msg.nak(delay=delay), "nak")
            self._counters.naked += 1

    async def term(self) -> None:
        """See :meth:`Delivery.term`."""
        if self._explicit:
            await _settle(self._msg.term(), "term")
            self._counters.terminated += 1

    async def in_progress(self) -> None:
        """See :meth:`Delivery.in_progress`."""
        if self._explicit:
            await _settle(self._msg.in_progress(), "in-progress ack")


async def _quietly(call: Any, what: str) -> None:
    try:
        await call
    except Exception as exc:
        logger.debug("%s failed: %s", what, exc)


async def _settle(call: Any, what: str) -> None:
    try:
        await call
    except Exception as exc:
        raise TransportError(f"could not send a {what}: {type(exc).__name__}: {exc}",
                             hint="the server redelivers the event after its ack wait") from None


class _NatsConsumer(TransportSubscription):
    """One pull consumer and the worker task that hands its messages on (module doc)."""

    def __init__(self, transport: NatsTransport, pattern: EventPattern,
                 handler: DeliveryHandler, options: ConsumerOptions,
                 subjects: tuple[str, ...], wider: bool) -> None:
        self._transport = transport
        self.pattern = pattern.source
        self._matcher = pattern if wider else None
        self._handler = handler
        self._options = options
        self._subjects = subjects
        self.durable = options.durable is not None
        self.name = options.durable or f"eph-{new_id()}"
        self._batch = options.batch
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._requested = 0
        self._busy = False
        self._stopping = False
        self._last_activity = 0.0
        self._sub: NatsSubscription | None = None
        self._worker: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._inbox = ""
        self._next_subject = ""
        # The highest stream sequence received (handed on or skipped): a consumer the
        # server lost is created again after it.
        self.seen_sequence = 0
        # Events the server still held for this consumer when it last sent one (its
        # num_pending), and the creation time of the stream the consumer was made on: a
        # stream created later is another stream (deleted and made again).
        self._unreceived = 0
        self._epoch: datetime.datetime | None = None

    # -- the consumer on the server ------------------------------------------------------
    def _config(self, *, resume: bool, fresh: bool = False) -> ConsumerConfig:
        from nats.js import api  # noqa: PLC0415 - optional dependency

        options = self._options
        config = api.ConsumerConfig(
            name=self.name,
            durable_name=self.name if self.durable else None,
            ack_policy=api.AckPolicy.EXPLICIT if self.durable else api.AckPolicy.NONE,
            replay_policy=api.ReplayPolicy.INSTANT,
        )
        if len(self._subjects) == 1:
            config.filter_subject = self._subjects[0]
        else:
            config.filter_subjects = list(self._subjects)
        if self.durable:
            config.ack_wait = options.ack_wait
            config.max_deliver = options.max_deliver
            config.max_ack_pending = options.max_ack_pending
        else:
            config.inactive_threshold = EPHEMERAL_INACTIVE
        if fresh:
            # A stream made again holds only events published since: every one is new here.
            config.deliver_policy = api.DeliverPolicy.ALL
        elif resume and self.seen_sequence:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self.seen_sequence + 1
        elif options.start_sequence is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = options.start_sequence
        elif options.start_time is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.datetime.fromtimestamp(options.start_time,
                                                                    datetime.UTC)
        elif options.start == "all":
            config.deliver_policy = api.DeliverPolicy.ALL
        else:
            config.deliver_policy = api.DeliverPolicy.NEW
        return config

    async def _create(self, *, resume: bool = False, fresh: bool = False) -> None:
        import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

        js = self._transport._jetstream()
        stream = self._transport.config.stream_name
        config = self._config(resume=resume, fresh=fresh)
        epoch = self._transport._epoch
        if self.durable:
            try:
                info = await js.consumer_info(stream, self.name)
            except js_errors.NotFoundError:
                info = None
            if info is not None:
                await self._adopt(info.config, config)
                self._epoch = epoch
                return
        try:
            await js.add_consumer(stream, config)
            self._epoch = epoch
        except js_errors.APIError as exc:
            if self.durable:  # another process may have created it meanwhile
                try:
                    info = await js.consumer_info(stream, self.name)
                except js_errors.NotFoundError:
                    info = None
                if info is not None:
                    await self._adopt(info.config, config)
                    self._epoch = epoch
                    return
            hint = ("the namespace's stream was deleted: connect again to create it"
                    if exc.err_code == 10059 else
                    "check the server's JetStream limits (max consumers per stream)")
            raise TransportError(
                f"the server refused the consumer for {self.pattern!r}: {exc.description}",
                hint=hint) from None

    async def _adopt(self, existing: ConsumerConfig, wanted: ConsumerConfig) -> None:
        """Resume an existing durable consumer; its filter must be ours. Its ack wait, max
        deliveries and max ack pending are updated to ours."""
        have = tuple(existing.filter_subjects or ([existing.filter_subject]
                                                  if existing.filter_subject else []))
        if have != self._subjects:
            raise TransportError(
                f"durable subscription {self.name!r} exists for subjects {list(have)}, not "
                f"{list(self._subjects)} (pattern {self.pattern!r})",
                hint="subscribe with another name, or delete the old one first "
                     "(bus.delete_durable(name))")
        if getattr(existing.ack_policy, "value", existing.ack_policy) != "explicit":
            raise TransportError(f"consumer {self.name!r} exists but is not a durable "
                                 "subscription (it does not take acks)",
                                 hint="subscribe with another name")
        if (existing.ack_wait, existing.max_deliver, existing.max_ack_pending) == (
                wanted.ack_wait, wanted.max_deliver, wanted.max_ack_pending):
            return
        import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

        updated = existing.evolve(ack_wait=wanted.ack_wait, max_deliver=wanted.max_deliver,
                                  max_ack_pending=wanted.max_ack_pending)
        try:
            await self._transport._jetstream().add_consumer(
                self._transport.config.stream_name, updated)
        except js_errors.APIError as exc:
            logger.warning("durable subscription %r keeps its old settings (the server "
                           "refused the update: %s)", self.name, exc.description)

    # -- receiving -----------------------------------------------------------------------
    async def start(self) -> None:
        nc = self._transport._client()
        await self._create()
        prefix = "$JS.API"
        self._next_subject = (f"{prefix}.CONSUMER.MSG.NEXT."
                              f"{self._transport.config.stream_name}.{self.name}")
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox, cb=self._on_message,
                                       pending_msgs_limit=max(4 * self._batch, 1024))
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        self._worker = loop.create_task(self._work(), name=f"llmspell-nats-{self.name}")
        self._watcher = loop.create_task(self._watch(), name=f"llmspell-nats-watch-{self.name}")
        await self._pull()

    async def _pull(self) -> None:
        """Ask for more messages when at most half a batch is requested or held."""
        if self._stopping:
            return
        nc = self._transport._nc
        if nc is None or not nc.is_connected:
            return
        held = self._requested + self._queue.qsize() + self._busy
        if held > self._batch // 2:
            return
        count = self._batch - held
        self._requested += count
        expires = DURABLE_PULL_EXPIRES if self.durable else PULL_EXPIRES
        request = {"batch": count, "expires": int(expires * 1e9),
                   "idle_heartbeat": int(HEARTBEAT * 1e9)}
        try:
            await nc.publish(self._next_subject, json.dumps(request).encode(),
                             reply=self._inbox)
        except Exception as exc:
            self._requested = max(0, self._requested - count)
            logger.debug("pull request for %s not sent: %s", self.name, exc)

    async def _on_message(self, msg: Msg) -> None:
        self._last_activity = asyncio.get_running_loop().time()
        headers = msg.headers
        status = headers.get("Status") if headers else None
        counters = self._transport._counters
        if status is None:
            self._requested = max(0, self._requested - 1)
            counters.received += 1
            sequence, self._unreceived = _position(msg)
            if sequence > self.seen_sequence:
                self.seen_sequence = sequence
            if self._stopping:  # an open request still brought one: give it back
                if self.durable:
                    await _quietly(msg.nak(), "nak on stop")
                return
            skip = self._options.skip_origin
            if skip is not None and headers and headers.get(ORIGIN_HEADER) == skip:
                counters.skipped_own += 1
                await self._discard(msg)
            elif self._matcher is not None and not self._matcher.matches(
                    msg.subject[len(self._transport.event_root) + 1:]):
                counters.filtered += 1
                await self._discard(msg)
            else:
                self._queue.put_nowait(msg)
                return
        elif status == "100":
            return  # an idle heartbeat
        else:
            # 408 (request expired), 409 (request refused or consumer gone): the server
            # says how many of the request's messages will not come.
            assert headers is not None
            gone = headers.get("Nats-Pending-Messages")
            if gone is not None and gone.isdigit():
                self._requested = max(0, self._requested - int(gone))
            else:
                self._requested = 0
            if status == "409":
                text = str(headers.get("Description", ""))
                logger.debug("pull consumer %s: 409 %s", self.name, text)
                if "deleted" in text.lower():
                    asyncio.get_running_loop().call_later(RECREATE_DELAY,
                                                          self._schedule_recreate)
                    return
        await self._pull()

    async def _discard(self, msg: Msg) -> None:
        if self.durable:
            try:
                await msg.ack()
            except Exception as exc:
                logger.debug("ack of a skipped message failed: %s", exc)
        await self._pull()

    def _schedule_recreate(self) -> None:
        if not self._stopping:
            self._transport._spawn(self._recover())

    async def _work(self) -> None:
        transport = self._transport
        while True:
            msg = await self._queue.get()
            if msg is None:
                return
            self._busy = True
            try:
                await self._pull()
                delivery = await transport._decode(msg, self)
                if delivery is not None:
                    try:
                        await self._handler(delivery)
                    except Exception:
                        logger.exception("handler of transport subscription %r failed",
                                         self.name)
            finally:
                self._busy = False
            await self._pull()

    async def _watch(self) -> None:
        """Make pull requests again when the server went quiet (a reconnect, a restart,
        a consumer the server lost)."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await asyncio.sleep(HEARTBEAT)
            nc = self._transport._nc
            if nc is None or not nc.is_connected:
                continue
            quiet = loop.time() - self._last_activity
            if self._requested and quiet > 3 * HEARTBEAT:
                await self._recover()
            elif not self._requested:
                await self._pull()

    async def _recover(self) -> None:
        """Forget the open requests, create the consumer again if the server lost it,
        pull again."""
        if self._stopping:
            return
        import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

        self._requested = 0
        self._last_activity = asyncio.get_running_loop().time()
        try:
            await self._transport._jetstream().consumer_info(
                self._transport.config.stream_name, self.name)
        except js_errors.NotFoundError:
            if not await self._recreate():
                return
        except Exception as exc:
            logger.debug("consumer %s: no answer while recovering: %s", self.name, exc)
            return
        await self._pull()

    async def _recreate(self) -> bool:
        """Create the consumer the server lost again: after the last event received, on
        the same stream; from the first event of a stream that was replaced (deleted, then
        made again by this process or another), reporting the replacement. False (logged)
        when the server refused; the watcher tries again."""
        transport = self._transport
        try:
            recreated = await transport._ensure_stream()
        except Exception as exc:
            logger.error("could not create consumer %s again: %s", self.name, exc)
            return False
        moved = self._epoch is not None and transport._epoch != self._epoch
        if not moved:
            logger.warning("consumer %s was lost by the server; creating it again from "
                           "sequence %d", self.name, self.seen_sequence + 1)
        try:
            await self._create(resume=True, fresh=moved)
        except Exception as exc:
            logger.error("could not create consumer %s again: %s", self.name, exc)
            return False
        transport._counters.consumers_recreated += 1
        if moved:
            reset = StreamReset(
                stream=transport.config.stream_name, consumer=self.name, pattern=self.pattern,
                durable=self.durable, last_sequence=self.seen_sequence,
                unreceived=self._unreceived, recreated=recreated)
            self.seen_sequence = 0
            self._unreceived = 0
            transport._counters.lost_with_stream += reset.unreceived
            logger.warning(
                "stream %s was replaced (deleted and created again) under consumer %s (%r): "
                "it reads the new stream from its first event; it had received the old one "
                "up to sequence %d, and %d event(s) the old one still held for it are gone",
                reset.stream, self.name, self.pattern, reset.last_sequence, reset.unreceived)
            transport._notify_reset(reset)
        return True

    async def on_reconnect(self) -> None:
        await self._recover()

    async def stop(self, timeout: float = 5.0) -> None:
        """See :meth:`TransportSubscription.stop`."""
        if self._stopping:
            return
        self._stopping = True
        self._transport._consumers.discard(self)
        while not self._queue.empty():
            msg = self._queue.get_nowait()
            if msg is not None and self.durable:
                await _quietly(msg.nak(), "nak on stop")
        self._queue.put_nowait(None)
        if self.durable and self._requested and self._transport.connected:
            # Open pull requests may still bring events: each is given back as it comes
            # (see _on_message) until the server says the requests ended.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + min(timeout, DURABLE_PULL_EXPIRES + 0.5)
            while self._requested and loop.time() < deadline:
                await asyncio.sleep(0.01)
        if self._sub is not None:
            await _quietly(self._sub.unsubscribe(), "unsubscribe")
        if self._worker is not None:
            done, _ = await asyncio.wait([self._worker], timeout=timeout)
            if not done:
                logger.warning("transport subscription %r: the handler call still running "
                               "after %s s was cancelled", self.name, timeout)
                self._worker.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        if not self.durable and self._transport.connected:
            try:
                await self._transport._jetstream().delete_consumer(
                    self._transport.config.stream_name, self.name)
            except Exception as exc:
                logger.debug("ephemeral consumer %s not deleted: %s", self.name, exc)

    async def state(self) -> ConsumerState:
        """See :meth:`TransportSubscription.state`."""
        return await self._transport.consumer_state(self.name)


class NatsTransport(Transport):
    """The NATS JetStream transport (see the module docstring). Build it from a
    :class:`NatsConfig` or a URL (:meth:`NatsConfig.from_url`); use it on one event loop."""

    def __init__(self, config: NatsConfig | str) -> None:
        super().__init__()
        self.config = config if isinstance(config, NatsConfig) else NatsConfig.from_url(config)
        self.description = self.config.description
        prefix = self.config.prefix
        self.event_root = f"{prefix}.ev"
        self.dead_root = f"{prefix}.dlq"
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._counters = _Counters()
        self._consumers: set[_NatsConsumer] = set()
        self._closed = False
        self._multi_filter = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._received: OrderedDict[str, ReceivedHeaders] = OrderedDict()
        # When the stream in use was created: a later one is another stream (see
        # _NatsConsumer._recreate). One stream check (or creation) at a time.
        self._epoch: datetime.datetime | None = None
        self._ensuring = asyncio.Lock()

    # -- connection ------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """See :attr:`Transport.connected`."""
        return self._nc is not None and self._nc.is_connected

    def _client(self) -> NatsClient:
        if self._nc is None or self._closed:
            raise TransportError("the NATS transport is not connected",
                                 hint="await transport.connect() (or bus.connect()) first")
        return self._nc

    def _jetstream(self) -> JetStreamContext:
        self._client()
        assert self._js is not None
        return self._js

    async def connect(self) -> None:
        """See :meth:`Transport.connect`."""
        if self._nc is not None:
            return
        if self._closed:
            raise TransportError("this transport was closed", hint="make a new one")
        nats = _nats()
        config = self.config
        try:
            nc = await nats.connect(
                servers=list(config.servers), name=config.name or "llmspell",
                connect_timeout=config.connect_timeout, allow_reconnect=True,
                max_reconnect_attempts=1, reconnect_time_wait=0.5,
                error_cb=self._on_error, disconnected_cb=self._on_disconnect,
                reconnected_cb=self._on_reconnect, closed_cb=self._on_closed)
        except Exception as exc:
            hint = ("check the user and password in the URL"
                    if "authorization" in str(exc).lower() else
                    "start a server with `nats-server -js` (JetStream on), or point "
                    "LLMSPELL_BUS / SystemConfig(bus=...) at a reachable one")
            raise TransportUnavailableError(
                f"cannot reach the NATS server at {config.description}: "
                f"{type(exc).__name__}: {exc}", hint=hint) from None
        # The first connection was bounded; once connected, reconnect for as long as it takes.
        nc.options["max_reconnect_attempts"] = -1
        self._nc = nc
        self._js = nc.jetstream(timeout=5.0)
        version = nc.connected_server_version
        self._multi_filter = (version.major, version.minor) >= (2, 10)
        try:
            await self._ensure_stream()
        except BaseException:
            await nc.close()
            self._nc = self._js = None
            raise

    async def _ensure_stream(self) -> bool:
        """Make sure the namespace's stream exists (creating it with the configured
        settings), and note when it was created; True if this call created it."""
        async with self._ensuring:
            known = self._epoch
            created = await self._check_stream()
            if created and known is not None:
                self._counters.streams_recreated += 1
                logger.warning("stream %s was gone (deleted on the server): created it again "
                               "with the configured settings", self.config.stream_name)
            return created

    async def _check_stream(self) -> bool:
        import nats.errors  # noqa: PLC0415 - optional dependency
        import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency
        from nats.js import api  # noqa: PLC0415 - optional dependency

        js = self._jetstream()
        config = self.config
        subjects = [f"{self.event_root}.>", f"{self.dead_root}.>"]
        try:
            info = await js.stream_info(config.stream_name)
        except js_errors.NotFoundError:
            info = None
        except (nats.errors.NoRespondersError, js_errors.ServiceUnavailableError,
                nats.errors.TimeoutError) as exc:
            raise TransportUnavailableError(
                f"the NATS server at {config.description} does not answer JetStream "
                f"requests ({type(exc).__name__})",
                hint="start it with JetStream enabled: `nats-server -js`") from None
        if info is not None:
            have = set(info.config.subjects or ())
            if not set(subjects) <= have:
                raise TransportError(
                    f"stream {config.stream_name!r} exists with subjects {sorted(have)}, "
                    f"not {subjects}",
                    hint="use another namespace (?namespace=...) or stream name (?stream=...)")
            self._epoch = info.created
            return False
        stream = api.StreamConfig(
            name=config.stream_name, subjects=subjects,
            retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.OLD,
            max_age=config.max_age, max_msgs=config.max_msgs, max_bytes=config.max_bytes,
            storage=api.StorageType(config.storage), num_replicas=config.replicas,
            duplicate_window=min(config.duplicate_window, config.max_age))
        try:
            made = await js.add_stream(stream)
        except js_errors.APIError as exc:
            if exc.err_code == 10058:  # created by another process meanwhile
                self._epoch = (await js.stream_info(config.stream_name)).created
                return False
            raise TransportError(
                f"the NATS server refused to create stream {config.stream_name!r}: "
                f"{exc.description}",
                hint="another stream may hold these subjects: use another namespace, or "
                     "check the server's JetStream limits") from None
        self._epoch = made.created
        # Creating a stream that exists with the same settings succeeds too (another
        # process got there first): servers from 2.11 say whether this call made it.
        return made.did_create is not False

    async def _on_error(self, exc: Exception) -> None:
        logger.debug("nats: %s: %s", type(exc).__name__, exc)

    async def _on_disconnect(self) -> None:
        if self._closed:
            return
        self._counters.disconnects += 1
        logger.warning("disconnected from the NATS server at %s", self.description)
        self._notify(False)

    async def _on_reconnect(self) -> None:
        self._counters.reconnects += 1
        logger.warning("reconnected to the NATS server at %s", self.description)
        try:
            await self._ensure_stream()
        except Exception as exc:
            logger.error("after reconnecting: %s", exc)
        for consumer in list(self._consumers):
            await consumer.on_reconnect()
        self._notify(True)

    async def _on_closed(self) -> None:
        if not self._closed:
            logger.error("the connection to the NATS server at %s was closed",
                         self.description)
            self._notify(False)

    def _notify(self, connected: bool) -> None:
        for listener in list(self.listeners):
            try:
                listener(connected)
            except Exception:
                logger.exception("transport listener failed")

    def _notify_reset(self, reset: StreamReset) -> None:
        for listener in list(self.reset_listeners):
            try:
                listener(reset)
            except Exception:
                logger.exception("transport listener failed")

    # -- publishing ------------------------------------------------------------------------
    def subject_of(self, event_type: str) -> str:
        """The subject events of ``event_type`` are published on."""
        return f"{self.event_root}.{event_type}"

    def dead_letter_subject(self, consumer: str) -> str:
        """The subject ``consumer``'s parked events are stored on."""
        return f"{self.dead_root}.{consumer}"

    async def publish(self, events: Sequence[OutgoingEvent], *, origin: str | None = None,
                      timeout: float = 5.0) -> list[PublishAck | PublishFailure]:
        """See :meth:`Transport.publish`."""
        answers = await self.send(events, origin=origin, timeout=timeout)
        return await answers()

    async def send(self, events: Sequence[OutgoingEvent], *, origin: str | None = None,
                   timeout: float = 5.0) -> PublishAnswers:
        """See :meth:`Transport.send`: every message goes out (``publish_async``) before
        this returns; the function returned awaits their PubAcks."""
        import nats.errors  # noqa: PLC0415 - optional dependency

        results: list[PublishAck | PublishFailure | None] = [None] * len(events)
        futures: dict[asyncio.Future[Any], int] = {}
        nc = self._nc
        if nc is None or self._closed or not nc.is_connected:
            results = [PublishFailure(event_id=e.id, error="not connected to the server",
                                      retriable=True) for e in events]
        else:
            js = self._jetstream()
            stream = self.config.stream_name
            for index, item in enumerate(events):
                headers = {"Nats-Msg-Id": item.id}
                if item.headers:
                    headers.update(item.headers)
                if origin is not None:
                    headers[ORIGIN_HEADER] = origin
                try:
                    future = await js.publish_async(self.subject_of(item.event_type),
                                                    item.payload, stream=stream,
                                                    headers=headers)
                except nats.errors.MaxPayloadError:
                    results[index] = PublishFailure(
                        event_id=item.id, retriable=False,
                        error=f"{len(item.payload)} bytes is more than the server's maximum "
                              f"payload ({nc.max_payload} bytes)")
                    continue
                except Exception as exc:
                    results[index] = PublishFailure(event_id=item.id, retriable=True,
                                                    error=f"{type(exc).__name__}: {exc}")
                    continue
                futures[future] = index

        async def answers() -> list[PublishAck | PublishFailure]:
            if futures:
                await self._collect(events, futures, results, timeout)
            counters = self._counters
            final: list[PublishAck | PublishFailure] = []
            for result in results:
                assert result is not None
                if isinstance(result, PublishAck):
                    counters.published += 1
                    counters.duplicates += result.duplicate
                else:
                    counters.publish_failures += 1
                final.append(result)
            return final

        return answers

    async def _collect(self, events: Sequence[OutgoingEvent],
                       futures: dict[asyncio.Future[Any], int],
                       results: list[PublishAck | PublishFailure | None],
                       timeout: float) -> None:
        """Fill ``results`` from the PubAck futures (a missing answer is retriable)."""
        import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

        done, pending = await asyncio.wait(futures, timeout=timeout)
        for future in pending:
            future.cancel()
            results[futures[future]] = PublishFailure(
                event_id=events[futures[future]].id, retriable=True,
                error=f"no PubAck within {timeout:g} s")
        for future in done:
            index = futures[future]
            error = future.exception()
            if error is None:
                ack = future.result()
                results[index] = PublishAck(stream=ack.stream, sequence=ack.seq,
                                            duplicate=bool(ack.duplicate))
            elif isinstance(error, js_errors.NoStreamResponseError):
                results[index] = PublishFailure(
                    event_id=events[index].id, retriable=True,
                    error="no stream answered (JetStream restarting, or the stream was "
                          "deleted)")
                asyncio.get_running_loop().call_soon(self._schedule_ensure_stream)
            elif isinstance(error, js_errors.APIError):
                results[index] = PublishFailure(
                    event_id=events[index].id, retriable=error.code in (503, None),
                    error=f"the server refused it: {error.description}")
            else:
                results[index] = PublishFailure(event_id=events[index].id, retriable=True,
                                                error=f"{type(error).__name__}: {error}")

    def _schedule_ensure_stream(self) -> None:
        async def ensure() -> None:
            await asyncio.sleep(RECREATE_DELAY)  # see RECREATE_DELAY
            try:
                await self._ensure_stream()
            except Exception as exc:
                logger.debug("stream check failed: %s", exc)

        if not self._closed:
            self._spawn(ensure())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a rare background step (a recovery), keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- subscribing -----------------------------------------------------------------------
    async def subscribe(self, pattern: str, handler: DeliveryHandler,
                        options: ConsumerOptions) -> TransportSubscription:
        """See :meth:`Transport.subscribe`."""
        self._client()
        compiled = compile_pattern(pattern)
        subjects, wider = pattern_subjects(compiled, self.event_root,
                                           multi_filter=self._multi_filter)
        consumer = _NatsConsumer(self, compiled, handler, options, subjects, wider)
        await consumer.start()
        self._consumers.add(consumer)
        return consumer

    async def _decode(self, msg: Msg, consumer: _NatsConsumer) -> _NatsDelivery | None:
        """The delivery of ``msg``, or None when its payload is not an event (then it is
        parked, for a durable consumer, or dropped)."""
        try:
            event = self._event_of(msg)
        except SerializationError as exc:
            self._counters.undecodable += 1
            logger.error("message %s on %s is not an llmspell event (%s)",
                         _sequence(msg), msg.subject, exc)
            if consumer.durable:
                await self._park_raw(msg, consumer.name, exc)
            return None
        headers = msg.headers
        if headers and TRACEPARENT_HEADER in headers:
            self._remember(event.id, headers, msg.data)
        return _NatsDelivery(msg, event, consumer.durable, self._counters)

    def _event_of(self, msg: Msg) -> UniversalEvent:
        """The event ``msg`` carries. Raises :class:`SerializationError` when its payload is
        not an event, or is one no llmspell publisher sends: a type that is not a valid
        event type or is not the one its subject names (another process could otherwise
        reach subscribers of any type through any subject), or a sequence past 64 bits."""
        event = _decode_event(msg.data)
        try:
            validate_event_type(event.event_type)
        except InvalidValueError as exc:
            raise SerializationError(f"not an event: {brief(exc)}") from None
        if msg.subject != self.subject_of(event.event_type):
            raise SerializationError(
                f"an event of type {event.event_type!r} on subject {msg.subject!r}, which "
                "is not its type's subject")
        if not MIN_INT64 <= event.sequence <= MAX_INT64:
            raise SerializationError(f"an event with sequence {event.sequence}, past 64 bits")
        return event

    def _remember(self, event_id: str, headers: dict[str, str], payload: bytes) -> None:
        """Keep a received event's context headers (the most recent RECEIVED_HEADERS)."""
        digest = hashlib.sha256(payload).digest() if SIGNATURE_HEADER in headers else None
        received = self._received
        received[event_id] = ReceivedHeaders(dict(headers), digest)
        if len(received) > RECEIVED_HEADERS:
            received.popitem(last=False)

    def received_headers(self, event_id: str) -> ReceivedHeaders | None:
        """See :meth:`Transport.received_headers`."""
        return self._received.get(event_id)

    async def _park_raw(self, msg: Msg, consumer: str, exc: Exception) -> None:
        headers = _dead_headers(msg, consumer, reason="undecodable",
                                error_type=type(exc).__name__, message=str(exc),
                                key=f"seq{_sequence(msg)}")
        try:
            await self._jetstream().publish(self.dead_letter_subject(consumer), msg.data,
                                            stream=self.config.stream_name, headers=headers)
            await msg.term()
            self._counters.parked += 1
        except Exception as error:
            logger.error("could not park an undecodable message: %s", error)

    async def park(self, delivery: Delivery, *, consumer: str, reason: str,
                   error_type: str, message: str) -> PublishAck:
        """See :meth:`Transport.park`."""
        headers = {
            "Nats-Msg-Id": f"dlq:{consumer}:{delivery.event.id}",
            f"{_DEAD}Consumer": consumer,
            f"{_DEAD}Reason": _header_text(reason),
            f"{_DEAD}Error": _header_text(error_type, 128),
            f"{_DEAD}Message": _header_text(message) or "-",
            f"{_DEAD}Deliveries": str(delivery.deliveries),
            f"{_DEAD}Sequence": str(delivery.sequence),
            f"{_DEAD}At": repr(time.time()),
        }
        if delivery.origin:
            headers[ORIGIN_HEADER] = delivery.origin
        try:
            ack = await self._jetstream().publish(
                self.dead_letter_subject(consumer), delivery.payload,
                stream=self.config.stream_name, headers=headers, timeout=ACK_TIMEOUT)
        except Exception as exc:
            raise TransportError(
                f"could not park event {delivery.event.id} of {consumer!r}: "
                f"{type(exc).__name__}: {exc}",
                hint="it stays unsettled and is delivered again, then parked") from None
        self._counters.parked += 1
        return PublishAck(stream=ack.stream, sequence=ack.seq, duplicate=bool(ack.duplicate))

    async def dead_letters(self, consumer: str) -> AsyncIterator[DeadLetter]:
        """See :meth:`Transport.dead_letters`."""
        async for msg in self._read((self.dead_letter_subject(consumer),)):
            headers = msg.headers or {}
            try:
                event: UniversalEvent | None = _decode_event(msg.data)
            except SerializationError:
                event = None
            # Anyone on the broker can publish on a dead-letter subject: a header that is
            # not a number reads as 0 rather than failing the whole listing.
            yield DeadLetter(
                consumer=consumer, event=event, payload=msg.data,
                reason=headers.get(f"{_DEAD}Reason", ""),
                error_type=headers.get(f"{_DEAD}Error", ""),
                message=headers.get(f"{_DEAD}Message", ""),
                deliveries=_header_int(headers.get(f"{_DEAD}Deliveries")),
                stream_sequence=_header_int(headers.get(f"{_DEAD}Sequence")),
                dead_letter_sequence=msg.metadata.sequence.stream,
                parked_at=_header_float(headers.get(f"{_DEAD}At")))

    async def replay(self, pattern: str = "**", *,
                     start_sequence: int | None = None, start_time: float | None = None,
                     stop_sequence: int | None = None) -> AsyncIterator[Delivery]:
        """See :meth:`Transport.replay`."""
        compiled = compile_pattern(pattern)
        # One filter per read (the consumer is short-lived): a trailing '**' reads one
        # level wider and filters.
        subjects, wider = pattern_subjects(compiled, self.event_root, multi_filter=False)
        root = len(self.event_root) + 1
        async for msg in self._read(subjects, start_sequence=start_sequence,
                                    start_time=start_time, stop_sequence=stop_sequence):
            if wider and not compiled.matches(msg.subject[root:]):
                continue
            try:
                event = self._event_of(msg)
            except SerializationError as exc:
                self._counters.undecodable += 1
                logger.error("replay: message %s is not an llmspell event (%s)",
                             _sequence(msg), exc)
                continue
            yield _NatsDelivery(msg, event, False, self._counters)

    async def _read(self, subjects: tuple[str, ...], *, start_sequence: int | None = None,
                    start_time: float | None = None, stop_sequence: int | None = None
                    ) -> AsyncIterator[Msg]:
        """The stored messages on ``subjects`` from a position up to a stop, through a
        short-lived ephemeral consumer."""
        import nats.errors  # noqa: PLC0415 - optional dependency
        from nats.js import api  # noqa: PLC0415 - optional dependency

        js = self._jetstream()
        stream = self.config.stream_name
        info = await js.stream_info(stream)
        last = info.state.last_seq
        stop = last if stop_sequence is None else min(stop_sequence, last)
        if last == 0 or stop < (start_sequence or 1):
            return
        name = f"read-{new_id()}"
        config = api.ConsumerConfig(name=name, ack_policy=api.AckPolicy.NONE,
                                    replay_policy=api.ReplayPolicy.INSTANT,
                                    inactive_threshold=EPHEMERAL_INACTIVE,
                                    filter_subject=subjects[0])
        if start_sequence is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start_sequence
        elif start_time is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.datetime.fromtimestamp(start_time, datetime.UTC)
        else:
            config.deliver_policy = api.DeliverPolicy.ALL
        created = await js.add_consumer(stream, config)
        try:
            if not created.num_pending:
                return
            sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
            try:
                while True:
                    try:
                        msgs = await sub.fetch(batch=256, timeout=5.0)
                    except nats.errors.TimeoutError:
                        state = await js.consumer_info(stream, name)
                        if not state.num_pending:
                            return
                        continue
                    for msg in msgs:
                        metadata = msg.metadata
                        if metadata.sequence.stream > stop:
                            return
                        yield msg
                        if metadata.sequence.stream >= stop or not metadata.num_pending:
                            return
            finally:
                await sub.unsubscribe()
        finally:
            try:
                await js.delete_consumer(stream, name)
            except Exception as exc:
                logger.debug("read consumer %s not deleted: %s", name, exc)

    # -- state -----------------------------------------------------------------------------
    async def consumer_state(self, name: str) -> ConsumerState:
        """Durable consumer ``name`` as the server sees it (``TransportError`` if none)."""
        import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

        try:
            info = await self._jetstream().consumer_info(self.config.stream_name, name)
        except js_errors.NotFoundError:
            raise TransportError(f"no consumer {name!r} in stream "
                                 f"{self.config.stream_name!r}") from None
        return ConsumerState(
            name=info.name, pending=info.num_pending or 0,
            ack_pending=info.num_ack_pending or 0, redelivered=info.num_redelivered or 0,
            ack_floor=info.ack_floor.stream_seq if info.ack_floor else 0,
            delivered=info.delivered.stream_seq if info.delivered else 0)

    async def delete_consumer(self, name: str) -> bool:
        """See :meth:`Transport.delete_consumer`."""
        import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

        try:
            return bool(await self._jetstream().delete_consumer(self.config.stream_name, name))
        except js_errors.NotFoundError:
            return False

    async def stream_state(self) -> StreamState:
        """See :meth:`Transport.stream_state`."""
        info = await self._jetstream().stream_info(self.config.stream_name)
        state = info.state
        return StreamState(name=self.config.stream_name, messages=state.messages,
                           bytes=state.bytes, first_sequence=state.first_seq,
                           last_sequence=state.last_seq, consumers=state.consumer_count)

    async def delete_stream(self) -> bool:
        """Delete the namespace's stream and everything in it (its events, dead letters and
        consumers). For tests and tear-down; False if there was none."""
        import nats.js.errors as js_errors  # noqa: PLC0415 - optional dependency

        try:
            return bool(await self._jetstream().delete_stream(self.config.stream_name))
        except js_errors.NotFoundError:
            return False

    def stats(self) -> TransportStats:
        """See :meth:`Transport.stats`."""
        c = self._counters
        return TransportStats(
            connected=self.connected, published=c.published, duplicates=c.duplicates,
            publish_failures=c.publish_failures, received=c.received,
            skipped_own=c.skipped_own, filtered=c.filtered, acked=c.acked, naked=c.naked,
            terminated=c.terminated, ack_failures=c.ack_failures, parked=c.parked,
            undecodable=c.undecodable, disconnects=c.disconnects, reconnects=c.reconnects,
            streams_recreated=c.streams_recreated, consumers_recreated=c.consumers_recreated,
            lost_with_stream=c.lost_with_stream)

    async def close(self) -> None:
        """See :meth:`Transport.close`."""
        if self._closed:
            return
        for consumer in list(self._consumers):
            await consumer.stop()
        self._closed = True
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                if nc.is_connected:
                    await nc.flush(timeout=2)
            except Exception as exc:
                logger.debug("final flush failed: %s", exc)
            await nc.close()


def _decode_event(payload: bytes) -> UniversalEvent:
    """:func:`decode_event`, with a string that is not UTF-8 (which msgspec reports as
    ``UnicodeDecodeError``) a :class:`SerializationError` too: a peer's bytes must never
    escape as another error, which would stop the consumer reading them."""
    try:
        return decode_event(payload)
    except UnicodeDecodeError as exc:
        raise SerializationError(
            f"cannot decode an event: a string is not valid UTF-8 ({exc.reason} at byte "
            f"{exc.start})", hint="pass JSON produced by encode_event") from None
    except SerializationError:
        raise
    except Exception as exc:  # whatever else a peer's bytes make the decoder raise
        raise SerializationError(f"cannot decode an event ({type(exc).__name__})",
                                 hint="pass JSON produced by encode_event") from None


def _header_int(value: str | None) -> int:
    """A dead-letter header's integer (0 when absent or not plain digits)."""
    return int(value) if value is not None and value.isascii() and value.isdigit() \
        and len(value) <= 20 else 0


def _header_float(value: str | None) -> float:
    """A dead-letter header's time (0.0 when absent or not a finite number)."""
    try:
        number = float(value) if value is not None and len(value) <= 64 else 0.0
    except ValueError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def _sequence(msg: Msg) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:
        return 0


def _position(msg: Msg) -> tuple[int, int]:
    """``msg``'s stream sequence and how many messages its consumer has after it."""
    try:
        metadata = msg.metadata
        return int(metadata.sequence.stream), int(metadata.num_pending or 0)
    except Exception:
        return 0, 0


def _dead_headers(msg: Msg, consumer: str, *, reason: str, error_type: str, message: str,
                  key: str) -> dict[str, str]:
    metadata = msg.metadata
    return {
        "Nats-Msg-Id": f"dlq:{consumer}:{key}",
        f"{_DEAD}Consumer": consumer,
        f"{_DEAD}Reason": _header_text(reason),
        f"{_DEAD}Error": _header_text(error_type, 128),
        f"{_DEAD}Message": _header_text(message) or "-",
        f"{_DEAD}Deliveries": str(metadata.num_delivered),
        f"{_DEAD}Sequence": str(metadata.sequence.stream),
        f"{_DEAD}At": repr(time.time()),
    }

