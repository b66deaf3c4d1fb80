"""Market structure: the ms_01 vector (swings, labels, BOS/CHoCH, spring/upthrust) and synthetic cases."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from wadm.analytics import structure as st
from wadm.errors import UsageError

VECTOR = json.loads((Path(__file__).parents[1] / "data" / "vectors" / "ms_01_swings_bos_choch.json").read_text(),
                    parse_float=Decimal)
T0_NS = 1_704_067_200_000 * 1_000_000  # 2024-01-01T00:00Z, the vectors' T0 in the project unit (ns)
MINUTE_NS = 60 * 1_000_000_000


def make_bars(rows: list[dict[str, Any]], volume: list[float] | None = None) -> pl.DataFrame:
    n = len(rows)
    return pl.DataFrame({
        "start": [T0_NS + i * MINUTE_NS for i in range(n)],
        **{k: [float(r[k]) for r in rows] for k in ("open", "high", "low", "close")},
        "volume": volume if volume is not None else [1.0] * n,
    }, schema_overrides={"start": pl.Int64})


def hl_bars(highs: list[float], lows: list[float]) -> pl.DataFrame:
    rows = [{"open": lo, "high": h, "low": lo, "close": (h + lo) / 2} for h, lo in zip(highs, lows, strict=True)]
    return make_bars(rows)


BARS = make_bars(VECTOR["input"]["bars"])
SWINGS = st.swings(BARS)


def as_swings(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [{"index": r["index"], "type": r["kind"], "price": r["price"], "confirmed_at": r["confirmed_at"],
             "label": r["label"]} for r in frame.iter_rows(named=True)]


def as_events(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [{"type": r["type"], "direction": r["direction"], "level": r["level"], "swing_index": r["swing_index"],
             "break_index": r["index"]} for r in frame.iter_rows(named=True)]


def expected(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: float(v) if isinstance(v, Decimal) else v for k, v in item.items()} for item in items]


# ---- the ms_01 vector -----------------------------------------------------------------------------


def test_swings_match_the_vector() -> None:
    assert as_swings(SWINGS) == expected(VECTOR["expected"]["swings"])
    assert SWINGS["start"].to_list() == [T0_NS + i * MINUTE_NS for i in SWINGS["index"]]
    assert SWINGS.schema == pl.Schema({"index": pl.Int64, "start": pl.Int64, "price": pl.Float64, "kind": pl.String,
                                       "label": pl.String, "confirmed_at": pl.Int64})


def test_equal_highs_leftmost_wins_and_label_eh() -> None:
    assert BARS["high"][6] == BARS["high"][7] == BARS["high"][2] == 106
    highs = SWINGS.filter(pl.col("kind") == "high")
    assert 7 not in highs["index"].to_list()
    assert highs.filter(pl.col("index") == 6)["label"].item() == "EH"


def test_trend_by_labels_lags_the_break_bias() -> None:
    assert st.trend(SWINGS) == VECTOR["expected"]["trend_state_at_end"] == "down"
    assert st.bias(st.breaks(BARS, SWINGS)) == VECTOR["expected"]["bias_at_end"] == "bullish"


def test_breaks_on_close_match_the_vector() -> None:
    events = st.breaks(BARS, SWINGS)
    assert as_events(events) == expected(VECTOR["expected"]["events"])
    assert events["start"].to_list() == [T0_NS + i * MINUTE_NS for i in (10, 14, 18, 21)]


def test_a_close_exactly_at_the_level_does_not_break() -> None:
    assert BARS["close"][13] == 101  # swing low 9 is 101
    assert 13 not in st.breaks(BARS, SWINGS)["index"].to_list()


def test_wick_trigger_moves_the_choch_to_bar_13() -> None:
    events = st.breaks(BARS, SWINGS, trigger="wick")
    assert as_events(events) == expected(VECTOR["alternatives"]["break_on=wick"])


def test_strict_both_sides_alternative() -> None:
    alt = VECTOR["alternatives"]["swing_tie=strict (both sides strict)"]
    strict = st.swings(BARS, strict=True)
    assert as_swings(strict) == expected(alt["swings"])
    assert as_events(st.breaks(BARS, strict)) == expected(alt["events"])  # the BOS at 10 breaks swing 2


def test_extra_case_equal_highs_two_bars_apart() -> None:
    case = VECTOR["extra_case_equal_highs_in_window"]
    found = st.swings(hl_bars([float(x) for x in case["highs"]], [float(x) for x in case["lows"]]))
    assert [{k: s[k] for k in ("index", "type", "price", "confirmed_at")} for s in as_swings(found)] == expected(
        case["expected_swings"])


def test_wyckoff_spring_and_upthrust_match_the_vector() -> None:
    found = st.wyckoff_candidates(BARS, SWINGS)
    rows = [{"index": r["index"], "event": r["type"], "level": r["level"]} for r in found.iter_rows(named=True)]
    assert rows == expected(VECTOR["expected"]["wyckoff_spring_upthrust"])


def test_wyckoff_equality_edges_do_not_fire() -> None:
    # bar 11: high 108 > 106 but close == 106; bar 19: low 97 < 99.5 but close == 99.5
    assert (BARS["close"][11], BARS["close"][19]) == (106, 99.5)
    assert not {11, 19} & set(st.wyckoff_candidates(BARS, SWINGS)["index"].to_list())


def test_wyckoff_reports_its_inputs() -> None:
    found = st.wyckoff_candidates(BARS, SWINGS)
    upthrust, spring = found.row(0, named=True), found.row(1, named=True)
    assert upthrust["volume_ratio"] is None and upthrust["atr_multiple"] is None  # windows not full at bar 12
    highs, lows, closes = BARS["high"].to_list(), BARS["low"].to_list(), BARS["close"].to_list()
    true_range = [highs[0] - lows[0]] + [max(highs[i] - lows[i], abs(highs[i] - closes[i - 1]),
                                             abs(lows[i] - closes[i - 1])) for i in range(1, len(highs))]
    prev_atr = sum(true_range[6:20]) / 14  # ATR(14) of bar 19, the bar before the spring
    assert spring["volume_ratio"] == 1.0
    assert spring["atr_multiple"] == pytest.approx((highs[20] - lows[20]) / prev_atr, abs=1e-12)


@pytest.mark.parametrize("n", range(1, len(VECTOR["input"]["bars"]) + 1))
def test_breaks_and_wyckoff_are_causal(n: int) -> None:
    prefix = BARS.head(n)
    swings = st.swings(prefix)
    assert st.breaks(prefix, swings).equals(st.breaks(BARS, SWINGS).filter(pl.col("index") < n))
    assert st.wyckoff_candidates(prefix, swings).equals(
        st.wyckoff_candidates(BARS, SWINGS).filter(pl.col("index") < n))


# ---- labels, trend ---------------------------------------------------------------------------------


def test_a_bar_can_be_both_swings_high_first() -> None:
    found = st.swings(hl_bars([4.0, 4.0, 5.0, 4.0, 4.0], [1.0, 1.0, 0.0, 1.0, 1.0]))
    assert found.select("index", "kind", "price").rows() == [(2, "high", 5.0), (2, "low", 0.0)]


def test_tolerance_makes_near_swings_equal() -> None:
    labels = dict(zip(*st.swings(BARS, tolerance=1.5).select("index", "label"), strict=True))
    assert labels[14] == "EL"  # 99.5 vs 101
    assert labels[11] == "HH" and labels[17] == "LH" and labels[19] == "LL"


def _labelled(*labels: tuple[str, str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        [(i, i, 1.0, kind, label, i + 2) for i, (kind, label) in enumerate(labels)],
        schema={"index": pl.Int64, "start": pl.Int64, "price": pl.Float64, "kind": pl.String, "label": pl.String,
                "confirmed_at": pl.Int64}, orient="row")


@pytest.mark.parametrize(("labels", "want"), [
    ((("high", "HH"), ("low", "HL")), "up"),
    ((("low", "LL"), ("high", "LH")), "down"),
    ((("high", "HH"), ("low", "LL")), "range"),
    ((("high", "LH"), ("low", "HL")), "range"),
    ((("high", "EH"), ("low", "HL")), "range"),
    ((("high", "HH"), ("low", None)), "range"),
    ((("high", "HH"),), "range"),
    ((), "range"),
])
def test_trend(labels: tuple[tuple[str, str | None], ...], want: str) -> None:
    assert st.trend(_labelled(*labels)) == want


def test_bias_is_neutral_without_events() -> None:
    assert st.bias(st.breaks(BARS.head(5), st.swings(BARS.head(5)))) == "neutral"


# ---- range and key levels --------------------------------------------------------------------------


def test_current_range_while_the_latest_swings_hold() -> None:
    # after bar 9: latest high 106 (bar 6), latest low 98 (bar 4), neither closed beyond
    prefix = BARS.head(10)
    swings = st.swings(prefix)
    box = st.current_range(prefix, swings, min_bars=4)
    assert box == st.Range(high=106.0, low=98.0, since=T0_NS + 6 * MINUTE_NS, since_index=6, bars=4)
    closes = prefix["close"].to_list()[box.since_index:]
    assert all(box.low <= c <= box.high for c in closes)
    assert st.current_range(prefix, swings, min_bars=5) is None  # held 4 bars only
    assert st.current_range(prefix, swings, min_bars=4, trigger="wick") == box  # bar 7's high equals 106


def test_current_range_ends_on_a_break() -> None:
    assert st.current_range(BARS.head(11), st.swings(BARS.head(11)), min_bars=1) is None  # bar 10 closes 107
    assert st.current_range(BARS, SWINGS, min_bars=1) is None  # bar 21 closes above the high of bar 17
    assert st.current_range(BARS.head(3), st.swings(BARS.head(3)), min_bars=1) is None  # no swings yet


def test_key_levels_latest_unbroken_swings_plus_extra_levels() -> None:
    levels = st.key_levels(BARS, SWINGS, extra=[("poc", 102.0), ("vah", 104.0)])
    # last close 105.5; swing high 105 (bar 17) is broken, so resistance is 108 (bar 11)
    assert levels.rows() == [
        (104.0, "vah", -1.4218),
        (108.0, "resistance", 2.3697),
        (102.0, "poc", -3.3175),
        (97.0, "support", -8.0569),
    ]


def test_key_levels_rounding_and_ties() -> None:
    levels = st.key_levels(BARS, SWINGS.clear(), extra=[("b", 106.6), ("a", 104.5), ("c", 105.5)], decimals=2)
    # from the close 105.5: +1.0427 % and -0.9479 %, sorted by absolute distance, then rounded
    assert levels.rows() == [(105.5, "c", 0.0), (104.5, "a", -0.95), (106.6, "b", 1.04)]
    assert st.key_levels(BARS.clear(), SWINGS.clear(), extra=[("poc", 1.0)]).is_empty()


# ---- climaxes ----------------------------------------------------------------------------------------


def climax_bars(last: dict[str, float], volume: float) -> pl.DataFrame:
    """20 quiet bars (true range 4, volume 10, so ATR 4 and average volume 10), then ``last``."""
    quiet = [{"open": 100.0, "high": 102.0, "low": 98.0, "close": 100.0}] * 20
    return make_bars([*quiet, last], volume=[10.0] * 20 + [volume])


def climaxes(bars: pl.DataFrame) -> pl.DataFrame:
    found = st.wyckoff_candidates(bars, st.swings(bars))
    return found.filter(pl.col("type").str.ends_with("climax"))


def test_climax_thresholds_are_inclusive() -> None:
    bar = {"open": 100.0, "high": 100.0, "low": 94.0, "close": 97.0}  # range 6 = 1.5 x ATR 4, close mid-range
    found = climaxes(climax_bars(bar, volume=25.0))  # 2.5 x the average
    assert found.rows() == [
        (20, T0_NS + 20 * MINUTE_NS, "selling_climax", 94.0, 2.5, 1.5),
        (20, T0_NS + 20 * MINUTE_NS, "buying_climax", 100.0, 2.5, 1.5),
    ]


@pytest.mark.parametrize(("bar", "volume"), [
    ({"open": 100.0, "high": 100.0, "low": 94.0, "close": 97.0}, 24.99),  # volume just short
    ({"open": 100.0, "high": 100.0, "low": 94.01, "close": 97.0}, 25.0),  # range just short
])
def test_climax_below_a_threshold_does_not_fire(bar: dict[str, float], volume: float) -> None:
    assert climaxes(climax_bars(bar, volume)).is_empty()


@pytest.mark.parametrize(("close", "types"), [
    (98.0, ["selling_climax"]),  # 8 of 10 off the low, 2 off the high
    (93.0, ["selling_climax", "buying_climax"]),  # exactly 30 % off the low
    (92.9, ["buying_climax"]),
    (97.0, ["selling_climax", "buying_climax"]),  # exactly 30 % off the high
    (97.1, ["selling_climax"]),
])
def test_climax_close_position(close: float, types: list[str]) -> None:
    bar = {"open": 95.0, "high": 100.0, "low": 90.0, "close": close}
    assert climaxes(climax_bars(bar, volume=40.0))["type"].to_list() == types


def test_no_climax_before_the_windows_are_full() -> None:
    bars = climax_bars({"open": 100.0, "high": 100.0, "low": 80.0, "close": 99.0}, volume=1000.0)
    assert climaxes(bars.tail(20)).is_empty()  # 19 previous bars: volume window not full
    assert climaxes(bars.tail(21)).height == 1
    zero = bars.with_columns(pl.when(pl.int_range(pl.len()) < 20).then(0.0).otherwise(pl.col("volume")).alias("volume"))
    assert climaxes(zero).is_empty()  # average volume 0: no ratio


# ---- ATR -----------------------------------------------------------------------------------------------


def test_atr_is_a_simple_mean_of_true_range() -> None:
    rows = [
        {"open": 10.0, "high": 11.0, "low": 9.0, "close": 10.0},  # TR 2 (high - low)
        {"open": 12.0, "high": 13.0, "low": 12.0, "close": 12.5},  # TR 3 (gap: high - prev close)
        {"open": 8.0, "high": 9.0, "low": 7.5, "close": 8.0},  # TR 5 (low - prev close)
    ]
    assert st.atr(make_bars(rows), 2).to_list() == [None, 2.5, 4.0]
    assert st.atr(make_bars(rows), 1).to_list() == [2.0, 3.0, 5.0]


# ---- swing divergence ------------------------------------------------------------------------------


def test_swing_divergence() -> None:
    cvd = [0.0] * len(BARS)
    cvd[2], cvd[6], cvd[11] = 50.0, 40.0, 30.0  # 6 vs 2: equal price, no signal; 11 vs 6: HH with lower CVD
    cvd[9], cvd[14], cvd[19] = -20.0, -10.0, -15.0  # 14 vs 9: LL with higher CVD; 19 vs 14: lower CVD
    found = st.swing_divergence(SWINGS, pl.Series(cvd))
    assert found.select("index", "kind", "direction", "price", "cvd", "prev_index", "prev_cvd").rows() == [
        (11, "high", "bearish", 108.0, 30.0, 6, 40.0),
        (14, "low", "bullish", 99.5, -10.0, 9, -20.0),
    ]
    with_null = pl.Series([None if i == 9 else v for i, v in enumerate(cvd)], dtype=pl.Float64)
    assert st.swing_divergence(SWINGS, with_null)["index"].to_list() == [11]
    with pytest.raises(UsageError, match="cvd has 19 values"):
        st.swing_divergence(SWINGS, pl.Series(cvd[:19]))


# ---- misuse ------------------------------------------------------------------------------------------


def test_misuse_raises_usage_error() -> None:
    with pytest.raises(UsageError, match="lack the columns"):
        st.swings(BARS.drop("volume"))
    with pytest.raises(UsageError, match="ascending"):
        st.swings(BARS.reverse())
    with pytest.raises(UsageError):
        st.swings(BARS, left=0)
    with pytest.raises(UsageError, match="trigger"):
        st.breaks(BARS, SWINGS, trigger="body")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="swings lack"):
        st.trend(SWINGS.drop("label"))
    with pytest.raises(UsageError):
        st.atr(BARS, 0)
    with pytest.raises(UsageError):
        st.current_range(BARS, SWINGS, min_bars=0)
    with pytest.raises(UsageError):
        st.wyckoff_candidates(BARS, SWINGS, volume_window=0)


def test_empty_bars_give_empty_frames() -> None:
    empty = BARS.clear()
    swings = st.swings(empty)
    assert swings.is_empty() and swings.columns == list(st.SWING_COLUMNS)
    assert st.breaks(empty, swings).is_empty()
    assert st.wyckoff_candidates(empty, swings).is_empty()
    assert st.current_range(empty, swings) is None
    assert st.trend(swings) == "range"
