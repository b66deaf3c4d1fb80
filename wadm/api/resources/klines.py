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
from typing import Any

import falcon.asgi
import polars as pl

from wadm.api.json import send_json
from wadm.api.params import parse_choice, parse_limit, parse_time, parse_window
from wadm.api.resources.gaps import gaps_between
from wadm.api.resources.series import SeriesResource
from wadm.errors import QueryError
from wadm.records import KLINE_SCHEMA, KLINES, BatchKey

__all__ = ["INTERVALS", "KlinesResource", "resample_klines"]

_MS = 1_000_000
MINUTE_NS = 60_000_000_000
CLOSE_GRACE_NS = 5_000_000_000
INTERVALS = {"1m": 1, "5m": 5, "15m": 15, "1h": 60, "4h": 240}
DEFAULT_LIMIT = 500
MAX_LIMIT = 1500


def resample_klines(minutes: pl.DataFrame, interval_minutes: int, now: int) -> pl.DataFrame:
    """Merge one-minute bars (KLINE_SCHEMA plus a boolean ``closed``) into UTC-aligned bars.

    Open is the first bar's, close the last's, high and low the extremes, volumes and trade
    counts the sums (null when the venue publishes none). A merged bar is closed when its time
    is over (``now``, ns) and every minute it holds is closed; ``minutes`` says how many it holds.
    """
    iv = interval_minutes * MINUTE_NS
    if interval_minutes == 1 or minutes.height == 0:
        return minutes.with_columns(minutes=pl.lit(1, pl.UInt32), complete=pl.lit(True))
    # Complete: every minute that has ended within the bar is there, closed. A minute counts as
    # ended a few seconds late: the venue's closing push takes a moment.
    ended = pl.lit(now - CLOSE_GRACE_NS)
    elapsed = ((pl.min_horizontal(pl.col("ts_event") + iv, ended) - pl.col("ts_event")) // MINUTE_NS).clip(0)
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


class KlinesResource(SeriesResource):
    """Bars of one symbol."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        svc = self.service
        venue, market, symbol = self.series(req, symbol)
        interval = parse_choice("interval", req.get_param("interval"), INTERVALS, "1m")
        limit = parse_limit(req.get_param("limit"), default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
        iv = INTERVALS[interval] * MINUTE_NS
        now = time.time_ns()
        start = parse_time("start", req.get_param("start"))
        end = parse_time("end", req.get_param("end"))
        window = parse_window(req.get_param("window"))
        if window is not None:
            if start is not None or end is not None:
                raise QueryError("window", "give either window or start/end, not both")
        end = now if end is None else end
        newest_first = start is None  # `window` means "the window ending now": its newest bars
        lookback = max(limit * iv, svc.settings.retention_aggregates_1m * 1_000_000_000)
        lo = start if start is not None else end - (window if window is not None else lookback)
        if lo > end:
            raise QueryError("start", "start must not be after end")
        if start is not None:
            lo -= lo % iv  # the bar that holds start
        elif lo % iv:
            lo += iv - lo % iv  # the first whole bar of the window (the one before is partly gone)

        stored = await svc.store.read(BatchKey(KLINES, venue, market, symbol), lo, end)
        minutes = stored.select(list(KLINE_SCHEMA)) if stored.height else pl.DataFrame(schema=KLINE_SCHEMA)
        live = svc.klines.get((venue, market, symbol))
        minutes = minutes.with_columns(closed=pl.lit(True))
        if live is not None:
            # Closed bars not flushed to the store yet, then the open bar.
            unflushed = pl.DataFrame(live.rows, schema=KLINE_SCHEMA, orient="row").with_columns(closed=pl.lit(True))
            minutes = pl.concat([minutes, unflushed])
            if live.open_bar is not None and lo <= live.open_bar[0] <= end:
                open_row = pl.DataFrame([live.open_bar], schema=KLINE_SCHEMA, orient="row").with_columns(
                    closed=pl.lit(False))
                minutes = pl.concat([minutes, open_row])
        minutes = (minutes.filter((pl.col("ts_event") >= lo) & (pl.col("ts_event") <= end))
                   .unique(subset=["ts_event"], keep="first").sort("ts_event"))
        bars = resample_klines(minutes, INTERVALS[interval], now)
        truncated = bars.height > limit
        bars = bars.tail(limit) if newest_first else bars.head(limit)
        rows: list[dict[str, Any]] = bars.select(
            ts=pl.col("ts_event") // _MS,
            open="open", high="high", low="low", close="close", volume="volume", quote_volume="quote_volume",
            trades="trades", taker_buy_volume="taker_buy_volume", taker_buy_quote="taker_buy_quote",
            closed="closed", minutes="minutes", complete="complete",
        ).to_dicts()
        first = rows[0]["ts"] * _MS if rows else lo
        last = rows[-1]["ts"] * _MS + iv - 1 if rows else end
        gaps = await gaps_between(svc.store, venue, market, symbol, first, last, "klines")
        gaps += svc.unfinished(venue, market, symbol, KLINES, first, last)
        partial = [r["ts"] for r in rows if not r["complete"]]
        send_json(resp, {
            "exchange": str(venue),
            "market": str(market),
            "symbol": symbol,
            "interval": interval,
            "start": lo // _MS,
            "end": end // _MS,
            "count": len(rows),
            "truncated": truncated,
            "klines": rows,
            # A bar missing minutes that have ended (collection started, or retention ended,
            # inside it) is not complete either.
            "data_complete": not gaps and not partial,
            "partial_bars": partial,
            "gaps": gaps,
        })
