"""Collector links against the in-process emulator over real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from tests.helpers import binance_spot_settings, free_port, health, streams, until
from wadm.config import Settings, StreamTarget
from wadm.emulator import ConnectionPolicy, Emulator
from wadm.emulator.market import SyntheticSpec
from wadm.pipeline.service import Service
from wadm.records import GAPS, TRADES, BatchKey, Market, Venue
from wadm.store import SqliteStore
from wadm.venues import binance
from wadm.venues.base import ConnectionPlan, Event, ProtocolBase, TradeStream

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    spec = [SyntheticSpec(market="spot", symbol=s, rate=300) for s in ("BTCUSDT", "ETHUSDT")]
    async with Emulator(synthetic=spec, seed=3) as e:
        yield e


def _settings(emu: Emulator, **kw: object) -> Settings:
    return binance_spot_settings(emu, ("BTCUSDT", "ETHUSDT"), **kw)


async def _caught_up(svc: Service, emu: Emulator) -> None:
    """Wait until every trade the (paused) emulator delivered has reached its stream."""
    def done() -> bool:
        for st in streams(svc):
            assert isinstance(st, TradeStream)
            delivered = emu.delivered(st.spec.name, "spot")
            if delivered and st.last_id != delivered[-1]:
                return False
        return True

    await until(done, 10, "the last delivered trades to arrive")


async def _stored_ids(store: SqliteStore, symbol: str) -> list[int]:
    frame = await store.read(BatchKey(TRADES, Venue.BINANCE, Market.SPOT, symbol), 0, 2**62)
    return frame["id"].to_list() if frame.height else []


async def test_rotation_is_make_before_break_and_loses_nothing(emu: Emulator, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "w.db")
    svc = Service(_settings(emu, rotate_after=1.0), store)
    await svc.start()
    link = svc.collectors[0].link
    await until(lambda: link.state.rotations >= 3, 20, "three rotations")
    emu.pause()
    await _caught_up(svc, emu)
    await svc.stop()
    await store.open()
    for symbol in ("BTCUSDT", "ETHUSDT"):
        delivered = emu.delivered(f"{symbol.lower()}@aggTrade", "spot")
        assert len(delivered) > 500
        assert await _stored_ids(store, symbol) == delivered
    assert link.state.reconnects == link.state.rotations  # every new connection was a rotation, none a loss
    assert sum(st.duplicates for st in streams(svc) if isinstance(st, TradeStream)) > 0  # overlaps were removed
    await store.close()


async def test_one_failing_connection_does_not_affect_the_others(emu: Emulator, tmp_path: Path) -> None:
    settings = _settings(emu)
    dead = binance.plan_trade_connections(Market.SPOT, ("ETHUSDT",), f"ws://127.0.0.1:{free_port()}")
    good = binance.plan_trade_connections(Market.SPOT, ("BTCUSDT",), emu.urls["binance"]["spot"])
    svc = Service(settings, SqliteStore(tmp_path / "w.db"), plans=dead + good)
    await svc.start()
    try:
        await until(lambda: svc.collectors[0].link.state.connect_failures >= 3, 10, "retries against the dead port")
        await until(lambda: streams(svc)[1].messages > 100, 10, "the good stream flowing")
        healthy, body = health(svc)
        assert not healthy
        states = {s["symbol"]: s["state"] for s in body["streams"]}
        assert states == {"ETHUSDT": "connecting", "BTCUSDT": "live"}
        assert "ConnectionRefusedError" in body["connections"][0]["last_error"]
    finally:
        await svc.stop()


class _BuggyProtocol(ProtocolBase):
    """A venue protocol with a bug that throws on one frame (to exercise supervision)."""

    def __init__(self, inner: binance.BinanceProtocol, fail_at: int) -> None:
        self.inner = inner
        self.streams = inner.streams
        self.fail_at = fail_at
        self.frames = 0

    def feed(self, payload: bytes, ts_recv: int) -> Sequence[Event]:
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
        await until(lambda: sum(svc.supervisor.restarts.values()) >= 1, 10, "the failure to reach the supervisor")
        if restart:
            proto = svc.collectors[0].plan.protocol
            await until(lambda: proto.streams["btcusdt@aggTrade"].messages > 100, 15, "data after the restart")
            await until(lambda: health(svc)[0], 10, "health to say so")
            healthy, body = health(svc)
            assert body["collectors"]["restarts"] == {"binance/spot/trades/0": 1}
        else:
            await until(lambda: svc.collectors[0].link.state.failed is not None, 10, "the collector to give up")
            healthy, body = health(svc)
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
            link = svc.collectors[0].link
            await until(lambda: link.state.connected, 5, "a connection")
            await asyncio.sleep(2.0)
            assert link.state.reconnects == 0  # pings were answered within the deadline
            await until(lambda: link.state.reconnects >= 1 and link.state.connected, 10, "a reconnect after the cut")
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
        link = svc.collectors[0].link
        await until(lambda: link.excused("nopeusdt@aggTrade") is not None, 10, "exchangeInfo to be read")
        await asyncio.sleep(4.0)  # NOTE: past stale_after: the silent stream must not replace the connection
        healthy, body = health(svc)
        states = {s["symbol"]: (s["state"], s["error"]) for s in body["streams"]}
        assert states["BTCUSDT"] == ("live", None)
        assert states["NOPEUSDT"] == ("subscription_failed", "NOPEUSDT is not listed on binance/spot")
        assert not healthy  # a configured symbol is not being collected: that is not ok
        assert link.state.stale_reconnects == 0 and link.state.reconnects == 0
    finally:
        await svc.stop()


async def test_a_window_being_backfilled_is_reported_until_it_is_recovered(emu: Emulator, tmp_path: Path) -> None:
    targets = (StreamTarget(venue=Venue.BINANCE, market=Market.SPOT, symbols=("BTCUSDT",)),)
    svc = Service(_settings(emu, targets=targets), SqliteStore(tmp_path / "w.db"))
    await svc.start()
    try:
        await until(lambda: health(svc)[0], 10, "the stream to go live")
        emu.force_rest_status(503, count=1_000_000)  # the venue's REST API is down for now
        emu.drop()
        key = BatchKey(TRADES, Venue.BINANCE, Market.SPOT, "BTCUSDT")
        await until(lambda: bool(svc.collectors[0].pending), 10, "a backfill to start")
        await until(lambda: bool(svc.live.unfinished(key, 0, 2**62)), 10, "the missing window to be pending")
        rows = svc.live.unfinished(key, 0, 2**62)
        assert rows[0].reason == "backfilling" and rows[0].missing is not None and rows[0].missing > 0
        emu.clear_faults()  # REST is back: the next retry recovers the window
        await until(lambda: not svc.collectors[0].pending, 60, "the backfill to finish")
        stream = streams(svc)[0]
        assert isinstance(stream, TradeStream)
        assert stream.backfilled == stream.missing_ids > 0
        emu.pause()
        await _caught_up(svc, emu)
    finally:
        await svc.stop()
    store = SqliteStore(tmp_path / "w.db")
    await store.open()
    ids = (await store.read(BatchKey(TRADES, Venue.BINANCE, Market.SPOT, "BTCUSDT"), 0, 2**62))["id"].to_list()
    gaps = await store.read(BatchKey(GAPS, Venue.BINANCE, Market.SPOT, "BTCUSDT"), 0, 2**62)
    await store.close()
    assert sorted(ids) == list(range(min(ids), max(ids) + 1)) and len(set(ids)) == len(ids)
    assert gaps.height == 0  # everything came back: no gap is recorded
