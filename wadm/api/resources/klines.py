"""``/api/v1/klines/{symbol}``: the venue's bars at 1m, 5m, 15m, 1h or 4h.

Closed one-minute bars come from the ``klines`` table; the bar still open comes from the
collector's memory (``closed: false``). Longer intervals are built from the one-minute bars,
aligned to UTC like the venues' own: a longer bar is closed once its last minute is.

Range semantics follow the venues': with ``start`` the oldest bars from ``start`` up to
``limit``; without it the newest ``limit`` bars up to ``end`` (default now), or within
``window`` (ending now). ``truncated`` says that the range holds more bars than were returned.
"""

from __future__ import annotations

import time

import falcon.asgi
import orjson
import polars as pl

from wadm.api.json import rows_json, send_bytes
from wadm.api.params import TIME_MIN_NS, parse_choice, parse_limit, parse_time, parse_window
from wadm.api.query import Query
from wadm.api.resources.gaps import gaps_between
from wadm.api.resources.series import SeriesResource
from wadm.errors import QueryError
from wadm.records import KLINE_SCHEMA, KLINES, BatchKey
from wadm.units import NS_PER_MIN, NS_PER_MS, NS_PER_S

__all__ = ["INTERVALS", "KlinesResource", "resample_klines"]

CLOSE_GRACE_NS = 5 * NS_PER_S
INTERVALS = {"1m": 1, "5m": 5, "15m": 15, "1h": 60, "4h": 240}
DEFAULT_LIMIT = 500
MAX_LIMIT = 1500
PARAMS = ("exchange", "market", "start", "end", "window", "interval", "limit")


def resample_klines(minutes: pl.DataFrame, interval_minutes: int, now: int) -> pl.DataFrame:
    """Merge one-minute bars (KLINE_SCHEMA plus a boolean ``closed``) into UTC-aligned bars.

    Open is the first bar's, close the last's, high and low the extremes, volumes and trade
    counts the sums (null when the venue publishes none). A merged bar is closed when its time
    is over (``now``, ns) and every minute it holds is closed; ``minutes`` says how many it holds.
    """
    iv = interval_minutes * NS_PER_MIN
    if interval_minutes == 1 or minutes.height == 0:
        return minutes.with_columns(minutes=pl.lit(1, pl.UInt32), complete=pl.lit(True))
    # Complete: every minute that has ended within the bar is there, closed. A minute counts as
    # ended a few seconds late: the venue's closing push takes a moment.
    ended = pl.lit(now - CLOSE_GRACE_NS)
    elapsed = ((pl.min_horizontal(pl.col("ts_event") + iv, ended) - pl.col("ts_event")) // NS_PER_MIN).clip(0)
    return (
        minutes.sort("ts_event")
        .with_columns(bucket=pl.col("ts_event") - pl.col("ts_event") % iv)
        .group_by("bucket", maintain_order=True)
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
            pl.col("quote_volume").sum(),
            pl.when(pl.col("trades").is_null().all()).then(None).otherwise(pl.col("trades").sum()).alias("trades"),
            pl.when(pl.col("taker_buy_volume").is_null().all()).then(None)
            .otherwise(pl.col("taker_buy_volume").sum()).alias("taker_buy_volume"),
            pl.when(pl.col("taker_buy_quote").is_null().all()).then(None)
            .otherwise(pl.col("taker_buy_quote").sum()).alias("taker_buy_quote"),
            (pl.col("closed").all() & (pl.col("bucket").first() + iv <= now)).alias("closed"),
            pl.len().alias("minutes"),
            pl.col("closed").sum().alias("closed_minutes"),
        )
        .rename({"bucket": "ts_event"})
        .with_columns(complete=pl.col("closed_minutes") >= elapsed)
        .drop("closed_minutes")
    )


def _bars(stored: pl.DataFrame, live: tuple[pl.DataFrame, pl.DataFrame] | None, lo: int, end: int, interval: str,
          limit: int, newest_first: bool, now: int) -> tuple[pl.DataFrame, bool]:
    """Closed stored bars, closed bars not stored yet and the open bar, merged into ``interval`` bars."""
    minutes = stored.select(list(KLINE_SCHEMA)) if stored.height else pl.DataFrame(schema=KLINE_SCHEMA)
    minutes = minutes.with_columns(closed=pl.lit(True))
    if live is not None:
        unflushed, open_bar = live
        minutes = pl.concat([minutes, unflushed.with_columns(closed=pl.lit(True)),
                             open_bar.with_columns(closed=pl.lit(False))])
    minutes = (minutes.filter((pl.col("ts_event") >= lo) & (pl.col("ts_event") <= end))
               .unique(subset=["ts_event"], keep="first").sort("ts_event"))
    bars = resample_klines(minutes, INTERVALS[interval], now)
    truncated = bars.height > limit
    bars = bars.tail(limit) if newest_first else bars.head(limit)
    return bars.select(
        ts=pl.col("ts_event") // NS_PER_MS,
        open="open", high="high", low="low", close="close", volume="volume", quote_volume="quote_volume",
        trades="trades", taker_buy_volume="taker_buy_volume", taker_buy_quote="taker_buy_quote",
        closed="closed", minutes="minutes", complete="complete",
    ), truncated


class KlinesResource(SeriesResource):
    """Bars of one symbol."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        ctx = self.ctx
        q = Query(req, PARAMS)
        series = self.series(q, symbol)
        interval = parse_choice("interval", q.get("interval"), INTERVALS, "1m")
        limit = parse_limit(q.get("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
        iv = INTERVALS[interval] * NS_PER_MIN
        now = time.time_ns()
        if q.get("window") is not None and (q.get("start") is not None or q.get("end") is not None):
            raise QueryError("window", "give either window or start/end, not both")
        start = parse_time("start", q.get("start"))
        end = parse_time("end", q.get("end"))
        window = parse_window(q.get("window"))
        end = now if end is None else end
        newest_first = start is None  # `window` means "the window ending now": its newest bars
        lookback = max(limit * iv, ctx.settings.retention_aggregates_1m * NS_PER_S)
        lo = start if start is not None else max(TIME_MIN_NS, end - (window if window is not None else lookback))
        if lo > end:
            raise QueryError("start", "start must not be after end")
        if start is not None:
            lo -= lo % iv  # the bar that holds start
        elif lo % iv:
            lo += iv - lo % iv  # the first whole bar of the window (the one before is partly gone)

        async with ctx.work.turn():
            stored = await ctx.store.read(BatchKey(KLINES, series.venue, series.market, series.symbol), lo, end)
            bars, truncated = await ctx.work.run(_bars, stored, ctx.live.kline_rows(series), lo, end, interval,
                                                 limit, newest_first, now)
            first = bars["ts"][0] * NS_PER_MS if bars.height else lo
            last = bars["ts"][-1] * NS_PER_MS + iv - 1 if bars.height else end
            gaps = await gaps_between(ctx, series, first, last, "klines")
        partial = bars.filter(~pl.col("complete"))["ts"].to_list()
        body = orjson.dumps({
            "exchange": str(series.venue),
            "market": str(series.market),
            "symbol": series.symbol,
            "interval": interval,
            "start": lo // NS_PER_MS,
            "end": end // NS_PER_MS,
            "count": bars.height,
            "truncated": truncated,
            "klines": rows_json(bars),
            # A bar missing minutes that have ended (collection started, or retention ended,
            # inside it) is not complete either.
            "data_complete": not gaps and not partial,
            "partial_bars": partial,
            "gaps": gaps,
        })
        send_bytes(resp, body)
