"""Stored-batch codecs: trade batches encoded and decoded, with their sizes.

The batches are real: the first USD-M ``@trade`` frames of the recording, decoded by wadm's
Binance protocol into the stored trade schema (``ts_event, ts_recv, id, price, qty, side``).
Two sizes: 20,000 rows (``flush_rows``: a busy symbol's batch) and 500 rows (what a symbol
trading 500 times a second writes at every ``flush_interval`` of 1 s, the common case).
Every variant computes the same index fields (start, end, count, first and last id) as
:func:`wadm.store.codec.encode_batch`, so only the column encoding differs.

Variants:

* ``Arrow IPC, uncompressed (baseline)``: ``write_ipc``/``read_ipc`` (IPC file format) without
  compression: columns are copied as they sit in memory.
* ``wadm: Arrow IPC stream, zstd``: the shipped :func:`encode_batch` / :func:`decode_frame`.
* ``Arrow IPC zstd``.
* ``Arrow IPC stream format, lz4`` / ``zstd``: the same columns and compression written with
  ``write_ipc_stream`` / read with ``read_ipc_stream`` (no file footer). Measured because the
  file-format reader and writer of polars carry a fixed cost per call that dominates small
  batches.
* ``BSON arrays``: pymongo's ``bson.encode`` of a dict of column lists (what a MongoDB document of
  arrays would hold) and ``bson.decode`` back into a polars frame of the same schema.

Three groups: encode+decode (the brief's figure), encode only (the write path, on the event
loop) and decode only (the read path of every API request). Sizes are printed with each row.

Run: ``uv run pytest bench/bench_codec.py --benchmark-only``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import bson
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from bench.conftest import GROUPS, group, paired_ratios, record, recorded_trade_frames
from wadm.records import TRADE_SCHEMA_INT_ID, Market
from wadm.store.codec import Batch, decode_frame, encode_batch
from wadm.venues.binance import plan_trade_connections

SIZES = (20_000, 500)
Compression = Literal["uncompressed", "lz4", "zstd"]
BASELINE = "Arrow IPC, uncompressed (baseline)"
WADM = "wadm: Arrow IPC stream, zstd"


def _batch_frame(rows: int) -> pl.DataFrame:
    frames, ts_recv = recorded_trade_frames("usdm")
    (plan,) = plan_trade_connections(Market.USDM, ("BTCUSDT",), "ws://127.0.0.1:1", trade_stream="trade")
    for payload, ts in zip(frames[:rows], ts_recv[:rows], strict=True):
        plan.protocol.feed(payload, ts)
    frame = plan.protocol.streams["btcusdt@trade"].take().frame
    assert frame is not None and frame.height == rows
    return frame


def _index(frame: pl.DataFrame, data: bytes) -> Batch:
    """The index fields :func:`encode_batch` computes, around other encoded bytes."""
    ts, ids = frame["ts_event"], frame["id"]
    return Batch(int(ts.min()), int(ts.max()), frame.height, ids[0], ids[-1], data)  # type: ignore[arg-type]


def _ipc_encode(frame: pl.DataFrame, compression: Compression) -> Batch:
    buf = io.BytesIO()
    frame.write_ipc(buf, compression=compression)
    return _index(frame, buf.getvalue())


def _ipc_decode(data: bytes) -> pl.DataFrame:
    return pl.read_ipc(io.BytesIO(data))


def _ipc_stream_encode(frame: pl.DataFrame, compression: Compression) -> Batch:
    buf = io.BytesIO()
    frame.write_ipc_stream(buf, compression=compression)
    return _index(frame, buf.getvalue())


def _ipc_stream_decode(data: bytes) -> pl.DataFrame:
    return pl.read_ipc_stream(io.BytesIO(data))


def _bson_encode(frame: pl.DataFrame) -> Batch:
    return _index(frame, bson.encode({name: frame[name].to_list() for name in frame.columns}))


def _bson_decode(data: bytes) -> pl.DataFrame:
    return pl.DataFrame(bson.decode(data), schema=TRADE_SCHEMA_INT_ID)


Codec = tuple[Callable[[pl.DataFrame], Batch], Callable[[bytes], pl.DataFrame]]
CODECS: dict[str, Codec] = {
    BASELINE: (partial(_ipc_encode, compression="uncompressed"), _ipc_decode),
    WADM: (encode_batch, decode_frame),
    "Arrow IPC zstd": (partial(_ipc_encode, compression="zstd"), _ipc_decode),
    "Arrow IPC stream format, lz4": (partial(_ipc_stream_encode, compression="lz4"), _ipc_stream_decode),
    "Arrow IPC stream format, zstd": (partial(_ipc_stream_encode, compression="zstd"), _ipc_stream_decode),
    "BSON arrays": (_bson_encode, _bson_decode),
}
OPS = {"roundtrip": "encode + decode", "encode": "encode only (write path)", "decode": "decode only (read path)"}
for _size in SIZES:
    for _name, _title in OPS.items():
        group(f"codec-{_name}-{_size}", f"codec: {_size:,}-row trade batch, {_title}", kind="time", baseline=BASELINE)

_frame_cache: dict[int, pl.DataFrame] = {}


def _frame(rows: int) -> pl.DataFrame:
    if rows not in _frame_cache:
        _frame_cache[rows] = _batch_frame(rows)
    return _frame_cache[rows]


def _op(op: str, codec: Codec, frame: pl.DataFrame, data: bytes) -> Callable[[], object]:
    encode, decode = codec
    if op == "encode":
        return partial(encode, frame)
    if op == "decode":
        return partial(decode, data)
    return lambda: decode(encode(frame).data)


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("rows", SIZES)
def test_codec(benchmark: Any, rows: int, op: str, codec: str) -> None:
    """Encode and/or decode one batch with one codec."""
    frame = _frame(rows)
    key = f"codec-{op}-{rows}"
    encode, decode = CODECS[codec]
    batch = encode(frame)
    assert (batch.start, batch.end, batch.count) == (
        frame["ts_event"].min(), frame["ts_event"].max(), frame.height)
    assert_frame_equal(decode(batch.data), frame)  # lossless, same schema
    size = len(batch.data)
    note = f"{size:9,} B = {size / frame.height:5.1f} B/row ({size / frame.estimated_size():4.2f} of in-memory)"
    benchmark.group = key
    benchmark.extra_info.update(bytes=size, rows=frame.height)
    fn = _op(op, CODECS[codec], frame, batch.data)
    benchmark(fn)
    paired: list[float] = []
    if codec != BASELINE:
        base = CODECS[BASELINE]
        paired = paired_ratios(_op(op, base, frame, base[0](frame).data), fn)
    record(key, codec, benchmark, per=frame.height, note=note, paired=paired)
    g = GROUPS[key]
    if not g.notes:
        g.notes.append(f"in-memory size of the batch (polars estimated_size): {frame.estimated_size():,} B")
