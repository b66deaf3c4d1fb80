"""Collector links against the in-process emulator over real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from tests.conftest import free_port
from wadm.config import Settings, StreamTarget
from wadm.emulator import ConnectionPolicy, Emulator
from wadm.emulator.market import SyntheticSpec
from wadm.pipeline.service import Service
from wadm.records import GAPS, TRADES, BatchKey, Market, Venue
from wadm.store import SqliteStore
from wadm.venues import binance
from wadm.venues.base import ConnectionPlan, Event, TradeStream

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    spec = [SyntheticSpec(market="spot", symbol=s, rate=300) for s in ("BTCUSDT", "ETHUSDT")]
    async with Emulator(synthetic=spec, seed=3) as e:
        yield e


def _settings(emu: Emulator, **kw: object) -> Settings:
    base: dict[str, object] = {
        "collectors_start_delay": 0.0,
        "targets": (StreamTarget(venue=Venue.BINANCE, market=Market.SPOT, symbols=("BTCUSDT", "ETHUSDT")),),
        "binance_spot_ws_url": emu.urls["binance"]["spot"],
        "binance_spot_rest_url": emu.rest_urls["binance"]["spot"],
        "channels": ("trades",),
        "stale_after": 3.0,
        "flush_interval": 0.1,
        "reconnect_min_delay": 0.05,
        "reconnect_max_delay": 0.3,
    }
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


async def _until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    # Polling is the point here: the predicates read counters that the links update.
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert predicate(), what


async def _stored_ids(store: SqliteStore, symbol: str) -> list[int]:
    frame = await store.read(BatchKey(TRADES, Venue.BINANCE, Market.SPOT, symbol), 0, 2**62)
    return frame["id"].to_list() if frame.height else []


async def test_rotation_is_make_before_break_and_loses_nothing(emu: Emulator, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "w.db")
    svc = Service(_settings(emu, rotate_after=1.0), store)
    await svc.start()
    link = svc.links[0]
    await _until(lambda: link.state.rotations >= 3, 20, "three rotations")
    emu.pause()
    await asyncio.sleep(0.3)
    await svc.stop()
    await store.open()
    for symbol in ("BTCUSDT", "ETHUSDT"):
        delivered = emu.delivered(f"{symbol.lower()}@aggTrade", "spot")
        assert len(delivered) > 500
        assert await _stored_ids(store, symbol) == delivered
    assert link.state.reconnects == link.state.rotations  # every new connection was a rotation, none a loss
    assert sum(st.duplicates for _, st in svc.streams) > 0  # the overlaps happened and were removed
    await store.close()


async def test_one_failing_connection_does_not_affect_the_others(emu: Emulator, tmp_path: Path) -> None:
    settings = _settings(emu)
    dead = binance.plan_trade_connections(Market.SPOT, ("ETHUSDT",), f"ws://127.0.0.1:{free_port()}")
    good = binance.plan_trade_connections(Market.SPOT, ("BTCUSDT",), emu.urls["binance"]["spot"])
    svc = Service(settings, SqliteStore(tmp_path / "w.db"), plans=dead + good)
    await svc.start()
    try:
        await _until(lambda: svc.links[0].state.connect_failures >= 3, 10, "retries against the dead port")
        await _until(lambda: svc.streams[1][1].messages > 100, 10, "the good stream flowing")
        healthy, body = svc.health()
        assert not healthy
        states = {s["symbol"]: s["state"] for s in body["streams"]}
        assert states == {"ETHUSDT": "connecting", "BTCUSDT": "live"}
        assert "ConnectionRefusedError" in body["connections"][0]["last_error"]
    finally:
        await svc.stop()


class _BuggyProtocol:
    """A venue protocol with a bug that throws on one frame (to exercise supervision)."""

    def __init__(self, inner: binance.BinanceProtocol, fail_at: int) -> None:
        self.inner = inner
        self.streams = inner.streams
        self.fail_at = fail_at
        self.frames = 0

    def feed(self, payload: bytes, ts_recv: int) -> Event | None:
        self.frames += 1
        if self.frames == self.fail_at:
            raise KeyError("a bug")
        return self.inner.feed(payload, ts_recv)


def _buggy_plan(emu: Emulator) -> list[ConnectionPlan]:
    plan = binance.plan_trade_connections(Market.SPOT, ("BTCUSDT",), emu.urls["binance"]["spot"])[0]
    assert isinstance(plan.protocol, binance.BinanceProtocol)
    return [ConnectionPlan(venue=plan.venue, market=plan.market, url=plan.url, streams=plan.streams,
                           protocol=_BuggyProtocol(plan.protocol, 50), label=plan.label)]


@pytest.mark.parametrize("restart", [True, False])
async def test_unexpected_collector_failure(emu: Emulator, tmp_path: Path, restart: bool) -> None:
    settings = _settings(emu, collectors_restart_on_error=restart)
    svc = Service(settings, SqliteStore(tmp_path / "w.db"), plans=_buggy_plan(emu))
    await svc.start()
    try:
        await _until(lambda: sum(svc.restarts.values()) >= 1, 10, "the failure to reach the supervisor")
        if restart:
            proto = svc.links[0].plan.protocol
            await _until(lambda: proto.streams["btcusdt@aggTrade"].messages > 100, 15, "data after the restart")
            healthy, body = svc.health()
            assert healthy, body
            assert body["collectors"]["restarts"] == {"binance/spot/trades/0": 1}
        else:
            await asyncio.sleep(0.5)
            healthy, body = svc.health()
            assert not healthy
            assert body["streams"][0]["state"] == "failed"
            assert "KeyError" in body["connections"][0]["failed"]
    finally:
        await svc.stop()


async def test_server_pings_are_answered_and_a_hard_cut_is_survived(tmp_path: Path) -> None:
    # Pings every 0.3 s with a 1 s pong deadline; the server cuts every connection after 3 s.
    policy = ConnectionPolicy(max_messages_per_s=5, ping_interval=0.3, pong_timeout=1.0, max_lifetime=3.0)
    spec = [SyntheticSpec(market="spot", symbol="BTCUSDT", rate=100)]
    async with Emulator(synthetic=spec, spot_policy=policy, seed=5) as emu:
        settings = _settings(emu, targets=(
            StreamTarget(venue=Venue.BINANCE, market=Market.SPOT, symbols=("BTCUSDT",)),))
        svc = Service(settings, SqliteStore(tmp_path / "w.db"))
        await svc.start()
        try:
            link = svc.links[0]
            await _until(lambda: link.state.connected, 5, "a connection")
            await asyncio.sleep(2.0)
            assert link.state.reconnects == 0  # pings were answered within the deadline
            await _until(lambda: link.state.reconnects >= 1 and link.state.connected, 10, "a reconnect after the cut")
            assert link.state.rotations == 0
            assert emu.stats()["connections"], "connected again"
        finally:
            await svc.stop()


async def test_a_symbol_the_venue_does_not_list_is_reported_and_does_not_fail_over_its_connection(
    emu: Emulator, tmp_path: Path
) -> None:
    targets = (StreamTarget(venue=Venue.BINANCE, market=Market.SPOT, symbols=("BTCUSDT", "NOPEUSDT")),)
    svc = Service(_settings(emu, targets=targets), SqliteStore(tmp_path / "w.db"))
    await svc.start()
    try:
        await _until(lambda: bool(svc.links[0].failed_streams), 10, "exchangeInfo to be read")
        await asyncio.sleep(4.0)  # past stale_after: the silent stream must not replace the connection
        healthy, body = svc.health()
        states = {s["symbol"]: (s["state"], s["error"]) for s in body["streams"]}
        assert states["BTCUSDT"] == ("live", None)
        assert states["NOPEUSDT"] == ("subscription_failed", "NOPEUSDT is not listed on binance/spot")
        assert not healthy  # a configured symbol is not being collected: that is not ok
        assert svc.links[0].state.stale_reconnects == 0 and svc.links[0].state.reconnects == 0
    finally:
        await svc.stop()


async def test_a_window_being_backfilled_is_reported_until_it_is_recovered(emu: Emulator, tmp_path: Path) -> None:
    targets = (StreamTarget(venue=Venue.BINANCE, market=Market.SPOT, symbols=("BTCUSDT",)),)
    svc = Service(_settings(emu, targets=targets), SqliteStore(tmp_path / "w.db"))
    await svc.start()
    try:
        await _until(lambda: svc.health()[0], 10, "the stream to go live")
        emu.force_rest_status(503, count=1_000_000)  # the venue's REST API is down for now
        emu.drop()
        await _until(lambda: bool(svc.recovery.pending), 10, "a backfill to start")
        await _until(lambda: bool(svc.recovery.pending_gaps(Venue.BINANCE, Market.SPOT, "BTCUSDT", 0, 2**62)),
                     10, "the missing window to be pending")
        rows = svc.recovery.pending_gaps(Venue.BINANCE, Market.SPOT, "BTCUSDT", 0, 2**62)
        assert rows[0]["reason"] == "backfilling" and rows[0]["missing"] > 0
        emu.clear_faults()  # REST is back: the next retry recovers the window
        await _until(lambda: not any(svc.recovery.pending.values()), 60, "the backfill to finish")
        stream = svc.streams[0][1]
        assert isinstance(stream, TradeStream)
        assert stream.backfilled == stream.missing_ids > 0
        emu.pause()
        await asyncio.sleep(0.5)
    finally:
        await svc.stop()
    store = SqliteStore(tmp_path / "w.db")
    await store.open()
    ids = (await store.read(BatchKey(TRADES, Venue.BINANCE, Market.SPOT, "BTCUSDT"), 0, 2**62))["id"].to_list()
    gaps = await store.read(BatchKey(GAPS, Venue.BINANCE, Market.SPOT, "BTCUSDT"), 0, 2**62)
    await store.close()
    assert sorted(ids) == list(range(min(ids), max(ids) + 1)) and len(set(ids)) == len(ids)
    assert gaps.height == 0  # everything came back: no gap is recorded
