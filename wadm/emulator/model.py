"""Market mode of a synthetic feed: trades that consume a book, and klines.

A `MarketModel` is attached to a `SyntheticFeed` (``feed.model``) when
something needs a book or candles. From then on each feed tick first applies
the book's own activity (``SyntheticSpec.book_updates`` changes per second),
then generates the due trades against the book: a buy aggressor takes the
best ask, a sell aggressor the best bid, and an aggregate trade
(``max_fills > 1``) fills at one price until the level is exhausted. Every
trade also goes into the one-minute bars. Trades, depth diffs, Bybit
order-book messages and klines therefore all describe the same market.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from wadm.emulator.book import ASK, BID, SyntheticBook
from wadm.emulator.klines import Bar, BarSeries
from wadm.emulator.market import TradeBatch

if TYPE_CHECKING:
    from wadm.emulator.market import SyntheticFeed

__all__ = ["SEQ_BASE", "MarketModel", "attach_model"]

SEQ_BASE = 700_000_000_000
"""Origin of the Bybit cross sequence (``seq``) derived from trade ids."""

_POOL_BITS = 9


class MarketModel:
    """The book and bars of one feed; generates the feed's trades in market mode."""

    def __init__(self, feed: SyntheticFeed, *, seed: int, uid_jump: int = 1) -> None:
        """Build a book around the feed's last price.

        Args:
            feed: The feed this model drives.
            seed: Seed of the model's random source.
            uid_jump: Largest step between two book update ids (1: contiguous).
        """
        spec = feed.spec
        self.feed = feed
        self.rng = random.Random(seed)
        now = feed.clock()
        self.book = SyntheticBook(
            rng=self.rng,
            mid=feed.ticks,
            levels=spec.book_levels,
            lot_pool=feed.lot_pool,
            uid=1_000_000_000 + self.rng.randrange(1_000_000_000),
            uid_jump=uid_jump,
            now_ms=now,
        )
        self.bars = self._seed_bars(now)
        self._book_rate = max(0.0, spec.book_updates)
        self._last_ms = now
        self._due_events = 0.0

    def _seed_bars(self, now: int) -> BarSeries:
        """Start the bars with the trades the feed generated before the model existed.

        NOTE: a one-off pass over the history (at most ``SyntheticSpec.history`` trades).
        """
        feed = self.feed
        history = feed.history
        batches = list(history.batches()) if history is not None else []
        if not batches:
            return BarSeries(feed.ticks, now)
        inst = feed.instrument
        tick_scale, lot_scale = 10**inst.tick_decimals, 10**inst.lot_decimals
        ticks_of: dict[bytes, int] = {}
        lots_of: dict[bytes, int] = {}
        bars: BarSeries | None = None
        for batch in batches:
            trades: Bar | None = None
            for i, (p, q, maker) in enumerate(zip(batch.prices, batch.qtys, batch.makers, strict=True)):
                ticks = ticks_of.get(p)
                if ticks is None:
                    ticks = ticks_of[p] = round(float(p) * tick_scale)
                lots = lots_of.get(q)
                if lots is None:
                    lots = lots_of[q] = round(float(q) * lot_scale)
                tid = batch.first_id + i
                if trades is None:
                    trades = Bar(batch.ts_ms, ticks, ticks, ticks, ticks, first_id=tid)
                    bars = bars or BarSeries(ticks, batch.ts_ms)
                trades.high = max(trades.high, ticks)
                trades.low = min(trades.low, ticks)
                trades.close = ticks
                trades.last_id = tid
                trades.trades += 1
                trades.volume += lots
                trades.quote += ticks * lots
                if not maker:
                    trades.buy_volume += lots
                    trades.buy_quote += ticks * lots
            if trades is not None and bars is not None:
                bars.add(trades)
        if bars is None:
            return BarSeries(feed.ticks, now)
        bars.roll(now)
        return bars

    def cross_seq(self) -> int:
        """The Bybit cross sequence now (after the last trade)."""
        return SEQ_BASE + 3 * (self.feed.next_trade_id - 1) + 1

    def advance(self, ts_ms: int) -> None:
        """Apply the book activity due since the previous call."""
        elapsed = ts_ms - self._last_ms
        if elapsed <= 0:
            return
        self._last_ms = ts_ms
        self.book.now_ms = ts_ms
        self._due_events += elapsed / 1000.0 * self._book_rate
        events = int(self._due_events)
        if events:
            self._due_events -= events
            self.book.evolve(min(events, 10_000))

    def generate(self, count: int, ts_ms: int) -> TradeBatch:
        """Generate ``count`` trades against the book (and the due book activity).

        Args:
            count: Number of trades.
            ts_ms: Trade time.

        Returns:
            The batch, in the same shape as the fast generator's.
        """
        self.advance(ts_ms)
        feed = self.feed
        book = self.book
        book.now_ms = ts_ms
        rng = self.rng
        getrandbits = rng.getrandbits
        pool = feed.lot_pool
        price_text, price_cache = feed.price_text, feed.price_cache
        qty_text, qty_cache = feed.qty_text, feed.qty_cache
        max_fills = max(1, feed.spec.max_fills)
        best, sides, log = book.best, book.sides, book.changes.append
        jump = book.uid_jump
        uid = book.uid
        first_id = feed.next_trade_id
        tid = first_id
        prices: list[bytes] = []
        qtys: list[bytes] = []
        makers: list[bool] = []
        aggs: list[tuple[int, int, bytes]] | None = None if max_fills == 1 else []
        ticks = feed.ticks
        volume = quote = buy_volume = buy_quote = 0
        high, low, open_ticks = 0, 1 << 62, -1
        i = 0
        while i < count:
            r = getrandbits(_POOL_BITS + 3)
            maker = bool(r & 4)
            side = BID if maker else ASK
            levels = sides[side]
            fills = 1 if aggs is None else min(count - i, 1 + rng.randrange(max_fills))
            price = best[side]
            first = i
            total = 0
            for f in range(fills):
                if f and best[side] != price:
                    break
                want = pool[r >> 3] if f == 0 else pool[getrandbits(_POOL_BITS)]
                ticks = best[side]
                avail = levels[ticks]
                if want < avail:
                    # PERF: the common partial fill, inlined from SyntheticBook.take.
                    lots = want
                    levels[ticks] = avail - want
                    uid += 1 if jump == 1 else 1 + rng.randrange(jump)
                    log((uid, side, ticks, avail - want, avail))
                    if best[ASK] - best[BID] > 2:
                        book.uid = uid
                        book.tighten()
                        uid = book.uid
                else:
                    book.uid = uid
                    ticks, lots = book.take(side, want)
                    uid = book.uid
                prices.append(price_cache.get(ticks) or price_text(ticks))
                qtys.append(qty_cache.get(lots) or qty_text(lots))
                makers.append(maker)
                tid += 1
                total += lots
                i += 1
                value = ticks * lots
                volume += lots
                quote += value
                if not maker:
                    buy_volume += lots
                    buy_quote += value
                if ticks > high:
                    high = ticks
                if ticks < low:
                    low = ticks
                if open_ticks < 0:
                    open_ticks = ticks
            if aggs is not None:
                aggs.append((first, i - 1, qty_text(total)))
        if count:
            book.uid = uid
            book.last_change_ms = ts_ms
            trades = Bar(ts_ms, open_ticks, high, low, ticks, volume, quote, count, first_id, tid - 1)
            trades.buy_volume, trades.buy_quote = buy_volume, buy_quote
            self.bars.add(trades)
        book.trim()
        feed.ticks = ticks
        first_agg = feed.next_agg_id
        feed.next_trade_id = tid
        feed.next_agg_id += count if aggs is None else len(aggs)
        feed.generated += count
        return TradeBatch(ts_ms, first_id, prices, qtys, makers, first_agg, aggs)


def attach_model(feed: SyntheticFeed, *, seed: int, uid_jump: int = 1) -> MarketModel | None:
    """Attach a model to a feed unless it has one or is a pure trade feed.

    Args:
        feed: The feed.
        seed: Seed of a new model's random source.
        uid_jump: Largest step between two update ids of a new model's book.

    Returns:
        The feed's model, or None when ``spec.book`` is False.
    """
    if feed.model is None and feed.spec.book is not False:
        feed.model = MarketModel(feed, seed=seed, uid_jump=uid_jump)
    return feed.model
