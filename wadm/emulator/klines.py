"""Candles built from a feed's synthetic trades: one-minute base bars and intervals.

`BarSeries` keeps contiguous one-minute bars (a minute without trades is a flat
bar at the previous close). Longer intervals (``5m``, ``1h``, ``D``, ``1M`` ...)
are merged from them on demand with `Interval`. Prices are integer ticks and
sizes integer lots, so sums are exact; the venue modules format them.
"""

from __future__ import annotations

import calendar
import time
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from wadm.emulator.market import Instrument, format_decimal, strip_zeros

__all__ = [
    "BINANCE_INTERVALS",
    "BYBIT_INTERVALS",
    "MINUTE_MS",
    "Bar",
    "BarSeries",
    "BarText",
    "Interval",
    "bar_text",
]

MINUTE_MS = 60_000
_DAY_MS = 1440 * MINUTE_MS
_MONDAY_OFFSET_MS = 4 * _DAY_MS
"""1970-01-01 was a Thursday; Binance and Bybit weeks start on Monday."""


@dataclass(slots=True)
class Bar:
    """One candle in ticks and lots.

    Attributes:
        start: Open time, ms since the epoch.
        open: Open price (ticks).
        high: High price (ticks).
        low: Low price (ticks).
        close: Close price (ticks).
        volume: Base volume (lots).
        quote: Quote volume in ``tick * lot`` units.
        trades: Number of trades.
        first_id: First trade id, -1 without trades.
        last_id: Last trade id, -1 without trades.
        buy_volume: Taker-buy base volume (lots).
        buy_quote: Taker-buy quote volume (``tick * lot`` units).
    """

    start: int
    open: int
    high: int
    low: int
    close: int
    volume: int = 0
    quote: int = 0
    trades: int = 0
    first_id: int = -1
    last_id: int = -1
    buy_volume: int = 0
    buy_quote: int = 0

    @classmethod
    def flat(cls, start: int, price: int) -> Bar:
        """A bar without trades at ``price``."""
        return cls(start, price, price, price, price)

    def merge(self, other: Bar) -> None:
        """Extend this bar with a later one (same or longer interval)."""
        if other.trades:
            if not self.trades:
                self.open = other.open
                self.high = other.high
                self.low = other.low
                self.first_id = other.first_id
            else:
                self.high = max(self.high, other.high)
                self.low = min(self.low, other.low)
            self.last_id = other.last_id
        self.close = other.close
        self.volume += other.volume
        self.quote += other.quote
        self.trades += other.trades
        self.buy_volume += other.buy_volume
        self.buy_quote += other.buy_quote


class Interval:
    """A candle interval: its name and how it aligns bar open times."""

    __slots__ = ("minutes", "months", "name", "offset")

    def __init__(self, name: str, minutes: int = 0, *, months: int = 0, offset: int = 0) -> None:
        """Create an interval.

        Args:
            name: The venue's name for it (``1m``, ``60``, ``D`` ...).
            minutes: Fixed length in minutes (0 for calendar months).
            months: Calendar months (for ``1M``/``M``).
            offset: Alignment offset in ms (weeks start on Monday).
        """
        self.name = name
        self.minutes = minutes
        self.months = months
        self.offset = offset

    def start_of(self, ts_ms: int) -> int:
        """Open time of the bar that contains ``ts_ms``."""
        if self.months:
            tm = time.gmtime(ts_ms // 1000)
            return calendar.timegm((tm.tm_year, tm.tm_mon, 1, 0, 0, 0)) * 1000
        size = self.minutes * MINUTE_MS
        return (ts_ms - self.offset) // size * size + self.offset

    def next_start(self, start: int) -> int:
        """Open time of the bar after the one opening at ``start``."""
        if self.months:
            tm = time.gmtime(start // 1000)
            year, month = divmod(tm.tm_mon, 12)
            return calendar.timegm((tm.tm_year + year, month + 1, 1, 0, 0, 0)) * 1000
        return start + self.minutes * MINUTE_MS


def _table(names: list[tuple[str, int]], week: str, month: str) -> dict[str, Interval]:
    table = {name: Interval(name, minutes) for name, minutes in names}
    table[week] = Interval(week, 7 * 1440, offset=_MONDAY_OFFSET_MS)
    table[month] = Interval(month, months=1)
    return table


BINANCE_INTERVALS: dict[str, Interval] = _table(
    [
        ("1m", 1),
        ("3m", 3),
        ("5m", 5),
        ("15m", 15),
        ("30m", 30),
        ("1h", 60),
        ("2h", 120),
        ("4h", 240),
        ("6h", 360),
        ("8h", 480),
        ("12h", 720),
        ("1d", 1440),
        ("3d", 3 * 1440),
    ],
    "1w",
    "1M",
)
"""Binance kline intervals (``1s`` is not served: the base bar is one minute)."""

BYBIT_INTERVALS: dict[str, Interval] = _table(
    [(str(m), m) for m in (1, 3, 5, 15, 30, 60, 120, 240, 360, 720)] + [("D", 1440)],
    "W",
    "M",
)
"""Bybit kline intervals."""


class BarSeries:
    """Contiguous one-minute bars of one symbol, oldest evicted first."""

    def __init__(self, price: int, now_ms: int, *, capacity: int = 10_080) -> None:
        """Start the series with a flat bar.

        Args:
            price: Price (ticks) of the first flat bar.
            now_ms: Current time; the first bar is the minute containing it.
            capacity: Bars to keep (default: one week).
        """
        self.capacity = capacity
        self.bars: deque[Bar] = deque([Bar.flat(now_ms // MINUTE_MS * MINUTE_MS, price)], maxlen=capacity)

    @property
    def current(self) -> Bar:
        """The newest bar."""
        return self.bars[-1]

    def roll(self, now_ms: int) -> Bar:
        """Add flat bars up to the minute containing ``now_ms``; return the newest bar."""
        bars = self.bars
        last = bars[-1]
        start = now_ms // MINUTE_MS * MINUTE_MS
        if start <= last.start:
            return last
        if (start - last.start) // MINUTE_MS > self.capacity:
            bars.clear()
            bars.append(Bar.flat(start, last.close))
            return bars[-1]
        nxt = last.start + MINUTE_MS
        while nxt <= start:
            bars.append(Bar.flat(nxt, last.close))
            nxt += MINUTE_MS
        return bars[-1]

    def add(self, trades: Bar) -> None:
        """Account trades summarised as a bar whose ``start`` is their trade time."""
        bar = self.bars[-1]
        if trades.start >= bar.start + MINUTE_MS:
            bar = self.roll(trades.start)
        bar.merge(trades)

    def candle(self, interval: Interval, start: int) -> Bar | None:
        """The bar of ``interval`` opening at ``start`` merged from minute bars, if any."""
        out = self.candles(interval, start, interval.next_start(start) - 1, 1)
        return out[0] if out else None

    def candles(self, interval: Interval, start_ms: int | None, end_ms: int | None, limit: int) -> list[Bar]:
        """Bars of ``interval`` opening in ``[start_ms, end_ms]``, oldest first.

        With ``start_ms`` the oldest ``limit`` bars from there; otherwise the
        newest ``limit`` bars up to ``end_ms``. Only minutes still kept count.
        """
        bars = self.bars
        if not bars or limit <= 0:
            return []
        first = bars[0].start
        last = bars[-1].start
        lo = interval.start_of(first) if start_ms is None else interval.start_of(max(start_ms, first))
        if start_ms is not None and lo < start_ms:
            lo = interval.next_start(lo)
        hi = last if end_ms is None else min(end_ms, last)
        if lo > hi:
            return []
        out: list[Bar] = []
        start = lo
        index = max(0, (start - first) // MINUTE_MS)
        while start <= hi:
            stop = interval.next_start(start)
            merged: Bar | None = None
            while index < len(bars) and bars[index].start < stop:
                bar = bars[index]
                if merged is None:
                    merged = Bar(start, bar.open, bar.high, bar.low, bar.close)
                merged.merge(bar)
                index += 1
            if merged is not None:
                out.append(merged)
                if start_ms is not None and len(out) >= limit:
                    break
            start = stop
        if start_ms is not None:
            return out[:limit]
        return out[-limit:]


class BarText(NamedTuple):
    """A bar's values formatted for the wire."""

    open: bytes
    high: bytes
    low: bytes
    close: bytes
    volume: bytes
    quote: bytes
    buy_volume: bytes
    buy_quote: bytes


def bar_text(bar: Bar, inst: Instrument, quote_decimals: int = 0) -> BarText:
    """Format a bar with an instrument's grid.

    Args:
        bar: The bar.
        inst: Price and quantity grid.
        quote_decimals: Minimum decimals of quote volumes (Binance spot: 8).
    """
    unit = inst.tick_decimals + inst.lot_decimals
    shown = max(unit, quote_decimals)

    def quote(value: int) -> bytes:
        text = format_decimal(value, unit, shown)
        return strip_zeros(text) if inst.strip else text

    return BarText(
        inst.price_text(bar.open),
        inst.price_text(bar.high),
        inst.price_text(bar.low),
        inst.price_text(bar.close),
        inst.qty_text(bar.volume),
        quote(bar.quote),
        inst.qty_text(bar.buy_volume),
        quote(bar.buy_quote),
    )
