"""Bybit collection against the in-process emulator: subscriptions, pings, arrays, refused topics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers import health, links, streams, until
from wadm.config import Settings, StreamTarget
from wadm.emulator import Emulator
from wadm.emulator.bybit import trade_id_text
from wadm.emulator.market import SyntheticSpec
from wadm.pipeline.service import Service
from wadm.records import GAPS, TRADES, BatchKey, Market, Venue
from wadm.store import SqliteStore
from wadm.venues.base import TradeStream

pytestmark = pytest.mark.asyncio


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
            await until(lambda: all(st.messages > 20 for st in streams(svc)), 10, "trades on every stream")
            await until(lambda: health(svc)[0], 10, "health to say so")
            emu.drop(venue="bybit")
            await until(lambda: all(link.state.reconnects >= 1 and link.state.connected for link in links(svc)), 10,
                        "every connection to be back")
            before = [st.messages for st in streams(svc)]
            await until(lambda: all(st.messages > n + 20 for st, n in zip(streams(svc), before, strict=True))
                        and all(len(emu.delivered(f"publicTrade.{s}", market=m, venue="bybit")) > 200
                                for m, s in (("linear", "BTCUSDT"), ("linear", "ETHUSDT"), ("spot", "BTCUSDT"))),
                        10, "trades on every new connection")
            emu.pause()
            await until(lambda: all(not c.pending for c in svc.collectors), 10, "the backfills to finish")
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
            st = next(st for st in streams(svc) if st.market == market and st.spec.symbol == symbol)
            assert isinstance(st, TradeStream)
            assert st.backfilled == len(stored) - len(delivered)
            # Trades generated during the disconnect come back from recent-trade; Bybit ids cannot
            # prove completeness, so a window the REST answer did not reach back over is a gap,
            # and every trade we lack lies inside one.
            gaps = await store.read(BatchKey(GAPS, Venue.BYBIT, Market(market), symbol), 0, 2**62)
            generated = emu.feeds[("bybit", market, symbol)].history.recent_trades(1_000_000)
            first_ms = next(r.ts_ms for r in generated if trade_id_text(market, r.trade_id) == str(delivered[0]))
            have = set(stored)
            missing = [r for r in generated if r.ts_ms >= first_ms and trade_id_text(market, r.trade_id) not in have]
            rows = list(gaps.iter_rows(named=True))
            windows = [(g["ts_event"] // 1_000_000, g["end"] // 1_000_000) for g in rows]
            assert [r for r in missing if not any(a <= r.ts_ms <= b for a, b in windows)] == [], (market, windows)
            assert all(g["reason"] == "disconnected" and g["missing"] is None for g in rows), rows
            if market == "linear":  # 1000 recent trades reach back past a sub-second disconnect
                assert st.backfilled > 0 and gaps.height == 0 and missing == [], gaps
        await store.close()


async def test_a_refused_topic_is_reported_and_the_others_keep_flowing(tmp_path: Path) -> None:
    specs = [SyntheticSpec(market="linear", symbol=s, rate=200, venue="bybit") for s in ("BTCUSDT", "ETHUSDT")]
    async with Emulator(synthetic=specs, seed=4) as emu:
        emu.fail_subscribe("publicTrade.ETHUSDT", market="linear")  # listed, but the venue refuses the topic
        targets = (StreamTarget(venue=Venue.BYBIT, market=Market.LINEAR, symbols=("BTCUSDT", "ETHUSDT")),)
        svc = Service(_settings(emu, targets), SqliteStore(tmp_path / "w.db"))
        await svc.start()
        try:
            link = svc.collectors[0].link
            await until(lambda: link.excused("publicTrade.ETHUSDT") is not None, 10, "the refusal")
            await asyncio.sleep(4.0)  # NOTE: longer than stale_after: no reconnect storm for the refused topic
            healthy, body = health(svc)
            assert not healthy
            states = {s["symbol"]: (s["state"], s["error"]) for s in body["streams"]}
            assert states["BTCUSDT"] == ("live", None)
            assert states["ETHUSDT"][0] == "subscription_failed"
            assert "handler not found" in (states["ETHUSDT"][1] or "")
            assert link.state.reconnects == 0
        finally:
            await svc.stop()


async def test_a_symbol_bybit_does_not_list_is_reported(tmp_path: Path) -> None:
    specs = [SyntheticSpec(market="linear", symbol="BTCUSDT", rate=200, venue="bybit")]
    async with Emulator(synthetic=specs, seed=4) as emu:
        targets = (StreamTarget(venue=Venue.BYBIT, market=Market.LINEAR, symbols=("BTCUSDT", "NOTASYMBOL")),)
        svc = Service(_settings(emu, targets), SqliteStore(tmp_path / "w.db"))
        await svc.start()
        try:
            # The venue refuses the topic and does not list the symbol: the listing says why.
            link = svc.collectors[0].link
            await until(lambda: link.excused("publicTrade.NOTASYMBOL") == "NOTASYMBOL is not listed on bybit/linear",
                        10, "the listing check")
            states = {s["symbol"]: (s["state"], s["error"]) for s in health(svc)[1]["streams"]}
            assert states["BTCUSDT"] == ("live", None)
            assert states["NOTASYMBOL"] == ("subscription_failed", "NOTASYMBOL is not listed on bybit/linear")
        finally:
            await svc.stop()
