"""The synthetic market without sockets: book, model, candles, history, Bybit trade frames."""

from __future__ import annotations

import calendar
import random
from decimal import Decimal

import orjson

from wadm.emulator.binance import default_instrument
from wadm.emulator.book import ASK, BID
from wadm.emulator.bybit import BybitTradeSink, bybit_instrument, trade_id_text
from wadm.emulator.hub import Hub
from wadm.emulator.klines import BINANCE_INTERVALS, BYBIT_INTERVALS, MINUTE_MS, Bar, BarSeries
from wadm.emulator.market import SyntheticFeed, SyntheticSpec, TradeBatch
from wadm.emulator.model import attach_model

T0 = calendar.timegm((2026, 3, 4, 10, 0, 0)) * 1000  # a Wednesday


def _feed(max_fills: int = 1, book: bool | None = None, market: str = "spot") -> tuple[SyntheticFeed, list[int]]:
    clock = [T0]
    spec = SyntheticSpec(market=market, symbol="BTCUSDT", max_fills=max_fills, book=book, book_levels=50)
    feed = SyntheticFeed(
        spec,
        default_instrument(market, "BTCUSDT"),
        rng=random.Random(4),
        sink=lambda batch: None,
        listening=lambda: True,
        clock=lambda: clock[0],
    )
    return feed, clock


def test_model_trades_consume_the_book_and_build_bars() -> None:
    feed, clock = _feed(max_fills=3)
    model = attach_model(feed, seed=1, uid_jump=1)
    assert model is not None and attach_model(feed, seed=2) is model
    book = model.book
    uid = book.uid
    for _ in range(400):
        clock[0] += 50
        model.advance(clock[0])  # the book's own activity first, as generate() does
        bids_before = dict(book.sides[BID])
        asks_before = dict(book.sides[ASK])
        batch = model.generate(7, clock[0])
        assert book.best[BID] < book.best[ASK]
        assert book.best[BID] == max(book.sides[BID]) and book.best[ASK] == min(book.sides[ASK])
        assert len(book.sides[BID]) <= 50 and len(book.sides[ASK]) <= 50
        first_price = batch.prices[0]
        side = bids_before if batch.makers[0] else asks_before
        assert first_price == feed.price_text(max(side) if batch.makers[0] else min(side))
        assert batch.aggs is not None
        for first, last, qty in batch.aggs:  # one taker order: same price and side
            assert len({batch.prices[i] for i in range(first, last + 1)}) == 1
            assert sum(Decimal(batch.qtys[i].decode()) for i in range(first, last + 1)) == Decimal(qty.decode())
    changes = book.changes_since(uid)
    assert [c[0] for c in changes] == list(range(uid + 1, book.uid + 1))  # contiguous ids
    bars = model.bars.candles(BINANCE_INTERVALS["1m"], None, None, 100)
    assert sum(b.trades for b in bars) == 2800
    assert bars[0].start == T0 and all(b.start == bars[0].start + i * MINUTE_MS for i, b in enumerate(bars))
    # A stale view undoes the last changes exactly.
    bids, asks, old = book.state_before(10)
    assert old == book.uid - 10 and (bids, asks) != (book.sides[BID], book.sides[ASK])
    for _, side_, ticks, lots, _ in book.changes_since(old):  # replaying them gives the book back
        target = bids if side_ == BID else asks
        if lots:
            target[ticks] = lots
        else:
            target.pop(ticks, None)
    assert (bids, asks) == (book.sides[BID], book.sides[ASK])


def test_pure_trade_feed_has_no_model() -> None:
    feed, _ = _feed(book=False)
    assert attach_model(feed, seed=1) is None and feed.model is None


def test_intervals_align_like_the_venues() -> None:
    ts = T0 + 37 * MINUTE_MS + 5
    assert BINANCE_INTERVALS["5m"].start_of(ts) == T0 + 35 * MINUTE_MS
    assert BINANCE_INTERVALS["1h"].start_of(ts) == T0
    monday = calendar.timegm((2026, 3, 2, 0, 0, 0)) * 1000
    assert BINANCE_INTERVALS["1w"].start_of(ts) == monday == BYBIT_INTERVALS["W"].start_of(ts)
    month = BYBIT_INTERVALS["M"]
    assert month.start_of(ts) == calendar.timegm((2026, 3, 1, 0, 0, 0)) * 1000
    assert month.next_start(calendar.timegm((2026, 12, 1, 0, 0, 0)) * 1000) == (
        calendar.timegm((2027, 1, 1, 0, 0, 0)) * 1000
    )
    series = BarSeries(100, T0)
    series.add(Bar(T0 + 1000, 101, 103, 99, 102, 10, 1010, 4, 1, 4))
    series.add(Bar(T0 + 2 * MINUTE_MS + 5, 104, 104, 104, 104, 1, 104, 1, 5, 5))
    series.roll(T0 + 3 * MINUTE_MS)
    minutes = series.candles(BYBIT_INTERVALS["1"], None, None, 10)
    expected = [(101, 102, 4), (102, 102, 0), (104, 104, 1), (104, 104, 0)]
    assert [(b.open, b.close, b.trades) for b in minutes] == expected
    three = series.candles(BYBIT_INTERVALS["3"], T0, None, 10)
    assert [(b.open, b.high, b.low, b.close, b.volume, b.first_id, b.last_id) for b in three] == [
        (101, 104, 99, 104, 11, 1, 5),
        (104, 104, 104, 104, 0, -1, -1),
    ]


def test_history_regenerates_skipped_runs_with_contiguous_agg_ids() -> None:
    feed, _ = _feed(max_fills=4)
    history = feed.history
    assert history is not None
    feed.record(feed.generate(50, T0))
    feed._skip(200, T0 + 5)  # nobody listening: only the recipe is kept
    feed.record(feed.generate(50, T0 + 10))
    first = history.first_agg_id
    assert first is not None
    rows = history.aggs_from_id(first, 1000)
    assert [r.agg_id for r in rows] == list(range(first, feed.next_agg_id))
    assert [r.first_id for r in rows] == sorted(r.first_id for r in rows)
    assert rows[-1].last_id == feed.next_trade_id - 1
    assert history.aggs_from_id(first, 1000) == rows  # stable
    assert [r.agg_id for r in history.aggs_between(None, None, 5)] == [r.agg_id for r in rows[-5:]]
    assert {r.ts_ms for r in history.aggs_between(T0 + 5, T0 + 5, 1000)} == {T0 + 5}
    recent = history.recent_trades(30)
    assert [t.trade_id for t in recent] == list(range(feed.next_trade_id - 1, feed.next_trade_id - 31, -1))
    small = SyntheticFeed(
        SyntheticSpec(market="spot", symbol="X", history=100),
        default_instrument("spot", "X"),
        rng=random.Random(1),
        sink=lambda batch: None,
        listening=lambda: True,
    )
    for i in range(10):
        small.record(small.generate(30, T0 + i))
    assert small.history is not None and len(small.history) == 90  # whole batches of 30 within 100
    # A model attached later starts its bars with the trades already generated.
    model = attach_model(feed, seed=3)
    assert model is not None
    bar = model.bars.candles(BINANCE_INTERVALS["1m"], None, None, 1)[0]
    assert (bar.trades, bar.first_id, bar.last_id) == (300, rows[0].first_id, feed.next_trade_id - 1)
    assert bar.volume == sum(round(float(r.qty) * 10**5) for r in rows)


def test_bybit_trade_frames_chunk_and_ids() -> None:
    sink = BybitTradeSink(Hub(), "linear", "BTCUSDT")
    n = 2500
    batch = TradeBatch(T0, 7, [b"65000.10"] * n, [b"0.001"] * n, [i % 2 == 0 for i in range(n)], 0)
    frames = [orjson.loads(p) for p in sink.payloads(batch)]
    assert [len(f["data"]) for f in frames] == [1024, 1024, 452]
    ids = [t["i"] for f in frames for t in f["data"]]
    assert ids[0] == trade_id_text("linear", 7) and len(set(ids)) == n
    assert frames[0]["data"][0]["S"] == "Sell" and frames[0]["data"][1]["S"] == "Buy"
    assert trade_id_text("spot", 7).isdigit()
    inst = bybit_instrument("spot", "BTCUSDT")
    assert inst.price_text(6514000) == b"65140" and inst.qty_text(14000) == b"0.014"
