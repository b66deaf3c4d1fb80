"""The typed results of the MCP tools (their structured content and output schemas).

Times are ISO-8601 UTC strings, prices carry the instrument's tick decimals and quantities its
lot decimals. Lists are short by default: rows only on request.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = [
    "Book",
    "Context",
    "Flow",
    "Footprint",
    "Gaps",
    "Markets",
    "Ohlcv",
    "Price",
    "Profile",
    "Status",
    "Structure",
    "Trades",
]

Rows = list[dict[str, Any]]


class Scope(BaseModel):
    symbol: str
    markets: list[str]  # "binance spot", ... : what the answer covers
    time: str | None = None  # when the answer was computed, or the end of its window
    data_complete: bool = True
    gaps: int = 0  # known gaps overlapping the window


class Markets(BaseModel):
    markets: Rows  # {symbol, exchange, market, channels, collecting, since, tick, lot}


class Status(BaseModel):
    status: str
    time: str | None
    uptime: str
    auth: str | None
    streams: int
    live: int
    problems: Rows  # streams that are not live (the first 12): {market, symbol, channel, state, error}
    not_live: int  # how many streams are not live
    store: dict[str, Any]
    gaps_hours: int
    gaps: int
    recent_gaps: Rows
    summary: str


class Price(BaseModel):
    symbol: str
    time: str | None
    markets: Rows  # {market, last, mid, spread, change_1h_pct, change_24h_pct, volume_1h, volume_24h, book}


class Ohlcv(Scope):
    interval: str
    columns: list[str]
    rows: list[list[Any]]
    partial: list[str]  # bars that are not complete (open, or overlapping a gap)


class Book(Scope):
    state: str
    mid: float | None
    spread: float | None
    spread_bps: float | None
    imbalance: dict[str, float | None] | None  # band -> (bid - ask) / (bid + ask)
    depth_in_band: dict[str, list[float | None]] | None  # band -> [bid qty, ask qty]
    walls: dict[str, Rows] | None
    bids: list[list[float | None]]
    asks: list[list[float | None]]


class Trades(Scope):
    window: str
    count: int
    volume: float | None
    buy: float | None
    sell: float | None
    delta: float | None
    vwap: float | None
    high: float | None
    low: float | None
    first: str | None
    last: str | None
    largest: Rows
    truncated: bool
    rows: Rows | None = None


class Profile(Scope):
    window: str
    resolution: str
    row_size: float | None
    poc: float | None
    vah: float | None
    val: float | None
    value_area: float
    total_volume: float | None
    buy_volume: float | None
    sell_volume: float | None
    delta: float | None
    hvn: list[float]
    lvn: list[float]
    naked_pocs: Rows
    rows: Rows | None = None


class Flow(Scope):
    price: float | None
    cvd: float | None
    bar: dict[str, Any] | None
    windows: dict[str, dict[str, Any]]
    large_notional: float | None
    large_trades: Rows
    stacked_imbalances: Rows
    book: Rows


class Footprint(Scope):
    interval: str
    row_size: float | None
    imbalance_ratio: float
    bars: Rows


class Structure(Scope):
    interval: str
    resolution: str
    close: float | None
    trend: str
    bias: str
    range: dict[str, Any] | None
    swings: Rows
    events: Rows
    key_levels: Rows
    wyckoff: Rows
    divergences: Rows
    delta_divergences: Rows


class Gaps(BaseModel):
    symbol: str | None
    window: str
    count: int
    missing_total: str
    gaps: Rows


class _ContextHead(Scope):
    price: float | None
    price_source: str | None
    cvd_today: float | None
    deltas: dict[str, float | None]
    timeframes: dict[str, dict[str, Any]]
    value: dict[str, Any]
    large_trades: dict[str, Any]
    completeness: dict[str, Any]
    unavailable: dict[str, str]


class ContextDetail(_ContextHead):
    """Everything the Wyckoff context found, as the text rendering reads it (not sent as is)."""

    divergences: Rows
    absorption: Rows
    imbalance_clusters: Rows
    wyckoff: Rows
    book: Rows


CONTEXT_COLUMNS = {
    "swings": ["label", "price"],
    "events": ["direction", "type", "level", "time"],
    "range": ["low", "high", "since"],
    "divergences": ["interval", "direction", "swing", "price", "prev_price", "cum_delta", "prev_cum_delta", "time"],
    "absorption": ["interval", "time", "bar"],
    "imbalance_clusters": ["time", "side", "from", "to"],
    "wyckoff": ["interval", "type", "level", "time", "volume_ratio", "atr_multiple"],
    "book": ["imbalance_0.1%", "imbalance_0.5%", "imbalance_1%"],
}


class Context(_ContextHead):
    """The Wyckoff context in rows without repeated keys: ``columns`` names each list's fields.

    ``timeframes``: per interval (4h, 1h, 15m) its trend, bias, range, newest swings and breaks;
    ``value``: session (UTC day) and 7-day POC/VAH/VAL, naked POCs; ``book``: per market."""

    columns: dict[str, list[str]]
    divergences: list[list[Any]]
    absorption: list[list[Any]]
    imbalance_clusters: list[list[Any]]
    wyckoff: list[list[Any]]
    book: dict[str, list[float | None]]
