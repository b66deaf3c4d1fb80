"""``/api/v1/order-flow/current/{symbol}`` (order flow now) and ``/api/v1/order-flow/{symbol}/footprint``.

"Now" is the closed 1-minute bars plus the minutes not closed yet, built from the live trades, so
nothing waits for a flush; :mod:`wadm.api.flow` keeps it cheap. Footprints come from the stored
1m footprints (1h ones past 1-minute retention), re-binned to ``row_size`` and merged to ``interval``.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import falcon.asgi
import orjson
import polars as pl

from wadm.analytics.aggregates import round_qty
from wadm.analytics.combine import combine_bars, combine_footprints
from wadm.analytics.grid import Grid
from wadm.analytics.orderflow import imbalances, stacked
from wadm.api.flow import FlowCache, FlowRequest
from wadm.api.json import rows_json, send_bytes
from wadm.api.params import parse_choice, parse_decimal, parse_limit, parse_number, parse_window
from wadm.api.query import Query
from wadm.api.resources.analytics import bar_resolution, bar_span, load_each, source_gaps
from wadm.api.resources.series import Context, SeriesResource
from wadm.api.sources import (
    NS_PER_HOUR,
    Scope,
    bar_grid,
    describe,
    parse_scope,
    qty_places,
    resolve_sources,
)
from wadm.errors import QueryError
from wadm.records import band_name
from wadm.units import NS_PER_MIN, NS_PER_MS, NS_PER_S

__all__ = ["CurrentFlowResource", "FootprintResource", "INTERVALS"]

INTERVALS = {"1m": NS_PER_MIN, "5m": 5 * NS_PER_MIN, "15m": 15 * NS_PER_MIN, "1h": NS_PER_HOUR, "4h": 4 * NS_PER_HOUR}
CURRENT_PARAMS = ("exchange", "market", "large_notional", "window", "limit", "imbalance_ratio", "stacked")
FOOTPRINT_PARAMS = ("exchange", "market", "start", "end", "window", "interval", "row_size", "imbalance_ratio",
                    "stacked", "limit")
DEFAULT_LOOKBACK = 15 * NS_PER_MIN
MAX_LARGE = 200
MAX_BARS = 500
MAX_CELLS = 100_000  # footprint rows in one answer, summed over its bars


def _ratio(q: Query) -> float:
    return parse_number(q.get("imbalance_ratio"), name="imbalance_ratio", default=3.0, minimum=1.01, maximum=100)


def _stacked(q: Query) -> int:
    return parse_limit(q.get("stacked"), default=3, maximum=50, minimum=2, name="stacked")


class CurrentFlowResource(SeriesResource):
    """Order flow of one symbol now (see :mod:`wadm.api.flow`)."""

    def __init__(self, ctx: Context, flow: FlowCache) -> None:
        super().__init__(ctx)
        self.flow = flow

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        ctx = self.ctx
        q = Query(req, CURRENT_PARAMS)
        sym, sources = resolve_sources(ctx.settings, q, symbol)
        lookback = parse_window(q.get("window")) or DEFAULT_LOOKBACK
        if lookback > ctx.settings.retention_raw_trades * NS_PER_S:
            raise QueryError("window", f"window (the lookback of large trades and imbalances) must be at most "
                                       f"{ctx.settings.retention_raw_trades} s, how long raw trades are kept")
        lookback = max(NS_PER_MIN, -(-lookback // NS_PER_MIN) * NS_PER_MIN)  # whole minutes, the open one last
        min_notional = None
        if q.get("large_notional") is not None:
            min_notional = parse_number(q.get("large_notional"), name="large_notional", default=0, minimum=0.000001,
                                        maximum=1e12)
        limit = parse_limit(q.get("limit"), default=20, maximum=MAX_LARGE)
        now = time.time_ns()
        scope = Scope(sym, sources, now - 24 * NS_PER_HOUR, now, now)
        body, gaps = await self.flow.answer(ctx, FlowRequest(scope, lookback, _ratio(q), _stacked(q)), now,
                                            min_notional, limit)
        books = []
        for series in scope.sources:
            view = ctx.live.book(series, 1)
            if view is None:
                continue
            books.append({
                "exchange": str(series.venue), "market": str(series.market), "state": view.state,
                "stale": view.stale, "mid": view.mid, "spread": view.spread,
                "imbalance": {band_name(b): view.bands.get(f"imbalance_{band_name(b)}")
                              for b in (0.001, 0.005, 0.01)} if view.bands else None,
            })
        head = describe(scope, "1m", gaps, True)
        send_bytes(resp, orjson.dumps(head | body | {"book": books}))


# -- footprint ------------------------------------------------------------------------------------


def _footprint(bars: list[pl.DataFrame], grid: Grid, interval: int, ratio: float, min_rows: int, limit: int,
               start: int, places: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame, bool]:
    combined = round_qty(combine_bars(bars, interval).filter(pl.col("start") >= start), places)
    truncated = combined.height > limit
    combined = combined.tail(limit)
    first = int(combined["start"][0]) if combined.height else start
    cells = combine_footprints([b.filter(pl.col("ts_event") >= first) for b in bars], grid, interval)
    cells = round_qty(cells.filter(pl.col("start").is_in(combined["start"].implode())), places, ("buy", "sell"))
    if cells.height > MAX_CELLS:
        raise QueryError("row_size", f"the answer would hold {cells.height} footprint rows; at most {MAX_CELLS}: "
                                     "ask for fewer bars (limit) or a larger row_size")
    found = imbalances(cells, ratio=ratio)
    stacks = stacked(found, min_rows=min_rows)
    priced = cells.with_columns(price=grid.price(pl.col("index")))
    found = found.with_columns(price=grid.price(pl.col("index")))
    stacks = stacks.with_columns(grid.price(pl.col("from_index")).alias("from"),
                                 grid.price(pl.col("to_index")).alias("to"))
    return combined, priced, found, stacks, truncated


class FootprintResource(SeriesResource):
    """Footprint bars of one symbol with imbalances."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        ctx = self.ctx
        q = Query(req, FOOTPRINT_PARAMS)
        interval_name = parse_choice("interval", q.get("interval"), INTERVALS, "1m")
        interval = INTERVALS[interval_name]
        limit = parse_limit(q.get("limit"), default=30, maximum=MAX_BARS)
        scope = parse_scope(ctx.settings, q, symbol, default_span=bar_span(ctx, limit, interval))
        row_size: Decimal | None = parse_decimal(q.get("row_size"), name="row_size",
                                                 what="the row height in price units")
        ratio, min_rows = _ratio(q), _stacked(q)
        resolution = bar_resolution(ctx, scope, interval)
        start = scope.start - scope.start % interval
        async with ctx.work.turn():
            data = await load_each(ctx, scope, resolution, start)
            grid = bar_grid(data, row_size, resolution)
            gaps = await source_gaps(ctx, scope, resolution, data, start)
            listed: Any = []
            truncated = False
            if grid is not None:
                bars, cells, found, stacks, truncated = await ctx.work.run(
                    _footprint, data, grid, interval, ratio, min_rows, limit, start,
                    qty_places(ctx.live, scope.sources, data))
                listed = await ctx.work.run(_bars_json, bars, cells, found, stacks)
            body = describe(scope, resolution, gaps, True) | {
                "start": start // NS_PER_MS, "interval": interval_name,
                "row_size": None if grid is None else grid.row, "imbalance_ratio": ratio, "stacked_min": min_rows,
                "truncated": truncated, "bars": listed,
            }
        send_bytes(resp, orjson.dumps(body))


def _bars_json(bars: pl.DataFrame, cells: pl.DataFrame, found: pl.DataFrame, stacks: pl.DataFrame) -> orjson.Fragment:
    rows = cells.group_by("start").agg(rows=pl.struct("price", "buy", "sell"))
    buy_imb = found.filter(pl.col("side") == "buy").group_by("start").agg(buy_imbalances=pl.col("price"))
    sell_imb = found.filter(pl.col("side") == "sell").group_by("start").agg(sell_imbalances=pl.col("price"))
    stack = stacks.group_by("start").agg(stacked=pl.struct("side", "from", "to"))
    out = (
        bars.join(rows, on="start", how="left").join(buy_imb, on="start", how="left")
        .join(sell_imb, on="start", how="left").join(stack, on="start", how="left")
        .with_columns(pl.col("rows", "buy_imbalances", "sell_imbalances", "stacked").fill_null([]))
        .sort("start")
        .select(pl.col("start") // NS_PER_MS, "open", "high", "low", "close", "volume", "buy", "sell", "delta",
                "delta_min", "delta_max", "cvd", "trades", "rows", "buy_imbalances", "sell_imbalances", "stacked")
    )
    return rows_json(out)
