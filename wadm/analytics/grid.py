"""Exact price rows and quantities: integer ticks and lots (convention C1).

Exchange prices sit on the instrument's tick grid, so ``round(price / tick)`` is an exact integer;
``floor(price / bin)`` in float64 is not (``0.3 / 0.1`` is 2.9999999999999996). Every row
computation goes through integer ticks: a row holds ``ticks_per_row`` ticks and is labelled by
its lower edge. Quantities are summed as integer lots for the same reason wherever a sum is
compared (a value area's target).
"""

from __future__ import annotations

from decimal import Decimal

import polars as pl

from wadm.errors import UsageError

__all__ = ["Grid", "lots", "ticks"]


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
