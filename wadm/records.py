"""Normalised record schemas shared by venues, pipeline, store and API.

Every record carries ``ts_event`` (exchange time) and ``ts_recv`` (local receive time), both
int nanoseconds UTC, plus venue, market and symbol (the last three are the batch key, not
columns). Prices and quantities arrive as decimal strings; venues parse them to float64 while
decoding (measured faster than a per-column cast, see bench/README.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

import polars as pl

__all__ = [
    "BANDS",
    "BARS_1H",
    "BARS_1M",
    "BOOK_SNAPSHOTS",
    "INDICATORS",
    "CHANNELS",
    "CHANNEL_OF_TABLE",
    "BatchKey",
    "KLINES",
    "KLINE_SCHEMA",
    "KlineRow",
    "TABLE_OF_CHANNEL",
    "band_columns",
    "band_name",
    "book_snapshot_schema",
    "GAPS",
    "GAP_SCHEMA",
    "Market",
    "TRADES",
    "TRADE_SCHEMA_INT_ID",
    "TRADE_SCHEMA_STR_ID",
    "USDM_DEPTH_LIMITS",
    "Venue",
    "trade_schema",
]


class Venue(enum.StrEnum):
    """An exchange we collect from."""

    BINANCE = "binance"
    BYBIT = "bybit"


class Market(enum.StrEnum):
    """A market of a venue: Binance spot and USD-M, Bybit spot and linear."""

    SPOT = "spot"
    USDM = "usdm"
    LINEAR = "linear"


# Depth snapshot sizes Binance USD-M accepts (spot takes any from 1 to 5000).
USDM_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)

VENUE_MARKETS: dict[Venue, tuple[Market, ...]] = {
    Venue.BINANCE: (Market.SPOT, Market.USDM),
    Venue.BYBIT: (Market.SPOT, Market.LINEAR),
}

TRADES = "trades"
GAPS = "gaps"
BOOK_SNAPSHOTS = "book_snapshots"
KLINES = "klines"
BARS_1M = "bars_1m"  # our bars and footprints from trades (wadm.analytics.aggregates)
BARS_1H = "bars_1h"
INDICATORS = "indicators"  # per-minute Volume Profile and Order Flow snapshots

# What is collected for every symbol, and the table each channel's rows go to.
CHANNELS = ("trades", "book", "klines")
TABLE_OF_CHANNEL = {"trades": TRADES, "book": BOOK_SNAPSHOTS, "klines": KLINES}
CHANNEL_OF_TABLE = {table: channel for channel, table in TABLE_OF_CHANNEL.items()}


@dataclass(frozen=True, slots=True, order=True)
class BatchKey:
    """Which series a batch belongs to: one (table, venue, market, symbol)."""

    table: str
    venue: Venue
    market: Market
    symbol: str

    def __str__(self) -> str:
        return f"{self.table}/{self.venue}/{self.market}/{self.symbol}"


# Trades as stored: id is the venue's trade id (int for Binance, string for Bybit);
# side is the aggressor, +1 buy / -1 sell.
TRADE_SCHEMA_INT_ID: dict[str, pl.DataType] = {
    "ts_event": pl.Int64(),
    "ts_recv": pl.Int64(),
    "id": pl.Int64(),
    "price": pl.Float64(),
    "qty": pl.Float64(),
    "side": pl.Int8(),
}
TRADE_SCHEMA_STR_ID: dict[str, pl.DataType] = {**TRADE_SCHEMA_INT_ID, "id": pl.String()}


def trade_schema(venue: Venue) -> dict[str, pl.DataType]:
    """Return the stored trade schema for a venue (the id type differs)."""
    return TRADE_SCHEMA_INT_ID if venue is Venue.BINANCE else TRADE_SCHEMA_STR_ID


# A window of missing or unverified data on one stream. ``ts_event`` is the window's start (the
# last good record before it, ns) and ``end`` the first good record after it; ``missing`` is the
# number of records known to be missing (skipped trade ids), null when unknown (a disconnect on a
# venue without contiguous ids).
GAP_SCHEMA: dict[str, pl.DataType] = {
    "ts_event": pl.Int64(),
    "end": pl.Int64(),
    "stream": pl.String(),
    "reason": pl.String(),
    "missing": pl.Int64(),
    "ts_recv": pl.Int64(),
}


# Bands around mid, as fractions, in which book depth and imbalance are measured.
BANDS: tuple[float, ...] = (0.001, 0.005, 0.01)


def band_name(band: float) -> str:
    """Column suffix of a band: 0.001 -> ``0.1pct``."""
    return f"{band * 100:g}pct"


def band_columns(bands: tuple[float, ...] = BANDS) -> list[str]:
    """The metric columns of a stored book snapshot, in schema order: depth and imbalance per band."""
    return [f"{kind}_{band_name(band)}" for band in bands for kind in ("bid_depth", "ask_depth", "imbalance")]


def book_snapshot_schema(bands: tuple[float, ...] = BANDS) -> dict[str, pl.DataType]:
    """A stored book snapshot: when it was taken, the book's top levels and derived metrics.

    ``ts_event`` is when the snapshot was taken (local clock, ns); ``ts_update`` the exchange time
    of the last update applied to the book and ``ts_recv`` when that update was received.
    Levels are list columns, bids best (highest) first and asks best (lowest) first.
    """
    schema: dict[str, pl.DataType] = {
        "ts_event": pl.Int64(),
        "ts_update": pl.Int64(),
        "ts_recv": pl.Int64(),
        "update_id": pl.Int64(),
        "mid": pl.Float64(),
        "spread": pl.Float64(),
    }
    schema |= dict.fromkeys(band_columns(bands), pl.Float64())
    schema |= {
        "bid_price": pl.List(pl.Float64()),
        "bid_qty": pl.List(pl.Float64()),
        "ask_price": pl.List(pl.Float64()),
        "ask_qty": pl.List(pl.Float64()),
    }
    return schema


# A closed one-minute kline as the venue published it. ``ts_event`` is the bar's open time (ns).
# ``trades`` and the taker-buy volumes are null where the venue does not publish them (Bybit).
KLINE_SCHEMA: dict[str, pl.DataType] = {
    "ts_event": pl.Int64(),
    "ts_recv": pl.Int64(),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "quote_volume": pl.Float64(),
    "trades": pl.Int64(),
    "taker_buy_volume": pl.Float64(),
    "taker_buy_quote": pl.Float64(),
}


class KlineRow(NamedTuple):
    """One row of :data:`KLINE_SCHEMA`, as a venue stream or REST answer gives it."""

    ts_event: int  # open time, ns
    ts_recv: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    trades: int | None
    taker_buy_volume: float | None
    taker_buy_quote: float | None
