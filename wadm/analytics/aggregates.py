"""Stored bars: trade bars with their footprint in one row, as ``bars_1m`` and ``bars_1h`` keep them.

A stored bar is a :data:`~wadm.analytics.bars.BAR_SCHEMA` bar (``ts_event`` is its start) plus:

* ``revision``: when this version was computed (ns). A bar closed again (late trades, a gap found
  later) is stored again with a higher revision; readers keep the highest (:func:`latest`), so
  closing twice is harmless and nothing is ever updated in place.
* ``complete``: False when a recorded gap of the trades overlaps the bar.
* ``tick`` and ``row``: the instrument's tick and the footprint's row height (price units), null
  when the tick was unknown (then the footprint is empty); ``lot``: the quantity step, to which
  every volume, delta and CVD is rounded (sums of quantities on the lot grid lie on it, so the
  rounding only removes float noise such as ``0.1 + 0.2 = 0.30000000000000004``).
* ``fp_index``, ``fp_buy``, ``fp_sell``: the footprint, dense from the bar's low row to its high
  row (C1, C2): row ``fp_index[i]`` covers ``[fp_index[i] * row, (fp_index[i] + 1) * row)``.

Footprints of different row heights (a row changed by configuration) are summed on a common grid
whose row is a multiple of each (:func:`common_row`); a coarser row than that is any multiple of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal

import polars as pl

from wadm.analytics.bars import BAR_SCHEMA, FOOTPRINT_SCHEMA, NS_PER_DAY, footprints, resample, trade_bars
from wadm.analytics.grid import Grid
from wadm.analytics.profile import ROWS_SCHEMA, combine, rows_from_footprints, volume_profile
from wadm.errors import UsageError

__all__ = [
    "QTY_COLUMNS",
    "STORED_BAR_SCHEMA",
    "build_bars",
    "chain_cvd",
    "check_interval",
    "INDICATOR_SCHEMA",
    "common_row",
    "day_snapshot",
    "footprint_cells",
    "hour_bars",
    "latest",
    "merge_bars",
    "qty_decimals",
    "round_qty",
    "profile_rows",
    "row_sizes",
]

STORED_BAR_SCHEMA: dict[str, pl.DataType] = {
    "ts_event": pl.Int64(),
    "revision": pl.Int64(),
    **{name: kind for name, kind in BAR_SCHEMA.items() if name != "start"},
    "complete": pl.Boolean(),
    "tick": pl.Float64(),
    "lot": pl.Float64(),
    "row": pl.Float64(),
    "fp_index": pl.List(pl.Int64()),
    "fp_buy": pl.List(pl.Float64()),
    "fp_sell": pl.List(pl.Float64()),
}


QTY_COLUMNS = ("volume", "buy", "sell", "delta", "delta_min", "delta_max", "cvd_open", "cvd")
DEFAULT_QTY_DECIMALS = 8  # when the lot is unknown


def qty_decimals(lot: float | None) -> int:
    """Decimals of a quantity step (0.00001 -> 5); DEFAULT_QTY_DECIMALS when unknown."""
    if lot is None or not lot > 0:
        return DEFAULT_QTY_DECIMALS
    return max(0, -Decimal(repr(lot)).normalize().as_tuple().exponent)  # type: ignore[operator]


def round_qty(frame: pl.DataFrame, decimals: int, columns: Sequence[str] = QTY_COLUMNS) -> pl.DataFrame:
    """Round the quantity columns (and list columns ``fp_buy``/``fp_sell``) present in ``frame``."""
    exprs = [pl.col(c).round(decimals) for c in columns if c in frame.columns]
    exprs += [pl.col(c).list.eval(pl.element().round(decimals)) for c in ("fp_buy", "fp_sell") if c in frame.columns]
    return frame.with_columns(exprs) if exprs else frame


def _overlaps(start: pl.Expr, interval_ns: int, windows: Sequence[tuple[int, int]]) -> pl.Expr:
    """True where ``[start, start + I)`` overlaps a gap window (its ends are good records, excluded)."""
    hit = pl.lit(False)
    for lo, hi in windows:
        hit = hit | ((pl.lit(lo) < start + interval_ns) & (pl.lit(hi) > start))
    return hit


def build_bars(
    trades: pl.DataFrame,
    interval_ns: int,
    *,
    grid: Grid | None,
    revision: int,
    cvd_open: float = 0.0,
    gaps: Sequence[tuple[int, int]] = (),
    lot: float | None = None,
) -> pl.DataFrame:
    """Stored bars of ``interval_ns`` from trades (in print order), with footprints on ``grid``.

    Args:
        trades: ``ts_event``, ``price``, ``qty``, ``side`` (C9).
        interval_ns: the bar length; it divides a UTC day.
        grid: the footprint rows; None when the tick is unknown (empty footprints).
        revision: the version stamp of these bars (ns).
        cvd_open: the CVD before the first bar (ignored when it starts a UTC day).
        gaps: ``(start, end)`` windows of missing trades (ns); overlapped bars are incomplete.
        lot: the quantity step; quantities are rounded to its decimals (8 when unknown).

    Returns:
        Rows of :data:`STORED_BAR_SCHEMA`, sorted by ``ts_event``; empty without trades.
    """
    bars = trade_bars(trades, interval_ns, cvd_open=cvd_open)
    if grid is None:
        cells = pl.DataFrame(schema={"start": pl.Int64(), "fp_index": pl.List(pl.Int64()),
                                     "fp_buy": pl.List(pl.Float64()), "fp_sell": pl.List(pl.Float64())})
    else:
        cells = footprints(trades, grid, interval_ns).group_by("start", maintain_order=True).agg(
            fp_index=pl.col("index"), fp_buy=pl.col("buy"), fp_sell=pl.col("sell")
        )
    stored = (
        bars.join(cells, on="start", how="left")
        .with_columns(
            revision=pl.lit(revision, pl.Int64),
            complete=~_overlaps(pl.col("start"), interval_ns, gaps),
            tick=pl.lit(None if grid is None else grid.tick, pl.Float64),
            lot=pl.lit(lot, pl.Float64),
            row=pl.lit(None if grid is None else grid.row, pl.Float64),
        )
    )
    return _stored(stored, qty_decimals(lot))


def latest(bars: pl.DataFrame) -> pl.DataFrame:
    """The newest revision of each bar, sorted by ``ts_event`` (stored bars in any order)."""
    if bars.height == 0:
        return pl.DataFrame(schema=STORED_BAR_SCHEMA)
    return (
        bars.select(list(STORED_BAR_SCHEMA))
        .sort("ts_event", "revision")
        .unique(subset="ts_event", keep="last", maintain_order=True)
    )


def merge_bars(*frames: pl.DataFrame) -> pl.DataFrame:
    """Stored bars from several sources (store, memory), newest revision of each."""
    present = [f.select(list(STORED_BAR_SCHEMA)) for f in frames if f.height]
    return latest(pl.concat(present)) if present else pl.DataFrame(schema=STORED_BAR_SCHEMA)


def chain_cvd(bars: pl.DataFrame, *, base: float = 0.0, session_ns: int = NS_PER_DAY) -> pl.DataFrame:
    """Recompute ``cvd_open``/``cvd`` as one running sum of deltas per UTC day (C12).

    The first bar's CVD opens at ``base`` unless the bar starts at 00:00 UTC; every later day
    opens at 0. The sum runs left to right (``cvd = previous cvd + delta``), as
    closing one bar at a time does, so a bar closed alone and one closed in a batch agree to the bit.

    Args:
        bars: stored bars of one series, newest revision each, sorted by ``ts_event``.
        base: the CVD before the first bar, when that bar's session started earlier.
        session_ns: the CVD session (a UTC day).
    """
    if bars.height == 0:
        return bars
    starts: list[int] = bars["ts_event"].to_list()
    deltas: list[float] = bars["delta"].to_list()
    lots = bars["lot"].drop_nulls() if "lot" in bars.columns else pl.Series([], dtype=pl.Float64)
    decimals = qty_decimals(float(lots[-1]) if lots.len() else None)
    opens: list[float] = []
    closes: list[float] = []
    cvd, session = base, starts[0] // session_ns
    for start, delta in zip(starts, deltas, strict=True):
        if start // session_ns != session or start % session_ns == 0:
            cvd, session = 0.0, start // session_ns
        opens.append(cvd)
        cvd = round(cvd + delta, decimals)
        closes.append(cvd)
    return bars.with_columns(cvd_open=pl.Series(opens, dtype=pl.Float64), cvd=pl.Series(closes, dtype=pl.Float64))


def footprint_cells(bars: pl.DataFrame) -> pl.DataFrame:
    """The footprints of stored bars in long form (FOOTPRINT_SCHEMA plus ``row``), bars without one left out."""
    with_fp = bars.filter(pl.col("row").is_not_null() & (pl.col("fp_index").list.len() > 0))
    if with_fp.height == 0:
        return pl.DataFrame(schema={**FOOTPRINT_SCHEMA, "row": pl.Float64()})
    return (
        with_fp.select(pl.col("ts_event").alias("start"), "row", index="fp_index", buy="fp_buy", sell="fp_sell")
        .explode("index", "buy", "sell")
        .select(*FOOTPRINT_SCHEMA, "row")
    )


def row_sizes(bars: pl.DataFrame) -> list[Decimal]:
    """The distinct footprint rows of stored bars (as exact decimals), ascending."""
    rows = bars.filter(pl.col("row").is_not_null())["row"].unique().to_list()
    return sorted(Decimal(repr(r)).normalize() for r in rows)


def common_row(rows: Sequence[Decimal]) -> Decimal | None:
    """The finest row every one of ``rows`` divides (their least common multiple); None when empty."""
    if not rows:
        return None
    places = max(-r.normalize().as_tuple().exponent for r in rows)  # type: ignore[operator]
    places = max(places, 0)
    scaled = [int(r.scaleb(places)) for r in rows]
    return Decimal(math.lcm(*scaled)).scaleb(-places).normalize()


def profile_rows(bars: pl.DataFrame, grid: Grid) -> pl.DataFrame:
    """Sparse profile rows on ``grid`` summed from the stored bars' footprints (exact sums).

    Raises:
        UsageError: ``grid.row`` is not a whole multiple of every footprint row in ``bars``.
    """
    return _cells_rows(footprint_cells(bars), grid)


def _cells_rows(cells: pl.DataFrame, grid: Grid) -> pl.DataFrame:
    parts = []
    for (row,), group in cells.group_by("row"):
        fine = Grid(float(row), float(row))
        parts.append(rows_from_footprints(group, fine, grid))
    if len(parts) == 1:  # already summed per row and sorted
        return parts[0]
    return combine(parts) if parts else pl.DataFrame(schema=ROWS_SCHEMA)


def hour_bars(minutes: pl.DataFrame, interval_ns: int, *, revision: int) -> pl.DataFrame:
    """Coarser stored bars (e.g. 1h) from finer stored bars, footprints summed on their common row.

    Args:
        minutes: stored bars (newest revision each, sorted), all from one series.
        interval_ns: the coarser bar length, a multiple of theirs that divides a day.
        revision: the version stamp of the result.

    Returns:
        Rows of :data:`STORED_BAR_SCHEMA`; a coarse bar is complete when every finer bar is.
    """
    if minutes.height == 0:
        return pl.DataFrame(schema=STORED_BAR_SCHEMA)
    bars = resample(minutes.rename({"ts_event": "start"}).select(list(BAR_SCHEMA)), interval_ns)
    start = (pl.col("ts_event") // interval_ns) * interval_ns
    meta = minutes.group_by(start.alias("start")).agg(
        complete=pl.col("complete").all(), tick=pl.col("tick").drop_nulls().last(),
        lot=pl.col("lot").drop_nulls().last(),
    )
    cells = footprint_cells(minutes)
    nested = pl.DataFrame(schema={"start": pl.Int64(), "row": pl.Float64(), "fp_index": pl.List(pl.Int64()),
                                  "fp_buy": pl.List(pl.Float64()), "fp_sell": pl.List(pl.Float64())})
    if cells.height:
        parts = []
        buckets = cells.with_columns(bucket=(pl.col("start") // interval_ns) * interval_ns)
        for (bucket,), group in buckets.group_by("bucket"):
            row = common_row(row_sizes(group))
            assert row is not None  # every cell comes from a bar with a row
            dense = _dense(_cells_rows(group, Grid(float(row), float(row))))
            parts.append(pl.DataFrame({
                "start": [bucket],
                "row": [float(row)],
                "fp_index": [dense["index"].to_list()],
                "fp_buy": [dense["buy"].to_list()],
                "fp_sell": [dense["sell"].to_list()],
            }, schema=nested.schema))
        nested = pl.concat(parts)
    lots = minutes["lot"].drop_nulls()
    hourly = (
        bars.join(meta, on="start", how="left")
        .join(nested, on="start", how="left")
        .with_columns(revision=pl.lit(revision, pl.Int64))
    )
    return _stored(hourly, qty_decimals(float(lots[-1]) if lots.len() else None))


def _stored(bars: pl.DataFrame, decimals: int) -> pl.DataFrame:
    """Bars keyed by ``start`` in the stored layout: empty footprints for bars without one, the
    columns of STORED_BAR_SCHEMA, oldest first, quantities rounded to ``decimals``."""
    stored = (
        bars.with_columns(pl.col(c).fill_null([]) for c in ("fp_index", "fp_buy", "fp_sell"))
        .rename({"start": "ts_event"})
        .select(list(STORED_BAR_SCHEMA))
        .sort("ts_event")
    )
    return round_qty(stored, decimals)


def _dense(rows: pl.DataFrame) -> pl.DataFrame:
    """Sparse rows made dense from the lowest to the highest row (zeros between)."""
    if rows.height == 0:
        return rows
    lo, hi = int(rows["index"][0]), int(rows["index"][-1])  # sparse rows come ascending
    full = pl.DataFrame({"index": pl.int_range(lo, hi + 1, eager=True, dtype=pl.Int64)})
    return full.join(rows, on="index", how="left").with_columns(pl.col("buy", "sell").fill_null(0.0)).sort("index")


def check_interval(interval_ns: int) -> None:
    """Refuse a bar length that does not divide a UTC day."""
    if interval_ns <= 0 or NS_PER_DAY % interval_ns:
        raise UsageError(f"a bar length must divide a day, got {interval_ns} ns")


INDICATOR_SCHEMA: dict[str, pl.DataType] = {
    "ts_event": pl.Int64(),  # the snapshot's time: every minute before it is closed, ns
    "session": pl.Int64(),  # the UTC day it summarises (00:00, ns)
    "bars": pl.Int64(),  # closed minutes with trades in it
    "complete": pl.Boolean(),  # no bar of the day overlaps a recorded gap
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "buy": pl.Float64(),
    "sell": pl.Float64(),
    "delta": pl.Float64(),
    "cvd": pl.Float64(),
    "cvd_min": pl.Float64(),
    "cvd_max": pl.Float64(),
    "trades": pl.Int64(),
    "row_size": pl.Float64(),
    "poc": pl.Float64(),
    "vah": pl.Float64(),
    "val": pl.Float64(),
    "hvn": pl.List(pl.Float64()),
    "lvn": pl.List(pl.Float64()),
    "delta_15m": pl.Float64(),  # delta of the last 15 closed minutes
    "delta_1h": pl.Float64(),
}


def day_snapshot(bars: pl.DataFrame, tick: float, ts: int, session: int) -> pl.DataFrame:
    """One Volume Profile and Order Flow summary of a day's closed 1m bars (a row of INDICATOR_SCHEMA).

    Args:
        bars: the day's stored bars so far (newest revision each, sorted), one series.
        tick: the instrument's tick (row labels are rounded to it).
        ts: the snapshot time (every minute before it is closed), ns.
        session: the day's start (00:00 UTC), ns.
    """
    row = common_row(row_sizes(bars))
    profile = volume_profile(profile_rows(bars, Grid(tick, float(row))), Grid(tick, float(row))) if row else None
    last = bars.tail(1)
    recent = bars["ts_event"] >= ts - 15 * 60 * 1_000_000_000
    hour = bars["ts_event"] >= ts - 60 * 60 * 1_000_000_000
    values = {
        "ts_event": ts,
        "session": session,
        "bars": bars.height,
        "complete": bool(bars["complete"].all()),
        "open": bars["open"][0],
        "high": bars["high"].max(),
        "low": bars["low"].min(),
        "close": last["close"][0],
        "volume": bars["volume"].sum(),
        "buy": bars["buy"].sum(),
        "sell": bars["sell"].sum(),
        "delta": bars["delta"].sum(),
        "cvd": last["cvd"][0],
        "cvd_min": min(0.0, bars["cvd"].min()),  # type: ignore[type-var]
        "cvd_max": max(0.0, bars["cvd"].max()),  # type: ignore[type-var]
        "trades": bars["trades"].sum(),
        "row_size": None if row is None else float(row),
        "poc": None if profile is None else profile.poc,
        "vah": None if profile is None else profile.vah,
        "val": None if profile is None else profile.val,
        "hvn": [] if profile is None else list(profile.hvn),
        "lvn": [] if profile is None else list(profile.lvn),
        "delta_15m": bars.filter(recent)["delta"].sum(),
        "delta_1h": bars.filter(hour)["delta"].sum(),
    }
    lots = bars["lot"].drop_nulls()
    decimals = qty_decimals(float(lots[-1]) if lots.len() else None)
    return round_qty(pl.DataFrame([values], schema=INDICATOR_SCHEMA), decimals,
                     ("volume", "buy", "sell", "delta", "cvd", "cvd_min", "cvd_max", "delta_15m", "delta_1h"))
