"""``/api/v1/orderbook/{symbol}`` (the live book) and ``/api/v1/orderbook/{symbol}/history``.

The live book is read from the collector's memory (a copy, through the live view), so only the
process that collects (``wadm run``) serves it. A book that is being rebuilt is answered with
``state: resyncing`` and no levels: it is never served as if it were live. History comes from
the ``book_snapshots`` table (one snapshot per ``BOOK_SNAPSHOT_INTERVAL``) plus the snapshots not
stored yet. Answers are bounded: ``limit`` × ``depth`` levels per side at most
:data:`MAX_HISTORY_LEVELS`.
"""

from __future__ import annotations

import time
from typing import Literal

import falcon.asgi
import orjson
import polars as pl

from wadm.analytics.orderflow import walls
from wadm.api.json import rows_json, send_bytes, send_json
from wadm.api.params import decode_cursor, encode_cursor, parse_limit, parse_range
from wadm.api.query import Query
from wadm.api.resources.gaps import gaps_between
from wadm.api.resources.series import SeriesResource
from wadm.errors import QueryError
from wadm.live import BookView, Series
from wadm.records import BOOK_SNAPSHOTS, BatchKey, band_columns
from wadm.units import NS_PER_MS, NS_PER_S

__all__ = ["BookHistoryResource", "BookResource"]

DEFAULT_DEPTH = 20
MAX_DEPTH = 1000
WALL_BAND = 0.01  # walls are looked for within 1 % of mid,
WALL_FACTOR = 3.0  # among levels at least this many times their side's median level there,
MAX_WALLS = 5  # and the largest few per side are listed
DEFAULT_HISTORY_LIMIT = 60
MAX_HISTORY_LIMIT = 3600
MAX_HISTORY_LEVELS = 72_000  # limit × depth: 3600 snapshots of 20 levels, or 720 of 100
BOOK_PARAMS = ("exchange", "market", "depth")
HISTORY_PARAMS = ("exchange", "market", "start", "end", "window", "limit", "depth", "cursor")


class BookResource(SeriesResource):
    """The live order book of one symbol."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        q = Query(req, BOOK_PARAMS)
        series = self.series(q, symbol)
        depth = parse_limit(q.get("depth"), default=DEFAULT_DEPTH, maximum=MAX_DEPTH, name="depth")
        view = self.ctx.live.book(series, depth)
        if view is None:
            raise QueryError(None, f"no live book of {series.symbol} on {series.venue}/{series.market} in this "
                                   "process: books are collected by `wadm run` (with the book channel enabled); "
                                   f"stored snapshots are at /api/v1/orderbook/{series.symbol}/history",
                             status=503, code="not_ready")
        body: dict[str, object] = {
            "exchange": str(series.venue),
            "market": str(series.market),
            "symbol": series.symbol,
            "ts": view.ts_update // NS_PER_MS if view.ts_update else None,
            "state": view.state,
        }
        if view.update_id is None:
            send_json(resp, body | {"bids": [], "asks": [], "mid": None, "spread": None, "update_id": None,
                                    "resyncs": view.resyncs})
            return
        send_json(resp, body | {
            # Exact as of `ts`; `stale` when the stream has been silent longer than the watchdog
            # allows (the connection is about to be replaced and the book rebuilt).
            "stale": view.stale,
            "age_ms": max(0, time.time_ns() - view.ts_recv) // NS_PER_MS,
            "bids": view.bids,
            "asks": view.asks,
            "mid": view.mid,
            "spread": view.spread,
            "update_id": view.update_id,
            "depth": depth,
            "bands": view.bands,
            "walls": self._walls(series, view),
            "received": view.ts_recv // NS_PER_MS,
        })

    def _walls(self, series: Series, view: BookView) -> dict[str, object] | None:
        """The largest levels within 1 % of mid, over the whole book rather than the ``depth`` shown."""
        instrument = self.ctx.live.instrument(series)
        deep = self.ctx.live.book(series, MAX_DEPTH)
        if instrument is None or deep is None or deep.mid is None:
            return None
        out: dict[str, object] = {"band": WALL_BAND, "factor": WALL_FACTOR}
        sides: tuple[tuple[Literal["bid", "ask"], list[tuple[float, float]]], ...] = (("bid", deep.bids),
                                                                                    ("ask", deep.asks))
        for side, levels in sides:
            found = walls(levels, side, mid=deep.mid, band=WALL_BAND, tick=instrument.tick, factor=WALL_FACTOR)
            top = sorted(found, key=lambda w: w.qty, reverse=True)[:MAX_WALLS]
            out[side + "s"] = [{"price": w.price, "qty": w.qty, "multiple": round(w.multiple, 2)} for w in top]
        return out


def _in_range(frame: pl.DataFrame, start: int, end: int) -> pl.DataFrame:
    if not frame.height:
        return frame
    rows = frame.filter((pl.col("ts_event") >= start) & (pl.col("ts_event") <= end))
    return rows.unique(subset=["ts_event"], keep="last").sort("ts_event")


def _levels(frame: pl.DataFrame, side: str, depth: int) -> pl.Series:
    """One side's best ``depth`` levels per snapshot as ``[[price, qty], ...]`` (list of 2-arrays)."""
    prices, qtys = f"{side}_price", f"{side}_qty"
    pairs = (
        frame.select(pl.int_range(pl.len()).alias("_row"), pl.col(prices).list.head(depth),
                     pl.col(qtys).list.head(depth))
        .explode([prices, qtys])
        .filter(pl.col(prices).is_not_null())
        .group_by("_row", maintain_order=True)
        .agg(pl.concat_list(prices, qtys).alias(side))
    )
    full = pl.DataFrame({"_row": pl.int_range(frame.height, eager=True)}).join(pairs, on="_row", how="left")
    return full[side].fill_null(pl.lit([], dtype=pl.List(pl.List(pl.Float64))))


def _render_history(stored: pl.DataFrame, pending: pl.DataFrame | None, start: int, end: int, limit: int,
                    depth: int, head: dict[str, object], scope: tuple[str, ...]) -> bytes:
    frame = stored
    if pending is not None and pending.height and frame.height <= limit:
        # Snapshots not handed to the store yet (they are batched for a few seconds).
        frame = _in_range(pl.concat([frame, pending], how="vertical_relaxed") if frame.height else pending,
                          start, end)
    gaps = head.pop("gaps")
    if frame.height == 0:  # nothing stored (an empty read may have no columns at all)
        return orjson.dumps(head | {"count": 0, "snapshots": [], "next": None, "data_complete": not gaps,
                                    "gaps": gaps})
    more = frame.height > limit
    frame = frame.head(limit)
    bands = band_columns()
    snapshots = frame.select(
        ts=pl.col("ts_event") // NS_PER_MS,
        ts_update=pl.col("ts_update") // NS_PER_MS,
        update_id="update_id",
        mid="mid",
        spread="spread",
        bids=_levels(frame, "bid", depth),
        asks=_levels(frame, "ask", depth),
        bands=pl.struct(bands),
    )
    nxt = encode_cursor(scope, [int(frame["ts_event"][-1]) + 1]) if more else None
    return orjson.dumps(head | {"count": snapshots.height, "snapshots": rows_json(snapshots), "next": nxt,
                                "data_complete": not gaps, "gaps": gaps})


class BookHistoryResource(SeriesResource):
    """Stored book snapshots of one symbol in a range, oldest first, with cursor paging."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        ctx = self.ctx
        q = Query(req, HISTORY_PARAMS)
        series = self.series(q, symbol)
        start, end = parse_range(
            q.get("start"), q.get("end"), q.get("window"), now=time.time_ns(),
            default_span=min(ctx.settings.retention_book_snapshots, 3600) * NS_PER_S,
        )
        limit = parse_limit(q.get("limit"), default=DEFAULT_HISTORY_LIMIT, maximum=MAX_HISTORY_LIMIT)
        depth = parse_limit(q.get("depth"), default=DEFAULT_DEPTH, maximum=MAX_DEPTH, name="depth")
        if limit * depth > MAX_HISTORY_LEVELS:
            raise QueryError("limit", f"limit × depth must be at most {MAX_HISTORY_LEVELS} levels per side, got "
                                      f"{limit} × {depth}: lower limit or depth and page with the cursor")
        scope = ("book", str(series.venue), str(series.market), series.symbol)
        raw_cursor = q.get("cursor")
        if raw_cursor is not None:
            (ts,) = decode_cursor(raw_cursor, scope, (int,))
            assert isinstance(ts, int)
            start = max(start, ts)
        key = BatchKey(BOOK_SNAPSHOTS, series.venue, series.market, series.symbol)
        async with ctx.work.turn():
            stored = await self._page(key, start, end, limit)
            gaps = await gaps_between(ctx, series, start, end, "book")
            head: dict[str, object] = {
                "exchange": str(series.venue), "market": str(series.market), "symbol": series.symbol,
                "start": start // NS_PER_MS, "end": end // NS_PER_MS,
                "interval_s": ctx.settings.book_snapshot_interval, "gaps": gaps,
            }
            body = await ctx.work.run(_render_history, stored, ctx.live.book_rows(series), start, end, limit, depth,
                                      head, scope)
        send_bytes(resp, body)

    async def _page(self, key: BatchKey, start: int, end: int, limit: int) -> pl.DataFrame:
        """Snapshots in ``[start, end]``, oldest first: at least ``limit + 1`` unless the range has fewer.

        The store counts whole batches, some of whose rows lie before ``start``; read more until
        enough rows remain after filtering, or the store has no more.
        """
        ctx = self.ctx
        want, previous = limit + 1, -1
        while True:
            frame = await ctx.store.read(key, start, end, max_rows=want)
            rows = await ctx.work.run(_in_range, frame, start, end)
            if rows.height > limit or frame.height == previous:
                return rows
            previous = frame.height
            want *= 4
