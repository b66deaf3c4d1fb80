"""``/api/v1/gaps``: known windows of missing or unverified data, and the lookup data endpoints use."""

from __future__ import annotations

import time
from typing import Any

import falcon.asgi
import polars as pl

from wadm.api.json import send_json
from wadm.api.params import parse_choice, parse_limit, parse_range, resolve_series
from wadm.config import Settings, StreamTarget
from wadm.records import GAPS, BatchKey, Market, Venue
from wadm.store.base import Store

__all__ = ["CHANNELS", "GapsResource", "gap_channel", "gaps_between"]

_NS_PER_MS = 1_000_000
MAX_LIMIT = 10_000


CHANNELS = ("trades", "book", "klines")


def gap_channel(stream: str) -> str:
    """The channel a gap's stream belongs to: ``trades``, ``book`` or ``klines``."""
    low = stream.lower()
    if "depth" in low or low.startswith("orderbook") or low == "book_snapshots":
        return "book"
    if "kline" in low:
        return "klines"
    return "trades"


async def gaps_between(
    store: Store, venue: Venue, market: Market, symbol: str, start: int, end: int, channel: str | None = None
) -> list[dict[str, Any]]:
    """Gaps of one series (of one channel, or all) that overlap ``[start, end]`` (ns), oldest first."""
    frame = await store.read(BatchKey(GAPS, venue, market, symbol), 0, end)
    if frame.height == 0:
        return []
    rows = frame.filter((pl.col("end") >= start) & (pl.col("ts_event") <= end)).sort("ts_event")
    return [
        {
            "exchange": str(venue),
            "market": str(market),
            "symbol": symbol,
            "channel": gap_channel(r["stream"]),
            "stream": r["stream"],
            "start": r["ts_event"] // _NS_PER_MS,
            "end": r["end"] // _NS_PER_MS,
            "reason": r["reason"],
            "missing": r["missing"],
        }
        for r in rows.iter_rows(named=True)
        if channel is None or gap_channel(r["stream"]) == channel
    ]


class GapsResource:
    """Gaps filtered by symbol, exchange, market and range."""

    def __init__(self, settings: Settings, targets: list[StreamTarget], store: Store) -> None:
        self.settings = settings
        self.targets = targets
        self.store = store

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        symbol = req.get_param("symbol")
        exchange, market = req.get_param("exchange"), req.get_param("market")
        start, end = parse_range(
            req.get_param("start"), req.get_param("end"), req.get_param("window"),
            now=time.time_ns(), default_span=self.settings.retention_gaps * 1_000_000_000,
        )
        limit = parse_limit(req.get_param("limit"), default=1000, maximum=MAX_LIMIT)
        channel = req.get_param("channel")
        if channel is not None:
            channel = parse_choice("channel", channel, CHANNELS, "")
        if symbol:
            venue, mkt = resolve_series(self.targets, symbol, exchange, market)
            series = [(venue, mkt, symbol.upper())]
        else:
            if exchange and exchange.lower() not in {v.value for v in Venue}:
                resolve_series(self.targets, "", exchange, None)  # raises the usual message
            if market and market.lower() not in {m.value for m in Market}:
                resolve_series(self.targets, "", None, market)
            want_venue, want_market = (exchange or "").lower(), (market or "").lower()
            series = [
                (t.venue, t.market, s)
                for t in self.targets
                for s in t.symbols
                if want_venue in ("", t.venue.value) and want_market in ("", t.market.value)
            ]
        rows: list[dict[str, Any]] = []
        for venue, mkt, sym in series:
            rows += await gaps_between(self.store, venue, mkt, sym, start, end, channel)
        rows.sort(key=lambda r: (r["start"], r["exchange"], r["market"], r["symbol"]))
        send_json(resp, {
            "start": start // _NS_PER_MS,
            "end": end // _NS_PER_MS,
            "count": min(len(rows), limit),
            "truncated": len(rows) > limit,
            "gaps": rows[:limit],
        })
