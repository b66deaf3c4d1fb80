"""Order-flow readings against the of_01 vector, edge cases of the conventions, and book bands."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vectors import MIN, MS, T0, frame, of01_trades, vector
from wadm.analytics.bars import FOOTPRINT_SCHEMA, footprints, trade_bars
from wadm.analytics.grid import Grid
from wadm.analytics.orderflow import (
    IMBALANCE_SCHEMA,
    BandDepth,
    Wall,
    book_bands,
    delta_divergence,
    imbalances,
    large_trades,
    size_distribution,
    stacked,
    unfinished_auctions,
    walls,
)
from wadm.errors import UsageError

OF01 = "of_01_footprint_delta_cvd_imbalance"


def of01_footprints() -> pl.DataFrame:
    return footprints(of01_trades(), Grid(1, 1), MIN)


def per_bar(found: pl.DataFrame) -> list[list[tuple[int, str]]]:
    """Imbalances as the vector's ``alternatives`` list them: per bar, (row price, side)."""
    starts = [T0 + k * MIN for k in range(3)]
    return [[(i, s) for i, s in found.filter(pl.col("start") == b).select("index", "side").rows()] for b in starts]


# ---- of_01 ---------------------------------------------------------------------------------------


def test_of01_imbalances_at_300_percent() -> None:
    expected = vector(OF01)["expected"]["bars"]
    found = imbalances(of01_footprints(), ratio=3.0)
    assert found.schema == pl.Schema(IMBALANCE_SCHEMA)
    for want in expected:
        rows = found.filter(pl.col("start") == want["start"] * MS)
        want_rows = [(int(i["price"]), i["side"], float(i["dominant"]), float(i["vs"])) for i in want["imbalances"]]
        assert rows.select("index", "side", "dominant", "weak").rows() == want_rows
        for i in want["imbalances"]:  # the weak row is the diagonal neighbour
            assert i["vs_price"] == i["price"] + (-1 if i["side"] == "buy" else 1)
    # bar 0 row 103 sits exactly at 3.0x (12 vs 4) and counts: >= not >
    assert (T0, 103, "buy", 12.0, 4.0) in found.rows()


def _alternative(name: str) -> list[list[tuple[int, str]]]:
    alt: list[list[list[Any]]] = vector(OF01)["alternatives"][name]
    return [[(int(p), s) for p, s in bar] for bar in alt]


def test_of01_alternatives() -> None:
    fp = of01_footprints()
    assert per_bar(imbalances(fp, ratio=4.0)) == _alternative("ratio=4 (400%)")
    assert per_bar(imbalances(fp, ignore_zero=True)) == _alternative("ignore_zero=True")
    assert per_bar(imbalances(fp, strict=True)) == _alternative("strict '>' ratio (ATAS/Quantower wording 'more than')")


def test_of01_stacked_unfinished_and_divergence() -> None:
    expected = vector(OF01)["expected"]["bars"]
    fp = of01_footprints()
    stacks = stacked(imbalances(fp))
    assert stacks.rows() == [(T0, "buy", 102, 104, 3)]
    for want in expected:
        got = [(s["side"], s["from_index"], s["to_index"], s["rows"])
               for s in stacks.filter(pl.col("start") == want["start"] * MS).iter_rows(named=True)]
        assert got == [(s["side"], s["from"], s["to"], s["rows"]) for s in want["stacked_imbalances"]]
    unfinished = unfinished_auctions(fp)
    assert unfinished.rows() == [(w["start"] * MS, w["unfinished_auction_high"], w["unfinished_auction_low"])
                                 for w in expected]
    flags = delta_divergence(trade_bars(of01_trades(), MIN))
    for got, want in zip(flags.iter_rows(named=True), expected, strict=True):
        kind = want["delta_divergence"]
        assert got["up_bar_negative_delta"] == (kind == "up_bar_negative_delta")
        assert got["down_bar_positive_delta"] == (kind == "down_bar_positive_delta")


# ---- imbalance edges -----------------------------------------------------------------------------


def fp_frame(rows: list[tuple[int, int, float, float]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=FOOTPRINT_SCHEMA, orient="row")


def test_decimal_exact_ratio_survives_float_rounding() -> None:
    # 0.3 vs 0.1 is exactly 3x in decimal, but 0.3 < 3 * 0.1 (= 0.30000000000000004) in float64
    assert 0.3 < 3 * 0.1
    fp = fp_frame([(T0, 10, 0.0, 0.1), (T0, 11, 0.3, 0.0)])
    assert imbalances(fp).select("index", "side").rows() == [(11, "buy")]
    assert imbalances(fp, strict=True).is_empty()
    # and a real shortfall is not hidden by the slack
    assert imbalances(fp_frame([(T0, 10, 0.0, 0.1), (T0, 11, 0.2999999, 0.0)])).is_empty()


def test_no_comparison_outside_the_bar() -> None:
    fp = fp_frame([
        (T0, 100, 9.0, 0.0),  # low row of bar 0: no row below, so no buy imbalance (not "9 vs nothing")
        (T0, 101, 0.0, 9.0),  # high row of bar 0: no row above, so no sell imbalance
        (T0 + MIN, 102, 1.0, 0.0),  # the next row in the frame belongs to bar 1: 9 vs 1 is not compared
    ])
    assert imbalances(fp).is_empty()
    assert imbalances(fp.filter(pl.col("index") != 102).with_columns(start=pl.lit(T0))).is_empty()


def test_min_volume_and_zero_dominant() -> None:
    fp = fp_frame([(T0, 1, 0.0, 0.0), (T0, 2, 2.0, 0.0), (T0, 3, 5.0, 0.0)])
    # both empty diagonals: a zero dominant side never counts, a zero weak side does
    assert imbalances(fp).select("index", "side").rows() == [(2, "buy"), (3, "buy")]
    assert imbalances(fp, min_volume=3.0).select("index", "side").rows() == [(3, "buy")]
    assert imbalances(fp, ignore_zero=True).is_empty()
    with pytest.raises(UsageError):
        imbalances(fp, ratio=0)
    assert imbalances(pl.DataFrame(schema=FOOTPRINT_SCHEMA)).schema == pl.Schema(IMBALANCE_SCHEMA)


def test_a_row_can_be_both_sides() -> None:
    fp = fp_frame([(T0, 1, 0.0, 1.0), (T0, 2, 3.0, 3.0), (T0, 3, 1.0, 0.0)])
    assert imbalances(fp).select("index", "side").rows() == [(2, "buy"), (2, "sell")]


def test_stacks_break_on_gaps_sides_and_bars() -> None:
    rows = [(T0, i, "buy") for i in (1, 2, 3, 5, 6, 7, 8)] + [(T0, 4, "sell")] + [(T0 + MIN, i, "buy") for i in (9, 10)]
    found = pl.DataFrame(
        [(s, i, side, 1.0, 0.0) for s, i, side in rows], schema=IMBALANCE_SCHEMA, orient="row"
    ).sort("start", "index")
    assert stacked(found).rows() == [(T0, "buy", 1, 3, 3), (T0, "buy", 5, 8, 4)]
    assert stacked(found, min_rows=2).rows()[-1] == (T0 + MIN, "buy", 9, 10, 2)
    assert stacked(found, min_rows=1).height == 4
    assert stacked(found.head(0)).columns == ["start", "side", "from_index", "to_index", "rows"]
    with pytest.raises(UsageError):
        stacked(found, min_rows=0)


# ---- trades --------------------------------------------------------------------------------------


def test_large_trades_per_print_and_merged() -> None:
    trades = frame([
        (T0, 100.0, 5.0, 1),  # 500
        (T0 + MS, 100.0, 6.0, 1),  # 600: a sweep at one ms through three prices
        (T0 + MS, 101.0, 4.0, 1),  # 404
        (T0 + MS, 99.0, 1.0, -1),  # the other side at the same ms is not merged
        (T0 + 2 * MS, 0.1, 3000.0, -1),  # 300.00000000000006 in float64
        (T0 + 2 * MS, 0.3, 1000.0, -1),  # 300 exactly: the threshold is included
    ])
    prints = large_trades(trades, min_notional=300.0)
    assert prints.select("ts", "price", "qty", "side", "prints").rows() == [
        (T0 + 2 * MS, 0.3, 1000.0, "sell", 1),
        (T0 + 2 * MS, 0.1, 3000.0, "sell", 1),  # newest first; equal times: the later print first
        (T0 + MS, 101.0, 4.0, "buy", 1),
        (T0 + MS, 100.0, 6.0, "buy", 1),
        (T0, 100.0, 5.0, "buy", 1),
    ]
    assert large_trades(trades, min_notional=600.0)["notional"].to_list() == [600.0]
    merged = large_trades(trades, min_notional=1000.0, merge=True)
    assert merged.select("ts", "qty", "notional", "side", "prints").rows() == [(T0 + MS, 10.0, 1004.0, "buy", 2)]
    assert merged["price"][0] == pytest.approx(100.4)  # volume-weighted: 1004 / 10
    assert large_trades(trades, min_notional=1e9).columns == ["ts", "price", "qty", "notional", "side", "prints"]


def test_size_distribution() -> None:
    trades = frame([(T0, 1.0, q, s) for q, s in [(0.005, 1), (0.01, 1), (0.5, -1), (0.1, -1), (20.0, 1)]])
    dist = size_distribution(trades, [0.01, 0.1, 1, 10])
    assert dist.height == 10  # dense: 5 buckets x 2 sides
    rows = {(r["bucket"], r["side"]): (r["trades"], r["qty"]) for r in dist.iter_rows(named=True)}
    assert rows[(0, "buy")] == (1, 0.005)
    assert rows[(1, "buy")] == (1, 0.01)  # an edge belongs to the bucket above it
    assert rows[(2, "sell")] == (2, pytest.approx(0.6))
    assert rows[(4, "buy")] == (1, 20.0)
    assert rows[(3, "sell")] == (0, 0.0)
    assert dist.filter(pl.col("bucket") == 4)["upper"].to_list() == [math.inf, math.inf]
    for bad in ([], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0]):
        with pytest.raises(UsageError):
            size_distribution(trades, bad)


def test_divergence_ignores_float_noise() -> None:
    bars = pl.DataFrame({"start": [0, 1, 2, 3], "open": [1.0, 2.0, 1.0, 1.0], "close": [2.0, 1.0, 2.0, 1.0],
                         "volume": [1.0, 1.0, 0.6, 1.0], "delta": [-0.1, 0.1, (0.1 + 0.2) - 0.3 - 0.3 + 0.3, -1.0]})
    flags = delta_divergence(bars)
    assert flags.rows() == [(0, True, False), (1, False, True), (2, False, False), (3, False, False)]


# ---- book ----------------------------------------------------------------------------------------

# mid 100.0 (bid 99.9, ask 100.1, tick 0.1); the 0.5 % band is [99.5, 100.5]
BIDS = [(99.9, 20.0), (99.6, 25.0), (99.4, 500.0)]
ASKS = [(100.1, 4.0), (100.3, 5.0), (100.5, 20.0), (100.6, 100.0)]


def test_band_edge_is_exact() -> None:
    assert 100 * (1 + 0.005) < 100.5  # the float edge that leaves the ask at 100.5 out
    bands = book_bands(BIDS, ASKS, 0.1)
    half = bands[0.005]
    assert (half.low, half.high, half.bid_depth, half.ask_depth) == (99.5, 100.5, 45.0, 29.0)
    assert round(half.imbalance, 4) == 0.2162  # 16 / 74; without the 100.5 ask: 36 / 54 = 0.667
    assert bands[0.001] == BandDepth(0.001, 99.9, 100.1, 20.0, 4.0, (20 - 4) / 24)
    assert bands[0.01].bid_depth == 545.0 and bands[0.01].ask_depth == 129.0


def test_band_lower_edge_is_included_and_empty_cases() -> None:
    bands = book_bands([(99.9, 1.0), (99.5, 2.0), (99.4, 4.0)], [(100.1, 1.0)], 0.1, bands=(0.005,))
    assert bands[0.005].bid_depth == 3.0
    # a zero-width band around a mid between two ticks holds no level
    assert book_bands([(99.9, 1.0)], [(100.0, 1.0)], 0.1, bands=(0.0,))[0.0].imbalance == 0.0
    assert book_bands([], ASKS, 0.1) == {} and book_bands(BIDS, [], 0.1) == {}
    with pytest.raises(UsageError):
        book_bands(BIDS, ASKS, 0.0)
    with pytest.raises(UsageError):
        book_bands(BIDS, ASKS, 0.1, bands=(1.5,))


@st.composite
def books(draw: st.DrawFn) -> tuple[str, float, list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
    """A book whose mid sits on a tick or half-tick and whose levels often sit exactly on a band edge."""
    tick = draw(st.sampled_from(["0.01", "0.1", "0.5", "1"]))
    band = draw(st.sampled_from([0.001, 0.0025, 0.005, 0.01, 0.02]))
    mid2 = 2 * draw(st.integers(1, 100)) * 2000 + draw(st.sampled_from([0, 1]))  # half-ticks
    edge = int(mid2 * Decimal(str(band)) / 2)  # the band's half-width in whole ticks
    near_edge = st.sampled_from([edge - 1, edge, edge + 1, edge + 2]).filter(lambda k: k > 0)
    offsets = st.one_of(st.integers(1, 6), near_edge)  # k: k ticks from mid for an even mid2
    sizes = st.integers(1, 10_000).map(lambda q: Decimal(q) / 1000)
    step = Decimal(tick)
    bid_t = (mid2 - 1) // 2  # the best levels around mid: bid_t + ask_t = mid2
    ask_t = mid2 - bid_t
    bid_offsets = draw(st.lists(offsets, max_size=12, unique=True))
    ask_offsets = draw(st.lists(offsets, max_size=12, unique=True))
    bids = [(t * step, draw(sizes)) for t in sorted({bid_t, *(bid_t - k + 1 for k in bid_offsets)}, reverse=True)]
    asks = [(t * step, draw(sizes)) for t in sorted({ask_t, *(ask_t + k - 1 for k in ask_offsets)})]
    return tick, band, bids, asks


@settings(max_examples=300, deadline=None)
@given(book=books())
def test_bands_match_decimal_arithmetic(
    book: tuple[str, float, list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]],
) -> None:
    tick, band, bids, asks = book
    mid = (bids[0][0] + asks[0][0]) / 2
    low, high = mid * (1 - Decimal(str(band))), mid * (1 + Decimal(str(band)))
    want_b = sum((q for p, q in bids if low <= p <= high), Decimal(0))
    want_a = sum((q for p, q in asks if low <= p <= high), Decimal(0))
    got = book_bands([(float(p), float(q)) for p, q in bids], [(float(p), float(q)) for p, q in asks], float(tick),
                     bands=(band,))[band]
    assert got.bid_depth == pytest.approx(float(want_b), rel=1e-12)
    assert got.ask_depth == pytest.approx(float(want_a), rel=1e-12)
    assert (got.low, got.high) == (float(low), float(high))


def test_walls() -> None:
    bids = [(99.9, 1.0), (99.8, 2.0), (99.7, 1.0), (99.6, 6.0), (99.5, 7.0), (99.4, 100.0)]
    got = walls(bids, "bid", mid=100.0, band=0.005, tick=0.1)
    # in the band: 1, 2, 1, 6, 7 -> median 2; walls >= 6. The 100 at 99.4 is outside the band.
    assert got == (Wall("bid", 99.6, 6.0, 3.0), Wall("bid", 99.5, 7.0, 3.5))
    assert walls(bids, "bid", mid=100.0, band=0.005, tick=0.1, factor=3.5) == (Wall("bid", 99.5, 7.0, 3.5),)
    asks = [(100.1, 1.0), (100.2, 1.0), (100.5, 3.0)]  # the band's upper edge is included
    assert walls(asks, "ask", mid=100.0, band=0.005, tick=0.1) == (Wall("ask", 100.5, 3.0, 3.0),)
    assert walls([(100.1, 1.0), (100.2, 1.0), (100.6, 30.0)], "ask", mid=100.0, band=0.005, tick=0.1) == ()
    assert walls([(100.6, 30.0)], "ask", mid=100.0, band=0.005, tick=0.1) == ()
    with pytest.raises(UsageError):
        walls(bids, "bid", mid=100.0, band=0.005, tick=0.1, factor=0.0)
