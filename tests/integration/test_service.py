"""A Service against the in-process emulator: a store that hangs or answers late never holds back collection."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.helpers import binance_spot_settings, health, streams, until
from wadm.config import StreamTarget
from wadm.emulator import Emulator
from wadm.emulator.market import SyntheticSpec
from wadm.live import Series
from wadm.pipeline.service import Service
from wadm.records import GAPS, TRADES, BatchKey, Market, Venue
from wadm.store import SqliteStore
from wadm.store.mongo import MongoStore
from wadm.venues.base import TradeStream

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

KEY = BatchKey(TRADES, Venue.BINANCE, Market.SPOT, "BTCUSDT")


@asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server on loopback that accepts connections, reads what they send and never answers.

    Yields its port and a list that grows by the bytes read on each accepted connection.
    """
    received: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        index = len(received)
        received.append(0)
        while data := await reader.read(65536):
            received[index] += len(data)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def test_a_store_that_never_answers_does_not_delay_the_connections(pymongo_mid_handshake: None) -> None:
    spec = SyntheticSpec(market="spot", symbol="BTCUSDT", rate=300)
    async with Emulator(synthetic=[spec], seed=3) as emu, silent_server() as (port, received):
        store = MongoStore(f"mongodb://127.0.0.1:{port}/", server_selection_timeout=30)
        svc = Service(binance_spot_settings(emu), store)
        await svc.start()
        try:
            (st,) = streams(svc)
            await until(lambda: bool(received) and received[0] > 0, 10, "the store to talk to the silent server")
            await until(lambda: st.messages > 100, 10, "trades while the store has not answered")
            await until(lambda: all(s["state"] == "live" for s in health(svc)[1]["streams"]), 10,
                        "every stream to be live")
            before = st.messages
            await until(lambda: st.messages > before + 100, 10, "trades to keep coming")
            assert not svc.store_open and not svc.writer.ready.is_set()  # open() is still waiting
            assert svc.writer.stats.rows == 0
            healthy, body = health(svc)
            assert not healthy and body["store"]["ok"] is False
        finally:
            async with asyncio.timeout(20):  # stop() returns although the store never answered
                await svc.stop(deadline=1.0)
        assert not svc.store_open


def _lock(path: Path) -> sqlite3.Connection:
    """Hold an exclusive lock on the SQLite file: every other connection waits (busy) until it is released."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("CREATE TABLE IF NOT EXISTS lock_probe (x)")  # a write takes the exclusive lock now
    return conn


async def test_a_restart_resumes_even_when_live_trades_come_before_the_store_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "w.db"
    spec = SyntheticSpec(market="spot", symbol="BTCUSDT", rate=300)
    async with Emulator(synthetic=[spec], seed=3) as emu:
        settings = binance_spot_settings(emu)
        first = Service(settings, SqliteStore(path))
        await first.start()
        try:
            await until(lambda: first.writer.stats.rows > 200, 10, "the first run to store trades")
        finally:
            await first.stop()
        (before,) = streams(first)
        assert isinstance(before, TradeStream)
        stored_last = before.last_id  # everything received was stored at stop
        # The venue goes on trading while WADM is down: these ids are missed.
        feed = emu.feeds[("binance", "spot", "BTCUSDT")]
        await until(lambda: feed.next_agg_id > stored_last + 300, 10, "trades while WADM is down")

        lock = _lock(path)  # the store is there but does not answer yet
        second = Service(settings, SqliteStore(path))
        caplog.set_level(logging.INFO, logger="wadm.pipeline.resume")
        await second.start()
        try:
            (st,) = streams(second)
            assert isinstance(st, TradeStream)
            await until(lambda: st.first_live_id is not None and st.messages > 50, 10, "live trades")
            assert not second.store_open  # the live trades came first
            assert "Resuming" not in caplog.text
            lock.rollback()
            lock.close()  # the store answers now
            await until(lambda: "Resuming 1 streams" in caplog.text, 20, "the resume")
            await until(lambda: not second.collectors[0].pending and st.backfilled > 0, 20, "the backfill")
            emu.pause()
            delivered = emu.delivered("btcusdt@aggTrade", "spot")
            await until(lambda: st.last_id == delivered[-1], 10, "the last trades")
        finally:
            await second.stop()
    assert st.first_live_id is not None and st.backfilled == st.first_live_id - stored_last - 1
    store = SqliteStore(path)
    await store.open()
    try:
        ids = (await store.read(KEY, 0, 2**62))["id"].to_list()
        gaps = await store.read(BatchKey(GAPS, Venue.BINANCE, Market.SPOT, "BTCUSDT"), 0, 2**62)
    finally:
        await store.close()
    assert sorted(ids) == list(range(min(ids), max(ids) + 1)) and len(set(ids)) == len(ids)  # no hole, no twice
    assert max(ids) == delivered[-1]
    assert gaps.height == 0


async def test_the_venue_listing_gives_each_series_its_tick_and_lot(tmp_path: Path) -> None:
    specs = [SyntheticSpec(market="spot", symbol="BTCUSDT", rate=50),
             SyntheticSpec(market="linear", symbol="ETHUSDT", rate=50, venue="bybit")]
    async with Emulator(synthetic=specs, seed=3) as emu:
        targets = (StreamTarget(venue=Venue.BINANCE, market=Market.SPOT, symbols=("BTCUSDT",)),
                   StreamTarget(venue=Venue.BYBIT, market=Market.LINEAR, symbols=("ETHUSDT",)))
        settings = binance_spot_settings(emu, targets=targets, bybit_ws_url=emu.urls["bybit"]["linear"].rsplit(
            "/v5/", 1)[0], bybit_rest_url=emu.rest_urls["bybit"]["linear"])
        svc = Service(settings, SqliteStore(tmp_path / "w.db"))
        await svc.start()
        try:
            btc, eth = Series(Venue.BINANCE, Market.SPOT, "BTCUSDT"), Series(Venue.BYBIT, Market.LINEAR, "ETHUSDT")
            await until(lambda: svc.live.instrument(btc) is not None and svc.live.instrument(eth) is not None, 10,
                        "the listings to be read")
            for series in (btc, eth):
                feed = emu.feeds[(str(series.venue), str(series.market), series.symbol)]
                instrument = svc.live.instrument(series)
                assert instrument is not None
                assert instrument.tick == 10.0 ** -feed.instrument.tick_decimals, series
                assert instrument.lot == 10.0 ** -feed.instrument.lot_decimals, series
            assert svc.live.instrument(Series(Venue.BINANCE, Market.USDM, "BTCUSDT")) is None  # not collected
        finally:
            await svc.stop()
