"""``/api/v1/gaps``: known windows of missing or unverified data, and the lookup data endpoints use.

A gap row is built in one place (:func:`gap_row`), from the ``gaps`` table and from what the
live view says is not complete yet (being backfilled, or waiting for a slow store).
"""

from __future__ import annotations

import time
from typing import Any

import falcon.asgi
import polars as pl

from wadm.api.json import send_json
from wadm.api.params import (
    parse_choice,
    parse_exchange,
    parse_limit,
    parse_market,
    parse_range,
    parse_symbol,
    resolve_series,
)
from wadm.api.query import Query
from wadm.api.resources.series import Context
from wadm.live import Series
from wadm.records import CHANNEL_OF_TABLE, CHANNELS, TABLE_OF_CHANNEL, BatchKey
from wadm.units import NS_PER_MS, NS_PER_S

__all__ = ["GapsResource", "gap_channel", "gap_row", "gaps_between"]

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
PARAMS = ("symbol", "exchange", "market", "start", "end", "window", "limit", "channel")


def gap_channel(stream: str) -> str:
    """The channel a gap's stream (or table) belongs to: ``trades``, ``book`` or ``klines``."""
    if stream in CHANNEL_OF_TABLE:
        return CHANNEL_OF_TABLE[stream]
    low = stream.lower()
    if "depth" in low or low.startswith("orderbook"):
        return "book"
    if "kline" in low:
        return "klines"
    return "trades"


def gap_row(series: Series, stream: str, start: int, end: int, reason: str, missing: int | None) -> dict[str, Any]:
    """One gap as the API shows it (times in ms)."""
    return {
        "exchange": str(series.venue),
        "market": str(series.market),
        "symbol": series.symbol,
        "channel": gap_channel(stream),
        "stream": stream,
        "start": start // NS_PER_MS,
        "end": end // NS_PER_MS,
        "reason": reason,
        "missing": missing,
    }


def _stored(frame: pl.DataFrame, series: Series, start: int, end: int, channel: str | None) -> list[dict[str, Any]]:
    rows = frame.filter((pl.col("end") >= start) & (pl.col("ts_event") <= end)).sort("ts_event")
    out = [gap_row(series, r["stream"], r["ts_event"], r["end"], r["reason"], r["missing"])
           for r in rows.iter_rows(named=True)]
    return out if channel is None else [g for g in out if g["channel"] == channel]


async def gaps_between(ctx: Context, series: Series, start: int, end: int, channel: str | None = None,
                       *, unfinished: bool = True) -> list[dict[str, Any]]:
    """Gaps of one series (of one channel, or all) overlapping ``[start, end]`` (ns), oldest first.

    With ``unfinished``, windows the live view says are not complete yet come last.
    """
    frame = await ctx.bars.gaps(ctx.store, series)
    rows = await ctx.work.run(_stored, frame, series, start, end, channel) if frame.height else []
    if unfinished:
        tables = [TABLE_OF_CHANNEL[channel]] if channel is not None else list(TABLE_OF_CHANNEL.values())
        for table in tables:
            rows += [gap_row(series, u.stream, u.start, u.end, u.reason, u.missing)
                     for u in ctx.live.unfinished(BatchKey(table, series.venue, series.market, series.symbol),
                                                  start, end)]
    return rows


class GapsResource:
    """Gaps filtered by symbol, exchange, market, channel and range."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        ctx = self.ctx
        q = Query(req, PARAMS)
        symbol, exchange, market = q.get("symbol"), q.get("exchange"), q.get("market")
        start, end = parse_range(q.get("start"), q.get("end"), q.get("window"), now=time.time_ns(),
                                 default_span=ctx.settings.retention_gaps * NS_PER_S)
        limit = parse_limit(q.get("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
        channel = q.get("channel")
        if channel is not None:
            channel = parse_choice("channel", channel, CHANNELS, "")
        want_venue, want_market = parse_exchange(exchange), parse_market(market)
        wanted = None if symbol is None else parse_symbol(symbol)
        series = [
            Series(t.venue, t.market, s)
            for t in ctx.settings.targets
            for s in t.symbols
            if want_venue in (None, t.venue) and want_market in (None, t.market) and wanted in (None, s)
        ]
        if symbol is not None and not series:
            resolve_series(ctx.settings.targets, symbol, exchange, market)  # raises: not collected (there)
        rows: list[dict[str, Any]] = []
        async with ctx.work.turn():
            for one in series:
                rows += await gaps_between(ctx, one, start, end, channel, unfinished=False)
        rows.sort(key=lambda r: (r["start"], r["exchange"], r["market"], r["symbol"]))
        send_json(resp, {
            "start": start // NS_PER_MS,
            "end": end // NS_PER_MS,
            "count": min(len(rows), limit),
            "truncated": len(rows) > limit,
            "gaps": rows[:limit],
        })
