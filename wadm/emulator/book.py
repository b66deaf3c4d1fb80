"""The synthetic order book: the emulator's TRUE book of one symbol.

Levels are integer ticks -> integer lots, one dict per side. Every change of a
level gets an update id (contiguous, or jumping by up to ``uid_jump`` to mimic
Binance USD-M) and is appended to a bounded change log. Depth publishers read
the log from their cursor (Binance diffs) or compare top-N views (Bybit);
the log also lets REST serve a deliberately stale book (`state_before`).

Dynamics: trades take liquidity at the best level of the side they hit (a
fill that exhausts the level removes it, so the best price moves); random
orders are added and cancelled around the top (distance from the best is
exponential); when the spread opens, a new level often appears inside it. The
mid price therefore random-walks on the tick grid. The book never crosses and
no side ever becomes empty.
"""

from __future__ import annotations

import heapq
import random
from collections import deque

__all__ = ["ASK", "BID", "Change", "SyntheticBook"]

BID = 0
ASK = 1

Change = tuple[int, int, int, int, int]
"""``(update_id, side, ticks, lots, previous_lots)``; ``lots == 0`` removes the level."""

_SCAN = 64
"""Ticks scanned for the next best level before falling back to max()/min()."""


class SyntheticBook:
    """Price levels of both sides with update ids and a change log."""

    def __init__(
        self,
        *,
        rng: random.Random,
        mid: int,
        levels: int,
        lot_pool: list[int],
        uid: int,
        uid_jump: int = 1,
        now_ms: int = 0,
        log_size: int = 50_000,
    ) -> None:
        """Build a full book around ``mid``.

        Args:
            rng: Random source.
            mid: Best bid (ticks); the best ask is one tick above.
            levels: Levels per side the book keeps.
            lot_pool: Order sizes (lots) to draw from.
            uid: Update id of the initial book.
            uid_jump: Largest step between two update ids (1: contiguous).
            now_ms: Time of the initial book.
            log_size: Changes kept in the log.
        """
        self.rng = rng
        self.levels = max(1, levels)
        self.pool = lot_pool
        self.uid = uid
        self.uid_jump = max(1, uid_jump)
        self.now_ms = now_ms
        """Time stamped on changes made now (the caller keeps it current)."""
        self.last_change_ms = now_ms
        self.changes: deque[Change] = deque(maxlen=log_size)
        mid = max(1, mid)
        bids: dict[int, int] = {}
        asks: dict[int, int] = {}
        for d in range(self.levels):
            if mid - d >= 1:
                bids[mid - d] = self._size()
            asks[mid + 1 + d] = self._size()
        self.sides: tuple[dict[int, int], dict[int, int]] = (bids, asks)
        self.best = [mid, mid + 1]
        """Best bid and best ask, in ticks."""

    # -------------------------------------------------------------- queries

    def top(self, side: int, depth: int | None = None) -> list[tuple[int, int]]:
        """Levels of a side best first, ``(ticks, lots)``; all when ``depth`` is None."""
        book = self.sides[side]
        if depth is None or depth >= len(book):
            keys = sorted(book, reverse=side == BID)
        elif side == BID:
            keys = heapq.nlargest(depth, book)
        else:
            keys = heapq.nsmallest(depth, book)
        return [(t, book[t]) for t in keys]

    def changes_since(self, uid: int) -> list[Change]:
        """Logged changes with an update id above ``uid``, oldest first."""
        out: list[Change] = []
        for change in reversed(self.changes):
            if change[0] <= uid:
                break
            out.append(change)
        out.reverse()
        return out

    def state_before(self, updates: int) -> tuple[dict[int, int], dict[int, int], int]:
        """The book as it was ``updates`` changes ago: ``(bids, asks, update_id)``.

        Limited to the changes still in the log.
        """
        bids, asks = dict(self.sides[BID]), dict(self.sides[ASK])
        changes = self.changes
        n = min(max(0, updates), len(changes))
        uid = self.uid
        for i in range(n):
            change_uid, side, ticks, _, old = changes[-1 - i]
            book = bids if side == BID else asks
            if old:
                book[ticks] = old
            else:
                book.pop(ticks, None)
            uid = change_uid - 1
        if n and n < len(changes):
            uid = changes[-1 - n][0]
        return bids, asks, uid

    # ------------------------------------------------------------- changes

    def set_level(self, side: int, ticks: int, lots: int) -> None:
        """Set a level (0 removes it), log the change and keep the best prices."""
        book = self.sides[side]
        old = book.get(ticks, 0)
        if lots == old or ticks < 1:
            return
        if lots:
            book[ticks] = lots
        else:
            del book[ticks]
        jump = self.uid_jump
        self.uid += 1 if jump == 1 else 1 + self.rng.randrange(jump)
        self.changes.append((self.uid, side, ticks, lots, old))
        self.last_change_ms = self.now_ms
        best = self.best[side]
        if lots:
            if not old and len(book) == 1:
                self.best[side] = ticks
            elif (side == BID and ticks > best) or (side == ASK and ticks < best):
                self.best[side] = ticks
        elif ticks == best and book:
            self.best[side] = self._next_best(side, ticks)

    def take(self, side: int, want: int) -> tuple[int, int]:
        """Fill a taker order against the best level of ``side``.

        Args:
            side: The side hit (`BID` for a sell aggressor, `ASK` for a buy).
            want: Lots wanted.

        Returns:
            ``(ticks, lots)`` actually filled (at most the level's size).
        """
        book = self.sides[side]
        ticks = self.best[side]
        avail = book[ticks]
        lots = want if want < avail else avail
        self.set_level(side, ticks, avail - lots)
        if not book:
            self.set_level(side, ticks - 1 if side == BID else ticks + 1, self._size())
        if self.best[ASK] - self.best[BID] > 2:
            self.tighten()
        return ticks, lots

    def tighten(self) -> None:
        """With a wide spread, often place a new order inside it (either side)."""
        bid, ask = self.best
        if ask - bid > 2 and self.rng.random() < 0.5:
            if self.rng.getrandbits(1):
                self.set_level(BID, bid + 1, self._size())
            else:
                self.set_level(ASK, ask - 1, self._size())

    def evolve(self, events: int) -> None:
        """Add and cancel ``events`` random orders around the top of the book."""
        rng = self.rng
        levels = self.levels
        for _ in range(events):
            side = rng.getrandbits(1)
            book = self.sides[side]
            d = min(int(rng.expovariate(0.2)), levels - 1)
            bid, ask = self.best
            ticks = bid - d if side == BID else ask + d
            if rng.random() < 0.55:
                if d == 0 and ask - bid > 1 and rng.random() < 0.5:
                    ticks = bid + 1 if side == BID else ask - 1
                self.set_level(side, ticks, book.get(ticks, 0) + self._size())
                continue
            cur = book.get(ticks, 0)
            if not cur:
                continue
            left = cur - self.pool[rng.randrange(len(self.pool))]
            if left <= 0 or rng.random() < 0.3:
                left = 0
            if left == 0 and len(book) == 1:
                left = max(1, cur // 2)
            self.set_level(side, ticks, left)
        self.trim()

    def trim(self) -> None:
        """Keep about `levels` levels per side: drop the farthest, refill the far end."""
        levels = self.levels
        for side in (BID, ASK):
            book = self.sides[side]
            if len(book) > levels:
                far = (
                    heapq.nsmallest(len(book) - levels, book)
                    if side == BID
                    else heapq.nlargest(len(book) - levels, book)
                )
                for ticks in far:
                    self.set_level(side, ticks, 0)
            elif len(book) < levels - max(1, levels // 10):
                edge = min(book) if side == BID else max(book)
                while len(book) < levels:
                    edge = edge - 1 if side == BID else edge + 1
                    if edge < 1:
                        break
                    self.set_level(side, edge, self._size())

    def restore(self, side: int, ticks: int) -> int:
        """Current size at a level (0 when absent); used to undo a fake level."""
        return self.sides[side].get(ticks, 0)

    # ------------------------------------------------------------ internals

    def _size(self) -> int:
        pool = self.pool
        rng = self.rng
        return pool[rng.randrange(len(pool))] * (1 + rng.randrange(4))

    def _next_best(self, side: int, removed: int) -> int:
        book = self.sides[side]
        step = -1 if side == BID else 1
        ticks = removed
        for _ in range(_SCAN):
            ticks += step
            if ticks in book:
                return ticks
        return max(book) if side == BID else min(book)
