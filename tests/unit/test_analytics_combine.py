"""Several markets' bars combined into one series: the rules of :mod:`wadm.analytics.combine`
checked against a plain reading of them, on generated trades that cross a UTC midnight."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from tests.unit.test_analytics_bars import _DAY_END, trade_rows
from tests.vectors import MIN, MS, frame
from wadm.analytics.bars import NS_PER_DAY, resample, trade_bars
from wadm.analytics.combine import combine_bars, price_source


def _stored(rows: list[tuple[int, int, int, int]]) -> pl.DataFrame:
    trades = frame([(_DAY_END + ms * MS, t / 100, lot / 1000, s) for ms, t, lot, s in sorted(rows, key=lambda r: r[0])])
    return trade_bars(trades, MIN).rename({"start": "ts_event"})


@settings(max_examples=60, deadline=None)
@given(markets=st.lists(trade_rows, min_size=2, max_size=4), coarse=st.sampled_from([5, 15, 60]))
def test_combined_bars_follow_the_rules(markets: list[list[tuple[int, int, int, int]]], coarse: int) -> None:
    interval = coarse * MIN
    stored = [_stored(rows) for rows in markets]
    got = combine_bars(stored, interval)
    each = [resample(s.rename({"ts_event": "start"}), interval) for s in stored]
    # Resampling inside equals resampling each market first.
    assert_frame_equal(got, combine_bars([e.rename({"start": "ts_event"}) for e in each]))
    source = price_source(each)
    order = [source] + [i for i in range(len(each)) if i != source]
    rows = {i: {r["start"]: r for r in e.iter_rows(named=True)} for i, e in enumerate(each)}
    starts = sorted({t for r in rows.values() for t in r})
    assert got["start"].to_list() == starts
    for bar in got.iter_rows(named=True):
        t = bar["start"]
        here = [rows[i][t] for i in range(len(each)) if t in rows[i]]
        assert abs(bar["volume"] - sum(r["volume"] for r in here)) < 1e-9
        assert bar["trades"] == sum(r["trades"] for r in here)
        assert abs(bar["delta"] - sum(r["delta"] for r in here)) < 1e-9
        prices = next(rows[i][t] for i in order if t in rows[i])  # the price source, else the next market
        assert (bar["open"], bar["high"], bar["low"], bar["close"]) == \
            (prices["open"], prices["high"], prices["low"], prices["close"])
        # CVD: each market's CVD as of this bar, carried within its UTC day (0 before it trades).
        cvd = 0.0
        for i in range(len(each)):
            before = [r for s, r in rows[i].items() if s <= t and s // NS_PER_DAY == t // NS_PER_DAY]
            cvd += max(before, key=lambda r: r["start"])["cvd"] if before else 0.0
        assert abs(bar["cvd"] - cvd) < 1e-9
        assert bar["delta_min"] is None and bar["delta_max"] is None
