"""Stored bars: built from trades, chained, merged into hours, summed into profiles; default rows."""

from __future__ import annotations

import random
from decimal import Decimal

import polars as pl
import pytest

from wadm.analytics.aggregates import (
    build_bars,
    chain_cvd,
    common_row,
    day_snapshot,
    footprint_cells,
    hour_bars,
    latest,
    merge_bars,
    profile_rows,
)
from wadm.analytics.bars import NS_PER_DAY, footprints, trade_bars
from wadm.analytics.grid import Grid, default_row
from wadm.analytics.profile import rows_from_trades, volume_profile
from wadm.errors import UsageError

S = 1_000_000_000
MIN = 60 * S
HOUR = 60 * MIN


def _trades(n: int, *, seed: int = 7, span: int = 3 * HOUR, start: int = 0) -> pl.DataFrame:
    rng = random.Random(seed)
    ts = sorted(start + rng.randrange(span) for _ in range(n))
    return pl.DataFrame({
        "ts_event": ts,
        "price": [round(100 + rng.randrange(-400, 400) * 0.01, 2) for _ in ts],
        "qty": [rng.randrange(1, 300) / 100 for _ in ts],
        "side": [rng.choice((1, -1)) for _ in ts],
    }, schema={"ts_event": pl.Int64, "price": pl.Float64, "qty": pl.Float64, "side": pl.Int8})


def test_stored_bars_hold_the_bars_and_footprints_of_the_trades() -> None:
    trades = _trades(3000)
    grid = Grid(0.01, 0.05)
    stored = build_bars(trades, MIN, grid=grid, revision=5, lot=0.01)
    assert all(v == round(v, 2) for v in stored["volume"].to_list() + stored["fp_buy"].explode().to_list()), \
        "quantities on the lot grid carry no float noise"
    bars = trade_bars(trades, MIN)
    assert stored["ts_event"].to_list() == bars["start"].to_list()
    assert stored["cvd"].to_list() == pytest.approx(bars["cvd"].to_list())
    assert set(stored["revision"].to_list()) == {5} and stored["complete"].all()
    assert stored["row"].unique().to_list() == [0.05] and stored["tick"].unique().to_list() == [0.01]
    cells = footprint_cells(stored).drop("row")
    expected = footprints(trades, grid, MIN)
    assert cells["index"].to_list() == expected["index"].to_list()
    assert cells["buy"].to_list() == pytest.approx(expected["buy"].to_list())


def test_a_profile_summed_from_stored_footprints_equals_the_profile_of_the_trades() -> None:
    trades = _trades(5000, seed=3)
    minutes = build_bars(trades, MIN, grid=Grid(0.01, 0.05), revision=1)
    hours = hour_bars(chain_cvd(minutes), HOUR, revision=2)
    for row in (0.05, 0.1, 0.25, 1.0):
        grid = Grid(0.01, row)
        direct = volume_profile(rows_from_trades(trades, grid), grid)
        for bars in (minutes, hours):
            summed = volume_profile(profile_rows(bars, grid), grid)
            assert (summed.poc, summed.vah, summed.val) == (direct.poc, direct.vah, direct.val)
            assert summed.total_volume == direct.total_volume, "exact sums: no float drift"
            assert summed.rows["buy"].to_list() == direct.rows["buy"].to_list()


def test_a_row_that_is_no_multiple_of_the_footprint_row_is_refused() -> None:
    bars = build_bars(_trades(200), MIN, grid=Grid(0.01, 0.05), revision=1)
    with pytest.raises(UsageError, match="multiple of the footprint row"):
        profile_rows(bars, Grid(0.01, 0.07))


def test_footprints_of_different_rows_meet_on_their_common_row() -> None:
    trades = _trades(2000, span=2 * HOUR)
    first = build_bars(trades.filter(pl.col("ts_event") < HOUR), MIN, grid=Grid(0.01, 0.02), revision=1)
    second = build_bars(trades.filter(pl.col("ts_event") >= HOUR), MIN, grid=Grid(0.01, 0.05), revision=1)
    both = merge_bars(first, second)
    assert common_row([Decimal("0.02"), Decimal("0.05")]) == Decimal("0.1")
    grid = Grid(0.01, 0.1)
    assert volume_profile(profile_rows(both, grid), grid).total_volume == \
        volume_profile(rows_from_trades(trades, grid), grid).total_volume
    day = hour_bars(chain_cvd(both), NS_PER_DAY, revision=3)
    assert day["row"].to_list() == [0.1]


def test_the_cvd_chain_runs_left_to_right_and_resets_at_midnight() -> None:
    trades = _trades(4000, span=4 * HOUR, start=NS_PER_DAY - 2 * HOUR)
    stored = build_bars(trades, MIN, grid=None, revision=1)
    chained = chain_cvd(stored)
    cvd, day = 0.0, None
    for start, delta, got in zip(chained["ts_event"], chained["delta"], chained["cvd"], strict=True):
        if start // NS_PER_DAY != day:
            cvd, day = 0.0, start // NS_PER_DAY
        cvd = round(cvd + delta, 8)  # the lot is unknown here: 8 decimals
        assert got == cvd  # to the bit: the same additions in the same order, no float noise
    assert chained["row"].null_count() == chained.height and chained["fp_index"].list.len().sum() == 0


def test_latest_keeps_the_newest_revision_of_each_bar() -> None:
    trades = _trades(500)
    old = build_bars(trades, MIN, grid=None, revision=1)
    new = build_bars(trades.with_columns(pl.col("qty") * 2), MIN, grid=None, revision=2)
    merged = latest(pl.concat([new.head(3), old, new.tail(2)]))
    assert merged.height == old.height
    assert merged["revision"].to_list() == [2, 2, 2] + [1] * (old.height - 5) + [2, 2]


def test_gaps_mark_the_bars_they_overlap() -> None:
    trades = _trades(2000, span=10 * MIN)
    stored = build_bars(trades, MIN, grid=None, revision=1, gaps=[(2 * MIN + 5 * S, 3 * MIN + 1), (8 * MIN, 8 * MIN)])
    incomplete = stored.filter(~pl.col("complete"))["ts_event"].to_list()
    assert incomplete == [2 * MIN, 3 * MIN], "a gap's ends are good records: [8m, 8m] misses nothing"


def test_the_day_snapshot_summarises_the_profile_and_the_flow() -> None:
    trades = _trades(3000, span=3 * HOUR)
    bars = chain_cvd(build_bars(trades, MIN, grid=Grid(0.01, 0.05), revision=1))
    snap = day_snapshot(bars, 0.01, 3 * HOUR, 0).row(0, named=True)
    grid = Grid(0.01, 0.05)
    profile = volume_profile(rows_from_trades(trades, grid), grid)
    assert (snap["poc"], snap["vah"], snap["val"]) == (profile.poc, profile.vah, profile.val)
    assert snap["cvd"] == pytest.approx(float(trade_bars(trades, MIN)["cvd"][-1]))
    assert snap["trades"] == 3000 and snap["complete"] and snap["row_size"] == 0.05


@pytest.mark.parametrize(("tick", "price", "row"), [
    (0.01, 90_000, "25"), (0.1, 90_000, "25"), (0.01, 3_000, "1"), (0.0001, 2.2, "0.001"),
    (0.01, 150, "0.05"), (0.00001, 0.1, "0.00005"), (0.5, 100, "0.5"), (0.03, 100, "0.03"), (5, 60_000, "20"),
])
def test_the_default_row_is_a_round_multiple_of_the_tick_near_a_3000th_of_the_price(
    tick: float, price: float, row: str
) -> None:
    got = default_row(tick, price)
    assert got == Decimal(row)
    assert (got / Decimal(str(tick))) % 1 == 0


def test_the_default_row_gives_tens_to_hundreds_of_rows_over_a_day() -> None:
    for tick, price in ((0.01, 90_000), (0.01, 3_000), (0.0001, 2.2), (0.001, 150), (0.00001, 0.09)):
        row = float(default_row(tick, price))
        for day_range in (0.01, 0.03, 0.10):
            assert 10 <= price * day_range / row <= 500
