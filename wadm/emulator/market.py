"""Synthetic trade generation: a seeded random walk on a tick grid, paced in batches.

One `SyntheticFeed` runs per (venue, market, symbol). Every timer tick it works
out how many trades are due since the rate was last set, generates them in one
batch and hands the `TradeBatch` to a venue sink that encodes and publishes
it. Trade ids (and aggregate-trade ids) are contiguous per feed, so every
connection subscribed to the same stream sees the same ids.

PERF: price and quantity strings are preformatted bytes (a small quantity
pool, a price cache), and one ``getrandbits`` call drives the price step, the
maker flag and the quantity of a trade. When nobody can receive the stream the
feed only advances its ids and records a `SkippedRun` in its history (the
trades are generated if a REST query ever asks for them).

Market mode: once a `wadm.emulator.model.MarketModel` is attached
(``feed.model``), trades come from the model instead (they consume a synthetic
order book and build klines); the fast random walk above is used only while no
depth, kline or book query needed a book (see `SyntheticSpec.book`).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wadm.emulator.history import SkippedRun, TradeHistory

if TYPE_CHECKING:
    from wadm.emulator.model import MarketModel

__all__ = [
    "Clock",
    "Instrument",
    "SyntheticFeed",
    "SyntheticSpec",
    "TradeBatch",
    "format_decimal",
    "strip_zeros",
    "wall_clock_ms",
]

Clock = Callable[[], int]
"""Returns the current time in ms since the epoch (injectable for tests)."""


def wall_clock_ms() -> int:
    """The system clock in ms since the epoch (the default `Clock`)."""
    return time.time_ns() // 1_000_000


def strip_zeros(text: bytes) -> bytes:
    """Drop trailing fractional zeros (and a bare dot): ``b"65140.00"`` -> ``b"65140"``."""
    if b"." not in text:
        return text
    return text.rstrip(b"0").rstrip(b".")


_QTY_POOL_BITS = 9
_MAX_CATCH_UP_S = 0.05
"""A tick generates at most this many seconds' worth of trades (bounds batch size)."""
_MAX_LAG_S = 1.0
"""When further behind than this, the schedule restarts instead of bursting."""


def format_decimal(units: int, unit_decimals: int, shown_decimals: int) -> bytes:
    """Format an integer count of ``10**-unit_decimals`` steps as a decimal string.

    Args:
        units: The value in steps, e.g. 6183763 with 2 unit decimals for 61837.63.
        unit_decimals: Decimals of one step.
        shown_decimals: Decimals to print (>= ``unit_decimals``), zero padded.

    Returns:
        ASCII bytes such as ``b"61837.63000000"``.
    """
    sign = b"-" if units < 0 else b""
    units = abs(units)
    if unit_decimals == 0:
        whole, frac = units, b""
    else:
        scale = 10**unit_decimals
        whole = units // scale
        frac = b"%0*d" % (unit_decimals, units % scale)
    frac += b"0" * (shown_decimals - unit_decimals)
    return sign + (b"%d.%s" % (whole, frac) if frac else b"%d" % whole)


@dataclass(frozen=True, kw_only=True, slots=True)
class Instrument:
    """Price and quantity grid of a symbol as the venue prints it.

    Attributes:
        tick_decimals: Price step is ``10**-tick_decimals``.
        price_decimals: Decimals printed in prices.
        lot_decimals: Quantity step is ``10**-lot_decimals``.
        qty_decimals: Decimals printed in quantities.
        start_price: Initial price of the random walk.
        max_lots: Largest single-trade quantity, in lots.
        strip: Print prices and quantities without trailing zeros (Bybit spot).
    """

    tick_decimals: int
    price_decimals: int
    lot_decimals: int
    qty_decimals: int
    start_price: float
    max_lots: int = 100_000
    strip: bool = False

    def price_text(self, ticks: int) -> bytes:
        """Format a price given in ticks."""
        text = format_decimal(ticks, self.tick_decimals, self.price_decimals)
        return strip_zeros(text) if self.strip else text

    def qty_text(self, lots: int) -> bytes:
        """Format a quantity given in lots."""
        text = format_decimal(lots, self.lot_decimals, self.qty_decimals)
        return strip_zeros(text) if self.strip else text


@dataclass(frozen=True, kw_only=True, slots=True)
class SyntheticSpec:
    """Configuration of one synthetic trade generator.

    Attributes:
        market: Venue market, e.g. ``spot`` or ``usdm``.
        symbol: Venue symbol, e.g. ``BTCUSDT``.
        rate: Trades per second (``@trade`` frames per second).
        venue: Venue name.
        max_fills: Fills per aggregate trade are drawn from ``1..max_fills``;
            with 1 every trade is also one aggregate trade.
        start_price: Overrides the venue's default start price.
        instrument: Overrides the venue's default price/quantity grid.
        book: Order-book model. None (default): attached on first need (a
            depth, order-book or kline subscriber, a REST depth or kline
            query, `Emulator.true_book`, a book fault). True: from the start.
            False: never; a pure trade feed (depth and kline streams stay
            silent, REST depth and klines are empty).
        book_levels: Price levels per side of the synthetic book.
        book_updates: Book changes per second besides the trades (orders
            added and cancelled around the top of the book).
        history: Trades kept for REST backfill; 0 keeps none.
    """

    market: str
    symbol: str
    rate: float = 10.0
    venue: str = "binance"
    max_fills: int = 1
    start_price: float | None = None
    instrument: Instrument | None = None
    book: bool | None = None
    book_levels: int = 1000
    book_updates: float = 20.0
    history: int = 200_000


@dataclass(slots=True)
class TradeBatch:
    """Trades generated in one tick, all stamped with the same event time.

    Attributes:
        ts_ms: Event and trade time, ms since the epoch.
        first_id: Trade id of ``prices[0]``; ids are contiguous.
        prices: Price per trade, formatted.
        qtys: Quantity per trade, formatted.
        makers: Per trade, whether the buyer was the maker.
        first_agg_id: Aggregate id of the first aggregate in the batch.
        aggs: Aggregates as ``(first_index, last_index, qty)`` into the trade
            lists; None when every trade is its own aggregate.
    """

    ts_ms: int
    first_id: int
    prices: list[bytes]
    qtys: list[bytes]
    makers: list[bool]
    first_agg_id: int
    aggs: list[tuple[int, int, bytes]] | None = field(default=None)

    @property
    def count(self) -> int:
        """Number of trades."""
        return len(self.prices)

    @property
    def agg_count(self) -> int:
        """Number of aggregate trades."""
        return len(self.prices) if self.aggs is None else len(self.aggs)


TradeSink = Callable[[TradeBatch], None]
"""Receives each batch; encodes and publishes it."""
Listening = Callable[[], bool]
"""Returns whether any connection could receive the feed's streams now."""
Backlogged = Callable[[], bool]
"""Returns whether a receiver has too much unsent data; the feed then holds back."""


class SyntheticFeed:
    """Seeded random-walk trade generator for one symbol, paced by the event loop."""

    def __init__(
        self,
        spec: SyntheticSpec,
        instrument: Instrument,
        *,
        rng: random.Random,
        sink: TradeSink,
        listening: Listening,
        backlogged: Backlogged | None = None,
        batch_interval: float = 0.005,
        clock: Clock = wall_clock_ms,
    ) -> None:
        """Create a stopped feed.

        Args:
            spec: Generator configuration.
            instrument: Price/quantity grid of the symbol.
            rng: Random source (seed it for reproducible values).
            sink: Called with every generated batch.
            listening: Cheap check whether anyone can receive the batch; when
                it returns False the feed only advances its ids.
            backlogged: Check whether receivers lag behind; while it returns
                True the feed generates nothing, and when it falls more than a
                second behind it restarts its schedule (the achieved rate then
                drops below the target: the sockets set the pace).
            batch_interval: Shortest time between two ticks, in seconds.
            clock: Source of trade timestamps (ms since the epoch).
        """
        self.spec = spec
        self.market = spec.market
        self.symbol = spec.symbol
        self.instrument = instrument
        self._rng = rng
        self._sink = sink
        self._listening = listening
        self._backlogged = backlogged
        self._batch_interval = batch_interval
        self._rate = float(spec.rate)
        self._max_fills = max(1, spec.max_fills)
        self.clock = clock
        self.ticks = max(1, round(instrument.start_price * 10**instrument.tick_decimals))
        """Last trade price in ticks."""
        self.price_cache: dict[int, bytes] = {}
        """Formatted prices by ticks (read directly by the market model's hot loop)."""
        self.qty_cache: dict[int, bytes] = {}
        """Formatted quantities by lots."""
        self._qty_pool = self._make_qty_pool()
        self.lot_pool = [self._lots_of[q] for q in self._qty_pool]
        """Trade sizes in lots, drawn uniformly (the model uses the same sizes)."""
        self.history = TradeHistory(spec.history, self._materialize) if spec.history > 0 else None
        self.model: MarketModel | None = None
        """The order-book model, once attached (market mode)."""
        self.next_trade_id = 1_000_000_000 + rng.randrange(1_000_000)
        self.next_agg_id = 100_000_000 + rng.randrange(1_000_000)
        self.generated = 0
        """Trades generated since start (delivered or not)."""
        self.paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._origin = 0.0
        self._since_origin = 0
        self._started_at = 0.0

    # ------------------------------------------------------------- control

    @property
    def rate(self) -> float:
        """Target trades per second."""
        return self._rate

    @property
    def running(self) -> bool:
        """True while the feed is started and not paused."""
        return self._loop is not None and not self.paused

    def start(self) -> None:
        """Start generating on the running event loop."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._started_at = time.monotonic()
        self._restart_schedule()

    def stop(self) -> None:
        """Stop generating."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None

    def set_rate(self, rate: float) -> None:
        """Change the target rate; the new rate counts from now.

        Args:
            rate: Trades per second, >= 0.
        """
        if rate < 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a finite number >= 0, got {rate!r}")
        self._rate = float(rate)
        self._restart_schedule()

    def pause(self) -> None:
        """Stop generating until `resume`."""
        self.paused = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def resume(self) -> None:
        """Resume after `pause`."""
        if not self.paused:
            return
        self.paused = False
        self._restart_schedule()

    def take_trade_id(self) -> int:
        """Consume one trade id without publishing a trade (a "spent" id)."""
        tid = self.next_trade_id
        self.next_trade_id += 1
        return tid

    def take_agg_id(self) -> int:
        """Consume one aggregate-trade id without publishing a trade."""
        aid = self.next_agg_id
        self.next_agg_id += 1
        return aid

    def current_price(self) -> bytes:
        """The last traded price, formatted."""
        return self._price(self.ticks)

    def price_text(self, ticks: int) -> bytes:
        """Format a price in ticks (cached)."""
        return self._price(ticks)

    def qty_text(self, lots: int) -> bytes:
        """Format a quantity in lots (cached)."""
        cache = self.qty_cache
        text = cache.get(lots)
        if text is None:
            if len(cache) > 8192:
                cache.clear()
            text = cache[lots] = self.instrument.qty_text(lots)
        return text

    def achieved_rate(self) -> float:
        """Average trades per second since start."""
        if self._loop is None:
            return 0.0
        elapsed = time.monotonic() - self._started_at
        return self.generated / elapsed if elapsed > 0 else 0.0

    # --------------------------------------------------------- generation

    def generate(self, count: int, ts_ms: int) -> TradeBatch:
        """Generate ``count`` trades and advance the ids.

        Args:
            count: Number of trades.
            ts_ms: Event/trade time to stamp them with.

        Returns:
            The batch.
        """
        first_id = self.next_trade_id
        first_agg = self.next_agg_id
        getrandbits = self._rng.getrandbits
        pool = self._qty_pool
        price_of = self._price
        ticks = self.ticks
        price = price_of(ticks)
        prices: list[bytes] = []
        qtys: list[bytes] = []
        makers: list[bool] = []
        aggs: list[tuple[int, int, bytes]] | None = None
        if self._max_fills == 1:
            for _ in range(count):
                r = getrandbits(_QTY_POOL_BITS + 3)
                step = r & 3
                if step == 0:
                    if ticks > 1:
                        ticks -= 1
                        price = price_of(ticks)
                elif step == 3:
                    ticks += 1
                    price = price_of(ticks)
                prices.append(price)
                qtys.append(pool[r >> 3])
                makers.append(bool(r & 4))
            self.next_agg_id += count
        else:
            aggs = []
            inst = self.instrument
            i = 0
            while i < count:
                r = getrandbits(_QTY_POOL_BITS + 3)
                step = r & 3
                if step == 0 and ticks > 1:
                    ticks -= 1
                    price = price_of(ticks)
                elif step == 3:
                    ticks += 1
                    price = price_of(ticks)
                maker = bool(r & 4)
                fills = min(count - i, 1 + self._rng.randrange(self._max_fills))
                lots = 0
                for _ in range(fills):
                    q = pool[getrandbits(_QTY_POOL_BITS)]
                    lots += self._lots_of[q]
                    prices.append(price)
                    qtys.append(q)
                    makers.append(maker)
                qty = inst.qty_text(lots)
                aggs.append((i, i + fills - 1, qty))
                i += fills
            self.next_agg_id += len(aggs)
        self.ticks = ticks
        self.next_trade_id += count
        self.generated += count
        return TradeBatch(ts_ms, first_id, prices, qtys, makers, first_agg, aggs)

    def _skip(self, count: int, ts_ms: int) -> None:
        """Advance ids (and the price, once) for trades nobody can receive.

        The history records how to regenerate them (`SkippedRun`).
        """
        aggs = count if self._max_fills == 1 else max(1, count * 2 // (self._max_fills + 1))
        if self.history is not None:
            self.history.add(
                SkippedRun(
                    ts_ms,
                    self.next_trade_id,
                    count,
                    self.next_agg_id,
                    aggs,
                    self.ticks,
                    self._rng.getrandbits(32),
                )
            )
        self.next_trade_id += count
        self.next_agg_id += aggs
        self.generated += count
        step = self._rng.getrandbits(2)
        if step == 0 and self.ticks > 1:
            self.ticks -= 1
        elif step == 3:
            self.ticks += 1

    def _materialize(self, run: SkippedRun) -> TradeBatch:
        """Generate the trades of a skipped run (same result for the same run)."""
        rng = random.Random(run.seed)
        pool = self._qty_pool
        ticks = run.ticks
        prices: list[bytes] = []
        qtys: list[bytes] = []
        makers: list[bool] = []
        for _ in range(run.count):
            r = rng.getrandbits(_QTY_POOL_BITS + 3)
            step = r & 3
            if step == 0 and ticks > 1:
                ticks -= 1
            elif step == 3:
                ticks += 1
            prices.append(self._price(ticks))
            qtys.append(pool[r >> 3])
            makers.append(bool(r & 4))
        aggs: list[tuple[int, int, bytes]] | None = None
        if run.agg_count != run.count:
            sizes = [1] * run.agg_count
            for _ in range(run.count - run.agg_count):
                sizes[rng.randrange(run.agg_count)] += 1
            aggs = []
            first = 0
            for size in sizes:
                last = first + size - 1
                for i in range(first + 1, last + 1):
                    prices[i], makers[i] = prices[first], makers[first]
                lots = sum(self._lots_of[q] for q in qtys[first : last + 1])
                aggs.append((first, last, self.qty_text(lots)))
                first = last + 1
        return TradeBatch(run.ts_ms, run.first_id, prices, qtys, makers, run.first_agg_id, aggs)

    def record(self, batch: TradeBatch) -> None:
        """Keep a generated batch for REST backfill (when the history is on)."""
        if self.history is not None:
            self.history.add(batch)

    def _restart_schedule(self) -> None:
        loop = self._loop
        if loop is None or self.paused:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._origin = loop.time()
        self._since_origin = 0
        if self._rate > 0:
            self._handle = loop.call_at(self._origin + 1.0 / self._rate, self._tick)

    def _tick(self) -> None:
        self._handle = None
        loop = self._loop
        if loop is None or self.paused or self._rate <= 0:
            return
        rate = self._rate
        now = loop.time()
        if self._backlogged is not None and self._backlogged():
            self._handle = loop.call_at(now + self._batch_interval, self._tick)
            return
        due = int((now - self._origin) * rate) - self._since_origin
        cap = max(1, int(rate * _MAX_CATCH_UP_S))
        if due > cap:
            if due > rate * _MAX_LAG_S:
                # NOTE: cannot keep up; restart the schedule instead of bursting.
                self._origin = now - cap / rate
                self._since_origin = 0
            due = cap
        if due > 0:
            self._since_origin += due
            model = self.model
            if model is not None:
                batch = model.generate(due, self.clock())
                self.record(batch)
                if self._listening():
                    self._sink(batch)
            elif self._listening():
                batch = self.generate(due, self.clock())
                self.record(batch)
                self._sink(batch)
            else:
                self._skip(due, self.clock())
        next_at = self._origin + (self._since_origin + 1) / rate
        self._handle = loop.call_at(max(next_at, now + self._batch_interval), self._tick)

    # ------------------------------------------------------------ helpers

    def _price(self, ticks: int) -> bytes:
        cache = self.price_cache
        text = cache.get(ticks)
        if text is None:
            if len(cache) > 4096:
                cache.clear()
            text = cache[ticks] = self.instrument.price_text(ticks)
        return text

    def _make_qty_pool(self) -> list[bytes]:
        inst = self.instrument
        rng = self._rng
        pool: list[bytes] = []
        self._lots_of: dict[bytes, int] = {}
        top = math.log(max(2, inst.max_lots))
        for _ in range(1 << _QTY_POOL_BITS):
            lots = max(1, int(math.exp(rng.uniform(0.0, top))))
            text = inst.qty_text(lots)
            pool.append(text)
            self._lots_of[text] = lots
        return pool
