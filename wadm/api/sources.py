"""What analytics answers are computed from: a symbol's sources, the window, the resolution, the data.

* **Sources**: with ``exchange``/``market`` omitted, every market the symbol is collected on;
  answers combine them on one row grid and list them.
* **Resolution**: ``trades`` while the window lies within raw-trade retention, else ``1m`` within
  1-minute retention, else ``1h`` (``auto``); asking for a finer one than the window allows is a
  400 that says which ones can answer.
* **Data**: stored bars (newest revision of each) plus what the live view has not stored yet:
  closed bars in memory and the open minutes built from their trades, so "now" waits for no
  flush. Stored trades plus the trades not closed yet, without duplicates.
* **Cache**: decoded hours of ``bars_1m`` and days of ``bars_1h`` that can no longer change (older
  than raw retention, which is how far back late trades can close a bar again) are kept, so a
  long window reads from the store only its newest part.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import polars as pl

from wadm.analytics.aggregates import (
    STORED_BAR_SCHEMA,
    build_bars,
    chain_cvd,
    common_row,
    hour_bars,
    latest,
    merge_bars,
    qty_decimals,
    row_sizes,
)
from wadm.analytics.bars import NS_PER_DAY
from wadm.analytics.grid import Grid, default_row
from wadm.api.params import parse_choice, parse_exchange, parse_market, parse_range, parse_symbol
from wadm.api.query import Query
from wadm.config import Settings
from wadm.errors import QueryError
from wadm.live import BarsView, LiveView, Series
from wadm.records import BARS_1H, BARS_1M, GAPS, TRADES, BatchKey
from wadm.store.base import Store
from wadm.units import NS_PER_MIN, NS_PER_MS, NS_PER_S

__all__ = [
    "BAR_NS",
    "BarCache",
    "Offload",
    "Reader",
    "MAX_PROFILE_ROWS",
    "NS_PER_HOUR",
    "RESOLUTIONS",
    "Scope",
    "bar_grid",
    "choose_resolution",
    "describe",
    "parse_scope",
    "qty_places",
    "resolve_sources",
    "tick_of",
    "trade_grid",
]

NS_PER_HOUR = 60 * NS_PER_MIN
RESOLUTIONS = ("auto", "trades", "1m", "1h")
BAR_NS = {"1m": NS_PER_MIN, "1h": NS_PER_HOUR}
MAX_PROFILE_ROWS = 20_000  # rows from a window's low to its high at the asked row size
CACHE_CHUNKS = 4096
LOADED_REUSE_NS = 1_000_000_000  # bars loaded for a window ending now serve later requests this long (ns)
# The open minutes' bars are shared as long (ns): what a request reads of them is no older than
# the loaded bars it may be given instead, and an analysis slowed down (by the minute's close,
# say) does not build them again halfway through.
OPEN_REUSE_NS = LOADED_REUSE_NS
OPEN_REVISION = 2**62  # the revision of bars built from the trades of minutes not closed yet
STABLE_REUSE_NS = 600 * NS_PER_S  # and their settled part this long: only the rest is loaded again
_CHUNK = {BARS_1M: NS_PER_HOUR, BARS_1H: NS_PER_DAY}


@dataclass(frozen=True, slots=True)
class Scope:
    """One analytics request's symbol, sources and window (ns)."""

    symbol: str
    sources: tuple[Series, ...]
    start: int
    end: int
    now: int


def resolve_sources(settings: Settings, q: Query, symbol: str) -> tuple[str, tuple[Series, ...]]:
    """Resolve ``{symbol}``, ``exchange`` and ``market`` into every market they name.

    Raises:
        QueryError: a bad parameter (400) or a symbol not collected there (404).
    """
    venue = parse_exchange(q.get("exchange"))
    market = parse_market(q.get("market"))
    sym = parse_symbol(symbol)
    sources = tuple(
        Series(t.venue, t.market, sym)
        for t in settings.targets
        if sym in t.symbols and (venue is None or t.venue is venue) and (market is None or t.market is market)
    )
    if not sources:
        where = "/".join(str(x) for x in (venue, market) if x is not None)
        raise QueryError(None, f"symbol {sym} is not collected{' on ' + where if where else ''}; "
                               "see /api/v1/symbols", status=404, code="not_found")
    return sym, sources


def parse_scope(settings: Settings, q: Query, symbol: str, *, default_span: int) -> Scope:
    """Resolve ``{symbol}``, ``exchange``, ``market`` and ``window`` or ``start``/``end``.

    Raises:
        QueryError: a bad parameter (400) or a symbol not collected there (404).
    """
    sym, sources = resolve_sources(settings, q, symbol)
    now = time.time_ns()
    start, end = parse_range(q.get("start"), q.get("end"), q.get("window"), now=now, default_span=default_span)
    return Scope(sym, sources, start, end, now)


def describe(scope: Scope, resolution: str, gaps: list[dict[str, object]], complete: bool) -> dict[str, object]:
    """The head every analytics answer starts with (API.md: sources, window, resolution, gaps)."""
    head: dict[str, object] = {}
    if len(scope.sources) == 1:
        head |= {"exchange": str(scope.sources[0].venue), "market": str(scope.sources[0].market)}
    return head | {
        "sources": [{"exchange": str(s.venue), "market": str(s.market)} for s in scope.sources],
        "symbol": scope.symbol,
        "start": scope.start // NS_PER_MS,
        "end": scope.end // NS_PER_MS,
        "resolution": resolution,
        "data_complete": complete and not gaps,
        "gaps": gaps,
    }


def choose_resolution(raw: str | None, scope: Scope, settings: Settings, *, allowed: Sequence[str] = RESOLUTIONS
                      ) -> str:
    """The finest data that covers the window (``auto``), or the one asked for if it can.

    Raises:
        QueryError: an unknown resolution, or one whose retention does not reach the window's start.
    """
    asked = parse_choice("resolution", raw, allowed, "auto")
    reach = {
        "trades": scope.now - settings.retention_raw_trades * NS_PER_S,
        "1m": scope.now - settings.retention_aggregates_1m * NS_PER_S,
    }
    usable = [r for r in ("trades", "1m") if r in allowed and scope.start >= reach[r]] + ["1h"]
    if asked == "auto":
        return usable[0]
    if asked not in usable:
        kept = {"trades": f"raw trades are kept RETENTION_RAW_TRADES={settings.retention_raw_trades} s",
                "1m": f"1-minute bars are kept RETENTION_AGGREGATES_1M={settings.retention_aggregates_1m} s"}[asked]
        ago = (scope.now - scope.start) // NS_PER_S
        raise QueryError("resolution", f"resolution {asked} cannot answer a window that starts {ago} s ago: {kept}; "
                                       f"use one of {', '.join(['auto', *usable])}")
    return asked


# -- reading ---------------------------------------------------------------------------------

Offload = Callable[..., Awaitable[Any]]  # runs a function on a worker thread (Work.run)


class BarCache:
    """Decoded stored bars by (table, series, chunk), for chunks older than any late trade can reach."""

    def __init__(self, settings: Settings, *, chunks: int = CACHE_CHUNKS) -> None:
        self.settings = settings
        self.chunks = chunks
        self.hits = 0
        self.misses = 0
        self._frames: OrderedDict[tuple[str, Series, int], pl.DataFrame] = OrderedDict()
        self.hours: dict[Series, HourMemo] = {}  # the recent hours merged from minutes, per series
        # the bars of the open minutes' trades: (closed_until, made at, bars), per series
        self.open: dict[Series, tuple[int, int, pl.DataFrame]] = {}
        # builds of those under way: (closed_until, started at, (their bars,) to come, or None if the build failed)
        self.open_pending: dict[Series, tuple[int, int, asyncio.Future[tuple[pl.DataFrame | None] | None]]] = {}
        # bars loaded for a window ending now: (from, made at, bars), per series and resolution
        self.loaded: dict[tuple[Series, str], tuple[int, int, pl.DataFrame]] = {}
        # loads under way: (from, started at, their bars to come)
        self.pending: dict[tuple[Series, str], tuple[int, int, asyncio.Future[pl.DataFrame | None]]] = {}
        # the stored gaps of each series: (read at, the table to come, or None if the read failed)
        self._gaps: dict[Series, tuple[int, asyncio.Future[pl.DataFrame | None]]] = {}

    def settled_before(self, now: int) -> int:
        """Bars starting before this (ns) are final: raw retention plus an hour of margin."""
        return now - (self.settings.retention_raw_trades + 3600) * NS_PER_S

    async def read(self, store: Store, off: Offload, table: str, series: Series, start: int, end: int, now: int
                   ) -> pl.DataFrame:
        """The newest revision of the stored bars of ``table`` starting in ``[start, end]``."""
        step = _CHUNK[table]
        chunk = start - start % step
        settled = self.settled_before(now)
        parts: list[pl.DataFrame] = []
        while chunk + step <= settled and chunk <= end:
            found = self._frames.get((table, series, chunk))
            if found is None:
                break
            self._frames.move_to_end((table, series, chunk))
            self.hits += 1
            parts.append(found)
            chunk += step
        if chunk <= end:
            self.misses += 1
            key = BatchKey(table, series.venue, series.market, series.symbol)
            stored = await store.read(key, chunk, end)
            keep = min(settled, end + 1) // step * step  # whole chunks that will not change
            rest, chunks = await off(_split, stored, chunk, keep, step)
            parts.append(rest)
            for first, frame in chunks:
                self._put((table, series, first), frame)
        merged: pl.DataFrame = await off(_merge_in, parts, start, end)
        return merged

    async def gaps(self, store: Store, series: Series) -> pl.DataFrame:
        """The stored gaps of ``series``, read once per LOADED_REUSE_NS and shared meanwhile: each
        request of an analysis lists the gaps of every source (the Wyckoff context's eight
        requests read a four-market symbol's gaps 28 times), and they seldom change."""
        now = time.time_ns()
        shared = self._gaps.get(series)
        if shared is not None and 0 <= now - shared[0] < LOADED_REUSE_NS:
            frame = await asyncio.shield(shared[1])
            if frame is not None:
                return frame
        mine = (now, asyncio.get_running_loop().create_future())
        self._gaps[series] = mine
        read: pl.DataFrame | None = None
        try:
            read = await store.read(BatchKey(GAPS, series.venue, series.market, series.symbol), 0, 2**62)
        finally:
            mine[1].set_result(read)  # None: the read failed, the waiters read for themselves
            if read is None and self._gaps.get(series) is mine:
                del self._gaps[series]
        return read

    def _put(self, key: tuple[str, Series, int], frame: pl.DataFrame) -> None:
        self._frames[key] = frame
        self._frames.move_to_end(key)
        while len(self._frames) > self.chunks:
            self._frames.popitem(last=False)


def _split(stored: pl.DataFrame, first: int, keep: int, step: int
           ) -> tuple[pl.DataFrame, list[tuple[int, pl.DataFrame]]]:
    """The newest revisions from ``first`` on, and the whole chunks before ``keep`` to cache."""
    rest = latest(stored).filter(pl.col("ts_event") >= first)
    bucket = pl.col("ts_event") - pl.col("ts_event") % step
    return rest, [(c, rest.filter(bucket == c)) for c in range(first, keep, step)]


def _merge_in(parts: list[pl.DataFrame], start: int, end: int) -> pl.DataFrame:
    # PERF: the parts are whole chunks and the rest after them, each one revision a bar and sorted:
    # appending them is their merge (sorting bars with footprints again cost most of a cached read).
    present = [p for p in parts if p.height]
    if not present:
        return pl.DataFrame(schema=STORED_BAR_SCHEMA)
    merged = present[0] if len(present) == 1 else pl.concat(present)
    return merged.filter((pl.col("ts_event") >= start) & (pl.col("ts_event") <= end))


def _join_at(head: pl.DataFrame, tail: pl.DataFrame, lo: int, cut: int) -> pl.DataFrame:
    """Settled bars of ``head`` from ``lo`` up to ``cut``, then ``tail`` (which starts at ``cut``)."""
    kept = head.filter((pl.col("ts_event") >= lo) & (pl.col("ts_event") < cut))
    return pl.concat([kept, tail.filter(pl.col("ts_event") >= cut)]) if tail.height else kept


def _merge_tail(base: pl.DataFrame, newer: pl.DataFrame) -> pl.DataFrame:
    """``merge_bars(base, newer)`` for a ``base`` already merged (sorted, one revision a bar): only
    the part that ``newer`` reaches is merged again."""
    if newer.height and base.height:
        # Bars the base holds at the same revision already (the store has most of what memory has).
        newer = newer.join(base.select("ts_event", "revision"), on=["ts_event", "revision"], how="anti")
    if newer.height == 0:
        return base
    if base.height == 0:
        return merge_bars(newer)
    cut = int(newer["ts_event"].min())  # type: ignore[arg-type]
    return pl.concat([base.filter(pl.col("ts_event") < cut),
                      merge_bars(base.filter(pl.col("ts_event") >= cut), newer)])


def _shares(made: int, now: int, end: int, reuse: int) -> bool:
    """Whether bars built for a window ending at ``made`` answer a request made at ``now`` for a
    window ending at ``end``: built less than ``reuse`` before, or after it when the window ends
    now (the requests of one analysis are parsed in one order and reach the build in another)."""
    if end >= now:
        return abs(now - made) < reuse
    return end >= made and now - made < reuse


def _within(bars: pl.DataFrame, lo: int, end: int, made: int, step: int) -> pl.DataFrame:
    """Shared bars from ``lo`` on; and up to ``end`` if they were built for a later end that can
    reach a bar starting after it."""
    if made <= end or end >= made - made % step:
        return bars.filter(pl.col("ts_event") >= lo)
    return bars.filter((pl.col("ts_event") >= lo) & (pl.col("ts_event") <= end))


def _open_bars(view: BarsView, end: int, grid: Grid | None, lot: float | None) -> pl.DataFrame | None:
    """The bars of the trades of the minutes not closed yet, up to ``end`` (None: no such trades)."""
    open_trades = view.open_trades()
    if open_trades is None or open_trades.height == 0:
        return None
    return build_bars(open_trades.filter(pl.col("ts_event") <= end), NS_PER_MIN, grid=grid, revision=OPEN_REVISION,
                      lot=lot)


def _minutes(stored: pl.DataFrame, view: BarsView | None, lo: int, end: int, bars: pl.DataFrame | None
             ) -> pl.DataFrame:
    """Stored minutes, the closed ones in memory, and ``bars``, those of the minutes not closed yet."""
    if view is None:
        return stored
    closed = _merge_tail(stored, view.bars.filter((pl.col("ts_event") >= lo) & (pl.col("ts_event") <= end)))
    if bars is None or bars.height == 0:
        return closed
    first = int(bars["ts_event"][0])
    before = closed.filter((pl.col("ts_event") < first) & (pl.col("ts_event") >= first - first % NS_PER_DAY))
    opened = chain_cvd(bars, base=float(before["cvd"][-1]) if before.height else 0.0)
    return _merge_tail(closed, opened.filter(pl.col("ts_event") >= lo))


HourMemo = dict[int, tuple[tuple[int, int, int, float, int], pl.DataFrame]]  # hour -> (its minutes' mark, its bar)


def _hours(stored: pl.DataFrame, minutes: pl.DataFrame, memo: HourMemo) -> tuple[pl.DataFrame, HourMemo]:
    """Stored hours and the hours since then merged from their minutes; an hour whose minutes are
    the ones it was merged from before (same count, revisions, volume and trades) is reused."""
    if minutes.height == 0:
        return stored, {}
    parts, fresh = [], {}
    for (hour,), group in minutes.group_by(pl.col("ts_event") // NS_PER_HOUR * NS_PER_HOUR, maintain_order=True):
        h = int(hour)
        mark = (group.height, int(group["revision"].max()), int(group["revision"].min()),  # type: ignore[arg-type]
                float(group["volume"].sum()), int(group["trades"].sum()))
        found = memo.get(h)
        if found is None or found[0] != mark:
            found = (mark, hour_bars(group, NS_PER_HOUR, revision=OPEN_REVISION))
        fresh[h] = found
        parts.append(found[1])
    return _merge_tail(stored, pl.concat(parts)), fresh


_TRADE_COLUMNS = ("ts_event", "id", "price", "qty", "side")


def _trades(stored: pl.DataFrame, view: BarsView | None, start: int, end: int) -> pl.DataFrame:
    frames = [f for f in (stored, None if view is None else view.open_trades()) if f is not None and f.height]
    if not frames:
        return pl.DataFrame(schema={"ts_event": pl.Int64(), "id": pl.Int64(), "price": pl.Float64(),
                                    "qty": pl.Float64(), "side": pl.Int8()})
    trades = pl.concat([f.select(_TRADE_COLUMNS) for f in frames], how="vertical_relaxed")
    trades = trades.filter((pl.col("ts_event") >= start) & (pl.col("ts_event") <= end))
    # Trades queued for the store can be there already: the venue's id tells them apart.
    return trades.unique(subset="id", keep="first", maintain_order=True).sort("ts_event", maintain_order=True)


@dataclass(frozen=True, slots=True)
class Reader:
    """Reads one request's data: the store, the live view, the cache; polars work goes to ``off``."""

    store: Store
    live: LiveView
    cache: BarCache
    off: Offload

    async def bars(self, series: Series, resolution: str, start: int, end: int, now: int) -> pl.DataFrame:
        """Bars of one series at ``1m`` or ``1h`` that start in ``[floor(start), end]``, the open ones included.

        Minutes: stored ``bars_1m``, the closed bars the live view has in memory, and bars built
        from the trades of the minutes not closed yet. Hours: stored ``bars_1h`` for hours that are
        closed, and the hours since then merged from their minutes (the scheduler writes an hour a
        moment after it ends).
        """
        step = BAR_NS[resolution]
        lo = start - start % step
        # The requests of one analysis (the MCP server's Wyckoff context makes eight at once) read
        # the same bars: what one loaded for a window ending now serves the others for a moment.
        # A load of the same bars already under way (requests sent at once) is waited for, not repeated.
        key = (series, resolution)
        loaded = self.cache.loaded.get(key)
        if loaded is not None and loaded[0] <= lo and _shares(loaded[1], now, end, LOADED_REUSE_NS):
            shared: pl.DataFrame = await self.off(_within, loaded[2], lo, end, loaded[1], step)
            return shared
        pending = self.cache.pending.get(key)
        if pending is not None and pending[0] <= lo and _shares(pending[1], now, end, LOADED_REUSE_NS):
            awaited = await asyncio.shield(pending[2])
            if awaited is not None:
                waited: pl.DataFrame = await self.off(_within, awaited, lo, end, pending[1], step)
                return waited
        mine: tuple[int, int, asyncio.Future[pl.DataFrame | None]] | None = None
        if end >= now and (pending is None or lo < pending[0]):
            mine = (lo, now, asyncio.get_running_loop().create_future())
            self.cache.pending[key] = mine
        bars: pl.DataFrame | None = None
        try:
            bars = await self._refresh(series, resolution, lo, end, now, loaded)
        finally:
            if mine is not None:
                mine[2].set_result(bars)  # None when the load failed: the waiters load for themselves
                if self.cache.pending.get(key) is mine:
                    del self.cache.pending[key]
        if end >= now and (loaded is None or lo <= loaded[0] or now - loaded[1] >= LOADED_REUSE_NS):
            self.cache.loaded[key] = (lo, now, bars)
        return bars

    async def _refresh(self, series: Series, resolution: str, lo: int, end: int, now: int,
                       loaded: tuple[int, int, pl.DataFrame] | None) -> pl.DataFrame:
        """Load the bars; when an earlier load (of a window ending then) covers ``lo``, keep the part
        of it that had settled by then and load only what could still change."""
        if loaded is not None and end >= now and loaded[0] <= lo and 0 <= now - loaded[1] < STABLE_REUSE_NS:
            step = BAR_NS[resolution]
            cut = self.cache.settled_before(loaded[1])
            cut -= cut % step
            if cut > lo:
                tail = await self._load(series, resolution, cut, end, now)
                joined: pl.DataFrame = await self.off(_join_at, loaded[2], tail, lo, cut)
                return joined
        return await self._load(series, resolution, lo, end, now)

    async def _load(self, series: Series, resolution: str, lo: int, end: int, now: int) -> pl.DataFrame:
        view = self.live.bars(series)  # read on the loop: the scheduler's state is only copied here
        if resolution == "1m":
            stored = await self.cache.read(self.store, self.off, BARS_1M, series, lo, end, now)
            inst = self.live.instrument(series)
            grid = None
            if view is not None and view.row is not None and inst is not None:
                grid = Grid(inst.tick, float(view.row))
            built = None if view is None else await self._open(series, view, grid,
                                                                None if inst is None else inst.lot, end, now)
            minutes: pl.DataFrame = await self.off(_minutes, stored, view, lo, end, built)
            return minutes
        mark = view.closed_until if view is not None else now
        recent = max(lo, mark - mark % NS_PER_HOUR - NS_PER_HOUR)  # hours the scheduler may not have written yet
        stored = await self.cache.read(self.store, self.off, BARS_1H, series, lo, recent - 1, now) \
            if recent > lo else pl.DataFrame(schema=STORED_BAR_SCHEMA)
        minutes = await self.bars(series, "1m", recent, end, now)
        hours, memo = await self.off(_hours, stored, minutes, self.cache.hours.get(series, {}))
        self.cache.hours[series] = memo
        return hours  # type: ignore[no-any-return]

    async def _open(self, series: Series, view: BarsView, grid: Grid | None, lot: float | None, end: int, now: int
                    ) -> pl.DataFrame | None:
        """The open minutes' bars, built from their trades once per OPEN_REUSE_NS at most and shared
        meanwhile (as order-flow/current shares its answers): a multi-call client such as the MCP
        server's Wyckoff context reads them a dozen times in a few hundred ms, several at once."""
        memo = self.cache.open.get(series)
        if memo is not None and memo[0] == view.closed_until and _shares(memo[1], now, end, OPEN_REUSE_NS):
            return await self._upto(memo[2], memo[1], end)
        if end < now:
            built: pl.DataFrame | None = await self.off(_open_bars, view, end, grid, lot)
            return built
        pending = self.cache.open_pending.get(series)
        if pending is not None and pending[0] == view.closed_until and _shares(pending[1], now, end, OPEN_REUSE_NS):
            awaited = await asyncio.shield(pending[2])
            if awaited is not None:
                return await self._upto(awaited[0], pending[1], end)
        mine: tuple[int, int, asyncio.Future[tuple[pl.DataFrame | None] | None]] = (
            view.closed_until, now, asyncio.get_running_loop().create_future())
        self.cache.open_pending[series] = mine
        made: tuple[pl.DataFrame | None] | None = None  # None: the build failed, the waiters build for themselves
        try:
            made = (await self.off(_open_bars, view, end, grid, lot),)
        finally:
            mine[2].set_result(made)
            if self.cache.open_pending.get(series) is mine:
                del self.cache.open_pending[series]
        if made[0] is not None:
            self.cache.open[series] = (view.closed_until, now, made[0])
        return made[0]

    async def _upto(self, bars: pl.DataFrame | None, made: int, end: int) -> pl.DataFrame | None:
        """Shared open bars for a window ending at ``end``: a build made after it can hold a minute
        that starts later (a request's ``now`` is taken when it is parsed, a moment before)."""
        if bars is None or made <= end or end >= made - made % NS_PER_MIN:
            return bars
        kept: pl.DataFrame = await self.off(_within, bars, 0, end, made, NS_PER_MIN)
        return kept

    async def trades(self, series: Series, start: int, end: int) -> pl.DataFrame:
        """Trades of one series in ``[start, end]``: stored ones and those the live view has not closed yet."""
        stored = await self.store.read(BatchKey(TRADES, series.venue, series.market, series.symbol), start, end)
        view = self.live.bars(series)
        trades: pl.DataFrame = await self.off(_trades, stored, view, start, end)
        return trades

    async def grid_of(self, series: Series, now: int) -> tuple[float | None, Decimal | None]:
        """A series' tick and footprint row: the live ones, else those recorded with its newest stored bar."""
        inst = self.live.instrument(series)
        view = self.live.bars(series)
        tick = None if inst is None else inst.tick
        row = None if view is None else view.row
        if tick is None or row is None:
            recent = await self.bars(series, "1m", now - 2 * NS_PER_HOUR, now, now)
            if tick is None:
                tick = tick_of(self.live, series, recent)
            rows = recent["row"].drop_nulls()
            if row is None and rows.len():
                row = Decimal(repr(float(rows[-1]))).normalize()
        return tick, row


def qty_places(live: LiveView, sources: Sequence[Series], data: Sequence[pl.DataFrame]) -> int:
    """Decimals that quantities of an answer are rounded to: the finest lot among its sources."""
    places = []
    for series, frame in zip(sources, data, strict=True):
        inst = live.instrument(series)
        lot = inst.lot if inst is not None else None
        if lot is None and "lot" in frame.columns and frame["lot"].drop_nulls().len():
            lot = float(frame["lot"].drop_nulls()[-1])
        places.append(qty_decimals(lot))
    return max(places, default=qty_decimals(None))


def tick_of(live: LiveView, series: Series, bars: pl.DataFrame | None = None) -> float | None:
    """The series' tick: from the live listing, else from the newest stored bar that recorded it."""
    inst = live.instrument(series)
    if inst is not None:
        return inst.tick
    if bars is not None and bars.height:
        ticks = bars["tick"].drop_nulls()
        if ticks.len():
            return float(ticks[-1])
    return None


# -- grids -----------------------------------------------------------------------------------


def _examples(base: Decimal) -> str:
    return ", ".join(format((base * k).normalize(), "f") for k in (1, 2, 5, 10))


def bar_grid(bars: Sequence[pl.DataFrame], row_size: Decimal | None, resolution: str) -> Grid | None:
    """The grid of an answer from stored footprints: their common row, or a multiple of it.

    Returns None when no bar has a footprint (nothing to bin).

    Raises:
        QueryError: ``row_size`` is not a multiple of the footprints' common row.
    """
    rows = sorted({r for frame in bars for r in row_sizes(frame)})
    base = common_row(rows)
    if base is None:
        return None
    row = base if row_size is None else row_size
    if (row / base) != (row / base).to_integral_value():
        raise QueryError("row_size", f"row_size {format(row_size, 'f')} cannot be given from the stored "
                                     f"{resolution} footprints of this window, whose rows are "
                                     f"{', '.join(format(r, 'f') for r in rows)}: use a multiple of "
                                     f"{format(base, 'f')}, e.g. {_examples(base)}")
    ticks = [float(t) for frame in bars for t in frame["tick"].drop_nulls().unique().to_list()]
    tick = min(ticks) if ticks else float(base)
    return Grid(tick, float(row))


def trade_grid(ticks: Sequence[float], rows: Sequence[Decimal | None], price: float | None,
               row_size: Decimal | None) -> Grid | None:
    """The grid of an answer from raw trades: ``row_size``, or the sources' bar row, on every tick.

    Returns None when no tick is known.

    Raises:
        QueryError: ``row_size`` is not a multiple of every source's tick.
    """
    if not ticks:
        return None
    step = common_row([Decimal(repr(t)) for t in ticks])
    assert step is not None
    if row_size is not None:
        if (row_size / step) != (row_size / step).to_integral_value():
            raise QueryError("row_size", f"row_size {format(row_size, 'f')} is not a multiple of the tick "
                                         f"{format(step, 'f')}: use e.g. {_examples(step)}")
        return Grid(min(ticks), float(row_size))
    known = [r for r in rows if r is not None]
    if not known and price is not None:
        known = [default_row(max(ticks), price)]
    row = common_row([*known, step]) if known else step
    assert row is not None
    return Grid(min(ticks), float(row))


def check_rows(low: float | None, high: float | None, grid: Grid) -> None:
    """Refuse a row so fine that the window's price range would span more than MAX_PROFILE_ROWS rows."""
    if low is None or high is None:
        return
    rows = (high - low) / grid.row + 1
    if rows > MAX_PROFILE_ROWS:
        least = Decimal(repr((high - low) / (MAX_PROFILE_ROWS - 1)))
        raise QueryError("row_size", f"row_size {grid.row:g} would give {int(rows)} rows between {low:g} and "
                                     f"{high:g}; at most {MAX_PROFILE_ROWS}: use a row_size of at least "
                                     f"{float(least):.6g}")
