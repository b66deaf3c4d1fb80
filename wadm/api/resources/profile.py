"""``/api/v1/volume-profile/{symbol}``: POC, value area, HVN/LVN and naked POCs of a window.

Computed from raw trades while the window lies within raw retention, else from the stored 1m or
1h footprints (``resolution``), every source on one row grid. The summary comes first; rows only
when asked (``rows=all`` or ``rows=N``, the N rows around the POC).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import falcon.asgi
import orjson
import polars as pl

from wadm.analytics.aggregates import common_row, row_sizes
from wadm.analytics.bars import NS_PER_DAY
from wadm.analytics.grid import Grid
from wadm.analytics.profile import Profile, combine, naked_pocs, rows_from_trades, volume_profile
from wadm.api.days import Known, rows_per_day
from wadm.api.json import rows_json, send_bytes
from wadm.api.params import parse_choice, parse_decimal, parse_limit, parse_number, show
from wadm.api.query import Query
from wadm.api.resources.analytics import load_each, reader, rows_around, source_gaps
from wadm.api.resources.series import SeriesResource
from wadm.api.sources import (
    BAR_NS,
    NS_PER_HOUR,
    bar_grid,
    check_rows,
    choose_resolution,
    describe,
    parse_scope,
    trade_grid,
)
from wadm.errors import QueryError
from wadm.units import NS_PER_MS, NS_PER_S

__all__ = ["VolumeProfileResource"]

PARAMS = ("exchange", "market", "start", "end", "window", "row_size", "value_area", "va_method", "nodes", "rows",
          "resolution", "naked")
DEFAULT_SPAN = 86_400 * NS_PER_S
MAX_ROWS_OUT = 5000
MAX_NODES = 50
_ROWS_RULE = f"none, all, or a number of rows around the POC from 1 to {MAX_ROWS_OUT}"


def parse_rows(raw: str | None) -> tuple[bool, int | None]:
    """``rows``: (include rows, how many around the POC or None for all)."""
    if raw is None or raw == "none":
        return False, None
    if raw == "all":
        return True, None
    if raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= MAX_ROWS_OUT:
        return True, int(raw)
    raise QueryError("rows", f"rows must be {_ROWS_RULE}, got {show(raw)}")


Days = list[Known]  # per source


def _profile(data: list[pl.DataFrame], ticks: list[float | None], grid: Grid, resolution: str,
             value_area: float, va_method: str, nodes: int, span: tuple[int, int, int], known: Days
             ) -> tuple[Profile, Days]:
    """The window's profile, and the rows of whole settled days computed on the way (to keep)."""
    fresh: Days = [Known() for _ in data]
    if resolution == "trades":
        parts = [rows_from_trades(t, Grid(tick or grid.tick, grid.row)) for t, tick in zip(data, ticks, strict=True)]
    else:
        parts = []
        for i, bars in enumerate(data):
            per_day, fresh[i] = rows_per_day(bars, grid, *span, known[i])
            parts += per_day.values()
    rows = combine(parts)
    if rows.height:
        check_rows(float(rows["index"][0]) * grid.row, float(rows["index"][-1]) * grid.row, grid)
    profile = volume_profile(rows, grid, value_area=value_area, va_method=va_method, nodes=nodes)  # type: ignore[arg-type]
    return profile, fresh


def naked_grid(hours: list[pl.DataFrame], row: Decimal, tick: float) -> Grid | None:
    """The grid naked POCs are found on: ``row``, or the nearest row the hourly footprints allow."""
    base = common_row(sorted({r for h in hours for r in row_sizes(h)}))
    if base is None:
        return None
    naked_row = common_row([row, base])
    assert naked_row is not None
    return Grid(tick, float(naked_row))


def _naked(hours: list[pl.DataFrame], grid: Grid, span: tuple[int, int, int], known: Days,
           profiles: dict[int, Profile]) -> tuple[list[dict[str, Any]], Days, dict[int, Profile]]:
    """Naked POCs of earlier UTC days from hourly footprints on ``grid``; with the rows and the
    session profiles of whole settled days computed on the way (to keep)."""
    start, end, settled = span
    days: dict[int, list[pl.DataFrame]] = {}
    fresh: Days = []
    for frame, cached in zip(hours, known, strict=True):
        per_day, new = rows_per_day(frame, grid, *span, cached)
        fresh.append(new)
        for day, rows in per_day.items():
            days.setdefault(day, []).append(rows)
    sessions, kept = [], {}
    for day, parts in sorted(days.items()):
        profile = profiles.get(day)
        if profile is None:
            profile = volume_profile(combine(parts), grid)
            if start <= day and day + NS_PER_DAY - 1 <= end and day + NS_PER_DAY <= settled:
                kept[day] = profile
        sessions.append((day, profile))
    found = naked_pocs(sessions)
    return [{"session": n.session // NS_PER_MS, "poc": n.poc} for n in found], fresh, kept


class VolumeProfileResource(SeriesResource):
    """The volume profile of one symbol over a window."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str) -> None:
        ctx = self.ctx
        q = Query(req, PARAMS)
        scope = parse_scope(ctx.settings, q, symbol, default_span=DEFAULT_SPAN)
        row_size = parse_decimal(q.get("row_size"), name="row_size",
                                 what="the row height in price units, a multiple of the tick")
        value_area = parse_number(q.get("value_area"), name="value_area", default=0.70, minimum=0.5, maximum=0.95)
        va_method = parse_choice("va_method", q.get("va_method"), ("two_row", "one_row"), "two_row")
        nodes = parse_limit(q.get("nodes"), default=1, maximum=MAX_NODES, name="nodes")
        with_rows, around = parse_rows(q.get("rows"))
        with_naked = parse_choice("naked", q.get("naked"), ("true", "false"), "true") == "true"
        resolution = choose_resolution(q.get("resolution"), scope, ctx.settings)
        start = scope.start if resolution == "trades" else scope.start - scope.start % BAR_NS[resolution]

        async with ctx.work.turn():
            data = await load_each(ctx, scope, resolution, start)
            ticks: list[float | None] = [None] * len(scope.sources)
            if resolution == "trades":
                known = [await reader(ctx).grid_of(s, scope.now) for s in scope.sources]
                ticks = [tick for tick, _ in known]
                prices = [float(t["price"][-1]) for t in data if t.height]
                grid = trade_grid([t for t in ticks if t is not None], [row for _, row in known],
                                  prices[-1] if prices else None, row_size)
            else:
                grid = bar_grid(data, row_size, resolution)
            if grid is None and any(f.height for f in data):
                raise QueryError(None, f"the tick of {scope.symbol} is not known yet (the venue listing has not "
                                       "been read); retry in a minute", status=503, code="not_ready",
                                 headers={"Retry-After": "30"})
            gaps = await source_gaps(ctx, scope, resolution, data, start)
            settled = ctx.bars.settled_before(scope.now)
            profile = None
            if grid is not None:
                span = (start, scope.end, settled)
                cached = [ctx.days.known(s, resolution, grid, start, scope.end) for s in scope.sources]
                profile, fresh = await ctx.work.run(
                    _profile, data, ticks, grid, resolution, value_area, va_method, nodes, span, cached)
                for s, new in zip(scope.sources, fresh, strict=True):
                    ctx.days.keep(s, resolution, grid, new)
            naked: list[dict[str, Any]] = []
            naked_row = None
            if profile is not None and grid is not None and with_naked:
                first = scope.end - ctx.settings.retention_aggregates_1h * NS_PER_S
                hours = [await reader(ctx).bars(s, "1h", first, scope.end, scope.now) for s in scope.sources]
                on = naked_grid(hours, Decimal(repr(grid.row)), grid.tick)
                if on is not None:
                    first -= first % NS_PER_HOUR
                    cached = [ctx.days.known(s, "1h", on, first, scope.end) for s in scope.sources]
                    sessions = ctx.days.sessions(scope.sources, on)
                    naked, fresh, kept = await ctx.work.run(_naked, hours, on, (first, scope.end, settled), cached,
                                                            sessions)
                    for s, new in zip(scope.sources, fresh, strict=True):
                        ctx.days.keep(s, "1h", on, new)
                    sessions.update(kept)
                    naked_row = on.row
        empty = profile is None or profile.poc is None
        body: dict[str, Any] = describe(scope, resolution, gaps, True) | {
            "start": start // NS_PER_MS,
            "row_size": None if grid is None else grid.row,
            "total_volume": 0.0 if profile is None else profile.total_volume,
            "buy_volume": 0.0 if profile is None else profile.buy_volume,
            "sell_volume": 0.0 if profile is None else profile.sell_volume,
            "delta": 0.0 if profile is None else profile.delta,
            "poc": None if empty else profile.poc,  # type: ignore[union-attr]
            "vah": None if empty else profile.vah,  # type: ignore[union-attr]
            "val": None if empty else profile.val,  # type: ignore[union-attr]
            "va_volume": None if empty else profile.area.volume,  # type: ignore[union-attr]
            "value_area": value_area,
            "va_method": va_method,
            "hvn": [] if empty else list(profile.hvn),  # type: ignore[union-attr]
            "lvn": [] if empty else list(profile.lvn),  # type: ignore[union-attr]
            "row_count": 0 if profile is None else profile.rows.height,
            "naked_pocs": naked,
            "naked_poc_row_size": naked_row,
        }
        if with_rows:
            rows = rows_around(profile.rows, profile.poc_index, around) if profile is not None else None
            if rows is not None and rows.height > MAX_ROWS_OUT:
                raise QueryError("rows", f"the profile has {rows.height} rows; rows=all lists at most {MAX_ROWS_OUT}: "
                                         "ask for rows=N around the POC or a larger row_size")
            body["rows"] = rows_json(rows) if rows is not None else []
        send_bytes(resp, orjson.dumps(body))
