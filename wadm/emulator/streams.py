"""Timed streams (depth, order book, klines): their pacing and the scheduler.

Trade streams are pushed by the feeds. Book and kline streams are pulled: each
subscribed stream of a symbol with a synthetic feed gets a `Publisher` (made
by its venue on first subscription), and one `Scheduler` timer polls every
publisher that has subscribers every `StreamTiming.tick` seconds. A
publisher decides itself whether its interval elapsed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from wadm.emulator.frames import encode_text
from wadm.emulator.market import Clock, wall_clock_ms

if TYPE_CHECKING:
    from wadm.emulator.connection import Connection
    from wadm.emulator.hub import Channel, Hub
    from wadm.emulator.klines import Bar, Interval
    from wadm.emulator.market import SyntheticFeed
    from wadm.emulator.model import MarketModel

__all__ = ["BookPublisher", "KlineCycle", "Publisher", "Scheduler", "StreamTiming", "feed_model", "publish"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamTiming:
    """Push intervals of the timed streams, in seconds.

    Attributes:
        tick: Polling period of the scheduler (the finest interval).
        binance_depth_spot: Spot ``@depth``/``@depth<N>`` without a speed suffix.
        binance_depth_usdm: USD-M ``@depth``/``@depth<N>`` without a speed suffix.
        binance_kline: Binance kline updates of the open bar.
        bybit_kline: Bybit kline updates of the open bar.
        bybit_depth: Bybit ``orderbook.{depth}`` push interval per depth.
        bybit_depth1_repush: An unchanged ``orderbook.1`` snapshot is pushed
            again (same ``u``) after this long.
    """

    tick: float = 0.01
    binance_depth_spot: float = 1.0
    binance_depth_usdm: float = 0.25
    binance_kline: float = 2.0
    bybit_kline: float = 1.0
    bybit_depth: tuple[tuple[int, float], ...] = ((1, 0.01), (50, 0.02), (200, 0.1), (1000, 0.2))
    bybit_depth1_repush: float = 3.0

    def bybit_interval(self, depth: int) -> float:
        """Push interval of ``orderbook.{depth}``."""
        return dict(self.bybit_depth).get(depth, 0.1)


class Publisher(Protocol):
    """A timed stream of one symbol's feed."""

    channel: Channel
    feed: SyntheticFeed

    def poll(self, mono: float, now_ms: int) -> None:
        """Push what is due (called every scheduler tick while subscribed)."""

    def on_subscribe(self, conn: Connection) -> None:
        """A connection started receiving the stream (Bybit sends a snapshot)."""


class BookPublisher(Publisher, Protocol):
    """A depth or order-book stream, with its fault hooks."""

    def inject_gap(self, count: int) -> None:
        """Drop the next ``count`` updates (ids advance: the client sees a gap)."""

    def inject_crossed(self) -> None:
        """Make the next update cross the book; the one after repairs it."""

    def restart(self) -> bool:
        """Restart the stream's sequence (Bybit ``u=1`` snapshot); False if n/a."""

    def clear_faults(self) -> None:
        """Forget pending injected faults."""


def publish(channel: Channel, payload: bytes, now: float, *, wrap: bool = True) -> None:
    """Queue one payload on every subscriber that may receive it now.

    Args:
        channel: The stream.
        payload: The bare payload.
        now: Current ``time.monotonic()``.
        wrap: Whether combined-stream subscribers get the Binance wrapper.
    """
    combined, raw = channel.targets(now)
    comb_frame = b""
    if combined:
        body = b'{"stream":"' + channel.stream.encode() + b'","data":' + payload + b"}" if wrap else payload
        comb_frame = encode_text(body)
    raw_frame = encode_text(payload) if raw else b""
    channel.deliver(combined, comb_frame, raw, raw_frame, 1)


class Scheduler:
    """Polls the publishers of subscribed timed streams on one timer."""

    def __init__(self, hub: Hub, *, tick: float = 0.01, clock: Clock = wall_clock_ms) -> None:
        """Create a stopped scheduler.

        Args:
            hub: Hub whose connections the publishers write to (flushed per tick).
            tick: Polling period in seconds.
            clock: Wall clock handed to the publishers (ms).
        """
        self.hub = hub
        self.tick = tick
        self.clock = clock
        self.publishers: dict[tuple[str, str, str], Publisher] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._failed: set[str] = set()

    def add(self, publisher: Publisher) -> None:
        """Register a publisher (keyed by its channel)."""
        ch = publisher.channel
        self.publishers[(ch.venue, ch.market, ch.stream)] = publisher
        self._arm()

    def get(self, venue: str, market: str, stream: str) -> Publisher | None:
        """The publisher of a stream, if any."""
        return self.publishers.get((venue, market, stream))

    def start(self) -> None:
        """Start polling on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._arm()

    def stop(self) -> None:
        """Stop polling."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None

    def _arm(self) -> None:
        if self._loop is not None and self._handle is None and self.publishers:
            self._handle = self._loop.call_later(self.tick, self._run)

    def _run(self) -> None:
        self._handle = None
        now = time.monotonic()
        now_ms = self.clock()
        try:
            for pub in list(self.publishers.values()):
                if pub.channel.subscribers:
                    try:
                        pub.poll(now, now_ms)
                    except Exception:
                        if pub.channel.stream not in self._failed:
                            self._failed.add(pub.channel.stream)
                            _log.exception(
                                "A timed stream failed; its subscribers miss updates.",
                                extra={"stream": pub.channel.stream},
                            )
            self.hub.flush()
        finally:
            self._arm()


def feed_model(feed: SyntheticFeed) -> MarketModel:
    """The market model of a feed that serves book or kline streams."""
    model = feed.model
    assert model is not None, "publishers need a market model"
    return model


class KlineCycle:
    """The timing every kline stream shares: the open bar every ``every`` s, the closed one at a boundary.

    Venues subclass it and format frames in :meth:`emit`.
    """

    def __init__(self, channel: Channel, feed: SyntheticFeed, *, interval: Interval, every: float) -> None:
        """Create the publisher.

        Args:
            channel: The stream or topic.
            feed: The symbol's feed (with a model).
            interval: Candle interval.
            every: Seconds between updates of the open bar.
        """
        self.channel = channel
        self.feed = feed
        self.interval = interval
        self.every = every
        self._open: int | None = None
        self._next_push = 0.0

    def on_subscribe(self, conn: Connection) -> None:
        """Klines start with the next update (the first subscriber restarts the cycle)."""
        if len(self.channel.subscribers) == 1:
            self._open = None
            self._next_push = 0.0

    def poll(self, mono: float, now_ms: int) -> None:
        """At a boundary emit the closed bar and the new one; else the open bar when due."""
        bars = feed_model(self.feed).bars
        bars.roll(now_ms)
        start = self.interval.start_of(now_ms)
        if self._open is None:
            self._open = start
        if start != self._open:
            closed = bars.candle(self.interval, self._open)
            self._open = start
            self._next_push = mono + self.every
            self.emit(closed, bars.candle(self.interval, start), mono, now_ms)
        elif mono >= self._next_push:
            self._next_push = mono + self.every
            self.emit(None, bars.candle(self.interval, start), mono, now_ms)

    def emit(self, closed: Bar | None, current: Bar | None, mono: float, now_ms: int) -> None:
        """Send the just-closed bar (at a boundary) and the open one, in the venue's frames."""
        raise NotImplementedError
