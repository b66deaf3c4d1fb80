"""``/api/v1/orderbook/{symbol}`` (the live book) and ``/api/v1/orderbook/{symbol}/history``.

The live book is read from the collector's memory, so only the process that collects
(``wadm run``) serves it. A book that is being rebuilt is answered with ``state: resyncing`` and
no levels: it is never served as if it were live. History comes from the ``book_snapshots``
table (one snapshot per ``BOOK_SNAPSHOT_INTERVAL``).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import falcon.asgi
import orjson
import polars as pl

from wadm.api.json import send_json
from wadm.api.params import parse_limit, parse_range
from wadm.api.resources.gaps import gaps_between
from wadm.api.resources.series import SeriesResource
from wadm.book.sync import BookState
from wadm.errors import QueryError
from wadm.pipeline.service import Service
from wadm.records import BOOK_SNAPSHOTS, BatchKey

__all__ = ["BookHistoryResource", "BookResource"]

_MS = 1_000_000
DEFAULT_DEPTH = 20
MAX_DEPTH = 1000
DEFAULT_HISTORY_LIMIT = 60
MAX_HISTORY_LIMIT = 3600


class BookResource(SeriesResource):
    """The live order book of one symbol."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        venue, market, symbol = self.series(req, symbol)
        depth = parse_limit(req.get_param("depth"), default=DEFAULT_DEPTH, maximum=MAX_DEPTH, name="depth")
        stream = self.service.books.get((venue, market, symbol))
        if stream is None:
            raise QueryError(None, f"no live book of {symbol} on {venue}/{market} in this process: books are "
                                   "collected by `wadm run` (with the book channel enabled); stored snapshots "
                                   f"are at /api/v1/orderbook/{symbol}/history", status=503, code="not_ready")
        body: dict[str, Any] = {
            "exchange": str(venue),
            "market": str(market),
            "symbol": symbol,
            "ts": stream.ts_update // _MS if stream.ts_update else None,
            "state": str(stream.state),
        }
        if stream.state is not BookState.LIVE:
            send_json(resp, body | {"bids": [], "asks": [], "mid": None, "spread": None, "update_id": None,
                                    "resyncs": sum(stream.sync.resyncs.values())})
            return
        bids, asks = stream.levels(depth)
        mid, spread, bands = stream.metrics()
        send_json(resp, body | {
            # Exact as of `ts`; `stale` when the stream has been silent longer than the watchdog
            # allows (the connection is about to be replaced and the book rebuilt).
            "stale": self.service.stream_state(stream) == "stale",
            "age_ms": max(0, time.time_ns() - stream.ts_recv) // _MS,
            "bids": bids,
            "asks": asks,
            "mid": mid,
            "spread": spread,
            "update_id": stream.book.update_id,
            "depth": depth,
            "bands": bands,
            "received": stream.ts_recv // _MS,
        })


class BookHistoryResource(SeriesResource):
    """Stored book snapshots of one symbol in a range, oldest first, with cursor paging."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        svc = self.service
        venue, market, symbol = self.series(req, symbol)
        start, end = parse_range(
            req.get_param("start"), req.get_param("end"), req.get_param("window"),
            now=time.time_ns(), default_span=min(svc.settings.retention_book_snapshots, 3600) * 1_000_000_000,
        )
        limit = parse_limit(req.get_param("limit"), default=DEFAULT_HISTORY_LIMIT, maximum=MAX_HISTORY_LIMIT)
        depth = parse_limit(req.get_param("depth"), default=DEFAULT_DEPTH, maximum=MAX_DEPTH, name="depth")
        if (raw := req.get_param("cursor")) is not None:
            start = max(start, _decode_cursor(raw))
        frame = await _page(svc, BatchKey(BOOK_SNAPSHOTS, venue, market, symbol), start, end, limit)
        live = svc.books.get((venue, market, symbol))
        if live is not None and live.rows and frame.height <= limit:
            # Snapshots not flushed to the store yet (they are batched for a few seconds).
            pending = live.take_copy().filter((pl.col("ts_event") >= start) & (pl.col("ts_event") <= end))
            frame = (pl.concat([frame, pending], how="vertical_relaxed") if frame.height else pending)
            frame = frame.unique(subset=["ts_event"], keep="first").sort("ts_event")
        more = frame.height > limit
        frame = frame.head(limit)
        snapshots = []
        for row in frame.iter_rows(named=True):
            bid_p, bid_q, ask_p, ask_q = row.pop("bid_price"), row.pop("bid_qty"), row.pop("ask_price"), \
                row.pop("ask_qty")
            snapshots.append({
                "ts": row.pop("ts_event") // _MS,
                "ts_update": row.pop("ts_update") // _MS,
                "update_id": row.pop("update_id"),
                "mid": row.pop("mid"),
                "spread": row.pop("spread"),
                "bids": [[p, q] for p, q in zip(bid_p[:depth], bid_q[:depth], strict=True)],
                "asks": [[p, q] for p, q in zip(ask_p[:depth], ask_q[:depth], strict=True)],
                "bands": {k: v for k, v in row.items() if k != "ts_recv"},
            })
        nxt = None
        if more:
            nxt = _encode_cursor(int(frame["ts_event"][-1]) + 1)
        gaps = await gaps_between(svc.store, venue, market, symbol, start, end, "book")
        gaps += svc.unfinished(venue, market, symbol, BOOK_SNAPSHOTS, start, end)
        send_json(resp, {
            "exchange": str(venue),
            "market": str(market),
            "symbol": symbol,
            "start": start // _MS,
            "end": end // _MS,
            "interval_s": svc.settings.book_snapshot_interval,
            "count": len(snapshots),
            "snapshots": snapshots,
            "next": nxt,
            "data_complete": not gaps,
            "gaps": gaps,
        })


async def _page(svc: Service, key: BatchKey, start: int, end: int, limit: int) -> pl.DataFrame:
    """Snapshots in ``[start, end]``, oldest first: at least ``limit + 1`` unless the range has fewer.

    The store counts whole batches, some of whose rows lie before ``start``; read more until
    enough rows remain after filtering, or the store has no more.
    """
    want, previous = limit + 1, -1
    while True:
        frame = await svc.store.read(key, start, end, max_rows=want)
        rows = frame.filter((pl.col("ts_event") >= start) & (pl.col("ts_event") <= end)) if frame.height else frame
        if rows.height > limit or frame.height == previous:
            return rows.unique(subset=["ts_event"], keep="last").sort("ts_event") if rows.height else rows
        previous = frame.height
        want *= 4


def _encode_cursor(ts: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts])).decode().rstrip("=")


def _decode_cursor(raw: str) -> int:
    try:
        (ts,) = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not isinstance(ts, int):
            raise ValueError
        return ts
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise QueryError("cursor", "cursor is not one this API issued; pass the `next` of the previous page "
                                   "unchanged, with the same other parameters") from None
