"""Volume profile: rows from trades or footprints, POC, value area, HVN/LVN, naked POCs (INDICATORS.md §1).

Conventions (C1-C8, C10, C17 of the indicator reference):

* Rows (C1): a trade goes to row ``floor(ticks / ticks_per_row)`` of a :class:`~wadm.analytics.grid.Grid`,
  computed on integer ticks, so 0.3/0.1 or 1.15/0.05 never fall one row low. A row is labelled by
  its lower edge and covers ``[price, price + row)``; negative prices floor toward -inf.
* Sparse and dense (C2): :func:`rows_from_trades`, :func:`rows_from_footprints` and :func:`combine`
  give *sparse* rows (``index``, ``buy``, ``sell``: traded rows only, ascending). A :class:`Profile`
  is *dense*: every row from the lowest to the highest row with volume, zero rows included.
  Rows whose volume is zero are dropped before densifying, so the profile's edges are traded rows.
  ``gaps="sparse"`` keeps traded rows only (py-market-profile's convention), for comparison.
* POC (C3): the row with the most volume; a tie goes to the row nearest the centre
  ``(lowest_row + highest_row) / 2`` (row units), and an equidistant tie to the lower row.
* Value area (C4-C7): the target is ``value_area * total``; the area grows from the POC until
  ``accumulated >= target``. Two-row (default): compare the next <= 2 rows above with the next
  <= 2 rows below and take the larger *pair*; a tie goes above, a side with one row left offers
  that row, an exhausted side is skipped, zero rows count as rows. One-row: the same, one row at
  a time. Both are computed: the requested one is :attr:`Profile.area`, the other
  :attr:`Profile.alternative`. VAH/VAL are the lower edges of the outermost rows (add ``row_size``
  to VAH for the upper edge).
* HVN/LVN (C8): within +-``nodes`` rows, an HVN has volume >= every neighbour and > at least one;
  an LVN <= every neighbour and < at least one (a plateau of zero rows is an LVN zone). Rows with
  fewer than ``nodes`` neighbours on a side never qualify.
* Developing POC/VA: after each trade bar ``floor(ts / I) * I`` (C10) closes, the POC and value
  area of the cumulative profile since the first trade.
* Naked POC (C17): a session's POC stays naked until a later session has volume in the POC's row.

Exact sums (C4): the value-area target and POC ties compare sums, and float sums do not add up
(``0.1 + 0.2 != 0.3``), so every sum here is of integers. Quantities are scaled to integer
*units* of ``10**-s``, where ``s`` is the fewest decimals (at most 12) that every value of the
frame sits on, to within four ulps (so float noise such as 0.30000000000000004 snaps to 0.3).
Units are exact for magnitudes below 2**50 units (1.1e7 at 8 decimals); a frame that has no such
scale is rounded to the finest scale its magnitudes allow. Sums are Int64 (Int128 when they could
overflow), and every float answer is the correctly rounded ``units / 10**s``, so a row's ``buy``
of 0.1 + 0.2 is exactly 0.3, and feeding it back in recovers the same units.
The target ``value_area * total`` is exact too: ``Fraction(str(value_area))``, compared
as ``acc * den >= num * total`` on integers.

An empty input gives a :class:`Profile` with zero totals, ``poc``/``vah``/``val`` None, no
value areas and no nodes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Literal

import polars as pl

from wadm.analytics.grid import Grid
from wadm.errors import UsageError

__all__ = [
    "DEVELOPING_SCHEMA",
    "PROFILE_SCHEMA",
    "Gaps",
    "ROWS_SCHEMA",
    "NakedPoc",
    "Profile",
    "ValueArea",
    "ValueAreaStep",
    "VaMethod",
    "combine",
    "developing",
    "naked_pocs",
    "rows_from_footprints",
    "rows_from_trades",
    "volume_profile",
]

VaMethod = Literal["two_row", "one_row"]
Gaps = Literal["dense", "sparse"]
Side = Literal["up", "down"]

ROWS_SCHEMA: dict[str, pl.DataType] = {"index": pl.Int64(), "buy": pl.Float64(), "sell": pl.Float64()}
PROFILE_SCHEMA: dict[str, pl.DataType] = {
    "index": pl.Int64(),
    "price": pl.Float64(),
    "volume": pl.Float64(),
    "buy": pl.Float64(),
    "sell": pl.Float64(),
    "delta": pl.Float64(),
}
DEVELOPING_SCHEMA: dict[str, pl.DataType] = {
    "start": pl.Int64(),
    "poc": pl.Float64(),
    "vah": pl.Float64(),
    "val": pl.Float64(),
}

_METHODS: tuple[VaMethod, VaMethod] = ("two_row", "one_row")
_WIDTH: dict[VaMethod, int] = {"two_row": 2, "one_row": 1}
_MAX_DECIMALS = 12
_EXACT = 2.0**50  # units below this survive float round trips (error <= 1.5 ulp < 0.5)
_NOISE = 2.0**-50  # relative distance to a whole unit still taken as that unit (4 ulps)
_SAMPLE = 4096  # values probed first when inferring the scale of a large frame
_SMALL = 2048  # values at most that are scanned in Python rather than bisected with polars


@dataclass(frozen=True, slots=True)
class ValueAreaStep:
    """One expansion step: what each side offered, which was taken, the volume after it.

    An exhausted side offers 0 (as in the reference vectors).
    """

    up: float
    down: float
    took: Side
    acc: float


@dataclass(frozen=True, slots=True)
class ValueArea:
    """A value area: its bounds (row lower edges), its volume and, when asked, how it grew from the POC."""

    method: VaMethod
    vah: float
    val: float
    volume: float
    steps: tuple[ValueAreaStep, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Profile:
    """A volume profile over one grid.

    Attributes:
        row_size: the row height in price units.
        rows: dense rows ``index, price, volume, buy, sell, delta``, ascending (sparse when asked).
        total_volume: the sum of every row's volume; ``buy_volume``/``sell_volume`` by aggressor.
        delta: ``buy_volume - sell_volume``.
        poc: the POC row's lower edge (None when empty); ``poc_index`` its row index.
        value_area: the fraction of the volume the value area holds.
        va_method: which method :attr:`area` used; :attr:`alternative` is the other one's.
        hvn: HVN row prices, ascending; ``lvn`` likewise.
    """

    row_size: float
    rows: pl.DataFrame
    total_volume: float
    buy_volume: float
    sell_volume: float
    delta: float
    poc: float | None
    poc_index: int | None
    value_area: float
    va_method: VaMethod
    area: ValueArea | None
    alternative: ValueArea | None
    hvn: tuple[float, ...]
    lvn: tuple[float, ...]

    @property
    def vah(self) -> float | None:
        """The value area high (lower edge of its top row), None when empty."""
        return None if self.area is None else self.area.vah

    @property
    def val(self) -> float | None:
        """The value area low (lower edge of its bottom row), None when empty."""
        return None if self.area is None else self.area.val

    @property
    def va_volume(self) -> float:
        """The volume inside the value area (0.0 when empty)."""
        return 0.0 if self.area is None else self.area.volume


@dataclass(frozen=True, slots=True)
class NakedPoc:
    """A session's POC that no later session traded in: the session start (ns) and the POC price."""

    session: int
    poc: float


# ---- exact units ------------------------------------------------------------------------------


def _fits(frame: pl.DataFrame, columns: Sequence[str], scale: int) -> bool:
    """Whether every value of ``columns`` is, to within 4 ulps, a whole number of ``10**-scale``."""
    factor = float(10**scale)
    checks = [(x - x.round()).abs() <= x.abs() * _NOISE for x in (pl.col(c) * factor for c in columns)]
    return bool(frame.select(pl.all_horizontal(checks).all()).item())


def _smallest_fit(values: Iterable[float], top: int) -> int:
    """The smallest scale up to ``top`` every value fits (the same test as :func:`_fits`), in Python."""
    low = 0
    for x in values:
        while low < top:
            y = x * float(10**low)
            if abs(y - round(y)) <= abs(y) * _NOISE:
                break
            low += 1
    return low


@dataclass(frozen=True, slots=True)
class _Scale:
    """Integer units of ``10**-decimals`` for a frame's quantities; ``wide`` when sums need Int128."""

    decimals: int
    wide: bool

    def units(self, name: str) -> pl.Expr:
        """Column ``name`` in whole units."""
        units = (pl.col(name) * float(10**self.decimals)).round().cast(pl.Int64)
        return units.cast(pl.Int128) if self.wide else units


def _scale(frame: pl.DataFrame, columns: Sequence[str]) -> _Scale:
    """The fewest decimals every value of ``columns`` sits on (see the module docstring).

    Units stay exact below 2**50, which caps the decimals at ``top`` for the frame's largest
    value; a frame that fits no scale up to ``top`` is rounded at ``top``. Below ``top`` fitting is
    monotone in the scale, so a bisection finds the smallest.

    PERF: a small frame is scanned in Python (a polars query costs ~60 us, a value ~0.15 us). A
    large frame is bisected on a strided sample, which gives a lower bound; the whole frame then
    usually costs one verifying pass (a pass over a million values is ~3 ms).
    """
    if frame.height == 0:
        return _Scale(0, wide=False)
    biggest, total = frame.select(
        pl.max_horizontal(pl.col(c).abs().max() for c in columns).alias("biggest"),
        pl.sum_horizontal(pl.col(c).abs().sum() for c in columns).alias("total"),
    ).row(0)
    top = _MAX_DECIMALS
    while top > 0 and (biggest or 0.0) * 10**top >= _EXACT:
        top -= 1
    if frame.height * len(columns) <= _SMALL:
        low = _smallest_fit(itertools.chain.from_iterable(frame[c].drop_nulls() for c in columns), top)
    else:
        low = _bisect_scale(frame, columns, top)
    return _Scale(low, wide=(total or 0.0) * 10**low >= 2.0**62)


def _bisect_scale(frame: pl.DataFrame, columns: Sequence[str], top: int) -> int:
    probe = frame.gather_every(frame.height // _SAMPLE) if frame.height > 2 * _SAMPLE else frame
    low, high = 0, top  # the smallest fitting scale of the probe is in [low, high]; `top` if none fits
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if _fits(probe, columns, middle) else (middle + 1, high)
    if probe is not frame:
        low = next((d for d in range(low, top) if _fits(frame, columns, d)), top)
    return low


def _floats(units: Iterable[int], scale: int) -> list[float]:
    """Correctly rounded ``units / 10**scale``.

    NOTE: Python's int division, not polars': polars divides by a constant through its reciprocal,
    which is off by an ulp (``18802 / 1e5`` gives 0.18802000000000002).
    """
    power: int = 10**scale
    return [u / power for u in units]


def _float(units: int, scale: int) -> float:
    """Correctly rounded ``units / 10**scale``."""
    power: int = 10**scale
    return units / power


def _rows_frame(index: list[int], buy: list[int], sell: list[int], scale: int) -> pl.DataFrame:
    return pl.DataFrame({"index": index, "buy": _floats(buy, scale), "sell": _floats(sell, scale)}, schema=ROWS_SCHEMA)


def _sum_rows(frame: pl.DataFrame, index: pl.Expr) -> tuple[list[int], list[int], list[int], int]:
    """Exact sums of ``buy``/``sell`` per row ``index``: (indices ascending, buy units, sell units, scale)."""
    scale = _scale(frame, ("buy", "sell"))
    # PERF: eager, as these frames are small (cells, rows): a lazy plan costs ~0.5 ms more.
    summed = (
        frame.select(index.alias("index"), scale.units("buy").alias("buy"), scale.units("sell").alias("sell"))
        .group_by("index")
        .agg(pl.col("buy").sum(), pl.col("sell").sum())
        .filter((pl.col("buy") != 0) | (pl.col("sell") != 0))
        .sort("index")
    )
    return summed["index"].to_list(), summed["buy"].to_list(), summed["sell"].to_list(), scale.decimals


# ---- sparse rows ------------------------------------------------------------------------------


def rows_from_trades(trades: pl.DataFrame, grid: Grid) -> pl.DataFrame:
    """Sum trades into sparse rows by aggressor side.

    Args:
        trades: stored trades (``price``, ``qty``, ``side`` +1 buy / -1 sell aggressor).
        grid: the rows to bin into.

    Returns:
        ``index`` (Int64, :meth:`Grid.index`), ``buy`` and ``sell`` (Float64, exact sums of
        ``qty``): one line per traded row, ascending.

    Raises:
        UsageError: a ``side`` is not +1 or -1.
    """
    if trades.height == 0:
        return pl.DataFrame(schema=ROWS_SCHEMA)
    if trades.select((pl.col("side").abs() != 1).any()).item():
        raise UsageError("trade side must be +1 (buy aggressor) or -1 (sell aggressor)")
    scale = _scale(trades, ("qty",))
    units = scale.units("qty")
    summed = (
        trades.lazy()
        .select(index=grid.index(pl.col("price")), volume=units, signed=units * pl.col("side"))
        .group_by("index")
        .agg(pl.col("volume").sum(), pl.col("signed").sum())
        .filter(pl.col("volume") != 0)
        .sort("index")
        .collect()
    )
    volume, signed = summed["volume"].to_list(), summed["signed"].to_list()
    buy = [(v + d) // 2 for v, d in zip(volume, signed, strict=True)]  # v + d = 2 * buy, exactly
    sell = [v - b for v, b in zip(volume, buy, strict=True)]
    return _rows_frame(summed["index"].to_list(), buy, sell, scale.decimals)


def rows_from_footprints(footprints: pl.DataFrame, footprint_grid: Grid, grid: Grid) -> pl.DataFrame:
    """Re-bin footprint cells to a coarser grid and sum them over bars into sparse rows.

    Args:
        footprints: long cells ``index`` (row at ``footprint_grid``), ``buy``, ``sell``; any other
            column (``start``...) is summed over.
        footprint_grid: the footprints' grid.
        grid: the target grid; its row must be a whole multiple of the footprint row.

    Returns:
        Sparse rows as :func:`rows_from_trades` gives them (rows whose cells are all zero are
        dropped). A coarse row holds whole footprint
        rows: ``coarse = floor(index * fp_row / row)``, exact.

    Raises:
        UsageError: ``grid.row`` is not a whole multiple of ``footprint_grid.row``.
    """
    ratio = Decimal(str(grid.row)) / Decimal(str(footprint_grid.row))
    if ratio < 1 or ratio != ratio.to_integral_value():
        raise UsageError(
            f"row {grid.row} is not a whole multiple of the footprint row {footprint_grid.row}; "
            "footprints re-bin only to coarser rows made of whole footprint rows"
        )
    if footprints.height == 0:
        return pl.DataFrame(schema=ROWS_SCHEMA)
    # Same anchor (0) on both grids, so (index * fp_ticks) // row_ticks == index // ratio, floored.
    return _rows_frame(*_sum_rows(footprints, pl.col("index") // int(ratio)))


def combine(rows_frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """Sum sparse rows of several sessions or sources into one (a composite profile's rows).

    Every frame must come from the same grid (rows line up only on one anchor and row size);
    ``volume_profile(combine(frames), grid)`` is the composite profile.

    Args:
        rows_frames: sparse rows (``index``, ``buy``, ``sell``).

    Returns:
        Sparse rows, exact sums per ``index``, ascending.
    """
    frames = [f.select("index", "buy", "sell") for f in rows_frames]
    if not frames:
        return pl.DataFrame(schema=ROWS_SCHEMA)
    return _rows_frame(*_sum_rows(pl.concat(frames, how="vertical_relaxed"), pl.col("index")))


# ---- POC, value area, nodes -------------------------------------------------------------------


def _poc(vols: list[int], index: Sequence[int]) -> int:
    """Position of the POC (C3): most volume, then nearest the centre, then lower."""
    top = max(vols)
    centre2 = index[0] + index[-1]
    best = pos = vols.index(top)
    while True:
        try:
            pos = vols.index(top, pos + 1)
        except ValueError:
            return best
        # Positions ascend, so a strictly nearer row wins and an equidistant one (higher) loses.
        if abs(2 * index[pos] - centre2) < abs(2 * index[best] - centre2):
            best = pos


def _expand(
    vols: list[int], poc: int, goal: tuple[int, int], width: int, steps: list[tuple[int, int, Side, int]] | None
) -> tuple[int, int, int]:
    """Grow the value area from ``poc`` (C4-C6): (lowest position, highest position, volume).

    ``goal`` is ``(num * total, den)``: stop once ``acc * den >= num * total``.
    """
    target, den = goal
    lo = hi = poc
    acc = vols[poc]
    last = len(vols) - 1
    took: Side
    while acc * den < target:
        up_n, down_n = min(width, last - hi), min(width, lo)
        up = (vols[hi + 1] + (vols[hi + 2] if up_n == 2 else 0)) if up_n else 0
        down = (vols[lo - 1] + (vols[lo - 2] if down_n == 2 else 0)) if down_n else 0
        if up_n and (not down_n or up >= down):
            hi, acc, took = hi + up_n, acc + up, "up"
        else:  # acc < target <= total, so some row is still outside: this side has one
            lo, acc, took = lo - down_n, acc + down, "down"
        if steps is not None:
            steps.append((up, down, took, acc))
    return lo, hi, acc


def _nodes(vols: list[int], n: int) -> tuple[list[int], list[int]]:
    """Positions of HVNs and LVNs over +-n rows (C8); edge rows never qualify."""
    if len(vols) < 2 * n + 1:
        return [], []
    v = pl.col("v")
    # The window includes the row itself: >= every neighbour is "the window's max", > one is "min < v".
    high = v.rolling_max(2 * n + 1, center=True, min_samples=2 * n + 1)
    low = v.rolling_min(2 * n + 1, center=True, min_samples=2 * n + 1)
    marks = pl.DataFrame({"v": vols}).select(hvn=(v == high) & (low < v), lvn=(v == low) & (high > v))
    return marks["hvn"].arg_true().to_list(), marks["lvn"].arg_true().to_list()


def _goal(value_area: float, total: int) -> tuple[int, int]:
    num, den = Fraction(str(value_area)).as_integer_ratio()
    return num * total, den


def _check(value_area: float, va_method: str, nodes: int = 1) -> None:
    if not 0 < value_area <= 1:
        raise UsageError(f"value_area must be in (0, 1], got {value_area}")
    if va_method not in _METHODS:
        raise UsageError(f"va_method must be one of {', '.join(_METHODS)}, got {va_method!r}")
    if nodes < 1:
        raise UsageError(f"nodes (the HVN/LVN neighbourhood in rows) must be >= 1, got {nodes}")


def volume_profile(
    rows: pl.DataFrame,
    grid: Grid,
    *,
    value_area: float = 0.70,
    va_method: VaMethod = "two_row",
    nodes: int = 1,
    gaps: Gaps = "dense",
    steps: bool = False,
) -> Profile:
    """The volume profile of sparse rows: dense rows, totals, POC, both value areas, HVN/LVN.

    Args:
        rows: sparse rows (``index``, ``buy``, ``sell``) on ``grid``; repeated indices are summed.
        grid: the rows' grid (for row prices).
        value_area: the fraction of the volume in the value area, in (0, 1] (the API checks its
            own narrower range).
        va_method: ``two_row`` (C5) or ``one_row`` (C6) for :attr:`Profile.area`; the other
            method's area is :attr:`Profile.alternative`.
        nodes: the HVN/LVN neighbourhood in rows (C8).
        gaps: ``dense`` (C2) or ``sparse``: traded rows only, adjacent in the list (the
            py-market-profile convention, for comparison only).
        steps: record every expansion step in :attr:`ValueArea.steps` (to explain or test an
            area; off by default, it costs an object per step).

    Returns:
        The :class:`Profile`; an empty one (zero totals, None levels) when no row has volume.

    Raises:
        UsageError: ``value_area``, ``va_method`` or ``nodes`` out of range.
    """
    _check(value_area, va_method, nodes)
    if gaps not in ("dense", "sparse"):
        raise UsageError(f"gaps must be dense or sparse, got {gaps!r}")
    indices, buys, sells, scale = _sum_rows(rows, pl.col("index")) if rows.height else ([], [], [], 0)
    kept = [(k, b, s) for k, b, s in zip(indices, buys, sells, strict=True) if b + s]
    if not kept:
        empty = pl.DataFrame(schema=PROFILE_SCHEMA)
        return Profile(grid.row, empty, 0.0, 0.0, 0.0, 0.0, None, None, value_area, va_method, None, None, (), ())
    index: Sequence[int]
    if gaps == "dense":
        lo = kept[0][0]
        index = range(lo, kept[-1][0] + 1)
        buy, sell = [0] * len(index), [0] * len(index)
        for k, b, s in kept:
            buy[k - lo], sell[k - lo] = b, s
    else:
        index, buy, sell = [k for k, _, _ in kept], [b for _, b, _ in kept], [s for _, _, s in kept]
    vols = [b + s for b, s in zip(buy, sell, strict=True)]
    frame = pl.DataFrame(
        {
            "index": list(index),
            "price": [0.0] * len(index),
            "volume": _floats(vols, scale),
            "buy": _floats(buy, scale),
            "sell": _floats(sell, scale),
            "delta": _floats((b - s for b, s in zip(buy, sell, strict=True)), scale),
        },
        schema=PROFILE_SCHEMA,
    ).with_columns(price=grid.price(pl.col("index")))
    prices: list[float] = frame["price"].to_list()
    poc = _poc(vols, index)
    goal = _goal(value_area, sum(vols))
    areas: dict[VaMethod, ValueArea] = {}
    for method in _METHODS:
        taken: list[tuple[int, int, Side, int]] | None = [] if steps else None
        lo_pos, hi_pos, acc = _expand(vols, poc, goal, _WIDTH[method], taken)
        areas[method] = ValueArea(
            method=method,
            vah=prices[hi_pos],
            val=prices[lo_pos],
            volume=_float(acc, scale),
            steps=tuple(
                ValueAreaStep(_float(up, scale), _float(down, scale), took, _float(a, scale))
                for up, down, took, a in taken or ()
            ),
        )
    hvn, lvn = _nodes(vols, nodes)
    total, bought, sold = sum(vols), sum(buy), sum(sell)
    return Profile(
        row_size=grid.row,
        rows=frame,
        total_volume=_float(total, scale),
        buy_volume=_float(bought, scale),
        sell_volume=_float(sold, scale),
        delta=_float(bought - sold, scale),
        poc=prices[poc],
        poc_index=index[poc],
        value_area=value_area,
        va_method=va_method,
        area=areas[va_method],
        alternative=areas["one_row" if va_method == "two_row" else "two_row"],
        hvn=tuple(prices[p] for p in hvn),
        lvn=tuple(prices[p] for p in lvn),
    )


# ---- developing, naked --------------------------------------------------------------------------


def developing(
    trades: pl.DataFrame,
    grid: Grid,
    interval_ns: int,
    *,
    value_area: float = 0.70,
    va_method: VaMethod = "two_row",
) -> pl.DataFrame:
    """The developing POC and value area: after each trade bar, those of the profile so far.

    Args:
        trades: stored trades (``ts_event`` ns, ``price``, ``qty``); the side does not matter.
        grid: the rows to bin into.
        interval_ns: the bar length; a trade belongs to bar ``floor(ts / I) * I`` (C10).
        value_area: the fraction of the volume in the value area, in (0, 1].
        va_method: ``two_row`` or ``one_row``.

    Returns:
        ``start`` (bar start, ns), ``poc``, ``vah``, ``val`` of the cumulative dense profile from
        the first trade through that bar: one line per bar with volume, ascending.

    Raises:
        UsageError: ``interval_ns`` is not positive, or ``value_area``/``va_method`` out of range.
    """
    _check(value_area, va_method)
    if interval_ns <= 0:
        raise UsageError(f"interval_ns must be positive, got {interval_ns}")
    if trades.height == 0:
        return pl.DataFrame(schema=DEVELOPING_SCHEMA)
    scale = _scale(trades, ("qty",))
    cells = (
        trades.lazy()
        .select(
            start=pl.col("ts_event") // interval_ns * interval_ns,
            index=grid.index(pl.col("price")),
            volume=scale.units("qty"),
        )
        .filter(pl.col("volume") != 0)
        .group_by("start", "index")
        .agg(pl.col("volume").sum())
        .sort("start", "index")
        .collect()
    )
    starts: list[int] = cells["start"].to_list()
    indices: list[int] = cells["index"].to_list()
    units: list[int] = cells["volume"].to_list()
    width = _WIDTH[va_method]
    num, den = Fraction(str(value_area)).as_integer_ratio()
    vols: list[int] = []  # dense running profile, vols[0] is row `base`
    base = total = 0
    out: dict[str, list[int]] = {"start": [], "poc": [], "vah": [], "val": []}
    for i, (start, k, u) in enumerate(zip(starts, indices, units, strict=True)):
        if not vols:
            vols, base = [0], k
        elif k < base:
            vols[0:0] = [0] * (base - k)
            base = k
        elif k >= base + len(vols):
            vols.extend([0] * (k - base - len(vols) + 1))
        vols[k - base] += u
        total += u
        if i + 1 < len(starts) and starts[i + 1] == start:
            continue  # the bar is still open
        poc = _poc(vols, range(base, base + len(vols)))
        lo, hi, _ = _expand(vols, poc, (num * total, den), width, None)
        for name, value in (("start", start), ("poc", base + poc), ("vah", base + hi), ("val", base + lo)):
            out[name].append(value)
    rows = pl.DataFrame(out, schema=dict.fromkeys(out, pl.Int64()))
    return rows.with_columns(grid.price(pl.col(c)).alias(c) for c in ("poc", "vah", "val"))


def naked_pocs(sessions: Sequence[tuple[int, Profile]]) -> list[NakedPoc]:
    """POCs of earlier sessions whose row no later session traded in (C17: the row is touched).

    The last session is never listed: nothing came after it, so its POC is not naked yet (the API
    lists earlier UTC days only). A session without volume has no POC and touches nothing.

    Args:
        sessions: ``(session start ns, profile)`` in time order, all on one row size.

    Returns:
        The naked POCs, oldest first.

    Raises:
        UsageError: the sessions are not in strictly increasing time order or mix row sizes.
    """
    for (start, profile), (later, other) in zip(sessions, sessions[1:], strict=False):
        if later <= start:
            raise UsageError(f"sessions must be in increasing time order: {later} follows {start}")
        if other.row_size != profile.row_size:
            raise UsageError(f"sessions mix row sizes {profile.row_size} and {other.row_size}")
    naked: list[NakedPoc] = []
    touched: set[int] = set()  # rows with volume in any later session
    for position, (start, profile) in enumerate(reversed(sessions)):
        if position and profile.poc is not None and profile.poc_index not in touched:
            naked.append(NakedPoc(start, profile.poc))
        traded = profile.rows.filter(pl.col("volume") > 0)["index"]
        touched.update(traded.to_list())
    return naked[::-1]
