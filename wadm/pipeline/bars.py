"""The bar scheduler: ``bars_1m`` on every minute close, ``bars_1h`` on the hour, indicator snapshots.

It sees every trade frame the collectors queue for the store (a writer listener), so a minute
closes from memory a moment after it ends (``CLOSE_GRACE``), whatever the store does. Bars are
never wrong silently:

* **Late trades** (a REST backfill, a resumed stream) for a minute already closed mark it dirty;
  once the store holds them (nothing of that minute waits in the writer, no backfill of it is
  running) the minute is closed again from the stored trades, the CVD of the rest of its day is
  chained again, and the hours it touches are closed again. Closing again writes a new revision
  of each changed bar; readers keep the newest (:func:`wadm.analytics.aggregates.latest`), so a
  repeated close is harmless.
* **Gaps**: a bar overlapping a recorded trade gap (now or found later) is ``complete: false``;
  one closed while a backfill of its trades runs is incomplete until the backfill ends.
* **Restart**: minutes within raw-trade retention that have stored trades but no bar are closed
  from the store (catch-up), and so is the minute the process started in. On a first start
  (nothing stored) that minute is incomplete: it holds only the trades since the start.

Work runs on one thread of its own (polars releases the GIL): the event loop only swaps lists
and queues the results, so closing never stalls the receive path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import polars as pl

from wadm.analytics.aggregates import (
    STORED_BAR_SCHEMA,
    build_bars,
    chain_cvd,
    day_snapshot,
    hour_bars,
    latest,
    merge_bars,
)
from wadm.analytics.bars import NS_PER_DAY
from wadm.analytics.grid import Grid, default_row
from wadm.config import Settings
from wadm.errors import StoreError
from wadm.live import RECENT_TRADES_NS, BarsView, Series
from wadm.pipeline.collector import Collector
from wadm.pipeline.writer import Writer
from wadm.records import BARS_1H, BARS_1M, GAPS, INDICATORS, TRADES, BatchKey
from wadm.store.base import Store
from wadm.units import NS_PER_MIN, NS_PER_S
from wadm.venues.base import Gap, Instrument, TradeStream

__all__ = ["BarScheduler", "CLOSE_GRACE", "SeriesBars"]

log = logging.getLogger(__name__)

T = TypeVar("T")

NS_PER_HOUR = 60 * NS_PER_MIN
CLOSE_GRACE = 2 * NS_PER_S  # a minute closes this long after it ends (plus the flush interval)
STEP_S = 0.25
START_WAIT_S = 120.0  # how long the first close waits for the store to open (history, CVD base)
_VALUES = [c for c in STORED_BAR_SCHEMA if c != "revision"]


def _minute(ts: int) -> int:
    return ts - ts % NS_PER_MIN


@dataclass(eq=False)
class SeriesBars:
    """The bar state of one series (only the scheduler changes it; readers copy)."""

    series: Series
    streams: frozenset[str]  # its trade streams
    trade_streams: list[TradeStream]
    closed_until: int  # every minute before this (ns) is closed
    pending: list[pl.DataFrame] = field(default_factory=list)  # queued trade frames not closed yet
    bars: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=STORED_BAR_SCHEMA))
    dirty: set[int] = field(default_factory=set)  # closed minutes to close again
    gaps: list[tuple[int, int]] = field(default_factory=list)  # recorded trade gaps, ns
    row: Decimal | None = None
    row_source: str | None = None  # config or default
    last_price: float | None = None
    version: int = 0  # moves whenever a closed minute or a gap changes (readers cache by it)
    recent: pl.DataFrame | None = None  # trades of the closed minutes in [recent_from, closed_until)
    recent_from: int | None = None  # None until the first close

    def key(self, table: str) -> BatchKey:
        s = self.series
        return BatchKey(table, s.venue, s.market, s.symbol)


class BarScheduler:
    """Closes bars of every collected trade series. See the module docstring.

    Args:
        settings: footprint rows, retention, flush interval.
        store: where stored trades and bars are read from (catch-up, closing again).
        writer: where bars go; its listeners feed the scheduler.
        collectors: the collectors (trade streams, running backfills).
        instrument: the tick of a series as the venue listing gave it (None while unknown).
        clock: wall-clock ns.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        writer: Writer,
        collectors: Sequence[Collector],
        instrument: Callable[[Series], Instrument | None],
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.collectors = list(collectors)
        self.instrument = instrument
        self.clock = clock
        self.grace = CLOSE_GRACE + int(settings.flush_interval * NS_PER_S)
        self.started = clock()
        start = _minute(self.started)
        self.series: dict[BatchKey, SeriesBars] = {}
        for collector in self.collectors:
            for name, st in collector.streams.items():
                if not isinstance(st, TradeStream):
                    continue
                key = collector.keys[name]
                found = self.series.get(key)
                if found is None:
                    found = self.series[key] = SeriesBars(
                        Series(key.venue, key.market, key.symbol), frozenset({name}), [st], start)
                else:
                    found.streams |= {name}
                    found.trade_streams.append(st)
        self._revision = 0
        self.closes = 0
        self.recloses = 0
        self.failures = 0
        self.last_close_ns: int | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wadm-bars")
        writer.trade_listeners.append(self._on_trades)
        writer.gap_listeners.append(self._on_gaps)

    # -- listeners (on the loop, cheap) ------------------------------------------------------

    def _on_trades(self, key: BatchKey, frame: pl.DataFrame) -> None:
        st = self.series.get(key)
        if st is None or frame.height == 0:
            return
        st.pending.append(frame)
        first = frame["ts_event"].min()
        if isinstance(first, int) and first < st.closed_until:  # late trades: a backfill, a resume
            late = frame.filter(pl.col("ts_event") < st.closed_until)["ts_event"]
            st.dirty.update((late - late % NS_PER_MIN).unique().to_list())

    def _on_gaps(self, key: BatchKey, stream: str, gaps: Sequence[Gap]) -> None:
        st = self.series.get(key)
        if st is None or stream not in st.streams:
            return
        st.version += 1
        for gap in gaps:
            st.gaps.append((gap.start, gap.end))
            first = max(_minute(gap.start), st.closed_until - 2 * NS_PER_DAY)
            st.dirty.update(range(first, min(gap.end + 1, st.closed_until), NS_PER_MIN))

    # -- running -----------------------------------------------------------------------------

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _next_revision(self) -> int:
        self._revision = max(self._revision + 1, self.clock())
        return self._revision

    async def run(self) -> None:
        """Load what the store holds, then close bars forever."""
        await self.load()
        while True:
            await self.step()
            await asyncio.sleep(STEP_S)

    async def load(self) -> None:
        """Once the store is open (waiting at most START_WAIT_S): read recent bars, find minutes to catch up."""
        try:
            async with asyncio.timeout(START_WAIT_S):
                await self.writer.ready.wait()
        except TimeoutError:
            log.warning("The store did not open within %.0f s: bars start without stored history (CVD from 0)",
                        START_WAIT_S)
            for st in self.series.values():
                st.gaps.append((st.closed_until - 1, self.started))
            return
        for st in self.series.values():
            await self._load(st)

    async def close(self) -> None:
        """Release the worker thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def step(self) -> None:
        """Close the minutes that are due, then those waiting to be closed again."""
        now = self.clock()
        due = _minute(now - self.grace)
        closed_any = False
        for st in self.series.values():
            try:
                if due > st.closed_until:
                    await self._close(st, due)
                    closed_any = True
                if st.dirty:
                    await self._reclose(st, now)
            except StoreError as exc:
                self.failures += 1
                log.warning("Bars of %s wait for the store (%s)", st.key(BARS_1M), exc)
        if closed_any:
            self.last_close_ns = self.clock() - now
            await self._snapshots(due)

    # -- grids -------------------------------------------------------------------------------

    def grid(self, st: SeriesBars, price: float | None) -> Grid | None:
        """The footprint grid of a series: its tick and the configured or default row (None: tick unknown)."""
        inst = self.instrument(st.series)
        if inst is None:
            return None
        tick = Decimal(inst.tick_text)
        if st.row is not None and (st.row / tick) == (st.row / tick).to_integral_value():
            return Grid(inst.tick, float(st.row))
        configured = self.settings.footprint_row(st.series.symbol)
        if configured is not None:
            if (configured / tick) == (configured / tick).to_integral_value():
                st.row, st.row_source = configured, "config"
                return Grid(inst.tick, float(configured))
            log.error("FOOTPRINT_ROW for %s is %s, not a multiple of its tick %s on %s/%s; using the default row",
                      st.series.symbol, configured, inst.tick_text, st.series.venue, st.series.market)
        price = price if price is not None else st.last_price
        if price is None or price <= 0:
            return None
        st.row, st.row_source = default_row(inst.tick, price), "default"
        return Grid(inst.tick, float(st.row))

    def _lot(self, st: SeriesBars) -> float | None:
        inst = self.instrument(st.series)
        return None if inst is None else inst.lot

    # -- closing -----------------------------------------------------------------------------

    def _backfilling(self, st: SeriesBars, start: int, end: int) -> bool:
        return any(c.pending_windows(st.series.symbol, start, end) for c in self.collectors)

    async def _close(self, st: SeriesBars, until: int) -> None:
        """Close every minute from ``st.closed_until`` to ``until`` from the queued trades."""
        frames, st.pending = st.pending, []
        start = st.closed_until
        price = _last_price(frames)
        grid = self.grid(st, price)
        revision = self._next_revision()
        try:
            bars, rest, recent = await self._off_loop(_close_minutes, frames, start, until, grid, revision,
                                                      tuple(st.gaps), st.bars, self._lot(st), st.recent)
        except BaseException:
            st.pending = frames + st.pending
            raise
        st.pending = ([rest] if rest.height else []) + st.pending
        if st.recent_from is None:  # from now on every closed trade passes here
            st.recent_from = start
        st.recent = recent
        st.recent_from = max(st.recent_from, until - RECENT_TRADES_NS)
        st.closed_until = until
        st.version += 1
        horizon = _keep_from(until, self.settings.retention_raw_trades)
        st.gaps = [g for g in st.gaps if g[1] >= horizon]
        if price is not None:
            st.last_price = price
        if bars.height == 0:
            return
        running = [m for m in bars["ts_event"].to_list() if self._backfilling(st, m, m + NS_PER_MIN - 1)]
        if running:  # a backfill of these minutes is running: incomplete until it lands
            bars = bars.with_columns(complete=pl.col("complete") & ~pl.col("ts_event").is_in(running))
            st.dirty.update(running)
        st.bars = _keep(pl.concat([st.bars, bars]), until, self.settings.retention_raw_trades)
        self.writer.put(st.key(BARS_1M), bars, BARS_1M)
        self.closes += 1
        self._close_hours(st, {_hour(m) for m in bars["ts_event"].to_list()}, until, revision)

    def _close_hours(self, st: SeriesBars, hours: set[int], until: int, revision: int) -> None:
        """Write the hours among ``hours`` that have ended (and any ended since the last close)."""
        ended = {h for h in hours if h + NS_PER_HOUR <= until}
        if not ended:
            return
        lo = min(ended)
        minutes = st.bars.filter((pl.col("ts_event") >= lo) & (pl.col("ts_event") < max(ended) + NS_PER_HOUR))
        hourly = hour_bars(minutes, NS_PER_HOUR, revision=revision).filter(pl.col("ts_event").is_in(sorted(ended)))
        if hourly.height:
            self.writer.put(st.key(BARS_1H), hourly, BARS_1H)

    async def _reclose(self, st: SeriesBars, now: int) -> None:
        """Close again the dirty minutes whose trades the store now holds."""
        oldest = now - self.settings.retention_raw_trades * NS_PER_S + NS_PER_MIN
        expired = {m for m in st.dirty if m < oldest}
        st.dirty -= expired  # their trades are past retention: the bar stays as it was
        ready = sorted(
            m for m in st.dirty
            if m < st.closed_until
            and self.writer.behind(st.key(TRADES), m, m + NS_PER_MIN - 1, now, lag=0) is None
            and not self._backfilling(st, m, m + NS_PER_MIN - 1)
        )
        if not ready:
            return
        st.dirty -= set(ready)
        try:
            lo, hi = ready[0], ready[-1] + NS_PER_MIN - 1
            trades = await self.store.read(st.key(TRADES), lo, hi)
            stored_gaps = await self.store.read(st.key(GAPS), lo, hi)
        except StoreError:
            st.dirty.update(ready)
            raise
        windows = list(st.gaps)
        if stored_gaps.height:
            mine = stored_gaps.filter(pl.col("stream").is_in(list(st.streams)))
            windows += list(zip(mine["ts_event"].to_list(), mine["end"].to_list(), strict=True))
        grid = self.grid(st, _last_price([trades]))
        revision = self._next_revision()
        chained, changed = await self._off_loop(_reclose_minutes, trades, ready, grid, revision, windows, st.bars,
                                                self._lot(st))
        st.bars = _keep(chained, st.closed_until, self.settings.retention_raw_trades)
        if st.recent_from is not None:
            st.recent = await self._off_loop(_replace_minutes, st.recent, trades, ready, st.recent_from)
        st.version += 1
        self.recloses += 1
        if changed.height:
            self.writer.put(st.key(BARS_1M), changed, BARS_1M)
            self._close_hours(st, {_hour(m) for m in changed["ts_event"].to_list()}, st.closed_until, revision)

    # -- start -------------------------------------------------------------------------------

    async def _load(self, st: SeriesBars) -> None:
        """Read the bars of today (and of raw retention) and find minutes with trades but no bar."""
        now = self.clock()
        keep_from = _keep_from(now, self.settings.retention_raw_trades)
        try:
            stored = await self.store.read(st.key(BARS_1M), keep_from, now)
            hours = await self.store.read(st.key(BARS_1H), keep_from - keep_from % NS_PER_HOUR, now)
            oldest = now - self.settings.retention_raw_trades * NS_PER_S + NS_PER_MIN
            known = latest(stored)
            since = max(oldest, int(known["ts_event"][-1]) + NS_PER_MIN) if known.height else oldest
            trades = await self.store.read(st.key(TRADES), since, st.closed_until - 1)
            earlier = await self.store.latest(st.key(TRADES), before=self.started)
        except StoreError as exc:
            log.warning("Could not read stored bars of %s (%s); closing from now", st.key(BARS_1M), exc)
            st.gaps.append((st.closed_until - 1, self.started))
            return
        if earlier.height == 0:  # a first start: the minute we started in holds only what came after
            st.gaps.append((st.closed_until - 1, self.started))
        st.bars = merge_bars(known, st.bars)
        minutes = set()
        if trades.height:
            ts = trades.filter(pl.col("ts_event") >= since)["ts_event"]
            minutes = set((ts - ts % NS_PER_MIN).unique().to_list())
            st.last_price = float(trades["price"][-1])
        st.dirty.update(minutes | {st.closed_until})  # the minute we started in: stored trades before us
        # Hours whose minutes changed after the hour bar was written (the process stopped between).
        written = latest(hours).select("ts_event", "revision") if hours.height else None
        need: set[int] = set()
        for (key,), group in known.group_by(pl.col("ts_event") // NS_PER_HOUR * NS_PER_HOUR):
            hour = int(key)
            if hour + NS_PER_HOUR > st.closed_until:
                continue
            done = None if written is None else written.filter(pl.col("ts_event") == hour)["revision"]
            if done is None or done.is_empty() or int(done.max()) < int(group["revision"].max()):  # type: ignore[arg-type]
                need.add(hour)
        if need:
            self._close_hours(st, need, st.closed_until, self._next_revision())
        if minutes:
            log.info("Catching up %d minutes of %s with stored trades and no bar", len(minutes), st.key(BARS_1M))

    # -- snapshots ---------------------------------------------------------------------------

    async def _snapshots(self, ts: int) -> None:
        """Store one Volume Profile and Order Flow summary of the UTC day so far per series.

        The day is the last closed minute's: at 00:00 the day that just ended gets its full summary,
        rather than the new day an empty one.
        """
        day = (ts - 1) - (ts - 1) % NS_PER_DAY
        for st in self.series.values():
            if st.row is None:
                continue
            today = st.bars.filter(pl.col("ts_event") >= day)
            if today.height == 0:
                continue
            inst = self.instrument(st.series)
            tick = inst.tick if inst is not None else float(st.row)
            row = await self._off_loop(day_snapshot, today, tick, ts, day)
            self.writer.put(st.key(INDICATORS), row, INDICATORS)

    # -- readers -----------------------------------------------------------------------------

    def open_frames(self, series: Series) -> tuple[pl.DataFrame, ...]:
        """Trade frames of the minutes not closed yet (queued and still in the stream buffers), as
        they are: rows before ``closed_until`` (late ones) are left for the reader to drop."""
        st = self.series.get(BatchKey(TRADES, series.venue, series.market, series.symbol))
        if st is None:
            return ()
        frames = [f for f in st.pending if f.height]
        frames += [f for f in (s.peek() for s in st.trade_streams) if f is not None]
        return tuple(frames)

    def open_trades(self, series: Series) -> pl.DataFrame | None:
        """Trades of the minutes not closed yet (queued and still in the stream buffer); None if not here."""
        st = self.series.get(BatchKey(TRADES, series.venue, series.market, series.symbol))
        if st is None:
            return None
        return BarsView(st.closed_until, st.bars, self.open_frames(series), st.row, st.row_source).open_trades()

    def state(self, series: Series) -> SeriesBars | None:
        """The bar state of a series (read only)."""
        return self.series.get(BatchKey(TRADES, series.venue, series.market, series.symbol))


# -- work done off the loop -------------------------------------------------------------------


def _hour(ts: int) -> int:
    return ts - ts % NS_PER_HOUR


def _keep_from(now: int, retention_raw_s: int) -> int:
    """Bars kept in memory: today's (CVD, snapshots) and those raw retention may close again."""
    day = now - now % NS_PER_DAY
    return _hour(min(day, now - retention_raw_s * NS_PER_S - NS_PER_HOUR))


def _keep(bars: pl.DataFrame, now: int, retention_raw_s: int) -> pl.DataFrame:
    return bars.filter(pl.col("ts_event") >= _keep_from(now, retention_raw_s))


def _last_price(frames: Sequence[pl.DataFrame]) -> float | None:
    for frame in reversed(frames):
        if frame.height:
            return float(frame["price"][-1])
    return None


def _base(bars: pl.DataFrame, first: int) -> float:
    """The CVD before the bar at ``first``: the close of the last bar before it on the same day."""
    before = bars.filter((pl.col("ts_event") < first) & (pl.col("ts_event") >= first - first % NS_PER_DAY))
    return float(before["cvd"][-1]) if before.height else 0.0


def _close_minutes(frames: list[pl.DataFrame], start: int, until: int, grid: Grid | None, revision: int,
                   gaps: tuple[tuple[int, int], ...], closed: pl.DataFrame, lot: float | None,
                   recent: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    """Bars of ``[start, until)`` from queued frames, the trades left for later minutes, and the
    recent closed trades with those of the closed minutes added (late ones included)."""
    if not frames:
        return pl.DataFrame(schema=STORED_BAR_SCHEMA), pl.DataFrame(), _recent(recent, None, until)
    trades = pl.concat(frames, how="vertical_relaxed").sort("ts_event", maintain_order=True)
    if "id" in trades.columns:  # a trade can reach the store twice (live and over REST): one counts
        trades = trades.unique(subset="id", keep="first", maintain_order=True)
    ts = pl.col("ts_event")
    now = trades.filter((ts >= start) & (ts < until))
    bars = build_bars(now, NS_PER_MIN, grid=grid, revision=revision, gaps=gaps, lot=lot)
    if bars.height:
        bars = chain_cvd(bars, base=_base(closed, bars["ts_event"][0]))
    closed_trades = trades.filter(ts < until).drop("ts_recv", strict=False)  # readers need no receive time
    return bars, trades.filter(ts >= until), _recent(recent, closed_trades, until)


def _recent(recent: pl.DataFrame | None, closed: pl.DataFrame | None, until: int) -> pl.DataFrame | None:
    """The closed trades of the last RECENT_TRADES_NS before ``until``, in time order."""
    frames = [f for f in (recent, closed) if f is not None and f.height]
    if not frames:
        return recent if recent is not None else closed
    merged = pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else frames[0]
    kept = merged.filter(pl.col("ts_event") >= until - RECENT_TRADES_NS)
    if closed is not None and closed.height and recent is not None and recent.height \
            and int(closed["ts_event"][0]) < int(recent["ts_event"][-1]):
        kept = kept.sort("ts_event", maintain_order=True)  # late trades among them, maybe some twice
        if "id" in kept.columns:
            kept = kept.unique(subset="id", keep="first", maintain_order=True)
    return kept


def _replace_minutes(recent: pl.DataFrame | None, stored: pl.DataFrame, minutes: list[int], since: int
                     ) -> pl.DataFrame | None:
    """``recent`` with the trades of ``minutes`` replaced by the stored ones (minutes closed again)."""
    minute = pl.col("ts_event") - pl.col("ts_event") % NS_PER_MIN
    fresh = stored.filter(minute.is_in(minutes) & (pl.col("ts_event") >= since))
    if "id" in fresh.columns:
        fresh = fresh.unique(subset="id", keep="first", maintain_order=True)
    if recent is None or recent.height == 0:
        return fresh.drop("ts_recv", strict=False).sort("ts_event", maintain_order=True) if fresh.height else recent
    kept = recent.filter(~minute.is_in(minutes))
    return pl.concat([kept, fresh.select(kept.columns)], how="vertical_relaxed").sort("ts_event", maintain_order=True)


def _reclose_minutes(trades: pl.DataFrame, minutes: list[int], grid: Grid | None, revision: int,
                     gaps: list[tuple[int, int]], closed: pl.DataFrame, lot: float | None
                     ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The kept bars with ``minutes`` rebuilt from stored trades and the CVD chained again, and
    the bars that changed (stamped ``revision``)."""
    if trades.height:
        trades = trades.sort("ts_event", maintain_order=True).filter(
            (pl.col("ts_event") - pl.col("ts_event") % NS_PER_MIN).is_in(minutes))
        if "id" in trades.columns:
            trades = trades.unique(subset="id", keep="first", maintain_order=True)
    fresh = build_bars(trades, NS_PER_MIN, grid=grid, revision=revision, gaps=gaps, lot=lot)
    merged = merge_bars(closed, fresh) if closed.height else fresh
    if merged.height == 0:
        return merged, merged
    first = merged["ts_event"][0]
    base = float(merged["cvd_open"][0]) if first % NS_PER_DAY else 0.0
    chained = chain_cvd(merged, base=base)
    digest = pl.struct(_VALUES).hash().alias("digest")
    before = closed.select("ts_event", digest) if closed.height else pl.DataFrame(
        schema={"ts_event": pl.Int64(), "digest": pl.UInt64()})
    changed = chained.with_columns(digest).join(before, on=["ts_event", "digest"], how="anti").drop("digest")
    stamped = changed.with_columns(revision=pl.lit(revision, pl.Int64))
    chained = merge_bars(chained.filter(~pl.col("ts_event").is_in(stamped["ts_event"].implode())), stamped)
    return chained, stamped
