"""The hours the API merges from their minutes (the open ones included), and merges again only
when those change, equal the hours merged from all the minutes at once."""

from __future__ import annotations

import random

import polars as pl
import pytest

from tests.unit.test_days import MIN, T0, minute_bars
from wadm.analytics.aggregates import STORED_BAR_SCHEMA, footprint_cells, hour_bars
from wadm.api.sources import OPEN_REVISION, HourMemo, _hours

HOUR = 60 * MIN


def _minutes(n: int, open_from: int) -> pl.DataFrame:
    rng = random.Random(3)
    bars = minute_bars(sorted(T0 + rng.randrange(n * MIN) for _ in range(n * 40)), rng)
    return bars.with_columns(revision=pl.when(pl.col("ts_event") >= T0 + open_from * MIN)
                             .then(pl.lit(OPEN_REVISION)).otherwise(pl.col("revision")))


@pytest.mark.parametrize(("n", "open_from"), [(90, 88), (90, 90), (45, 0), (130, 125)])
def test_recent_hours_from_minutes_equal_the_whole_hours(n: int, open_from: int) -> None:
    minutes = _minutes(n, open_from)
    whole = hour_bars(minutes, HOUR, revision=OPEN_REVISION)
    memo: HourMemo = {}
    for _ in range(2):  # from nothing, then from the partial hours kept
        got, memo = _hours(pl.DataFrame(schema=STORED_BAR_SCHEMA), minutes, memo)
        assert got["ts_event"].to_list() == whole["ts_event"].to_list()
        for column in ("open", "high", "low", "close", "trades", "complete"):
            assert got[column].to_list() == whole[column].to_list(), column
        for column in ("volume", "buy", "sell", "delta", "delta_min", "delta_max", "cvd", "cvd_open"):
            assert got[column].to_list() == pytest.approx(whole[column].to_list(), abs=1e-9), column
        assert footprint_cells(got).equals(footprint_cells(whole))
    assert memo, "the hours are kept"
    changed = minutes.with_columns(pl.when(pl.col("ts_event") == pl.col("ts_event").max()).then(pl.col("volume") * 2)
                                   .otherwise(pl.col("volume")).alias("volume"))
    again, _ = _hours(pl.DataFrame(schema=STORED_BAR_SCHEMA), changed, memo)
    assert again["volume"][-1] == pytest.approx(hour_bars(changed, HOUR, revision=OPEN_REVISION)["volume"][-1]), \
        "an hour whose minutes changed is merged again"
