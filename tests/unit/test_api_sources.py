"""Where analytics answers get their data: resolution by retention, grids, the cache of settled bars."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from wadm.analytics.aggregates import STORED_BAR_SCHEMA, build_bars
from wadm.analytics.grid import Grid
from wadm.api.sources import (
    LOADED_REUSE_NS,
    MAX_PROFILE_ROWS,
    OPEN_REUSE_NS,
    BarCache,
    Reader,
    Scope,
    _shares,
    _within,
    bar_grid,
    check_rows,
    choose_resolution,
    trade_grid,
)
from wadm.config import Settings
from wadm.errors import QueryError
from wadm.live import BarsView, BookView, HealthReport, Series, Unfinished
from wadm.records import BARS_1M, GAP_SCHEMA, GAPS, BatchKey, Market, Venue
from wadm.store import SqliteStore, encode_batch
from wadm.venues.base import Instrument

S = 1_000_000_000
MIN = 60 * S
HOUR = 60 * MIN
NOW = 1_790_000_000 * S // HOUR * HOUR
BTC = Series(Venue.BINANCE, Market.SPOT, "BTCUSDT")


def _scope(span: int) -> Scope:
    return Scope("BTCUSDT", (BTC,), NOW - span, NOW, NOW)


@pytest.mark.parametrize(("span", "auto"), [(30 * MIN, "trades"), (HOUR, "trades"), (HOUR + S, "1m"),
                                            (24 * HOUR, "1m"), (24 * HOUR + S, "1h"), (7 * 24 * HOUR, "1h")])
def test_auto_takes_the_finest_data_that_reaches_the_start(span: int, auto: str) -> None:
    assert choose_resolution(None, _scope(span), Settings()) == auto
    assert choose_resolution("1h", _scope(span), Settings()) == "1h"


def test_a_resolution_past_its_retention_says_which_can_answer() -> None:
    with pytest.raises(QueryError) as err:
        choose_resolution("trades", _scope(2 * HOUR), Settings())
    assert err.value.parameter == "resolution" and "use one of auto, 1m, 1h" in str(err.value)
    with pytest.raises(QueryError) as err:
        choose_resolution("1m", _scope(2 * 24 * HOUR), Settings(retention_aggregates_1m=86400))
    assert "RETENTION_AGGREGATES_1M=86400" in str(err.value) and "auto, 1h" in str(err.value)


def _bars(row: float, tick: float = 0.01, start: int = NOW - HOUR, n: int = 5) -> pl.DataFrame:
    trades = pl.DataFrame({"ts_event": [start + i * MIN for i in range(n)], "price": [100.0 + i for i in range(n)],
                           "qty": [1.0] * n, "side": [1] * n},
                          schema={"ts_event": pl.Int64, "price": pl.Float64, "qty": pl.Float64, "side": pl.Int8})
    return build_bars(trades, MIN, grid=Grid(tick, row), revision=1)


def test_bar_grids_use_the_common_row_or_a_multiple_of_it() -> None:
    grid = bar_grid([_bars(0.2), _bars(0.5, tick=0.1)], None, "1m")
    assert grid is not None and grid.row == 1.0 and grid.tick == 0.01
    assert bar_grid([_bars(0.2)], Decimal("0.6"), "1m").row == 0.6  # type: ignore[union-attr]
    with pytest.raises(QueryError) as err:
        bar_grid([_bars(0.2), _bars(0.5)], Decimal("1.5"), "1h")
    assert "rows are 0.2, 0.5" in str(err.value) and "multiple of 1, e.g. 1, 2, 5, 10" in str(err.value)
    assert bar_grid([pl.DataFrame(schema=_bars(1).schema)], None, "1m") is None


def test_trade_grids_sit_on_every_tick() -> None:
    assert trade_grid([0.01, 0.1], [Decimal("20"), Decimal("50")], 60_000, None).row == 100  # type: ignore[union-attr]
    assert trade_grid([0.01], [None], 90_000, None).row == 25, "the default row"  # type: ignore[union-attr]
    assert trade_grid([0.01, 0.1], [], None, Decimal("0.3")).row == 0.3  # type: ignore[union-attr]
    with pytest.raises(QueryError, match="multiple of the tick 0.1"):
        trade_grid([0.01, 0.1], [], None, Decimal("0.05"))
    assert trade_grid([], [], 100.0, None) is None


def test_a_row_too_fine_for_the_range_names_the_least_row() -> None:
    check_rows(100.0, 100.0 + (MAX_PROFILE_ROWS - 1) * 0.01, Grid(0.01, 0.01))
    with pytest.raises(QueryError) as err:
        check_rows(100.0, 100.0 + MAX_PROFILE_ROWS * 0.01, Grid(0.01, 0.01))
    assert err.value.parameter == "row_size" and "at least" in str(err.value)


async def _run(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


@pytest.mark.asyncio
async def test_settled_bars_are_read_once_and_kept(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cache.db")
    await store.open()
    key = BatchKey(BARS_1M, Venue.BINANCE, Market.SPOT, "BTCUSDT")
    start = NOW - 6 * HOUR
    await store.write(key, encode_batch(_bars(0.5, start=start, n=6 * 60)))
    cache = BarCache(Settings())
    first = await cache.read(store, _run, BARS_1M, BTC, start, NOW, NOW)
    assert first.height == 6 * 60 and cache.misses == 1
    await store.sweep(BARS_1M, NOW)  # gone from the store: only the cache can answer now
    again = await cache.read(store, _run, BARS_1M, BTC, start, NOW, NOW)
    settled = NOW - (3600 + 3600) * S
    assert again.height == (settled - start) // MIN, "every settled hour came from the cache"
    assert again.equals(first.filter(pl.col("ts_event") < settled))
    assert cache.hits >= 4
    await store.close()


def test_bars_built_a_moment_after_a_request_began_answer_it_when_its_window_ends_now() -> None:
    # The requests of one analysis take their "now" when parsed and reach a shared build in another
    # order: a build made 3 ms later serves a request whose window ends now...
    assert _shares(made=NOW + 3_000_000, now=NOW, end=NOW, reuse=OPEN_REUSE_NS)
    assert _shares(made=NOW - 3_000_000, now=NOW, end=NOW, reuse=OPEN_REUSE_NS)
    assert not _shares(made=NOW - OPEN_REUSE_NS, now=NOW, end=NOW, reuse=OPEN_REUSE_NS), "too old"
    assert not _shares(made=NOW + OPEN_REUSE_NS, now=NOW, end=NOW, reuse=OPEN_REUSE_NS)
    # ...but never one whose window ended before the build: that would add trades after its end.
    assert not _shares(made=NOW - 3_000_000, now=NOW, end=NOW - 5_000_000, reuse=OPEN_REUSE_NS)
    assert _shares(made=NOW - 3_000_000, now=NOW, end=NOW - 1_000_000, reuse=OPEN_REUSE_NS)


def test_shared_bars_built_past_a_window_keep_no_bar_that_starts_after_its_end() -> None:
    bars = _bars(0.5, start=NOW - 3 * MIN, n=4)  # minutes NOW-3 .. NOW (the last one just opened)
    # Built 2 ms into the minute that starts at NOW, for a request whose window ends 1 ms before it.
    kept = _within(bars, NOW - 2 * MIN, NOW - 1_000_000, made=NOW + 2_000_000, step=MIN)
    assert kept["ts_event"].to_list() == [NOW - 2 * MIN, NOW - MIN]
    # Built inside the request's own last minute: nothing can start after its end.
    same = _within(bars, NOW - 3 * MIN, NOW + 30 * S, made=NOW + 31 * S, step=MIN)
    assert same.equals(bars)


class CountingStore(SqliteStore):
    """A real SQLite store that counts its reads of each table."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads: dict[str, int] = {}

    async def read(self, key: BatchKey, start: int, end: int, *, max_rows: int | None = None) -> pl.DataFrame:
        self.reads[key.table] = self.reads.get(key.table, 0) + 1
        return await super().read(key, start, end, max_rows=max_rows)


def _gap(start: int, end: int) -> pl.DataFrame:
    return pl.DataFrame([{"ts_event": start, "end": end, "stream": "btcusdt@aggTrade", "reason": "disconnect",
                          "missing": 3, "ts_recv": end}], schema=GAP_SCHEMA)


@pytest.mark.asyncio
async def test_the_gaps_of_a_series_are_read_once_for_requests_at_once_and_again_after_a_moment(
        tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "gaps.db")
    await store.open()
    key = BatchKey(GAPS, Venue.BINANCE, Market.SPOT, "BTCUSDT")
    await store.write(key, encode_batch(_gap(NOW - 2 * HOUR, NOW - 2 * HOUR + 5 * S)))
    cache = BarCache(Settings())
    answers = await asyncio.gather(*(cache.gaps(store, BTC) for _ in range(8)))
    assert store.reads[GAPS] == 1, "eight requests at once read the table once"
    assert all(a.height == 1 for a in answers)
    await store.write(key, encode_batch(_gap(NOW - HOUR, NOW - HOUR + 7 * S)))
    await asyncio.sleep(LOADED_REUSE_NS / S + 0.1)
    fresh = await cache.gaps(store, BTC)
    assert store.reads[GAPS] == 2 and fresh["ts_event"].to_list() == [NOW - 2 * HOUR, NOW - HOUR], \
        "a gap recorded since is seen once the shared read has aged"
    await store.close()


class _OpenMinutes:
    """What the live view says of one series: no closed bars in memory, open trades from ``since``."""

    def __init__(self, since: int, trades: pl.DataFrame) -> None:
        self.view = BarsView(closed_until=since, bars=pl.DataFrame(schema=STORED_BAR_SCHEMA), open_frames=(trades,),
                             row=Decimal("0.5"), row_source="config")

    started_at = 0.0

    def health(self) -> HealthReport:
        raise AssertionError("not read by the reader")

    def collecting(self) -> Mapping[Series, tuple[tuple[str, str], ...]]:
        return {BTC: (("btcusdt@aggTrade", "trades"),)}

    def connected_once(self, series: Series) -> bool:
        return True

    def book(self, series: Series, depth: int) -> BookView | None:
        return None

    def instrument(self, series: Series) -> Instrument | None:
        return Instrument(tick=0.01, lot=0.001, tick_text="0.01", lot_text="0.001")

    def book_rows(self, series: Series) -> pl.DataFrame | None:
        return None

    def kline_rows(self, series: Series) -> tuple[pl.DataFrame, pl.DataFrame] | None:
        return None

    def bars(self, series: Series) -> BarsView | None:
        return self.view

    def unfinished(self, key: BatchKey, start: int, end: int) -> list[Unfinished]:
        return []


@pytest.mark.asyncio
async def test_bars_shared_from_a_build_made_after_a_request_began_end_where_it_ends(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "open.db")
    await store.open()
    # Open trades through NOW - 30 s and one 1 ms into the minute that starts at NOW.
    trades = pl.DataFrame({"ts_event": [NOW - 90 * S, NOW - 30 * S, NOW + 1_000_000], "id": [1, 2, 3],
                           "price": [100.0, 101.0, 102.0], "qty": [1.0, 2.0, 3.0], "side": [1, -1, 1]},
                          schema={"ts_event": pl.Int64, "id": pl.Int64, "price": pl.Float64, "qty": pl.Float64,
                                  "side": pl.Int8})
    reader = Reader(store, _OpenMinutes(NOW - 2 * MIN, trades), BarCache(Settings()), _run)
    later = NOW + 2_000_000
    built = await reader.bars(BTC, "1m", NOW - HOUR, later, later)
    assert built["ts_event"].to_list() == [NOW - 2 * MIN, NOW - MIN, NOW]
    # A request parsed 1 ms before the minute began reaches the shared bars after that build: from
    # the bars loaded for the later window, and (asking from further back) from the open bars.
    earlier = NOW - 1_000_000
    for start in (NOW - HOUR, NOW - 2 * HOUR):
        got = await reader.bars(BTC, "1m", start, earlier, earlier)
        assert got["ts_event"].to_list() == [NOW - 2 * MIN, NOW - MIN], "no bar starting after its end"
    await store.close()
