"""Normalised record schemas shared by venues, pipeline, store and API.

Every record carries ``ts_event`` (exchange time) and ``ts_recv`` (local receive time), both
int nanoseconds UTC, plus venue, market and symbol (the last three are the batch key, not
columns). Prices and quantities arrive as decimal strings; venues parse them to float64 while
decoding (measured faster than a per-column cast, see bench/README.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import polars as pl

__all__ = [
    "BatchKey",
    "GAPS",
    "GAP_SCHEMA",
    "Market",
    "TRADES",
    "TRADE_SCHEMA_INT_ID",
    "TRADE_SCHEMA_STR_ID",
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


VENUE_MARKETS: dict[Venue, tuple[Market, ...]] = {
    Venue.BINANCE: (Market.SPOT, Market.USDM),
    Venue.BYBIT: (Market.SPOT, Market.LINEAR),
}

TRADES = "trades"
GAPS = "gaps"


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
