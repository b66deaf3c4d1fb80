"""The indicator test vectors (tests/data/vectors, copies of the project's reference) and trade frames.

Numbers are parsed as Decimal, as the reference asks; times are the vectors' Unix ms turned into
the project's ns where a frame is built.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from wadm.venues import binance

__all__ = ["MIN", "MS", "T0", "frame", "of01_trades", "vector"]

VECTORS = Path(__file__).parent / "data" / "vectors"
MS = 1_000_000  # ns per ms
MIN = 60_000 * MS
T0 = 1704067200000 * MS  # 2024-01-01T00:00Z, the vectors' T0


def vector(name: str) -> dict[str, Any]:
    """One vector file, numbers as Decimal."""
    with (VECTORS / f"{name}.json").open() as fh:
        data: dict[str, Any] = json.load(fh, parse_float=Decimal)
    return data


def of01_trades() -> pl.DataFrame:
    """of_01's trades (Binance ``m`` flags) through the real Binance aggTrades decoder."""
    rows = [{"a": k, "p": str(t["price"]), "q": str(t["qty"]), "T": t["ts"], "m": t["m"]}
            for k, t in enumerate(vector("of_01_footprint_delta_cvd_imbalance")["input"]["trades"])]
    items = binance.decode_agg_trades(orjson.dumps(rows))
    return binance.trades_to_frame(items, [0] * len(items))


def frame(rows: list[tuple[int, float, float, int]]) -> pl.DataFrame:
    """Stored-schema trades from (ts ns, price, qty, side) rows."""
    return pl.DataFrame(rows, schema=["ts_event", "price", "qty", "side"], orient="row").cast({"side": pl.Int8})
