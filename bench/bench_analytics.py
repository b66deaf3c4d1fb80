"""Analytics: Volume Profile, footprint bars and the minute close, against pure-Python baselines.

Every group's baseline is a straightforward pure-Python implementation of the same computation
on the same data, timed in the same run (interleaved pairs, as in ``bench_parse.py``); the
checks before timing make sure both give the same answer. Nothing here asserts on time.

* ``vp-trades``: the Volume Profile (rows, POC, two-row value area) of 1,000,000 trades of a
  synthetic BTC-like tape (0.01 tick, rows of 25): :func:`wadm.analytics.profile.rows_from_trades`
  + :func:`~wadm.analytics.profile.volume_profile`. Target <= 50 ms.
* ``vp-footprints``: the same profile from 7 days of stored hourly footprints (168 bars, rows
  of 25): :func:`wadm.analytics.aggregates.profile_rows` + ``volume_profile``. Target <= 20 ms.
* ``footprint``: 1-minute footprint bars of one hour of 300,000 trades, with diagonal imbalances
  and stacks: :func:`~wadm.analytics.aggregates.build_bars` + ``footprint_cells`` +
  :func:`~wadm.analytics.orderflow.imbalances` + ``stacked``. Target <= 100 ms.
* ``close``: the bar scheduler closing one minute of 8 symbols (5,000 trades each): the
  event-loop thread's CPU time during :meth:`wadm.pipeline.bars.BarScheduler.step` (bars, hours
  and indicator snapshots computed on its worker thread, results queued for the store). Baseline:
  the same work done on the loop (what a scheduler without a worker thread would cost the
  receive path). Target <= 20 ms of loop time per minute.

Run: ``uv run pytest bench/bench_analytics.py --benchmark-only`` (about 3 minutes).
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bench.conftest import GROUPS, Row, group, paired_ratios, record
from wadm.analytics.aggregates import build_bars, chain_cvd, day_snapshot, footprint_cells, profile_rows
from wadm.analytics.grid import Grid
from wadm.analytics.orderflow import imbalances, stacked
from wadm.analytics.profile import rows_from_trades, volume_profile
from wadm.config import Settings
from wadm.pipeline.bars import CLOSE_GRACE, BarScheduler, _close_minutes
from wadm.pipeline.collector import Collector, CollectorSettings
from wadm.pipeline.service import build_plans
from wadm.pipeline.writer import Writer
from wadm.records import TRADE_SCHEMA_INT_ID, TRADES, BatchKey
from wadm.store import SqliteStore
from wadm.transport.rest import RestClient, WeightBudget
from wadm.venues import rest_limit
from wadm.venues.base import Instrument

S = 1_000_000_000
MIN = 60 * S
HOUR = 60 * MIN
TICK, ROW = 0.01, 25.0
GRID = Grid(TICK, ROW)
SEED = 5
BASELINE = "baseline: pure Python"
WADM = "wadm (polars)"
TARGETS = {"vp-trades": 0.050, "vp-footprints": 0.020, "footprint": 0.100, "close": 0.020}
_CACHE: dict[str, Any] = {}


def _cached(key: str, make: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


HOURLY_MOVE = 0.004  # a BTC-like hour: the price moves about 0.4 % (standard deviation)


def tape(n: int, span: int, start: int = 1_790_000_000 * S // HOUR * HOUR, seed: int = SEED) -> pl.DataFrame:
    """``n`` trades over ``span`` ns: a random walk from 60,000 on the 0.01 tick, lots of 0.00001.

    Each trade moves the price by a normal step sized so that an hour moves about HOURLY_MOVE
    (a day about 2 %, a week about 5 %): rows of 25 then hold a realistic spread of volume.
    """
    rng = random.Random(seed)
    ts = sorted(start + rng.randrange(span) for _ in range(n))
    per_hour = n * HOUR / span
    step = 60_000 * HOURLY_MOVE / math.sqrt(per_hour) / TICK  # ticks
    price, prices = 6_000_000.0, []
    for _ in range(n):
        price = max(100_000.0, price + rng.gauss(0.0, step))
        prices.append(round(price) / 100)
    return pl.DataFrame({
        "ts_event": ts, "ts_recv": ts, "id": range(n), "price": prices,
        "qty": [rng.randrange(1, 50_000) / 100_000 for _ in range(n)],
        "side": [rng.choice((1, -1)) for _ in range(n)],
    }, schema=TRADE_SCHEMA_INT_ID)


# -- pure-Python baselines ----------------------------------------------------------------------


def py_profile(index: list[int], vols: list[int], value_area: float = 0.70) -> tuple[int, int, int]:
    """(POC, VAL, VAH) row indices of dense ``index``/``vols`` (volume in integer units), C3-C5."""
    top = max(vols)
    centre2 = index[0] + index[-1]
    poc = min((abs(2 * index[i] - centre2), index[i], i) for i, v in enumerate(vols) if v == top)[2]
    goal = value_area * sum(vols)
    lo = hi = poc
    acc = vols[poc]
    while acc < goal and (lo > 0 or hi < len(vols) - 1):
        up = sum(vols[hi + 1:hi + 3])
        down = sum(vols[max(0, lo - 2):lo])
        if hi < len(vols) - 1 and (up >= down or lo == 0):
            acc += up
            hi = min(hi + 2, len(vols) - 1)
        else:
            acc += down
            lo = max(lo - 2, 0)
    return index[poc], index[lo], index[hi]


def _dense(rows: dict[int, int]) -> tuple[list[int], list[int]]:
    lo, hi = min(rows), max(rows)
    index = list(range(lo, hi + 1))
    return index, [rows.get(k, 0) for k in index]


def py_vp_trades(prices: list[float], qtys: list[float], tick: float, per_row: int) -> tuple[int, int, int]:
    rows: dict[int, int] = defaultdict(int)
    for p, q in zip(prices, qtys, strict=True):
        rows[round(p / tick) // per_row] += round(q * 100_000)
    return py_profile(*_dense(rows))


def py_vp_cells(cells: list[tuple[list[int], list[float], list[float]]]) -> tuple[int, int, int]:
    rows: dict[int, int] = defaultdict(int)
    for index, buys, sells in cells:
        for k, b, s in zip(index, buys, sells, strict=True):
            rows[k] += round((b + s) * 100_000)
    return py_profile(*_dense(rows))


def py_footprint(ts: list[int], prices: list[float], qtys: list[float], sides: list[int], tick: float,
                 per_row: int, ratio: float = 3.0, min_rows: int = 3) -> tuple[int, int]:
    """Per-minute cells, diagonal imbalances and stacks; returns (bars, stacks)."""
    bars: dict[int, dict[int, list[float]]] = defaultdict(dict)
    for t, p, q, s in zip(ts, prices, qtys, sides, strict=True):
        cell = bars[t // MIN].setdefault(round(p / tick) // per_row, [0.0, 0.0])
        cell[0 if s > 0 else 1] += q
    stacks = 0
    for cells in bars.values():
        lo, hi = min(cells), max(cells)
        runs = {"buy": 0, "sell": 0}
        for k in range(lo, hi + 1):
            buy = cells.get(k, (0.0, 0.0))[0]
            sell_below = cells.get(k - 1, (0.0, 0.0))[1] if k > lo else None
            sell = cells.get(k, (0.0, 0.0))[1]
            buy_above = cells.get(k + 1, (0.0, 0.0))[0] if k < hi else None
            hit = {"buy": sell_below is not None and buy > 0 and buy >= ratio * sell_below,
                   "sell": buy_above is not None and sell > 0 and sell >= ratio * buy_above}
            for side in runs:
                runs[side] = runs[side] + 1 if hit[side] else 0
                if runs[side] == min_rows:
                    stacks += 1
    return len(bars), stacks


# -- groups -------------------------------------------------------------------------------------


def _check(key: str) -> Callable[[dict[str, Row]], str]:
    def verdict(rows: dict[str, Row]) -> str:
        row = rows.get(WADM)
        if row is None:
            return ""
        return f"-> wadm {row.value * 1e3:.1f} ms (median): {'MET' if row.value <= TARGETS[key] else 'NOT MET'}"
    return verdict


group("vp-trades", "Volume Profile of 1,000,000 trades (rows of 25, tick 0.01)", kind="time", baseline=BASELINE,
      target="<= 50 ms", check=_check("vp-trades"))
group("vp-footprints", "Volume Profile of 7 days of hourly footprints (168 bars, rows of 25)", kind="time",
      baseline=BASELINE, target="<= 20 ms", check=_check("vp-footprints"))
group("footprint", "1m footprint bars with imbalances and stacks, one hour of 300,000 trades", kind="time",
      baseline=BASELINE, target="<= 100 ms", check=_check("footprint"))
group("close", "closing one minute of 8 symbols x 5,000 trades: event-loop thread CPU time", kind="time",
      baseline="baseline: the same work on the loop", target="<= 20 ms of loop time", check=_check("close"))


@pytest.mark.parametrize("variant", [BASELINE, WADM])
def test_vp_trades(benchmark: Any, variant: str) -> None:
    trades: pl.DataFrame = _cached("tape-1m", lambda: tape(1_000_000, 24 * HOUR))
    prices, qtys = trades["price"].to_list(), trades["qty"].to_list()
    per_row = GRID.ticks_per_row

    def ours() -> Any:
        return volume_profile(rows_from_trades(trades, GRID), GRID)

    def base() -> Any:
        return py_vp_trades(prices, qtys, TICK, per_row)

    p = ours()
    assert (p.poc, p.val, p.vah) == tuple(k * ROW for k in base()), "both give the same POC and value area"
    fn = ours if variant == WADM else base
    benchmark.group = "vp-trades"
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    paired = [] if variant == BASELINE else paired_ratios(base, ours, budget=4.0, min_pairs=5)
    record("vp-trades", variant, benchmark, per=trades.height, paired=paired)


@pytest.mark.parametrize("variant", [BASELINE, WADM])
def test_vp_footprints(benchmark: Any, variant: str) -> None:
    def make() -> pl.DataFrame:
        trades = tape(700_000, 7 * 24 * HOUR, seed=SEED + 1)
        return chain_cvd(build_bars(trades, HOUR, grid=GRID, revision=1, lot=0.00001))

    hours: pl.DataFrame = _cached("hours-7d", make)
    assert hours.height == 168
    cells = list(zip(hours["fp_index"].to_list(), hours["fp_buy"].to_list(), hours["fp_sell"].to_list(), strict=True))

    def ours() -> Any:
        return volume_profile(profile_rows(hours, GRID), GRID)

    def base() -> Any:
        return py_vp_cells(cells)

    p = ours()
    assert (p.poc, p.val, p.vah) == tuple(k * ROW for k in base())
    fn = ours if variant == WADM else base
    benchmark.group = "vp-footprints"
    benchmark(fn)
    paired = [] if variant == BASELINE else paired_ratios(base, ours)
    cells_n = int(hours["fp_index"].list.len().sum())
    record("vp-footprints", variant, benchmark, per=cells_n, note=f"({cells_n:,} footprint cells)", paired=paired)


@pytest.mark.parametrize("variant", [BASELINE, WADM])
def test_footprint_bars(benchmark: Any, variant: str) -> None:
    trades: pl.DataFrame = _cached("tape-300k", lambda: tape(300_000, HOUR, seed=SEED + 2))
    cols = [trades[c].to_list() for c in ("ts_event", "price", "qty", "side")]

    def ours() -> tuple[int, int]:
        bars = build_bars(trades, MIN, grid=GRID, revision=1, lot=0.00001)
        stacks = stacked(imbalances(footprint_cells(bars).drop("row")), min_rows=3)
        return bars.height, stacks.height

    def base() -> tuple[int, int]:
        return py_footprint(*cols, TICK, GRID.ticks_per_row)  # type: ignore[arg-type]

    assert ours()[0] == base()[0] == 60
    fn = ours if variant == WADM else base
    benchmark.group = "footprint"
    benchmark.pedantic(fn, rounds=7, iterations=1, warmup_rounds=1)
    paired = [] if variant == BASELINE else paired_ratios(base, ours, min_pairs=8)
    record("footprint", variant, benchmark, per=trades.height, paired=paired)


# -- the minute close ---------------------------------------------------------------------------


class _Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _close_rig(folder: Path) -> tuple[BarScheduler, Writer, list[BatchKey], _Clock, list[RestClient]]:
    settings = Settings(channels=("trades",), data_dir=folder)
    writer = Writer(SqliteStore(folder / "bench.db"), max_pending_rows=100_000_000)
    clients, collectors = [], []
    for plan in build_plans(settings):
        client = RestClient("http://127.0.0.1:9", WeightBudget.of(rest_limit(plan.venue, plan.market)))
        clients.append(client)
        knobs = CollectorSettings(stale_after=30, rotate_after=3600, reconnect_min_delay=0.1, reconnect_max_delay=1,
                                  flush_rows=1000, flush_interval=1.0, backfill_deadline=30)
        collectors.append(Collector(plan, knobs, writer, client))
    clock = _Clock(1_790_000_000 * S // HOUR * HOUR + 10 * MIN + 5 * S)
    inst = Instrument(TICK, 0.00001, "0.01", "0.00001")
    sched = BarScheduler(settings, writer.store, writer, collectors, lambda series: inst, clock=clock)
    keys = [k for k in sched.series if k.table == TRADES]
    return sched, writer, keys, clock, clients


def _loop_time(coro_fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> float:
    """CPU seconds the event-loop thread spends running ``coro_fn()`` to completion."""
    t0 = time.thread_time()
    loop.run_until_complete(coro_fn())
    return time.thread_time() - t0


@pytest.mark.parametrize("variant", ["baseline: the same work on the loop", WADM])
def test_minute_close(benchmark: Any, variant: str) -> None:
    loop = asyncio.new_event_loop()
    folder = Path(tempfile.mkdtemp(prefix="wadm-bench-"))
    sched, writer, keys, clock, clients = _close_rig(folder)
    assert len(keys) == 8
    minute_trades = {k: tape(5000, MIN, start=0, seed=i) for i, k in enumerate(keys)}
    state = {"minute": clock.now - clock.now % MIN}

    def feed() -> None:
        """One more minute of trades on every symbol, then the clock past its close."""
        start = state["minute"]
        for key, frame in minute_trades.items():
            writer.put(key, frame.with_columns(pl.col("ts_event") + start, pl.col("ts_recv") + start), str(key))
        state["minute"] = start + MIN
        clock.now = start + MIN + CLOSE_GRACE + 2 * S

    async def ours() -> None:
        await sched.step()

    async def on_loop() -> None:
        until = clock.now - clock.now % MIN
        for st in sched.series.values():
            frames, st.pending = st.pending, []
            bars, _ = _close_minutes(frames, st.closed_until, until, sched.grid(st, 60_000.0), 1, (), st.bars,
                                     0.00001)
            st.closed_until = until
            st.bars = pl.concat([st.bars, bars])
            writer.put(st.key("bars_1m"), bars, "bars_1m")
            writer.put(st.key("indicators"), day_snapshot(st.bars, TICK, until, until - until % (24 * HOUR)),
                       "indicators")

    run = ours if variant == WADM else on_loop
    times: list[float] = []

    def once() -> None:
        feed()
        times.append(_loop_time(run, loop))

    for _ in range(3):
        once()  # warm up: the grid, the thread
    times.clear()
    benchmark.group = "close"
    benchmark.pedantic(once, rounds=15, iterations=1)
    # What counts is the loop thread's CPU time, not the round's wall time (which includes the
    # worker thread): the summary reports that.
    GROUPS["close"].rows[variant] = Row(variant, statistics.median(times), best=min(times), per=8,
                                        note="loop-thread CPU per minute close")
    loop.run_until_complete(sched.close())
    for client in clients:
        loop.run_until_complete(client.close())
    loop.close()
    assert all(math.isfinite(t) for t in times)
