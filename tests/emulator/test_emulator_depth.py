"""Binance diff depth and klines from the synthetic book, checked against the true book."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.helpers import until
from wadm.emulator import Emulator, StreamTiming, wall_clock_ms

from .conftest import Connect, Http
from .helpers import TIMEOUT, Client, apply_levels, caught_up, emulator, eventually, sorted_side

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

TIMING = StreamTiming(binance_kline=0.2)
SNAPSHOT = {"spot": "/binance/spot/api/v3/depth", "usdm": "/binance/usdm/fapi/v1/depth"}
SETUP: dict[str, Any] = {"seed": 3, "book_levels": 60, "timing": TIMING}
"""Binance spot/USD-M BTCUSDT feeds with small books and fast kline pushes."""


def _depth_url(emu: Emulator, market: str, streams: str = "btcusdt@depth@100ms") -> str:
    route = "/public" if market == "usdm" else ""
    return f"{emu.urls['binance'][market]}{route}/stream?streams={streams}"


async def _sync(client: Client, api: httpx.AsyncClient, market: str) -> tuple[dict[str, str], dict[str, str], int]:
    """The documented local-book procedure: buffer, snapshot, apply; returns the book and its id."""
    await eventually(lambda: len(client.data(event="depthUpdate")) >= 2)
    snap = (await api.get(SNAPSHOT[market], params={"symbol": "BTCUSDT", "limit": 1000})).json()
    last = snap["lastUpdateId"]
    bids = dict(snap["bids"])
    asks = dict(snap["asks"])
    await eventually(lambda: client.data(event="depthUpdate")[-1]["u"] >= last + (market == "spot"))
    events = client.data(event="depthUpdate")
    if market == "spot":
        assert events[0]["U"] <= last + 1
        pending = [e for e in events if e["u"] > last]
        assert pending[0]["U"] <= last + 1 <= pending[0]["u"]
    else:
        pending = [e for e in events if e["u"] >= last]
        assert pending[0]["U"] <= last <= pending[0]["u"]
    book_id = last
    for event in pending:
        apply_levels(bids, event["b"])
        apply_levels(asks, event["a"])
        book_id = event["u"]
    return bids, asks, book_id


@pytest.mark.parametrize("market", ["spot", "usdm"])
async def test_snapshot_plus_diffs_rebuild_the_true_book(connect: Connect, http: Http, market: str) -> None:
    async with emulator(rate=300, **SETUP) as emu:
        client = await connect(_depth_url(emu, market))
        bids, asks, book_id = await _sync(client, http(emu), market)
        synced = len(client.data(event="depthUpdate"))
        await until(lambda: len(client.data(event="depthUpdate")) >= synced + 3, TIMEOUT, "3 events after the sync")
        emu.pause(market=market)
        # The book stands still now; its next event carries the final changes (``u`` = the book's id).
        _, _, final_id = emu.true_book("binance", market, "BTCUSDT")
        await until(
            lambda: client.data(event="depthUpdate")[-1]["u"] == final_id, TIMEOUT, "the event of the last change"
        )
        events = client.data(event="depthUpdate")
        for prev, event in zip(events, events[1:], strict=False):
            if market == "spot":
                assert event["U"] == prev["u"] + 1
                assert list(event) == ["e", "E", "s", "U", "u", "b", "a"]
            else:
                assert event["pu"] == prev["u"]
                assert list(event) == ["e", "E", "T", "s", "U", "u", "pu", "b", "a"]
        if market == "usdm":
            assert any(e["U"] > p["u"] + 1 for p, e in zip(events, events[1:], strict=False))
        for event in events:
            if event["u"] > book_id:
                apply_levels(bids, event["b"])
                apply_levels(asks, event["a"])
                book_id = event["u"]
        true_bids, true_asks, true_id = emu.true_book("binance", market, "BTCUSDT")
        assert book_id == true_id
        assert sorted_side(bids, True) == true_bids and sorted_side(asks, False) == true_asks
        assert Decimal(true_bids[0][0]) < Decimal(true_asks[0][0])


@pytest.mark.parametrize("market", ["spot", "usdm"])
async def test_gap_and_crossed_faults(connect: Connect, http: Http, market: str) -> None:
    async with emulator(rate=300, **SETUP) as emu:
        client = await connect(_depth_url(emu, market))
        api = http(emu)
        bids, asks, book_id = await _sync(client, api, market)
        resp = await api.get("/control/crossed", params={"venue": "binance", "market": market, "symbol": "BTCUSDT"})
        assert resp.json() == {"affected": 1}
        seen = len(client.data(event="depthUpdate"))
        await eventually(lambda: len(client.data(event="depthUpdate")) >= seen + 3)
        crossed = []
        for event in client.data(event="depthUpdate"):
            if event["u"] > book_id:
                apply_levels(bids, event["b"])
                apply_levels(asks, event["a"])
                book_id = event["u"]
                crossed.append(max(map(Decimal, bids)) >= min(map(Decimal, asks)))
        assert crossed.count(True) == 1 and not crossed[-1]

        assert emu.depth_gap(2, venue="binance", market=market, stream="btcusdt@depth@100ms") == 1
        seen = len(client.data(event="depthUpdate"))
        await eventually(lambda: len(client.data(event="depthUpdate")) >= seen + 2)
        events = client.data(event="depthUpdate")
        if market == "spot":
            breaks = [e for p, e in zip(events, events[1:], strict=False) if e["U"] != p["u"] + 1]
        else:
            breaks = [e for p, e in zip(events, events[1:], strict=False) if e["pu"] != p["u"]]
        assert len(breaks) == 1


async def test_partial_depth_and_klines(connect: Connect) -> None:
    now = wall_clock_ms()
    offset = (now // 60_000 + 1) * 60_000 - 600 - now
    async with emulator(rate=200, **SETUP, clock=lambda: wall_clock_ms() + offset) as emu:
        emu.pause()  # every trade of the bar reaches the client
        spot = await connect(
            emu.urls["binance"]["spot"] + "/stream?streams=btcusdt@kline_1m/btcusdt@depth5@100ms/btcusdt@aggTrade"
        )
        usdm = await connect(emu.urls["binance"]["usdm"] + "/market/stream?streams=btcusdt@kline_1m")
        emu.resume()
        await eventually(lambda: any(k["k"]["x"] for k in spot.data("btcusdt@kline_1m")), within=5)
        await eventually(lambda: any(k["k"]["x"] for k in usdm.data("btcusdt@kline_1m")), within=5)
        klines = spot.data("btcusdt@kline_1m")
        closed = next(k["k"] for k in klines if k["k"]["x"])
        assert list(klines[0]) == ["e", "E", "s", "k"]
        assert list(closed) == [
            "t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B",
        ]  # fmt: skip
        assert closed["i"] == "1m" and closed["T"] == closed["t"] + 59_999
        assert len([k for k in klines if not k["k"]["x"]]) >= 2  # updates of the open bar
        aggs = [a for a in spot.data("btcusdt@aggTrade") if closed["t"] <= a["T"] <= closed["T"]]
        assert aggs
        assert Decimal(closed["v"]) == sum(Decimal(a["q"]) for a in aggs)
        taker_buys = sum(Decimal(a["q"]) for a in aggs if not a["m"])
        assert Decimal(closed["V"]) == taker_buys
        assert Decimal(closed["o"]) == Decimal(aggs[0]["p"]) and Decimal(closed["c"]) == Decimal(aggs[-1]["p"])
        assert closed["f"] == aggs[0]["f"] and closed["L"] == aggs[-1]["l"]
        after = next(k["k"] for k in klines if k["k"]["t"] == closed["T"] + 1)
        assert after["x"] is False
        partial = spot.data("btcusdt@depth5@100ms")
        assert partial and list(partial[-1]) == ["lastUpdateId", "bids", "asks"]
        assert len(partial[-1]["bids"]) == 5 and len(partial[-1]["asks"]) == 5


async def test_true_book_endpoint_and_one_silenced_stream(connect: Connect, http: Http) -> None:
    async with emulator(rate=300, **SETUP) as emu:
        api = http(emu)
        resp = await api.get(
            "/control/book", params={"venue": "binance", "market": "usdm", "symbol": "btcusdt", "depth": "5"}
        )
        body = resp.json()
        assert list(body) == ["venue", "market", "symbol", "bids", "asks", "update_id"]
        assert len(body["bids"]) == 5 and float(body["bids"][0][0]) < float(body["asks"][0][0])
        assert (await api.get("/control/book", params={"venue": "binance", "market": "spot"})).status_code == 400
        emu.pause(market="usdm")
        bids, asks, update_id = emu.true_book("binance", "usdm", "BTCUSDT", depth=5)
        again = (
            await api.get("/control/book", params={"venue": "binance", "market": "usdm", "symbol": "BTCUSDT"})
        ).json()
        assert [tuple(b) for b in again["bids"][:5]] == bids and again["update_id"] == update_id

        client = await connect(_depth_url(emu, "spot", "btcusdt@depth@100ms/btcusdt@trade"))
        await eventually(lambda: len(client.data("btcusdt@trade")) >= 5)
        resp = await api.get("/control/silence_stream", params={"stream": "btcusdt@trade", "seconds": "1.0"})
        assert resp.json() == {"affected": 1}
        await caught_up(client)  # trade frames sent before the silence have arrived
        trades, depth = len(client.data("btcusdt@trade")), len(client.data("btcusdt@depth@100ms"))
        feed = emu.feeds[("binance", "spot", "BTCUSDT")]
        generated = feed.generated
        await until(
            lambda: feed.generated >= generated + 5 and len(client.data("btcusdt@depth@100ms")) >= depth + 2,
            TIMEOUT,
            "trades generated and depth events sent while the trade stream is silenced",
        )
        assert len(client.data("btcusdt@trade")) == trades  # this stream stalls ...
        await eventually(lambda: len(client.data("btcusdt@trade")) > trades)  # ... until the silence ends
