"""Order-flow readings: diagonal and stacked imbalances, unfinished auctions, large trades, trade
sizes, delta divergence, and order-book depth bands and walls.

Conventions of ``reference/INDICATORS.md`` used here:

* C9: ``side`` is the aggressor (+1 buy / -1 sell); ask volume = ``buy``, bid volume = ``sell``.
* C13: diagonal imbalance on a bar's dense rows. Buy at row P: ``ask[P] >= ratio * bid[P-1]``;
  sell at row P: ``bid[P] >= ratio * ask[P+1]``. The weak row must lie inside the bar (no buy
  imbalance on the low row, no sell imbalance on the high row); the dominant side must be > 0 and
  ``>= min_volume``; a zero weak side counts unless ``ignore_zero``. ``>=``, not ``>``.
* C14: a stack is at least 3 adjacent rows of one bar with imbalances of the same side.
* §2.5: an unfinished auction is a bar whose high (low) row has both buy and sell volume.
* §2.6: a large trade has ``price * qty >= min_notional``, per print or with prints of equal
  (``ts_event``, side) merged.
* §2.7: bar-level delta divergence: an up bar with negative delta or a down bar with positive delta.
* §2.9: book band ``[mid * (1 - b), mid * (1 + b)]``, both ends included, decided on integer ticks
  with exact fractions (a float ``100 * 1.005`` is ``100.49999999999999``); imbalance
  ``(B - A) / (B + A)``; a wall is a level in the band with ``qty >= 3 *`` the median level size
  of its side in the band.

NOTE: quantities are float64 sums, so a ratio that is exact in decimal (0.3 against 0.1) can miss
by an ulp. Ratio and threshold comparisons therefore allow a relative slack of
:data:`RELATIVE_SLACK` (1e-9): ``a >= r * b`` is decided as ``a >= r * b * (1 - 1e-9)``. That is
far above the rounding of any sum of venue quantities and far below any difference a trader
would read; sign decisions (delta > 0) treat ``|delta| <= 1e-9 * volume`` as zero.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import polars as pl

from wadm.errors import UsageError
from wadm.records import BANDS

__all__ = [
    "IMBALANCE_SCHEMA",
    "RELATIVE_SLACK",
    "BandDepth",
    "Wall",
    "book_bands",
    "delta_divergence",
    "imbalances",
    "large_trades",
    "size_distribution",
    "stacked",
    "unfinished_auctions",
    "walls",
]

RELATIVE_SLACK = 1e-9

IMBALANCE_SCHEMA: dict[str, pl.DataType] = {
    "start": pl.Int64(),
    "index": pl.Int64(),  # the dominant row
    "side": pl.String(),  # "buy" (ask dominates the bid row below) | "sell" (bid dominates the ask row above)
    "dominant": pl.Float64(),  # the dominant row's volume on its side
    "weak": pl.Float64(),  # the diagonal neighbour's volume on the other side
}

STACK_SCHEMA: dict[str, pl.DataType] = {
    "start": pl.Int64(),
    "side": pl.String(),
    "from_index": pl.Int64(),
    "to_index": pl.Int64(),
    "rows": pl.Int64(),
}

LARGE_TRADE_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Int64(),  # ts_event, ns
    "price": pl.Float64(),
    "qty": pl.Float64(),
    "notional": pl.Float64(),
    "side": pl.String(),
    "prints": pl.Int64(),  # prints merged into this row (1 without merging)
}


def _at_least(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    """``a >= b`` with the relative slack (``b`` non-negative)."""
    return a >= b * (1.0 - RELATIVE_SLACK)


def _side_name(side: pl.Expr) -> pl.Expr:
    return pl.when(side > 0).then(pl.lit("buy")).otherwise(pl.lit("sell"))


# ---- footprint readings ------------------------------------------------------------------------


def imbalances(
    footprints: pl.DataFrame,
    *,
    ratio: float = 3.0,
    min_volume: float = 0.0,
    ignore_zero: bool = False,
    strict: bool = False,
) -> pl.DataFrame:
    """Diagonal imbalances of each bar's footprint (C13).

    Args:
        footprints: dense footprints as :func:`wadm.analytics.bars.footprints` makes them
            (``start``, ``index``, ``buy``, ``sell``). A row missing inside a bar's range is taken
            as outside the bar, so its neighbours get no comparison.
        ratio: the multiple the dominant side must reach (3.0 = 300 %).
        min_volume: the least dominant volume that can make an imbalance.
        ignore_zero: when True, a zero on the weak side makes no imbalance (ATAS "ignore zero").
        strict: compare with ``>`` (the vendors' "more than") instead of the convention's ``>=``.

    Returns:
        Columns of :data:`IMBALANCE_SCHEMA`, sorted by ``start``, ``index``, ``side``.

    Raises:
        UsageError: a ratio that is not positive.
    """
    if ratio <= 0:
        raise UsageError(f"the imbalance ratio must be positive, got {ratio}")
    if footprints.is_empty():
        return pl.DataFrame(schema=IMBALANCE_SCHEMA)
    start, index = pl.col("start"), pl.col("index")

    def neighbour(step: int, column: str) -> pl.Expr:
        # PERF: a global shift plus an adjacency check instead of a window per bar.
        same_bar = (start.shift(step) == start) & (index.shift(step) == index - step)
        return pl.when(same_bar).then(pl.col(column).shift(step))

    def found(dominant: pl.Expr, weak: pl.Expr) -> pl.Expr:
        target = weak * ratio
        meets = dominant > target * (1.0 + RELATIVE_SLACK) if strict else _at_least(dominant, target)
        ok = weak.is_not_null() & (dominant > 0) & (dominant >= min_volume) & meets
        return ok & (weak > 0) if ignore_zero else ok

    frame = footprints.lazy().sort("start", "index").with_columns(
        below_sell=neighbour(1, "sell"), above_buy=neighbour(-1, "buy")
    )
    buys = frame.filter(found(pl.col("buy"), pl.col("below_sell"))).select(
        start, index, side=pl.lit("buy"), dominant="buy", weak="below_sell"
    )
    sells = frame.filter(found(pl.col("sell"), pl.col("above_buy"))).select(
        start, index, side=pl.lit("sell"), dominant="sell", weak="above_buy"
    )
    return pl.concat([buys, sells]).sort("start", "index", "side").collect()


def stacked(imbalances: pl.DataFrame, *, min_rows: int = 3) -> pl.DataFrame:
    """Runs of at least ``min_rows`` adjacent rows of one bar with same-side imbalances (C14).

    Args:
        imbalances: the output of :func:`imbalances`.
        min_rows: the shortest run that counts as a stack.

    Returns:
        Columns ``start``, ``side``, ``from_index``, ``to_index`` (inclusive) and ``rows``, sorted
        by ``start``, ``from_index``, ``side``.

    Raises:
        UsageError: ``min_rows`` below 1.
    """
    if min_rows < 1:
        raise UsageError(f"a stack needs at least one row, got min_rows={min_rows}")
    if imbalances.is_empty():
        return pl.DataFrame(schema=STACK_SCHEMA)
    start, side, index = pl.col("start"), pl.col("side"), pl.col("index")
    new_run = (start != start.shift(1)) | (side != side.shift(1)) | (index != index.shift(1) + 1)
    return (
        imbalances.lazy()
        .sort("start", "side", "index")
        .with_columns(run=new_run.fill_null(True).cum_sum())
        .group_by("start", "side", "run")
        .agg(from_index=index.min(), to_index=index.max(), rows=pl.len().cast(pl.Int64))
        .filter(pl.col("rows") >= min_rows)
        .sort("start", "from_index", "side")
        .select(list(STACK_SCHEMA))
        .collect()
    )


def unfinished_auctions(footprints: pl.DataFrame) -> pl.DataFrame:
    """Per bar, whether its high row and its low row traded on both sides (§2.5).

    Args:
        footprints: footprints (``start``, ``index``, ``buy``, ``sell``).

    Returns:
        Columns ``start``, ``high`` and ``low`` (bool: unfinished at that extreme), sorted by ``start``.
    """
    buy, sell, index = pl.col("buy"), pl.col("sell"), pl.col("index")
    both = (buy > 0) & (sell > 0)
    return (
        footprints.lazy()
        .group_by("start")
        .agg(high=both.get(index.arg_max()), low=both.get(index.arg_min()))
        .sort("start")
        .collect()
    )


# ---- trade readings ----------------------------------------------------------------------------


def large_trades(trades: pl.DataFrame, *, min_notional: float, merge: bool = False) -> pl.DataFrame:
    """Trades whose notional ``price * qty`` reaches ``min_notional`` (§2.6), newest first.

    Args:
        trades: stored trades (``ts_event``, ``price``, ``qty``, ``side``), in print order.
        min_notional: the threshold in quote units, compared with the relative slack.
        merge: merge prints of equal ``ts_event`` and side first (a sweep through several prices
            arrives as several prints): quantities and notionals are summed and ``price`` is the
            volume-weighted average ``notional / qty``, so ``notional = price * qty`` still holds.
            The merged notional is compared with the threshold. NOTE: two takers on the same side
            in the same venue millisecond merge too; the data cannot tell them apart.

    Returns:
        Columns of ``ts`` (ns), ``price``, ``qty``, ``notional``, ``side`` (``"buy"``/``"sell"``)
        and ``prints``; newest first, and among equal timestamps the later print first.
    """
    frame = trades.lazy().with_row_index("order").select(
        "order",
        ts=pl.col("ts_event"),
        price=pl.col("price"),
        qty=pl.col("qty"),
        notional=pl.col("price") * pl.col("qty"),
        side=pl.col("side"),
        prints=pl.lit(1, dtype=pl.Int64),
    )
    if merge:
        frame = (
            frame.group_by("ts", "side", maintain_order=True)
            .agg(
                pl.col("order").first(),
                pl.col("qty").sum(),
                pl.col("notional").sum(),
                prints=pl.len().cast(pl.Int64),
            )
            .with_columns(price=pl.col("notional") / pl.col("qty"))
        )
    return (
        frame.filter(_at_least(pl.col("notional"), pl.lit(min_notional)))
        .sort("ts", "order", descending=True)
        .select(
            "ts", "price", "qty", "notional", side=_side_name(pl.col("side")), prints=pl.col("prints")
        )
        .collect()
    )


def size_distribution(trades: pl.DataFrame, edges: Sequence[float]) -> pl.DataFrame:
    """Count trades and sum their quantity per size bucket and aggressor side (§2.8).

    Buckets are ``[0, e0)``, ``[e0, e1)``, ..., ``[e_last, inf)``: lower edge inclusive, as rows
    are (C1). Quantity and edge are both the float nearest to a decimal, so a trade of exactly an
    edge's size falls into the bucket above it.

    Args:
        trades: stored trades (``qty``, ``side``).
        edges: strictly increasing positive bucket edges in base units (e.g. 0.01, 0.1, 1, 10).

    Returns:
        One row per bucket and side (dense, zeros included), columns ``bucket`` (0-based),
        ``lower``, ``upper``, ``side`` (``"buy"``/``"sell"``), ``trades``, ``qty``; sorted by
        bucket then side.

    Raises:
        UsageError: edges that are empty, not positive or not strictly increasing.
    """
    edges = [float(e) for e in edges]
    if not edges or edges[0] <= 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise UsageError(f"size edges must be positive and strictly increasing, got {edges}")
    lowers, uppers = [0.0, *edges], [*edges, math.inf]
    skeleton = pl.DataFrame(
        {"bucket": list(range(len(lowers))), "lower": lowers, "upper": uppers},
        schema={"bucket": pl.Int64(), "lower": pl.Float64(), "upper": pl.Float64()},
    ).join(pl.DataFrame({"side": ["buy", "sell"]}), how="cross")
    bucket = pl.sum_horizontal([(pl.col("qty") >= e).cast(pl.Int64) for e in edges])
    counted = (
        trades.lazy()
        .group_by(bucket.alias("bucket"), _side_name(pl.col("side")).alias("side"))
        .agg(trades=pl.len().cast(pl.Int64), qty=pl.col("qty").sum())
    )
    return (
        skeleton.lazy()
        .join(counted, on=["bucket", "side"], how="left")
        .with_columns(pl.col("trades").fill_null(0), pl.col("qty").fill_null(0.0))
        .sort("bucket", "side")
        .collect()
    )


def delta_divergence(bars: pl.DataFrame) -> pl.DataFrame:
    """Bar-level delta divergence flags (§2.7).

    An up bar closes above its open, a down bar below it. A delta within
    ``RELATIVE_SLACK * volume`` of zero (float noise) counts as zero and flags nothing.

    Args:
        bars: bars with ``start``, ``open``, ``close``, ``volume`` and ``delta``.

    Returns:
        Columns ``start``, ``up_bar_negative_delta`` and ``down_bar_positive_delta`` (bool), in
        the bars' order.
    """
    delta, noise = pl.col("delta"), pl.col("volume") * RELATIVE_SLACK
    return bars.select(
        "start",
        up_bar_negative_delta=(pl.col("close") > pl.col("open")) & (delta < -noise),
        down_bar_positive_delta=(pl.col("close") < pl.col("open")) & (delta > noise),
    )


# ---- order book --------------------------------------------------------------------------------

Level = tuple[float, float]


@dataclass(frozen=True, slots=True)
class BandDepth:
    """Book depth within one band around mid.

    Attributes:
        band: the band as a fraction of mid (0.005 = 0.5 %).
        low: the band's lower price edge ``mid * (1 - band)``, included.
        high: the band's upper price edge ``mid * (1 + band)``, included.
        bid_depth: summed bid quantity of the levels in the band.
        ask_depth: summed ask quantity of the levels in the band.
        imbalance: ``(bid - ask) / (bid + ask)``, in [-1, 1]; 0 when both are zero.
    """

    band: float
    low: float
    high: float
    bid_depth: float
    ask_depth: float
    imbalance: float


@dataclass(frozen=True, slots=True)
class Wall:
    """A level much larger than its side's typical level within a band.

    Attributes:
        side: ``"bid"`` or ``"ask"``.
        price: the level's price.
        qty: the level's quantity.
        multiple: ``qty`` over the median level quantity of that side within the band.
    """

    side: Literal["bid", "ask"]
    price: float
    qty: float
    multiple: float


def _tick_range(mid2: int, band: float) -> tuple[int, int, Fraction, Fraction]:
    """The ticks inside ``[mid (1 - b), mid (1 + b)]`` for a mid of ``mid2`` half-ticks, exactly.

    Returns the lowest and highest tick inside and the two edges in ticks (fractions).
    """
    if not 0 <= band < 1:
        raise UsageError(f"a band is a fraction of mid in [0, 1), got {band}")
    b = Fraction(repr(float(band)))  # the decimal the caller wrote: 0.005 -> 1/200
    low, high = Fraction(mid2, 2) * (1 - b), Fraction(mid2, 2) * (1 + b)
    return math.ceil(low), math.floor(high), low, high


def _ticks_of(price: float, tick: float) -> int:
    return round(price / tick)  # exact for prices on the tick grid


def book_bands(
    bids: Sequence[Level], asks: Sequence[Level], tick: float, bands: Sequence[float] = BANDS
) -> dict[float, BandDepth]:
    """Depth and imbalance of the book within bands around mid, with exact band edges (§2.9).

    Prices are turned into integer ticks and mid into half-ticks (``best_bid + best_ask`` in
    ticks), and a level is inside a band iff ``mid (1 - b) <= price <= mid (1 + b)`` holds in exact
    rational arithmetic, with ``b`` read as the decimal it was written as. Quantities are summed
    with :func:`math.fsum` (correctly rounded).

    Args:
        bids: bid levels ``(price, qty)`` (best first as books give them; any order works).
        asks: ask levels ``(price, qty)`` (best first as books give them; any order works).
        tick: the instrument's price increment; every price must lie on its grid.
        bands: band half-widths as fractions of mid.

    Returns:
        One :class:`BandDepth` per band, keyed by the band; empty when a side has no levels.

    Raises:
        UsageError: a tick that is not positive, or a band outside [0, 1).
    """
    if tick <= 0:
        raise UsageError(f"tick must be positive, got {tick}")
    if not bids or not asks:
        return {}
    bid_ticks = [(_ticks_of(p, tick), q) for p, q in bids]
    ask_ticks = [(_ticks_of(p, tick), q) for p, q in asks]
    mid2 = max(t for t, _ in bid_ticks) + min(t for t, _ in ask_ticks)
    tick_q = Fraction(repr(float(tick)))
    out: dict[float, BandDepth] = {}
    for band in bands:
        lo, hi, low, high = _tick_range(mid2, band)
        b = math.fsum(q for t, q in bid_ticks if lo <= t <= hi)
        a = math.fsum(q for t, q in ask_ticks if lo <= t <= hi)
        out[band] = BandDepth(
            band=band,
            low=float(low * tick_q),
            high=float(high * tick_q),
            bid_depth=b,
            ask_depth=a,
            imbalance=(b - a) / (b + a) if b + a else 0.0,
        )
    return out


def walls(
    levels: Sequence[Level],
    side: Literal["bid", "ask"],
    *,
    mid: float,
    band: float,
    tick: float,
    factor: float = 3.0,
) -> tuple[Wall, ...]:
    """Levels of one side within a band with ``qty >= factor *`` that side's median level (§2.9).

    The band is decided exactly as in :func:`book_bands`; ``mid`` must lie on the half-tick grid
    (``(best_bid + best_ask) / 2`` does). The median is taken over that side's levels within the
    band (the mean of the two middle ones for an even count); the comparison allows the relative
    slack.

    Args:
        levels: the side's levels ``(price, qty)``, in any order.
        side: ``"bid"`` or ``"ask"``, copied into the results.
        mid: the book's mid price.
        band: the band half-width as a fraction of mid.
        tick: the instrument's price increment.
        factor: how many medians make a wall.

    Returns:
        The walls in the order of ``levels``; empty when the band holds no level.

    Raises:
        UsageError: a tick or factor that is not positive, or a band outside [0, 1).
    """
    if tick <= 0 or factor <= 0:
        raise UsageError(f"tick and factor must be positive, got tick={tick} factor={factor}")
    lo, hi, _, _ = _tick_range(round(2 * mid / tick), band)
    inside = [(p, q) for p, q in levels if lo <= _ticks_of(p, tick) <= hi]
    if not inside:
        return ()
    median = statistics.median(q for _, q in inside)
    if median <= 0:
        return ()
    floor = factor * median * (1.0 - RELATIVE_SLACK)
    return tuple(Wall(side, p, q, q / median) for p, q in inside if q >= floor)
