"""The writer with its on-disk spool, against real stores: a store that dies, one that is slow,
a stop during an outage, and a spool past its bound. Every delivered row ends up stored exactly
once or recorded in a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from tests.helpers import files_cannot_grow_past, free_port, until
from tests.integration.test_outage import Nx
from tests.store.helpers import BINANCE_SPOT, SECOND, T0
from tests.unit.test_writer import (
    EVERYTHING,
    GAPS_KEY,
    STREAM,
    WAIT,
    draining,
    ids,
    stored_in_write_order,
    trade_frame,
    write_locked,
)
from wadm.pipeline.writer import SPILL_ROWS, SPOOL_RETRY_S, Writer
from wadm.records import BatchKey
from wadm.store.codec import Batch
from wadm.store.mongo import MongoStore
from wadm.store.spool import Spool
from wadm.store.sqlite import SqliteStore
from wadm.venues.base import Gap

pytestmark = pytest.mark.asyncio

S = TypeVar("S", bound=MongoStore)


def _spool(folder: Path, max_bytes: int = 10**9, segment_bytes: int = 64 * 1024) -> Spool:
    spool = Spool(folder, max_bytes, segment_bytes=segment_bytes)
    spool.open()
    return spool


@contextlib.asynccontextmanager
async def _writer_on_nx(tmp_path: Path, make: Callable[[str], S], max_pending_rows: int, *,
                        segment_bytes: int = 64 * 1024, clock: Callable[[], float] = time.monotonic
                        ) -> AsyncIterator[tuple[Nx, S, Spool, Writer]]:
    """nx-27017 up, a store on it, a spool and a writer ready to write; the store closed and the
    server killed afterwards."""
    nx = Nx(tmp_path)
    await nx.start()
    store = make(nx.uri)
    spool = _spool(tmp_path / "spool", segment_bytes=segment_bytes)
    writer = Writer(store, max_pending_rows=max_pending_rows, spool=spool, clock=clock)
    try:
        await store.open()
        writer.ready.set()
        yield nx, store, spool, writer
    finally:
        await store.close()
        if nx.proc is not None and nx.proc.returncode is None:
            await nx.kill()


async def test_an_outage_goes_to_the_spool_and_is_written_in_order_exactly_once(tmp_path: Path) -> None:
    def make(uri: str) -> MongoStore:
        return MongoStore(uri, server_selection_timeout=0.3)

    async with _writer_on_nx(tmp_path, make, 10_000) as (nx, store, spool, writer):
        async with draining(writer) as task:
            writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 50, first_id=1), STREAM)
            await until(lambda: writer.stats.batches == 1, WAIT, "the first batch to be written")
            await nx.kill()
            writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=51), STREAM)
            await until(lambda: writer.stats.store_errors >= 1, WAIT, "a write to fail")
            for first in range(151, 2151, 100):
                writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=first), STREAM)
            # Nothing waits in memory: the batch that failed and everything after it is on disk.
            assert (writer.pending_batches, writer.pending_rows) == (0, 0)
            assert spool.batches == 21 and spool.bytes > 0
            assert writer.behind(BINANCE_SPOT, *EVERYTHING, now=2**62) == Gap(
                T0 + 51 * SECOND, T0 + 2150 * SECOND, "not_yet_written", 2100)
            newest = writer.newest_spooled(BINANCE_SPOT)
            assert newest is not None and ids(newest)[-1] == 2150

            await nx.start()
            await until(lambda: spool.empty and writer.stats.store_ok, WAIT, "the spool to be written")
            writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 10, first_id=2151), STREAM)
            await until(lambda: writer.stats.rows == 2160, WAIT, "the next batch to be written")
            assert writer.pending_batches == 0 and spool.empty  # back to memory once the spool is empty
            writer.close()
            await asyncio.wait_for(task, WAIT)
        assert ids(await store.read(BINANCE_SPOT, *EVERYTHING)) == list(range(1, 2161))
        assert not writer.stats.dropped_rows and list((tmp_path / "spool").glob("*.seg")) == []


async def test_a_stop_during_an_outage_leaves_the_rest_to_the_next_start(tmp_path: Path) -> None:
    nx = Nx(tmp_path)
    await nx.start()
    await nx.kill()  # down from the start: nothing can be written
    store = MongoStore(nx.uri, server_selection_timeout=0.2)
    writer = Writer(store, max_pending_rows=10_000, spool=_spool(tmp_path / "spool"))
    writer.ready.set()
    async with draining(writer) as task:
        for first in range(1, 1001, 100):
            writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=first), STREAM)
        await until(lambda: writer.stats.store_errors >= 1, WAIT, "a write to fail")
        writer.close()
        await asyncio.wait_for(task, WAIT)  # it does not wait for the store: the spool keeps the rows
    assert writer.pending_rows == 0
    assert writer.spool is not None
    writer.spool.close()
    await store.close()

    await nx.start()
    store = MongoStore(nx.uri, server_selection_timeout=2)
    again = _spool(tmp_path / "spool")
    assert again.batches == 10
    writer = Writer(store, max_pending_rows=10_000, spool=again)
    try:
        await store.open()
        writer.ready.set()
        async with draining(writer) as task:
            writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 5, first_id=1001), STREAM)  # new rows go after
            await until(lambda: again.empty and writer.stats.rows == 1005, WAIT, "the spool, then the new rows")
            writer.close()
            await asyncio.wait_for(task, WAIT)
        assert ids(await store.read(BINANCE_SPOT, *EVERYTHING)) == list(range(1, 1006))
    finally:
        await store.close()
        await nx.kill()


async def test_a_slow_store_costs_no_memory_past_the_spill_bound(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "wadm.db")
    await store.open()
    spool = _spool(tmp_path / "spool")
    writer = Writer(store, max_pending_rows=10**9, spool=spool)
    writer.ready.set()
    try:
        async with draining(writer) as task:
            with write_locked(store):  # every store call waits for the lock
                first = 1
                while first < 3 * SPILL_ROWS:
                    writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 5000, first_id=first), STREAM)
                    assert writer.pending_rows <= SPILL_ROWS + 5000
                    first += 5000
                    await asyncio.sleep(0)
                assert spool.batches > 0
            await until(lambda: spool.empty and writer.pending_rows == 0, 60, "everything to be written")
            writer.close()
            await asyncio.wait_for(task, WAIT)
        assert ids(await store.read(BINANCE_SPOT, *EVERYTHING)) == list(range(1, first))
        firsts = [row[2] for row in stored_in_write_order(store) if row[0] == "trades"]
        assert firsts == sorted(firsts, key=lambda first: int(str(first)))  # in order, each once
    finally:
        await store.close()


async def test_past_the_spool_bound_the_oldest_rows_are_dropped_and_recorded_as_gaps(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = MongoStore(f"mongodb://127.0.0.1:{free_port()}/", server_selection_timeout=0.05)
    spool = _spool(tmp_path / "spool", max_bytes=150_000, segment_bytes=20_000)
    writer = Writer(dead, max_pending_rows=10_000, spool=spool)
    writer.ready.set()
    caplog.set_level(logging.ERROR, logger="wadm.pipeline.writer")
    async with draining(writer) as task:
        writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=1), STREAM)
        await until(lambda: writer.stats.store_errors >= 1, WAIT, "a write to fail")
        for first in range(101, 20_001, 100):
            writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=first), STREAM)
        writer.close()
        await asyncio.wait_for(task, WAIT)
    await dead.close()
    lost = writer.stats.dropped_rows["spool_full"]
    # Within the bound, plus the segment being filled and the gaps of the drops (carried over, never dropped).
    assert lost > 0 and spool.bytes <= 150_000 + 20_000 + 20_000
    assert any("Dropped" in r.message and "spool" in r.message for r in caplog.records)

    # The rows kept plus the rows recorded in gaps are the rows delivered, exactly.
    store = SqliteStore(tmp_path / "later.db")
    await store.open()
    try:
        writer = Writer(store, max_pending_rows=10_000, spool=spool)
        writer.ready.set()
        async with draining(writer) as task:
            await until(lambda: spool.empty, WAIT, "the spool to be written")
            writer.close()
            await asyncio.wait_for(task, WAIT)
        kept = ids(await store.read(BINANCE_SPOT, *EVERYTHING))
        gaps = await store.read(GAPS_KEY, *EVERYTHING)
        assert set(gaps["reason"]) == {"spool_full"}
        assert len(kept) + int(gaps["missing"].sum()) == 20_000 == len(kept) + lost
        assert kept == list(range(20_001 - len(kept), 20_001))  # the oldest went first
        covered = sorted(zip(gaps["ts_event"], gaps["end"], strict=True))
        assert covered[0][0] == T0 + SECOND and covered[-1][1] < T0 + (20_001 - len(kept)) * SECOND
    finally:
        await store.close()


class _Recording(MongoStore):
    """A real MongoDB store that notes the first trade id of every batch it wrote, in write order."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri, server_selection_timeout=0.3)
        self.written: list[object] = []

    async def write_many(self, items: Sequence[tuple[BatchKey, Batch]]) -> None:
        await super().write_many(items)
        self.written += [batch.first_id for _, batch in items]


async def test_a_group_that_fails_while_newer_batches_are_on_disk_is_still_written_first(tmp_path: Path) -> None:
    async with _writer_on_nx(tmp_path, _Recording, 1000) as (nx, store, spool, writer):
        async with draining(writer) as task:
            writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=1), STREAM)
            await until(lambda: writer.stats.batches == 1, WAIT, "the first batch to be written")
            assert nx.proc is not None
            nx.proc.send_signal(signal.SIGSTOP)  # the server hangs: a write waits for its answer
            writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=101), STREAM)
            await until(lambda: writer._inflight == 1, WAIT, "its write to be under way")
            for first in range(201, 1401, 100):  # past the bound: to disk, all but the batch being written
                writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=first), STREAM)
            assert spool.batches == 12 and writer.stats.store_errors == 0
            await nx.kill()  # and dies: the write under way fails
            await until(lambda: writer.stats.store_errors >= 1, WAIT, "the write under way to fail")
            assert writer.pending_batches == 1 and spool.batches == 12, "the older batch waits in front"
            await nx.start()
            await until(lambda: spool.empty and writer.pending_rows == 0, WAIT, "everything to be written")
            writer.close()
            await asyncio.wait_for(task, WAIT)
        assert store.written == list(range(1, 1401, 100)), "written in the order delivered"
        assert ids(await store.read(BINANCE_SPOT, *EVERYTHING)) == list(range(1, 1401))


async def test_a_full_disk_keeps_batches_in_memory_within_the_bound_and_in_order(tmp_path: Path) -> None:
    now = [0.0]
    async with _writer_on_nx(tmp_path, _Recording, 1000, segment_bytes=10**7, clock=lambda: now[0]) as (
            nx, store, spool, writer):
        async with draining(writer) as task:
            writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=1), STREAM)
            await until(lambda: writer.stats.batches == 1, WAIT, "the first batch to be written")
            await nx.kill()
            with files_cannot_grow_past(10_000):  # the store is down and the disk fills up
                writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=101), STREAM)
                await until(lambda: writer.stats.store_errors >= 1, WAIT, "a write to fail")
                for first in range(201, 3001, 100):
                    writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=first), STREAM)
                    assert writer.pending_rows <= 1000 + 100, "memory holds no more than the bound"
                    await asyncio.sleep(0)
                assert 0 < spool.batches < 28 and writer.stats.dropped_rows["store_backlog"] > 0
                assert writer.stats.spool_errors == 1, "the spool is not tried again at once"
            now[0] += SPOOL_RETRY_S  # space again: what waits in memory goes to the spool, after what is there
            writer.put(BINANCE_SPOT, trade_frame(BINANCE_SPOT, 100, first_id=3001), STREAM)
            assert writer.pending_rows == 0 and writer.stats.spool_errors == 1
            await nx.start()
            await until(lambda: spool.empty and writer.pending_rows == 0, WAIT, "everything to be written")
            writer.close()
            await asyncio.wait_for(task, WAIT)
        firsts = [first for first in store.written if isinstance(first, int)]
        assert firsts == sorted(firsts), "written in the order delivered"
        kept = ids(await store.read(BINANCE_SPOT, *EVERYTHING))
        gaps = await store.read(GAPS_KEY, *EVERYTHING)
        assert set(gaps["reason"]) == {"store_backlog"}
        assert len(kept) == len(set(kept)) and len(kept) + int(gaps["missing"].sum()) == 3100, \
            "every row delivered is stored once or recorded in a gap"
        assert kept[:200] == list(range(1, 201)), "what the spool took before it filled up is kept"
