"""Numbers and times as a model should read them: prices on the instrument's tick, quantities on
its lot, times in ISO-8601 UTC, and nothing printed that carries no information."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from wadm.mcp.client import Listing

__all__ = ["Precision", "iso", "pct", "rnd", "signed", "span"]


def _decimals(step: float | None, default: int) -> int:
    if not step or step <= 0:
        return default
    exponent = Decimal(repr(step)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else default


@dataclass(frozen=True, slots=True)
class Precision:
    """Decimals of prices and quantities of one symbol (the finest of the markets combined)."""

    price_places: int = 8
    qty_places: int = 8

    @classmethod
    def of(cls, markets: Iterable[Listing]) -> Precision:
        rows = list(markets)
        return cls(max((_decimals(m.tick, 8) for m in rows), default=8),
                   max((_decimals(m.lot, 8) for m in rows), default=8))

    def px(self, value: float | None) -> float | None:
        """A price on the tick's decimals."""
        return None if value is None else _clean(round(value, self.price_places))

    def qty(self, value: float | None) -> float | None:
        """A quantity (volume, delta, CVD) on the lot's decimals."""
        return None if value is None else _clean(round(value, self.qty_places))


def _clean(value: float) -> float:
    return 0.0 if value == 0 else value


def iso(ms: int | float | None, *, millis: bool = False) -> str | None:
    """Epoch milliseconds as ``2026-11-29T15:31:02Z`` (UTC)."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    if millis:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def rnd(value: float | None, places: int) -> float | None:
    """``round`` that lets a missing number through."""
    return None if value is None else round(value, places)


def signed(value: float | None, places: int | None = None) -> str:
    """``+0.12`` / ``-3.4``: a change or an imbalance with its sign (``places`` fixed, else as short as it goes)."""
    if value is None:
        return "n/a"
    return f"{value:+g}" if places is None else f"{value:+.{places}f}"


def pct(new: float | None, old: float | None) -> float | None:
    """The change from ``old`` to ``new`` in percent, two decimals."""
    if new is None or old is None or old == 0 or math.isnan(old):
        return None
    return round((new / old - 1) * 100, 2)


def span(seconds: float) -> str:
    """``45s``, ``12m``, ``3h10m``, ``2d4h``: a duration for a sentence."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m:02d}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d{h}h" if h else f"{d}d"
