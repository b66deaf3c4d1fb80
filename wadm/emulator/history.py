"""The trades a synthetic feed generated, kept (bounded) for the REST endpoints.

Every batch a feed generates is appended in id order, whether or not anybody
received it, so a client that lost trades during a drop or a silence can
backfill them (Binance ``aggTrades?fromId=``, Bybit ``recent-trade``).

PERF: trades generated while nobody could receive them are not generated at
all: the feed records a `SkippedRun` (ids, time, start price and a seed) and
the history turns it into real trades only when a query touches it. The result
is the same every time, since the seed is fixed.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeVar

if TYPE_CHECKING:
    from wadm.emulator.market import TradeBatch

__all__ = ["AggRow", "SkippedRun", "TradeHistory", "TradeRow"]


@dataclass(frozen=True, slots=True)
class SkippedRun:
    """Trades nobody could receive, stored as the recipe to regenerate them.

    Attributes:
        ts_ms: Trade time of the run.
        first_id: First trade id.
        count: Number of trades.
        first_agg_id: First aggregate id.
        agg_count: Number of aggregates the run covers.
        ticks: Price (in ticks) the run starts from.
        seed: Seed of the run's random walk.
    """

    ts_ms: int
    first_id: int
    count: int
    first_agg_id: int
    agg_count: int
    ticks: int
    seed: int


class AggRow(NamedTuple):
    """One aggregate trade as the REST endpoints return it."""

    agg_id: int
    price: bytes
    qty: bytes
    first_id: int
    last_id: int
    ts_ms: int
    maker: bool
    """Whether the buyer was the maker (the seller was the aggressor)."""


class TradeRow(NamedTuple):
    """One trade as Bybit's ``recent-trade`` returns it."""

    trade_id: int
    price: bytes
    qty: bytes
    ts_ms: int
    maker: bool


_Row = TypeVar("_Row", AggRow, TradeRow)


class TradeHistory:
    """Bounded, id-ordered store of a feed's batches (oldest evicted first)."""

    def __init__(self, capacity: int, materialize: Callable[[SkippedRun], TradeBatch]) -> None:
        """Create an empty history.

        Args:
            capacity: Trades to keep; whole batches are evicted beyond it.
            materialize: Turns a skipped run into its trades.
        """
        self.capacity = capacity
        self._materialize = materialize
        self._entries: list[TradeBatch | SkippedRun] = []
        self._first_aggs: list[int] = []
        self._times: list[int] = []
        self._head = 0
        self._trades = 0

    def __len__(self) -> int:
        return self._trades

    def add(self, entry: TradeBatch | SkippedRun) -> None:
        """Append a batch (or a skipped run) and evict the oldest beyond capacity."""
        self._entries.append(entry)
        self._first_aggs.append(entry.first_agg_id)
        self._times.append(entry.ts_ms)
        self._trades += entry.count
        entries = self._entries
        while self._trades > self.capacity and self._head < len(entries) - 1:
            self._trades -= entries[self._head].count
            self._head += 1
        if self._head > 1024 and self._head * 2 > len(entries):
            head = self._head
            del entries[:head], self._first_aggs[:head], self._times[:head]
            self._head = 0

    def batches(self) -> Iterator[TradeBatch]:
        """Every kept batch, oldest first (skipped runs are generated)."""
        for i in range(self._head, len(self._entries)):
            yield self._entry(i)

    @property
    def first_agg_id(self) -> int | None:
        """Oldest aggregate id still kept, or None when empty."""
        return self._first_aggs[self._head] if self._head < len(self._entries) else None

    def aggs_from_id(self, from_id: int, limit: int) -> list[AggRow]:
        """Up to ``limit`` aggregates with id >= ``from_id``, oldest first.

        An id older than the history starts at the oldest kept aggregate.
        """
        index = max(self._head, bisect.bisect_right(self._first_aggs, from_id, lo=self._head) - 1)
        out: list[AggRow] = []
        for row in self._aggs_from(index):
            if row.agg_id < from_id:
                continue
            out.append(row)
            if len(out) >= limit:
                break
        return out

    def aggs_between(self, start_ms: int | None, end_ms: int | None, limit: int) -> list[AggRow]:
        """Aggregates with ``start_ms <= T <= end_ms``, oldest first.

        With only ``end_ms`` (or neither bound), the most recent ``limit``
        aggregates up to ``end_ms``; otherwise the oldest from ``start_ms``.
        """
        if start_ms is None:
            return self._recent(self._entry_aggs, limit, end_ms)
        index = max(self._head, bisect.bisect_left(self._times, start_ms, lo=self._head))
        out: list[AggRow] = []
        for row in self._aggs_from(index):
            if end_ms is not None and row.ts_ms > end_ms:
                break
            if row.ts_ms >= start_ms:
                out.append(row)
                if len(out) >= limit:
                    break
        return out

    def recent_trades(self, limit: int) -> list[TradeRow]:
        """The last ``limit`` trades, newest first."""
        rows = self._recent(self._entry_trades, limit, None)
        rows.reverse()
        return rows

    # ------------------------------------------------------------ internals

    def _recent(self, expand: Callable[[TradeBatch], Iterable[_Row]], limit: int, end_ms: int | None) -> list[_Row]:
        chunks: list[list[_Row]] = []
        total = 0
        index = len(self._entries) - 1
        if end_ms is not None:
            index = min(index, bisect.bisect_right(self._times, end_ms, lo=self._head) - 1)
        while index >= self._head and total < limit:
            rows = list(expand(self._entry(index)))
            chunks.append(rows)
            total += len(rows)
            index -= 1
        out = [row for chunk in reversed(chunks) for row in chunk]
        return out[-limit:] if limit > 0 else []

    def _entry(self, index: int) -> TradeBatch:
        entry = self._entries[index]
        if isinstance(entry, SkippedRun):
            batch = self._materialize(entry)
            self._entries[index] = batch
            return batch
        return entry

    def _aggs_from(self, index: int) -> Iterator[AggRow]:
        for i in range(index, len(self._entries)):
            yield from self._entry_aggs(self._entry(i))

    @staticmethod
    def _entry_aggs(batch: TradeBatch) -> Iterator[AggRow]:
        ts = batch.ts_ms
        tid = batch.first_id
        aid = batch.first_agg_id
        prices, makers = batch.prices, batch.makers
        if batch.aggs is None:
            for i, (p, q) in enumerate(zip(prices, batch.qtys, strict=True)):
                yield AggRow(aid + i, p, q, tid + i, tid + i, ts, makers[i])
        else:
            for j, (first, last, qty) in enumerate(batch.aggs):
                yield AggRow(aid + j, prices[first], qty, tid + first, tid + last, ts, makers[first])

    @staticmethod
    def _entry_trades(batch: TradeBatch) -> Iterator[TradeRow]:
        ts = batch.ts_ms
        tid = batch.first_id
        for i, (p, q, m) in enumerate(zip(batch.prices, batch.qtys, batch.makers, strict=True)):
            yield TradeRow(tid + i, p, q, ts, m)
