"""The event bus: events, patterns, delivery, flow control, streams, metrics and stores,
and the distributed bus over a transport (NATS JetStream).

Knows nothing of hooks, agents or scripts.
"""

from llmspell.events.bus import EventBus, Handler, HandlerFailure
from llmspell.events.distributed import DistributedBus, DistributedStats, DurableStats, make_bus
from llmspell.events.event import (
    SCHEMA_VERSION,
    EventMetadata,
    UniversalEvent,
    decode_event,
    encode_event,
)
from llmspell.events.flow import (
    BackpressureKind,
    BackpressureNotice,
    DeliveryMode,
    FlowStats,
    OverflowStrategy,
    RateLimit,
    TokenBucket,
)
from llmspell.events.metrics import BusStats, HandlerLatency
from llmspell.events.pattern import EventPattern, PatternRouter, compile_pattern
from llmspell.events.store.base import EventQuery, EventStore, StoreStats
from llmspell.events.stream import EventStream, Stream
from llmspell.events.subscription import SubscriptionHandle

__all__ = [
    "SCHEMA_VERSION",
    "BackpressureKind",
    "BackpressureNotice",
    "BusStats",
    "DeliveryMode",
    "DistributedBus",
    "DistributedStats",
    "DurableStats",
    "EventBus",
    "EventMetadata",
    "EventPattern",
    "EventQuery",
    "EventStore",
    "EventStream",
    "FlowStats",
    "Handler",
    "HandlerFailure",
    "HandlerLatency",
    "OverflowStrategy",
    "PatternRouter",
    "RateLimit",
    "Stream",
    "StoreStats",
    "SubscriptionHandle",
    "TokenBucket",
    "UniversalEvent",
    "compile_pattern",
    "decode_event",
    "encode_event",
    "make_bus",
]
