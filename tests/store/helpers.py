"""Trade frames and keys shared by the store tests."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from wadm.records import TRADES, BatchKey, Market, Venue, trade_schema
from wadm.store.codec import Batch, encode_batch

T0 = 1_723_075_200_000_000_000  # 2024-08-08T00:00:00Z in ns
SECOND = 1_000_000_000

BINANCE_SPOT = BatchKey(TRADES, Venue.BINANCE, Market.SPOT, "BTCUSDT")
BYBIT_LINEAR = BatchKey(TRADES, Venue.BYBIT, Market.LINEAR, "BTCUSDT")


def trades(key: BatchKey, ts: Sequence[int], first_id: int = 1) -> pl.DataFrame:
    """Trades at the given event times with consecutive ids, in the venue's stored schema.

    Binance ids are ints; Bybit ids are UUID-like strings. Prices and quantities are not round
    numbers, so any lossy conversion on the way through a store shows.
    """
    n = len(ts)
    ids = [first_id + i for i in range(n)]
    return pl.DataFrame(
        {
            "ts_event": list(ts),
            "ts_recv": [t + 1_234_567 for t in ts],
            "id": ids if key.venue is Venue.BINANCE else [f"b7f3c2e0-{i:04x}-4a5b-9c8d-{i:012x}" for i in ids],
            "price": [61_234.56 + 0.01 * i + 1e-9 for i in range(n)],
            "qty": [0.000_123 * (i + 1) for i in range(n)],
            "side": [1 if i % 3 else -1 for i in range(n)],
        },
        schema=trade_schema(key.venue),
    )


def batch(
    key: BatchKey, start: int, n: int = 10, *, step: int = SECOND, first_id: int = 1
) -> tuple[pl.DataFrame, Batch]:
    """``n`` trades from ``start`` every ``step`` ns, and their encoded batch."""
    frame = trades(key, [start + i * step for i in range(n)], first_id)
    return frame, encode_batch(frame)
