"""Binance depth and kline streams built from a feed's market model.

Diff depth (``<sym>@depth``, ``@depth@100ms``, ``@depth@500ms``, ``@depth@0ms``):
each event folds the book changes logged since the previous event (latest size
per price); ``U``/``u`` are the first and last update ids of those changes.
Spot ids are contiguous, so ``U == prev_u + 1``; USD-M ids jump (the book's
``uid_jump``), events carry ``T`` and ``pu`` (the previous event's ``u``). An
interval without a change sends nothing. Together with REST ``depth`` (same
book, ``lastUpdateId`` = last applied change) the documented procedures
rebuild the true book exactly.

Partial depth (``@depth5/10/20``): spot ``{"lastUpdateId","bids","asks"}``, USD-M
a ``depthUpdate`` with the top N levels, every interval.

Klines (``<sym>@kline_<interval>``): the open bar every `StreamTiming.binance_kline`
seconds; at the bar's end the closed bar (``x: true``) then the new one.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from wadm.emulator.book import ASK, BID
from wadm.emulator.klines import BINANCE_INTERVALS, Bar, Interval, bar_text
from wadm.emulator.streams import KlineCycle, Publisher, StreamTiming, feed_model, publish

if TYPE_CHECKING:
    from wadm.emulator.connection import Connection
    from wadm.emulator.hub import Channel
    from wadm.emulator.market import SyntheticFeed

__all__ = [
    "BinanceDepthPublisher",
    "BinanceKlinePublisher",
    "binance_publisher",
    "format_levels",
    "is_timed_stream",
    "stream_symbol",
]

_DEPTH = re.compile(r"^([a-z0-9]+)@depth(5|10|20)?(?:@(\d+)ms)?$")
_KLINE = re.compile(r"^([a-z0-9]+)@kline_(\w+)$")


def is_timed_stream(stream: str) -> bool:
    """Whether a stream is a depth or kline stream (served from a market model)."""
    if _DEPTH.match(stream):
        return True
    match = _KLINE.match(stream)
    return match is not None and match.group(2) in BINANCE_INTERVALS


def stream_symbol(stream: str) -> str:
    """The upper-case symbol of a stream name (``btcusdt@depth`` -> ``BTCUSDT``)."""
    return stream.partition("@")[0].upper()


def format_levels(feed: SyntheticFeed, levels: list[tuple[int, int]]) -> bytes:
    """Encode ``(ticks, lots)`` levels as a JSON array of ``["price","qty"]``."""
    price, qty = feed.price_text, feed.qty_text
    return b"[" + b",".join([b'["%s","%s"]' % (price(t), qty(q)) for t, q in levels]) + b"]"


class BinanceDepthPublisher:
    """A diff or partial depth stream of one symbol."""

    def __init__(self, channel: Channel, feed: SyntheticFeed, *, interval: float, levels: int | None) -> None:
        """Start at the book's current update id.

        Args:
            channel: The stream.
            feed: The symbol's feed (with a model).
            interval: Seconds between events.
            levels: Top levels for a partial stream; None for diffs.
        """
        self.channel = channel
        self.feed = feed
        self.interval = interval
        self.levels = levels
        self.usdm = channel.market == "usdm"
        self.cursor = feed_model(feed).book.uid
        """Update id of the last event (sent or dropped)."""
        self._symbol = feed.symbol.upper().encode()
        self._next_due = 0.0
        self._gap = 0
        self._crossed = False
        self._fake: tuple[int, int] | None = None

    def on_subscribe(self, conn: Connection) -> None:
        """Diffs need no snapshot (the client fetches one over REST).

        The first subscriber after a quiet period starts from the current
        update id: changes nobody could receive are not folded into one event.
        """
        if len(self.channel.subscribers) == 1:
            self.cursor = feed_model(self.feed).book.uid
            self._next_due = 0.0

    def inject_gap(self, count: int) -> None:
        """Drop the next ``count`` events (their ids are consumed)."""
        self._gap += count

    def inject_crossed(self) -> None:
        """Put a bid at the best ask into the next event; repair it in the one after."""
        self._crossed = True

    def restart(self) -> bool:
        """Binance has no in-band restart."""
        return False

    def clear_faults(self) -> None:
        """Forget pending gaps and crossings."""
        self._gap = 0
        self._crossed = False

    def poll(self, mono: float, now_ms: int) -> None:
        """Send the event that is due, if any."""
        if mono < self._next_due:
            return
        self._next_due = mono + self.interval
        book = feed_model(self.feed).book
        changes = book.changes_since(self.cursor)
        if self.levels is not None:
            self._partial(mono, now_ms, changes[0][0] if changes else book.uid)
            return
        if not changes:
            return
        pu = self.cursor
        first, last = changes[0][0], changes[-1][0]
        self.cursor = last
        sides: tuple[dict[int, int], dict[int, int]] = ({}, {})
        for _, side, ticks, lots, _ in changes:
            sides[side][ticks] = lots
        if self._fake is not None:
            side, ticks = self._fake
            sides[side][ticks] = book.restore(side, ticks)
            self._fake = None
        if self._crossed:
            ticks = book.best[ASK]
            sides[BID][ticks] = book.sides[ASK][ticks]
            self._fake = (BID, ticks)
            self._crossed = False
        if self._gap:
            self._gap -= 1
            return
        bids = format_levels(self.feed, sorted(sides[BID].items(), reverse=True))
        asks = format_levels(self.feed, sorted(sides[ASK].items()))
        payload = self._update(now_ms, book.last_change_ms, first, last, pu, bids, asks)
        publish(self.channel, payload, mono)

    def _update(self, now_ms: int, change_ms: int, first: int, last: int, pu: int, bids: bytes,
                asks: bytes) -> bytes:
        """A ``depthUpdate`` event: USD-M carries ``T`` and ``pu``, spot does not."""
        if self.usdm:
            return b'{"e":"depthUpdate","E":%d,"T":%d,"s":"%s","U":%d,"u":%d,"pu":%d,"b":%s,"a":%s}' % (
                now_ms, change_ms, self._symbol, first, last, pu, bids, asks)
        return b'{"e":"depthUpdate","E":%d,"s":"%s","U":%d,"u":%d,"b":%s,"a":%s}' % (
            now_ms, self._symbol, first, last, bids, asks)

    def _partial(self, mono: float, now_ms: int, first: int) -> None:
        book = feed_model(self.feed).book
        assert self.levels is not None
        top_bids = book.top(BID, self.levels)
        top_asks = book.top(ASK, self.levels)
        pu = self.cursor
        self.cursor = book.uid
        if self._crossed:
            top_bids.insert(0, top_asks[0])
            top_bids = top_bids[: self.levels]
            self._crossed = False
        if self._gap:
            self._gap -= 1
            return
        bids = format_levels(self.feed, top_bids)
        asks = format_levels(self.feed, top_asks)
        if self.usdm:
            payload = self._update(now_ms, book.last_change_ms, first, book.uid, pu, bids, asks)
        else:
            payload = b'{"lastUpdateId":%d,"bids":%s,"asks":%s}' % (book.uid, bids, asks)
        publish(self.channel, payload, mono)


class BinanceKlinePublisher(KlineCycle):
    """A ``<sym>@kline_<interval>`` stream: one frame per bar, the closed one first at a boundary."""

    def __init__(self, channel: Channel, feed: SyntheticFeed, *, interval: Interval, every: float) -> None:
        """Create the publisher (see `KlineCycle`)."""
        super().__init__(channel, feed, interval=interval, every=every)
        self._symbol = feed.symbol.upper().encode()

    def emit(self, closed: Bar | None, current: Bar | None, mono: float, now_ms: int) -> None:
        """Send the closed bar (``x:true``), then the open one."""
        if closed is not None:
            self._send(closed, True, mono, now_ms)
        if current is not None:
            self._send(current, False, mono, now_ms)

    def _send(self, bar: Bar, closed: bool, mono: float, now_ms: int) -> None:
        inst = self.feed.instrument
        text = bar_text(bar, inst, 8 if self.channel.market == "spot" else 0)
        sym = self._symbol
        end = self.interval.next_start(bar.start) - 1
        payload = (
            b'{"e":"kline","E":%d,"s":"%s","k":{"t":%d,"T":%d,"s":"%s","i":"%s","f":%d,"L":%d,'
            b'"o":"%s","c":"%s","h":"%s","l":"%s","v":"%s","n":%d,"x":%s,"q":"%s","V":"%s","Q":"%s","B":"0"}}'
        ) % (
            now_ms,
            sym,
            bar.start,
            end,
            sym,
            self.interval.name.encode(),
            bar.first_id,
            bar.last_id,
            text.open,
            text.close,
            text.high,
            text.low,
            text.volume,
            bar.trades,
            b"true" if closed else b"false",
            text.quote,
            text.buy_volume,
            text.buy_quote,
        )
        publish(self.channel, payload, mono)


def binance_publisher(channel: Channel, feed: SyntheticFeed, timing: StreamTiming) -> Publisher | None:
    """The publisher of a Binance depth or kline stream, or None for other streams.

    Args:
        channel: The subscribed stream.
        feed: The symbol's feed; it must have a model.
        timing: Push intervals.
    """
    stream = channel.stream
    match = _DEPTH.match(stream)
    if match is not None:
        levels = int(match.group(2)) if match.group(2) else None
        speed = match.group(3)
        if speed is not None:
            interval = int(speed) / 1000.0
        else:
            interval = timing.binance_depth_usdm if channel.market == "usdm" else timing.binance_depth_spot
        return BinanceDepthPublisher(channel, feed, interval=interval, levels=levels)
    match = _KLINE.match(stream)
    if match is not None and match.group(2) in BINANCE_INTERVALS:
        return BinanceKlinePublisher(
            channel, feed, interval=BINANCE_INTERVALS[match.group(2)], every=timing.binance_kline
        )
    return None
