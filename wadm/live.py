"""The read-only view of live collection that the API and metrics read.

The collectors own their state; readers get copies in plain typed records: a
:class:`HealthReport` (every stream, connection, REST host and the store), the live book of one
series, its open bar and closed bars not stored yet, and the windows readers cannot see complete
yet. Reading never changes collector state. A process without collectors (``wadm serve``)
shows its store and no streams.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

import polars as pl

from wadm.records import BatchKey, Market, Venue
from wadm.venues.base import Instrument

__all__ = [
    "BarsView",
    "BookDetail",
    "BookView",
    "ConnectionHealth",
    "HealthReport",
    "HistogramView",
    "KlineDetail",
    "LiveView",
    "RestHostHealth",
    "Series",
    "StoreHealth",
    "StreamHealth",
    "TradeDetail",
    "Unfinished",
]


@dataclass(frozen=True, slots=True, order=True)
class Series:
    """One symbol on one venue market."""

    venue: Venue
    market: Market
    symbol: str


@dataclass(frozen=True, slots=True)
class TradeDetail:
    """Counters of a trade stream."""

    trades: int
    duplicates: int
    missing_trades: int
    backfilled_trades: int
    rejected: int


@dataclass(frozen=True, slots=True)
class BookDetail:
    """State and counters of a book stream."""

    book_state: str
    update_id: int | None
    levels: tuple[int, int]
    resyncs: Mapping[str, int]
    snapshots: int
    resubscribes: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class KlineDetail:
    """State and counters of a kline stream."""

    open_bar: int | None  # open time, ms
    last_closed: int | None  # open time, ms
    backfilled_klines: int


@dataclass(frozen=True, slots=True)
class StreamHealth:
    """One stream as health and metrics show it."""

    series: Series
    stream: str
    channel: str
    connection: str
    # live, resyncing, empty, waiting, stale, connecting, disconnected, subscription_failed, failed, starting
    state: str
    connected: bool
    last_message_age_s: float | None
    messages: int
    reconnects: int
    rest_failures: int
    gaps: int
    error: str | None
    pending: int
    dropped: int
    detail: TradeDetail | BookDetail | KlineDetail


@dataclass(frozen=True, slots=True)
class ConnectionHealth:
    """One connection."""

    name: str
    url: str
    connected: bool
    connects: int
    reconnects: int
    rotations: int
    stale_reconnects: int
    connect_failures: int
    age_s: float | None
    errors: Mapping[str, int]
    last_error: str | None
    failed: str | None


@dataclass(frozen=True, slots=True)
class RestHostHealth:
    """One venue REST host."""

    host: str
    requests: int
    throttled: int
    banned: int


@dataclass(frozen=True, slots=True)
class HistogramView:
    """Bucket upper bounds, counts per bucket (then +Inf, not cumulative), sum and count."""

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """The store and the writer in front of it."""

    name: str
    ok: bool
    pending_rows: int
    pending_batches: int
    written_rows: int
    written_batches: int
    store_errors: int
    dropped_rows: Mapping[str, int]
    last_write_age_s: float | None
    last_error: str | None
    latency: Mapping[BatchKey, tuple[float, float, float]] = field(default_factory=dict)
    flush_rows: Mapping[str, HistogramView] = field(default_factory=dict)
    flush_durations: Mapping[str, HistogramView] = field(default_factory=dict)
    spool: SpoolHealth | None = None  # None: no spool (WADM_SPOOL_MAX_BYTES=0)


@dataclass(frozen=True, slots=True)
class SpoolHealth:
    """The on-disk spool in front of the store."""

    bytes: int
    max_bytes: int
    batches: int
    oldest_age_s: float | None
    dropped_batches: int
    dropped_rows: int
    torn_bytes: int  # cut off at start: a write an earlier process did not finish
    errors: int  # appends that failed (disk full or gone)


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Everything ``/health`` and ``/metrics`` show, read at one moment."""

    status: str  # ok, degraded, starting
    time_ms: int
    uptime_s: float
    collectors_enabled: bool
    collectors_started: bool
    restart_on_error: bool
    restarts: Mapping[str, int]
    store: StoreHealth
    streams: tuple[StreamHealth, ...]
    connections: tuple[ConnectionHealth, ...]
    rest_hosts: tuple[RestHostHealth, ...]

    @property
    def healthy(self) -> bool:
        """200 on ``/health``: every configured stream live and fresh, the store writing."""
        return self.status == "ok"


@dataclass(frozen=True, slots=True)
class BookView:
    """A live book as one reader sees it: levels copied out, never the collector's own."""

    state: str  # live or resyncing
    stale: bool
    ts_update: int  # ns, exchange time of the newest message
    ts_recv: int  # ns
    update_id: int | None
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]
    mid: float | None
    spread: float | None
    bands: Mapping[str, float]
    resyncs: int


@dataclass(frozen=True, slots=True)
class Unfinished:
    """A window readers cannot see complete yet: being backfilled, or waiting for a slow store."""

    stream: str
    start: int  # ns
    end: int
    reason: str  # backfilling or not_yet_written
    missing: int | None


RECENT_TRADES_NS = 16 * 60 * 10**9  # the closed minutes whose trades the bar scheduler keeps in memory


@dataclass(frozen=True, slots=True)
class BarsView:
    """The bar scheduler's view of one series: closed bars kept in memory and the open minutes' trades.

    PERF: the views are taken on the event loop, so they hold references only; :meth:`open_trades`
    does the concatenating, off the loop.
    """

    closed_until: int  # every minute before this (ns) is closed
    bars: pl.DataFrame  # closed 1m bars in memory (wadm.analytics.aggregates.STORED_BAR_SCHEMA)
    open_frames: tuple[pl.DataFrame, ...]  # trades from closed_until on (and maybe late ones), not all stored yet
    row: Decimal | None  # the footprint row bars are closed with (None until the tick is known)
    row_source: str | None  # config or default
    version: int = 0  # moves whenever a closed minute, or a gap of the series, changes
    recent: pl.DataFrame | None = None  # trades of the closed minutes in [recent_from, closed_until)
    recent_from: int = 0  # closed trades before this are only in the store

    def open_trades(self) -> pl.DataFrame | None:
        """The trades from ``closed_until`` on, in time order (None when there are none)."""
        frames = [f for f in self.open_frames if f.height]
        if not frames:
            return None
        trades = pl.concat(frames, how="vertical_relaxed").filter(pl.col("ts_event") >= self.closed_until)
        if trades.height == 0:
            return None
        if "id" in trades.columns:  # a trade can reach the store twice (live and over REST): one counts
            trades = trades.unique(subset="id", keep="first", maintain_order=True)
        return trades.sort("ts_event", maintain_order=True)


class LiveView(Protocol):
    """What the API and metrics may know about live collection. Reading never changes it."""

    @property
    def started_at(self) -> float:
        """Wall-clock seconds when the process started."""
        ...

    def health(self) -> HealthReport:
        """Every stream, connection, REST host and the store, now."""
        ...

    def collecting(self) -> Mapping[Series, tuple[tuple[str, str], ...]]:
        """The series this process collects: (stream, channel) per series."""
        ...

    def connected_once(self, series: Series) -> bool:
        """True once a connection carrying one of the series' streams has opened."""
        ...

    def book(self, series: Series, depth: int) -> BookView | None:
        """The live book of a series with ``depth`` levels per side; None when not collected here."""
        ...

    def instrument(self, series: Series) -> Instrument | None:
        """The series' price tick and quantity lot as the venue last described them; None if unknown."""
        ...

    def book_rows(self, series: Series) -> pl.DataFrame | None:
        """Book snapshots taken but not handed to the store yet; None when not collected here."""
        ...

    def kline_rows(self, series: Series) -> tuple[pl.DataFrame, pl.DataFrame] | None:
        """(closed bars not handed to the store yet, the open bar) as KLINE_SCHEMA frames; None when
        not collected here."""
        ...

    def bars(self, series: Series) -> BarsView | None:
        """The series' closed bars in memory and open-minute trades; None when not collected here."""
        ...

    def unfinished(self, key: BatchKey, start: int, end: int) -> list[Unfinished]:
        """Windows of ``key`` in ``[start, end]`` (ns) that readers cannot see complete yet."""
        ...
