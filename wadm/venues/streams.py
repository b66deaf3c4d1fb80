"""Live state of book and kline streams, shared by the venues (sans-IO).

A :class:`BookStream` wraps one instrument's book sync (:mod:`wadm.book.sync`) with what the
rest of WADM needs around it: the trusted part of the book, periodic snapshots waiting for the
store, and the windows during which the book could not be trusted. A :class:`KlineStream`
keeps the open bar live, queues closed bars for the store, and notices closed bars it never
saw (a disconnect across a minute boundary). Both say what they need as actions
(:data:`~wadm.venues.base.Action`): fetch a snapshot, resubscribe, fetch bars, record a gap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from wadm.book.l2 import L2Book, Level, book_metrics, book_snapshot
from wadm.book.sync import BinanceBookSync, BookState, BybitBookSync
from wadm.records import (
    BANDS,
    BOOK_SNAPSHOTS,
    KLINE_SCHEMA,
    KLINES,
    KlineRow,
    Market,
    Venue,
    band_columns,
    book_snapshot_schema,
)
from wadm.units import NS_PER_MS, NS_PER_S
from wadm.venues.base import (
    Action,
    FetchKlines,
    FetchSnapshot,
    Gap,
    RecordGap,
    RestRequest,
    Resubscribe,
    StreamSpec,
    Taken,
)

__all__ = ["KLINE_MIN_SILENCE", "BookStream", "DepthSnapshot", "KlineBackfill", "KlineStream"]

KLINE_MIN_SILENCE = 90.0  # a 1-minute kline stream pushes at least once a minute (the closing bar)
RESUBSCRIBE_EVERY = NS_PER_S  # at most one resubscription per second per book (no request storm)
REFRESH_EVERY = 60 * NS_PER_S  # at most one re-seeding per minute per book
KLINE_PAGE = 1000  # bars per REST request


@dataclass(frozen=True, slots=True)
class DepthSnapshot:
    """A REST depth snapshot in venue-neutral form."""

    update_id: int
    bids: list[Level]
    asks: list[Level]


@dataclass(slots=True, eq=False)
class BookStream:
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
    # Binance: the REST snapshot this book is seeded from, and how many levels it asks for.
    snapshot_request: RestRequest[DepthSnapshot] | None = None
    snapshot_limit: int = 1000
    # Bybit: the frames that make the venue send a fresh snapshot (unsubscribe, subscribe).
    resubscribe_frames: tuple[bytes, ...] = ()
    updates: int = 0  # book messages received
    ts_update: int = 0  # exchange time (ns) of the newest message
    ts_recv: int = 0  # local receive time (ns) of the newest message
    rows: list[tuple[object, ...]] = field(default_factory=list)
    bid_floor: float = -math.inf
    ask_ceiling: float = math.inf
    snapshots: int = 0  # REST snapshots applied (Binance) or in-band snapshots taken (Bybit)
    resubscribes: int = 0
    last_resubscribe: int = -(2**62)  # ns, receive time of the last resubscription asked for
    # Binance: a second sync rebuilt from a fresh snapshot while the live book keeps serving, to
    # move the trusted bounds when the price walks towards them (see :meth:`wants_refresh`).
    shadow: BinanceBookSync | None = None
    refreshes: int = 0
    refresh_due: int = 0  # ns before which no refresh is asked for
    short: bool = False  # the last sample found fewer trusted levels than snapshot_depth on a side
    dropped: int = 0  # stored snapshots dropped because the buffer was full
    min_flush_interval: float = 10.0  # a snapshot a second: batch ten of them per stored document
    _shadow_bounds: tuple[float, float] = (-math.inf, math.inf)
    _state: BookState = BookState.RESYNCING
    _down_since: int | None = None
    _down_reason: str = ""

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

    def _note(self, ts_recv: int) -> RecordGap | None:
        """Follow the sync's state: a window in which a once-live book was not exact is a gap."""
        state = self.sync.state
        if state is self._state:
            return None
        self._state = state
        if state is not BookState.LIVE:
            self._down_since = ts_recv
            self._down_reason = self.sync.last_reason
            self.shadow = None  # the rebuild brings new bounds anyway
            return None
        since, self._down_since = self._down_since, None
        if since is None:
            return None  # the first sync at startup is no gap
        return RecordGap(self.spec.name, Gap(since, ts_recv, f"book_{self._down_reason or 'resync'}"))

    def on_diff(self, first: int, last: int, prev: int, bids: Sequence[Level], asks: Sequence[Level],
                ts_event: int, ts_recv: int) -> Action | None:
        """Take one Binance diff (``U``, ``u``, ``pu``); return a snapshot request when one is needed."""
        self.updates += 1
        self.ts_update, self.ts_recv = ts_event, ts_recv
        sync = self.sync
        assert isinstance(sync, BinanceBookSync)
        need = sync.on_diff(first, last, prev, bids, asks)
        if sync.state is not self._state:
            self._note(ts_recv)  # live -> resyncing: the window is recorded when it is live again
        if need is not None:
            return FetchSnapshot(self.spec.name, need.reason)
        if self.shadow is not None:
            shadow_need = self.shadow.on_diff(first, last, prev, bids, asks)
            self._adopt_shadow()
            if shadow_need is not None:
                return FetchSnapshot(self.spec.name, "refresh", refresh=True)
        return None

    def on_message(self, snapshot: bool, update_id: int, bids: Sequence[Level], asks: Sequence[Level],
                   ts_event: int, ts_recv: int) -> Action | None:
        """Take one Bybit snapshot or delta; a broken book asks to be resubscribed (at most once a second)."""
        self.updates += 1
        self.ts_update, self.ts_recv = ts_event, ts_recv
        sync = self.sync
        assert isinstance(sync, BybitBookSync)
        broken = sync.on_message(snapshot, update_id, bids, asks)
        if snapshot or update_id == 1:
            self.snapshots += 1
        gap = self._note(ts_recv) if sync.state is not self._state else None
        if broken is not None and ts_recv - self.last_resubscribe >= RESUBSCRIBE_EVERY:
            self.last_resubscribe = ts_recv
            return self.resubscribe(broken.reason)
        return gap

    def resubscribe(self, reason: str) -> Resubscribe:
        """Ask for a fresh in-band snapshot (Bybit) and count it."""
        self.resubscribes += 1
        return Resubscribe(self.spec.name, self.resubscribe_frames, reason)

    def on_snapshot(self, last_update_id: int, bids: Sequence[Level], asks: Sequence[Level], limit: int,
                    ts_recv: int) -> tuple[Action, ...]:
        """Seed a Binance book from a REST snapshot of ``limit`` levels.

        The book is live afterwards when the snapshot bridged the buffered diffs; otherwise
        another snapshot is asked for. Going live after a resync records the window.
        """
        sync = self.sync
        assert isinstance(sync, BinanceBookSync)
        if sync.state is BookState.LIVE:
            return ()  # a late answer to an earlier request: the book is already exact
        need = sync.on_snapshot(last_update_id, bids, asks)
        if self.state is BookState.LIVE:
            self.snapshots += 1
            self.bid_floor = min(p for p, _ in bids) if len(bids) >= limit else -math.inf
            self.ask_ceiling = max(p for p, _ in asks) if len(asks) >= limit else math.inf
        actions: list[Action] = []
        if (gap := self._note(ts_recv)) is not None:
            actions.append(gap)
        if need is not None:
            actions.append(FetchSnapshot(self.spec.name, need.reason))
        return tuple(actions)

    def awaiting_snapshot(self, refresh: bool = False) -> BinanceBookSync | None:
        """The Binance sync (the shadow's, with ``refresh``) that is waiting for a REST snapshot."""
        sync = self.shadow if refresh else self.sync
        return sync if isinstance(sync, BinanceBookSync) and sync.snapshot_requested else None

    def wants_refresh(self, now: int) -> bool:
        """True when a live Binance book should be re-seeded to move its trusted bounds.

        A snapshot of N levels bounds what is known; when the price walks towards a bound, fewer
        than ``snapshot_depth`` trusted levels remain on that side (:meth:`sample` notices).
        Asked at most once a minute per book.
        """
        return (self.short and self.venue is Venue.BINANCE and self.shadow is None and now >= self.refresh_due
                and self.sync.state is BookState.LIVE)

    def start_refresh(self, now: int) -> BinanceBookSync:
        """Start rebuilding the book beside the live one; the next diff asks for its snapshot."""
        assert isinstance(self.sync, BinanceBookSync)
        self.refresh_due = now + REFRESH_EVERY
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
        self._note(ts_recv)

    def levels(self, depth: int) -> tuple[list[Level], list[Level]]:
        """The best trusted ``depth`` levels per side (empty while resyncing)."""
        return self.sync.book.top(depth, self.bid_floor, self.ask_ceiling)

    def metrics(self) -> tuple[float | None, float | None, dict[str, float]]:
        """Mid, spread and band metrics of the trusted book."""
        return book_metrics(self.sync.book, self.bands, self.bid_floor, self.ask_ceiling)

    def sample(self, now: int) -> bool:
        """Queue a snapshot of the live book taken at ``now`` (ns); False when not live.

        A Binance book with fewer trusted levels than ``snapshot_depth`` on a side starts being
        re-seeded beside the live one (at most once a minute).
        """
        if self.sync.state is not BookState.LIVE:
            return False
        if len(self.rows) >= self.max_rows:
            self.dropped += 1
            return False
        bids, asks, mid, spread, bands = book_snapshot(self.sync.book, self.snapshot_depth, self.bands,
                                                       self.bid_floor, self.ask_ceiling)
        self.short = ((len(bids) < self.snapshot_depth and self.bid_floor > -math.inf)
                      or (len(asks) < self.snapshot_depth and self.ask_ceiling < math.inf))
        band_values = [bands.get(name) for name in band_columns(self.bands)]  # null when a side is empty
        self.rows.append((
            now, self.ts_update, self.ts_recv, self.sync.book.update_id, mid, spread, *band_values,
            [p for p, _ in bids], [q for _, q in bids], [p for p, _ in asks], [q for _, q in asks],
        ))
        if self.wants_refresh(now):
            self.start_refresh(now)
        return True

    def take(self) -> Taken:
        """Cut the queued snapshots into a DataFrame."""
        if not self.rows:
            return Taken(None)
        rows, self.rows = self.rows, []
        return Taken(pl.DataFrame(rows, schema=book_snapshot_schema(self.bands), orient="row"))

    def take_copy(self) -> pl.DataFrame:
        """The queued snapshots as a DataFrame, leaving them queued."""
        return pl.DataFrame(self.rows, schema=book_snapshot_schema(self.bands), orient="row")


def _no_kline_request(first: int, last: int) -> RestRequest[list[KlineRow]]:
    raise NotImplementedError("this kline stream has no REST backfill")


@dataclass(slots=True, eq=False)
class KlineStream:
    """One instrument's venue klines: the open bar, closed bars for the store, bars to fetch."""

    venue: Venue
    market: Market
    spec: StreamSpec
    # The venue's REST request for closed bars with open times in [first, last] (ms).
    request: Callable[[int, int], RestRequest[list[KlineRow]]] = _no_kline_request
    interval_ms: int = 60_000
    max_rows: int = 100_000
    bars: int = 0  # kline messages received (a Bybit frame with two candles counts once)
    open_bar: KlineRow | None = None
    last_closed: int = -1  # open time (ms) of the newest closed bar taken or handed to backfill
    first_start: int = -1  # open time (ms) of the first bar seen since start, before any resume
    rows: list[KlineRow] = field(default_factory=list)
    backfilled: int = 0
    dropped: int = 0
    min_flush_interval: float = 0.0

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

    def on_bar(self, row: KlineRow, closed: bool) -> FetchKlines | None:
        """Take one bar as the venue published it; return the closed bars it shows were missed."""
        start = row.ts_event // NS_PER_MS
        iv = self.interval_ms
        missed = None
        if self.last_closed < 0:
            self.first_start = start
            self.last_closed = start - iv  # collection starts here; earlier bars are not ours to fill
        elif start - iv > self.last_closed:
            # Bars between the newest closed one we have and this one closed while we did not see
            # them (a disconnect across a bar boundary): fetch them over REST.
            missed = FetchKlines(self.spec.name, self.last_closed + iv, start - iv)
            self.last_closed = start - iv
        if closed:
            if start > self.last_closed:
                self._keep(row)
                self.last_closed = start
            if self.open_bar is not None and self.open_bar.ts_event <= row.ts_event:
                self.open_bar = None
        elif start > self.last_closed:
            self.open_bar = row
        return missed

    def resume(self, open_ms: int) -> FetchKlines | None:
        """Continue after the newest stored closed bar (a restart): the bars in between are fetched.

        The store may answer after bars have arrived; the missed ones then end before the first.
        """
        iv = self.interval_ms
        self.last_closed = max(self.last_closed, open_ms)  # stored already: never queued again
        if self.first_start < 0:
            return None  # the first bar shows what was missed
        first, last = open_ms + iv, self.first_start - iv
        self.first_start = -1
        return FetchKlines(self.spec.name, first, last) if first <= last else None

    def add_backfill(self, rows: Iterable[KlineRow], first: int, last: int) -> int:
        """Keep fetched closed bars whose open time (ms) is in ``[first, last]``; return how many."""
        kept = 0
        for row in rows:
            if first <= row.ts_event // NS_PER_MS <= last and self._keep(row):
                kept += 1
        self.backfilled += kept
        return kept

    def _keep(self, row: KlineRow) -> bool:
        if len(self.rows) >= self.max_rows:
            self.dropped += 1
            return False
        self.rows.append(row)
        return True

    def connection_lost(self, ts_recv: int) -> None:
        """The open bar is no longer followed; the next bar shows which closed bars were missed."""
        self.open_bar = None

    def take(self) -> Taken:
        """Cut the queued closed bars into a DataFrame."""
        if not self.rows:
            return Taken(None)
        rows, self.rows = self.rows, []
        return Taken(pl.DataFrame(rows, schema=KLINE_SCHEMA, orient="row").sort("ts_event"))


class KlineBackfill:
    """Fetch closed bars with open times in ``[first, last]`` (ms), :data:`KLINE_PAGE` per request.

    Bars the venue does not return are recorded as ``klines_missing``; the fetched ones join
    the stream's queue for the store.
    """

    def __init__(self, stream: KlineStream, first: int, last: int) -> None:
        self.stream = stream
        self.first, self.last = first, last
        self._next = first
        self._page_last = first
        self._gaps: list[Gap] = []

    def next_request(self) -> RestRequest[list[KlineRow]] | None:
        """The next page, or None when every page was asked for."""
        if self._next > self.last:
            return None
        self._page_last = min(self.last, self._next + (KLINE_PAGE - 1) * self.stream.interval_ms)
        return self.stream.request(self._next, self._page_last)

    def on_answer(self, value: Any, ts_recv: int) -> pl.DataFrame | None:
        """Keep the page's bars; note the ones the venue did not have."""
        iv = self.stream.interval_ms
        first, last = self._next, self._page_last
        rows: list[KlineRow] = [row._replace(ts_recv=ts_recv) for row in value]
        kept = self.stream.add_backfill(rows, first, last)
        expected = (last - first) // iv + 1
        if kept < expected:
            self._gaps.append(Gap(first * NS_PER_MS, (last + iv) * NS_PER_MS, "klines_missing", expected - kept))
        self._next = last + iv
        return None  # the bars wait in the stream's own queue

    def missing(self) -> list[Gap]:
        """Bars the venue did not return, and pages not fetched (a deadline, an error, shutdown)."""
        iv = self.stream.interval_ms
        rest = []
        if self._next <= self.last:
            rest.append(Gap(self._next * NS_PER_MS, (self.last + iv) * NS_PER_MS, "klines_missing",
                            (self.last - self._next) // iv + 1))
        return [*self._gaps, *rest]
