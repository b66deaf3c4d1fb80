"""Store outages: the receive path keeps going, batches wait and are written when the store returns.

The store is a real MongoDB wire server (nx-27017) that the test kills and restarts.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest

from tests.helpers import free_port, health, streams, until
from tests.mongo import accepts_connections, nx_27017_command
from wadm.config import Settings, StreamTarget
from wadm.emulator import Emulator
from wadm.emulator.market import SyntheticSpec
from wadm.pipeline.service import Service
from wadm.records import TRADES, BatchKey, Market, Venue
from wadm.store.mongo import MongoStore
from wadm.store.sqlite import SqliteStore
from wadm.venues.base import TradeStream

pytestmark = pytest.mark.asyncio


class Nx:
    """One nx-27017 server on a fixed port and data folder, so it can be killed and restarted."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            nx_27017_command(), "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.folder / "data"), "--pid-file", str(self.folder / "nx.pid"),
            "--log-file", str(self.folder / "nx.log"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.folder,
        )
        await until(lambda: accepts_connections(self.port), 20, "nx-27017 to listen")

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()


def _settings(emu: Emulator, **kw: object) -> Settings:
    return Settings(  # type: ignore[arg-type]
        collectors_start_delay=0.0,
        targets=(StreamTarget(venue=Venue.BINANCE, market=Market.SPOT, symbols=("BTCUSDT",)),),
        binance_spot_ws_url=emu.urls["binance"]["spot"],
        binance_spot_rest_url=emu.rest_urls["binance"]["spot"],
        channels=("trades",),
        flush_interval=0.1,
        **kw,
    )


async def test_store_outage_loses_nothing(tmp_path: Path) -> None:
    nx = Nx(tmp_path)
    await nx.start()
    async with Emulator(synthetic=[SyntheticSpec(market="spot", symbol="BTCUSDT", rate=300)], seed=2) as emu:
        store = MongoStore(nx.uri, server_selection_timeout=0.5)
        svc = Service(_settings(emu), store)
        await svc.start()
        try:
            key = BatchKey(TRADES, Venue.BINANCE, Market.SPOT, "BTCUSDT")
            await until(lambda: svc.writer.stats.rows > 100, 10, "trades to be written")
            await nx.kill()
            assert svc.spool is not None
            spool = svc.spool
            await until(lambda: svc.writer.stats.store_errors > 0 and spool.batches > 3, 15,
                        "writes to fail and trades to wait in the spool")
            healthy, body = health(svc)
            assert not healthy and body["store"]["ok"] is False
            assert body["store"]["spool"]["batches"] > 3 and body["store"]["spool"]["bytes"] > 0
            assert svc.writer.pending_rows < 1000  # waiting on disk, not in memory
            assert body["streams"][0]["state"] == "live"  # the receive path never waits on the store
            # Trades waiting for the store are not readable yet: data endpoints must say so.
            await until(lambda: bool(svc.live.unfinished(key, 0, 2**62)), 15, "the wait to show")
            (waiting,) = svc.live.unfinished(key, 0, 2**62)
            assert waiting.reason == "not_yet_written" and waiting.missing is not None and waiting.missing > 0
            await nx.start()
            await until(lambda: svc.writer.pending_rows == 0 and spool.empty and svc.writer.stats.store_ok, 30,
                        "the backlog to drain")
            assert health(svc)[1]["store"]["spool"]["batches"] == 0
            assert svc.live.unfinished(key, 0, 2**62) == []
            emu.pause()
            last = streams(svc)[0]
            await until(lambda: isinstance(last, TradeStream) and last.last_id == emu.delivered(
                "btcusdt@aggTrade", "spot")[-1], 10, "the last delivered trade to arrive")
        finally:
            await svc.stop()
        delivered = emu.delivered("btcusdt@aggTrade", "spot")
    reader = MongoStore(nx.uri)
    await reader.open()
    frame = await reader.read(BatchKey(TRADES, Venue.BINANCE, Market.SPOT, "BTCUSDT"), 0, 2**62)
    await reader.close()
    await nx.kill()
    assert frame["id"].to_list() == delivered
    assert sum(svc.writer.stats.dropped_rows.values()) == 0


async def test_backlog_past_its_bound_is_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            pymongo_mid_handshake: None) -> None:
    dead = f"mongodb://127.0.0.1:{free_port()}/"
    async with Emulator(synthetic=[SyntheticSpec(market="spot", symbol="BTCUSDT", rate=1000)], seed=2) as emu:
        # Without a spool (WADM_SPOOL_MAX_BYTES=0) the queue in memory is all there is.
        svc = Service(_settings(emu, writer_max_pending_rows=1000, spool_max_bytes=0),
                      MongoStore(dead, server_selection_timeout=0.2))
        with caplog.at_level(logging.ERROR, logger="wadm.pipeline.writer"):
            await svc.start()
            try:
                await until(lambda: svc.writer.stats.dropped_rows["store_backlog"] > 0, 15, "a batch to be dropped")
                healthy, body = health(svc)
                assert not healthy
                assert body["store"]["dropped_rows"] > 0
                assert svc.writer.pending_rows <= 1000 + 1000  # bounded: at most the bound plus one batch
            finally:
                await svc.stop(deadline=0.5)
    assert any("Dropped" in r.message and r.levelno == logging.ERROR for r in caplog.records)


async def test_a_spool_folder_that_cannot_be_used_is_reported_and_the_service_runs_without(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "spool").write_text("a file where the spool folder should be")
    with caplog.at_level(logging.ERROR, logger="wadm.pipeline.service"):
        svc = Service(Settings(data_dir=tmp_path, collectors_enabled=False), SqliteStore(tmp_path / "w.db"))
    assert svc.spool is None and svc.writer.spool is None
    assert any("cannot be used" in r.getMessage() and "without a spool" in r.getMessage() for r in caplog.records)
    await svc.start()
    try:
        await until(lambda: health(svc)[0], 10, "the service to be healthy without its spool")
        assert health(svc)[1]["store"]["spool"] is None
    finally:
        await svc.stop()
