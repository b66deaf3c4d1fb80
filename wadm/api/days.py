"""Volume-profile rows of settled UTC days, computed once per grid.

A 7-day profile, the naked POCs of the week and the key levels of a market structure all sum the
footprints of the same days, and every day but today is settled (no late trade reaches it any
more: ``BarCache.settled_before``). Their rows are exact integer sums, so the rows of a window are
the sum of its days' rows: each settled day is summed once per (series, resolution, grid) and
kept; only the days still moving and the partial first day of a window are summed per request.

The cache is read and written on the event loop; :func:`rows_per_day` runs on a worker thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from wadm.analytics.aggregates import profile_rows
from wadm.analytics.bars import NS_PER_DAY
from wadm.analytics.grid import Grid
from wadm.live import Series

__all__ = ["Chunk", "DayRows", "rows_per_day"]

DAY_ROWS = 4096  # days kept: 8 series x 7 days x a few grids and resolutions, with room

Key = tuple[Series, str, float, float, int, int]  # series, resolution, row, tick, chunk start, chunk length
Chunk = tuple[int, int]  # start, length (ns): a whole UTC day


class DayRows:
    """Profile rows of whole settled days by series, resolution, grid and day; least recently used out."""

    def __init__(self, limit: int = DAY_ROWS) -> None:
        self.limit = limit
        self.hits = 0
        self._rows: OrderedDict[Key, pl.DataFrame] = OrderedDict()
        # Session profiles of whole settled days per (sources, grid row, tick): naked POCs need them all.
        self._sessions: OrderedDict[tuple[tuple[Series, ...], float, float], dict[int, Any]] = OrderedDict()

    def known(self, series: Series, resolution: str, grid: Grid, start: int, end: int) -> dict[Chunk, pl.DataFrame]:
        """The kept days of ``[start, end]``."""
        found: dict[Chunk, pl.DataFrame] = {}
        for day in range(start - start % NS_PER_DAY, end + 1, NS_PER_DAY):
            rows = self._get((series, resolution, grid.row, grid.tick, day, NS_PER_DAY))
            if rows is not None:
                found[(day, NS_PER_DAY)] = rows
        self.hits += len(found)
        return found

    def _get(self, key: Key) -> pl.DataFrame | None:
        rows = self._rows.get(key)
        if rows is not None:
            self._rows.move_to_end(key)
        return rows

    def keep(self, series: Series, resolution: str, grid: Grid, fresh: Mapping[Chunk, pl.DataFrame]) -> None:
        for (first, length), rows in fresh.items():
            self._rows[(series, resolution, grid.row, grid.tick, first, length)] = rows
        while len(self._rows) > self.limit:
            self._rows.popitem(last=False)

    def sessions(self, sources: Sequence[Series], grid: Grid) -> dict[int, Any]:
        """The kept session profiles of these sources on this grid, by day (the caller adds to it)."""
        key = (tuple(sources), grid.row, grid.tick)
        found = self._sessions.setdefault(key, {})
        self._sessions.move_to_end(key)
        while len(self._sessions) > 64:
            self._sessions.popitem(last=False)
        for day in sorted(found)[:-32]:  # a month of days at most
            del found[day]
        return found


def rows_per_day(bars: pl.DataFrame, grid: Grid, start: int, end: int, settled: int,
                 known: Mapping[Chunk, pl.DataFrame]) -> tuple[dict[int, pl.DataFrame], dict[Chunk, pl.DataFrame]]:
    """One market's profile rows per UTC day, and the days among them worth keeping.

    NOTE: only whole settled days are kept. Keeping the settled hours of today and of a window's
    partial first day too was measured slower: summing a day's bars at once costs less than
    combining its hours' rows.

    Args:
        bars: stored bars (with footprints) starting in ``[start, end]``.
        grid: the rows' grid.
        start, end: the window (ns); a day that starts before ``start`` or ends after ``end`` is partial.
        settled: bars starting before this are final.
        known: whole days computed before.

    Returns:
        The rows of every day that has bars (or is known), and the whole settled days among them
        that were not known (to keep).
    """
    per_day = {first: rows for (first, length), rows in known.items()
               if length == NS_PER_DAY and start <= first and first + NS_PER_DAY - 1 <= end}
    fresh: dict[Chunk, pl.DataFrame] = {}
    day_of = (pl.col("ts_event") // NS_PER_DAY * NS_PER_DAY).alias("day")
    todo = bars.filter(~day_of.is_in(list(per_day))) if per_day else bars
    if todo.height == 0:
        return per_day, fresh
    for (day,), group in todo.group_by(day_of, maintain_order=True):
        d = int(day)
        rows = profile_rows(group, grid)
        per_day[d] = rows
        if start <= d and d + NS_PER_DAY - 1 <= end and d + NS_PER_DAY <= settled:
            fresh[(d, NS_PER_DAY)] = rows
    return per_day, fresh
