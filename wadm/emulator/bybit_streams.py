"""Bybit v5 ``orderbook.{depth}`` and ``kline.{interval}`` topics from a market model.

Order book: the topic keeps the view it last published (the top ``depth``
levels of the true book). A new subscriber gets that view as a ``snapshot``
with the topic's current ``u``; every push interval the new top-N is compared
with the view and the difference goes out as a ``delta`` with ``u + 1``
(levels that left the top N are sent with size ``"0"``). Applying snapshot
and deltas therefore reproduces the true book's top N as of the last push.
``orderbook.1`` is snapshot-only: a changed top level is pushed with ``u + 1``,
an unchanged one again with the same ``u`` every
`StreamTiming.bybit_depth1_repush` seconds. `BybitBookPublisher.restart`
sends a ``u=1`` snapshot (a service restart).

Klines: the open candle every `StreamTiming.bybit_kline` seconds; at its end
one frame with two candles, the closed one (``confirm: true``) and the new one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from wadm.emulator.binance_streams import format_levels
from wadm.emulator.book import ASK, BID
from wadm.emulator.klines import BYBIT_INTERVALS, Bar, bar_text
from wadm.emulator.streams import KlineCycle, Publisher, StreamTiming, feed_model, publish

if TYPE_CHECKING:
    from wadm.emulator.connection import Connection
    from wadm.emulator.hub import Channel
    from wadm.emulator.market import SyntheticFeed

__all__ = ["DEPTHS", "BybitBookPublisher", "BybitKlinePublisher", "bybit_publisher", "is_timed_topic"]

DEPTHS = (1, 50, 200, 1000)
"""Order-book depths served for spot and linear (500 was retired)."""

_DEPTH_NAMES = frozenset(str(d) for d in DEPTHS)

View = tuple[dict[int, int], dict[int, int]]


class BybitBookPublisher:
    """One ``orderbook.{depth}.{symbol}`` topic."""

    def __init__(
        self,
        channel: Channel,
        feed: SyntheticFeed,
        *,
        depth: int,
        interval: float,
        repush: float,
    ) -> None:
        """Take the first view of the book.

        Args:
            channel: The topic.
            feed: The symbol's feed (with a model).
            depth: Levels per side.
            interval: Seconds between pushes.
            repush: Seconds after which an unchanged depth-1 snapshot is sent again.
        """
        self.channel = channel
        self.feed = feed
        self.depth = depth
        self.interval = interval
        self.repush = repush
        model = feed_model(feed)
        self.u = model.rng.randrange(1_000_000, 50_000_000)
        """Update id of the last push (sent or dropped)."""
        self.view: View = self._top()
        self._head = (b'{"topic":"%s",' % channel.stream.encode()) + (
            b'"type":"%s","ts":%d,' if channel.market == "linear" else b'"ts":%d,"type":"%s",'
        )
        self._linear = channel.market == "linear"
        self._symbol = feed.symbol.upper().encode()
        self._next_due = 0.0
        self._last_push = time.monotonic()
        self._gap = 0
        self._crossed = False
        self._restart = False
        self._fake: tuple[int, int] | None = None

    # ---------------------------------------------------------------- faults

    def inject_gap(self, count: int) -> None:
        """Drop the next ``count`` pushes; ``u`` still advances (the client sees a jump)."""
        self._gap += count

    def inject_crossed(self) -> None:
        """Push a bid at the best ask next; the push after removes it."""
        self._crossed = True

    def restart(self) -> bool:
        """Send a ``u=1`` snapshot at the next push, as after a service restart."""
        self._restart = True
        return True

    def clear_faults(self) -> None:
        """Forget pending gaps, crossings and restarts."""
        self._gap = 0
        self._crossed = False
        self._restart = False

    # ------------------------------------------------------------ publishing

    def on_subscribe(self, conn: Connection) -> None:
        """Send the current view as a snapshot to the new subscriber.

        The first subscriber after a quiet period gets a fresh view (``u + 1``).
        """
        if len(self.channel.subscribers) == 1:
            self.view = self._top()
            self.u += 1
        now = time.monotonic()
        if self.channel.receives(conn, now):
            conn.send_text(self._frame(b"snapshot", self.view, self.feed.clock()))

    def poll(self, mono: float, now_ms: int) -> None:
        """Push the delta (or snapshot) that is due."""
        if mono < self._next_due:
            return
        self._next_due = mono + self.interval
        new = self._top()
        if self._restart:
            self._restart = False
            self._crossed = False
            self._fake = None
            self.u = 1
            self.view = new
            self._send(b"snapshot", new, mono, now_ms)
            return
        if self.depth == 1:
            self._poll_top(new, mono, now_ms)
            return
        delta: View = ({}, {})
        for side in (BID, ASK):
            old, cur, out = self.view[side], new[side], delta[side]
            for ticks, lots in cur.items():
                if old.get(ticks) != lots:
                    out[ticks] = lots
            for ticks in old:
                if ticks not in cur:
                    out[ticks] = 0
        if self._fake is not None:
            side, ticks = self._fake
            delta[side][ticks] = new[side].get(ticks, 0)
            self._fake = None
        if self._crossed:
            self._crossed = False
            ticks = min(new[ASK])
            delta[BID][ticks] = new[ASK][ticks]
            self._fake = (BID, ticks)
        if not delta[BID] and not delta[ASK]:
            return
        self.u += 1
        self.view = new
        if self._gap:
            self._gap -= 1
            return
        self._send(b"delta", delta, mono, now_ms)

    def _poll_top(self, new: View, mono: float, now_ms: int) -> None:
        if self._crossed:
            self._crossed = False
            ticks, lots = next(iter(new[ASK].items()))
            self.u += 1
            self._fake = (BID, ticks)
            self._send(b"snapshot", ({ticks: lots}, new[ASK]), mono, now_ms)
            return
        if new != self.view or self._fake is not None:
            self._fake = None
            self.u += 1
            self.view = new
            if self._gap:
                self._gap -= 1
                return
            self._send(b"snapshot", new, mono, now_ms)
        elif mono - self._last_push >= self.repush:
            self._send(b"snapshot", new, mono, now_ms)

    def _send(self, kind: bytes, view: View, mono: float, now_ms: int) -> None:
        self._last_push = mono
        publish(self.channel, self._frame(kind, view, now_ms), mono, wrap=False)

    def _frame(self, kind: bytes, view: View, now_ms: int) -> bytes:
        model = feed_model(self.feed)
        bids = format_levels(self.feed, sorted(view[BID].items(), reverse=True))
        asks = format_levels(self.feed, sorted(view[ASK].items()))
        head = self._head % ((kind, now_ms) if self._linear else (now_ms, kind))
        return head + b'"data":{"s":"%s","b":%s,"a":%s,"u":%d,"seq":%d},"cts":%d}' % (
            self._symbol,
            bids,
            asks,
            self.u,
            model.cross_seq(),
            model.book.last_change_ms,
        )

    def _top(self) -> View:
        book = feed_model(self.feed).book
        return dict(book.top(BID, self.depth)), dict(book.top(ASK, self.depth))


class BybitKlinePublisher(KlineCycle):
    """One ``kline.{interval}.{symbol}`` topic: at a boundary one frame carries both candles."""

    def emit(self, closed: Bar | None, current: Bar | None, mono: float, now_ms: int) -> None:
        """Send the closed candle (``confirm:true``) and the open one in one frame."""
        items = [self._item(bar, bar is closed, now_ms) for bar in (closed, current) if bar is not None]
        self._send(items, mono, now_ms)

    def _item(self, bar: Bar, confirm: bool, now_ms: int) -> bytes:
        text = bar_text(bar, self.feed.instrument)
        return (
            b'{"start":%d,"end":%d,"interval":"%s","open":"%s","close":"%s","high":"%s","low":"%s",'
            b'"volume":"%s","turnover":"%s","confirm":%s,"timestamp":%d}'
        ) % (
            bar.start,
            self.interval.next_start(bar.start) - 1,
            self.interval.name.encode(),
            text.open,
            text.close,
            text.high,
            text.low,
            text.volume,
            text.quote,
            b"true" if confirm else b"false",
            now_ms,
        )

    def _send(self, items: list[bytes], mono: float, now_ms: int) -> None:
        if not items:
            return
        payload = b'{"topic":"%s","data":[%s],"ts":%d,"type":"snapshot"}' % (
            self.channel.stream.encode(),
            b",".join(items),
            now_ms,
        )
        publish(self.channel, payload, mono, wrap=False)


def is_timed_topic(topic: str) -> bool:
    """Whether a topic is an ``orderbook`` or ``kline`` topic with a valid parameter."""
    parts = topic.split(".")
    if len(parts) != 3:
        return False
    if parts[0] == "orderbook":
        return parts[1] in _DEPTH_NAMES
    return parts[0] == "kline" and parts[1] in BYBIT_INTERVALS


def bybit_publisher(channel: Channel, feed: SyntheticFeed, timing: StreamTiming) -> Publisher | None:
    """The publisher of an ``orderbook`` or ``kline`` topic, or None for other topics.

    Args:
        channel: The subscribed topic.
        feed: The symbol's feed; it must have a model.
        timing: Push intervals.
    """
    parts = channel.stream.split(".")
    if len(parts) != 3:
        return None
    kind, param, _ = parts
    if kind == "orderbook" and param.isdigit() and int(param) in DEPTHS:
        depth = int(param)
        return BybitBookPublisher(
            channel,
            feed,
            depth=depth,
            interval=timing.bybit_interval(depth),
            repush=timing.bybit_depth1_repush,
        )
    if kind == "kline" and param in BYBIT_INTERVALS:
        return BybitKlinePublisher(channel, feed, interval=BYBIT_INTERVALS[param], every=timing.bybit_kline)
    return None
