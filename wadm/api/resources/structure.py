"""``/api/v1/market-structure/{symbol}`` and ``/api/v1/indicators/{symbol}/history``.

Market structure is read from bars of ``interval`` (from the stored 1m bars, or 1h ones past
1-minute retention): swings with HH/HL/LH/LL, the trend by labels and the bias by breaks,
BOS/CHoCH on close, the current range, key levels (unbroken swings and the window's volume
profile) and Wyckoff candidates with their inputs, never verdicts. With several markets, prices
come from the one with the most volume (``price_source``) and volumes are summed.

Indicator history lists the per-minute snapshots the bar scheduler stored (Volume Profile and
Order Flow of the UTC day so far), one row per market and minute.
"""

from __future__ import annotations

from typing import Any

import falcon.asgi
import orjson
import polars as pl

from wadm.analytics.aggregates import INDICATOR_SCHEMA
from wadm.analytics.combine import combine_bars, price_source
from wadm.analytics.grid import Grid
from wadm.analytics.orderflow import delta_divergence
from wadm.analytics.profile import combine, volume_profile
from wadm.analytics.structure import (
    bias,
    breaks,
    current_range,
    key_levels,
    swing_divergence,
    swings,
    trend,
    wyckoff_candidates,
)
from wadm.api.days import Known, rows_per_day
from wadm.api.json import rows_json, send_bytes
from wadm.api.params import parse_choice, parse_limit
from wadm.api.query import Query
from wadm.api.resources.analytics import bar_resolution, bar_span, load_each, source_gaps
from wadm.api.resources.gaps import gap_row, gaps_between
from wadm.api.resources.orderflow import INTERVALS
from wadm.api.resources.series import SeriesResource
from wadm.api.sources import bar_grid, describe, parse_scope
from wadm.errors import QueryError
from wadm.records import BARS_1M, INDICATORS, BatchKey
from wadm.units import NS_PER_MS, NS_PER_S

__all__ = ["IndicatorHistoryResource", "MarketStructureResource"]

STRUCTURE_PARAMS = ("exchange", "market", "start", "end", "window", "interval", "swing", "limit", "levels")
LEVELS = ("all", "swings")  # key levels: swings and the window's profile, or the swings alone
HISTORY_PARAMS = ("exchange", "market", "start", "end", "window", "limit")
MAX_BARS = 1500
MAX_SWING = 20
MAX_SNAPSHOTS = 1440
RECENT_DIVERGENCES = 10  # bar-level delta divergences listed: the newest ones


def _structure(data: list[pl.DataFrame], interval: int, swing: int, limit: int, start: int, grid: Grid | None,
               span: tuple[int, int], known: list[Known], profile_levels: bool = True
               ) -> tuple[dict[str, Any], list[Known]]:
    """The structure of the window's bars, and the settled days' profile rows computed on the way
    (``profile_levels``: the window's POC, VAH and VAL among the key levels)."""
    fresh = [Known() for _ in data]
    bars = combine_bars(data, interval).filter(pl.col("start") >= start)
    truncated = bars.height > limit
    bars = bars.tail(limit)
    out: dict[str, Any] = {"bars": bars.height, "truncated": truncated,
                           "close": float(bars["close"][-1]) if bars.height else None}
    if bars.height == 0:
        return out | {"trend": "range", "bias": "neutral", "swings": [], "events": [], "range": None,
                      "key_levels": [], "wyckoff": [], "divergences": [], "delta_divergences": []}, fresh
    first = int(bars["start"][0])
    sw = swings(bars, left=swing, right=swing)
    events = breaks(bars, sw)
    held = current_range(bars, sw, min_bars=2 * swing + 1)
    extra: list[tuple[str, float]] = []
    if grid is not None and profile_levels:
        parts: list[pl.DataFrame] = []
        for i, d in enumerate(data):
            per_day, fresh[i] = rows_per_day(d.filter(pl.col("ts_event") >= first), grid, first, *span, known[i])
            parts += per_day.values()
        rows = combine(parts)
        profile = volume_profile(rows, grid)
        if profile.poc is not None:
            extra = [("poc", profile.poc), ("vah", profile.vah), ("val", profile.val)]  # type: ignore[list-item]
    levels = key_levels(bars, sw, extra=extra)
    candidates = wyckoff_candidates(bars, sw)
    ms = pl.col("start") // NS_PER_MS
    # Swing-level divergences compare the delta accumulated over the window (the session CVD would
    # reset at 00:00 UTC between two swings); bar-level ones flag the newest bars that closed
    # against their own delta.
    diverging = swing_divergence(sw, bars["delta"].cum_sum())
    starts = bars["start"]
    flagged = delta_divergence(bars).filter(pl.col("up_bar_negative_delta") | pl.col("down_bar_positive_delta"))
    return out | {
        "trend": trend(sw),
        "bias": bias(events),
        "swings": rows_json(sw.select(ms.alias("ts"), "price", "kind", "label")),
        "events": rows_json(events.select(ms.alias("ts"), "type", "direction", "level")),
        "range": None if held is None else {"high": held.high, "low": held.low, "since": held.since // NS_PER_MS,
                                            "bars": held.bars},
        "key_levels": rows_json(levels.select("price", "kind", "distance_pct")),
        "wyckoff": rows_json(candidates.select(ms.alias("ts"), "type", "level", "volume_ratio", "atr_multiple")),
        "divergences": rows_json(diverging.select(
            ms.alias("ts"), "kind", "direction", "price", pl.col("cvd").alias("cum_delta"),
            (starts.gather(diverging["prev_index"]) // NS_PER_MS).alias("prev_ts"), "prev_price",
            pl.col("prev_cvd").alias("prev_cum_delta"))),
        "delta_divergences": rows_json(flagged.tail(RECENT_DIVERGENCES).select(
            ms.alias("ts"),
            type=pl.when(pl.col("up_bar_negative_delta")).then(pl.lit("up_bar_negative_delta"))
            .otherwise(pl.lit("down_bar_positive_delta")))),
    }, fresh


class MarketStructureResource(SeriesResource):
    """Market structure of one symbol at one interval."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        ctx = self.ctx
        q = Query(req, STRUCTURE_PARAMS)
        interval_name = parse_choice("interval", q.get("interval"), INTERVALS, "15m")
        interval = INTERVALS[interval_name]
        swing = parse_limit(q.get("swing"), default=2, maximum=MAX_SWING, name="swing")
        limit = parse_limit(q.get("limit"), default=200, maximum=MAX_BARS)
        levels = parse_choice("levels", q.get("levels"), LEVELS, "all")
        scope = parse_scope(ctx.settings, q, symbol, default_span=bar_span(ctx, limit, interval))
        resolution = bar_resolution(ctx, scope, interval)
        start = scope.start - scope.start % interval
        async with ctx.work.turn():
            data = await load_each(ctx, scope, resolution, start)
            try:
                grid = bar_grid(data, None, resolution)
            except QueryError:
                grid = None
            settled = ctx.bars.settled_before(scope.now)
            known = [ctx.days.known(s, resolution, grid, start, scope.end) if grid else Known() for s in scope.sources]
            body, fresh = await ctx.work.run(_structure, data, interval, swing, limit, start, grid,
                                             (scope.end, settled), known, levels == "all")
            if grid is not None:
                for s, new in zip(scope.sources, fresh, strict=True):
                    ctx.days.keep(s, resolution, grid, new)
            gaps = await source_gaps(ctx, scope, resolution, data, start)
        source = scope.sources[price_source(data)]
        head = describe(scope, resolution, gaps, True) | {
            "start": start // NS_PER_MS, "interval": interval_name, "swing": swing, "levels": levels,
            "price_source": {"exchange": str(source.venue), "market": str(source.market)},
        }
        send_bytes(resp, orjson.dumps(head | body))


class IndicatorHistoryResource(SeriesResource):
    """Stored indicator snapshots of one symbol."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        ctx = self.ctx
        q = Query(req, HISTORY_PARAMS)
        limit = parse_limit(q.get("limit"), default=60, maximum=MAX_SNAPSHOTS)
        scope = parse_scope(ctx.settings, q, symbol, default_span=86_400 * NS_PER_S)
        async with ctx.work.turn():
            frames = []
            for series in scope.sources:
                stored = await ctx.store.read(BatchKey(INDICATORS, series.venue, series.market, series.symbol),
                                              scope.start, scope.end)
                if stored.height:
                    frames.append(stored.select(list(INDICATOR_SCHEMA)).with_columns(
                        exchange=pl.lit(str(series.venue)), market=pl.lit(str(series.market))))
            rows = pl.concat(frames) if frames else None
            if rows is not None:
                rows = rows.filter((pl.col("ts_event") >= scope.start) & (pl.col("ts_event") <= scope.end))
                rows = rows.unique(subset=["exchange", "market", "ts_event"], keep="last").sort("ts_event", "exchange",
                                                                                                  "market")
            truncated = rows is not None and rows.height > limit
            gaps: list[dict[str, object]] = []
            if rows is not None:
                rows = rows.tail(limit)
                # A snapshot summarises its UTC day so far: the trade gaps of those days explain an
                # incomplete one.
                first_day = int(rows["session"].min()) if rows.height else scope.start  # type: ignore[arg-type]
                for series in scope.sources:
                    gaps += await gaps_between(ctx, series, first_day, scope.end, "trades")
                    # The minute collection started in, and others the scheduler knew were partial.
                    mine = rows.filter((pl.col("exchange") == str(series.venue))
                                       & (pl.col("market") == str(series.market)) & ~pl.col("complete"))
                    if mine.height and not gaps:
                        gaps.append(gap_row(series, BARS_1M, int(mine["session"][0]), int(mine["ts_event"][-1]) - 1,
                                            "incomplete_bar", None))
        listed = rows_json(rows.select(
            pl.col("ts_event") // NS_PER_MS, "exchange", "market", pl.col("session") // NS_PER_MS,
            *[c for c in INDICATOR_SCHEMA if c not in ("ts_event", "session")],
        ).rename({"ts_event": "ts"})) if rows is not None else []
        complete = rows is None or bool(rows["complete"].all())
        head = describe(scope, "1m", gaps, complete)
        send_bytes(resp, orjson.dumps(head | {"count": 0 if rows is None else rows.height, "truncated": truncated,
                                              "snapshots": listed}))
