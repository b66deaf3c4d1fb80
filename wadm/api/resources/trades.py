"""``/api/v1/trades/{symbol}``: raw trades in a range, oldest first, with cursor paging.

Rows are ordered by (trade time, trade id); the cursor is that pair for the last row served,
so paging never skips or repeats a trade even when many share a millisecond.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from typing import Any

import falcon.asgi
import orjson
import polars as pl

from wadm.api.json import send_json
from wadm.api.params import parse_limit, parse_range, resolve_series
from wadm.api.resources.gaps import gaps_between
from wadm.config import Settings, StreamTarget
from wadm.errors import QueryError
from wadm.records import TRADES, BatchKey, Market, Venue, trade_schema
from wadm.store.base import Store

__all__ = ["PendingGaps", "TradesResource"]

PendingGaps = Callable[[Venue, Market, str, int, int], list[dict[str, Any]]]

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
_NS_PER_MS = 1_000_000


def _encode_cursor(ts_event: int, trade_id: int | str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts_event, trade_id])).decode().rstrip("=")


def _decode_cursor(raw: str, venue: Venue) -> tuple[int, int | str]:
    try:
        value = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        ts, tid = value
        if not isinstance(ts, int) or not isinstance(tid, int if venue is Venue.BINANCE else str):
            raise ValueError
        return ts, tid
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise QueryError("cursor", "cursor is not one this API issued; pass the `next` of the previous page "
                                   "unchanged, with the same other parameters") from None


class TradesResource:
    """Raw trades from the store."""

    def __init__(self, settings: Settings, targets: list[StreamTarget], store: Store,
                 pending: PendingGaps | None = None) -> None:
        self.settings = settings
        self.targets = targets
        self.store = store
        self.pending = pending  # windows still being backfilled (the collecting process only)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        venue, market = resolve_series(self.targets, symbol, req.get_param("exchange"), req.get_param("market"))
        symbol = symbol.upper()
        start, end = parse_range(
            req.get_param("start"), req.get_param("end"), req.get_param("window"),
            now=time.time_ns(), default_span=self.settings.retention_raw_trades * 1_000_000_000,
        )
        limit = parse_limit(req.get_param("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
        raw_cursor = req.get_param("cursor")
        after = _decode_cursor(raw_cursor, venue) if raw_cursor else None

        key = BatchKey(TRADES, venue, market, symbol)
        rows = await self._page(key, start, end, after, limit)
        more = rows.height > limit
        rows = rows.head(limit)
        nxt = None
        if more:
            last = rows.row(rows.height - 1, named=True)
            nxt = _encode_cursor(last["ts_event"], last["id"])
        trades = rows.select(
            "id",
            ts=pl.col("ts_event") // _NS_PER_MS,
            price="price",
            qty="qty",
            side=pl.when(pl.col("side") > 0).then(pl.lit("buy")).otherwise(pl.lit("sell")),
        ).to_dicts()
        gaps = await gaps_between(self.store, venue, market, symbol, start, end, "trades")
        if self.pending is not None:
            gaps += self.pending(venue, market, symbol, start, end)
        send_json(resp, {
            "exchange": str(venue),
            "market": str(market),
            "symbol": symbol,
            "start": start // _NS_PER_MS,
            "end": end // _NS_PER_MS,
            "count": len(trades),
            "trades": trades,
            "next": nxt,
            "data_complete": not gaps,
            "gaps": gaps,
        })

    async def _page(
        self, key: BatchKey, start: int, end: int, after: tuple[int, int | str] | None, limit: int
    ) -> pl.DataFrame:
        """Read batches until ``limit + 1`` rows past the cursor are known, or the range is exhausted."""
        lo = start if after is None else max(start, after[0])
        want = max(limit * 2, 1000)
        previous = -1
        while True:
            frame = await self.store.read(key, lo, end, max_rows=want)
            if frame.height == 0:
                return pl.DataFrame(schema=trade_schema(key.venue))
            cond = (pl.col("ts_event") >= lo) & (pl.col("ts_event") <= end)
            if after is not None:
                ts, tid = after
                cond &= (pl.col("ts_event") > ts) | ((pl.col("ts_event") == ts) & (pl.col("id") > tid))
            rows = frame.filter(cond).sort("ts_event", "id").unique(subset=["id"], keep="first", maintain_order=True)
            if rows.height > limit or frame.height == previous:
                return rows
            previous = frame.height
            want *= 4
