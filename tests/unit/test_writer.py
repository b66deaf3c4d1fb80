"""The writer (the sink) against real stores: order and grouping, retries, the bound, gaps, close.

Stores are real: SQLite in the test's folder (or where its folder cannot be made: a store that
never opens); MongoDB is an nx-27017 wire server the test kills and restarts, or a port nothing
listens on. A store call is held up by a real SQLite write lock
taken from another connection. Durations come from an injected clock that moves a fixed step
each time it is read, so the flush histograms are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import polars as pl
import pytest
import pytest_asyncio

from tests.helpers import free_port, until
from tests.integration.test_outage import Nx
from tests.store.helpers import BINANCE_SPOT, BYBIT_LINEAR, SECOND, T0, trades
from wadm.errors import StoreError
from wadm.pipeline.writer import MAX_GROUP_BATCHES, MAX_GROUP_ROWS, ROW_BUCKETS, SECOND_BUCKETS, Writer
from wadm.records import (
    BOOK_SNAPSHOTS,
    GAP_SCHEMA,
    GAPS,
    KLINE_SCHEMA,
    KLINES,
    TRADES,
    BatchKey,
    Market,
    Venue,
    book_snapshot_schema,
)
from wadm.store.mongo import MongoStore
from wadm.store.sqlite import SqliteStore
from wadm.venues.base import Gap

pytestmark = pytest.mark.asyncio

STREAM = "btcusdt@aggTrade"  # the stream whose rows BINANCE_SPOT batches hold
BYBIT_STREAM = "publicTrade.BTCUSDT"
BOOK_STREAM = "btcusdt@depth@100ms"
BOOK_KEY = BatchKey(BOOK_SNAPSHOTS, Venue.BINANCE, Market.SPOT, "BTCUSDT")
KLINE_KEY = BatchKey(KLINES, Venue.BINANCE, Market.SPOT, "BTCUSDT")
GAPS_KEY = BatchKey(GAPS, Venue.BINANCE, Market.SPOT, "BTCUSDT")
EVERYTHING = (0, 2**62)
STEP = 0.5  # seconds the clock moves per read; a power of two keeps the sums exact
WAIT = 20.0  # seconds any condition may take on a loaded machine


class SteppingClock:
    """Monotonic seconds that move ``step`` each time they are read; ``reads`` counts the reads.

    The writer reads it just before and just after each store call, so a successful call lasts
    exactly ``step`` and the first read tells that a store call has started.
    """

    def __init__(self, step: float = STEP) -> None:
        self.now, self.step, self.reads = 1000.0, step, 0

    def __call__(self) -> float:
        self.reads += 1
        value, self.now = self.now, self.now + self.step
        return value


# -- frames -----------------------------------------------------------------------------------


def trade_frame(key: BatchKey, n: int, first_id: int, start: int | None = None) -> pl.DataFrame:
    """``n`` trades one second apart with ids ``first_id...``; by default they start at ``T0 + first_id`` s."""
    start = T0 + first_id * SECOND if start is None else start
    return trades(key, [start + i * SECOND for i in range(n)], first_id)


def book_frame(n: int, start: int) -> pl.DataFrame:
    """``n`` stored book snapshots one second apart from ``start``."""
    rows = [(start + k * SECOND, start + k * SECOND - 7, start + k * SECOND - 3, 10 + k, 100.005, 0.01,
             *([1.5, 2.5, -0.25] * 3), [100.0, 99.99], [1.0, 0.5], [100.01], [2.0]) for k in range(n)]
    return pl.DataFrame(rows, schema=book_snapshot_schema(), orient="row")


def kline_frame(n: int, start: int) -> pl.DataFrame:
    """``n`` closed one-minute klines from ``start``."""
    rows = [(start + k * 60 * SECOND, start + k * 60 * SECOND + 5_000_000, 61_000.0, 61_050.5, 60_990.0,
             61_020.25, 12.5, 762_500.0, 340, 7.25, 442_000.0) for k in range(n)]
    return pl.DataFrame(rows, schema=KLINE_SCHEMA, orient="row")


def ids(frame: pl.DataFrame) -> list[int]:
    return [int(i) for i in frame["id"]]


# -- stores and the drain ---------------------------------------------------------------------


@pytest_asyncio.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "wadm.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def stored_in_write_order(store: SqliteStore) -> list[tuple[str, str, object, int]]:
    """(table, venue, first id, rows) of every stored batch, in the order they were inserted."""
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        return conn.execute("SELECT tbl, venue, first_id, count FROM batches ORDER BY id").fetchall()


@contextlib.contextmanager
def write_locked(store: SqliteStore) -> Iterator[None]:
    """Hold SQLite's write lock from another connection: the store's writes wait (busy timeout) until exit."""
    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("COMMIT")
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def draining(writer: Writer) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``writer.run_drain`` for the block; cancel it if it is still running at the end."""
    task = asyncio.create_task(writer.run_drain())
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def let_the_drain_run(store: SqliteStore) -> None:
    """Give the drain task many turns of the loop (it has nothing to wait on, so no condition exists)."""
    for _ in range(20):
        await asyncio.sleep(0)
    assert await store.healthcheck()  # a round trip through the store's threads
    for _ in range(20):
        await asyncio.sleep(0)


def bucket_counts(buckets: tuple[float, ...], at: dict[float, int]) -> list[int]:
    """Expected per-bucket counts of a histogram: ``at`` maps a bucket's bound (``math.inf``: +Inf) to its count."""
    expected = [0] * (len(buckets) + 1)
    for bound, n in at.items():
        expected[len(buckets) if bound == math.inf else buckets.index(bound)] = n
    return expected


# -- 1. ready, order, grouping, stats ---------------------------------------------------------


async def test_nothing_is_written_before_ready_then_everything_in_order(sqlite: SqliteStore) -> None:
    clock = SteppingClock()
    writer = Writer(sqlite, max_pending_rows=1_000_000, clock=clock)
    sizes = (10, 11, 101)  # one per row bucket: <=10, <=100, <=1000
    n = MAX_GROUP_BATCHES + 44
    expected: list[tuple[str, str, object, int]] = []
    async with draining(writer) as task:
        for i in range(n):
            key, stream = (BINANCE_SPOT, STREAM) if i % 2 == 0 else (BYBIT_LINEAR, BYBIT_STREAM)
            # Later batches carry earlier event times: the store must get queue order, not time order.
            frame = trade_frame(key, sizes[i % 3], first_id=1000 * i, start=T0 + (n - i) * 1000 * SECOND)
            writer.put(key, frame, stream)
            expected.append((TRADES, key.venue.value, frame["id"][0], frame.height))
        writer.put(KLINE_KEY, kline_frame(3, T0), "btcusdt@kline_1m")
        expected.append((KLINES, "binance", None, 3))
        await let_the_drain_run(sqlite)

        assert stored_in_write_order(sqlite) == []
        assert clock.reads == 0, "a store call was made before the store was ready"
        assert (writer.stats.batches, writer.stats.rows, writer.stats.last_write) == (0, 0, None)
        assert writer.pending_batches == n + 1 and not task.done()

        before = time.time()
        writer.ready.set()
        await until(lambda: writer.pending_batches == 0, WAIT, "the queue to be written")
        after = time.time()

    assert stored_in_write_order(sqlite) == expected
    total_rows = sum(row[3] for row in expected)
    st = writer.stats
    assert (st.batches, st.rows, writer.pending_rows) == (n + 1, total_rows, 0)
    assert st.last_write is not None and before <= st.last_write <= after
    assert (st.store_errors, st.store_ok, st.last_error) == (0, True, None)
    assert not st.dropped_rows and not st.gaps
    # Two store calls: the first MAX_GROUP_BATCHES batches, then the other 44 trade batches and the klines.
    assert clock.reads == 4 and st.flush_seconds == 2 * STEP

    rows = st.flush_rows[TRADES]
    assert rows.buckets == ROW_BUCKETS
    assert rows.counts == bucket_counts(ROW_BUCKETS, {10: n // 3, 100: n // 3, 1000: n // 3})
    assert (rows.count, rows.total) == (n, total_rows - 3)
    assert st.flush_rows[KLINES].counts == bucket_counts(ROW_BUCKETS, {10: 1}) and st.flush_rows[KLINES].total == 3

    per_batch_first, per_batch_second = STEP / MAX_GROUP_BATCHES, STEP / 45  # the call's time, shared
    durations = st.flush_durations[TRADES]
    assert durations.buckets == SECOND_BUCKETS
    assert per_batch_first < 0.0025 and 0.01 < per_batch_second < 0.025
    assert durations.counts == bucket_counts(SECOND_BUCKETS, {0.0025: MAX_GROUP_BATCHES, 0.025: 44})
    assert durations.count == n
    assert durations.total == pytest.approx(MAX_GROUP_BATCHES * per_batch_first + 44 * per_batch_second)
    assert st.flush_durations[KLINES].counts == bucket_counts(SECOND_BUCKETS, {0.025: 1})
    assert set(st.flush_rows) == set(st.flush_durations) == {TRADES, KLINES}

    stored = await sqlite.read(BINANCE_SPOT, *EVERYTHING)
    assert stored.height == sum(sizes[i % 3] for i in range(0, n, 2))


async def test_a_store_call_holds_at_most_max_group_rows(sqlite: SqliteStore) -> None:
    clock = SteppingClock()
    writer = Writer(sqlite, max_pending_rows=3 * MAX_GROUP_ROWS, clock=clock)
    half = MAX_GROUP_ROWS // 2
    writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, half, first_id=1), STREAM)
    writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, half, first_id=1 + half), STREAM)  # exactly the limit
    writer.put(KLINE_KEY, kline_frame(3, T0), "btcusdt@kline_1m")  # rows past the limit: the next call
    writer.ready.set()
    async with draining(writer):
        await until(lambda: writer.pending_batches == 0, WAIT, "the queue to be written")

    assert stored_in_write_order(sqlite) == [
        (TRADES, "binance", 1, half), (TRADES, "binance", 1 + half, half), (KLINES, "binance", None, 3)]
    st = writer.stats
    assert (st.batches, st.rows) == (3, 2 * half + 3)
    assert clock.reads == 4 and st.flush_seconds == 2 * STEP
    # Per table, which call each batch was in: both trade batches shared the first, the klines had the second.
    assert st.flush_durations[TRADES].counts == bucket_counts(SECOND_BUCKETS, {STEP / 2: 2})
    assert st.flush_durations[KLINES].counts == bucket_counts(SECOND_BUCKETS, {STEP: 1})
    assert st.flush_rows[TRADES].counts == bucket_counts(ROW_BUCKETS, {math.inf: 2})
    assert ids(await sqlite.read(BINANCE_SPOT, *EVERYTHING)) == list(range(1, 2 * half + 1))


# -- 2. a failing store -----------------------------------------------------------------------


async def test_a_failing_store_is_retried_and_loses_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    nx = Nx(tmp_path)
    await nx.start()
    store = MongoStore(nx.uri, server_selection_timeout=0.3)
    writer = Writer(store, max_pending_rows=10_000, clock=SteppingClock())
    try:
        await store.open()
        writer.ready.set()
        caplog.set_level(logging.WARNING, logger="wadm.pipeline.writer")
        async with draining(writer) as task:
            writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 50, first_id=1), STREAM)
            await until(lambda: writer.stats.batches == 1, WAIT, "the first batch to be written")

            await nx.kill()
            for first in (51, 151, 251):
                writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=first), STREAM)
            await until(lambda: writer.stats.store_errors >= 2, WAIT, "writes to fail twice")
            st = writer.stats
            assert st.store_ok is False
            assert st.last_error is not None and f"127.0.0.1:{nx.port}" in st.last_error
            # Retries keep the batches: nothing is dropped, written or counted twice.
            assert (writer.pending_batches, writer.pending_rows) == (3, 300)
            assert (st.batches, st.rows) == (1, 50)
            assert not st.dropped_rows and not st.gaps

            # Closing does not give up on queued batches: the drain keeps retrying until they are written.
            writer.close()
            errors = st.store_errors
            await until(lambda: writer.stats.store_errors > errors, WAIT, "another retry after close")
            assert not task.done()

            await nx.start()
            await asyncio.wait_for(task, WAIT)

        assert (writer.pending_batches, writer.pending_rows) == (0, 0)
        assert (st.store_ok, st.batches, st.rows) == (True, 4, 350)
        assert not st.dropped_rows
        assert ids(await store.read(BINANCE_SPOT, *EVERYTHING)) == list(range(1, 351))
    finally:
        await store.close()
        if nx.proc is not None and nx.proc.returncode is None:
            await nx.kill()

    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "wadm.pipeline.writer"]
    assert not [m for level, m in messages if level >= logging.ERROR], "a retry was logged as data loss"
    assert sum(m.startswith("Store write failed") for _, m in messages) == 1  # rate-limited
    assert any(m.startswith("Store writes recovered") for _, m in messages)


# -- 3. the bound -----------------------------------------------------------------------------


async def test_past_the_bound_the_oldest_batch_not_being_written_is_dropped(
    sqlite: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    clock = SteppingClock()
    bound, rows = 350, 100
    writer = Writer(sqlite, max_pending_rows=bound, clock=clock)
    frames = {name: trade_frame(BINANCE_SPOT, rows, first_id=1 + k * rows) for k, name in enumerate("ABCDEF")}
    writer.ready.set()
    caplog.set_level(logging.ERROR, logger="wadm.pipeline.writer")
    async with draining(writer):
        with write_locked(sqlite):
            writer.put(BINANCE_SPOT, frames["A"], STREAM)
            await until(lambda: clock.reads == 1, WAIT, "the store call writing A to start")
            for name in "BCDEF":  # A is being written (and stuck): B, C, D are the oldest others
                writer.put(BINANCE_SPOT, frames[name], STREAM)
                assert writer.pending_rows <= bound + rows
            assert writer.stats.dropped_rows == {"store_backlog": 3 * rows}
            assert writer.stats.gaps == {STREAM: 3}  # by stream name, what /health reports
            assert writer.stats.batches == 0
        await until(lambda: writer.pending_batches == 0, WAIT, "the queue to be written")

    assert ids(await sqlite.read(BINANCE_SPOT, *EVERYTHING)) == ids(frames["A"]) + ids(frames["E"]) + ids(frames["F"])
    gaps = (await sqlite.read(GAPS_KEY, *EVERYTHING)).sort("ts_event")
    assert gaps.schema == pl.Schema(GAP_SCHEMA)
    assert gaps.select("ts_event", "end", "stream", "reason", "missing").rows() == [
        (frames[name]["ts_event"][0], frames[name]["ts_event"][-1], STREAM, "store_backlog", rows) for name in "BCD"
    ]
    errors = [r for r in caplog.records if r.name == "wadm.pipeline.writer" and r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert all(f"Dropped {rows} rows of trades/binance/spot/BTCUSDT" in r.getMessage() for r in errors)
    assert all(getattr(r, "reason", None) == "store_backlog" for r in errors)


async def test_gap_and_kline_batches_are_never_dropped_and_book_batches_are(sqlite: SqliteStore) -> None:
    writer = Writer(sqlite, max_pending_rows=250, clock=SteppingClock())
    disconnect = Gap(T0 - 10 * SECOND, T0 - 5 * SECOND, "disconnect")
    writer.put(KLINE_KEY, kline_frame(3, T0), "btcusdt@kline_1m")
    writer.record_gaps(BINANCE_SPOT, STREAM, [disconnect])
    book = book_frame(50, T0)
    writer.put(BOOK_KEY, book, BOOK_STREAM)
    first, second, third = (trade_frame(BINANCE_SPOT, 100, first_id=1 + k * 100) for k in range(3))
    writer.put(BINANCE_SPOT, first, STREAM)
    writer.put(BINANCE_SPOT, second, STREAM)  # past the bound: the book batch is the oldest droppable
    writer.put(BINANCE_SPOT, third, STREAM)  # and now the first trades
    assert writer.stats.dropped_rows == {"store_backlog": 150}
    assert writer.stats.gaps == {STREAM: 2, BOOK_STREAM: 1}
    assert writer.pending_rows <= 250 + 100

    writer.ready.set()
    async with draining(writer):
        await until(lambda: writer.pending_batches == 0, WAIT, "the queue to be written")
    assert (await sqlite.read(KLINE_KEY, *EVERYTHING)).height == 3
    assert (await sqlite.read(BOOK_KEY, *EVERYTHING)).height == 0
    assert ids(await sqlite.read(BINANCE_SPOT, *EVERYTHING)) == ids(second) + ids(third)
    gaps = (await sqlite.read(GAPS_KEY, *EVERYTHING)).sort("ts_event")
    assert gaps.select("ts_event", "end", "stream", "reason", "missing").rows() == [
        (disconnect.start, disconnect.end, STREAM, "disconnect", None),
        (T0, book["ts_event"][-1], BOOK_STREAM, "store_backlog", 50),
        (first["ts_event"][0], first["ts_event"][-1], STREAM, "store_backlog", 100),
    ]


async def test_a_long_outage_stays_within_the_bound_plus_one_batch() -> None:
    store = MongoStore(f"mongodb://127.0.0.1:{free_port()}/", server_selection_timeout=0.05)
    writer = Writer(store, max_pending_rows=1000, clock=SteppingClock())
    writer.ready.set()  # as if it had opened before the outage
    try:
        async with draining(writer):
            for k in range(60):
                writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 90 + k % 20, first_id=1 + k * 200), STREAM)
                assert writer.pending_rows <= 1000 + 109
                if k == 5:
                    await until(lambda: writer.stats.store_errors >= 1, WAIT, "a write to fail")
        st = writer.stats
        assert st.dropped_rows["store_backlog"] > 0 and st.batches == 0
        assert st.gaps[STREAM] >= 40 and set(st.gaps) == {STREAM}
    finally:
        await store.close()


async def test_one_batch_past_the_bound_drops_one_batch(sqlite: SqliteStore) -> None:
    writer = Writer(sqlite, max_pending_rows=200, clock=SteppingClock())
    batches = [trade_frame(BINANCE_SPOT, 100, first_id=1 + k * 100) for k in range(3)]
    for frame in batches:
        writer.put(BINANCE_SPOT, frame, STREAM)
    writer.ready.set()
    async with draining(writer):
        await until(lambda: writer.pending_batches == 0, WAIT, "the queue to be written")
    assert ids(await sqlite.read(BINANCE_SPOT, *EVERYTHING)) == ids(batches[1]) + ids(batches[2])
    assert writer.stats.dropped_rows == {"store_backlog": 100}


# -- 4. gaps ----------------------------------------------------------------------------------


async def test_record_gaps_writes_rows_of_the_gaps_table(sqlite: SqliteStore) -> None:
    writer = Writer(sqlite, max_pending_rows=1000, clock=SteppingClock())
    lost = [Gap(T0, T0 + 5 * SECOND, "disconnect"), Gap(T0 + 10 * SECOND, T0 + 12 * SECOND, "trade_ids", 7)]
    resync = Gap(T0 + 3 * SECOND, T0 + 4 * SECOND, "resync")
    bybit = Gap(T0 + SECOND, T0 + 2 * SECOND, "disconnect")
    before = time.time_ns()
    writer.record_gaps(BINANCE_SPOT, STREAM, lost)
    writer.record_gaps(BOOK_KEY, BOOK_STREAM, [resync])  # another table of the same series
    writer.record_gaps(BYBIT_LINEAR, BYBIT_STREAM, [bybit])
    writer.record_gaps(BINANCE_SPOT, STREAM, [])
    after = time.time_ns()
    assert writer.stats.gaps == {STREAM: 2, BOOK_STREAM: 1, BYBIT_STREAM: 1}
    assert writer.pending_rows == 4 and writer.pending_batches == 3  # one batch per call and series

    writer.ready.set()
    async with draining(writer):
        await until(lambda: writer.pending_batches == 0, WAIT, "the gaps to be written")
    assert not writer.stats.latency and set(writer.stats.flush_rows) == {GAPS}

    binance = await sqlite.read(GAPS_KEY, *EVERYTHING)
    assert binance.schema == pl.Schema(GAP_SCHEMA)
    assert binance.sort("ts_event").drop("ts_recv").rows() == [
        (T0, T0 + 5 * SECOND, STREAM, "disconnect", None),
        (T0 + 3 * SECOND, T0 + 4 * SECOND, BOOK_STREAM, "resync", None),
        (T0 + 10 * SECOND, T0 + 12 * SECOND, STREAM, "trade_ids", 7),
    ]
    assert all(before <= t <= after for t in binance["ts_recv"])
    other = await sqlite.read(BatchKey(GAPS, Venue.BYBIT, Market.LINEAR, "BTCUSDT"), *EVERYTHING)
    assert other.drop("ts_recv").rows() == [(T0 + SECOND, T0 + 2 * SECOND, BYBIT_STREAM, "disconnect", None)]
    assert (await sqlite.read(BINANCE_SPOT, *EVERYTHING)).height == 0  # gaps never land in the data table


# -- 5. behind --------------------------------------------------------------------------------


async def test_behind_reports_rows_waiting_longer_than_lag(sqlite: SqliteStore) -> None:
    writer = Writer(sqlite, max_pending_rows=1000, clock=SteppingClock())
    early = trade_frame(BINANCE_SPOT, 10, first_id=1, start=T0)  # T0 .. T0+9 s
    late = trade_frame(BINANCE_SPOT, 5, first_id=11, start=T0 + 100 * SECOND)  # T0+100 .. T0+104 s
    writer.put(BINANCE_SPOT, early, STREAM)
    writer.put(BINANCE_SPOT, late, STREAM)
    writer.put(BYBIT_LINEAR, trade_frame(BYBIT_LINEAR, 7, first_id=1, start=T0), BYBIT_STREAM)
    lag = 5 * SECOND

    whole = (T0, T0 + 1000 * SECOND)
    assert writer.behind(BINANCE_SPOT, *whole, now=T0 + 9 * SECOND + lag, lag=lag) is None  # not longer than lag
    assert writer.behind(BINANCE_SPOT, *whole, now=T0 + 9 * SECOND + lag + 1, lag=lag) == Gap(
        T0, T0 + 9 * SECOND, "not_yet_written", 10)
    assert writer.behind(BINANCE_SPOT, *whole, now=T0 + 200 * SECOND, lag=lag) == Gap(
        T0, T0 + 104 * SECOND, "not_yet_written", 15)
    assert writer.behind(BINANCE_SPOT, T0 + 50 * SECOND, T0 + 60 * SECOND, now=T0 + 200 * SECOND, lag=lag) is None
    assert writer.behind(BINANCE_SPOT, T0 + 104 * SECOND, T0 + 104 * SECOND, now=T0 + 200 * SECOND, lag=lag) == Gap(
        T0 + 100 * SECOND, T0 + 104 * SECOND, "not_yet_written", 5)
    assert writer.behind(BYBIT_LINEAR, *whole, now=T0 + 200 * SECOND, lag=lag) == Gap(
        T0, T0 + 6 * SECOND, "not_yet_written", 7)
    assert writer.behind(BOOK_KEY, *whole, now=T0 + 200 * SECOND, lag=lag) is None

    writer.ready.set()
    async with draining(writer):
        await until(lambda: writer.pending_batches == 0, WAIT, "the queue to be written")
    assert writer.behind(BINANCE_SPOT, *whole, now=T0 + 200 * SECOND, lag=lag) is None
    assert writer.behind(BYBIT_LINEAR, *whole, now=T0 + 200 * SECOND, lag=lag) is None


# -- 6. close ---------------------------------------------------------------------------------


async def test_close_then_drain_returns_once_everything_is_written(sqlite: SqliteStore) -> None:
    clock = SteppingClock()
    writer = Writer(sqlite, max_pending_rows=100_000, clock=clock)
    n = 2 * MAX_GROUP_BATCHES + 1  # three store calls
    for i in range(n):
        writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 2, first_id=1 + 2 * i), STREAM)
    writer.ready.set()
    writer.close()
    await asyncio.wait_for(writer.run_drain(), WAIT)

    assert (writer.pending_batches, writer.pending_rows) == (0, 0)
    assert (writer.stats.batches, writer.stats.rows) == (n, 2 * n)
    assert clock.reads == 6
    assert ids(await sqlite.read(BINANCE_SPOT, *EVERYTHING)) == list(range(1, 2 * n + 1))


async def test_an_idle_drain_returns_at_close(sqlite: SqliteStore) -> None:
    writer = Writer(sqlite, max_pending_rows=1000, clock=SteppingClock())
    writer.ready.set()
    async with draining(writer) as task:
        writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 3, first_id=1), STREAM)
        await until(lambda: writer.stats.batches == 1, WAIT, "the batch to be written")
        assert not task.done()
        writer.close()
        await asyncio.wait_for(task, WAIT)
    assert ids(await sqlite.read(BINANCE_SPOT, *EVERYTHING)) == [1, 2, 3]


@contextlib.asynccontextmanager
async def never_opened(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A store whose ``open`` failed: its data folder cannot be created (a file is in the way).

    Not a MongoStore at a closed port: pymongo leaks the socket of a monitor connect that
    ``close()`` cancels, and the ResourceWarning fails a later test now and then.
    """
    (tmp_path / "data").write_bytes(b"")
    store = SqliteStore(tmp_path / "data" / "wadm.db")
    try:
        with pytest.raises(StoreError, match="cannot create the data folder"):
            await store.open()
        yield store
    finally:
        await store.close()


async def test_with_a_store_that_never_opened_drain_returns_at_close_without_writing(tmp_path: Path) -> None:
    async with never_opened(tmp_path) as store:
        clock = SteppingClock()
        writer = Writer(store, max_pending_rows=1000, clock=clock)
        writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 10, first_id=1), STREAM)
        writer.record_gaps(BINANCE_SPOT, STREAM, [Gap(T0, T0 + SECOND, "disconnect")])
        writer.close()
        await asyncio.wait_for(writer.run_drain(), WAIT)

    assert clock.reads == 0, "a store call was made to a store that never opened"
    st = writer.stats
    assert (st.batches, st.store_errors, st.store_ok, st.last_write) == (0, 0, True, None)
    assert (writer.pending_batches, writer.pending_rows) == (2, 11) and not st.dropped_rows


async def test_a_drain_waiting_for_a_store_that_never_opened_returns_at_close(tmp_path: Path) -> None:
    async with never_opened(tmp_path) as store:
        clock = SteppingClock()
        writer = Writer(store, max_pending_rows=1000, clock=clock)
        async with draining(writer) as task:
            writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 10, first_id=1), STREAM)
            for _ in range(20):  # loop turns only (no thread, no I/O): the drain now waits for ready
                await asyncio.sleep(0)
            assert not task.done()
            writer.close()
            # An event wakes it or nothing does: a second is far more than a prompt return needs.
            await asyncio.wait_for(asyncio.shield(task), 1.0)
    assert clock.reads == 0 and writer.pending_rows == 10


# -- 7. receive latency -----------------------------------------------------------------------


async def test_receive_latency_is_measured_on_trade_batches_only(sqlite: SqliteStore) -> None:
    writer = Writer(sqlite, max_pending_rows=10_000, clock=SteppingClock())
    frame = trade_frame(BINANCE_SPOT, 101, first_id=1)
    frame = frame.with_columns(ts_recv=pl.col("ts_event") + pl.int_range(0, 101, dtype=pl.Int64) * 1_000_000)
    writer.put(BINANCE_SPOT, frame, STREAM)  # lags 0, 1, ..., 100 ms
    bybit = trade_frame(BYBIT_LINEAR, 4, first_id=1)
    writer.put(BYBIT_LINEAR, bybit.with_columns(ts_recv=pl.col("ts_event") + 2 * SECOND), BYBIT_STREAM)
    writer.put(BOOK_KEY, book_frame(5, T0), BOOK_STREAM)  # has ts_recv, but is no trade
    writer.put(KLINE_KEY, kline_frame(2, T0), "btcusdt@kline_1m")
    writer.record_gaps(BINANCE_SPOT, STREAM, [Gap(T0, T0 + SECOND, "disconnect")])

    latency = writer.stats.latency
    assert set(latency) == {BINANCE_SPOT, BYBIT_LINEAR}
    assert latency[BINANCE_SPOT] == pytest.approx((0.050, 0.099, 0.100))
    assert latency[BYBIT_LINEAR] == pytest.approx((2.0, 2.0, 2.0))

    later = trade_frame(BINANCE_SPOT, 3, first_id=200)
    writer.put(BINANCE_SPOT, later.with_columns(ts_recv=pl.col("ts_event") + 7 * SECOND), STREAM)
    assert latency[BINANCE_SPOT] == pytest.approx((7.0, 7.0, 7.0))  # the latest batch
