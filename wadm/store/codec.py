"""One codec for every store: a DataFrame batch <-> bytes, plus the batch's index fields.

Batches are Arrow IPC *streams* written by polars with zstd compression: columns are stored as
they sit in memory, so a read rebuilds the DataFrame without per-row decoding.
``bench/bench_codec.py`` compared it with the IPC file format (a fixed cost of about 0.25 ms per
write and 0.5 ms per read, the whole cost of a typical 500-row batch), lz4, and BSON arrays
(5x larger, 10x slower on large batches). Batches written in the IPC file format (magic
``ARROW1``) stay readable.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

import polars as pl

from wadm.errors import StoreError

__all__ = ["Batch", "DecodedBatches", "decode_frame", "encode_batch"]



@dataclass(frozen=True, slots=True)
class Batch:
    """A columnar batch ready for a store: index fields and the encoded columns."""

    start: int  # first ts_event, ns
    end: int  # last ts_event, ns
    count: int
    first_id: int | str | None
    last_id: int | str | None
    data: bytes
    # 12 random bytes naming this batch in every store (MongoDB's _id): a write retried after an
    # unknown outcome is recognised as a duplicate instead of stored twice.
    uid: bytes = field(default_factory=lambda: os.urandom(12))


def encode_batch(frame: pl.DataFrame) -> Batch:
    """Encode a non-empty frame that has ``ts_event`` (sorted) and optionally ``id`` columns."""
    if frame.height == 0:
        raise ValueError("cannot encode an empty batch")
    buf = io.BytesIO()
    frame.write_ipc_stream(buf, compression="zstd")
    ts = frame["ts_event"]
    ids = frame["id"] if "id" in frame.columns else None
    return Batch(
        start=int(ts.min()),  # type: ignore[arg-type]
        end=int(ts.max()),  # type: ignore[arg-type]
        count=frame.height,
        first_id=ids[0] if ids is not None else None,
        last_id=ids[-1] if ids is not None else None,
        data=buf.getvalue(),
    )


def decode_frame(data: bytes) -> pl.DataFrame:
    """Decode the bytes of a stored batch back into its DataFrame."""
    try:
        if data[:6] == b"ARROW1":
            return pl.read_ipc(io.BytesIO(data))
        return pl.read_ipc_stream(io.BytesIO(data))
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise StoreError(f"a stored batch could not be decoded: {exc}") from exc


class DecodedBatches:
    """Frames of recently read small batches by their store handle, so that reading them again
    does not decode (nor, for MongoDB, fetch) them again.

    A stored batch never changes (a revision of a bar is a new batch; a sweep deletes whole
    batches, which the index query then no longer lists), so a frame decoded once is good until
    it is evicted: least recently used first, past ``max_bytes`` of frames. Only batches of at
    most ``max_rows`` rows are kept: the bars, gaps and snapshots a store is asked for on every
    analytics request come one minute to a batch, and decoding them was most of a read.
    Thread-safe (SQLite decodes on its reader threads).
    """

    # What a frame costs beyond its columns' buffers (the objects around them), as counted here:
    # without it a bound of one-row frames would hold many times its bytes.
    FRAME_OVERHEAD = 4096

    def __init__(self, *, max_bytes: int = 32 << 20, max_rows: int = 64) -> None:
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self.hits = 0
        self.misses = 0
        self._frames: OrderedDict[Hashable, tuple[pl.DataFrame, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, handle: Hashable) -> pl.DataFrame | None:
        """The frame of a batch read before, or None."""
        with self._lock:
            found = self._frames.get(handle)
            if found is None:
                self.misses += 1
                return None
            self._frames.move_to_end(handle)
            self.hits += 1
            return found[0]

    def put(self, handle: Hashable, frame: pl.DataFrame) -> None:
        """Keep a frame just decoded (if small enough)."""
        if frame.height > self.max_rows:
            return
        size = int(frame.estimated_size()) + self.FRAME_OVERHEAD
        with self._lock:
            if handle in self._frames:
                return
            self._frames[handle] = (frame, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._frames:
                _, (_, dropped) = self._frames.popitem(last=False)
                self._bytes -= dropped
