"""What the analytics resources share: loading each source's data, gaps and coverage, row output."""

from __future__ import annotations

import asyncio
from typing import Any

import polars as pl

from wadm.api.resources.gaps import gap_row, gaps_between
from wadm.api.resources.series import Context
from wadm.api.sources import BAR_NS, NS_PER_HOUR, Reader, Scope
from wadm.errors import QueryError
from wadm.live import Series
from wadm.records import BARS_1H, BARS_1M, TRADES, BatchKey
from wadm.units import NS_PER_MIN, NS_PER_MS, NS_PER_S

__all__ = ["coverage_gaps", "load_each", "reader", "rows_around", "source_gaps"]

_TABLE = {"trades": TRADES, "1m": BARS_1M, "1h": BARS_1H}


def reader(ctx: Context) -> Reader:
    """The data reader of one request (its polars work runs on the API's worker threads)."""
    return Reader(ctx.store, ctx.live, ctx.bars, ctx.work.run)


async def load_each(ctx: Context, scope: Scope, resolution: str, start: int | None = None) -> list[pl.DataFrame]:
    """Each source's trades (``resolution`` trades) or bars in the scope's window."""
    lo = scope.start if start is None else start
    read = reader(ctx)
    # The sources at once: each load waits on the store and the worker threads in turn, and a
    # four-market symbol's loads one after the other made most of an analytics request's time.
    if resolution == "trades":
        return list(await asyncio.gather(*(read.trades(s, lo, scope.end) for s in scope.sources)))
    return list(await asyncio.gather(*(read.bars(s, resolution, lo, scope.end, scope.now) for s in scope.sources)))


async def coverage_gaps(ctx: Context, series: Series, resolution: str, start: int, first: int | None,
                        end: int) -> list[dict[str, Any]]:
    """A window at the start that was never collected (or is past retention): the data begins later."""
    step = BAR_NS.get(resolution, NS_PER_MIN)
    if first is not None and first < start + step:
        return []
    key = BatchKey(_TABLE[resolution], series.venue, series.market, series.symbol)
    earliest = await ctx.store.read(key, 0, 2**62, max_rows=1)
    if earliest.height and int(earliest["ts_event"].min()) <= start:  # type: ignore[arg-type]
        return []  # stored data reaches back: the market was simply quiet
    until = first if first is not None else end
    return [gap_row(series, _TABLE[resolution], start, until, "not_collected", None)]


async def source_gaps(ctx: Context, scope: Scope, resolution: str, data: list[pl.DataFrame], start: int
                      ) -> list[dict[str, Any]]:
    """Trade gaps of every source in the window, and windows no source's data covers."""
    gaps: list[dict[str, Any]] = []
    for series, frame in zip(scope.sources, data, strict=True):
        first = int(frame["ts_event"].min()) if frame.height else None  # type: ignore[arg-type]
        gaps += await coverage_gaps(ctx, series, resolution, start, first, scope.end)
        gaps += await gaps_between(ctx, series, start, scope.end, "trades")
        if resolution != "trades" and frame.height:
            step = BAR_NS[resolution]
            gaps += [gap_row(series, _TABLE[resolution], ts, ts + step - 1, "incomplete_bar", None)
                     for ts in frame.filter(~pl.col("complete"))["ts_event"].to_list()
                     if not any(g["start"] * NS_PER_MS <= ts + step and g["end"] * NS_PER_MS >= ts for g in gaps)]
    return gaps


def rows_around(rows: pl.DataFrame, poc_index: int | None, n: int | None) -> pl.DataFrame:
    """All rows (``n`` None) or the ``n`` rows centred on the POC row, as the answer lists them."""
    out = rows
    if n is not None and poc_index is not None and rows.height > n:
        pos = rows["index"].to_list().index(poc_index)
        first = min(max(0, pos - (n - 1) // 2), rows.height - n)
        out = rows.slice(first, n)
    return out.select("price", "volume", "buy", "sell", "delta")


def bar_resolution(ctx: Context, scope: Scope, interval: int) -> str:
    """``1m`` while the window starts inside 1-minute retention, else ``1h`` for an ``interval`` of
    an hour or more (a 400 naming ``interval`` otherwise)."""
    if scope.start >= scope.now - ctx.settings.retention_aggregates_1m * NS_PER_S:
        return "1m"
    if interval >= NS_PER_HOUR:
        return "1h"
    raise QueryError("interval", f"a window that starts before the 1-minute bars kept "
                                 f"(RETENTION_AGGREGATES_1M={ctx.settings.retention_aggregates_1m} s) "
                                 "needs interval 1h or 4h")


def bar_span(ctx: Context, limit: int, interval: int) -> int:
    """The default window of a bar request: ``limit`` bars, but for bars under an hour no further
    back than the 1-minute bars are kept (so that a request without a window always answers)."""
    span = limit * interval
    if interval < NS_PER_HOUR:
        span = min(span, ctx.settings.retention_aggregates_1m * NS_PER_S - NS_PER_MIN)
    return span
