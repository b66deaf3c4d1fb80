"""The store contract: batches in, DataFrames out.

Every store keeps one record per batch of one (table, venue, market, symbol) series, with index
fields ``start``/``end`` (ts_event, ns), ``count`` and first/last id, and the columns encoded by
:mod:`wadm.store.codec`. Reads select the batches overlapping a range and rebuild a DataFrame.
Retention deletes batches whose ``end`` is older than the table's retention (event time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import polars as pl

from wadm.records import BatchKey
from wadm.store.codec import Batch

__all__ = ["BatchMeta", "Store", "select_batches"]


@dataclass(frozen=True, slots=True)
class BatchMeta:
    """The index fields of a stored batch and its row handle."""

    handle: object  # store-specific identity (row id, ObjectId)
    start: int
    end: int
    count: int


class Store(Protocol):
    """What the pipeline writes to and the API reads from."""

    name: str

    async def open(self) -> None:
        """Connect, create tables and indexes."""
        ...

    async def close(self) -> None:
        """Release connections; pending work is finished first."""
        ...

    async def write(self, key: BatchKey, batch: Batch) -> None:
        """Store one batch. Raises :class:`~wadm.errors.StoreError`; the caller retries."""
        ...

    async def write_many(self, items: Sequence[tuple[BatchKey, Batch]]) -> None:
        """Store several batches in one round trip.

        Idempotent per batch ``uid``: when it raises :class:`~wadm.errors.StoreError` the caller
        retries all of them, and batches that were stored already are not stored twice.
        """
        ...

    async def read(self, key: BatchKey, start: int, end: int, *, max_rows: int | None = None) -> pl.DataFrame:
        """Rows of the batches of ``key`` that overlap ``[start, end]`` (ns), in batch order.

        With ``max_rows``, only the earliest batches needed to hold that many rows (plus any
        batch that overlaps the last one chosen) are decoded. Rows are not filtered: callers
        filter by ``ts_event`` themselves. Returns an empty frame when nothing overlaps.
        """
        ...

    async def latest(self, key: BatchKey, *, before: int | None = None) -> pl.DataFrame:
        """Rows of the batch of ``key`` that ends last (where the stored data ends); empty when none.

        With ``before`` (ns), only batches that end before it count (what a previous run stored).
        """
        ...

    async def sweep(self, table: str, older_than: int) -> int:
        """Delete batches of ``table`` whose ``end`` is before ``older_than`` (ns); returns how many."""
        ...

    async def healthcheck(self) -> bool:
        """True when the store answers."""
        ...


def select_batches(metas: Sequence[BatchMeta], max_rows: int | None) -> list[BatchMeta]:
    """Choose the earliest batches (by ``start``) that hold ``max_rows`` rows.

    Batches that start before the last chosen batch ends are kept too, so rows sharing a
    timestamp across batch boundaries are never cut in half.
    """
    ordered = sorted(metas, key=lambda m: (m.start, m.end))
    if max_rows is None:
        return ordered
    chosen: list[BatchMeta] = []
    rows = 0
    horizon: int | None = None
    for meta in ordered:
        if horizon is not None and rows >= max_rows and meta.start > horizon:
            break
        chosen.append(meta)
        rows += meta.count
        horizon = meta.end if horizon is None else max(horizon, meta.end)
    return chosen
