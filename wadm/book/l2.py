"""A price-level (L2) order book: levels, snapshot and diff application, top-N, crossed check.

Levels live in two dicts (price -> quantity), so applying a diff costs a dict operation per
level. Best prices come from lazy heaps: a price is pushed when it first appears and stale
entries are popped only when the best is asked for; the heaps are rebuilt when they grow to
twice the book. ``bench/bench_book.py`` measured this against a sorted container.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Sequence
from decimal import Decimal

from wadm.records import BANDS, band_name

__all__ = ["L2Book", "book_metrics", "book_snapshot"]

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
        # Keep each dict in price order too: the snapshot path sorts the keys, and a nearly
        # sorted sequence sorts in linear time.
        self.bids = dict(sorted(self.bids.items()))
        self.asks = dict(sorted(self.asks.items()))
        self._bid_heap = [-p for p in self.bids]
        heapq.heapify(self._bid_heap)
        self._ask_heap = list(self.asks)
        heapq.heapify(self._ask_heap)

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Apply one diff's levels."""
        # PERF: the per-level loop is most of the cost of a diff; keep lookups local.
        push = heapq.heappush
        book, heap, pop = self.bids, self._bid_heap, self.bids.pop
        for p, q in bids:
            if q:
                if p not in book:
                    push(heap, -p)
                book[p] = q
            else:
                pop(p, None)
        book, heap, pop = self.asks, self._ask_heap, self.asks.pop
        for p, q in asks:
            if q:
                if p not in book:
                    push(heap, p)
                book[p] = q
            else:
                pop(p, None)
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
        bids, asks, *_ = book_snapshot(self, depth, (), bid_floor, ask_ceiling)
        return bids, asks


Metrics = dict[str, float]


def book_snapshot(
    book: L2Book,
    depth: int,
    bands: Sequence[float] = BANDS,
    bid_floor: float = -math.inf,
    ask_ceiling: float = math.inf,
) -> tuple[list[Level], list[Level], float | None, float | None, Metrics]:
    """Top ``depth`` trusted levels per side, mid, spread, and per band around mid the bid depth,
    ask depth and imbalance.

    Only levels within the trusted bounds count. Imbalance is ``(bid - ask) / (bid + ask)`` of
    the quantities within the band, in [-1, 1]. Keys look like ``bid_depth_0.1pct``.
    """
    # PERF: one sort per side serves the top levels and every band (a slice sum each); the dicts
    # are kept nearly in price order (L2Book._rebuild), so the sorts are close to linear.
    bid_keys, ask_keys = sorted(book.bids), sorted(book.asks)
    if bid_floor > -math.inf:
        del bid_keys[: bisect.bisect_left(bid_keys, bid_floor)]
    if ask_ceiling < math.inf:
        del ask_keys[bisect.bisect_right(ask_keys, ask_ceiling):]
    bid_qty, ask_qty = book.bids.__getitem__, book.asks.__getitem__
    top_bids = [(p, bid_qty(p)) for p in reversed(bid_keys[-depth:])] if depth else []
    top_asks = [(p, ask_qty(p)) for p in ask_keys[:depth]]
    if not bid_keys or not ask_keys:
        return top_bids, top_asks, None, None, {}
    bid, ask = bid_keys[-1], ask_keys[0]
    mid = (bid + ask) / 2
    out: Metrics = {}
    for band in bands:
        b = sum(map(bid_qty, bid_keys[_band_start(bid_keys, bid, ask, band):]))
        a = sum(map(ask_qty, ask_keys[:_band_end(ask_keys, bid, ask, band)]))
        name = band_name(band)
        # Sums of decimal quantities carry float noise; 10 decimals is far below any venue's step.
        out[f"bid_depth_{name}"] = round(b, 10)
        out[f"ask_depth_{name}"] = round(a, 10)
        out[f"imbalance_{name}"] = round((b - a) / (b + a), 10) if b + a else 0.0
    return top_bids, top_asks, round(mid, 10), round(ask - bid, 10), out


def _dec(x: float) -> Decimal:
    return Decimal(repr(x))  # the decimal the venue wrote (shortest round trip)


def _band_start(bid_keys: list[float], bid: float, ask: float, band: float) -> int:
    """First bid (ascending keys) at or above ``mid * (1 - band)``, the edge compared exactly.

    In floats the edge drifts (mid 100, 0.5 %: 99.5 is fine, but 100.49999999999999 on the ask
    side leaves out an order at 100.5); the float bisection is corrected on the decimals.
    """
    i = bisect.bisect_left(bid_keys, (bid + ask) / 2 * (1 - band))
    edge = (_dec(bid) + _dec(ask)) * (1 - _dec(band))  # 2 x the edge: prices are compared doubled
    while i > 0 and 2 * _dec(bid_keys[i - 1]) >= edge:
        i -= 1
    while i < len(bid_keys) and 2 * _dec(bid_keys[i]) < edge:
        i += 1
    return i


def _band_end(ask_keys: list[float], bid: float, ask: float, band: float) -> int:
    """One past the last ask (ascending keys) at or below ``mid * (1 + band)``, compared exactly."""
    i = bisect.bisect_right(ask_keys, (bid + ask) / 2 * (1 + band))
    edge = (_dec(bid) + _dec(ask)) * (1 + _dec(band))
    while i < len(ask_keys) and 2 * _dec(ask_keys[i]) <= edge:
        i += 1
    while i > 0 and 2 * _dec(ask_keys[i - 1]) > edge:
        i -= 1
    return i


def book_metrics(
    book: L2Book, bands: Sequence[float] = BANDS, bid_floor: float = -math.inf, ask_ceiling: float = math.inf
) -> tuple[float | None, float | None, Metrics]:
    """Mid, spread and band metrics of the trusted book (see :func:`book_snapshot`)."""
    _, _, mid, spread, out = book_snapshot(book, 0, bands, bid_floor, ask_ceiling)
    return mid, spread, out
