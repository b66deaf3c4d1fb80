"""Pure order-book logic: levels, snapshots and diffs, and per-venue sequencing."""

from wadm.book.l2 import L2Book, book_metrics
from wadm.book.sync import BinanceBookSync, BookState, BybitBookSync, NeedSnapshot, Resubscribe

__all__ = ["BinanceBookSync", "BookState", "BybitBookSync", "L2Book", "NeedSnapshot", "Resubscribe", "book_metrics"]
