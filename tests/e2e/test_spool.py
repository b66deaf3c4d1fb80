"""End to end: ``wadm run`` on MongoDB (an nx-27017 wire server this test kills and restarts)
rides out store outages with its on-disk spool, a SIGKILL in the middle of one, and a SIGTERM.

Every test ends by reading MongoDB itself: each trade the emulator delivered is stored exactly
once, nothing delivered is missing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.mongo import accepts_connections, nx_27017_command
from tests.procs import Proc, emulator, stop, wadm, wait_for
from wadm.records import TRADES, BatchKey, Market, Venue
from wadm.store.codec import decode_frame
from wadm.store.mongo import MongoStore
from wadm.store.spool import Spool

pytestmark = pytest.mark.e2e

KEY = BatchKey(TRADES, Venue.BINANCE, Market.SPOT, "BTCUSDT")
IN_MEMORY_BOUND = 1000  # WADM_WRITER_MAX_PENDING_ROWS: the outages below last longer than this


class Mongo:
    """nx-27017 on a fixed port and data folder, so that it can be killed and started again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/wadm"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [nx_27017_command(), "--host", "127.0.0.1", "--port", str(self.port), "--data-dir",
             str(self.folder / "data"), "--pid-file", str(self.folder / "nx.pid"), "--log-file",
             str(self.folder / "nx.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.folder)
        wait_for(lambda: accepts_connections(self.port), 30, "nx-27017 to listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def trade_ids(self) -> list[int]:
        """Every stored trade id, batch by batch, duplicates included."""
        async def read() -> list[int]:
            store = MongoStore(self.uri)
            await store.open()
            try:
                return [int(i) for i in (await store.read(KEY, 0, 2**62))["id"]]
            finally:
                await store.close()
        return asyncio.run(read())


class Rig:
    def __init__(self, tmp: Path, mongo: Mongo, emu_port: int) -> None:
        self.tmp, self.mongo, self.emu_port = tmp, mongo, emu_port
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "BINANCE_SYMBOLS": "BTCUSDT", "BINANCE_USDM_SYMBOLS": "", "BYBIT_SYMBOLS": "", "BYBIT_SPOT_SYMBOLS": "",
            "WADM_BINANCE_SPOT_WS_URL": f"ws://127.0.0.1:{self.emu_port}/binance/spot",
            "WADM_BINANCE_SPOT_REST_URL": f"http://127.0.0.1:{self.emu_port}/binance/spot",
            "WADM_CHANNELS": "trades", "COLLECTORS_START_DELAY": "0", "WADM_FLUSH_INTERVAL": "0.2",
            "WADM_STALE_AFTER": "5", "WADM_DATA_DIR": str(self.tmp / "wadm"), "MONGODB_URI": self.mongo.uri,
            "WADM_WRITER_MAX_PENDING_ROWS": str(IN_MEMORY_BOUND),
        }

    def control(self, action: str, **params: Any) -> dict[str, Any]:
        r = httpx.get(f"http://127.0.0.1:{self.emu_port}/control/{action}", params=params, timeout=10)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.api + "/health", timeout=5).json()
        return body

    def delivered(self) -> list[int]:
        ids: list[int] = self.control("delivered", stream="btcusdt@aggTrade", market="spot")["ids"]
        return ids

    def more_trades(self, n: int) -> None:
        start = len(self.delivered())
        wait_for(lambda: len(self.delivered()) >= start + n, 60, f"{n} more trades delivered")

    def generated(self, n: int) -> None:
        """Wait until the market has made ``n`` more trades (delivered to anyone or not)."""
        def made() -> int:
            return int(self.control("stats")["feeds"][0]["generated"])
        start = made()
        wait_for(lambda: made() >= start + n, 60, f"{n} more trades generated")

    def spooled(self) -> int:
        spool = self.health()["store"]["spool"]
        return int(spool["batches"])


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    mongo = Mongo(tmp_path)
    mongo.start()
    try:
        with emulator("--symbols", "BTCUSDT", "--markets", "spot", "--rate", "300", "--seed", "11") as (_, emu_port):
            yield Rig(tmp_path, mongo, emu_port)
    finally:
        mongo.kill()


def _live(rig: Rig, app: Proc) -> None:
    wait_for(lambda: httpx.get(rig.api + "/health", timeout=5).status_code == 200, 60, "WADM to be healthy", app)


def _outage(rig: Rig, app: Proc) -> None:
    """Kill the store and keep streaming past the in-memory bound; health says degraded, data goes to disk."""
    rig.mongo.kill()
    wait_for(lambda: rig.spooled() > 0, 30, "batches to go to the spool", app)
    rig.more_trades(3 * IN_MEMORY_BOUND)
    body = rig.health()
    assert body["status"] == "degraded" and body["store"]["ok"] is False
    assert body["streams"][0]["state"] == "live"  # collection goes on
    assert body["store"]["pending_rows"] <= IN_MEMORY_BOUND
    assert body["store"]["spool"]["bytes"] > 0 and body["store"]["dropped_rows"] == 0


def _settle(rig: Rig, app: Proc) -> list[int]:
    """Stop the market once WADM is healthy and the spool empty; the ids delivered in all."""
    wait_for(lambda: rig.health()["status"] == "ok" and rig.spooled() == 0, 60, "the spool to be written", app)
    rig.more_trades(300)
    rig.control("pause")
    return rig.delivered()


def _stored_exactly(rig: Rig, expected: list[int], app: Proc) -> None:
    ids: list[int] = []

    def complete() -> bool:
        ids[:] = rig.mongo.trade_ids()
        return len(ids) >= len(expected)

    wait_for(complete, 60, "every trade to be in MongoDB", app, interval=0.5)
    assert ids == expected  # each once, in order


def test_a_store_outage_longer_than_memory_loses_nothing(rig: Rig) -> None:
    with wadm("run", rig.env(), rig.port) as app:
        _live(rig, app)
        rig.more_trades(300)
        _outage(rig, app)
        rig.mongo.start()
        delivered = _settle(rig, app)
        assert rig.health()["store"]["spool"]["batches"] == 0
        _stored_exactly(rig, list(range(delivered[0], delivered[-1] + 1)), app)
        assert sorted(set(delivered)) == delivered
        assert "Traceback" not in app.output
    assert list((rig.tmp / "wadm" / "spool").glob("*.seg")) == []  # written, then deleted


def test_a_sigkill_during_an_outage_keeps_what_was_spooled(rig: Rig) -> None:
    with wadm("run", rig.env(), rig.port) as app:
        _live(rig, app)
        rig.more_trades(300)
        _outage(rig, app)
        os.killpg(app.popen.pid, signal.SIGKILL)  # the server and its worker: no chance to flush
        app.popen.wait()
    folder = rig.tmp / "wadm" / "spool"
    spool = Spool(folder, 10**12)
    spool.open()
    records = spool.head(10**6, 10**12)
    spool.close()
    spooled = [int(i) for r in records if r.key == KEY for i in decode_frame(r.batch.data)["id"]]
    assert len(spooled) > IN_MEMORY_BOUND
    # A write cut short by the kill: the newest segment ends in half a record.
    newest = sorted(folder.glob("*.seg"))[-1]
    with newest.open("ab") as f:
        f.write(b"WSP1\xff\x00\x00\x00half a record")

    rig.mongo.start()
    with wadm("run", rig.env(), rig.port) as app:
        _live(rig, app)
        body = rig.health()
        assert body["store"]["spool"]["torn_bytes"] == 21
        assert "not a whole record" in app.output and "Traceback" not in app.output
        delivered = _settle(rig, app)
        stored = rig.mongo.trade_ids()
        assert set(spooled) <= set(stored)
        # What was only in memory at the kill is backfilled from where the spool ended.
        _stored_exactly(rig, list(range(delivered[0], delivered[-1] + 1)), app)


def test_a_sigterm_during_an_outage_spools_the_rest_and_the_next_start_writes_it(rig: Rig) -> None:
    with wadm("run", rig.env(), rig.port) as app:
        _live(rig, app)
        rig.more_trades(300)
        rig.mongo.kill()
        wait_for(lambda: rig.spooled() > 0, 30, "batches to go to the spool", app)
        rig.more_trades(300)
        assert stop(app) == 0, app.output
        assert "the next start writes them first" in app.output
        assert "rows not written" not in app.output
    rig.generated(300)  # the market goes on while WADM is down
    rig.mongo.start()
    with wadm("run", rig.env(), rig.port) as app:
        _live(rig, app)
        delivered = _settle(rig, app)
        _stored_exactly(rig, list(range(delivered[0], delivered[-1] + 1)), app)
        assert "written first" in app.output
