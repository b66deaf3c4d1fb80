"""``/api/v1/trades/{symbol}``: raw trades in a range, oldest first, with cursor paging.

Rows are ordered by (trade time, trade id); the cursor is that pair for the last row served,
bound to the series it was issued for, so paging never skips or repeats a trade even when many
share a millisecond, and a cursor of another series is refused.
"""

from __future__ import annotations

import time

import falcon.asgi
import orjson
import polars as pl

from wadm.api.json import rows_json, send_bytes
from wadm.api.params import decode_cursor, encode_cursor, parse_limit, parse_range
from wadm.api.query import Query
from wadm.api.resources.gaps import gaps_between
from wadm.api.resources.series import SeriesResource
from wadm.records import TRADES, BatchKey, Venue, trade_schema
from wadm.units import NS_PER_MS, NS_PER_S

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "TradesResource"]

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
PARAMS = ("exchange", "market", "start", "end", "window", "limit", "cursor")

Position = tuple[int, int | str]


def _page_rows(frame: pl.DataFrame, lo: int, end: int, after: Position | None) -> pl.DataFrame:
    """The frame's trades in ``[lo, end]`` after the cursor, ordered and de-duplicated."""
    cond = (pl.col("ts_event") >= lo) & (pl.col("ts_event") <= end)
    if after is not None:
        ts, tid = after
        cond &= (pl.col("ts_event") > ts) | ((pl.col("ts_event") == ts) & (pl.col("id") > tid))
    return frame.filter(cond).sort("ts_event", "id").unique(subset=["id"], keep="first", maintain_order=True)


def _render(rows: pl.DataFrame, limit: int, head: dict[str, object], scope: tuple[str, ...]) -> bytes:
    more = rows.height > limit
    rows = rows.head(limit)
    nxt = None
    if more:
        last = rows.row(rows.height - 1, named=True)
        nxt = encode_cursor(scope, [last["ts_event"], last["id"]])
    trades = rows.select(
        "id",
        ts=pl.col("ts_event") // NS_PER_MS,
        price="price",
        qty="qty",
        side=pl.when(pl.col("side") > 0).then(pl.lit("buy")).otherwise(pl.lit("sell")),
    )
    gaps = head.pop("gaps")
    return orjson.dumps(head | {"count": trades.height, "trades": rows_json(trades), "next": nxt,
                                "data_complete": not gaps, "gaps": gaps})


class TradesResource(SeriesResource):
    """Raw trades from the store."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        ctx = self.ctx
        q = Query(req, PARAMS)
        series = self.series(q, symbol)
        start, end = parse_range(q.get("start"), q.get("end"), q.get("window"), now=time.time_ns(),
                                 default_span=ctx.settings.retention_raw_trades * NS_PER_S)
        limit = parse_limit(q.get("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
        scope = ("trades", str(series.venue), str(series.market), series.symbol)
        raw_cursor = q.get("cursor")
        after: Position | None = None
        if raw_cursor is not None:
            ts, tid = decode_cursor(raw_cursor, scope, (int, int if series.venue is Venue.BINANCE else str))
            assert isinstance(ts, int)
            after = (ts, tid)
        key = BatchKey(TRADES, series.venue, series.market, series.symbol)
        async with ctx.work.turn():
            rows = await self._page(key, start, end, after, limit)
            gaps = await gaps_between(ctx, series, start, end, "trades")
            head: dict[str, object] = {
                "exchange": str(series.venue), "market": str(series.market), "symbol": series.symbol,
                "start": start // NS_PER_MS, "end": end // NS_PER_MS, "gaps": gaps,
            }
            body = await ctx.work.run(_render, rows, limit, head, scope)
        send_bytes(resp, body)

    async def _page(self, key: BatchKey, start: int, end: int, after: Position | None, limit: int) -> pl.DataFrame:
        """Read batches until ``limit + 1`` rows past the cursor are known, or the range is exhausted."""
        ctx = self.ctx
        lo = start if after is None else max(start, after[0])
        want = max(limit * 2, 1000)
        previous = -1
        while True:
            frame = await ctx.store.read(key, lo, end, max_rows=want)
            if frame.height == 0:
                return pl.DataFrame(schema=trade_schema(key.venue))
            rows = await ctx.work.run(_page_rows, frame, lo, end, after)
            if rows.height > limit or frame.height == previous:
                return rows
            previous = frame.height
            want *= 4
