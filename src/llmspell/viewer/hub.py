"""The hub: one reader of the source for every browser, and each browser's stream.

One task (:meth:`Hub.run`) reads new events from the source in batches, folds each into the
:class:`~llmspell.viewer.summary.Summary`, encodes it once for the page and pushes it into
every connection's :class:`~llmspell.viewer.feed.Feed`. However many browsers watch, the
source is read once and each event encoded once.

:meth:`Hub.stream` is one connection's Server-Sent Events, as ready-made frames:

1. ``hello`` (the source, the filter, whether this is a resumption) and the current
   ``runs`` and ``stats``;
2. the backlog: after ``Last-Event-ID`` when the browser reconnects (from the source, so
   nothing is lost or repeated while it was away), else the newest ``tail`` matching
   events; more than ``max_backfill`` events are summarised, not sent (``coalesced``);
3. live ``events`` messages (a JSON array each, ``id`` = the cursor of the last event in
   it), a ``coalesced`` message whenever the connection's feed had to drop events, ``runs``
   (what changed, at most 4 times a second) and ``stats`` (once a second).

The hand-over from backlog to live is exact: the feed is attached first, at the hub's cursor
``c`` (the hub pushes every event after ``c`` into it), and the backlog is read up to ``c``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from llmspell.core.errors import InvalidValueError
from llmspell.core.redact import get_logger
from llmspell.events.pattern import compile_pattern
from llmspell.viewer.feed import Feed, Item, Skipped, bounded_type, encode_item
from llmspell.viewer.source import Source
from llmspell.viewer.summary import Summary

__all__ = ["Hub", "HubLimits", "frame"]

logger = get_logger("llmspell.viewer")

_encode = msgspec.json.Encoder().encode


class HubLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The bounds that keep the viewer's memory flat whatever the event rate.

    ``feed_items``/``feed_bytes``: each connection's buffer (past it, the oldest buffered
    events are summarised); ``max_backfill``: events a (re)connecting browser is sent from
    the source before the rest is summarised; ``tail``: events a new page starts with;
    ``max_clients``: connections at once (more are refused with 503); ``batch``: events
    read from the source at a time; ``prime``: events read at start to build the runs and
    tables; ``max_runs``/``max_steps``: what the summary keeps; ``max_lag``: how far the
    hub may fall behind the source (events arriving faster than it can read them) before
    it skips ahead, keeping the newest ``max_lag // 2`` and telling every page what it
    skipped.
    """

    feed_items: int = 5000
    feed_bytes: int = 4 * 1024 * 1024
    max_backfill: int = 5000
    tail: int = 200
    max_clients: int = 32
    batch: int = 2000
    prime: int = 5000
    max_runs: int = 100
    max_steps: int = 300
    max_lag: int = 100_000

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name in ("tail", "prime") else 1):
                raise InvalidValueError(f"HubLimits.{name} must be a positive int, got {value!r}")


def frame(event: str, data: bytes, id: str | None = None) -> bytes:
    """One Server-Sent Events message. ``data`` is compact JSON (it has no newline)."""
    head = f"id: {id}\nevent: {event}\n" if id is not None else f"event: {event}\n"
    return head.encode() + b"data: " + data + b"\n\n"


def _events_frame(items: list[Item], format_id: Callable[[int], str]) -> bytes:
    payload = b"[" + b",".join(item.wire for item in items) + b"]"
    return frame("events", payload, format_id(items[-1].cursor))


class _Rate:
    """Events per second over the last 1 and 10 seconds (ten one-second buckets)."""

    def __init__(self) -> None:
        self._buckets: deque[list[float]] = deque(maxlen=11)

    def add(self, count: int, now: float) -> None:
        second = float(int(now))
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += count
        else:
            buckets.append([second, float(count)])

    def rates(self, now: float) -> tuple[float, float]:
        second = int(now)
        last = sum(c for s, c in self._buckets if s == second - 1)
        ten = sum(c for s, c in self._buckets if second - 10 <= s < second)
        return last, ten / 10


class Hub:
    """Reads ``source`` once for every connection (see the module docstring)."""

    def __init__(self, source: Source, *, limits: HubLimits | None = None) -> None:
        self.source = source
        self.limits = limits or HubLimits()
        self.summary = Summary(max_runs=self.limits.max_runs, max_steps=self.limits.max_steps)
        self.cursor = 0
        self.total = 0
        self.skipped = 0
        """Events the hub skipped because it fell more than ``max_lag`` behind."""
        self.unshown = 0
        """Events read live whose data could not be shown (nested too deeply, or refused
        by the encoder): sent with a placeholder instead (see :mod:`.feed`)."""
        self.admitted = 0
        """Connections admitted by :meth:`admit` and not yet released."""
        self.feeds: set[Feed] = set()
        self._rate = _Rate()
        self._task: asyncio.Task[None] | None = None
        self._stats_key: tuple[int, int, int] | None = None
        self._stats_json = b"{}"
        self.started = time.time()
        self._began = time.monotonic()
        self.ready = asyncio.Event()
        self.closing = False
        """Set by :meth:`close_streams`: every stream ends (the server is stopping)."""

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Open the source, build the summary from its newest events, start reading."""
        await self.source.start()
        await self._prime()
        self._task = asyncio.create_task(self.run(), name="llmspell-viewer-hub")

    async def _prime(self) -> None:
        last = await self.source.last()
        if self.limits.prime:
            for _, event in await self.source.newest(self.limits.prime, upto=last):
                self._observe(bounded_type(event))
        self.cursor = last
        self.ready.set()

    def close_streams(self) -> None:
        """End every open stream within a fraction of a second (callable from any thread:
        a server about to stop calls it so its connections end rather than wait for the
        graceful-shutdown timeout)."""
        self.closing = True

    async def stop(self) -> None:
        """Stop reading and close the source."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for feed in self.feeds:
            feed.wake()
        await self.source.close()

    async def run(self) -> None:
        """Read new events until cancelled (a failed read is logged and retried)."""
        source = self.source
        checked = time.monotonic()
        while True:
            try:
                batch = await source.read_after(self.cursor, self.limits.batch)
                if batch:
                    self._take(batch)
                if time.monotonic() - checked >= 1.0:
                    checked = time.monotonic()
                    await self._check_position(full=len(batch) >= self.limits.batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("viewer: reading the source failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if not batch:
                await source.wait(self.cursor, 0.5)
            else:
                await asyncio.sleep(0)  # let the connections send before the next batch

    async def _check_position(self, *, full: bool) -> None:
        """Once a second: start again from the beginning when the source went back (a
        store file replaced by a new one); skip ahead when the hub fell more than
        ``max_lag`` events behind (telling every feed what it skipped)."""
        last = await self.source.last()
        if last < self.cursor:
            logger.warning("viewer: the source went back from %s to %s (a new store file?); "
                           "following it from its start", self.cursor, last)
            self.cursor = 0
            return
        if not full or last - self.cursor <= self.limits.max_lag:
            return
        cut = last - self.limits.max_lag // 2
        counts = await self.source.count_types(self.cursor, cut)
        first = self.cursor + 1
        for feed in self.feeds:
            for event_type, count in counts.items():
                feed.skip(cut, event_type, count, first=first)
        skipped = sum(counts.values())
        self.skipped += skipped
        logger.warning("viewer: %s events behind the source; skipped %s to stay live",
                       last - self.cursor, skipped)
        self.cursor = cut

    def _observe(self, event: Any) -> None:
        """Fold ``event`` into the summary; one event the summary trips over (whatever it
        holds) is left out of the runs and tables instead of stopping the hub."""
        try:
            self.summary.observe(event)
        except Exception:  # one hostile event must not stop every page's stream
            logger.debug("viewer: could not summarise %r", event.event_type, exc_info=True)

    def _take(self, batch: list[tuple[int, Any]]) -> None:
        observe = self._observe
        feeds = tuple(self.feeds)
        for cursor, raw in batch:
            event = bounded_type(raw)
            observe(event)
            item = encode_item(cursor, event)
            if item.unshown:
                self.unshown += 1
            for feed in feeds:
                feed.push(item)
        self.cursor = batch[-1][0]
        self.total += len(batch)
        self._rate.add(len(batch), time.monotonic())

    # -- connections --------------------------------------------------------------------
    def attach(self, matches: Callable[[str], bool] | None) -> Feed:
        """A feed that receives every event after the hub's cursor now."""
        limits = self.limits
        feed = Feed(matches, max_items=limits.feed_items, max_bytes=limits.feed_bytes)
        self.feeds.add(feed)
        return feed

    def detach(self, feed: Feed) -> None:
        """Stop feeding ``feed``."""
        self.feeds.discard(feed)

    @property
    def full(self) -> bool:
        """Whether ``max_clients`` connections are open (or admitted and about to open)."""
        return max(len(self.feeds), self.admitted) >= self.limits.max_clients

    def admit(self) -> bool:
        """Take one of the ``max_clients`` places for a connection about to stream, or
        return False when none is left. Taken when the request arrives, not when its
        stream starts, so many requests at once cannot all pass the check before any of
        them is counted. Give it back with :meth:`release`."""
        if self.full:
            return False
        self.admitted += 1
        return True

    def release(self) -> None:
        """Give back a place taken by :meth:`admit`."""
        self.admitted = max(0, self.admitted - 1)

    def stats_json(self) -> bytes:
        """The shared part of the ``stats`` message (tables, rates, source), encoded at
        most once per second or per change."""
        now = time.monotonic()  # rates and uptime are intervals: never wall time
        unshown = self.unshown + int(getattr(self.source, "unshown", 0))
        key = (self.summary.stats_version, int(now), unshown)
        if key != self._stats_key:
            last, ten = self._rate.rates(now)
            self._stats_key = key
            self._stats_json = _encode({
                **self.summary.stats(), "source": self.source.describe(),
                "total": self.total, "skipped": self.skipped,
                "unshown": unshown,
                "cursor": self.source.format_id(self.cursor),
                "rate_1s": last, "rate_10s": ten, "clients": len(self.feeds),
                "feeds": [{"pushed": feed.pushed, "coalesced": feed.dropped,
                           "buffered": feed.depth} for feed in self.feeds],
                "uptime_s": now - self._began})
        return self._stats_json

    async def stream(self, *, pattern: str | None = None, last_id: str | None = None,
                     tail: int | None = None, runs_interval: float = 0.25,
                     stats_interval: float = 1.0) -> AsyncIterator[bytes]:
        """One connection's frames (see the module docstring). ``pattern`` filters the
        events (not the runs or tables); ``last_id`` is the ``Last-Event-ID`` the browser
        sent; ``tail`` the events a fresh page starts with (default ``limits.tail``)."""
        await self.ready.wait()
        matches = compile_pattern(pattern).matches if pattern else None
        feed = self.attach(matches)
        start = self.cursor
        source, summary, limits = self.source, self.summary, self.limits
        try:
            resume = source.parse_id(last_id) if last_id else None
            if resume is not None and resume > start:
                resume = None  # an id from the future: the store was replaced
            yield b"retry: 1000\n\n"
            yield frame("hello", _encode({
                "source": source.describe(), "pattern": pattern, "resumed": resume is not None,
                "unknown_id": bool(last_id) and resume is None,
                "cursor": source.format_id(start),
                "limits": {"feed_items": limits.feed_items, "tail": limits.tail,
                           "max_backfill": limits.max_backfill}}))
            sent_version = summary.version
            yield frame("runs", _encode(summary.runs_since(0)))
            yield frame("stats", self._client_stats(feed))
            async for chunk in self._backlog(feed, matches, pattern, resume, start,
                                             limits.tail if tail is None else tail):
                yield chunk
            next_runs = next_stats = time.monotonic()
            while True:
                items, skipped = feed.take()
                if skipped is not None:
                    yield frame("coalesced", _encode(skipped.as_dict("behind")))
                if items:
                    yield _events_frame(items, source.format_id)
                now = time.monotonic()
                if now >= next_runs and summary.version > sent_version:
                    version = summary.version
                    yield frame("runs", _encode(summary.runs_since(sent_version)))
                    sent_version = version
                    next_runs = now + runs_interval
                if now >= next_stats:
                    yield frame("stats", self._client_stats(feed))
                    next_stats = now + stats_interval
                if self.closing or (self._task is None and not feed.has_data()):
                    return  # the hub stopped, or the server is stopping
                if not items and skipped is None:
                    await feed.wait(min(runs_interval, stats_interval))
        finally:
            self.detach(feed)

    def _client_stats(self, feed: Feed) -> bytes:
        mine = _encode({"pushed": feed.pushed, "coalesced": feed.dropped,
                        "buffered": feed.depth})
        return b'{"client":' + mine + b"," + self.stats_json()[1:]

    async def _backlog(self, feed: Feed, matches: Callable[[str], bool] | None,
                       pattern: str | None, resume: int | None, upto: int, tail: int
                       ) -> AsyncIterator[bytes]:
        """What the connection is owed before the live events (up to cursor ``upto``)."""
        source, limits = self.source, self.limits
        if resume is None:
            if tail > 0:
                rows = await source.newest(min(tail, limits.max_backfill), pattern=pattern,
                                           upto=upto)
                for chunk in self._chunks(rows):
                    yield chunk
            return
        after = resume
        if upto - after > limits.max_backfill:
            cut = upto - limits.max_backfill
            skipped = Skipped()
            if cut - after <= 1_000_000:
                counts = await source.count_types(after, cut)
                for event_type, count in counts.items():
                    if matches is None or event_type.startswith("(") or matches(event_type):
                        skipped.add(cut, event_type, count)
            else:
                skipped.add(cut, "(not counted)", cut - after)
            skipped.first = after + 1
            if skipped.count:
                yield frame("coalesced", _encode(skipped.as_dict("backfill")))
            after = cut
        while after < upto:
            rows = await source.read_after(after, limits.batch, pattern=pattern, upto=upto)
            if not rows:
                break
            for chunk in self._chunks(rows):
                yield chunk
            after = rows[-1][0]

    def _chunks(self, rows: list[tuple[int, Any]], size: int = 500) -> list[bytes]:
        chunks = []
        for i in range(0, len(rows), size):
            items = [encode_item(cursor, bounded_type(event))
                     for cursor, event in rows[i:i + size]]
            chunks.append(_events_frame(items, self.source.format_id))
        return chunks
