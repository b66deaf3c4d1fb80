"""Order-book sequencing: one explicit state machine per venue rule.

Theory of operation
-------------------
A sync object owns one instrument's :class:`~wadm.book.l2.L2Book` and decides, for every diff,
whether it applies, is old (ignored), or proves that updates were lost. It never fetches: when
it needs a REST snapshot it returns :class:`NeedSnapshot`, and the collector (which owns the
network, the request-weight budget and the retries) calls :meth:`BinanceBookSync.on_snapshot`
later. A book that is not provably exact is never ``live``.

Binance (PROTOCOLS.md §1.3 spot, §2.3 USD-M)::

    RESYNCING --first diff--> (NeedSnapshot) --snapshot bridges the buffer--> LIVE
        ^  diffs are buffered (bounded) meanwhile; a snapshot older than the buffer, or one      |
        |  that leaves a hole before the first buffered diff, asks for another (buffer kept)      |
        +------------------ sequence break or crossed book: clear, buffer, NeedSnapshot ----------+

* spot: a diff is old when ``u <= id``; it continues when ``U <= id + 1``; else updates are lost.
* USD-M: after a snapshot, drop diffs with ``u < lastUpdateId``; the first must satisfy
  ``U <= lastUpdateId <= u``; every later one must have ``pu`` equal to the previous ``u``.
  ``u <= previous u`` is a duplicate (two connections overlap during a rotation).

Bybit (§3.2): a ``snapshot`` (or any message with ``u == 1``, a service restart) replaces the
book; a delta must have ``u == id + 1``; ``u <= id`` is a duplicate; anything else is a gap,
answered by :class:`Resubscribe` (Bybit re-sends a snapshot on subscription).
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from wadm.book.l2 import L2Book, Level

__all__ = [
    "BinanceBookSync",
    "BookState",
    "BybitBookSync",
    "NeedSnapshot",
    "Resubscribe",
]


class BookState(enum.StrEnum):
    """Whether a book may be served."""

    LIVE = "live"
    RESYNCING = "resyncing"


@dataclass(frozen=True, slots=True)
class NeedSnapshot:
    """The collector should fetch a REST snapshot for ``symbol`` (paced, with retries)."""

    symbol: str
    reason: str


@dataclass(frozen=True, slots=True)
class Resubscribe:
    """The collector should unsubscribe and subscribe ``topic`` again to get a fresh snapshot."""

    symbol: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Diff:
    first: int  # U
    last: int  # u
    prev: int  # pu (USD-M), -1 when absent
    bids: Sequence[Level]
    asks: Sequence[Level]


class _BookSync:
    """What every venue's book sync keeps: the book, its state, and the resyncs so far."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.book = L2Book()
        self.state = BookState.RESYNCING
        self.resyncs: Counter[str] = Counter()
        self.duplicates = 0
        self.snapshot_requested = False  # a REST snapshot is wanted (Binance; Bybit's come in-band)
        self.epoch = 0  # bumped whenever the book is discarded: answers to older requests are void
        self.last_reason = ""

    def reset(self, reason: str) -> None:
        """Discard the book (the connection was lost): updates in flight are gone."""
        if self.state is BookState.LIVE:
            self.resyncs[reason] += 1
            self.last_reason = reason
        self._discard()

    def _break(self, reason: str) -> None:
        """The live book proved wrong: count why and discard it."""
        self.resyncs[reason] += 1
        self.last_reason = reason
        self._discard()

    def _discard(self) -> None:
        self.state = BookState.RESYNCING
        self.book.clear()
        self.epoch += 1


class BinanceBookSync(_BookSync):
    """Binance spot or USD-M local book, per the venue's documented procedure.

    Args:
        symbol: the instrument.
        futures: USD-M rules (``pu`` chain) instead of spot rules.
        max_buffer: diffs kept while a snapshot is pending; the oldest are dropped past it.
    """

    def __init__(self, symbol: str, *, futures: bool, max_buffer: int = 10_000) -> None:
        super().__init__(symbol)
        self.futures = futures
        self.buffer: deque[_Diff] = deque(maxlen=max_buffer)
        self.buffer_overflows = 0
        self._prev = -1  # USD-M: u of the last applied diff; -1 until the first after a snapshot

    def on_diff(
        self, first: int, last: int, prev: int, bids: Sequence[Level], asks: Sequence[Level]
    ) -> NeedSnapshot | None:
        """Take one diff (``U``, ``u``, ``pu`` or -1, levels)."""
        if self.state is BookState.RESYNCING:
            return self._buffer(_Diff(first, last, prev, bids, asks))
        problem = self._apply(first, last, prev, bids, asks)  # PERF: no _Diff on the live path
        return None if problem is None else self._resync(problem, _Diff(first, last, prev, bids, asks))

    def on_snapshot(self, last_update_id: int, bids: Sequence[Level], asks: Sequence[Level]) -> NeedSnapshot | None:
        """Take a REST snapshot; return another :class:`NeedSnapshot` if it cannot be used."""
        if self.state is BookState.LIVE:
            return None  # a late answer to an earlier request
        self.snapshot_requested = False
        buf = self.buffer
        if buf and last_update_id < buf[0].first - (0 if self.futures else 1):
            return self._ask("snapshot_older_than_buffer")
        self.book.load(bids, asks, last_update_id)
        self._prev = -1
        self.state = BookState.LIVE
        pending = list(buf)
        buf.clear()
        for diff in pending:
            problem = self._apply(diff.first, diff.last, diff.prev, diff.bids, diff.asks)
            if problem is not None:
                return self._resync(problem, diff)
        return None

    def adopt(self, other: BinanceBookSync) -> None:
        """Take the live book of ``other``, which followed the same diffs to the same update."""
        assert other.state is BookState.LIVE and self.state is BookState.LIVE
        assert other.book.update_id == self.book.update_id
        self.book = other.book
        self._prev = other._prev

    def reset(self, reason: str) -> None:
        """Discard the book and the buffer (the connection was lost): diffs in flight are gone."""
        super().reset(reason)
        self.buffer.clear()
        self.snapshot_requested = False

    def _buffer(self, diff: _Diff) -> NeedSnapshot | None:
        if len(self.buffer) == self.buffer.maxlen:
            self.buffer_overflows += 1
        self.buffer.append(diff)
        return None if self.snapshot_requested else self._ask("initial")

    def _ask(self, reason: str) -> NeedSnapshot:
        self.snapshot_requested = True
        return NeedSnapshot(self.symbol, reason)

    def _resync(self, reason: str, diff: _Diff) -> NeedSnapshot:
        self._break(reason)
        self.buffer.clear()
        self.buffer.append(diff)  # newer than the book: a later snapshot may bridge it
        return self._ask(reason)

    def _apply(self, first: int, last: int, prev: int, bids: Sequence[Level], asks: Sequence[Level]) -> str | None:
        """Apply a diff to a live book; return why the book broke, or None."""
        book = self.book
        if self.futures:
            if self._prev < 0:  # first diff after the snapshot
                if last < book.update_id:
                    return None
                if first > book.update_id:
                    return "gap"
            elif last <= self._prev:
                self.duplicates += 1
                return None
            elif prev != self._prev:
                return "gap"
            self._prev = last
        else:
            if last <= book.update_id:
                self.duplicates += 1
                return None
            if first > book.update_id + 1:
                return "gap"
        book.apply(bids, asks)
        book.update_id = last
        return "crossed" if book.crossed() else None


class BybitBookSync(_BookSync):
    """Bybit v5 ``orderbook.{depth}.{symbol}``: in-band snapshots and ``u`` continuity."""

    def __init__(self, symbol: str) -> None:
        super().__init__(symbol)
        self.resets = 0  # snapshots with u == 1 (service restarts) and snapshots after the first
        self._snapshots = 0

    def on_message(
        self, snapshot: bool, update_id: int, bids: Sequence[Level], asks: Sequence[Level]
    ) -> Resubscribe | None:
        """Take one ``snapshot`` or ``delta`` message."""
        if snapshot or update_id == 1:
            self._snapshots += 1
            if self._snapshots > 1:
                self.resets += 1
            self.book.load(bids, asks, update_id)
            self.state = BookState.LIVE
            return self._check_crossed()
        if self.state is not BookState.LIVE:
            return None  # waiting for the snapshot a resubscription brings
        book = self.book
        if update_id <= book.update_id:
            self.duplicates += 1
            return None
        if update_id != book.update_id + 1:
            return self._resync("gap")
        book.apply(bids, asks)
        book.update_id = update_id
        return self._check_crossed()

    def _check_crossed(self) -> Resubscribe | None:
        return self._resync("crossed") if self.book.crossed() else None

    def _resync(self, reason: str) -> Resubscribe:
        self._break(reason)
        return Resubscribe(self.symbol, reason)
