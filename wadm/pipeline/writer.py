"""Cuts stream buffers into columnar batches and writes them to the store.

The receive path appends to stream buffers (trades, book snapshots, klines) and never waits on
the store. The writer's ``cut`` loop turns a buffer into a batch when it holds ``flush_rows``
rows or ``flush_interval`` seconds have passed; batches queue (bounded by rows) for the
``drain`` loop, which writes them in order and retries a failing store with backoff. Retries are
not drops. When the backlog passes its bound the oldest batch is dropped, counted and logged as
an ERROR: that is data loss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl

from wadm.errors import StoreError
from wadm.records import GAP_SCHEMA, GAPS, KLINES, TRADES, BatchKey
from wadm.store.base import Store
from wadm.store.codec import Batch, encode_batch
from wadm.venues.base import Gap, Stream

__all__ = ["Writer", "WriterStats"]

log = logging.getLogger(__name__)

# One store call writes at most this much of the queue (one transaction / one bulk insert).
MAX_GROUP_BATCHES = 256
MAX_GROUP_ROWS = 1_000_000


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
    latency: dict[BatchKey, tuple[float, float, float]] = field(default_factory=dict)  # p50, p99, max seconds


class Writer:
    """Moves batches from stream buffers to a store.

    Args:
        store: where batches go.
        streams: the buffers to cut.
        flush_rows: cut a buffer when it holds this many trades.
        flush_interval: cut a non-empty buffer at least this often, seconds.
        max_pending_rows: bound of the queue of batches waiting for the store.
        on_batch: called with (key, rows, seconds) after each successful write (metrics).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        store: Store,
        streams: Sequence[Stream],
        *,
        flush_rows: int,
        flush_interval: float,
        max_pending_rows: int,
        on_batch: Callable[[BatchKey, int, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.streams = list(streams)
        self.flush_rows = flush_rows
        self.flush_interval = flush_interval
        self.max_pending_rows = max_pending_rows
        self.on_batch = on_batch
        self.clock = clock
        self.stats = WriterStats()
        self._pending: deque[tuple[BatchKey, Batch]] = deque()
        self.pending_rows = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._inflight = 0  # batches at the front of the queue that a store call is writing
        self._last_cut = {s: clock() for s in self.streams}
        # Streams of a row a second (book snapshots) batch longer: fewer, larger stored documents.
        self._interval = {s: max(flush_interval, getattr(s, "min_flush_interval", 0.0)) for s in self.streams}
        self._keys = {s: BatchKey(s.table, s.venue, s.market, s.spec.symbol) for s in self.streams}
        self._rejected_logged: dict[Stream, float] = {}
        # Gaps waiting for the gaps table: (series, stream, gap).
        self._lost: list[tuple[BatchKey, str, Gap]] = []

    @property
    def pending_batches(self) -> int:
        """Batches waiting for the store."""
        return len(self._pending)

    def cut(self, force: bool = False) -> int:
        """Cut every buffer that is due (or all, with ``force``); return rows queued."""
        now = self.clock()
        queued = 0
        for st in self.streams:
            n = st.pending
            if not n:
                self._last_cut[st] = now
                continue
            if not (force or n >= self.flush_rows or now - self._last_cut[st] >= self._interval[st]):
                continue
            self._last_cut[st] = now
            rejected = getattr(st, "rejected", 0)
            frame = st.take()
            key = self._keys[st]
            if (total := getattr(st, "rejected", 0)) > rejected:
                self._log_rejected(st, key, total - rejected, total, now)
            if frame is None or frame.height == 0:
                continue
            if key.table == TRADES:
                self._note_latency(key, frame)
            self._enqueue(key, encode_batch(frame))
            queued += frame.height
        if self._lost:
            self._enqueue_gaps()
        return queued

    def behind(self, key: BatchKey, start: int, end: int, now: int, lag: int = 5_000_000_000) -> Gap | None:
        """Rows of ``key`` in ``[start, end]`` (ns) queued for the store for more than ``lag`` ns.

        Readers do not see them yet; a slow or failing store makes that last, and data endpoints
        say so. Returns one window covering them (with the row count), or None.
        """
        lo, hi, rows = 0, 0, 0
        for k, batch in self._pending:
            if k == key and batch.end >= start and batch.start <= end and batch.end < now - lag:
                lo, hi = (batch.start, batch.end) if not rows else (min(lo, batch.start), max(hi, batch.end))
                rows += batch.count
        return Gap(lo, hi, "not_yet_written", rows) if rows else None

    def record_gaps(self, key: BatchKey, stream: str, gaps: Sequence[Gap]) -> None:
        """Queue windows of missing data of one series for the ``gaps`` table."""
        self._lost += [(key, stream, gap) for gap in gaps]
        self.stats.gaps[stream] += len(gaps)
        self._wake.set()

    def add_frame(self, key: BatchKey, frame: pl.DataFrame) -> None:
        """Queue rows that did not come through a stream buffer (REST backfill)."""
        if frame.height:
            self._enqueue(key, encode_batch(frame))

    def _enqueue_gaps(self) -> None:
        """Queue the gaps found since the last cut, one batch per series, for the ``gaps`` table."""
        lost, self._lost = self._lost, []
        now = time.time_ns()
        by_key: dict[BatchKey, list[tuple[int, int, str, str, int | None, int]]] = {}
        for key, stream, (start, end, reason, missing, *_) in lost:
            gap_key = BatchKey(GAPS, key.venue, key.market, key.symbol)
            by_key.setdefault(gap_key, []).append((start, end, stream, reason, missing, now))
        for gap_key, rows in by_key.items():
            frame = pl.DataFrame(rows, schema=GAP_SCHEMA, orient="row").sort("ts_event")
            self._enqueue(gap_key, encode_batch(frame))

    def _log_rejected(self, st: Stream, key: BatchKey, count: int, total: int, now: float) -> None:
        if now - self._rejected_logged.get(st, -60.0) >= 60.0:
            self._rejected_logged[st] = now
            log.warning("%s: dropped %d trades with a zero price or quantity (%d in all)", key, count, total,
                        extra={"key": str(key), "kind": "zero_price"})

    def _note_latency(self, key: BatchKey, frame: pl.DataFrame) -> None:
        lag = (frame["ts_recv"] - frame["ts_event"]).cast(pl.Float64) / 1e9
        q50, q99, qmax = lag.quantile(0.5), lag.quantile(0.99), lag.max()
        self.stats.latency[key] = (float(q50 or 0.0), float(q99 or 0.0), float(qmax or 0.0))  # type: ignore[arg-type]

    def _enqueue(self, key: BatchKey, batch: Batch) -> None:
        self._pending.append((key, batch))
        self.pending_rows += batch.count
        # Drop the oldest trade or book batches that are not being written right now; the loss
        # is recorded as a gap (gaps and klines are small and never dropped).
        index = self._inflight
        while self.pending_rows > self.max_pending_rows and index < len(self._pending) - 1:
            old_key, old = self._pending[index]
            if old_key.table in (GAPS, KLINES):
                index += 1
                continue
            del self._pending[index]
            self.pending_rows -= old.count
            self._lost.append((old_key, old_key.table, Gap(old.start, old.end, "store_backlog", old.count)))
            self.stats.gaps[old_key.table] += 1
            self.stats.dropped_rows["store_backlog"] += old.count
            log.error(
                "Dropped %d trades of %s: the store is %s behind (backlog over %d rows)",
                old.count, old_key, "down or", self.max_pending_rows,
                extra={"key": str(old_key), "rows": old.count, "reason": "store_backlog"},
            )
        self._wake.set()

    async def run_cutter(self, tick: float | None = None) -> None:
        """Cut due buffers forever."""
        tick = tick or max(0.02, min(0.1, self.flush_interval / 4))
        while True:
            self.cut()
            await asyncio.sleep(tick)

    async def run_drain(self) -> None:
        """Write queued batches in order, retrying a failing store; returns once closed and empty."""
        delay = 0.25
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if await self._write_one():
                delay = 0.25
            else:
                await asyncio.sleep(min(delay, 1.0) if self._closing else delay)
                delay = min(delay * 2, 30.0)

    def close(self) -> None:
        """Cut every buffer now; ``run_drain`` returns once everything queued is written."""
        self._closing = True
        self.cut(force=True)
        self._wake.set()

    async def _write_one(self) -> bool:
        """Write the oldest queued batches in one store call; True on success."""
        group: list[tuple[BatchKey, Batch]] = []
        rows = 0
        for key, batch in self._pending:
            if group and (len(group) >= MAX_GROUP_BATCHES or rows + batch.count > MAX_GROUP_ROWS):
                break
            group.append((key, batch))
            rows += batch.count
        self._inflight = len(group)
        started = self.clock()
        try:
            await self.store.write_many(group)
        except StoreError as exc:
            self.stats.store_errors += 1
            self.stats.store_ok = False
            self.stats.last_error = str(exc)[:300]
            if self.stats.store_errors == 1 or self.stats.store_errors % 100 == 0:
                log.warning("Store write failed (%s); %d batches wait and will be retried", exc,
                            len(self._pending), extra={"key": str(group[0][0])})
            return False
        finally:
            self._inflight = 0
        elapsed = self.clock() - started
        for _ in group:
            self._pending.popleft()
        self.pending_rows -= rows
        st = self.stats
        if not st.store_ok:
            log.warning("Store writes recovered", extra={"key": str(group[0][0])})
        st.store_ok = True
        st.batches += len(group)
        st.rows += rows
        st.flush_seconds += elapsed
        st.last_write = time.time()
        if self.on_batch is not None:
            for key, batch in group:
                self.on_batch(key, batch.count, elapsed / len(group))
        return True
