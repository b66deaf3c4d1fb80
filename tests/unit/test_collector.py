"""The collector's recovery decisions against the in-process emulator's REST and WebSocket.

Real parts only: the emulator over loopback HTTP and WebSocket, a real :class:`Writer`
draining into a :class:`SqliteStore` in ``tmp_path``. Actions are handed to
:meth:`Collector.execute` the way the link hands them over, or come from the venue protocol
itself when a test runs the collector's link.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
import pytest
import pytest_asyncio

from tests.helpers import until
from wadm.book.sync import BinanceBookSync, BookState
from wadm.emulator import Emulator, wall_clock_ms
from wadm.emulator.market import SyntheticSpec
from wadm.pipeline.collector import RESUBSCRIBE_AFTER, Collector, CollectorSettings, PendingWindow
from wadm.pipeline.writer import Writer
from wadm.records import GAPS, KLINES, TRADES, BatchKey, Market, Venue
from wadm.store import SqliteStore
from wadm.transport.rest import RestClient, WeightBudget
from wadm.venues import binance, bybit, rest_limit
from wadm.venues.base import (
    NOT_LISTED,
    ConnectionPlan,
    FetchKlines,
    FetchSnapshot,
    Gap,
    RecoverTrades,
    TradeStream,
    VenueErrorReply,
)
from wadm.venues.streams import BookStream, KlineStream

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

MS = 1_000_000
MIN = 60_000
BTC = "btcusdt@aggTrade"
SETTINGS = CollectorSettings(stale_after=30.0, rotate_after=3600.0, reconnect_min_delay=0.05,
                             reconnect_max_delay=0.3, flush_rows=1000, flush_interval=10.0, backfill_deadline=30.0)


# ---- the sink: a real writer over a real SQLite store ----------------------------------------


@dataclass
class Sink:
    store: SqliteStore
    writer: Writer

    async def written(self) -> None:
        """Wait until everything queued so far is in the store."""
        await until(lambda: self.writer.pending_batches == 0, 10, "the writer to drain")

    async def read(self, table: str, symbol: str = "BTCUSDT", venue: Venue = Venue.BINANCE,
                   market: Market = Market.SPOT) -> pl.DataFrame:
        await self.written()
        return await self.store.read(BatchKey(table, venue, market, symbol), 0, 2**62)


@pytest_asyncio.fixture
async def sink(tmp_path: Path) -> AsyncIterator[Sink]:
    store = SqliteStore(tmp_path / "w.db")
    await store.open()
    writer = Writer(store, max_pending_rows=1_000_000)
    writer.ready.set()
    drain = asyncio.get_running_loop().create_task(writer.run_drain())
    yield Sink(store, writer)
    writer.close()
    await asyncio.wait_for(drain, 10)
    await store.close()


# ---- collectors -------------------------------------------------------------------------------


class Rig:
    """One collector on a plan, its REST client on the emulator, and (optionally) its running link."""

    def __init__(self, emu: Emulator, plan: ConnectionPlan, sink: Sink, settings: CollectorSettings = SETTINGS,
                 *, run: bool = False) -> None:
        market = "linear" if plan.venue is Venue.BYBIT else str(plan.market)
        self.rest = RestClient(emu.rest_urls[str(plan.venue)][market],
                               WeightBudget.of(rest_limit(plan.venue, plan.market)))
        self.collector = Collector(plan, settings, sink.writer, self.rest)
        self.run = run
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Rig:
        if self.run:
            self.task = asyncio.get_running_loop().create_task(self.collector.run())
            await until(lambda: self.collector.link.state.connected, 10, "the collector to connect")
        return self

    async def stop_link(self) -> None:
        self.collector.stop()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_link()
        await self.collector.close()
        await self.rest.close()

    async def idle(self) -> None:
        """Wait until no REST job of this collector runs."""
        prefixes = tuple(f"wadm:{name}:" for name in self.collector.streams)
        await until(lambda: not [t for t in asyncio.all_tasks() if t.get_name().startswith(prefixes)], 20,
                    "the collector's REST jobs to end")


def _trades(emu: Emulator, trade_stream: str = "aggTrade", max_rows: int = 500_000) -> ConnectionPlan:
    return binance.plan_trade_connections(Market.SPOT, ("BTCUSDT",), emu.urls["binance"]["spot"],
                                          trade_stream=trade_stream, max_rows=max_rows)[0]


def _trade_stream(rig: Rig, name: str = BTC) -> TradeStream:
    st = rig.collector.streams[name]
    assert isinstance(st, TradeStream)
    return st


async def _history(emu: Emulator, agg_ids: int) -> int:
    """Wait until the BTCUSDT spot feed has made ``agg_ids`` aggregate trades; return the first id REST has."""
    feed = emu.feeds[("binance", "spot", "BTCUSDT")]
    history = feed.history
    assert history is not None
    await until(lambda: (first := history.first_agg_id) is not None and feed.next_agg_id - first > agg_ids, 10,
                f"{agg_ids} trades in the emulator's history")
    first = history.first_agg_id
    assert first is not None
    return first


def _id_gap(first: int, last: int, reason: str = "missing_ids") -> Gap:
    return Gap(1_000 * MS, 2_000 * MS, reason, last - first + 1, first, last)


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(synthetic=[SyntheticSpec(market="spot", symbol="BTCUSDT", rate=500)], seed=11) as e:
        yield e


# ---- Binance books: FetchSnapshot -------------------------------------------------------------


def _book(rig: Rig) -> BookStream:
    (st,) = rig.collector.streams.values()
    assert isinstance(st, BookStream)
    return st


def _live(book: BookStream) -> bool:
    return book.state is BookState.LIVE


def _equals_true_book(emu: Emulator, book: BookStream, depth: int = 20) -> bool:
    true_bids, true_asks, update_id = emu.true_book(str(book.venue), str(book.market), book.spec.symbol, depth)
    bids, asks = book.levels(depth)
    return (book.book.update_id == update_id and bids == [(float(p), float(q)) for p, q in true_bids]
            and asks == [(float(p), float(q)) for p, q in true_asks])


async def test_one_snapshot_job_per_book_however_often_it_is_asked_and_the_book_is_exact(sink: Sink) -> None:
    spec = SyntheticSpec(market="spot", symbol="BTCUSDT", rate=200, book=True)
    async with Emulator(synthetic=[spec], seed=5) as emu:
        emu.slow_snapshots(1.0)  # the first snapshot answer takes a second: the job is busy meanwhile
        plan = binance.plan_book_connections(Market.SPOT, ("BTCUSDT",), emu.urls["binance"]["spot"], book_depth=100)[0]
        async with Rig(emu, plan, sink, run=True) as rig:
            book = _book(rig)
            name = book.spec.name
            # The first diff asked for a snapshot (the protocol's own FetchSnapshot); ask again and again.
            await until(lambda: rig.rest.requests == 1, 10, "the snapshot request")
            for _ in range(3):
                rig.collector.execute([FetchSnapshot(name, "asked again")])
            await until(lambda: book.state is BookState.LIVE, 10, "the book to go live")
            assert rig.rest.requests == 1 and book.snapshots == 1  # one job, one request
            rig.collector.execute([FetchSnapshot(name, "asked once live")])
            await rig.idle()
            assert rig.rest.requests == 1  # a live book needs none
            emu.pause()
            await until(lambda: _equals_true_book(emu, book), 10, "the book to equal the emulator's true book")
            assert not book.sync.resyncs and sink.writer.stats.gaps[name] == 0


async def test_a_snapshot_answer_for_a_discarded_book_is_not_applied(sink: Sink) -> None:
    spec = SyntheticSpec(market="spot", symbol="BTCUSDT", rate=200, book=True)
    async with Emulator(synthetic=[spec], seed=5) as emu:
        emu.force_rest_status(429, retry_after=2.0)  # the first request waits 2 s for its retry
        plan = binance.plan_book_connections(Market.SPOT, ("BTCUSDT",), emu.urls["binance"]["spot"], book_depth=100)[0]
        async with Rig(emu, plan, sink, run=True) as rig:
            book = _book(rig)
            sync = book.sync
            assert isinstance(sync, BinanceBookSync)
            name, link = book.spec.name, rig.collector.link
            await until(lambda: rig.collector.failures[name] == 1, 10, "the throttled request")
            # Freeze the book while the job waits: the retry's snapshot is then exactly at update `frozen`.
            emu.pause()
            frozen = emu.true_book("binance", "spot", "BTCUSDT", 1)[2]
            await until(lambda: bool(sync.buffer) and sync.buffer[-1].last == frozen, 10,
                        "the last diffs before the freeze")
            emu.slow_snapshots(3.0)
            await until(lambda: not emu.rest_faults.pending, 10, "the retry to reach the emulator")
            assert rig.rest.requests == 2
            epoch = sync.epoch
            emu.drop()  # the book is discarded while the answer is on its way
            await until(lambda: link.state.reconnects == 1 and link.state.connected
                        and emu.subscribers(name, "spot") == 1, 10, "the new connection")
            emu.resume()
            await until(lambda: sync.snapshot_requested and bool(sync.buffer), 10, "new diffs")
            assert sync.epoch > epoch
            # The late answer would bridge the new buffer: only the epoch says it belongs to the old book.
            assert sync.buffer[0].first <= frozen + 1
            assert rig.rest.requests == 2 and not _live(book)  # the answer is still coming
            await until(lambda: book.state is BookState.LIVE, 15, "the book to go live")
            assert rig.rest.requests == 3  # the void answer was dropped and a fresh snapshot fetched
            assert book.snapshots == 1
            emu.pause()
            await until(lambda: _equals_true_book(emu, book), 10, "the book to equal the emulator's true book")


# ---- trades: RecoverTrades ----------------------------------------------------------------------


@pytest.mark.parametrize(("trade_stream", "gap"), [
    ("trade", _id_gap(101, 150)),  # the trade stream's ids have no REST recovery
    ("aggTrade", Gap(1_000 * MS, 2_000 * MS, "restart")),  # a window of time: aggTrades are fetched by id
])
async def test_a_window_without_a_venue_recovery_is_recorded_at_once(emu: Emulator, sink: Sink, trade_stream: str,
                                                                     gap: Gap) -> None:
    async with Rig(emu, _trades(emu, trade_stream), sink) as rig:
        (name,) = rig.collector.streams
        rig.collector.execute([RecoverTrades(name, gap)])
        assert sink.writer.stats.gaps[name] == 1 and rig.collector.pending == []  # at once: nothing is pending
        assert rig.rest.requests == 0
        gaps = await sink.read(GAPS)
        assert gaps.select("ts_event", "end", "stream", "reason", "missing").rows() == [
            (gap.start, gap.end, name, gap.reason, gap.missing)]
        assert (await sink.read(TRADES)).height == 0


async def test_missing_aggtrade_ids_are_fetched_written_and_nothing_is_recorded(emu: Emulator, sink: Sink) -> None:
    a0 = await _history(emu, 1300)
    async with Rig(emu, _trades(emu), sink) as rig:
        st = _trade_stream(rig)
        rig.collector.execute([RecoverTrades(BTC, _id_gap(a0 + 100, a0 + 1199))])  # two pages of 1000
        assert rig.collector.pending == [PendingWindow(BTC, "BTCUSDT", 1_000 * MS, 2_000 * MS, 1100)]
        await until(lambda: not rig.collector.pending, 10, "the backfill to finish")
        trades = await sink.read(TRADES)
        assert trades["id"].to_list() == list(range(a0 + 100, a0 + 1200))
        assert trades["price"].min() > 0 and set(trades["side"].unique()) <= {-1, 1}  # type: ignore[operator]
        assert st.backfilled == 1100 and rig.rest.requests == 2
        assert sink.writer.stats.gaps[BTC] == 0 and (await sink.read(GAPS)).height == 0


async def test_a_window_is_pending_while_rest_fails_and_recorded_at_the_deadline(emu: Emulator, sink: Sink) -> None:
    await _history(emu, 300)
    emu.force_rest_status(503, count=1_000_000)  # the venue's REST API is down
    async with Rig(emu, _trades(emu), sink, replace(SETTINGS, backfill_deadline=2.0)) as rig:
        window = PendingWindow(BTC, "BTCUSDT", 1_000 * MS, 2_000 * MS, 100)
        rig.collector.execute([RecoverTrades(BTC, _id_gap(100, 199))])
        await until(lambda: rig.collector.failures[BTC] >= 2, 10, "the request to be retried")
        assert rig.collector.pending == [window]  # served as incomplete while retried
        assert rig.collector.pending_windows("BTCUSDT", 1_500 * MS, 1_600 * MS) == [window]
        assert sink.writer.stats.gaps[BTC] == 0  # not recorded while it may still come back
        await until(lambda: not rig.collector.pending, 10, "the deadline")
        assert sink.writer.stats.gaps[BTC] == 1
        gaps = await sink.read(GAPS)
        assert gaps.select("reason", "missing").rows() == [("missing_ids", 100)]
        assert (await sink.read(TRADES)).height == 0


async def test_two_windows_with_the_same_start_are_both_recovered(emu: Emulator, sink: Sink) -> None:
    # Binance reports a skip as a window from the newest trade's time: two skips around trades of
    # the same millisecond start at the same time.
    a0 = await _history(emu, 300)
    emu.force_rest_status(503, count=1)  # the first job is still retrying when the second window comes
    async with Rig(emu, _trades(emu), sink) as rig:
        first = Gap(5 * MS, 5 * MS, "missing_ids", 1, a0 + 101, a0 + 101)
        second = Gap(5 * MS, 6 * MS, "missing_ids", 1, a0 + 103, a0 + 103)
        rig.collector.execute([RecoverTrades(BTC, first)])
        rig.collector.execute([RecoverTrades(BTC, second)])
        await rig.idle()
        assert rig.collector.pending == []
        assert sorted((await sink.read(TRADES))["id"].to_list()) == [a0 + 101, a0 + 103]
        assert sink.writer.stats.gaps[BTC] == 0


# ---- klines: FetchKlines -------------------------------------------------------------------------


class MinuteClock:
    """An emulator clock that starts 1 s into a minute and jumps forward when a test says so."""

    def __init__(self) -> None:
        now = wall_clock_ms()
        self.offset = (now // MIN + 1) * MIN + 1000 - now

    def __call__(self) -> int:
        return wall_clock_ms() + self.offset

    def advance(self, ms: int) -> None:
        self.offset += ms


async def test_fetch_klines_fetches_the_closed_bars_and_records_what_the_venue_lacks(sink: Sink) -> None:
    clock = MinuteClock()
    first_minute = clock() // MIN * MIN  # the emulator's bars start in this minute
    spec = SyntheticSpec(market="spot", symbol="BTCUSDT", rate=50, book=True)
    async with Emulator(synthetic=[spec], seed=2, clock=clock) as emu:
        clock.advance(3 * MIN)  # three bars have closed
        plan = binance.plan_kline_connections(Market.SPOT, ("BTCUSDT",), emu.urls["binance"]["spot"])[0]
        async with Rig(emu, plan, sink) as rig:
            (name,) = rig.collector.streams
            st = rig.collector.streams[name]
            assert isinstance(st, KlineStream)
            rig.collector.execute([FetchKlines(name, first_minute, first_minute + 2 * MIN)])
            await rig.idle()
            assert st.backfilled == 3 and rig.rest.requests == 1 and sink.writer.stats.gaps[name] == 0
            assert rig.collector.cut(time.monotonic(), force=True) == 3
            bars = await sink.read(KLINES)
            assert bars["ts_event"].to_list() == [(first_minute + i * MIN) * MS for i in range(3)]
            # Bars from before the venue's history: nothing comes back, the window is recorded.
            rig.collector.execute([FetchKlines(name, first_minute - 2 * MIN, first_minute - MIN)])
            await rig.idle()
            gaps = await sink.read(GAPS)
            assert gaps.select("ts_event", "end", "reason", "missing").rows() == [
                ((first_minute - 2 * MIN) * MS, first_minute * MS, "klines_missing", 2)]


# ---- after close() --------------------------------------------------------------------------------


async def test_after_close_trades_and_klines_are_recorded_not_fetched(emu: Emulator, sink: Sink) -> None:
    await _history(emu, 300)
    klines = binance.plan_kline_connections(Market.SPOT, ("BTCUSDT",), emu.urls["binance"]["spot"])[0]
    async with Rig(emu, _trades(emu), sink) as trades, Rig(emu, klines, sink) as bars:
        # A job that is still retrying at shutdown records its window too.
        emu.force_rest_status(503, count=1_000_000)
        trades.collector.execute([RecoverTrades(BTC, _id_gap(10, 19))])
        await until(lambda: trades.collector.failures[BTC] >= 1, 10, "the job to be running")
        await trades.collector.close()
        await bars.collector.close()
        assert trades.collector.pending == [] and sink.writer.stats.gaps[BTC] == 1
        emu.clear_faults()
        requests = trades.rest.requests + bars.rest.requests
        (kname,) = bars.collector.streams
        trades.collector.execute([RecoverTrades(BTC, _id_gap(100, 199))])
        bars.collector.execute([FetchKlines(kname, 60 * MIN, 62 * MIN)])
        assert trades.collector.pending == [] and sink.writer.stats.gaps[BTC] == 2
        assert sink.writer.stats.gaps[kname] == 1
        await trades.idle()
        await bars.idle()
        assert trades.rest.requests + bars.rest.requests == requests  # nothing was fetched
        gaps = await sink.read(GAPS)
        assert sorted(gaps.select("stream", "reason", "missing").rows()) == [
            (BTC, "missing_ids", 10), (BTC, "missing_ids", 100), (kname, "klines_missing", 3)]
        assert (await sink.read(TRADES)).height == 0


# ---- Bybit books: Resubscribe ---------------------------------------------------------------------


def _sent_frames(emu: Emulator) -> int:
    """Text frames the emulator received on its (one) Bybit connection."""
    (conn,) = [c for c in emu.stats()["connections"] if c["venue"] == "bybit" and not c["closing"]]
    frames: int = conn["frames_received"]
    return frames


def _bybit_book(emu: Emulator) -> ConnectionPlan:
    base = emu.urls["bybit"]["linear"].rsplit("/v5/", 1)[0]
    return bybit.plan_book_connections(Market.LINEAR, ("BTCUSDT",), base, depth=50)[0]


@pytest_asyncio.fixture
async def bybit_emu() -> AsyncIterator[Emulator]:
    spec = SyntheticSpec(market="linear", symbol="BTCUSDT", rate=200, venue="bybit", book=True)
    async with Emulator(synthetic=[spec], seed=6) as e:
        yield e


async def test_resubscribe_sends_the_frames_on_the_live_connection(bybit_emu: Emulator, sink: Sink) -> None:
    emu = bybit_emu
    async with Rig(emu, _bybit_book(emu), sink, run=True) as rig:
        book = _book(rig)
        await until(lambda: book.state is BookState.LIVE, 10, "the book to go live")
        frames = _sent_frames(emu)
        rig.collector.execute([book.resubscribe("asked")])
        await until(lambda: book.snapshots == 2, 10, "a fresh snapshot")  # the venue answers a subscription so
        assert _sent_frames(emu) == frames + 2  # unsubscribe, subscribe
        assert book.state is BookState.LIVE and book.resubscribes == 1
        await asyncio.sleep(RESUBSCRIBE_AFTER + 0.5)  # NOTE: checks that no second request follows a live book
        assert book.resubscribes == 1 and _sent_frames(emu) == frames + 2
        assert rig.collector.link.state.reconnects == 0


async def test_a_refused_resubscription_is_sent_again_and_the_book_recovers(bybit_emu: Emulator,
                                                                           sink: Sink) -> None:
    emu = bybit_emu
    async with Rig(emu, _bybit_book(emu), sink, run=True) as rig:
        book, link = _book(rig), rig.collector.link
        name = book.spec.name
        await until(lambda: book.state is BookState.LIVE, 10, "the book to go live")
        frames = _sent_frames(emu)
        emu.fail_subscribe(name, market="linear", times=1)  # the venue refuses the next request for the topic
        emu.depth_gap(venue="bybit")  # the book breaks: the protocol asks to resubscribe
        # The emulator refuses the unsubscribe, then answers the subscribe "already subscribed".
        await until(lambda: link.state.errors["venue_error"] == 2, 10, "the refusals")
        assert book.resubscribes == 1 and _sent_frames(emu) == frames + 2
        assert not _live(book)  # the deltas that keep coming cannot repair it
        await until(lambda: book.state is BookState.LIVE, RESUBSCRIBE_AFTER + 5, "the book to recover")
        assert book.resubscribes == 2 and _sent_frames(emu) == frames + 4  # asked again once, after the wait
        assert link.excused(name) is None and link.state.reconnects == 0


# ---- listings ---------------------------------------------------------------------------------------


async def test_set_listing_excuses_symbols_not_trading_and_pardons_them_when_they_trade_again(
    emu: Emulator, sink: Sink
) -> None:
    plan = binance.plan_trade_connections(Market.SPOT, ("BTCUSDT", "ETHUSDT", "SOLUSDT"),
                                          emu.urls["binance"]["spot"])[0]
    async with Rig(emu, plan, sink) as rig:
        c, link = rig.collector, rig.collector.link
        eth, sol, btc = "ethusdt@aggTrade", "solusdt@aggTrade", BTC
        c.set_listing({"BTCUSDT": "TRADING", "ETHUSDT": "BREAK", "SOLUSDT": NOT_LISTED}, "TRADING")
        assert link.excused(eth) == "ETHUSDT is BREAK on binance/spot"
        assert link.excused(sol) == "SOLUSDT is not listed on binance/spot"
        assert link.excused(btc) is None
        c.set_listing({"ETHUSDT": "HALT"}, "TRADING")  # the newest listing says why
        assert link.excused(eth) == "ETHUSDT is HALT on binance/spot"
        c.set_listing({"BTCUSDT": "TRADING"}, "TRADING")  # symbols the answer does not name keep their state
        assert link.excused(eth) == "ETHUSDT is HALT on binance/spot"
        c.set_listing({"ETHUSDT": "TRADING", "SOLUSDT": "TRADING"}, "TRADING")
        assert link.excused(eth) is None and link.excused(sol) is None
        assert link.watch[eth].excuse is None and link.watch[sol].excuse is None  # pardoned, not just flowing
        # A stream the venue refused stays excused when the listing says its symbol trades.
        c.execute([VenueErrorReply(None, "Invalid request: unknown stream", stream=btc)])
        assert link.excused(btc) == "Invalid request: unknown stream"
        c.set_listing({"BTCUSDT": "TRADING"}, "TRADING")
        assert link.excused(btc) == "Invalid request: unknown stream"
        c.set_listing({"BTCUSDT": "BREAK"}, "TRADING")  # and the listing's reason replaces the refusal's
        assert link.excused(btc) == "BTCUSDT is BREAK on binance/spot"


# ---- cut() ------------------------------------------------------------------------------------------


async def test_cut_hands_due_buffers_to_the_writer(emu: Emulator, sink: Sink) -> None:
    async with Rig(emu, _trades(emu), sink, run=True) as rig:
        st = _trade_stream(rig)
        await until(lambda: st.pending >= 30, 10, "trades")
        await rig.stop_link()  # nothing arrives any more: the buffer holds n rows
        n = st.pending
        ids = [t.id for t in st.items]
        c = rig.collector
        assert n < SETTINGS.flush_rows
        assert c.cut(100.0) == 0  # fewer rows than flush_rows, and it has not waited its interval
        assert c.cut(100.0 + SETTINGS.flush_interval - 0.01) == 0
        assert sink.writer.pending_rows == 0
        assert c.cut(100.0 + SETTINGS.flush_interval) == n
        assert st.pending == 0 and c.cut(200.0, force=True) == 0
        assert (await sink.read(TRADES))["id"].to_list() == ids


async def test_cut_hands_a_buffer_of_flush_rows_at_once(emu: Emulator, sink: Sink) -> None:
    async with Rig(emu, _trades(emu), sink, replace(SETTINGS, flush_rows=20), run=True) as rig:
        st = _trade_stream(rig)
        c = rig.collector
        await until(lambda: st.pending >= 20, 10, "trades")
        n = st.pending
        assert c.cut(100.0) == n  # flush_rows reached: due although its interval has not passed
        await rig.stop_link()
        rest = st.pending
        assert c.cut(100.0) == (rest if rest >= 20 else 0)
        assert c.cut(100.0, force=True) == (0 if rest >= 20 else rest)
        assert st.pending == 0


@pytest.mark.parametrize("trade_stream", ["aggTrade", "trade"])
async def test_cut_turns_a_full_buffer_drop_window_into_a_recovery(emu: Emulator, sink: Sink,
                                                                   trade_stream: str) -> None:
    async with Rig(emu, _trades(emu, trade_stream, max_rows=50), sink, run=True) as rig:
        (name,) = rig.collector.streams
        st = _trade_stream(rig, name)
        await until(lambda: st.dropped >= 100, 10, "the full buffer to drop trades")
        await rig.stop_link()
        kept, dropped = [t.id for t in st.items], st.dropped
        assert len(kept) == 50 and st.drop is not None
        assert rig.collector.cut(100.0, force=True) == 50
        assert st.drop is None
        if trade_stream == "aggTrade":  # the dropped ids come back over REST
            await until(lambda: not rig.collector.pending, 10, "the backfill")
            ids = sorted((await sink.read(TRADES))["id"].to_list())
            assert ids == list(range(kept[0], kept[0] + 50 + dropped))
            assert st.backfilled == dropped and sink.writer.stats.gaps[name] == 0
        else:  # no recovery for the trade stream's ids: the window is recorded
            assert sink.writer.stats.gaps[name] == 1
            gaps = await sink.read(GAPS)
            assert gaps.select("reason", "missing").rows() == [("buffer_full", dropped)]
            assert (await sink.read(TRADES))["id"].to_list() == kept
