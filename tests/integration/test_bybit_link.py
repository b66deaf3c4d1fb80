"""Bybit collection against the in-process emulator: subscriptions, pings, arrays, refused topics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from wadm.config import Settings, StreamTarget
from wadm.emulator import Emulator
from wadm.emulator.market import SyntheticSpec
from wadm.pipeline.service import Service
from wadm.records import GAPS, TRADES, BatchKey, Market, Venue
from wadm.store import SqliteStore

pytestmark = pytest.mark.asyncio


async def _until(predicate: Callable[[], bool], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 (polls counters other tasks update)
            await asyncio.sleep(0.05)


def _settings(emu: Emulator, targets: tuple[StreamTarget, ...]) -> Settings:
    """Trades only, against the emulator's WebSocket and REST endpoints."""
    return Settings(
        collectors_start_delay=0.0,
        targets=targets,
        bybit_ws_url=emu.urls["bybit"]["linear"].rsplit("/v5/", 1)[0],
        bybit_rest_url=emu.rest_urls["bybit"]["linear"],
        channels=("trades",),
        stale_after=3.0,
        flush_interval=0.1,
        reconnect_min_delay=0.05,
        reconnect_max_delay=0.3,
    )


async def test_bybit_trades_are_stored_once_through_drops(tmp_path: Path) -> None:
    specs = [SyntheticSpec(market=m, symbol=s, rate=300, venue="bybit")
             for m, s in (("linear", "BTCUSDT"), ("linear", "ETHUSDT"), ("spot", "BTCUSDT"))]
    async with Emulator(synthetic=specs, seed=4) as emu:
        targets = (StreamTarget(venue=Venue.BYBIT, market=Market.LINEAR, symbols=("BTCUSDT", "ETHUSDT")),
                   StreamTarget(venue=Venue.BYBIT, market=Market.SPOT, symbols=("BTCUSDT",)))
        store = SqliteStore(tmp_path / "w.db")
        svc = Service(_settings(emu, targets), store)
        await svc.start()
        try:
            await _until(lambda: all(st.messages > 20 for _, st in svc.streams), 10)
            assert svc.health()[0]
            emu.drop(venue="bybit")
            await _until(lambda: all(link.state.reconnects >= 1 and link.state.connected for link in svc.links), 10)
            await asyncio.sleep(1.0)
            emu.pause()
            await asyncio.sleep(0.3)
        finally:
            await svc.stop()
        await store.open()
        for market, symbol in (("linear", "BTCUSDT"), ("linear", "ETHUSDT"), ("spot", "BTCUSDT")):
            delivered = emu.delivered(f"publicTrade.{symbol}", market=market, venue="bybit")
            frame = await store.read(BatchKey(TRADES, Venue.BYBIT, Market(market), symbol), 0, 2**62)
            assert len(delivered) > 200
            stored = frame["id"].to_list()
            assert frame["id"].n_unique() == frame.height  # stream and backfill never store a trade twice
            assert set(stored) >= {str(i) for i in delivered}
            st = next(st for _, st in svc.streams if st.market == market and st.spec.symbol == symbol)
            assert st.backfilled == len(stored) - len(delivered)
            # Trades generated during the disconnect come back from recent-trade; Bybit ids cannot
            # prove completeness, so a window the REST answer did not reach back over is a gap.
            gaps = await store.read(BatchKey(GAPS, Venue.BYBIT, Market(market), symbol), 0, 2**62)
            if market == "linear":  # 1000 recent trades reach back past a sub-second disconnect
                assert st.backfilled > 0 and gaps.height == 0, gaps
            else:
                assert gaps.height == 0 or (gaps["reason"].to_list() == ["disconnected"]
                                            and gaps["missing"].to_list() == [None]), gaps
        await store.close()


async def test_a_refused_topic_is_reported_and_the_others_keep_flowing(tmp_path: Path) -> None:
    specs = [SyntheticSpec(market="linear", symbol=s, rate=200, venue="bybit") for s in ("BTCUSDT", "ETHUSDT")]
    async with Emulator(synthetic=specs, seed=4) as emu:
        emu.fail_subscribe("publicTrade.ETHUSDT", market="linear")  # listed, but the venue refuses the topic
        targets = (StreamTarget(venue=Venue.BYBIT, market=Market.LINEAR, symbols=("BTCUSDT", "ETHUSDT")),)
        svc = Service(_settings(emu, targets), SqliteStore(tmp_path / "w.db"))
        await svc.start()
        try:
            await _until(lambda: bool(svc.links and svc.links[0].failed_streams), 10)
            await asyncio.sleep(4.0)  # longer than stale_after: no reconnect storm for the refused topic
            healthy, body = svc.health()
            assert not healthy
            states = {s["symbol"]: (s["state"], s["error"]) for s in body["streams"]}
            assert states["BTCUSDT"] == ("live", None)
            assert states["ETHUSDT"][0] == "subscription_failed"
            assert "handler not found" in (states["ETHUSDT"][1] or "")
            assert svc.links[0].state.reconnects == 0
        finally:
            await svc.stop()


async def test_a_symbol_bybit_does_not_list_is_reported(tmp_path: Path) -> None:
    specs = [SyntheticSpec(market="linear", symbol="BTCUSDT", rate=200, venue="bybit")]
    async with Emulator(synthetic=specs, seed=4) as emu:
        targets = (StreamTarget(venue=Venue.BYBIT, market=Market.LINEAR, symbols=("BTCUSDT", "NOTASYMBOL")),)
        svc = Service(_settings(emu, targets), SqliteStore(tmp_path / "w.db"))
        await svc.start()
        try:
            await _until(lambda: "publicTrade.NOTASYMBOL" in svc.links[0].failed_streams, 10)
            states = {s["symbol"]: (s["state"], s["error"]) for s in svc.health()[1]["streams"]}
            assert states["BTCUSDT"][1] is None
            error = states["NOTASYMBOL"][1] or ""
            # The venue refuses the topic and does not list the symbol; whichever says it first.
            assert "handler not found" in error or "NOTASYMBOL is not listed on bybit/linear" in error
        finally:
            await svc.stop()
