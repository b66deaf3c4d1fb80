"""The on-disk spool: order, bounds, what survives a restart, and a write cut short."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest

from tests.helpers import files_cannot_grow_past
from wadm.records import BOOK_SNAPSHOTS, TRADES, BatchKey, Market, Venue
from wadm.store.codec import decode_frame, encode_batch
from wadm.store.spool import Spool, SpoolRecord, SpoolWriteError

BTC = BatchKey(TRADES, Venue.BINANCE, Market.SPOT, "BTCUSDT")
ETH = BatchKey(TRADES, Venue.BYBIT, Market.LINEAR, "ETHUSDT")
BOOK = BatchKey(BOOK_SNAPSHOTS, Venue.BINANCE, Market.SPOT, "BTCUSDT")


def _record(key: BatchKey, first_id: int, rows: int = 50, at: int = 1) -> SpoolRecord:
    frame = pl.DataFrame({
        "ts_event": [1_000 * (first_id + i) for i in range(rows)],
        "id": list(range(first_id, first_id + rows)),
        "price": [100.0 + i for i in range(rows)],
    })
    return SpoolRecord(key, f"{key.symbol.lower()}@aggTrade", encode_batch(frame), at)


def _ids(records: list[SpoolRecord]) -> list[int]:
    return [i for r in records for i in decode_frame(r.batch.data)["id"].to_list()]


def _drain(spool: Spool, group: int = 3) -> list[SpoolRecord]:
    out: list[SpoolRecord] = []
    while not spool.empty:
        head = spool.head(group, 10**9)
        out += head
        spool.commit(head)
    return out


def test_records_come_back_in_order_with_their_columns_and_uid(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9, segment_bytes=4096)
    records = [_record(BTC if i % 2 else ETH, 1000 * i, at=i) for i in range(20)]
    assert spool.append(records) == []
    assert spool.batches == 20 and spool.bytes > 0 and spool.oldest_at() == 0
    assert len(list(tmp_path.glob("*.seg"))) > 1  # several segments
    back = _drain(spool)
    assert [r.batch.uid for r in back] == [r.batch.uid for r in records]
    assert [(r.key, r.stream, r.at, r.batch.start, r.batch.end, r.batch.count) for r in back] == [
        (r.key, r.stream, r.at, r.batch.start, r.batch.end, r.batch.count) for r in records]
    assert _ids(back) == _ids(records)
    assert spool.empty and spool.bytes == 0 and spool.oldest_at() is None
    assert list(tmp_path.glob("*.seg")) == []  # written segments are deleted


def test_a_head_is_limited_and_at_least_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9)
    spool.append([_record(BTC, 1000 * i, rows=100) for i in range(5)])
    assert len(spool.head(2, 10**9)) == 2
    assert len(spool.head(10, 250)) == 2  # rows: 100 + 100, the third would pass 250
    assert len(spool.head(10, 10)) == 1  # a batch larger than the limit still comes alone


def test_what_was_not_written_survives_a_restart_and_what_was_is_not_written_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9, segment_bytes=2048)
    records = [_record(BTC, 1000 * i, at=i) for i in range(12)]
    spool.append(records)
    head = spool.head(5, 10**9)
    spool.commit(head)
    spool.close()

    again = Spool(tmp_path, 10**9, segment_bytes=2048)
    again.open()
    assert again.batches == 7 and again.torn_bytes == 0
    assert again.oldest_at() == 5
    assert [r.batch.uid for r in _drain(again)] == [r.batch.uid for r in records[5:]]


def test_a_torn_last_record_is_cut_off_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path, 10**9)
    records = [_record(BTC, 1000 * i) for i in range(4)]
    spool.append(records)
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    whole = segment.stat().st_size
    with segment.open("r+b") as f:  # the last write was cut short by a kill
        f.truncate(whole - 37)

    again = Spool(tmp_path, 10**9)
    with caplog.at_level(logging.ERROR, logger="wadm.store.spool"):
        again.open()
    assert again.batches == 3
    assert again.torn_bytes > 0
    assert any("not a whole record" in r.message for r in caplog.records)
    assert _ids(_drain(again)) == _ids(records[:3])
    # New records after the cut are appended after the kept ones.
    third = Spool(tmp_path, 10**9)
    third.open()
    assert third.empty


def test_garbage_after_the_last_record_is_cut_off(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9)
    spool.append([_record(BTC, 0), _record(BTC, 1000)])
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    with segment.open("ab") as f:
        f.write(b"WSP1\x10\x00\x00\x00garbage")  # a header whose payload never came
    again = Spool(tmp_path, 10**9)
    again.open()
    assert again.batches == 2 and again.torn_bytes == 15
    again.append([_record(BTC, 2000)])
    assert _ids(_drain(again)) == list(range(0, 50)) + list(range(1000, 1050)) + list(range(2000, 2050))


def test_a_damaged_record_in_the_newest_segment_ends_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9)
    spool.append([_record(BTC, 1000 * i) for i in range(3)])
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0xFF  # a flipped byte in the last record's columns: its CRC fails
    segment.write_bytes(bytes(data))
    again = Spool(tmp_path, 10**9)
    again.open()
    assert again.batches == 2 and again.torn_bytes > 0


def test_past_the_bound_the_oldest_segments_are_dropped_and_described(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 6000, segment_bytes=2000)
    dropped = []
    for i in range(30):
        dropped += spool.append([_record(BTC if i % 3 else BOOK, 1000 * i, at=i)])
    assert spool.bytes <= 6000 + 2000  # the bound, and the segment being filled
    lost_rows = sum(rows for d in dropped for _, _, _, rows in d.series.values())
    assert dropped and spool.dropped_batches == sum(d.records for d in dropped)
    assert spool.dropped_rows == lost_rows
    kept = _drain(spool)
    assert len(kept) + spool.dropped_batches == 30
    assert lost_rows + sum(r.batch.count for r in kept) == 30 * 50
    # What was dropped is the oldest: every kept record is newer than every dropped one.
    newest_lost = max(last for d in dropped for _, _, last, _ in d.series.values())
    assert min(r.batch.start for r in kept) > newest_lost
    assert {k for d in dropped for k in d.series} == {BTC, BOOK}


@pytest.mark.parametrize("taken", [1, 2])
def test_segments_being_written_to_the_store_are_not_dropped(tmp_path: Path, taken: int) -> None:
    spool = Spool(tmp_path, 3000, segment_bytes=1000)  # a record per segment
    spool.append([_record(BTC, 1000 * i) for i in range(3)])
    head = spool.head(taken, 10**9)
    assert len(head) == taken
    for i in range(3, 12):
        spool.append([_record(BTC, 1000 * i)])
    spool.commit(head)  # the head was written while later records pushed the spool past its bound
    rest = _drain(spool)
    assert not {r.batch.uid for r in head} & {r.batch.uid for r in rest}
    assert len(rest) + taken + spool.dropped_batches == 12, "each record is written once or dropped, not both"


def test_newest_gives_the_last_record_of_a_series(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9)
    assert spool.newest(BTC) is None
    spool.append([_record(BTC, 0), _record(ETH, 500), _record(BTC, 1000), _record(ETH, 2000)])
    newest = spool.newest(BTC)
    assert newest is not None and decode_frame(newest.batch.data)["id"][-1] == 1049
    assert spool.covering(ETH) == [(500_000, 2_049_000, 100)]
    spool.commit(spool.head(4, 10**9))
    assert spool.newest(BTC) is None and spool.covering(BTC) == []


def test_newest_is_the_record_that_ends_last_wherever_it_was_appended(tmp_path: Path) -> None:
    # A batch whose store write failed while newer ones waited on disk is appended after them:
    # where a stream resumes must still be the end of its newest data, here and after a restart.
    spool = Spool(tmp_path, 10**9, segment_bytes=1500)
    spool.append([_record(BTC, 0), _record(BTC, 1000), _record(BTC, 2000), _record(BTC, 500)])
    assert len(list(tmp_path.glob("*.seg"))) > 1, "the records span segments"
    for view in (spool, _reopened(spool, tmp_path)):
        newest = view.newest(BTC)
        assert newest is not None and decode_frame(newest.batch.data)["id"][-1] == 2049
    again = _reopened(spool, tmp_path)
    again.commit(again.head(3, 10**9))  # written up to the newest: what waits (ids 500-549) is older
    assert again.batches == 1 and again.newest(BTC) is None
    assert _reopened(again, tmp_path).newest(BTC) is None, "the store holds the newest rows, after a restart too"


def _reopened(spool: Spool, folder: Path) -> Spool:
    spool.close()
    again = Spool(folder, 10**9, segment_bytes=1500)
    again.open()
    return again


def test_a_folder_with_only_written_segments_opens_empty(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9)
    spool.append([_record(BTC, 0)])
    spool.commit(spool.head(1, 10**9))
    spool.close()
    again = Spool(tmp_path, 10**9)
    again.open()
    assert again.empty and list(tmp_path.glob("*.seg")) == []


def test_a_full_disk_fails_an_append_after_the_records_it_took_and_leaves_no_torn_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9, segment_bytes=10**7)
    spool.append([_record(BTC, 0)])
    size = spool.bytes
    records = [_record(BTC, 1000 * i) for i in range(1, 6)]
    with files_cannot_grow_past(size * 3 + size // 2):  # room for two more records and half of one
        with pytest.raises(SpoolWriteError) as failed:
            spool.append(records)
        assert failed.value.written == 2 and spool.batches == 3
        spool.append([])  # nothing to write is no failure
    assert [p.stat().st_size for p in tmp_path.glob("*.seg")] == [spool.bytes], "the part written was cut off"
    spool.append(records[2:])  # room again: the rest follows, in order
    again = _reopened(spool, tmp_path)
    assert again.torn_bytes == 0 and _ids(_drain(again)) == _ids([_record(BTC, 0), *records])


def test_a_cursor_that_cannot_be_written_is_no_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path, 10**9)
    spool.append([_record(BTC, 1000 * i) for i in range(4)])
    (tmp_path / "cursor.tmp").mkdir()  # the cursor cannot be written (as on a full disk)
    spool.commit(spool.head(1, 10**9))
    spool.commit(spool.head(1, 10**9))
    assert spool.sync_errors == 2 and spool.batches == 2
    assert [r.message for r in caplog.records].count("The spool cursor is written again") == 0
    assert sum("cursor could not be written" in r.message for r in caplog.records) == 1, "said once, not per write"
    (tmp_path / "cursor.tmp").rmdir()
    rest = spool.head(1, 10**9)
    spool.commit(rest)
    assert [r.message for r in caplog.records].count("The spool cursor is written again") == 1
    rest += _drain(spool)
    assert _ids(rest) == _ids([_record(BTC, 1000 * i) for i in range(2, 4)]) and spool.empty


def test_a_small_bound_holds_with_the_default_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1024 * 1024)  # segments of 16 MB would never let a drop happen
    for i in range(2500):  # about 3 MB
        spool.append([_record(BTC, 1000 * i)])
        assert spool.bytes <= 1024 * 1024 + spool.segment_bytes
    assert spool.dropped_batches > 0 and spool.segment_bytes == 128 * 1024
