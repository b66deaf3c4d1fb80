"""Volume profile against the vp_* vectors, exact binning and sums, re-binning, developing and naked POCs."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from wadm.analytics import profile as vp
from wadm.analytics.grid import Grid
from wadm.analytics.profile import (
    DEVELOPING_SCHEMA,
    PROFILE_SCHEMA,
    ROWS_SCHEMA,
    NakedPoc,
    Profile,
    combine,
    developing,
    naked_pocs,
    rows_from_footprints,
    rows_from_trades,
    volume_profile,
)
from wadm.errors import UsageError

VECTORS = Path(__file__).parents[1] / "data" / "vectors"
MS = 1_000_000
DAY = 86_400 * 10**9
TRADE_SCHEMA = {"ts_event": pl.Int64(), "price": pl.Float64(), "qty": pl.Float64(), "side": pl.Int8()}


def load(name: str) -> dict[str, Any]:
    with (VECTORS / f"{name}.json").open() as fh:
        vector: dict[str, Any] = json.load(fh, parse_float=Decimal)
    return vector


def cases() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(id, params, case) for every vp_* case; a case has ``input``, ``expected``, maybe ``alternatives``."""
    found = []
    for path in sorted(VECTORS.glob("vp_*.json")):
        vector = load(path.stem)
        for case in vector.get("cases", [vector]):
            found.append((f"{path.stem}:{case.get('name', '')}", vector["params"], case))
    return found


CASES = cases()


def D(x: float | int | Decimal) -> Decimal:
    """A float as the decimal it prints as (exact comparison with the vectors' Decimals)."""
    return x if isinstance(x, Decimal) else Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


def trades_frame(trades: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts_event": [t["ts"] * MS for t in trades],
            "price": [float(t["price"]) for t in trades],
            "qty": [float(t["qty"]) for t in trades],
            "side": [1 if t["side"] == "buy" else -1 for t in trades],
        },
        schema=TRADE_SCHEMA,
    )


def trades_of(*rows: tuple[int, float, float, int]) -> pl.DataFrame:
    """Trades from (ts ns, price, qty, side) tuples."""
    return pl.DataFrame([list(r) for r in rows], schema=TRADE_SCHEMA, orient="row")


def grid_of(params: dict[str, Any]) -> Grid:
    return Grid(0.01, float(params["bin_size"]))  # the vectors' prices have 2 decimals


def profile_of(params: dict[str, Any], case: dict[str, Any], **kwargs: Any) -> Profile:
    grid = grid_of(params)
    return volume_profile(
        rows_from_trades(trades_frame(case["input"]["trades"]), grid),
        grid,
        value_area=float(params["value_area_pct"]),
        nodes=params.get("node_n", 1),
        **kwargs,
    )


def assert_rows(profile: Profile, want: list[dict[str, Any]]) -> None:
    got = profile.rows.to_dicts()
    assert [(D(r["price"]), D(r["volume"]), D(r["buy"]), D(r["sell"]), D(r["delta"])) for r in got] == [
        (D(w["price"]), D(w["vol"]), D(w["buy"]), D(w["sell"]), D(w["delta"])) for w in want
    ]


def assert_area(area: vp.ValueArea | None, want: dict[str, Any]) -> None:
    assert area is not None
    assert (D(area.vah), D(area.val), D(area.volume)) == (D(want["vah"]), D(want["val"]), D(want["va_volume"]))
    if "steps" in want:
        assert [(D(s.up), D(s.down), s.took, D(s.acc)) for s in area.steps] == [
            (D(s["up_sum"]), D(s["down_sum"]), s["took"], D(s["acc"])) for s in want["steps"]
        ]


# ---- the vectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "case"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_vector(params: dict[str, Any], case: dict[str, Any]) -> None:
    want = case["expected"]
    profile = profile_of(params, case, steps=True)
    assert profile.rows.schema == pl.Schema(PROFILE_SCHEMA)
    assert_rows(profile, want["rows"])
    assert D(profile.total_volume) == D(want["total"])
    assert D(profile.poc) == D(want["poc"])  # type: ignore[arg-type]
    # two_row is the default and the main area; one_row comes along as the alternative
    assert profile.va_method == "two_row" and profile.area is not None and profile.area.method == "two_row"
    assert_area(profile.area, want["two_row"])
    assert (profile.vah, profile.val, profile.va_volume) == (profile.area.vah, profile.area.val, profile.area.volume)
    assert_area(profile.alternative, want["one_row"])
    one_row = profile_of(params, case, va_method="one_row", steps=True)
    assert_area(one_row.area, want["one_row"])
    assert_area(one_row.alternative, want["two_row"])
    if "hvn" in want:
        assert [D(p) for p in profile.hvn] == [D(p) for p in want["hvn"]]
        assert [D(p) for p in profile.lvn] == [D(p) for p in want["lvn"]]


def test_vp01_delta_profile_and_totals() -> None:
    params, case = next(c[1:] for c in CASES if c[0].startswith("vp_01"))
    profile = profile_of(params, case)
    assert profile.rows["delta"].to_list() == [-2, -2, -10, 10, 5, 5, 4]
    assert (profile.buy_volume, profile.sell_volume, profile.delta) == (75, 65, 10)
    # 102.99 stays in row 102, 103.0 opens row 103, 104.99 stays in 104
    assert profile.rows.filter(pl.col("price") == 102)["sell"].item() == 20


def test_vp02_ties_are_not_the_naive_argmax() -> None:
    (_, params, a), (_, _, b) = [c for c in CASES if c[0].startswith("vp_02")]
    assert profile_of(params, a).poc == 103  # two 30s: 100 and 103, centre 102.5
    assert a["alternatives"]["poc_tie=lowest (naive argmax over ascending rows)"]["poc"] == 100
    assert profile_of(params, b).poc == 101  # 101 and 102 equidistant from 101.5: the lower
    assert b["alternatives"]["poc_tie=center_higher"]["poc"] == 102


@pytest.mark.parametrize(
    ("case_id", "name"),
    [
        ("vp_02_poc_ties:a_centre_resolves", "poc_tie=lowest (naive argmax over ascending rows)"),
        ("vp_02_poc_ties:a_centre_resolves", "poc_tie=highest"),
        ("vp_02_poc_ties:b_equidistant", "poc_tie=center_higher"),
    ],
)
def test_vp02_alternative_pocs_expand_as_the_vector_says(case_id: str, name: str) -> None:
    """Another tie rule only moves the POC: from that POC, both methods give the alternative's areas."""
    params, case = next(c[1:] for c in CASES if c[0] == case_id)
    alternative = case["alternatives"][name]
    vols = [int(r["vol"]) for r in case["expected"]["rows"]]
    poc = [int(r["price"]) for r in case["expected"]["rows"]].index(int(alternative["poc"]))
    for method, width in (("two_row", 2), ("one_row", 1)):
        lo, hi, acc = vp._expand(vols, poc, vp._goal(0.7, sum(vols)), width, None)
        want = alternative[method]
        assert (100 + hi, 100 + lo, acc) == (want["vah"], want["val"], want["va_volume"])


def test_vp05_sparse_alternative() -> None:
    params, case = next(c[1:] for c in CASES if c[0].startswith("vp_05"))
    want = case["alternatives"]["gaps=sparse (py-market-profile style groupby, zero rows absent)"]
    profile = profile_of(params, case, gaps="sparse")
    assert_rows(profile, want["rows"])
    assert D(profile.poc) == D(want["poc"])  # type: ignore[arg-type]
    assert_area(profile.area, want["two_row"])
    assert_area(profile.alternative, want["one_row"])
    assert [D(p) for p in profile.hvn] == [D(p) for p in want["hvn"]]
    assert [D(p) for p in profile.lvn] == [D(p) for p in want["lvn"]]


def test_vp04_single_row_at_half_a_unit() -> None:
    params, case = next(c[1:] for c in CASES if c[0].startswith("vp_04"))
    profile = profile_of(params, case)
    assert profile.row_size == 0.5
    assert profile.rows["index"].to_list() == [200]
    assert (profile.poc, profile.vah, profile.val, profile.va_volume) == (100, 100, 100, 10)
    assert profile.area is not None and profile.area.steps == ()


# ---- binning -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("price", "row", "index"), [(0.3, 0.1, 3), (0.7, 0.1, 7), (1.15, 0.05, 23)])
def test_float_trap_prices_bin_exactly(price: float, row: float, index: int) -> None:
    assert math.floor(price / row) == index - 1  # the naive float floor falls one row low
    grid = Grid(0.01, row)
    rows = rows_from_trades(trades_of((0, price, 1.0, 1)), grid)
    assert rows["index"].to_list() == [index]
    assert volume_profile(rows, grid).poc == price


def test_negative_prices_floor_toward_minus_infinity() -> None:
    grid = Grid(0.01, 1.0)
    rows = rows_from_trades(trades_of((0, -0.01, 1.0, 1), (1, -1.0, 2.0, -1), (2, 0.0, 3.0, 1)), grid)
    assert rows.to_dicts() == [{"index": -1, "buy": 1.0, "sell": 2.0}, {"index": 0, "buy": 3.0, "sell": 0.0}]
    assert volume_profile(rows, grid).rows["price"].to_list() == [-1.0, 0.0]


def test_a_row_that_is_not_a_multiple_of_the_tick_is_refused() -> None:
    with pytest.raises(UsageError, match="not a multiple of the tick"):
        Grid(0.01, 0.015)


def test_rows_from_trades_is_sparse_sorted_and_split_by_aggressor() -> None:
    grid = Grid(0.01, 1.0)
    rows = rows_from_trades(trades_of((0, 105.5, 1.0, 1), (1, 100.2, 2.0, -1), (2, 105.1, 0.5, -1)), grid)
    assert rows.schema == pl.Schema(ROWS_SCHEMA)
    assert rows.to_dicts() == [{"index": 100, "buy": 0.0, "sell": 2.0}, {"index": 105, "buy": 1.0, "sell": 0.5}]
    assert rows_from_trades(pl.DataFrame(schema=TRADE_SCHEMA), grid).schema == pl.Schema(ROWS_SCHEMA)
    with pytest.raises(UsageError, match="side"):
        rows_from_trades(trades_of((0, 100.0, 1.0, 0)), grid)


# ---- exact sums ----------------------------------------------------------------------------------


def test_row_sums_are_exact_decimals() -> None:
    grid = Grid(0.01, 1.0)
    rows = rows_from_trades(
        trades_of((0, 100.0, 0.1, 1), (1, 100.5, 0.2, 1), (2, 100.0, 0.7, -1), (3, 100.0, 0.1, -1)), grid
    )
    assert 0.1 + 0.2 != 0.3 and 0.7 + 0.1 != 0.8
    assert rows.to_dicts() == [{"index": 100, "buy": 0.3, "sell": 0.8}]
    assert volume_profile(rows, grid).rows["volume"].to_list() == [1.1]


def test_float_noise_from_upstream_sums_snaps_back() -> None:
    noisy = pl.DataFrame({"index": [7, 7], "buy": [0.1 + 0.2, 0.7 + 0.1], "sell": [0.0, 0.0]}, schema=ROWS_SCHEMA)
    assert combine([noisy]).to_dicts() == [{"index": 7, "buy": 1.1, "sell": 0.0}]


def test_the_exact_target_is_met_where_a_float_sum_misses_it() -> None:
    vols = [0.2, 0.4, 0.3, 0.1]  # total 1.0, target 0.7: one-row takes 101 (0.4) + 102 (0.3) = 0.7 exactly
    naive_total = 0.0
    for v in vols:
        naive_total += v
    assert 0.4 + 0.3 < 0.7 * naive_total  # a float implementation goes on and takes a third row
    grid = Grid(0.01, 1.0)
    rows = rows_from_trades(trades_of(*((i, 100.0 + i, v, 1) for i, v in enumerate(vols))), grid)
    profile = volume_profile(rows, grid, va_method="one_row")
    assert (profile.poc, profile.val, profile.vah, profile.va_volume) == (101, 101, 102, 0.7)


def test_a_float_tie_is_still_a_tie() -> None:
    # two-row: above (103) = 0.3 vs below (101 + 100) = 0.1 + 0.2; a tie, so above (C5)
    assert 0.1 + 0.2 > 0.3  # in floats "below" would win
    grid = Grid(0.01, 1.0)
    rows = rows_from_trades(trades_of(*((i, 100.0 + i, v, 1) for i, v in enumerate([0.2, 0.1, 0.5, 0.3]))), grid)
    profile = volume_profile(rows, grid, steps=True)
    assert (profile.val, profile.vah, profile.va_volume) == (102, 103, 0.8)
    assert profile.area is not None and profile.area.steps == (vp.ValueAreaStep(0.3, 0.3, "up", 0.8),)


def test_huge_sums_stay_exact_past_int64() -> None:
    qty = 9_000_000_000_000.25  # 2 decimals; 11 000 of them pass 2**63 hundredths
    trades = pl.DataFrame(
        {"ts_event": range(11_000), "price": [1.0] * 11_000, "qty": [qty] * 11_000, "side": [1] * 11_000},
        schema=TRADE_SCHEMA,
    )
    rows = rows_from_trades(trades, Grid(0.01, 1.0))
    assert rows["buy"].item() == float(Fraction(900_000_000_000_025, 100) * 11_000)


def test_the_scale_is_the_fewest_decimals_even_through_float_noise() -> None:
    noisy = pl.DataFrame({"buy": [0.1 + 0.2, 0.7 + 0.1, 2.0], "sell": [0.25, 0.0, 0.0]})
    assert vp._scale(noisy, ("buy",)).decimals == 1
    assert vp._scale(noisy, ("buy", "sell")).decimals == 2


def test_a_large_frame_is_verified_beyond_its_sample() -> None:
    qty = [0.5] * 10_000
    qty[1] = 0.25  # the sample takes every other trade from the first: this one is not in it
    trades = pl.DataFrame(
        {"ts_event": range(10_000), "price": [1.0] * 10_000, "qty": qty, "side": [1] * 10_000}, schema=TRADE_SCHEMA
    )
    assert rows_from_trades(trades, Grid(0.01, 1.0))["buy"].item() == 4999.75


def test_quantities_off_every_decimal_grid_still_sum() -> None:
    third = 1 / 3
    rows = rows_from_trades(trades_of((0, 1.0, third, 1), (1, 1.0, third, 1), (2, 1.0, third, 1)), Grid(0.01, 1.0))
    assert rows["buy"].item() == pytest.approx(1.0, abs=1e-9)


quantities = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(1000), places=8)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(-500, 500), quantities, st.sampled_from([1, -1])), min_size=1, max_size=40))
def test_row_sums_equal_decimal_sums(trades: list[tuple[int, Decimal, int]]) -> None:
    frame = trades_of(*((i, t / 100, float(q), s) for i, (t, q, s) in enumerate(trades)))
    rows = rows_from_trades(frame, Grid(0.01, 0.1))
    want: dict[int, list[Decimal]] = {}
    for t, q, s in trades:
        want.setdefault(t // 10, [Decimal(0), Decimal(0)])[0 if s > 0 else 1] += q
    assert rows.rows() == [(k, float(b), float(s)) for k, (b, s) in sorted(want.items())]


# ---- value area, POC, nodes against a plain reference -------------------------------------------


def reference(vols: list[Fraction], pct: Fraction, width: int) -> tuple[int, int, int, list[int], list[int]]:
    """(poc, val, vah, hvn, lvn) positions straight from C3-C8, on exact fractions."""
    top = max(vols)
    ties = [i for i, v in enumerate(vols) if v == top]
    poc = min(ties, key=lambda i: (abs(Fraction(i) - Fraction(len(vols) - 1, 2)), i))
    lo = hi = poc
    while sum(vols[lo : hi + 1]) < pct * sum(vols):
        above = list(range(hi + 1, min(hi + width, len(vols) - 1) + 1))
        below = list(range(max(lo - width, 0), lo))
        if above and (not below or sum(vols[i] for i in above) >= sum(vols[i] for i in below)):
            hi = above[-1]
        else:
            lo = below[0]
    inner = range(1, len(vols) - 1)
    hvn = [i for i in inner if vols[i] >= max(vols[i - 1], vols[i + 1]) and vols[i] > min(vols[i - 1], vols[i + 1])]
    lvn = [i for i in inner if vols[i] <= min(vols[i - 1], vols[i + 1]) and vols[i] < max(vols[i - 1], vols[i + 1])]
    return poc, lo, hi, hvn, lvn


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    st.lists(st.integers(0, 12), min_size=1, max_size=14).filter(lambda v: v[0] > 0 and v[-1] > 0),
    st.sampled_from(["0.5", "0.68", "0.7", "0.95", "1"]),
    st.sampled_from(["two_row", "one_row"]),
)
def test_profile_matches_the_reference(tenths: list[int], pct: str, method: vp.VaMethod) -> None:
    grid = Grid(0.01, 1.0)
    rows = pl.DataFrame(
        {"index": range(len(tenths)), "buy": [t / 10 for t in tenths], "sell": [0.0] * len(tenths)}, schema=ROWS_SCHEMA
    )
    profile = volume_profile(rows, grid, value_area=float(pct), va_method=method)
    poc, lo, hi, hvn, lvn = reference([Fraction(t, 10) for t in tenths], Fraction(pct), 2 if method == "two_row" else 1)
    assert (profile.poc, profile.val, profile.vah) == (poc, lo, hi)
    assert profile.va_volume == float(Fraction(sum(tenths[lo : hi + 1]), 10))
    assert (list(profile.hvn), list(profile.lvn)) == (hvn, lvn)


def test_nodes_look_over_n_rows() -> None:
    grid = Grid(0.01, 1.0)
    rows = pl.DataFrame(
        {"index": range(100, 107), "buy": [1.0, 2, 5, 2, 1, 3, 1], "sell": [0.0] * 7}, schema=ROWS_SCHEMA
    )
    one = volume_profile(rows, grid)
    assert (one.hvn, one.lvn) == ((102.0, 105.0), (104.0,))
    two = volume_profile(rows, grid, nodes=2)
    assert (two.hvn, two.lvn) == ((102.0,), (104.0,))  # at n=2, rows 100, 101, 105 and 106 are edges
    assert volume_profile(rows, grid, nodes=4).hvn == ()  # no row has 4 neighbours on both sides


def test_empty_profile() -> None:
    profile = volume_profile(pl.DataFrame(schema=ROWS_SCHEMA), Grid(0.01, 1.0))
    assert profile.rows.schema == pl.Schema(PROFILE_SCHEMA) and profile.rows.is_empty()
    assert (profile.total_volume, profile.buy_volume, profile.sell_volume, profile.delta) == (0, 0, 0, 0)
    assert (profile.poc, profile.vah, profile.val, profile.va_volume) == (None, None, None, 0)
    assert (profile.area, profile.alternative, profile.hvn, profile.lvn) == (None, None, (), ())
    zero = pl.DataFrame({"index": [5], "buy": [0.0], "sell": [0.0]}, schema=ROWS_SCHEMA)
    assert volume_profile(zero, Grid(0.01, 1.0)).poc is None


def test_zero_rows_at_the_edges_are_not_part_of_the_profile() -> None:
    rows = pl.DataFrame({"index": [1, 2, 5, 9], "buy": [0.0, 1.0, 2.0, 0.0], "sell": 0.0}, schema=ROWS_SCHEMA)
    assert volume_profile(rows, Grid(0.01, 1.0)).rows["index"].to_list() == [2, 3, 4, 5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"value_area": 0.0}, "value_area"),
        ({"value_area": 1.01}, "value_area"),
        ({"va_method": "three_row"}, "va_method"),
        ({"nodes": 0}, "nodes"),
        ({"gaps": "holes"}, "gaps"),
    ],
)
def test_bad_parameters(kwargs: dict[str, Any], match: str) -> None:
    rows = pl.DataFrame({"index": [1], "buy": [1.0], "sell": [0.0]}, schema=ROWS_SCHEMA)
    with pytest.raises(UsageError, match=match):
        volume_profile(rows, Grid(0.01, 1.0), **kwargs)


def test_value_area_of_one_takes_every_row() -> None:
    rows = pl.DataFrame({"index": [1, 2, 3, 4], "buy": [1.0, 0.0, 3.0, 1.0], "sell": 0.0}, schema=ROWS_SCHEMA)
    profile = volume_profile(rows, Grid(0.01, 1.0), value_area=1.0)
    assert (profile.val, profile.vah, profile.va_volume) == (1, 4, 5)


# ---- footprints and composites -------------------------------------------------------------------


def footprints_of(trades: pl.DataFrame, grid: Grid, interval: int) -> pl.DataFrame:
    """Per-bar sparse rows as long footprint cells (start, index, buy, sell)."""
    parts = [
        rows_from_trades(bar, grid).select(pl.lit(start, pl.Int64).alias("start"), "index", "buy", "sell")
        for (start,), bar in trades.group_by(pl.col("ts_event") // interval * interval, maintain_order=True)
    ]
    return pl.concat(parts)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(st.integers(0, 10), st.integers(-3000, 3000), quantities, st.sampled_from([1, -1])),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 5),
    st.integers(1, 6),
)
def test_rebinned_footprints_equal_binning_trades(
    trades: list[tuple[int, int, Decimal, int]], fine: int, m: int
) -> None:
    frame = trades_of(*((bar * 60, tick / 100, float(q), s) for bar, tick, q, s in trades))
    fp_grid = Grid(0.01, fine / 100)
    grid = Grid(0.01, fine * m / 100)
    fps = footprints_of(frame, fp_grid, 60)
    assert_frame_equal(rows_from_footprints(fps, fp_grid, grid), rows_from_trades(frame, grid))
    a, b = (
        volume_profile(rows_from_footprints(fps, fp_grid, grid), grid),
        volume_profile(rows_from_trades(frame, grid), grid),
    )
    assert (a.poc, a.vah, a.val, a.hvn, a.lvn) == (b.poc, b.vah, b.val, b.hvn, b.lvn)


def test_footprint_rows_must_divide_the_row() -> None:
    fps = pl.DataFrame({"start": [0], "index": [3], "buy": [1.0], "sell": [0.0]})
    for fine, coarse in ((0.3, 0.5), (1.0, 0.5)):
        with pytest.raises(UsageError, match=rf"row {coarse} .* footprint row {fine}"):
            rows_from_footprints(fps, Grid(0.01, fine), Grid(0.01, coarse))
    assert rows_from_footprints(fps, Grid(0.01, 0.25), Grid(0.01, 1.0)).to_dicts() == [
        {"index": 0, "buy": 1.0, "sell": 0.0}
    ]
    assert rows_from_footprints(fps.clear(), Grid(0.01, 0.25), Grid(0.01, 1.0)).schema == pl.Schema(ROWS_SCHEMA)


def test_footprint_zero_cells_and_float_noise() -> None:
    fps = pl.DataFrame(
        {"start": [0, 0, 60, 60], "index": [10, 11, 10, 12], "buy": [0.1 + 0.2, 0.0, 0.8, 0.0], "sell": [0.0] * 4}
    )
    rows = rows_from_footprints(fps, Grid(0.01, 0.1), Grid(0.01, 0.1))
    assert rows.to_dicts() == [{"index": 10, "buy": 1.1, "sell": 0.0}]


def test_combine_is_the_composite() -> None:
    grid = Grid(0.01, 1.0)
    days = [
        trades_of((0, 101.5, 10.0, 1), (1, 100.2, 4.0, -1), (2, 102.0, 3.0, 1)),
        trades_of((DAY, 105.0, 12.0, -1), (DAY + 1, 101.0, 2.0, 1)),
        trades_of((2 * DAY, 102.3, 9.0, 1), (2 * DAY + 1, 105.9, 1.5, 1)),
    ]
    composite = combine(rows_from_trades(d, grid) for d in days)
    assert_frame_equal(composite, rows_from_trades(pl.concat(days), grid))
    assert [volume_profile(rows_from_trades(d, grid), grid).poc for d in days] == [101, 105, 102]
    profile = volume_profile(composite, grid)  # INDICATORS.md 1.8: the composite POC differs from each session's
    assert (profile.poc, profile.val, profile.vah) == (105, 101, 105)
    assert combine([]).schema == pl.Schema(ROWS_SCHEMA)


# ---- developing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["two_row", "one_row"])
def test_developing_is_the_profile_so_far(method: vp.VaMethod) -> None:
    params, case = next(c[1:] for c in CASES if c[0].startswith("vp_01"))
    trades, grid, interval = trades_frame(case["input"]["trades"]), grid_of(params), 3_000 * MS
    got = developing(trades, grid, interval, va_method=method)
    assert got.schema == pl.Schema(DEVELOPING_SCHEMA)
    starts = sorted({ts // interval * interval for ts in trades["ts_event"]})
    assert got["start"].to_list() == starts
    for line in got.iter_rows(named=True):
        so_far = trades.filter(pl.col("ts_event") < line["start"] + interval)
        want = volume_profile(rows_from_trades(so_far, grid), grid, va_method=method)
        assert (line["poc"], line["vah"], line["val"]) == (want.poc, want.vah, want.val)
    last = volume_profile(rows_from_trades(trades, grid), grid, va_method=method)
    assert got.row(-1)[1:] == (last.poc, last.vah, last.val) == (103, 105 if method == "two_row" else 104, 101)


def test_developing_grows_downward_and_upward() -> None:
    grid = Grid(0.01, 1.0)
    trades = trades_of((0, 105.0, 1.0, 1), (60, 100.0, 3.0, 1), (61, 103.0, 0.5, -1), (120, 110.0, 5.0, -1))
    got = developing(trades, grid, 60, value_area=0.5)
    assert got.rows() == [(0, 105.0, 105.0, 105.0), (60, 100.0, 100.0, 100.0), (120, 110.0, 110.0, 110.0)]
    assert developing(trades.clear(), grid, 60).schema == pl.Schema(DEVELOPING_SCHEMA)
    with pytest.raises(UsageError, match="interval"):
        developing(trades, grid, 0)


# ---- naked POCs ----------------------------------------------------------------------------------


def sessions_of(*days: pl.DataFrame, grid: Grid) -> list[tuple[int, Profile]]:
    return [(i * DAY, volume_profile(rows_from_trades(d, grid), grid)) for i, d in enumerate(days)]


def test_naked_pocs_over_three_sessions() -> None:
    grid = Grid(0.01, 1.0)
    first = trades_of((0, 100.0, 9.0, 1), (1, 100.99, 1.0, 1), (2, 103.0, 2.0, -1))  # POC 100: row [100, 101)
    second = trades_of((DAY, 99.99, 1.0, -1), (DAY + 1, 105.5, 7.0, 1), (DAY + 2, 104.0, 1.0, 1))  # POC 105
    third = trades_of((2 * DAY, 101.0, 1.0, 1), (2 * DAY + 1, 105.0, 0.5, 1), (2 * DAY + 2, 101.5, 5.0, -1))
    sessions = sessions_of(first, second, third, grid=grid)
    assert [p.poc for _, p in sessions] == [100, 105, 101]
    # 99.99 and 101.0 are just outside row 100; 105.0 is inside row 105; the last session is never listed
    assert naked_pocs(sessions) == [NakedPoc(session=0, poc=100.0)]
    touched = trades_of((2 * DAY, 100.0, 0.1, 1), (2 * DAY + 1, 101.5, 5.0, -1))
    assert naked_pocs(sessions_of(first, second, touched, grid=grid)) == [NakedPoc(session=DAY, poc=105.0)]
    assert naked_pocs(sessions[:1]) == [] and naked_pocs([]) == []


def test_naked_pocs_need_one_grid_and_time_order() -> None:
    grid = Grid(0.01, 1.0)
    sessions = sessions_of(trades_of((0, 100.0, 1.0, 1)), trades_of((DAY, 101.0, 1.0, 1)), grid=grid)
    with pytest.raises(UsageError, match="time order"):
        naked_pocs(sessions[::-1])
    coarse = volume_profile(rows_from_trades(trades_of((DAY, 101.0, 1.0, 1)), Grid(0.01, 2.0)), Grid(0.01, 2.0))
    with pytest.raises(UsageError, match="row sizes"):
        naked_pocs([sessions[0], (DAY, coarse)])
    empty = volume_profile(pl.DataFrame(schema=ROWS_SCHEMA), grid)
    assert naked_pocs([sessions[0], (DAY, empty), (2 * DAY, sessions[1][1])]) == [NakedPoc(0, 100.0)]
