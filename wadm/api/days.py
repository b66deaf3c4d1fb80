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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from wadm.analytics.aggregates import profile_rows
from wadm.analytics.bars import NS_PER_DAY
from wadm.analytics.grid import Grid
from wadm.live import Series

__all__ = ["DayRows", "Known", "rows_per_day"]

DAY_ROWS = 4096  # days kept: 8 series x 7 days x a few grids and resolutions, with room

Key = tuple[Series, str, float, float, int]  # series, resolution, grid row, tick, day
Mark = tuple[int, int, int, int, int, float, int]  # bars, first and last start, revisions, volume, trades


def _mark(bars: pl.DataFrame) -> Mark:
    """What tells a day's bars from the ones its rows were summed from before."""
    ts, rev = pl.col("ts_event"), pl.col("revision")
    row = bars.select(pl.len(), ts.min().alias("first"), ts.max().alias("last"), rev.min().alias("oldest"),
                      rev.max().alias("newest"), pl.col("volume").sum(), pl.col("trades").sum()).row(0)
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]), float(row[5]), int(row[6]))


@dataclass
class Known:
    """Rows summed before: of whole settled days, and of the other days (today, a window's partial
    first day) with the mark of the bars they came from, reused while those bars do not change."""

    days: dict[int, pl.DataFrame] = field(default_factory=dict)
    moving: dict[int, tuple[Mark, pl.DataFrame]] = field(default_factory=dict)


class DayRows:
    """Profile rows of days by series, resolution, grid and day; least recently used out."""

    def __init__(self, limit: int = DAY_ROWS) -> None:
        self.limit = limit
        self.hits = 0
        self._rows: OrderedDict[Key, pl.DataFrame] = OrderedDict()
        self._moving: OrderedDict[Key, tuple[Mark, pl.DataFrame]] = OrderedDict()
        # Session profiles of whole settled days per (sources, grid row, tick): naked POCs need them all.
        self._sessions: OrderedDict[tuple[tuple[Series, ...], float, float], dict[int, Any]] = OrderedDict()

    def known(self, series: Series, resolution: str, grid: Grid, start: int, end: int) -> Known:
        """What is kept of the days of ``[start, end]``."""
        found = Known()
        for day in range(start - start % NS_PER_DAY, end + 1, NS_PER_DAY):
            key = (series, resolution, grid.row, grid.tick, day)
            rows = self._rows.get(key)
            if rows is not None:
                self._rows.move_to_end(key)
                found.days[day] = rows
            elif (moving := self._moving.get(key)) is not None:
                found.moving[day] = moving
        self.hits += len(found.days)
        return found

    def keep(self, series: Series, resolution: str, grid: Grid, fresh: Known) -> None:
        for day, rows in fresh.days.items():
            self._rows[(series, resolution, grid.row, grid.tick, day)] = rows
            self._moving.pop((series, resolution, grid.row, grid.tick, day), None)
        for day, moving in fresh.moving.items():
            self._moving[(series, resolution, grid.row, grid.tick, day)] = moving
            self._moving.move_to_end((series, resolution, grid.row, grid.tick, day))
        for kept in (self._rows, self._moving):
            while len(kept) > self.limit:
                kept.popitem(last=False)

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
                 known: Known) -> tuple[dict[int, pl.DataFrame], Known]:
    """One market's profile rows per UTC day, and what to keep of them.

    A whole settled day is summed once. Any other day (today, a window's partial first day) is
    summed again only when its bars changed (the open minutes' bars move at most every
    ``OPEN_REUSE_NS``, so the several requests of one client's analysis share it).

    Args:
        bars: stored bars (with footprints) starting in ``[start, end]``.
        grid: the rows' grid.
        start, end: the window (ns); a day that starts before ``start`` or ends after ``end`` is partial.
        settled: bars starting before this are final.
        known: what was kept.

    Returns:
        The rows of every day that has bars (or is kept whole), and what to keep.
    """
    per_day = {d: rows for d, rows in known.days.items() if start <= d and d + NS_PER_DAY - 1 <= end}
    fresh = Known()
    day_of = (pl.col("ts_event") // NS_PER_DAY * NS_PER_DAY).alias("day")
    todo = bars.filter(~day_of.is_in(list(per_day))) if per_day else bars
    if todo.height == 0:
        return per_day, fresh
    for (day,), group in todo.group_by(day_of, maintain_order=True):
        d = int(day)
        if start <= d and d + NS_PER_DAY - 1 <= end and d + NS_PER_DAY <= settled:
            per_day[d] = fresh.days[d] = profile_rows(group, grid)
            continue
        mark = _mark(group)
        before = known.moving.get(d)
        if before is not None and before[0] == mark:
            per_day[d] = before[1]
            continue
        per_day[d] = profile_rows(group, grid)
        fresh.moving[d] = (mark, per_day[d])
    return per_day, fresh
