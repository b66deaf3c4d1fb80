"""The bar scheduler: minute and hour closes, late trades, gaps, restarts, snapshots.

Real parts: a :class:`Writer` draining into a store (SQLite in ``tmp_path``, then MongoDB: the
tests' wire server) and real collectors (never connected) whose writer listeners feed the
scheduler. Time is a clock the test moves; trades are queued the way a collector's cut queues
them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
import pytest_asyncio

from tests.helpers import until
from wadm.analytics.aggregates import footprint_cells, latest
from wadm.analytics.bars import footprints, resample, trade_bars
from wadm.analytics.grid import Grid
from wadm.config import Settings
from wadm.live import BarsView, Series
from wadm.pipeline.bars import CLOSE_GRACE, BarScheduler
from wadm.pipeline.collector import Collector, CollectorSettings
from wadm.pipeline.service import build_plans
from wadm.pipeline.writer import Writer
from wadm.records import BARS_1H, BARS_1M, INDICATORS, TRADE_SCHEMA_INT_ID, TRADES, BatchKey, Market, Venue
from wadm.store import SqliteStore, Store
from wadm.store.mongo import MongoStore
from wadm.transport.rest import RestClient, WeightBudget
from wadm.venues import rest_limit
from wadm.venues.base import Gap, Instrument

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

S = 1_000_000_000
MIN = 60 * S
HOUR = 60 * MIN
DAY0 = 1_780_000_000 * S - 1_780_000_000 * S % (24 * HOUR)  # a UTC midnight
STREAM = "btcusdt@aggTrade"
BTC = Series(Venue.BINANCE, Market.SPOT, "BTCUSDT")
TRADE_KEY = BatchKey(TRADES, Venue.BINANCE, Market.SPOT, "BTCUSDT")
KNOBS = CollectorSettings(stale_after=30.0, rotate_after=3600.0, reconnect_min_delay=0.05, reconnect_max_delay=0.3,
                          flush_rows=1000, flush_interval=1.0, backfill_deadline=30.0)
TICK = Instrument(0.01, 0.00001, "0.01", "0.00001")


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@dataclass
class Rig:
    store: Store
    writer: Writer
    collectors: list[Collector]
    clients: list[RestClient]
    settings: Settings
    clock: Clock
    tick: Instrument | None = TICK
    made: list[BarScheduler] = field(default_factory=list)
    next_id: int = 1

    def scheduler(self) -> BarScheduler:
        sched = BarScheduler(self.settings, self.store, self.writer, self.collectors,
                             lambda series: self.tick if series == BTC else None, clock=self.clock)
        self.made.append(sched)
        return sched

    def trades(self, rows: Sequence[tuple[int, float, float, int]]) -> pl.DataFrame:
        """(ts ns, price, qty, side) rows as a stored-trade frame with fresh ids."""
        ids = list(range(self.next_id, self.next_id + len(rows)))
        self.next_id += len(rows)
        return pl.DataFrame(
            {"ts_event": [r[0] for r in rows], "ts_recv": [r[0] for r in rows], "id": ids,
             "price": [r[1] for r in rows], "qty": [r[2] for r in rows], "side": [r[3] for r in rows]},
            schema=TRADE_SCHEMA_INT_ID,
        )

    def put(self, rows: Sequence[tuple[int, float, float, int]]) -> pl.DataFrame:
        frame = self.trades(rows)
        self.writer.put(TRADE_KEY, frame, STREAM)
        return frame

    async def written(self) -> None:
        await until(lambda: self.writer.pending_batches == 0, 10, "the writer to drain")

    async def read(self, table: str) -> pl.DataFrame:
        await self.written()
        return await self.store.read(BatchKey(table, Venue.BINANCE, Market.SPOT, "BTCUSDT"), 0, 2**62)

    async def at(self, sched: BarScheduler, ts: int) -> None:
        """Move the clock to ``ts`` and let the scheduler work (twice: close, then close again)."""
        self.clock.now = ts
        await sched.step()
        await self.written()
        await sched.step()
        await self.written()


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(
        targets=Settings().targets[:1], channels=("trades",), data_dir=tmp_path, flush_interval=1.0,
        **kw,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture(params=["sqlite", "mongodb"])
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    store: Store
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "bars.db")
    else:
        store = MongoStore(request.getfixturevalue("mongodb_uri"), database=request.getfixturevalue("mongodb_database"))
    await store.open()
    writer = Writer(store, max_pending_rows=1_000_000)
    writer.ready.set()
    drain = asyncio.get_running_loop().create_task(writer.run_drain())
    settings = _settings(tmp_path)
    settings = replace(settings, targets=(replace(settings.targets[0], symbols=("BTCUSDT",)),))
    clients = []
    collectors = []
    for plan in build_plans(settings):
        client = RestClient("http://127.0.0.1:9", WeightBudget.of(rest_limit(plan.venue, plan.market)))
        clients.append(client)
        collectors.append(Collector(plan, KNOBS, writer, client))
    rig = Rig(store, writer, collectors, clients, settings, Clock(DAY0 + 10 * HOUR + 30 * S))
    yield rig
    for sched in rig.made:
        await sched.close()
    writer.close()
    await asyncio.wait_for(drain, 10)
    for client in clients:
        await client.close()
    await store.close()


def _minute_trades(start: int, n: int, base: float = 100.0) -> list[tuple[int, float, float, int]]:
    return [(start + i * S // 2, round(base + (i % 7) * 0.01 - 0.03, 2), 0.1 * (1 + i % 3), 1 if i % 3 else -1)
            for i in range(n)]


def _expected(trades: pl.DataFrame, grid: Grid) -> tuple[pl.DataFrame, pl.DataFrame]:
    return trade_bars(trades, MIN), footprints(trades, grid, MIN)


async def test_minutes_close_with_bars_footprints_and_a_chained_cvd(rig: Rig) -> None:
    sched = rig.scheduler()
    t0 = DAY0 + 10 * HOUR + MIN
    a = rig.put(_minute_trades(t0, 40))
    b = rig.put(_minute_trades(t0 + MIN, 30, base=100.5))
    await rig.at(sched, t0 + MIN + CLOSE_GRACE // 2)
    assert (await rig.read(BARS_1M)).height == 0, "a minute is not closed before its grace has passed"
    await rig.at(sched, t0 + 2 * MIN + CLOSE_GRACE + 2 * S)
    stored = latest(await rig.read(BARS_1M))
    row = sched.state(BTC).row  # type: ignore[union-attr]
    assert row == Decimal("0.05"), "BTC-like price 100 and tick 0.01 get the default row 100/3000 -> 0.05"
    grid = Grid(0.01, 0.05)
    bars, cells = _expected(pl.concat([a, b]), grid)
    assert stored["ts_event"].to_list() == bars["start"].to_list() == [t0, t0 + MIN]
    for name in ("open", "high", "low", "close", "volume", "buy", "sell", "delta", "delta_min", "delta_max",
                 "trades", "cvd"):
        assert stored[name].to_list() == pytest.approx(bars[name].to_list()), name
    assert stored["complete"].to_list() == [True, True]
    first = cells.filter(pl.col("start") == t0)
    assert stored["fp_index"][0].to_list() == first["index"].to_list()
    assert stored["fp_buy"][0].to_list() == pytest.approx(first["buy"].to_list())
    snaps = await rig.read(INDICATORS)
    assert snaps.height >= 1 and snaps["cvd"][-1] == pytest.approx(bars["cvd"][-1])


async def test_the_day_that_ends_gets_its_whole_summary_at_midnight(rig: Rig) -> None:
    sched = rig.scheduler()
    day = DAY0 + 24 * HOUR
    rig.clock.now = day - 3 * MIN
    late = [rig.put(_minute_trades(day - k * MIN, 20, base=100 + k)) for k in (2, 1)]
    await rig.at(sched, day + CLOSE_GRACE // 2)  # 23:59's minute is not closed yet
    await rig.at(sched, day + CLOSE_GRACE + 2 * S)
    snaps = await rig.read(INDICATORS)
    whole = snaps.filter(pl.col("ts_event") == day)
    assert whole.height == 1, "the snapshot at 00:00 is stored"
    assert (whole["session"][0], whole["bars"][0]) == (DAY0, 2), "it sums the day that ended, not the empty new one"
    assert whole["trades"][0] == sum(f.height for f in late)
    assert whole["cvd"][0] == pytest.approx(float(pl.concat(late).select(pl.col("qty") * pl.col("side")).sum().item()))
    new = rig.put(_minute_trades(day, 10, base=105))
    await rig.at(sched, day + MIN + CLOSE_GRACE + 2 * S)
    first = (await rig.read(INDICATORS)).filter(pl.col("ts_event") == day + MIN)
    assert (first["session"][0], first["bars"][0], first["trades"][0]) == (day, 1, new.height)
    assert first["cvd"][0] == pytest.approx(float(new.select(pl.col("qty") * pl.col("side")).sum().item())), \
        "the new day's CVD starts from zero"


async def test_the_hour_closes_from_its_minutes(rig: Rig) -> None:
    sched = rig.scheduler()
    start = DAY0 + 10 * HOUR + 55 * MIN
    rig.clock.now = start
    frames = [rig.put(_minute_trades(start + k * MIN, 10 + k, base=100 + k * 0.2)) for k in range(5)]
    await rig.at(sched, DAY0 + 11 * HOUR + CLOSE_GRACE + 2 * S)
    hours = latest(await rig.read(BARS_1H))
    expected = resample(trade_bars(pl.concat(frames), MIN), HOUR)
    assert hours["ts_event"].to_list() == [DAY0 + 10 * HOUR]
    assert hours["volume"][0] == pytest.approx(expected["volume"][0])
    assert hours["delta_min"][0] == pytest.approx(expected["delta_min"][0])
    fp = footprints(pl.concat(frames), Grid(0.01, 0.05), HOUR)
    assert hours["fp_index"][0].to_list() == fp["index"].to_list()
    assert sum(hours["fp_buy"][0].to_list()) + sum(hours["fp_sell"][0].to_list()) == pytest.approx(
        expected["volume"][0])
    # The hour is the sum of its stored minutes, footprint cell by cell.
    minutes = latest(await rig.read(BARS_1M)).filter(pl.col("ts_event") >= DAY0 + 10 * HOUR)
    hour = hours.row(0, named=True)
    assert (hour["open"], hour["close"]) == (minutes["open"][0], minutes["close"][-1])
    assert (hour["high"], hour["low"]) == (minutes["high"].max(), minutes["low"].min())
    assert hour["trades"] == minutes["trades"].sum()
    for name in ("volume", "buy", "sell", "delta"):
        assert hour[name] == pytest.approx(minutes[name].sum(), abs=1e-9), name
    assert hour["cvd"] == pytest.approx(minutes["cvd"][-1])
    summed = footprint_cells(minutes).group_by("index").agg(pl.col("buy").sum(), pl.col("sell").sum())
    cells = {k: (b, v) for k, b, v in zip(hour["fp_index"], hour["fp_buy"], hour["fp_sell"], strict=True) if b or v}
    assert cells == {k: (pytest.approx(b), pytest.approx(v)) for k, b, v in summed.iter_rows() if b or v}
    assert hour["fp_index"] == list(range(hour["fp_index"][0], hour["fp_index"][-1] + 1)), "rows are dense"


async def test_late_trades_close_the_minute_again_and_shift_the_cvd_after_it(rig: Rig) -> None:
    sched = rig.scheduler()
    t0 = DAY0 + 10 * HOUR + MIN
    first = rig.put(_minute_trades(t0, 20))
    second = rig.put(_minute_trades(t0 + MIN, 20))
    await rig.at(sched, t0 + 2 * MIN + CLOSE_GRACE + 2 * S)
    before = latest(await rig.read(BARS_1M))
    late = rig.put([(t0 + 5 * S, 100.0, 2.0, 1), (t0 + 6 * S, 99.5, 1.0, -1)])  # a backfill of minute t0
    await rig.at(sched, t0 + 2 * MIN + CLOSE_GRACE + 3 * S)
    after = latest(await rig.read(BARS_1M))
    # The bar closed again equals the bar recomputed from every trade of its minute.
    every = pl.concat([first, late, second]).sort("ts_event")
    bars, cells = _expected(every, Grid(0.01, 0.05))
    for name in ("open", "high", "low", "close", "volume", "buy", "sell", "delta", "delta_min", "delta_max",
                 "trades", "cvd"):
        assert after[name].to_list() == pytest.approx(bars[name].to_list()), name
    state = sched.state(BTC)
    assert state is not None and state.recent is not None
    assert sorted(state.recent["id"].to_list()) == sorted(every["id"].to_list()), "closed trades in memory, once each"
    mine = cells.filter(pl.col("start") == t0)
    assert after["fp_index"][0].to_list() == mine["index"].to_list()
    assert after["fp_buy"][0].to_list() == pytest.approx(mine["buy"].to_list())
    assert after["fp_sell"][0].to_list() == pytest.approx(mine["sell"].to_list())
    assert after["volume"][0] == pytest.approx(before["volume"][0] + 3.0)
    assert after["low"][0] == 99.5
    assert after["cvd"][1] == pytest.approx(before["cvd"][1] + 1.0), "the next minute's CVD moves by the late delta"
    assert after["volume"][1] == before["volume"][1]
    assert late.height == 2
    revisions = (await rig.read(BARS_1M)).height
    await rig.at(sched, t0 + 2 * MIN + CLOSE_GRACE + 4 * S)
    assert (await rig.read(BARS_1M)).height == revisions, "closing again without news writes nothing"


async def test_a_trade_that_arrives_twice_counts_once(rig: Rig) -> None:
    sched = rig.scheduler()
    t0 = DAY0 + 10 * HOUR + MIN
    first = rig.put(_minute_trades(t0, 20))
    rig.writer.put(TRADE_KEY, first.tail(3), STREAM)  # the same trades again (live, then over REST)
    rig.clock.now = t0 + 30 * S
    view = BarsView(t0, pl.DataFrame(), sched.open_frames(BTC), None, None)
    assert view.open_trades() is not None and view.open_trades().height == 20  # type: ignore[union-attr]
    await rig.at(sched, t0 + MIN + CLOSE_GRACE + 2 * S)
    stored = latest(await rig.read(BARS_1M))
    assert stored["trades"].to_list() == [20]
    assert stored["volume"][0] == pytest.approx(float(first["qty"].sum()))
    state = sched.state(BTC)
    assert state is not None and state.recent is not None and state.recent.height == 20


async def test_a_gap_makes_the_bars_it_overlaps_incomplete(rig: Rig) -> None:
    sched = rig.scheduler()
    t0 = DAY0 + 10 * HOUR + MIN
    rig.put(_minute_trades(t0, 20))
    rig.put(_minute_trades(t0 + MIN, 20))
    rig.put(_minute_trades(t0 + 2 * MIN, 20))
    await rig.at(sched, t0 + 3 * MIN + CLOSE_GRACE + 2 * S)
    assert latest(await rig.read(BARS_1M))["complete"].to_list() == [True, True, True]
    rig.writer.record_gaps(TRADE_KEY, STREAM, [Gap(t0 + MIN + 10 * S, t0 + MIN + 20 * S, "missing_ids", 5)])
    await rig.at(sched, t0 + 3 * MIN + CLOSE_GRACE + 3 * S)
    assert latest(await rig.read(BARS_1M))["complete"].to_list() == [True, False, True]


async def test_a_restart_closes_minutes_with_stored_trades_and_no_bar(rig: Rig) -> None:
    t0 = DAY0 + 10 * HOUR + MIN
    first = rig.scheduler()
    rig.put(_minute_trades(t0, 20))
    await rig.at(first, t0 + MIN + CLOSE_GRACE + 2 * S)
    await first.close()
    rig.writer.trade_listeners.clear()
    rig.writer.gap_listeners.clear()
    # The process stops; trades of two more minutes were stored, their bars never closed.
    missed = [rig.put(_minute_trades(t0 + k * MIN, 15, base=101)) for k in (1, 2)]
    await rig.written()
    rig.clock.now = t0 + 4 * MIN + 10 * S
    second = rig.scheduler()
    await second.load()
    await rig.at(second, t0 + 4 * MIN + 11 * S)
    stored = latest(await rig.read(BARS_1M))
    assert stored["ts_event"].to_list() == [t0, t0 + MIN, t0 + 2 * MIN]
    expected = trade_bars(pl.concat(missed), MIN)
    assert stored["volume"][1:].to_list() == pytest.approx(expected["volume"].to_list())
    assert stored["cvd"][2] == pytest.approx(stored["cvd"][0] + expected["cvd"][1]), "CVD continues the day"


async def test_without_a_tick_bars_close_without_a_footprint(rig: Rig) -> None:
    rig.tick = None
    sched = rig.scheduler()
    t0 = DAY0 + 10 * HOUR + MIN
    rig.put(_minute_trades(t0, 10))
    await rig.at(sched, t0 + MIN + CLOSE_GRACE + 2 * S)
    stored = latest(await rig.read(BARS_1M))
    assert stored["volume"][0] > 0 and stored["row"][0] is None and stored["fp_index"][0].to_list() == []


async def test_a_configured_row_that_is_no_multiple_of_the_tick_falls_back(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.settings = replace(rig.settings, footprint_rows=(("BTCUSDT", Decimal("0.015")),))
    sched = rig.scheduler()
    t0 = DAY0 + 10 * HOUR + MIN
    rig.put(_minute_trades(t0, 10))
    with caplog.at_level(logging.ERROR):
        await rig.at(sched, t0 + MIN + CLOSE_GRACE + 2 * S)
    assert "FOOTPRINT_ROW" in caplog.text and "0.015" in caplog.text
    assert sched.state(BTC).row == Decimal("0.05")  # type: ignore[union-attr]
    rig.settings = replace(rig.settings, footprint_rows=(("BTCUSDT", Decimal("0.2")),))
    other = rig.scheduler()
    other.series[TRADE_KEY].closed_until = t0 + MIN
    rig.put(_minute_trades(t0 + MIN, 10))
    await rig.at(other, t0 + 2 * MIN + CLOSE_GRACE + 2 * S)
    assert other.state(BTC).row == Decimal("0.2") and other.state(BTC).row_source == "config"  # type: ignore[union-attr]


async def test_open_trades_are_what_no_closed_minute_holds(rig: Rig) -> None:
    sched = rig.scheduler()
    t0 = DAY0 + 10 * HOUR + MIN
    rig.put(_minute_trades(t0, 10))
    rig.put(_minute_trades(t0 + MIN, 7))
    await rig.at(sched, t0 + MIN + CLOSE_GRACE + 2 * S)
    open_trades = sched.open_trades(BTC)
    assert open_trades is not None and open_trades.height == 7
    assert open_trades["ts_event"].min() >= t0 + MIN  # type: ignore[operator]


async def test_on_a_first_start_the_minute_it_started_in_is_incomplete(rig: Rig) -> None:
    t0 = DAY0 + 10 * HOUR + MIN
    rig.clock.now = t0 + 20 * S  # collection starts 20 s into the minute: its first 20 s were never seen
    sched = rig.scheduler()
    await sched.load()
    rig.put(_minute_trades(t0 + 20 * S, 20))
    rig.put(_minute_trades(t0 + MIN, 20))
    await rig.at(sched, t0 + 2 * MIN + CLOSE_GRACE + 2 * S)
    assert latest(await rig.read(BARS_1M))["complete"].to_list() == [False, True]


async def test_after_a_restart_the_minute_it_started_in_is_whole(rig: Rig) -> None:
    t0 = DAY0 + 10 * HOUR + MIN
    rig.put(_minute_trades(t0 - MIN, 20))  # stored by the run before
    await rig.written()
    rig.writer.trade_listeners.clear()
    rig.clock.now = t0 + 20 * S
    sched = rig.scheduler()
    await sched.load()
    rig.put(_minute_trades(t0, 40))  # the resumed stream backfills the start of the minute too
    await rig.at(sched, t0 + MIN + CLOSE_GRACE + 2 * S)
    stored = latest(await rig.read(BARS_1M))
    assert stored.filter(pl.col("ts_event") == t0)["complete"].to_list() == [True]
    assert stored.filter(pl.col("ts_event") == t0 - MIN)["volume"].to_list() != [], "caught up the minute before"
