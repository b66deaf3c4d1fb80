"""The store contract: the same tests against every store (see the ``store`` fixture)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from wadm.errors import StoreError
from wadm.records import (
    BOOK_SNAPSHOTS,
    KLINE_SCHEMA,
    KLINES,
    BatchKey,
    Market,
    Venue,
    book_snapshot_schema,
    trade_schema,
)
from wadm.store.base import Store
from wadm.store.codec import encode_batch

from .conftest import RawInsert
from .helpers import BINANCE_SPOT, BYBIT_LINEAR, SECOND, T0, batch, trades

pytestmark = pytest.mark.asyncio

FAR = T0 + 10**6 * SECOND


@pytest.mark.parametrize("key", [BINANCE_SPOT, BYBIT_LINEAR], ids=["binance-int-ids", "bybit-str-ids"])
async def test_round_trip_keeps_dtypes_and_values(store: Store, key: BatchKey) -> None:
    first, b1 = batch(key, T0, 50, first_id=7_000_000_001)
    second, b2 = batch(key, T0 + 50 * SECOND, 30, first_id=7_000_000_051)
    await store.write(key, b1)
    await store.write(key, b2)

    got = await store.read(key, T0, FAR)

    assert got.schema == pl.Schema(trade_schema(key.venue))
    assert_frame_equal(got, pl.concat([first, second]), check_exact=True)


async def test_read_returns_overlapping_batches_only(store: Store) -> None:
    key = BINANCE_SPOT
    frames = []
    for i in range(3):  # batches cover [T0 + 10 i, T0 + 10 i + 9] seconds
        frame, encoded = batch(key, T0 + 10 * i * SECOND, 10, first_id=10 * i)
        frames.append(frame)
        await store.write(key, encoded)

    assert_frame_equal(await store.read(key, T0 + 12 * SECOND, T0 + 15 * SECOND), frames[1])
    assert_frame_equal(await store.read(key, T0 + 9 * SECOND, T0 + 10 * SECOND), pl.concat(frames[:2]))
    # Both bounds are inclusive and rows are not filtered: the whole batch comes back.
    assert_frame_equal(await store.read(key, T0 + 29 * SECOND, FAR), frames[2])
    assert_frame_equal(await store.read(key, 0, T0), frames[0])
    assert_frame_equal(await store.read(key, 0, FAR), pl.concat(frames))


async def test_read_of_nothing_is_an_empty_frame(store: Store) -> None:
    await store.write(BINANCE_SPOT, batch(BINANCE_SPOT, T0)[1])

    assert (await store.read(BINANCE_SPOT, T0 + 10 * SECOND, FAR)).shape == (0, 0)
    assert (await store.read(BINANCE_SPOT, 0, T0 - 1)).shape == (0, 0)
    assert (await store.read(replace(BINANCE_SPOT, table="never_written"), 0, FAR)).shape == (0, 0)


async def test_batches_come_back_in_start_order(store: Store) -> None:
    late, b_late = batch(BINANCE_SPOT, T0 + 100 * SECOND, 5, first_id=100)
    early, b_early = batch(BINANCE_SPOT, T0, 5, first_id=1)
    await store.write(BINANCE_SPOT, b_late)
    await store.write(BINANCE_SPOT, b_early)

    assert_frame_equal(await store.read(BINANCE_SPOT, 0, FAR), pl.concat([early, late]))


async def test_max_rows_reads_only_the_earliest_batches_needed(store: Store) -> None:
    key = BYBIT_LINEAR
    frames = []
    for i in range(4):
        frame, encoded = batch(key, T0 + 10 * i * SECOND, 10, first_id=10 * i)
        frames.append(frame)
        await store.write(key, encoded)

    assert_frame_equal(await store.read(key, 0, FAR, max_rows=1), frames[0])
    assert_frame_equal(await store.read(key, 0, FAR, max_rows=10), frames[0])
    assert_frame_equal(await store.read(key, 0, FAR, max_rows=11), pl.concat(frames[:2]))
    assert_frame_equal(await store.read(key, T0 + 15 * SECOND, FAR, max_rows=15), pl.concat(frames[1:3]))
    assert_frame_equal(await store.read(key, 0, FAR, max_rows=1000), pl.concat(frames))


async def test_max_rows_never_splits_batches_that_share_timestamps(store: Store) -> None:
    key = BINANCE_SPOT
    # a: T0..T0+9 s; b starts at a's last timestamp; c starts later.
    a, b_a = batch(key, T0, 10, first_id=1)
    b, b_b = batch(key, T0 + 9 * SECOND, 10, first_id=11)
    c, b_c = batch(key, T0 + 19 * SECOND + 1, 10, first_id=21)
    for encoded in (b_c, b_b, b_a):
        await store.write(key, encoded)

    assert_frame_equal(await store.read(key, 0, FAR, max_rows=3), pl.concat([a, b]))
    assert_frame_equal(await store.read(key, 0, FAR, max_rows=20), pl.concat([a, b]))
    assert_frame_equal(await store.read(key, 0, FAR, max_rows=21), pl.concat([a, b, c]))


async def test_keys_are_isolated(store: Store) -> None:
    base = BINANCE_SPOT
    keys = [
        base,
        replace(base, symbol="ETHUSDT"),
        replace(base, market=Market.USDM),
        BatchKey(base.table, Venue.BYBIT, Market.SPOT, base.symbol),
        replace(base, table="gaps"),
    ]
    written = {}
    for n, key in enumerate(keys, start=1):
        frame, encoded = batch(key, T0, n, first_id=100 * n)  # same times, different sizes
        written[key] = frame
        await store.write(key, encoded)

    for key in keys:
        assert_frame_equal(await store.read(key, 0, FAR), written[key])
        assert_frame_equal(await store.read(key, 0, FAR, max_rows=1), written[key])


async def test_sweep_deletes_exactly_the_expired_batches(store: Store) -> None:
    key, other = BINANCE_SPOT, replace(BINANCE_SPOT, symbol="ETHUSDT")
    kept = []
    for i in range(3):  # ends at T0 + 9 s, + 19 s, + 29 s (event time)
        frame, encoded = batch(key, T0 + 10 * i * SECOND, 10, first_id=10 * i)
        kept.append(frame)
        await store.write(key, encoded)
    await store.write(other, batch(other, T0)[1])  # ends at T0 + 9 s
    untouched, encoded = batch(replace(key, table="bars_1m"), T0)
    await store.write(replace(key, table="bars_1m"), encoded)

    # "end < older_than": the batch ending exactly at the cut-off stays.
    assert await store.sweep(key.table, T0 + 19 * SECOND) == 2
    assert await store.sweep(key.table, T0 + 19 * SECOND) == 0

    assert_frame_equal(await store.read(key, 0, FAR), pl.concat(kept[1:]))
    assert (await store.read(other, 0, FAR)).shape == (0, 0)
    assert_frame_equal(await store.read(replace(key, table="bars_1m"), 0, FAR), untouched)
    assert await store.sweep("never_written", FAR) == 0
    assert await store.sweep(key.table, FAR) == 2


async def test_reads_again_see_new_batches_and_not_swept_ones(store: Store) -> None:
    # Small batches read before are kept decoded: a later read must still list exactly what is
    # stored (a bar's new revision is a new batch, a sweep deletes whole batches).
    key = replace(BINANCE_SPOT, table="bars_1m")
    frames = []
    for i in range(4):
        frame, encoded = batch(key, T0 + 10 * i * SECOND, 3, first_id=10 * i)
        frames.append(frame)
        await store.write(key, encoded)
    for _ in range(2):
        assert_frame_equal(await store.read(key, 0, FAR), pl.concat(frames))
    assert await store.sweep(key.table, T0 + 15 * SECOND) == 2
    revised, encoded = batch(key, T0 + 20 * SECOND, 2, first_id=20)  # same start as the third
    await store.write(key, encoded)
    again = await store.read(key, 0, FAR)
    assert again.height == 3 + 2 + 3
    assert_frame_equal(again.filter(pl.col("ts_event") >= T0 + 30 * SECOND), frames[3])
    assert sorted(again["id"].to_list()) == sorted([*frames[2]["id"], *revised["id"], *frames[3]["id"]])
    assert_frame_equal(await store.read(key, T0 + 30 * SECOND, FAR), frames[3])


async def test_a_batch_written_after_a_sweep_is_read_as_itself(store: Store) -> None:
    # SQLite gives a deleted row's id to the next insert: a batch read (and kept decoded) before a
    # sweep must not stand in for the one written after it.
    bars, gaps = replace(BINANCE_SPOT, table="bars_1m"), replace(BINANCE_SPOT, table="gaps")
    old, encoded = batch(bars, T0, 2, first_id=1)
    await store.write(bars, encoded)
    assert_frame_equal(await store.read(bars, 0, FAR), old)
    assert await store.sweep(bars.table, FAR) == 1
    new, encoded = batch(gaps, T0, 3, first_id=100)
    await store.write(gaps, encoded)
    assert_frame_equal(await store.read(gaps, 0, FAR), new)
    assert (await store.read(bars, 0, FAR)).height == 0


async def test_sweep_is_exact_to_the_nanosecond(store: Store) -> None:
    end = T0 + 123_456_789  # not on a millisecond
    await store.write(BINANCE_SPOT, encode_batch(trades(BINANCE_SPOT, [end - 5, end])))

    assert await store.sweep(BINANCE_SPOT.table, end) == 0
    assert await store.sweep(BINANCE_SPOT.table, end + 1) == 1


async def test_reads_run_concurrently_with_writes(store: Store) -> None:
    key, n, rows = BYBIT_LINEAR, 20, 25
    frames = [batch(key, T0 + i * rows * SECOND, rows, first_id=i * rows)[0] for i in range(n)]
    for i, frame in enumerate(frames):
        write = asyncio.ensure_future(store.write(key, encode_batch(frame)))
        got = await store.read(key, 0, FAR)  # while that write is in flight
        await write
        # Every finished write is seen; the one in flight is seen whole or not at all, never torn.
        assert got.height in (i * rows, (i + 1) * rows), (i, got.height)
        if got.height:
            assert_frame_equal(got, pl.concat(frames[: got.height // rows]))
    assert_frame_equal(await store.read(key, 0, FAR), pl.concat(frames))


async def test_healthcheck_is_true_when_open(store: Store) -> None:
    assert await store.healthcheck() is True


async def test_a_corrupt_stored_batch_raises_store_error(store: Store, insert_raw: RawInsert) -> None:
    good, encoded = batch(BINANCE_SPOT, T0)
    await store.write(BINANCE_SPOT, encoded)
    await insert_raw(BINANCE_SPOT, T0 + 100 * SECOND, T0 + 110 * SECOND, 10, b"ARROW1\x00\x00 not really")

    assert_frame_equal(await store.read(BINANCE_SPOT, 0, T0 + 50 * SECOND), good)
    with pytest.raises(StoreError, match="could not be decoded"):
        await store.read(BINANCE_SPOT, 0, FAR)


async def test_bybit_and_binance_frames_can_share_a_table(store: Store) -> None:
    binance = trades(BINANCE_SPOT, [T0, T0 + 1])
    bybit = trades(BYBIT_LINEAR, [T0, T0 + 1])
    await store.write(BINANCE_SPOT, encode_batch(binance))
    await store.write(BYBIT_LINEAR, encode_batch(bybit))

    assert (await store.read(BINANCE_SPOT, 0, FAR))["id"].dtype == pl.Int64
    assert (await store.read(BYBIT_LINEAR, 0, FAR))["id"].dtype == pl.String


@pytest.mark.asyncio
async def test_write_many_is_one_call_and_idempotent_per_batch(store: Store) -> None:
    first = batch(BINANCE_SPOT, T0, 5, first_id=1)
    second = batch(BINANCE_SPOT, T0 + 1000 * SECOND, 5, first_id=6)
    third = batch(BYBIT_LINEAR, T0, 3)
    items = [(BINANCE_SPOT, first[1]), (BINANCE_SPOT, second[1]), (BYBIT_LINEAR, third[1])]
    await store.write_many(items)
    await store.write_many(items)  # a retry after an unknown outcome stores nothing twice
    got = await store.read(BINANCE_SPOT, 0, 2**62)
    assert got.height == 10 and got["id"].n_unique() == 10
    assert (await store.read(BYBIT_LINEAR, 0, 2**62)).height == 3


async def test_book_snapshots_and_klines_round_trip(store: Store) -> None:
    """List columns (book levels) and nullable columns (Bybit klines) survive every store."""
    book_key = BatchKey(BOOK_SNAPSHOTS, Venue.BINANCE, Market.USDM, "BTCUSDT")
    rows = [(T0 + k * SECOND, T0 + k * SECOND - 7, T0 + k * SECOND - 3, 10 + k, 100.005, 0.01,
             *([1.5, 2.5, -0.25] * 3), [100.0, 99.99], [1.0, 0.5], [100.01], [2.0]) for k in range(3)]
    book = pl.DataFrame(rows, schema=book_snapshot_schema(), orient="row")
    kline_key = BatchKey(KLINES, Venue.BYBIT, Market.LINEAR, "SOLUSDT")
    klines = pl.DataFrame([(T0, T0 + 5, 150.0, 151.0, 149.5, 150.5, 12.0, 1806.0, None, None, None)],
                          schema=KLINE_SCHEMA, orient="row")
    await store.write_many([(book_key, encode_batch(book)), (kline_key, encode_batch(klines))])
    assert_frame_equal(await store.read(book_key, T0, FAR), book, check_exact=True)
    assert_frame_equal(await store.read(kline_key, T0, FAR), klines, check_exact=True)


async def test_latest_is_the_batch_that_ends_last(store: Store) -> None:
    assert (await store.latest(BINANCE_SPOT)).height == 0
    first, b1 = batch(BINANCE_SPOT, T0, 5, first_id=1)
    second, b2 = batch(BINANCE_SPOT, T0 + 10 * SECOND, 5, first_id=6)
    backfill, b3 = batch(BINANCE_SPOT, T0 + 5 * SECOND, 2, first_id=100)  # written last, starts earlier
    await store.write_many([(BINANCE_SPOT, b1), (BINANCE_SPOT, b2), (BINANCE_SPOT, b3)])
    assert_frame_equal(await store.latest(BINANCE_SPOT), second, check_exact=True)
    assert (await store.latest(BYBIT_LINEAR)).height == 0


async def test_latest_before_ignores_what_ends_later(store: Store) -> None:
    # A restart asks where the previous run's data ends, not where this run's first batches do.
    first, b1 = batch(BINANCE_SPOT, T0, 5, first_id=1)
    live, b2 = batch(BINANCE_SPOT, T0 + 60 * SECOND, 5, first_id=50)
    await store.write_many([(BINANCE_SPOT, b1), (BINANCE_SPOT, b2)])
    assert_frame_equal(await store.latest(BINANCE_SPOT, before=T0 + 30 * SECOND), first, check_exact=True)
    assert_frame_equal(await store.latest(BINANCE_SPOT), live, check_exact=True)
    assert (await store.latest(BINANCE_SPOT, before=T0 + 4 * SECOND)).height == 0  # it ends at T0 + 4 s
