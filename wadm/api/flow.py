"""Order flow now, served from memory: what the closed minutes give is computed once per change of
them, the open minute on each request.

An LLM (or a dashboard) polls ``/api/v1/order-flow/current/{symbol}`` often, so an answer must
cost little more than ``/health``. It splits at each source's ``closed_until``:

* the **closed** part (per-minute sums of the last 24 h or of the UTC day, the CVD at the split,
  the lookback's closed trades, its stacked imbalances, the stored gaps) is computed once per
  :attr:`BarsView.version` of every source: the bar scheduler moves it when it closes a minute,
  closes one again or learns of a gap. The lookback's trades come from the scheduler's memory
  (:attr:`BarsView.recent`) and from the store only for what memory does not hold (after a start);
* the **open** part (the trades of the minutes not closed yet) is added per request, on a thread
  of its own so that it never waits behind heavy requests and never runs on the event loop.

Windows and the lookback are whole minutes ending with the open one; each answer says where they
start. Pollers share answers: one is served as is for :data:`FRESH_NS` and, while a newer one is
computed in the background, up to :data:`STALE_NS`; its ``ts`` says when it was computed.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import polars as pl

from wadm.analytics.aggregates import round_qty
from wadm.analytics.bars import NS_PER_DAY, trade_bars
from wadm.analytics.combine import combine_footprints
from wadm.analytics.grid import Grid
from wadm.analytics.orderflow import RELATIVE_SLACK, imbalances, large_trades, stacked
from wadm.api.resources.analytics import reader, source_gaps
from wadm.api.resources.series import Context
from wadm.api.sources import NS_PER_HOUR, Scope, bar_grid, qty_places
from wadm.api.work import RETRY_AFTER
from wadm.errors import QueryError
from wadm.live import BarsView
from wadm.units import NS_PER_MIN, NS_PER_MS

__all__ = ["WINDOWS", "FlowCache", "FlowRequest", "LARGE_QUANTILE"]

log = logging.getLogger(__name__)

WINDOWS = {"5m": 5 * NS_PER_MIN, "15m": 15 * NS_PER_MIN, "1h": NS_PER_HOUR, "4h": 4 * NS_PER_HOUR,
           "24h": 24 * NS_PER_HOUR}
LARGE_QUANTILE = 0.99
FRESH_NS = 250_000_000  # an answer is served as is for this long...
STALE_NS = 2_000_000_000  # ...and up to this old while a newer one is computed
MAX_SHAPES = 64  # request shapes whose closed parts and answers are kept
MAX_COMPUTING = 16  # answers of different shapes computed at once; more are refused with 429
_POOL_MARGIN = 0.999  # closed trades kept as large-trade candidates: notional >= default threshold x this
_SUMS = ("volume", "buy", "sell", "trades")
_TAPE = ("ts_event", "price", "qty", "side")


@dataclass(frozen=True, slots=True)
class FlowRequest:
    """The parameters that shape an answer's closed part (the cache key with the symbol's sources)."""

    scope: Scope
    lookback: int  # ns, whole minutes
    ratio: float
    min_rows: int


@dataclass(frozen=True, slots=True)
class _Closed:
    """What the closed minutes of an answer's sources give."""

    stamp: tuple[tuple[int, int], ...]  # (version, closed_until) of every source
    splits: tuple[int, ...]  # closed_until of every source
    starts: list[int]  # minute starts with trades, ascending (every source)
    suffix: list[tuple[float, float, float, int]]  # sums of volume, buy, sell, trades from starts[i] on
    cvd: tuple[tuple[int, float], ...]  # per source: (UTC day, CVD at its split)
    last: tuple[int, float] | None  # (ts, price) of the newest closed trade, else of the newest bar's close
    tapes: tuple[pl.DataFrame | None, ...]  # per source: the lookback's closed trades (_TAPE columns)
    pool: tuple[pl.DataFrame | None, ...]  # per source: those of them at or near ``threshold`` and above
    merged_pool: tuple[pl.DataFrame | None, ...]  # per source: the same for prints merged by (ts, side)
    threshold: float | None  # the default large-trade notional (None: no closed trade to take it from)
    stacks: list[dict[str, Any]]
    grid_row: float | None
    gaps: list[dict[str, Any]]
    places: int


def _nice(x: float) -> float:
    """``x`` rounded down to 1, 2 or 5 times a power of ten (a threshold people read at a glance)."""
    if x <= 0:
        return 0.0
    power = 10 ** math.floor(math.log10(x))
    return float(max(m for m in (1, 2, 5) if m * power <= x * (1 + 1e-12)) * power)


def _default_threshold(tapes: Sequence[pl.DataFrame]) -> float | None:
    """The default large-trade notional: the LARGE_QUANTILE of the tapes' notionals, made nice."""
    if not tapes:
        return None
    notional = pl.concat(t.select(n=pl.col("price") * pl.col("qty")) for t in tapes)["n"].quantile(LARGE_QUANTILE)
    return _nice(float(notional)) if notional else None


def _stacks(cells: pl.DataFrame, grid: Grid, ratio: float, min_rows: int) -> list[dict[str, Any]]:
    found = imbalances(cells, ratio=ratio)
    runs = stacked(found, min_rows=min_rows)
    if runs.height == 0:
        return []
    runs = runs.select("start", "side", grid.price(pl.col("from_index")).alias("from"),
                       grid.price(pl.col("to_index")).alias("to"), "rows")
    return [{"ts": r["start"] // NS_PER_MS, "side": r["side"], "from": r["from"], "to": r["to"], "rows": r["rows"]}
            for r in runs.sort("start", descending=True).iter_rows(named=True)]


def _closed_part(stamp: tuple[tuple[int, int], ...], req: FlowRequest, minutes: list[pl.DataFrame],
                 tapes: list[pl.DataFrame | None], grid: Grid | None, gaps: list[dict[str, Any]], places: int,
                 lookback_start: int) -> _Closed:
    splits = tuple(until for _, until in stamp)
    sums = [m.filter(pl.col("ts_event") < until).select("ts_event", *_SUMS)
            for m, until in zip(minutes, splits, strict=True) if m.height]
    starts: list[int] = []
    suffix: list[tuple[float, float, float, int]] = []
    if sums:
        per = pl.concat(sums).group_by("ts_event").agg(pl.col(c).sum() for c in _SUMS).sort("ts_event")
        starts = per["ts_event"].to_list()
        acc = (0.0, 0.0, 0.0, 0)
        rows = list(zip(*(per[c].to_list() for c in _SUMS), strict=True))
        for v, b, s, n in reversed(rows):
            acc = (acc[0] + v, acc[1] + b, acc[2] + s, acc[3] + n)
            suffix.append(acc)
        suffix.reverse()
    cvd = []
    last: tuple[int, float] | None = None  # the newest closed bar's (start, close)
    for m, until in zip(minutes, splits, strict=True):
        closed = m.filter(pl.col("ts_event") < until)
        if closed.height:
            ts = int(closed["ts_event"][-1])
            cvd.append((ts - ts % NS_PER_DAY, float(closed["cvd"][-1])))
            if last is None or ts > last[0]:
                last = (ts, float(closed["close"][-1]))
        else:
            cvd.append((0, 0.0))
    every = [t for t in tapes if t is not None and t.height]
    if every:  # the lookback's newest closed trade: as new as any bar's close, and exact across sources
        newest = max(every, key=lambda t: int(t["ts_event"][-1]))
        last = (int(newest["ts_event"][-1]), float(newest["price"][-1]))
    threshold = _default_threshold(every)
    floor = (threshold or 0.0) * _POOL_MARGIN
    pool = tuple(None if t is None else t.filter(pl.col("price") * pl.col("qty") >= floor) for t in tapes)
    merged_pool = tuple(None if t is None or t.height == 0 else large_trades(t, min_notional=floor, merge=True)
                        for t in tapes)
    stacks: list[dict[str, Any]] = []
    if grid is not None:
        recent = [m.filter((pl.col("ts_event") >= lookback_start) & (pl.col("ts_event") < until))
                  for m, until in zip(minutes, splits, strict=True)]
        stacks = _stacks(combine_footprints(recent, grid), grid, req.ratio, req.min_rows)
    return _Closed(stamp, splits, starts, suffix, tuple(cvd), last, tuple(tapes), pool, merged_pool, threshold, stacks,
                   None if grid is None else grid.row, gaps, places)


def _open_part(closed: _Closed, req: FlowRequest, views: Sequence[BarsView | None],
               stored: Sequence[pl.DataFrame | None], now: int, min_notional: float | None, limit: int
               ) -> dict[str, Any]:
    """The answer: the closed part with the open minutes' trades added (from the live view, else
    from ``stored``)."""
    places = closed.places
    minute = now - now % NS_PER_MIN
    day = now - now % NS_PER_DAY
    lookback_start = minute - req.lookback + NS_PER_MIN
    opened = [t if v is None else v.open_trades() for v, t in zip(views, stored, strict=True)]
    parts = [t.select(*_TAPE) for t in opened if t is not None and t.height]
    tape = pl.concat(parts).sort("ts_event", maintain_order=True) if parts else None
    out: dict[str, Any] = {"ts": now // NS_PER_MS}
    price = closed.last[1] if closed.last is not None else None
    if tape is not None:
        price = float(tape["price"][-1])
    out["price"] = price
    cvd = sum(value for d, value in closed.cvd if d == day)
    if tape is not None:
        today = tape.filter(pl.col("ts_event") >= day)
        cvd += float(today.select((pl.col("qty") * pl.col("side")).sum()).item())
    out["cvd"] = round(cvd, places)
    bar_trades = None if tape is None else tape.filter(pl.col("ts_event") >= minute)
    if bar_trades is not None and bar_trades.height:
        bar = round_qty(trade_bars(bar_trades, NS_PER_MIN), places).row(0, named=True)
        out["bar"] = {"start": minute // NS_PER_MS, **{k: bar[k] for k in (
            "open", "high", "low", "close", "volume", "buy", "sell", "delta", "delta_min", "delta_max", "trades")}}
    else:
        out["bar"] = {"start": minute // NS_PER_MS, "open": None, "high": None, "low": None, "close": None,
                      "volume": 0.0, "buy": 0.0, "sell": 0.0, "delta": 0.0, "delta_min": 0.0, "delta_max": 0.0,
                      "trades": 0}
    per_minute: list[tuple[int, float, float, float, int]] = []
    if tape is not None:
        per = tape.group_by(ts=pl.col("ts_event") - pl.col("ts_event") % NS_PER_MIN).agg(
            volume=pl.col("qty").sum(), buy=pl.col("qty").filter(pl.col("side") > 0).sum(),
            sell=pl.col("qty").filter(pl.col("side") < 0).sum(), trades=pl.len())
        per_minute = list(per.iter_rows())
    windows = {}
    for name, span in WINDOWS.items():
        first = minute - span + NS_PER_MIN  # whole minutes, the open one last
        at = bisect.bisect_left(closed.starts, first)
        volume, buy, sell, trades = closed.suffix[at] if at < len(closed.suffix) else (0.0, 0.0, 0.0, 0)
        for ts, v, b, s, n in per_minute:
            if ts >= first:
                volume, buy, sell, trades = volume + v, buy + b, sell + s, trades + n
        windows[name] = {"start": first // NS_PER_MS, "volume": round(volume, places), "buy": round(buy, places),
                         "sell": round(sell, places), "delta": round(buy - sell, places), "trades": int(trades)}
    out["windows"] = windows
    if min_notional is None:
        min_notional = closed.threshold
        if min_notional is None and tape is not None:
            min_notional = _default_threshold([tape])
    out["large_notional"] = min_notional or 0.0
    out["lookback_start"] = lookback_start // NS_PER_MS
    out["large_trades"] = _large(closed, req, opened, lookback_start, min_notional, limit, merge=False)
    out["large_orders"] = _large(closed, req, opened, lookback_start, min_notional, limit, merge=True)
    out["imbalances"] = [s for s in closed.stacks if s["ts"] * NS_PER_MS >= lookback_start]
    out["imbalance_row_size"] = closed.grid_row
    return out


def _large(closed: _Closed, req: FlowRequest, opened: Sequence[pl.DataFrame | None], lookback_start: int,
           min_notional: float | None, limit: int, *, merge: bool) -> list[dict[str, Any]]:
    """The newest trades whose notional reaches ``min_notional`` in the lookback, every source; with
    ``merge``, prints of one timestamp and side taken together (a taker sweeping several prices)."""
    if not min_notional:
        return []
    use_pool = closed.threshold is not None and min_notional >= closed.threshold * _POOL_MARGIN
    pools = closed.merged_pool if merge else closed.pool
    found = []
    for i, (series, new) in enumerate(zip(req.scope.sources, opened, strict=True)):
        parts = []
        if merge and use_pool:  # the pool holds merged prints already, at or above its floor
            pool = pools[i]
            if pool is not None and pool.height:
                parts.append(pool.filter((pl.col("ts") >= lookback_start)
                                         & (pl.col("notional") >= min_notional * (1.0 - RELATIVE_SLACK))))
            frames = [new.select(*_TAPE).filter(pl.col("ts_event") >= lookback_start)] \
                if new is not None and new.height else []
        else:
            old = pools[i] if use_pool else closed.tapes[i]
            frames = [t.select(*_TAPE).filter(pl.col("ts_event") >= lookback_start) for t in (old, new)
                      if t is not None and t.height]
        if frames:
            parts.append(large_trades(pl.concat(frames), min_notional=min_notional, merge=merge))
        parts = [p.head(limit) for p in parts if p.height]
        if parts:
            hits = pl.concat(parts).sort("ts", descending=True, maintain_order=True)
            found.append(hits.with_columns(exchange=pl.lit(str(series.venue)), market=pl.lit(str(series.market))))
    if not found:
        return []
    rows = pl.concat(found).sort("ts", descending=True, maintain_order=True).head(limit)
    return [{"ts": r["ts"] // NS_PER_MS, "price": round(r["price"], 8), "qty": r["qty"],
             "notional": round(r["notional"], 4), "side": r["side"], **({"prints": r["prints"]} if merge else {}),
             "exchange": r["exchange"], "market": r["market"]} for r in rows.iter_rows(named=True)]


class FlowCache:
    """The closed parts of current order flow, per request shape, and the thread that adds the open part."""

    def __init__(self) -> None:
        self._closed: dict[tuple[Any, ...], _Closed] = {}
        self._making: dict[tuple[Any, ...], asyncio.Task[_Closed]] = {}
        self._answers: dict[tuple[Any, ...], tuple[int, dict[str, Any], list[dict[str, Any]]]] = {}
        self._computing: dict[tuple[Any, ...], asyncio.Task[tuple[int, dict[str, Any], list[dict[str, Any]]]]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wadm-flow")

    async def answer(self, ctx: Context, req: FlowRequest, now: int, min_notional: float | None, limit: int
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The answer's body (without its head) and its gaps, at most :data:`FRESH_NS` old (its ``ts``
        says when it was computed); an older one is computed again in the background while it is
        served, up to :data:`STALE_NS`."""
        key = (req.scope.sources, req.lookback, req.ratio, req.min_rows, min_notional, limit)
        done = self._answers.get(key)
        if done is not None and now - done[0] < STALE_NS:
            if now - done[0] >= FRESH_NS:
                with contextlib.suppress(QueryError):  # busy: this one stays served a little longer
                    self._refresh(ctx, req, key, now, min_notional, limit)
            return done[1], done[2]
        task = self._refresh(ctx, req, key, now, min_notional, limit)
        _, body, gaps = await asyncio.shield(task)
        return body, gaps

    def _refresh(self, ctx: Context, req: FlowRequest, key: tuple[Any, ...], now: int, min_notional: float | None,
                 limit: int) -> asyncio.Task[tuple[int, dict[str, Any], list[dict[str, Any]]]]:
        """The running computation of ``key``'s answer, started if none runs (one at a time per key)."""
        task = self._computing.get(key)
        if task is None or task.done():
            if len(self._computing) >= MAX_COMPUTING:  # many shapes at once (a careless or hostile client)
                raise QueryError(None, f"the server is computing {MAX_COMPUTING} order-flow answers; retry in "
                                       f"{RETRY_AFTER} s", status=429, code="busy",
                                 headers={"Retry-After": str(RETRY_AFTER)})
            task = asyncio.get_running_loop().create_task(self._compute(ctx, req, key, now, min_notional, limit))
            self._computing[key] = task
            task.add_done_callback(self._forget(self._computing, key))
        return task

    async def _compute(self, ctx: Context, req: FlowRequest, key: tuple[Any, ...], now: int,
                       min_notional: float | None, limit: int) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
        views = [ctx.live.bars(s) for s in req.scope.sources]  # references only, taken on the loop
        stamp = tuple((v.version, v.closed_until) if v is not None else (-1, now - now % NS_PER_MIN) for v in views)
        shape = key[:4]
        closed = self._closed.get(shape)
        if closed is None or closed.stamp != stamp:
            making = self._making.get(shape)
            if making is None or making.done():
                making = asyncio.get_running_loop().create_task(self._make(ctx, req, views, stamp, now))
                self._making[shape] = making
                making.add_done_callback(self._forget(self._making, shape))
            closed = await asyncio.shield(making)
            if len(self._closed) > MAX_SHAPES:  # request shapes come and go: keep the cache small
                self._closed.clear()
            self._closed[shape] = closed
        # Without a live view (``wadm serve``) the open minute's trades are those the store has.
        read = reader(ctx)
        stored = [await read.trades(s, until, now) if v is None else None
                  for s, v, (_, until) in zip(req.scope.sources, views, stamp, strict=True)]
        body = await asyncio.get_running_loop().run_in_executor(
            self._pool, _open_part, closed, req, views, stored, now, min_notional, limit)
        if len(self._answers) > MAX_SHAPES:
            self._answers.clear()
        self._answers[key] = (now, body, closed.gaps)
        return now, body, closed.gaps

    async def _make(self, ctx: Context, req: FlowRequest, views: list[BarsView | None],
                    stamp: tuple[tuple[int, int], ...], now: int) -> _Closed:
        scope = req.scope
        minute = now - now % NS_PER_MIN
        lookback_start = minute - req.lookback + NS_PER_MIN
        day_or_24h = min(now - now % NS_PER_DAY, minute - 24 * NS_PER_HOUR + NS_PER_MIN)
        async with ctx.work.turn():
            read = reader(ctx)
            minutes = [await read.bars(s, "1m", day_or_24h, until - 1, now) for s, (_, until) in
                       zip(scope.sources, stamp, strict=True)]
            tapes: list[pl.DataFrame | None] = []
            for series, view, (_, until) in zip(scope.sources, views, stamp, strict=True):
                recent = None if view is None else view.recent
                memory_from = until if view is None or recent is None else max(view.recent_from, lookback_start)
                stored = await read.trades(series, lookback_start, memory_from - 1) \
                    if lookback_start < memory_from else None
                tapes.append(await ctx.work.run(_closed_tape, stored, recent, memory_from, until))
            try:
                grid = bar_grid([m.filter(pl.col("ts_event") >= lookback_start) for m in minutes], None, "1m")
            except QueryError:
                grid = None
            gaps = await source_gaps(ctx, scope, "1m", [m.filter(pl.col("ts_event") >= scope.start) for m in minutes],
                                     scope.start)
            places = qty_places(ctx.live, scope.sources, minutes)
            return await ctx.work.run(_closed_part, stamp, req, minutes, tapes, grid, gaps, places, lookback_start)

    @staticmethod
    def _forget(running: dict[tuple[Any, ...], Any], key: tuple[Any, ...]) -> Callable[[asyncio.Task[Any]], None]:
        def done(task: asyncio.Task[Any]) -> None:
            if running.get(key) is task:
                del running[key]
            error = None if task.cancelled() else task.exception()
            if error is not None and not isinstance(error, QueryError):  # QueryError: busy, its request said so
                log.warning("Order flow could not be computed: %s", error)

        return done

    def close(self) -> None:
        """Stop the thread once its work is done."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _closed_tape(stored: pl.DataFrame | None, recent: pl.DataFrame | None, memory_from: int, until: int
                 ) -> pl.DataFrame | None:
    """The lookback's closed trades: the store's before ``memory_from``, memory's from there to ``until``."""
    frames = []
    if stored is not None and stored.height:
        frames.append(stored.filter(pl.col("ts_event") < min(memory_from, until)).select(*_TAPE))
    if recent is not None and recent.height:
        ts = pl.col("ts_event")
        frames.append(recent.filter((ts >= memory_from) & (ts < until)).select(*_TAPE))
    frames = [f for f in frames if f.height]
    if not frames:
        return None
    return pl.concat(frames, how="vertical_relaxed").sort("ts_event", maintain_order=True)
