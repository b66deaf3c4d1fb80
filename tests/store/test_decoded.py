"""The decoded-batch cache both stores keep: small batches only, least recently used out, and a
bound that holds for the one-row frames it mostly keeps."""

from __future__ import annotations

import polars as pl

from wadm.store.codec import DecodedBatches


def _frame(rows: int) -> pl.DataFrame:
    return pl.DataFrame({"ts_event": list(range(rows)), "price": [1.0] * rows})


def test_one_row_frames_are_counted_with_what_they_cost_beyond_their_columns() -> None:
    cache = DecodedBatches(max_bytes=1 << 20)
    for i in range(10_000):
        cache.put(i, _frame(1))
    kept = [i for i in range(10_000) if cache.get(i) is not None]
    assert len(kept) <= (1 << 20) // DecodedBatches.FRAME_OVERHEAD
    assert kept == list(range(10_000 - len(kept), 10_000)), "the least recently used went first"


def test_large_batches_are_not_kept_and_a_read_marks_an_entry_recent() -> None:
    cache = DecodedBatches(max_bytes=3 * (DecodedBatches.FRAME_OVERHEAD + 64), max_rows=4)
    cache.put("big", _frame(5))
    assert cache.get("big") is None
    for key in ("a", "b", "c"):
        cache.put(key, _frame(1))
    assert cache.get("a") is not None  # now the most recent
    cache.put("d", _frame(1))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("d") is not None
