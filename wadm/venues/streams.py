"""Live state of book and kline streams, shared by the venues (sans-IO).

A :class:`BookStream` wraps one instrument's book sync (:mod:`wadm.book.sync`) with what the
rest of WADM needs around it: the trusted part of the book, periodic snapshots waiting for the
store, and the windows during which the book could not be trusted (recorded as gaps). A
:class:`KlineStream` keeps the open bar live, queues closed bars for the store, and notices
closed bars it never saw (a disconnect across a minute boundary) so they can be fetched over
REST.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import polars as pl

from wadm.book.l2 import L2Book, Level, book_metrics, book_snapshot
from wadm.book.sync import BinanceBookSync, BookState, BybitBookSync
from wadm.records import BANDS, BOOK_SNAPSHOTS, KLINE_SCHEMA, KLINES, Market, Venue, book_snapshot_schema
from wadm.venues.base import Gap, GapQueue, StreamSpec

__all__ = ["KLINE_MIN_SILENCE", "BookStream", "KlineRow", "KlineStream"]

_MS = 1_000_000
KLINE_MIN_SILENCE = 90.0  # a 1-minute kline stream pushes at least once a minute (the closing bar)

# (ts_event, ts_recv, open, high, low, close, volume, quote_volume, trades, taker_buy_volume,
# taker_buy_quote): one row of KLINE_SCHEMA.
KlineRow = tuple[int, int, float, float, float, float, float, float, int | None, float | None, float | None]


@dataclass(slots=True, eq=False)
class BookStream(GapQueue):
    """One instrument's order book stream: sync state, trusted bounds and stored snapshots.

    Binance books are seeded from a REST snapshot of limited depth; levels beyond it stay
    unknown until they change (PROTOCOLS.md §5.4), so the lowest bid and highest ask of a full
    snapshot bound what is served and stored. Bybit books are the venue's own top N.
    """

    venue: Venue
    market: Market
    spec: StreamSpec
    sync: BinanceBookSync | BybitBookSync
    snapshot_depth: int = 100
    bands: tuple[float, ...] = BANDS
    max_rows: int = 100_000
    updates: int = 0  # book messages received
    ts_update: int = 0  # exchange time (ns) of the newest message
    ts_recv: int = 0  # local receive time (ns) of the newest message
    rows: list[tuple[object, ...]] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    bid_floor: float = -math.inf
    ask_ceiling: float = math.inf
    snapshots: int = 0  # REST snapshots applied (Binance) or in-band snapshots taken (Bybit)
    resubscribes: int = 0
    last_resubscribe: int = -(2**62)  # ns, receive time of the last resubscription the protocol asked for
    # Binance: a second sync rebuilt from a fresh snapshot while the live book keeps serving, to
    # move the trusted bounds when the price walks towards them (see :meth:`wants_refresh`).
    shadow: BinanceBookSync | None = None
    refreshes: int = 0
    refresh_due: int = 0  # ns before which no refresh is asked for
    short: bool = False  # the last sample found fewer trusted levels than snapshot_depth on a side
    _shadow_bounds: tuple[float, float] = (-math.inf, math.inf)
    dropped: int = 0  # stored snapshots dropped because the buffer was full
    _state: BookState = BookState.RESYNCING
    _down_since: int | None = None
    _down_reason: str = ""

    @property
    def _band_columns(self) -> list[str]:
        return list(book_snapshot_schema(self.bands))[6:-4]

    min_flush_interval: float = 10.0  # a snapshot a second: batch ten of them per stored document

    @property
    def table(self) -> str:
        """Snapshots go to ``book_snapshots``."""
        return BOOK_SNAPSHOTS

    @property
    def messages(self) -> int:
        """Book messages received (the watchdog's progress counter)."""
        return self.updates

    @property
    def pending(self) -> int:
        """Snapshots waiting to be cut into a batch."""
        return len(self.rows)

    @property
    def state(self) -> BookState:
        """Whether the book is exact (``live``) or being rebuilt (``resyncing``)."""
        return self.sync.state

    @property
    def book(self) -> L2Book:
        """The book itself (empty while resyncing)."""
        return self.sync.book

    def note(self, ts_recv: int) -> None:
        """Follow the sync's state: a window in which a once-live book was not exact is a gap."""
        state = self.sync.state
        if state is self._state:
            return
        self._state = state
        if state is BookState.LIVE:
            if self._down_since is not None:
                self.gaps.append(Gap(self._down_since, ts_recv, f"book_{self._down_reason or 'resync'}"))
                self._down_since = None
        else:
            self._down_since = ts_recv
            self._down_reason = self.sync.last_reason
            self.shadow = None  # the rebuild brings new bounds anyway

    def on_diff(self, first: int, last: int, prev: int, bids: Sequence[Level], asks: Sequence[Level],
                ts_event: int, ts_recv: int) -> None:
        """Take one Binance diff (``U``, ``u``, ``pu``)."""
        self.updates += 1
        self.ts_update, self.ts_recv = ts_event, ts_recv
        sync = self.sync
        assert isinstance(sync, BinanceBookSync)
        sync.on_diff(first, last, prev, bids, asks)
        if sync.state is not self._state:
            self.note(ts_recv)
        if self.shadow is not None:
            self.shadow.on_diff(first, last, prev, bids, asks)
            self._adopt_shadow()

    def on_message(self, snapshot: bool, update_id: int, bids: Sequence[Level], asks: Sequence[Level],
                   ts_event: int, ts_recv: int) -> bool:
        """Take one Bybit snapshot or delta; True when the book broke and needs a resubscription."""
        self.updates += 1
        self.ts_update, self.ts_recv = ts_event, ts_recv
        sync = self.sync
        assert isinstance(sync, BybitBookSync)
        action = sync.on_message(snapshot, update_id, bids, asks)
        if snapshot or update_id == 1:
            self.snapshots += 1
        if sync.state is not self._state:
            self.note(ts_recv)
        return action is not None

    def on_snapshot(self, last_update_id: int, bids: Sequence[Level], asks: Sequence[Level], limit: int,
                    ts_recv: int) -> bool:
        """Seed a Binance book from a REST snapshot of ``limit`` levels; True when it was used."""
        sync = self.sync
        assert isinstance(sync, BinanceBookSync)
        if sync.state is BookState.LIVE:
            return False  # a late answer to an earlier request: the book is already exact
        again = sync.on_snapshot(last_update_id, bids, asks)
        live = self.state is BookState.LIVE
        if live:
            self.snapshots += 1
            self.bid_floor = min(p for p, _ in bids) if len(bids) >= limit else -math.inf
            self.ask_ceiling = max(p for p, _ in asks) if len(asks) >= limit else math.inf
        self.note(ts_recv)
        return again is None and live

    def wants_refresh(self, now: int) -> bool:
        """True when a live Binance book should be re-seeded to move its trusted bounds.

        A snapshot of N levels bounds what is known; when the price walks towards a bound, fewer
        than ``snapshot_depth`` trusted levels remain on that side (:meth:`sample` notices).
        Asked at most once a minute per book.
        """
        return (self.short and self.venue is Venue.BINANCE and self.shadow is None and now >= self.refresh_due
                and self.sync.state is BookState.LIVE)

    def start_refresh(self, now: int) -> BinanceBookSync:
        """Start rebuilding the book beside the live one; the next diffs feed both."""
        assert isinstance(self.sync, BinanceBookSync)
        self.refresh_due = now + 60_000_000_000
        self.shadow = BinanceBookSync(self.spec.symbol, futures=self.sync.futures,
                                      max_buffer=self.sync.buffer.maxlen or 2000)
        return self.shadow

    def on_refresh_snapshot(self, last_update_id: int, bids: Sequence[Level], asks: Sequence[Level],
                            limit: int) -> bool:
        """Seed the shadow book; it replaces the live one once both are at the same update."""
        shadow = self.shadow
        if shadow is None or shadow.state is BookState.LIVE:
            return False
        shadow.on_snapshot(last_update_id, bids, asks)
        after: BookState = shadow.state  # changed by on_snapshot
        if after is not BookState.LIVE:
            return False
        self._shadow_bounds = (min(p for p, _ in bids) if len(bids) >= limit else -math.inf,
                               max(p for p, _ in asks) if len(asks) >= limit else math.inf)
        self._adopt_shadow()
        return True

    def _adopt_shadow(self) -> None:
        shadow, sync = self.shadow, self.sync
        if shadow is None or shadow.state is not BookState.LIVE or sync.state is not BookState.LIVE:
            return
        if shadow.book.update_id != sync.book.update_id:
            return  # not level yet: the next diff brings both to the same update
        assert isinstance(sync, BinanceBookSync)
        sync.adopt(shadow)
        self.bid_floor, self.ask_ceiling = self._shadow_bounds
        self.shadow = None
        self.short = False
        self.refreshes += 1

    def connection_lost(self, ts_recv: int) -> None:
        """Diffs in flight are lost: the book cannot be trusted until it is rebuilt."""
        self.sync.reset("disconnected")
        self.shadow = None
        self.note(ts_recv)

    def levels(self, depth: int) -> tuple[list[Level], list[Level]]:
        """The best trusted ``depth`` levels per side (empty while resyncing)."""
        return self.sync.book.top(depth, self.bid_floor, self.ask_ceiling)

    def metrics(self) -> tuple[float | None, float | None, dict[str, float]]:
        """Mid, spread and band metrics of the trusted book."""
        return book_metrics(self.sync.book, self.bands, self.bid_floor, self.ask_ceiling)

    def sample(self, now: int) -> bool:
        """Queue a snapshot of the live book taken at ``now`` (ns); False when not live."""
        if self.sync.state is not BookState.LIVE:
            return False
        if len(self.rows) >= self.max_rows:
            self.dropped += 1
            return False
        bids, asks, mid, spread, bands = book_snapshot(self.sync.book, self.snapshot_depth, self.bands,
                                                       self.bid_floor, self.ask_ceiling)
        self.short = ((len(bids) < self.snapshot_depth and self.bid_floor > -math.inf)
                      or (len(asks) < self.snapshot_depth and self.ask_ceiling < math.inf))
        band_values = [bands.get(name) for name in self._band_columns]  # null when a side is empty
        self.rows.append((
            now, self.ts_update, self.ts_recv, self.sync.book.update_id, mid, spread, *band_values,
            [p for p, _ in bids], [q for _, q in bids], [p for p, _ in asks], [q for _, q in asks],
        ))
        return True

    def take(self) -> pl.DataFrame | None:
        """Cut the queued snapshots into a DataFrame; ``None`` if there are none."""
        if not self.rows:
            return None
        rows, self.rows = self.rows, []
        return pl.DataFrame(rows, schema=book_snapshot_schema(self.bands), orient="row")

    def take_copy(self) -> pl.DataFrame:
        """The queued snapshots as a DataFrame, leaving them queued."""
        return pl.DataFrame(self.rows, schema=book_snapshot_schema(self.bands), orient="row")


@dataclass(slots=True, eq=False)
class KlineStream(GapQueue):
    """One instrument's venue klines: the open bar, closed bars for the store, bars to fetch."""

    venue: Venue
    market: Market
    spec: StreamSpec
    interval_ms: int = 60_000
    max_rows: int = 100_000
    bars: int = 0  # kline messages received (a Bybit frame with two candles counts once)
    open_bar: KlineRow | None = None
    last_closed: int = -1  # open time (ms) of the newest closed bar taken or handed to backfill
    rows: list[KlineRow] = field(default_factory=list)
    missing: list[tuple[int, int]] = field(default_factory=list)  # (first, last) open times (ms) to fetch
    gaps: list[Gap] = field(default_factory=list)
    backfilled: int = 0
    dropped: int = 0

    @property
    def table(self) -> str:
        """Closed bars go to ``klines``."""
        return KLINES

    @property
    def messages(self) -> int:
        """Kline messages received (the watchdog's progress counter)."""
        return self.bars

    @property
    def pending(self) -> int:
        """Closed bars waiting to be cut into a batch."""
        return len(self.rows)

    def on_bar(self, row: KlineRow, closed: bool) -> None:
        """Take one bar (``row[0]`` is its open time, ns) as the venue published it."""
        start = row[0] // _MS
        iv = self.interval_ms
        if self.last_closed < 0:
            self.last_closed = start - iv  # collection starts here; earlier bars are not ours to fill
        elif start - iv > self.last_closed:
            # Bars between the newest closed one we have and this one closed while we did not see
            # them (a disconnect across a bar boundary): fetch them over REST.
            self.missing.append((self.last_closed + iv, start - iv))
            self.last_closed = start - iv
        if closed:
            if start > self.last_closed:
                self._keep(row)
                self.last_closed = start
            if self.open_bar is not None and self.open_bar[0] <= row[0]:
                self.open_bar = None
        elif start > self.last_closed:
            self.open_bar = row

    def resume(self, open_ms: int) -> None:
        """Continue after the newest stored closed bar (a restart): the bars in between are fetched."""
        self.last_closed = max(self.last_closed, open_ms)

    def add_backfill(self, rows: Iterable[KlineRow], first: int, last: int) -> int:
        """Keep fetched closed bars whose open time (ms) is in ``[first, last]``; return how many."""
        kept = 0
        for row in rows:
            if first <= row[0] // _MS <= last:
                self._keep(row)
                kept += 1
        self.backfilled += kept
        return kept

    def _keep(self, row: KlineRow) -> None:
        if len(self.rows) >= self.max_rows:
            self.dropped += 1
        else:
            self.rows.append(row)

    def connection_lost(self, ts_recv: int) -> None:
        """The open bar is no longer followed; the next bar shows which closed bars were missed."""
        self.open_bar = None

    def take(self) -> pl.DataFrame | None:
        """Cut the queued closed bars into a DataFrame; ``None`` if there are none."""
        if not self.rows:
            return None
        rows, self.rows = self.rows, []
        return pl.DataFrame(rows, schema=KLINE_SCHEMA, orient="row").sort("ts_event")

