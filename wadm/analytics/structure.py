"""Market structure from OHLCV bars: swings, trend, BOS/CHoCH, ranges, key levels, Wyckoff candidates.

Theory of operation
-------------------
Everything starts from the fractal swings of convention C15. A bar ``i`` is a swing high when its
high is strictly above the ``left`` bars before it and at least the ``right`` bars after it (so of
equal highs the leftmost wins); lows are the mirror. The first ``left`` and last ``right`` bars
lack a full window and are never swings. A swing is only *known* at bar ``i + right``
(``confirmed_at``), and every consumer below uses a swing from its confirmation bar on, never
earlier. That makes :func:`breaks`, :func:`wyckoff_candidates` and the unbroken-level tests causal:
the answer for bar ``k`` depends on bars ``0..k`` only, so a shorter history gives the same rows.

* Labels compare each swing with the previous swing of its kind (HH/LH/EH, HL/LL/EL);
  :func:`trend` reads the last high and low label (section 3.2).
* :func:`breaks` is the LuxAlgo-style state machine of C16: it holds the latest confirmed swing
  high and low (a newer swing replaces an older one, broken or not), fires once per level on the
  first bar that closes beyond it (``trigger="wick"``: trades beyond it), and names the break
  CHoCH when it goes against the current bias, BOS otherwise. The bias starts neutral.
* A swing is *unbroken* while no later bar closed (``wick``: traded) beyond it. All closes since
  the later of the latest swing high and low then lie inside them: that is the range of
  :func:`current_range`. :func:`key_levels` adds the latest unbroken swings as resistance and
  support to levels the caller supplies (POC, VA edges, naked POCs, HVNs).
* :func:`wyckoff_candidates` applies the project rule of section 3.5 bar by bar and reports
  candidates with their inputs (level, volume ratio, ATR multiple). They are never verdicts.
* :func:`swing_divergence` compares the CVD at consecutive swings of one kind (section 2.7).

Units: ``start`` is passed through untouched; the project unit is Unix ns UTC (convention C4).
``index`` is the bar's 0-based position in the ``bars`` frame. Prices are float64 and compared
exactly (the vectors use values that float64 represents exactly).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import polars as pl

from wadm.errors import UsageError

__all__ = [
    "BAR_COLUMNS",
    "SWING_COLUMNS",
    "Range",
    "Trigger",
    "atr",
    "bias",
    "breaks",
    "current_range",
    "key_levels",
    "swing_divergence",
    "swings",
    "trend",
    "wyckoff_candidates",
]

Trigger = Literal["close", "wick"]
"""What breaks a level: a close beyond it (C16 default) or any trade beyond it (the wick)."""

BAR_COLUMNS = ("start", "open", "high", "low", "close", "volume")
SWING_COLUMNS = ("index", "start", "price", "kind", "label", "confirmed_at")


@dataclass(frozen=True, slots=True)
class Range:
    """The range between the latest swing high and swing low while both hold (section 3.4).

    Attributes:
        high: the latest swing high's price.
        low: the latest swing low's price.
        since: ``start`` of the later of the two swing bars; every close from there on lies
            inside ``[low, high]``.
        since_index: that bar's position.
        bars: bars from ``since_index`` through the last bar, both included.
    """

    high: float
    low: float
    since: int
    since_index: int
    bars: int


# ---- input checks -----------------------------------------------------------------------------


def _check_bars(bars: pl.DataFrame) -> None:
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise UsageError(f"bars lack the columns {missing}; expected {list(BAR_COLUMNS)}")
    if not bars["start"].is_sorted():
        raise UsageError("bars must be ascending by start")


def _check_swings(swings: pl.DataFrame) -> None:
    missing = [c for c in SWING_COLUMNS if c not in swings.columns]
    if missing:
        raise UsageError(f"swings lack the columns {missing}; build them with swings()")


def _check_trigger(trigger: str) -> None:
    if trigger not in ("close", "wick"):
        raise UsageError(f"trigger must be 'close' or 'wick', got {trigger!r}")


# ---- swings and trend (C15, section 3.2) ------------------------------------------------------


def _pivot(col: str, left: int, right: int, strict: bool, sign: int) -> pl.Expr:
    """True where ``col`` is a pivot: strictly beyond the left bars, at least the right bars."""
    x = pl.col(col) * sign  # sign -1 turns lows into highs
    tests = [x > pl.col(col).shift(k) * sign for k in range(1, left + 1)]
    tests += [(x > s) if strict else (x >= s) for s in (pl.col(col).shift(-k) * sign for k in range(1, right + 1))]
    return pl.all_horizontal(tests).fill_null(False)  # a missing neighbour (edge) is no pivot


def swings(
    bars: pl.DataFrame, *, left: int = 2, right: int = 2, strict: bool = False, tolerance: float = 0.0
) -> pl.DataFrame:
    """Fractal swing highs and lows with HH/LH/EH and HL/LL/EL labels (convention C15).

    Args:
        bars: OHLCV bars ascending by ``start``.
        left: bars on the left the pivot must beat strictly.
        right: bars on the right it must match or beat; the swing is confirmed ``right`` bars later.
        strict: beat the right bars strictly too (the "strict on both sides" rule of other
            implementations: equal highs then make no swing).
        tolerance: absolute price difference up to which two swings of one kind count as equal
            (EH/EL). The default 0.0 means exactly equal.

    Returns:
        One row per swing, ascending by ``index`` (a bar that is both a swing high and a swing low
        gives the high first): ``index``, ``start``, ``price``, ``kind`` (``high``/``low``),
        ``label`` (against the previous swing of the same kind; null for the first of each kind),
        ``confirmed_at`` (``index + right``).

    Raises:
        UsageError: bad columns or order, ``left``/``right`` below 1, or a negative tolerance.
    """
    _check_bars(bars)
    if left < 1 or right < 1 or tolerance < 0:
        raise UsageError(f"need left, right >= 1 and tolerance >= 0, got {left}, {right}, {tolerance}")
    base = bars.with_row_index("index").with_columns(
        pl.col("index").cast(pl.Int64),
        _pivot("high", left, right, strict, 1).alias("_is_high"),
        _pivot("low", left, right, strict, -1).alias("_is_low"),
    )
    out = (
        pl.concat([
            base.filter("_is_high").select("index", "start", pl.col("high").alias("price"), kind=pl.lit("high")),
            base.filter("_is_low").select("index", "start", pl.col("low").alias("price"), kind=pl.lit("low")),
        ])
        .sort("index", "kind")
        .with_columns(pl.col("price").cast(pl.Float64))
    )
    diff = pl.col("price") - pl.col("price").shift(1).over("kind")
    high = pl.col("kind") == "high"
    label = (
        pl.when(diff.is_null()).then(None)
        .when(diff > tolerance).then(pl.when(high).then(pl.lit("HH")).otherwise(pl.lit("HL")))
        .when(diff < -tolerance).then(pl.when(high).then(pl.lit("LH")).otherwise(pl.lit("LL")))
        .otherwise(pl.when(high).then(pl.lit("EH")).otherwise(pl.lit("EL")))
    )
    return out.with_columns(label.alias("label"), (pl.col("index") + right).alias("confirmed_at")).select(
        SWING_COLUMNS
    )


def trend(swings: pl.DataFrame) -> str:
    """Trend by labels (section 3.2): ``up`` on HH + HL, ``down`` on LH + LL, else ``range``.

    The label trend lags the break bias of :func:`bias`; serve both.

    Args:
        swings: the output of :func:`swings`.

    Returns:
        ``up``, ``down`` or ``range`` (also when a kind has no labelled swing yet).
    """
    _check_swings(swings)
    last = {kind: swings.filter(pl.col("kind") == kind)["label"].to_list()[-1:] for kind in ("high", "low")}
    pair = (last["high"] or [None])[0], (last["low"] or [None])[0]
    return {("HH", "HL"): "up", ("LH", "LL"): "down"}.get(pair, "range")


# ---- BOS / CHoCH (C16) ------------------------------------------------------------------------


def _by_confirmation(swings: pl.DataFrame, kind: str) -> list[tuple[int, int, float]]:
    """``(confirmed_at, index, price)`` of one kind of swing, in the order they become known."""
    rows = swings.filter(pl.col("kind") == kind).select("confirmed_at", "index", "price").rows()
    return sorted((int(c), int(i), float(p)) for c, i, p in rows)


def breaks(bars: pl.DataFrame, swings: pl.DataFrame, *, trigger: Trigger = "close") -> pl.DataFrame:
    """Structure breaks of the latest confirmed swings: BOS and CHoCH (convention C16).

    A causal state machine over the bars. At each bar it first takes the swings confirmed at that
    bar (a newer swing high replaces the tracked one, broken or not; lows alike), then tests the
    tracked high (bullish) before the tracked low (bearish). A level breaks once, on the first bar
    whose close is beyond it (``trigger="wick"``: high above / low below); it is CHoCH when the
    bias was the other way, otherwise BOS, and the bias takes the break's direction. The bias
    starts neutral, so the first break is a BOS.

    Args:
        bars: OHLCV bars ascending by ``start``, the frame the swings were computed on.
        swings: the output of :func:`swings`; swings confirmed after the last bar are ignored.
        trigger: ``close`` (default) or ``wick``.

    Returns:
        One row per break in bar order: ``index`` (breaking bar), ``start``, ``type``
        (``BOS``/``CHoCH``), ``direction`` (``bullish``/``bearish``), ``level``, ``swing_index``.

    Raises:
        UsageError: bad columns, order or trigger.
    """
    _check_bars(bars)
    _check_swings(swings)
    _check_trigger(trigger)
    above = bars["close" if trigger == "close" else "high"].to_list()
    below = bars["close" if trigger == "close" else "low"].to_list()
    starts = bars["start"].to_list()
    pending = {"high": deque(_by_confirmation(swings, "high")), "low": deque(_by_confirmation(swings, "low"))}
    tracked: dict[str, tuple[int, float] | None] = {"high": None, "low": None}
    state = 0  # +1 bullish, -1 bearish, 0 neutral
    rows: list[tuple[int, object, str, str, float, int]] = []
    for i in range(bars.height):
        for kind, queue in pending.items():
            while queue and queue[0][0] <= i:
                _, index, price = queue.popleft()
                tracked[kind] = (index, price)
        high, low = tracked["high"], tracked["low"]
        if high is not None and above[i] > high[1]:
            rows.append((i, starts[i], "CHoCH" if state < 0 else "BOS", "bullish", high[1], high[0]))
            state, tracked["high"] = 1, None
        if low is not None and below[i] < low[1]:
            rows.append((i, starts[i], "CHoCH" if state > 0 else "BOS", "bearish", low[1], low[0]))
            state, tracked["low"] = -1, None
    schema = {
        "index": pl.Int64(), "start": bars.schema["start"], "type": pl.String(), "direction": pl.String(),
        "level": pl.Float64(), "swing_index": pl.Int64(),
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def bias(events: pl.DataFrame) -> str:
    """The break bias after the last event of :func:`breaks`: ``bullish``, ``bearish`` or ``neutral``."""
    return str(events["direction"][-1]) if events.height else "neutral"


# ---- unbroken swings: range and key levels (section 3.4) --------------------------------------


def _with_broken(bars: pl.DataFrame, swings: pl.DataFrame, trigger: Trigger) -> pl.DataFrame:
    """The swings confirmed by the last bar, with ``broken``: a later bar went beyond the price."""
    _check_bars(bars)
    _check_swings(swings)
    _check_trigger(trigger)
    above = bars["close" if trigger == "close" else "high"]
    below = bars["close" if trigger == "close" else "low"]
    # max / min over the bars strictly after each position (null after the last bar)
    after_max = above.cum_max(reverse=True).shift(-1)
    after_min = below.cum_min(reverse=True).shift(-1)
    known = swings.filter(pl.col("confirmed_at") < bars.height)
    index = known["index"]
    return known.with_columns(
        pl.when(pl.col("kind") == "high")
        .then(after_max.gather(index) > pl.col("price"))
        .otherwise(after_min.gather(index) < pl.col("price"))
        .fill_null(False)
        .alias("broken")
    )


def current_range(
    bars: pl.DataFrame, swings: pl.DataFrame, *, min_bars: int = 5, trigger: Trigger = "close"
) -> Range | None:
    """The range between the latest swing high and low while neither is broken (section 3.4).

    Definition: take the latest confirmed swing high and the latest confirmed swing low as of the
    last bar. There is a range when neither is broken (no later bar closed above the high / below
    the low; ``trigger="wick"``: traded beyond), the high is above the low, and at least
    ``min_bars`` bars (both ends included) run from the later of the two swing bars to the last
    bar. The default of 5 is one swing window at the API's default ``swing=2``. The other reading
    of section 3.4 (mixed labels) is :func:`trend` answering ``range``.

    Args:
        bars: OHLCV bars ascending by ``start``.
        swings: the output of :func:`swings` on those bars.
        min_bars: the least number of bars the range must have held.
        trigger: what breaks a swing: ``close`` (default) or ``wick``.

    Returns:
        The range, or None.

    Raises:
        UsageError: bad columns, order or trigger, or ``min_bars`` below 1.
    """
    if min_bars < 1:
        raise UsageError(f"min_bars must be at least 1, got {min_bars}")
    known = _with_broken(bars, swings, trigger)
    high = known.filter(pl.col("kind") == "high").tail(1)
    low = known.filter(pl.col("kind") == "low").tail(1)
    if high.is_empty() or low.is_empty() or high["broken"][0] or low["broken"][0]:
        return None
    since_index = max(int(high["index"][0]), int(low["index"][0]))
    held = bars.height - since_index
    top, bottom = float(high["price"][0]), float(low["price"][0])
    if held < min_bars or top <= bottom:
        return None
    return Range(high=top, low=bottom, since=int(bars["start"][since_index]), since_index=since_index, bars=held)


def key_levels(
    bars: pl.DataFrame,
    swings: pl.DataFrame,
    *,
    extra: Iterable[tuple[str, float]] = (),
    trigger: Trigger = "close",
    decimals: int = 4,
) -> pl.DataFrame:
    """Support and resistance around the last close: unbroken swings plus the caller's levels.

    Resistance is the latest swing high no later bar has broken (closed above; ``trigger="wick"``:
    traded above), support the latest such swing low; either may be an older swing when newer
    ones were broken. This is independent of :func:`breaks`, which only tracks the newest swing.
    Volume-profile levels come in through ``extra`` because this module reads no trades.

    Args:
        bars: OHLCV bars ascending by ``start``; the last close is the reference price.
        swings: the output of :func:`swings` on those bars.
        extra: ``(kind, price)`` pairs such as ``("poc", 101.5)``, ``("vah", …)``, ``("naked_poc", …)``.
        trigger: what breaks a swing: ``close`` (default) or ``wick``.
        decimals: ``distance_pct`` is rounded half away from zero to this many decimals (4: one
            part per million of the price, far below a tick); sorting uses the unrounded value.

    Returns:
        ``price``, ``kind`` (``resistance``/``support`` or the given kind), ``distance_pct``
        (``(price - close) / close * 100``, positive above the close; null when the close is 0),
        ascending by absolute distance, then price. Empty when there are no bars.

    Raises:
        UsageError: bad columns, order or trigger.
    """
    known = _with_broken(bars, swings, trigger).filter(~pl.col("broken"))
    levels: list[tuple[float, str]] = []
    for kind, name in (("high", "resistance"), ("low", "support")):
        latest = known.filter(pl.col("kind") == kind)["price"].to_list()[-1:]
        levels += [(float(p), name) for p in latest]
    levels += [(float(price), str(kind)) for kind, price in extra]
    frame = pl.DataFrame(levels, schema={"price": pl.Float64(), "kind": pl.String()}, orient="row")
    if bars.is_empty():
        return frame.clear().with_columns(distance_pct=pl.lit(None, pl.Float64))
    close = float(bars["close"][-1])
    distance = (pl.col("price") - close) / close * 100 if close != 0 else pl.lit(None, pl.Float64)
    return (
        frame.with_columns(distance.alias("distance_pct"))
        .sort(pl.col("distance_pct").abs(), "price", maintain_order=True)
        .with_columns(pl.col("distance_pct").round(decimals, mode="half_away_from_zero"))
    )


# ---- ATR and Wyckoff candidates (section 3.5) -------------------------------------------------


def atr(bars: pl.DataFrame, period: int = 14) -> pl.Series:
    """Average true range: the simple mean of the true range over the ``period`` bars ending here.

    True range is ``max(high - low, |high - prev close|, |low - prev close|)``, and ``high - low``
    on the first bar. NOTE: a simple mean, not Wilder's smoothing: Wilder's value depends on how
    far back the history starts (its seed), the simple mean only on the last ``period`` bars, so
    an answer does not change with the request's ``limit``.

    Args:
        bars: OHLCV bars ascending by ``start``.
        period: bars in the mean.

    Returns:
        Float64 series ``atr`` aligned with ``bars``; null on the first ``period - 1`` bars.

    Raises:
        UsageError: bad columns or order, or ``period`` below 1.
    """
    _check_bars(bars)
    if period < 1:
        raise UsageError(f"period must be at least 1, got {period}")
    prev = pl.col("close").shift(1)
    true_range = pl.max_horizontal(
        pl.col("high") - pl.col("low"), (pl.col("high") - prev).abs(), (pl.col("low") - prev).abs()
    )  # max_horizontal skips the null of the first bar's missing previous close
    return bars.select(true_range.cast(pl.Float64).rolling_mean(period).alias("atr")).to_series()


def _levels(
    n: int, swings: pl.DataFrame, kind: str, count: int, pick: Callable[[Iterable[float]], float]
) -> list[float | None]:
    """Per bar, ``pick`` over the prices of the last ``count`` swings of a kind confirmed by then."""
    queue = deque(_by_confirmation(swings, kind))
    recent: deque[float] = deque(maxlen=count)
    out: list[float | None] = []
    for i in range(n):
        while queue and queue[0][0] <= i:
            recent.append(queue.popleft()[2])
        out.append(pick(recent) if recent else None)
    return out


def wyckoff_candidates(
    bars: pl.DataFrame,
    swings: pl.DataFrame,
    *,
    atr_period: int = 14,
    volume_window: int = 20,
    lookback_swings: int = 2,
    climax_volume: float = 2.5,
    climax_range: float = 1.5,
    climax_close: float = 0.3,
) -> pl.DataFrame:
    """Wyckoff spring, upthrust and climax candidates with their inputs (project rule, section 3.5).

    These are candidates for a reader to weigh, never verdicts: no phase, no confirmation.
    Per bar, with swings used from their confirmation bar on:

    * support = min of the last ``lookback_swings`` confirmed swing lows (fewer while fewer
      exist), resistance = max of the last confirmed swing highs;
    * spring: ``low < support and close > support``; upthrust: ``high > resistance and
      close < resistance``; a close exactly at the level does not fire;
    * selling climax: ``volume_ratio >= climax_volume``, ``atr_multiple >= climax_range`` and
      ``close - low >= climax_close * (high - low)``; buying climax: the same with
      ``high - close``. The thresholds are inclusive and compared on the reported columns. As
      in section 3.5 the bar's direction is not tested, so a wide bar closing mid-range can be
      both climaxes.

    ``volume_ratio`` is the bar's volume over the mean volume of the previous ``volume_window``
    bars (null until that window is full, or when its mean is 0); ``atr_multiple`` is the bar's
    range over :func:`atr` of the previous bar, so the bar is not in its own yardstick (null for
    the first ``atr_period`` bars, or when that ATR is 0). Both are reported on every row.

    Args:
        bars: OHLCV bars ascending by ``start``.
        swings: the output of :func:`swings` on those bars.
        atr_period: bars in the ATR.
        volume_window: previous bars in the average volume.
        lookback_swings: confirmed swings per kind that make the level.
        climax_volume: least volume ratio of a climax.
        climax_range: least ATR multiple of a climax.
        climax_close: least share of the range between the close and the low (selling climax)
            or the high (buying climax).

    Returns:
        ``index``, ``start``, ``type`` (``spring``/``upthrust``/``selling_climax``/
        ``buying_climax``), ``level`` (support, resistance, the bar's low, the bar's high),
        ``volume_ratio``, ``atr_multiple``; by bar, and in that type order within a bar.

    Raises:
        UsageError: bad columns or order, or a window below 1.
    """
    _check_bars(bars)
    _check_swings(swings)
    if volume_window < 1 or lookback_swings < 1:
        raise UsageError(f"volume_window and lookback_swings must be at least 1, got {volume_window}, "
                         f"{lookback_swings}")
    n = bars.height
    prev_atr = atr(bars, atr_period).shift(1)
    avg_volume = pl.col("volume").shift(1).rolling_mean(volume_window)
    rng = pl.col("high") - pl.col("low")
    frame = bars.with_row_index("index").with_columns(
        pl.col("index").cast(pl.Int64),
        pl.Series("support", _levels(n, swings, "low", lookback_swings, min), dtype=pl.Float64),
        pl.Series("resistance", _levels(n, swings, "high", lookback_swings, max), dtype=pl.Float64),
        pl.when(avg_volume > 0).then(pl.col("volume") / avg_volume).cast(pl.Float64).alias("volume_ratio"),
        pl.when(prev_atr > 0).then(rng / prev_atr).cast(pl.Float64).alias("atr_multiple"),
    )
    climax = (pl.col("volume_ratio") >= climax_volume) & (pl.col("atr_multiple") >= climax_range)
    rules: list[tuple[str, pl.Expr, pl.Expr]] = [
        ("spring", (pl.col("low") < pl.col("support")) & (pl.col("close") > pl.col("support")), pl.col("support")),
        ("upthrust", (pl.col("high") > pl.col("resistance")) & (pl.col("close") < pl.col("resistance")),
         pl.col("resistance")),
        ("selling_climax", climax & (pl.col("close") - pl.col("low") >= climax_close * rng), pl.col("low")),
        ("buying_climax", climax & (pl.col("high") - pl.col("close") >= climax_close * rng), pl.col("high")),
    ]
    found = [
        frame.filter(test.fill_null(False)).select(
            "index", "start", type=pl.lit(name), level=level.cast(pl.Float64), volume_ratio="volume_ratio",
            atr_multiple="atr_multiple",
        )
        for name, test, level in rules
    ]
    return pl.concat(found).sort("index", maintain_order=True)


# ---- swing-level CVD divergence (section 2.7) -------------------------------------------------


def swing_divergence(swings: pl.DataFrame, cvd: pl.Series) -> pl.DataFrame:
    """CVD divergences at consecutive swings of one kind (section 2.7, swing level).

    Bearish: a swing high above the previous swing high whose CVD at the swing bar is below the
    CVD at the previous one. Bullish: a swing low below the previous swing low with a higher CVD.
    Equal prices or CVDs do not fire; a null CVD at either swing skips the pair. NOTE: the CVD of
    convention C12 resets at 00:00 UTC, so a pair straddling midnight compares two sessions; pass
    an unreset cumulative delta when that matters.

    Args:
        swings: the output of :func:`swings`.
        cvd: per-bar CVD aligned with the bars the swings came from (position = ``index``).

    Returns:
        ``index``, ``start``, ``kind``, ``direction`` (``bearish``/``bullish``), ``price``,
        ``cvd``, ``prev_index``, ``prev_price``, ``prev_cvd``; ascending by ``index``.

    Raises:
        UsageError: bad swing columns, or ``cvd`` shorter than the swings need.
    """
    _check_swings(swings)
    last: int = max(swings["index"].to_list(), default=-1)
    if last >= cvd.len():
        raise UsageError(f"cvd has {cvd.len()} values but a swing sits at bar {last}")
    prev = [pl.col(c).shift(1).over("kind").alias(f"prev_{c}") for c in ("index", "price", "cvd")]
    paired = swings.with_columns(cvd=cvd.cast(pl.Float64).gather(swings["index"])).with_columns(prev)
    high = pl.col("kind") == "high"
    bearish = high & (pl.col("price") > pl.col("prev_price")) & (pl.col("cvd") < pl.col("prev_cvd"))
    bullish = ~high & (pl.col("price") < pl.col("prev_price")) & (pl.col("cvd") > pl.col("prev_cvd"))
    return (
        paired.filter((bearish | bullish).fill_null(False))
        .with_columns(direction=pl.when(high).then(pl.lit("bearish")).otherwise(pl.lit("bullish")))
        .select("index", "start", "kind", "direction", "price", "cvd", "prev_index", "prev_price", "prev_cvd")
    )
