"""Exact price rows and quantities: integer ticks and lots (convention C1).

Exchange prices sit on the instrument's tick grid, so ``round(price / tick)`` is an exact integer;
``floor(price / bin)`` in float64 is not (``0.3 / 0.1`` is 2.9999999999999996). Every row
computation goes through integer ticks: a row holds ``ticks_per_row`` ticks and is labelled by
its lower edge. Quantities are summed as integer lots for the same reason wherever a sum is
compared (a value area's target).
"""

from __future__ import annotations

import math
from decimal import Decimal

import polars as pl

from wadm.errors import UsageError

__all__ = ["Grid", "ROWS_PER_PRICE", "default_row", "lots", "ticks"]


def ticks(price: pl.Expr, tick: float) -> pl.Expr:
    """The price in whole ticks (exact for prices on the tick grid)."""
    return (price / tick).round(0).cast(pl.Int64)


def lots(qty: pl.Expr, lot: float) -> pl.Expr:
    """The quantity in whole lots (exact for quantities on the lot grid)."""
    return (qty / lot).round(0).cast(pl.Int64)


class Grid:
    """Rows of ``row`` price units on an instrument's ``tick`` grid.

    Args:
        tick: the instrument's price increment.
        row: the row height in price units, a whole multiple of ``tick``.

    Raises:
        UsageError: ``row`` is not a positive whole multiple of ``tick``.
    """

    __slots__ = ("row", "tick", "ticks_per_row")

    def __init__(self, tick: float, row: float) -> None:
        if tick <= 0 or row <= 0:
            raise UsageError(f"tick and row must be positive, got tick={tick} row={row}")
        ratio = Decimal(str(row)) / Decimal(str(tick))
        if ratio != ratio.to_integral_value():
            raise UsageError(f"row {row} is not a multiple of the tick {tick}")
        self.tick = tick
        self.row = row
        self.ticks_per_row = int(ratio)

    def index(self, price: pl.Expr) -> pl.Expr:
        """The row index of a price: ``floor(ticks / ticks_per_row)`` (floors toward -inf)."""
        return ticks(price, self.tick) // self.ticks_per_row

    def price(self, index: pl.Expr) -> pl.Expr:
        """The lower edge of a row, rounded to the tick's decimals (no float noise in answers)."""
        decimals = max(0, -Decimal(str(self.tick)).normalize().as_tuple().exponent)  # type: ignore[operator]
        return (index * self.ticks_per_row * self.tick).round(decimals)

    def __repr__(self) -> str:
        return f"Grid(tick={self.tick}, row={self.row})"


# A default row is about price / 3000: a day that moves 3 % spans about 90 rows (1 %: 30, 10 %: 300).
ROWS_PER_PRICE = 3000
_NICE = (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5))


def default_row(tick: float, price: float) -> Decimal:
    """A footprint row for an instrument: about ``price / 3000``, a round number, a multiple of the tick.

    Round numbers are 1, 2, 2.5 and 5 times a power of ten (the one nearest in ratio wins); one
    that is not a whole multiple of the tick is skipped, and a row is never finer than the tick.
    So BTC at 90,000 (tick 0.01 or 0.1) gets 25, ETH at 3,000 gets 1, XRP at 2.2 (tick 0.0001)
    gets 0.001: tens to a few hundred rows over a day.

    Raises:
        UsageError: a tick or price that is not positive and finite.
    """
    if not (math.isfinite(tick) and math.isfinite(price)) or tick <= 0 or price <= 0:
        raise UsageError(f"tick and price must be positive, got tick={tick} price={price}")
    step = Decimal(str(tick))
    target = price / ROWS_PER_PRICE
    if target <= tick:
        return step.normalize()
    exponent = math.floor(math.log10(target))
    candidates = [
        nice.scaleb(e) for e in (exponent - 1, exponent, exponent + 1) for nice in _NICE
    ]
    fitting = [c for c in candidates if c >= step and (c / step) == (c / step).to_integral_value()]
    if not fitting:  # an odd tick (0.03): the multiple of it nearest the target
        return (step * max(1, round(target / tick))).normalize()
    return min(fitting, key=lambda c: abs(math.log(float(c) / target))).normalize()
