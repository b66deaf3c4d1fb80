"""The sink: columnar batches and gaps, queued (bounded) and written to the store in order.

Collectors cut their stream buffers into DataFrames and :meth:`Writer.put` them here; the
receive path never waits on the store. Each frame is encoded once into a
:class:`~wadm.store.codec.Batch` and queued; the ``drain`` loop writes the queue in order, many
batches per store call, and retries a failing store with backoff. Retries are not drops.

With a :class:`~wadm.store.spool.Spool` (the default), a failed store write or a queue past its
bound moves the queue to the spool on disk, and batches keep going there until it is written
empty: the order is the memory queue (only ever older than the spool) and then the spool. Past
the spool's bound its oldest batches are dropped, counted, logged as an ERROR and recorded as
``spool_full`` gaps. Without a spool, a queue past its bound drops its oldest trade or book
batch, recorded as a ``store_backlog`` gap of its stream.

When the spool cannot be written (a full or failing disk), batches stay in memory, bounded as
without a spool, and the spool is tried again every :data:`SPOOL_RETRY_S`. Those that come while
the spool still holds batches wait behind it (``_behind``), so the order stays as delivered.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl

from wadm.errors import StoreError
from wadm.records import BARS_1H, BARS_1M, GAP_SCHEMA, GAPS, INDICATORS, KLINES, TRADES, BatchKey
from wadm.store.base import Store
from wadm.store.codec import Batch, decode_frame, encode_batch
from wadm.store.spool import Spool, SpoolRecord, SpoolSummary, SpoolWriteError
from wadm.venues.base import Gap

__all__ = ["Histogram", "Writer", "WriterStats"]

log = logging.getLogger(__name__)

# One store call writes at most this much of the queue (one transaction / one bulk insert).
MAX_GROUP_BATCHES = 256
MAX_GROUP_ROWS = 1_000_000
SPILL_ROWS = 100_000  # with a spool, a queue (of trades and books) past this goes to disk: a slow store costs no memory
MAX_SPOOL_GROUP = 64  # batches read back from the spool for one store call (the read runs on the loop)
SPOOL_RETRY_S = 5.0  # after an append to the spool failed, batches stay in memory this long before it is tried again
_KEPT = (GAPS, KLINES, BARS_1M, BARS_1H, INDICATORS)  # small tables never dropped for a full queue
ROW_BUCKETS = (10.0, 100.0, 1000.0, 5000.0, 10_000.0, 20_000.0, 50_000.0, 100_000.0)
SECOND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Histogram:
    """Cumulative bucket counts of observations, read by ``/metrics`` at scrape time."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, then +Inf; not cumulative
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


@dataclass
class WriterStats:
    """Counters read by health and metrics."""

    batches: int = 0
    rows: int = 0
    store_errors: int = 0
    dropped_rows: Counter[str] = field(default_factory=Counter)
    gaps: Counter[str] = field(default_factory=Counter)  # gaps recorded, by stream name
    flush_seconds: float = 0.0  # total time spent in store writes
    last_write: float | None = None  # wall clock seconds
    last_error: str | None = None
    store_ok: bool = True
    spool_errors: int = 0  # appends to the spool that failed (disk full, gone)
    latency: dict[BatchKey, tuple[float, float, float]] = field(default_factory=dict)  # p50, p99, max seconds
    flush_rows: dict[str, Histogram] = field(default_factory=dict)  # rows per written batch, by table
    flush_durations: dict[str, Histogram] = field(default_factory=dict)  # seconds per written batch, by table


@dataclass(frozen=True, slots=True)
class _Queued:
    key: BatchKey
    batch: Batch
    stream: str  # the stream whose rows these are (gap accounting), or the table


async def _first(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _lost_at_stop(items: Sequence[_Queued]) -> None:
    log.error("Stopping with %d batches (%d rows) that neither the store nor the spool could take: they are lost",
              len(items), sum(item.batch.count for item in items))


class Writer:
    """Moves batches to a store. See the module docstring.

    Args:
        store: where batches go.
        max_pending_rows: bound of the queue of batches waiting for the store (in memory).
        spool: where batches wait on disk when the store fails or falls behind (opened already).
        clock: monotonic seconds.
    """

    def __init__(self, store: Store, *, max_pending_rows: int, spool: Spool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.spool = spool
        self.max_pending_rows = max_pending_rows
        self.clock = clock
        self.stats = WriterStats()
        self.ready = asyncio.Event()  # set once the store is open: nothing is written before
        self._pending: deque[_Queued] = deque()
        self._behind: deque[_Queued] = deque()  # newer than the spool, which could not take them
        self.pending_rows = 0  # rows in memory (both queues)
        self._bounded_rows = 0  # of them, of the tables that may be dropped (trades, book snapshots)
        self._spool_retry_at = 0.0  # clock() before which the spool is not tried again (an append failed)
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()  # set by close(): retries stop waiting long
        self._inflight = 0  # batches at the front of the queue that a store call is writing
        self._lost: list[tuple[BatchKey, str, Gap]] = []  # gaps waiting for the gaps table
        # Who sees trades and gaps as they are queued (the bar scheduler); called on the loop.
        self.trade_listeners: list[Callable[[BatchKey, pl.DataFrame], None]] = []
        self.gap_listeners: list[Callable[[BatchKey, str, Sequence[Gap]], None]] = []

    @property
    def pending_batches(self) -> int:
        """Batches waiting for the store in memory."""
        return len(self._pending) + len(self._behind)

    def put(self, key: BatchKey, frame: pl.DataFrame, stream: str) -> None:
        """Queue the rows of one series (sorted by ``ts_event``) for the store."""
        if not frame.height:
            return
        if key.table == TRADES:
            self._note_latency(key, frame)
            for listener in self.trade_listeners:
                listener(key, frame)
        self._enqueue(_Queued(key, encode_batch(frame), stream))

    def record_gaps(self, key: BatchKey, stream: str, gaps: Sequence[Gap]) -> None:
        """Queue windows of missing data of one series (``key`` names its data table) for ``gaps``."""
        if not gaps:
            return
        self._lost += [(key, stream, gap) for gap in gaps]
        self.stats.gaps[stream] += len(gaps)
        for listener in self.gap_listeners:
            listener(key, stream, gaps)
        self._queue_gaps()

    def behind(self, key: BatchKey, start: int, end: int, now: int, lag: int = 5_000_000_000) -> Gap | None:
        """Queued rows of ``key`` in ``[start, end]`` (ns) whose newest row is older than ``lag`` ns,
        and every spooled one.

        Readers do not see them yet. The newest rows are always a moment away from the store (a
        batch is cut every flush interval); older ones still waiting, or any in the spool, mean a
        slow or failing store, and data endpoints say so. Returns one window covering them (with the row count),
        or None.
        """
        lo, hi, rows = 0, 0, 0
        windows = [(item.batch.start, item.batch.end, item.batch.count) for queue in (self._pending, self._behind)
                   for item in queue if item.key == key and item.batch.end < now - lag]
        if self.spool is not None:
            windows += self.spool.covering(key)  # on disk: the store failed or fell behind, however new
        for first, last, count in windows:
            if last >= start and first <= end:
                lo, hi = (first, last) if not rows else (min(lo, first), max(hi, last))
                rows += count
        return Gap(lo, hi, "not_yet_written", rows) if rows else None

    def newest_spooled(self, key: BatchKey) -> pl.DataFrame | None:
        """The rows of the newest batch of ``key`` waiting in the spool (where its data ends), or None."""
        record = None if self.spool is None else self.spool.newest(key)
        return None if record is None else decode_frame(record.batch.data)

    def _queue_gaps(self) -> None:
        """Queue the gaps found so far, one batch per series, for the ``gaps`` table."""
        lost, self._lost = self._lost, []
        now = time.time_ns()
        by_key: dict[BatchKey, list[tuple[int, int, str, str, int | None, int]]] = {}
        for key, stream, gap in lost:
            gap_key = BatchKey(GAPS, key.venue, key.market, key.symbol)
            by_key.setdefault(gap_key, []).append((gap.start, gap.end, stream, gap.reason, gap.missing, now))
        for gap_key, rows in by_key.items():
            frame = pl.DataFrame(rows, schema=GAP_SCHEMA, orient="row").sort("ts_event")
            self._enqueue(_Queued(gap_key, encode_batch(frame), GAPS))

    def _note_latency(self, key: BatchKey, frame: pl.DataFrame) -> None:
        lag = (frame["ts_recv"] - frame["ts_event"]).cast(pl.Float64) / 1e9
        q50, q99, qmax = lag.quantile(0.5), lag.quantile(0.99), lag.max()
        self.stats.latency[key] = (float(q50 or 0.0), float(q99 or 0.0), float(qmax or 0.0))  # type: ignore[arg-type]

    def _enqueue(self, item: _Queued) -> None:
        if self.spool is not None and (self._behind or not self.spool.empty):
            self._spill([item])  # the spool is being written: what comes now goes after it
            return
        self._keep(self._pending, [item])
        if self.spool is not None and self._bounded_rows > min(self.max_pending_rows, SPILL_ROWS) \
                and self.clock() >= self._spool_retry_at:
            self.spill()  # the store falls behind: the queue goes to disk
        self._drop_past_bound(self._pending, self._inflight)  # nothing to drop unless the spool failed
        self._wake.set()

    def _keep(self, queue: deque[_Queued], items: Sequence[_Queued]) -> None:
        """Queue ``items`` in memory at the end of ``queue``."""
        queue.extend(items)
        self.pending_rows += sum(item.batch.count for item in items)
        self._bounded_rows += sum(item.batch.count for item in items if item.key.table not in _KEPT)

    def _unkeep(self, items: Sequence[_Queued]) -> None:
        """``items`` left memory (taken out of their queue by the caller)."""
        self.pending_rows -= sum(item.batch.count for item in items)
        self._bounded_rows -= sum(item.batch.count for item in items if item.key.table not in _KEPT)

    def _drop_past_bound(self, queue: deque[_Queued], index: int) -> None:
        """Drop the oldest trade or book batches of ``queue`` from ``index`` on (those before are being
        written) while memory holds more than the bound; each loss is recorded as a gap of its stream.

        Gaps and klines are small, never dropped, and do not count against the bound (a gap
        recorded for a drop must not cause another drop). The newest batch is never dropped.
        """
        dropped: list[_Queued] = []
        while self._bounded_rows > self.max_pending_rows and index < len(queue) - 1:
            old = queue[index]
            if old.key.table in _KEPT:
                index += 1
                continue
            del queue[index]
            self._unkeep([old])
            dropped.append(old)
        for old in dropped:
            self.stats.dropped_rows["store_backlog"] += old.batch.count
            log.error(
                "Dropped %d rows of %s: the store is down or behind (backlog over %d rows)",
                old.batch.count, old.key, self.max_pending_rows,
                extra={"key": str(old.key), "rows": old.batch.count, "reason": "store_backlog"},
            )
            self.record_gaps(old.key, old.stream, [Gap(old.batch.start, old.batch.end, "store_backlog",
                                                        old.batch.count)])

    def spill(self, *, force: bool = False) -> None:
        """Move the queue (but a group being written) to the spool, in order (``force``: even within
        :data:`SPOOL_RETRY_S` of a failed append)."""
        if self.spool is None:
            return
        moved = list(self._pending)[self._inflight:]
        for _ in moved:
            self._pending.pop()
        self._unkeep(moved)
        self._spill(moved, force=force, older=True)

    def _spill(self, items: list[_Queued], *, force: bool = False, older: bool = False) -> None:
        """Append ``items`` to the spool with any waiting behind it (before them, or after when they are
        ``older``); what it cannot take stays in memory, in order, bounded as without a spool."""
        assert self.spool is not None
        if self._behind:
            waiting = list(self._behind)
            self._behind.clear()
            self._unkeep(waiting)
            items = [*items, *waiting] if older else [*waiting, *items]
        if not items:
            return
        written, dropped = 0, []
        if force or self.clock() >= self._spool_retry_at:
            now = time.time_ns()
            try:
                dropped = self.spool.append([SpoolRecord(i.key, i.stream, i.batch, now) for i in items])
                written = len(items)
            except SpoolWriteError as exc:
                # The disk is full or gone: keep the rest in memory and say so; try again later.
                written = exc.written
                self.stats.spool_errors += 1
                self._spool_retry_at = self.clock() + SPOOL_RETRY_S
                log.error("The spool could not be written (%s); %d batches wait in memory, bounded to %d rows",
                          exc, len(items) - written, self.max_pending_rows)
        rest = items[written:]
        if rest:
            if self.spool.empty:
                self._keep(self._pending, rest)  # nothing on disk to wait for
                self._drop_past_bound(self._pending, self._inflight)
            else:
                self._keep(self._behind, rest)  # written once the spool is
                self._drop_past_bound(self._behind, 0)
        self._wake.set()
        for lost in dropped:
            self._spool_dropped(lost)

    def _spool_dropped(self, lost: SpoolSummary) -> None:
        if lost.uncarried:  # gap records the spool could not carry over past the drop: they wait in memory
            self._keep(self._behind, [_Queued(r.key, r.batch, r.stream) for r in lost.uncarried])
        rows = sum(count for _, _, _, count in lost.series.values())
        self.stats.dropped_rows["spool_full"] += rows
        log.error("Dropped %d batches (%d rows) from the spool: it passed its bound of %d bytes while the store "
                  "was down or behind", lost.records, rows, self.spool.max_bytes if self.spool else 0,
                  extra={"rows": rows, "reason": "spool_full"})
        for key, (stream, first, last, count) in lost.series.items():
            if key.table != GAPS:
                self.record_gaps(key, stream, [Gap(first, last, "spool_full", count)])

    async def run_drain(self) -> None:
        """Write queued batches in order once the store is open, retrying a failing store; returns
        once closed and empty."""
        delay = 0.25
        while True:
            if self._behind and self.spool is not None and self.spool.empty:
                self._pending.extend(self._behind)  # the spool is written: what waited behind it is next
                self._behind.clear()
            if not self._pending and (self.spool is None or self.spool.empty or self._closing):
                if self._closing:
                    self._spill_behind()
                    return  # what the spool holds is written by the next start
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self.ready.is_set():
                if self._closing:
                    return  # the store never opened: nothing can be written
                self._wake.clear()
                await _first(self.ready, self._wake)  # the store opens, or close() is called
                continue
            if await (self._write_one() if self._pending else self._write_spooled()):
                delay = 0.25
            elif self._closing and self.spool is not None:
                self.spill(force=True)  # stopping with the store down: the queue waits on disk for the next start
                if self._pending:
                    _lost_at_stop(self._pending)
                    return
            else:
                with contextlib.suppress(TimeoutError):  # close() cuts a long wait short
                    await asyncio.wait_for(self._closed.wait(), min(delay, 1.0) if self._closing else delay)
                delay = min(delay * 2, 30.0)

    def _spill_behind(self) -> None:
        """Stopping: what waits behind the spool in memory goes to it now, or is lost with the process."""
        if not self._behind or self.spool is None:
            return
        self._spill([], force=True)
        if self._behind:
            _lost_at_stop(self._behind)

    def close(self) -> None:
        """``run_drain`` returns once everything queued is written (collectors cut their buffers first)."""
        self._closing = True
        self._closed.set()
        self._wake.set()

    async def _write_one(self) -> bool:
        """Write the oldest queued batches in one store call; True on success."""
        group: list[_Queued] = []
        rows = 0
        for item in self._pending:
            if group and (len(group) >= MAX_GROUP_BATCHES or rows + item.batch.count > MAX_GROUP_ROWS):
                break
            group.append(item)
            rows += item.batch.count
        self._inflight = len(group)
        started = self.clock()
        try:
            await self.store.write_many([(item.key, item.batch) for item in group])
        except StoreError as exc:
            self._failed(exc, group[0].key)
            self._inflight = 0
            if self.spool is not None and not self.spool.empty:
                # What came after this group is on disk already (it passed the bound while this was
                # being written): the group waits in front, in memory, and is written first.
                return False
            self.spill()  # the whole queue waits on disk, the group that failed first
            return False
        finally:
            self._inflight = 0
        for _ in group:
            self._pending.popleft()
        self._unkeep(group)
        self._written(group, self.clock() - started)
        return True

    async def _write_spooled(self) -> bool:
        """Write the oldest spooled batches in one store call; True on success."""
        assert self.spool is not None
        records = self.spool.head(MAX_SPOOL_GROUP, MAX_GROUP_ROWS)
        if not records:
            log.error("The spool says it holds %d batches but none can be read", self.spool.batches)
            return False  # waits and tries again, never in a busy loop
        group = [_Queued(r.key, r.batch, r.stream) for r in records]
        started = self.clock()
        try:
            await self.store.write_many([(item.key, item.batch) for item in group])
        except StoreError as exc:
            self.spool.release()
            self._failed(exc, group[0].key)
            return False
        self.spool.commit(records)
        self._written(group, self.clock() - started)
        return True

    def _failed(self, exc: StoreError, key: BatchKey) -> None:
        self.stats.store_errors += 1
        self.stats.store_ok = False
        self.stats.last_error = str(exc)[:300]
        if self.stats.store_errors == 1 or self.stats.store_errors % 100 == 0:
            waiting = len(self._pending) + (self.spool.batches if self.spool is not None else 0)
            log.warning("Store write failed (%s); %d batches wait%s and will be retried", exc, waiting,
                        " in the spool" if self.spool is not None else "", extra={"key": str(key)})

    def _written(self, group: list[_Queued], elapsed: float) -> None:
        rows = sum(item.batch.count for item in group)
        st = self.stats
        if not st.store_ok:
            log.warning("Store writes recovered", extra={"key": str(group[0].key)})
        st.store_ok = True
        st.batches += len(group)
        st.rows += rows
        st.flush_seconds += elapsed
        st.last_write = time.time()
        for item in group:
            table = item.key.table
            st.flush_rows.setdefault(table, Histogram(ROW_BUCKETS)).observe(item.batch.count)
            st.flush_durations.setdefault(table, Histogram(SECOND_BUCKETS)).observe(elapsed / len(group))
