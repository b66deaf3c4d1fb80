"""A price-level (L2) order book: levels, snapshot and diff application, top-N, crossed check.

Levels live in two dicts (price -> quantity), so applying a diff costs a dict operation per
level. Best prices come from lazy heaps: a price is pushed when it first appears and stale
entries are popped only when the best is asked for; the heaps are rebuilt when they grow to
twice the book. ``bench/bench_book.py`` measured this against a sorted container.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence

from wadm.records import BANDS, band_name

__all__ = ["L2Book", "book_metrics"]

Level = tuple[float, float]


class L2Book:
    """One instrument's book. Quantities are absolute; a zero quantity deletes the level."""

    __slots__ = ("_ask_heap", "_bid_heap", "asks", "bids", "update_id")

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self._bid_heap: list[float] = []  # negated prices
        self._ask_heap: list[float] = []
        self.update_id = 0

    def clear(self) -> None:
        """Forget every level."""
        self.bids.clear()
        self.asks.clear()
        self._bid_heap.clear()
        self._ask_heap.clear()
        self.update_id = 0

    def load(self, bids: Iterable[Level], asks: Iterable[Level], update_id: int) -> None:
        """Replace the book with a snapshot."""
        self.bids = {p: q for p, q in bids if q > 0}
        self.asks = {p: q for p, q in asks if q > 0}
        self._rebuild()
        self.update_id = update_id

    def _rebuild(self) -> None:
        self._bid_heap = [-p for p in self.bids]
        heapq.heapify(self._bid_heap)
        self._ask_heap = list(self.asks)
        heapq.heapify(self._ask_heap)

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Apply one diff's levels."""
        book, heap = self.bids, self._bid_heap
        for p, q in bids:
            if q == 0:
                book.pop(p, None)
            else:
                if p not in book:
                    heapq.heappush(heap, -p)
                book[p] = q
        book, heap = self.asks, self._ask_heap
        for p, q in asks:
            if q == 0:
                book.pop(p, None)
            else:
                if p not in book:
                    heapq.heappush(heap, p)
                book[p] = q
        if len(self._bid_heap) > 2 * len(self.bids) + 64 or len(self._ask_heap) > 2 * len(self.asks) + 64:
            self._rebuild()

    def best_bid(self) -> float | None:
        """Highest bid price, or None when there are no bids."""
        heap, book = self._bid_heap, self.bids
        while heap and -heap[0] not in book:
            heapq.heappop(heap)
        return -heap[0] if heap else None

    def best_ask(self) -> float | None:
        """Lowest ask price, or None when there are no asks."""
        heap, book = self._ask_heap, self.asks
        while heap and heap[0] not in book:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def crossed(self) -> bool:
        """True when the best bid is at or above the best ask: the book is wrong."""
        bid, ask = self.best_bid(), self.best_ask()
        return bid is not None and ask is not None and bid >= ask

    def top(
        self, depth: int, bid_floor: float = -math.inf, ask_ceiling: float = math.inf
    ) -> tuple[list[Level], list[Level]]:
        """The best ``depth`` levels per side within the trusted bounds: bids descending, asks ascending."""
        bids = [(p, self.bids[p]) for p in heapq.nlargest(depth, self.bids) if p >= bid_floor]
        asks = [(p, self.asks[p]) for p in heapq.nsmallest(depth, self.asks) if p <= ask_ceiling]
        return bids, asks


def book_metrics(
    book: L2Book, bands: Sequence[float] = BANDS, bid_floor: float = -math.inf, ask_ceiling: float = math.inf
) -> tuple[float | None, float | None, dict[str, float]]:
    """Mid, spread, and per band around mid: bid depth, ask depth and imbalance.

    Only levels within the trusted bounds count. Imbalance is ``(bid - ask) / (bid + ask)`` of
    the quantities within the band, in [-1, 1]. Keys look like ``bid_depth_0.1pct``.
    """
    bid, ask = book.best_bid(), book.best_ask()
    if bid is None or ask is None:
        return None, None, {}
    mid = (bid + ask) / 2
    widest = max(bands)
    # PERF: one pass per side collects the levels inside the widest band; narrower bands reuse them.
    lo, hi = max(mid * (1 - widest), bid_floor), min(mid * (1 + widest), ask_ceiling)
    near_bids = [(p, q) for p, q in book.bids.items() if p >= lo]
    near_asks = [(p, q) for p, q in book.asks.items() if p <= hi]
    out: dict[str, float] = {}
    for band in bands:
        blo, ahi = mid * (1 - band), mid * (1 + band)
        b = sum(q for p, q in near_bids if p >= blo)
        a = sum(q for p, q in near_asks if p <= ahi)
        name = band_name(band)
        # Sums of decimal quantities carry float noise; 10 decimals is far below any venue's step.
        out[f"bid_depth_{name}"] = round(b, 10)
        out[f"ask_depth_{name}"] = round(a, 10)
        out[f"imbalance_{name}"] = round((b - a) / (b + a), 10) if b + a else 0.0
    return round(mid, 10), round(ask - bid, 10), out
