"""Channels, the delivered log and fan-out: the venue-neutral core of the emulator.

A `Channel` is one stream of one venue market (``binance``/``spot``/``btcusdt@trade``).
Publishers (synthetic generators, replays) hand a channel ready-made frame
buffers; the channel queues them on every subscribed `Connection` that may
receive data right now and remembers which trade ids reached at least one
socket (the *delivered log*, an `IdLog`). `Hub.flush` then writes each
connection's queued buffers with one transport write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wadm.emulator.connection import Connection

__all__ = ["Channel", "Hub", "IdLog"]


class IdLog:
    """Ordered, duplicate-free record of ids, stored as contiguous ranges.

    PERF: a synthetic stream at 300k trades/s adds one range per batch rather
    than one int per trade.
    """

    __slots__ = ("_ranges",)

    def __init__(self) -> None:
        self._ranges: list[list[int]] = []

    def add(self, first: int, last: int) -> None:
        """Record the ids ``first..last`` (inclusive), ignoring ids already seen.

        Ids at or below the highest recorded id are treated as duplicates.

        Args:
            first: First id of the run.
            last: Last id of the run.
        """
        ranges = self._ranges
        if ranges:
            tail = ranges[-1]
            if first <= tail[1]:
                first = tail[1] + 1
                if first > last:
                    return
            if first == tail[1] + 1:
                tail[1] = last
                return
        ranges.append([first, last])

    def __iter__(self) -> Iterator[int]:
        for first, last in self._ranges:
            yield from range(first, last + 1)

    def __len__(self) -> int:
        return sum(last - first + 1 for first, last in self._ranges)

    @property
    def last(self) -> int | None:
        """The highest recorded id, or None when empty."""
        return self._ranges[-1][1] if self._ranges else None

    def ranges(self) -> list[tuple[int, int]]:
        """Return the log as inclusive ``(first, last)`` ranges."""
        return [(first, last) for first, last in self._ranges]

    def clear(self) -> None:
        """Forget every recorded id."""
        self._ranges.clear()


class Channel:
    """One stream of one venue market, with its subscribers and counters."""

    __slots__ = (
        "delivered",
        "frames_published",
        "frames_sent",
        "last_id",
        "market",
        "muted",
        "stream",
        "subscribers",
        "venue",
    )

    def __init__(self, venue: str, market: str, stream: str) -> None:
        self.venue = venue
        self.market = market
        self.stream = stream
        self.subscribers: dict[Connection, None] = {}
        """Connections that receive this stream's data (route permitting)."""
        self.delivered = IdLog()
        """Trade ids written to at least one socket."""
        self.frames_published = 0
        """Frames offered to the channel, whether or not anybody received them."""
        self.frames_sent = 0
        """Frames written, summed over subscribers."""
        self.last_id: int | None = None
        """Highest id offered to the channel (delivered or not)."""
        self.muted: dict[Connection, float] = {}
        """Subscribers that do not get this stream until a ``time.monotonic()`` deadline."""

    def targets(self, now: float) -> tuple[list[Connection], list[Connection]]:
        """Split the subscribers that may receive data now by framing.

        Args:
            now: Current ``time.monotonic()``.

        Returns:
            ``(combined, raw)`` connection lists; either may be empty.
        """
        combined: list[Connection] = []
        raw: list[Connection] = []
        muted = self.muted
        for conn in self.subscribers:
            if conn.closing or conn.silenced_until > now:
                continue
            if muted and muted.get(conn, 0.0) > now:
                continue
            (combined if conn.combined else raw).append(conn)
        return combined, raw

    def receives(self, conn: Connection, now: float) -> bool:
        """Whether ``conn`` would get this stream's data right now."""
        if conn.closing or conn.silenced_until > now or conn not in self.subscribers:
            return False
        return not self.muted or self.muted.get(conn, 0.0) <= now

    def deliver(
        self,
        combined: list[Connection],
        combined_frames: bytes,
        raw: list[Connection],
        raw_frames: bytes,
        count: int,
        first_id: int | None = None,
        last_id: int | None = None,
    ) -> None:
        """Queue encoded frames on the target connections and update the log.

        Args:
            combined: Connections that get the combined (wrapped) frames.
            combined_frames: Encoded combined frames (ignored when no targets).
            raw: Connections that get bare payload frames.
            raw_frames: Encoded raw frames (ignored when no targets).
            count: Number of frames in each buffer.
            first_id: First trade id carried by the frames, if any.
            last_id: Last trade id carried by the frames, if any.
        """
        self.frames_published += count
        if last_id is not None:
            self.last_id = last_id
        receivers = len(combined) + len(raw)
        if not receivers:
            return
        for conn in combined:
            conn.queue(combined_frames)
        for conn in raw:
            conn.queue(raw_frames)
        self.frames_sent += count * receivers
        if first_id is not None and last_id is not None:
            self.delivered.add(first_id, last_id)


class Hub:
    """Registry of live connections and channels; owns the write flush."""

    def __init__(
        self,
        *,
        on_subscribe: Callable[[Connection, Channel], None] | None = None,
        max_send_buffer: int = 64 << 20,
        backlog_limit: int = 4 << 20,
        slow_consumer_timeout: float = 5.0,
    ) -> None:
        """Create an empty hub.

        Args:
            on_subscribe: Called after a connection starts receiving a stream
                (the emulator starts depth and kline publishers with it).
            max_send_buffer: Unsent bytes a connection may accumulate before it
                is dropped as a slow consumer.
            backlog_limit: Unsent bytes above which a connection counts as
                backlogged: synthetic feeds hold back until it drains.
            slow_consumer_timeout: Seconds a connection may stay backlogged
                before it is dropped as a slow consumer.
        """
        self.on_subscribe = on_subscribe
        self.max_send_buffer = max_send_buffer
        self.backlog_limit = backlog_limit
        self.slow_consumer_timeout = slow_consumer_timeout
        self.connections: dict[int, Connection] = {}
        self.channels: dict[tuple[str, str, str], Channel] = {}
        self._dirty: list[Connection] = []
        self._subscribed: dict[tuple[str, str], asyncio.Event] = {}

    def channel(self, venue: str, market: str, stream: str) -> Channel:
        """Return the channel for a stream, creating it on first use."""
        key = (venue, market, stream)
        ch = self.channels.get(key)
        if ch is None:
            ch = self.channels[key] = Channel(venue, market, stream)
        return ch

    def find_channel(self, venue: str, market: str, stream: str) -> Channel | None:
        """Return an existing channel or None."""
        return self.channels.get((venue, market, stream))

    def subscribe(self, conn: Connection, stream: str, deliver: bool) -> None:
        """Record a subscription of ``conn``.

        Args:
            conn: The subscribing connection.
            stream: Stream name.
            deliver: Whether the connection's route delivers the stream; a
                subscription that does not is kept (and listed) but silent.
        """
        if stream in conn.subscriptions:
            return
        ch = self.channel(conn.venue, conn.market, stream)
        conn.subscriptions[stream] = ch
        if deliver:
            ch.subscribers[conn] = None
            event = self._subscribed.get((conn.venue, conn.market))
            if event is not None:
                event.set()
            if self.on_subscribe is not None:
                self.on_subscribe(conn, ch)

    def unsubscribe(self, conn: Connection, stream: str) -> None:
        """Remove a subscription of ``conn`` (a no-op when absent)."""
        ch = conn.subscriptions.pop(stream, None)
        if ch is not None:
            ch.subscribers.pop(conn, None)
            ch.muted.pop(conn, None)

    def has_receivers(self, venue: str, market: str) -> bool:
        """Whether any open connection receives some stream of a venue market."""
        return any(
            not conn.closing
            for (v, m, _), ch in self.channels.items()
            if v == venue and m == market
            for conn in ch.subscribers
        )

    async def wait_subscribed(self, venue: str, market: str) -> None:
        """Wait until an open connection receives some stream of a venue market."""
        key = (venue, market)
        while not self.has_receivers(venue, market):
            event = self._subscribed.setdefault(key, asyncio.Event())
            event.clear()
            await event.wait()

    def mark_dirty(self, conn: Connection) -> None:
        """Remember that ``conn`` has queued frames to flush."""
        self._dirty.append(conn)

    def flush(self) -> None:
        """Write every connection's queued frames to its socket."""
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        for conn in dirty:
            conn.flush()

    def register(self, conn: Connection) -> None:
        """Add a connection that completed its handshake."""
        self.connections[conn.conn_id] = conn

    def unregister(self, conn: Connection) -> None:
        """Remove a disconnected connection from every channel."""
        self.connections.pop(conn.conn_id, None)
        for ch in conn.subscriptions.values():
            ch.subscribers.pop(conn, None)
            ch.muted.pop(conn, None)

    def select(
        self,
        *,
        venue: str | None = None,
        market: str | None = None,
        stream: str | None = None,
    ) -> list[Connection]:
        """Return open connections matching every given filter.

        Args:
            venue: Venue name, e.g. ``binance``.
            market: Venue market, e.g. ``spot`` or ``usdm``.
            stream: A stream name the connection is subscribed to.
        """
        out = []
        for conn in self.connections.values():
            if conn.closing:
                continue
            if venue is not None and conn.venue != venue:
                continue
            if market is not None and conn.market != market:
                continue
            if stream is not None and stream not in conn.subscriptions:
                continue
            out.append(conn)
        return out
