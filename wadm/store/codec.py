"""One codec for every store: a DataFrame batch <-> bytes, plus the batch's index fields.

Batches are Arrow IPC files written by polars with LZ4 compression: columns are stored as
they sit in memory, so a read rebuilds the DataFrame without per-row decoding
(``bench/bench_codec.py`` compares this with BSON arrays).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import polars as pl

from wadm.errors import StoreError

__all__ = ["Batch", "decode_frame", "encode_batch"]



@dataclass(frozen=True, slots=True)
class Batch:
    """A columnar batch ready for a store: index fields and the encoded columns."""

    start: int  # first ts_event, ns
    end: int  # last ts_event, ns
    count: int
    first_id: int | str | None
    last_id: int | str | None
    data: bytes


def encode_batch(frame: pl.DataFrame) -> Batch:
    """Encode a non-empty frame that has ``ts_event`` (sorted) and optionally ``id`` columns."""
    if frame.height == 0:
        raise ValueError("cannot encode an empty batch")
    buf = io.BytesIO()
    frame.write_ipc(buf, compression="lz4")
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
        return pl.read_ipc(io.BytesIO(data))
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise StoreError(f"a stored batch could not be decoded: {exc}") from exc
