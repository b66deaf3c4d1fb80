"""Profile rows summed per settled day, then reused, equal the rows of the whole window."""

from __future__ import annotations

import random

import polars as pl
import pytest

from wadm.analytics.aggregates import build_bars, chain_cvd, hour_bars, profile_rows
from wadm.analytics.bars import NS_PER_DAY
from wadm.analytics.grid import Grid
from wadm.analytics.profile import combine
from wadm.api.days import DayRows, rows_per_day
from wadm.live import Series
from wadm.records import TRADE_SCHEMA_INT_ID, Market, Venue

MIN = 60 * 10**9
HOUR = 60 * MIN
GRID = Grid(0.01, 20.0)
T0 = 1_795_000_000 * 10**9 // NS_PER_DAY * NS_PER_DAY  # a UTC midnight
SERIES = Series(Venue.BINANCE, Market.SPOT, "BTCUSDT")


def minute_bars(ts: list[int], rng: random.Random) -> pl.DataFrame:
    """1m bars (footprints on GRID, CVD chained) of a random walk from 60,000 traded at ``ts``."""
    price, prices = 60_000.0, []
    for _ in ts:
        price += rng.gauss(0, 8)
        prices.append(round(price, 2))
    trades = pl.DataFrame({"ts_event": ts, "ts_recv": ts, "id": range(1, len(ts) + 1), "price": prices,
                           "qty": [rng.randrange(1, 5000) / 1e5 for _ in ts],
                           "side": [rng.choice((1, -1)) for _ in ts]}, schema=TRADE_SCHEMA_INT_ID)
    return chain_cvd(build_bars(trades, MIN, grid=GRID, revision=1, lot=1e-5))


def _bars(days: float, every_s: int = 20) -> pl.DataFrame:
    return minute_bars(list(range(T0, T0 + int(days * NS_PER_DAY), every_s * 10**9)), random.Random(7))


@pytest.mark.parametrize("resolution", ["1m", "1h"])
@pytest.mark.parametrize("start_h", [0, 5, 30])
def test_chunks_kept_and_reused_sum_to_the_whole_window(resolution: str, start_h: int) -> None:
    minutes = _bars(3.5)
    bars = minutes if resolution == "1m" else hour_bars(minutes, HOUR, revision=2)
    end = T0 + int(3.5 * NS_PER_DAY) - 1
    settled = end - 2 * HOUR
    start = T0 + start_h * HOUR + (7 * MIN if resolution == "1m" else 0)
    window = bars.filter(pl.col("ts_event") >= start)
    expected = profile_rows(window, GRID)
    cache = DayRows()
    for attempt in range(3):  # first from nothing, then from what was kept, twice
        known = cache.known(SERIES, resolution, GRID, start, end)
        per_day, fresh = rows_per_day(window, GRID, start, end, settled, known)
        cache.keep(SERIES, resolution, GRID, fresh)
        assert combine(per_day.values()).equals(expected), f"attempt {attempt}"
        assert sorted(per_day) == sorted({t - t % NS_PER_DAY for t in window["ts_event"].to_list()})
        if attempt == 0:
            assert not known.days and not known.moving and fresh.days and fresh.moving
        else:
            assert known.days and known.moving and not fresh.days and not fresh.moving, "everything is reused"
        assert all(start <= d and d + 2 * NS_PER_DAY - 1 <= settled + NS_PER_DAY for d in fresh.days)
    # A new bar today (or a revised one) and the day is summed again; the settled days are not.
    later = pl.concat([window, window.tail(1).with_columns(pl.col("ts_event") + MIN,
                                                            pl.col("revision") + 1)])
    known = cache.known(SERIES, resolution, GRID, start, end + MIN)
    per_day, fresh = rows_per_day(later, GRID, start, end + MIN, settled, known)
    assert list(fresh.moving) == [max(per_day)] and not fresh.days
    assert combine(per_day.values()).equals(profile_rows(later, GRID))
