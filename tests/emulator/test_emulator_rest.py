"""REST market data on the emulator's port: shapes, weights, faults and backfill."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import until
from wadm.emulator import Emulator, RestLimits, wall_clock_ms

from .conftest import Connect, Http
from .helpers import TIMEOUT, emulator, eventually, ids

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

SETUP: dict[str, Any] = {"seed": 9, "bybit": ("spot", "linear"), "book_levels": 60}
"""Binance spot/USD-M and Bybit spot/linear BTCUSDT feeds."""


class MinuteClock:
    """An emulator clock that starts 1 s into a minute and moves forward when a test says so.

    Starting early in a minute keeps a test inside one weight window; `advance` ends a
    ban without waiting for it.
    """

    def __init__(self) -> None:
        now = wall_clock_ms()
        self.offset = (now // 60_000 + 1) * 60_000 + 1000 - now

    def __call__(self) -> int:
        return wall_clock_ms() + self.offset

    def advance(self, ms: int) -> None:
        """Move the clock ``ms`` milliseconds forward."""
        self.offset += ms


def _history(emu: Emulator, venue: str, market: str) -> int:
    """Trades the BTCUSDT feed of a market keeps for REST (generated whether or not anybody listens)."""
    history = emu.feeds[(venue, market, "BTCUSDT")].history
    assert history is not None
    return len(history)


async def test_binance_endpoints_shapes_and_weights(http: Http) -> None:
    async with emulator(rate=200, **SETUP, clock=MinuteClock()) as emu:
        api = http(emu)
        await until(
            lambda: _history(emu, "binance", "spot") >= 20 and _history(emu, "binance", "usdm") >= 1,
            TIMEOUT,
            "20 spot trades to page through",
        )
        spot = "/binance/spot/api/v3"
        usdm = "/binance/usdm/fapi/v1"
        resp = await api.get(f"{spot}/depth", params={"symbol": "BTCUSDT", "limit": 5})
        assert resp.status_code == 200 and resp.headers["X-MBX-USED-WEIGHT-1M"] == "5"
        body = resp.json()
        assert list(body) == ["lastUpdateId", "bids", "asks"] and len(body["bids"]) == 5
        assert float(body["bids"][0][0]) < float(body["asks"][0][0])
        used = 5
        for limit, weight in ((500, 25), (1000, 50), (5000, 250)):
            resp = await api.get(f"{spot}/depth", params={"symbol": "BTCUSDT", "limit": limit})
            used += weight
            assert resp.headers["X-MBX-USED-WEIGHT-1M"] == str(used)
        resp = await api.get(f"{usdm}/depth", params={"symbol": "btcusdt", "limit": 10})
        assert list(resp.json()) == ["lastUpdateId", "E", "T", "bids", "asks"]
        assert resp.headers["X-MBX-USED-WEIGHT-1M"] == "2"
        assert (await api.get(f"{usdm}/depth", params={"symbol": "BTCUSDT", "limit": 7})).json()["code"] == -1130
        resp = await api.get(f"{spot}/depth", params={"symbol": "NOPE"})
        assert resp.status_code == 400 and resp.json() == {"code": -1121, "msg": "Invalid symbol."}
        assert (await api.get(f"{spot}/depth")).json()["code"] == -1102

        resp = await api.get(f"{spot}/aggTrades", params={"symbol": "BTCUSDT", "limit": 20})
        aggs = resp.json()
        assert len(aggs) == 20 and list(aggs[0]) == ["a", "p", "q", "f", "l", "T", "m", "M"]
        assert ids(aggs, "a") == list(range(aggs[0]["a"], aggs[0]["a"] + 20))
        resp = await api.get(f"{usdm}/aggTrades", params={"symbol": "BTCUSDT"})
        assert list(resp.json()[0]) == ["a", "p", "q", "f", "l", "T", "m"]
        assert resp.headers["X-MBX-USED-WEIGHT-1M"] == str(2 + 2 + 20)  # the refused limit=7 counted too
        start = aggs[0]["T"]
        resp = await api.get(f"{spot}/aggTrades", params={"symbol": "BTCUSDT", "startTime": start, "limit": 3})
        assert [a["T"] >= start for a in resp.json()] == [True] * 3
        resp = await api.get(f"{spot}/aggTrades", params={"symbol": "BTCUSDT", "startTime": 0, "endTime": 3_600_001})
        assert resp.json()["code"] == -1127

        resp = await api.get(f"{spot}/klines", params={"symbol": "BTCUSDT", "interval": "1m"})
        rows = resp.json()
        assert len(rows) >= 1 and len(rows[-1]) == 12 and rows[-1][6] == rows[-1][0] + 59_999
        assert (await api.get(f"{spot}/klines", params={"symbol": "BTCUSDT", "interval": "7m"})).json()["code"] == -1120
        used_usdm = 24
        for limit, weight in ((99, 1), (100, 2), (500, 5), (1001, 10)):
            resp = await api.get(f"{usdm}/klines", params={"symbol": "BTCUSDT", "interval": "5m", "limit": limit})
            used_usdm += weight
            assert resp.headers["X-MBX-USED-WEIGHT-1M"] == str(used_usdm)

        info = (await api.get(f"{spot}/exchangeInfo")).json()
        assert info["rateLimits"][0] == {
            "rateLimitType": "REQUEST_WEIGHT",
            "interval": "MINUTE",
            "intervalNum": 1,
            "limit": 6000,
        }
        assert [(s["symbol"], s["status"]) for s in info["symbols"]] == [("BTCUSDT", "TRADING")]
        tick = next(f for f in info["symbols"][0]["filters"] if f["filterType"] == "PRICE_FILTER")["tickSize"]
        assert tick == "0.01000000"
        info = (await api.get(f"{usdm}/exchangeInfo")).json()
        assert info["rateLimits"][0]["limit"] == 2400 and info["symbols"][0]["contractType"] == "PERPETUAL"
        assert (await api.get(f"{spot}/time")).json()["serverTime"] > 0


async def test_bybit_endpoints(http: Http) -> None:
    async with emulator(rate=1500, **SETUP) as emu:
        api = http(emu)
        await until(
            lambda: _history(emu, "bybit", "linear") >= 500 and _history(emu, "bybit", "spot") >= 60,
            TIMEOUT,
            "a default page of recent trades on both categories",
        )
        resp = await api.get("/bybit/v5/market/orderbook", params={"category": "linear", "symbol": "BTCUSDT"})
        body = resp.json()
        assert list(body) == ["retCode", "retMsg", "result", "retExtInfo", "time"] and body["retMsg"] == "OK"
        result = body["result"]
        assert list(result) == ["s", "a", "b", "ts", "u", "seq", "cts"] and len(result["b"]) == 25
        spot_book = (
            await api.get("/bybit/v5/market/orderbook", params={"category": "spot", "symbol": "BTCUSDT"})
        ).json()["result"]
        assert len(spot_book["a"]) == 1
        bad = (await api.get("/bybit/v5/market/orderbook", params={"category": "linear", "symbol": "X"})).json()
        assert bad["retCode"] == 10001 and bad["result"] == {}

        for category, default, cap in (("spot", 60, 60), ("linear", 500, 1000)):
            resp = await api.get("/bybit/v5/market/recent-trade", params={"category": category, "symbol": "BTCUSDT"})
            trades = resp.json()["result"]["list"]
            assert len(trades) == default
            times = [int(t["time"]) for t in trades]
            assert times == sorted(times, reverse=True)  # newest first
            assert list(trades[0])[:6] == ["execId", "symbol", "price", "size", "side", "time"]
            too_many = await api.get(
                "/bybit/v5/market/recent-trade", params={"category": category, "symbol": "BTCUSDT", "limit": cap + 1}
            )
            assert too_many.json()["retCode"] == 10001

        resp = await api.get("/bybit/v5/market/kline", params={"symbol": "BTCUSDT", "interval": "1"})
        kline = resp.json()["result"]
        assert kline["category"] == "linear" and len(kline["list"][0]) == 7
        starts = [int(row[0]) for row in kline["list"]]
        assert starts == sorted(starts, reverse=True)
        info = (await api.get("/bybit/v5/market/instruments-info", params={"category": "spot"})).json()["result"]
        assert [i["symbol"] for i in info["list"]] == ["BTCUSDT"] and info["list"][0]["status"] == "Trading"
        linear = (await api.get("/bybit/v5/market/instruments-info", params={"category": "linear"})).json()
        assert linear["result"]["list"][0]["priceFilter"]["tickSize"] == "0.10"


async def test_weight_budget_429_then_418(http: Http) -> None:
    limits = RestLimits(spot_weight=20, ban_after=2, ban_seconds=0.5)
    clock = MinuteClock()
    async with emulator(rate=10, **SETUP, clock=clock, rest_limits=limits) as emu:
        api = http(emu)
        path = "/binance/spot/api/v3/depth"
        statuses = []
        for _ in range(6):
            resp = await api.get(path, params={"symbol": "BTCUSDT", "limit": 100})
            statuses.append(resp.status_code)
            if resp.status_code in (429, 418):
                assert int(resp.headers["Retry-After"]) >= 1
                assert resp.json()["code"] == -1003
        assert statuses == [200, 200, 200, 200, 429, 429]  # 5 each: the 5th request goes over 20
        resp = await api.get(path, params={"symbol": "BTCUSDT"})
        assert resp.status_code == 418 and "banned until" in resp.json()["msg"]
        assert (await api.get("/binance/usdm/fapi/v1/time")).status_code == 200  # its own budget
        info = (await api.get("/binance/spot/api/v3/exchangeInfo")).json()
        assert info["code"] == -1003
        clock.advance(int(limits.ban_seconds * 1000) + 1)
        assert (await api.get(path, params={"symbol": "BTCUSDT"})).status_code == 429  # ban over, budget still spent


async def test_rest_faults(http: Http) -> None:
    async with emulator(rate=300, **SETUP) as emu:
        api = http(emu)
        _, _, attached = emu.true_book("binance", "spot", "BTCUSDT")  # attach the book: the stale test needs a past
        await until(
            lambda: emu.true_book("binance", "spot", "BTCUSDT")[2] > attached + 25,
            TIMEOUT,
            "more than 25 book changes since the book was attached",
        )
        path = "/binance/spot/api/v3/depth"
        params = {"symbol": "BTCUSDT", "limit": 1000}
        resp = await api.get("/control/rest_status", params={"status": "429", "count": "2", "retry_after": "7"})
        assert resp.json() == {"affected": 2}
        for _ in range(2):
            resp = await api.get("/binance/spot/api/v3/time")
            assert resp.status_code == 429 and resp.headers["Retry-After"] == "7"
        assert emu.force_rest_status(418, venue="binance", market="usdm") == 1
        assert (await api.get("/binance/usdm/fapi/v1/ping")).status_code == 418
        assert (await api.get("/binance/usdm/fapi/v1/ping")).status_code == 200

        assert (await api.get("/control/fail_snapshots", params={"count": "2"})).json() == {"affected": 2}
        assert (await api.get(path, params=params)).status_code == 503
        resp = await api.get("/bybit/v5/market/orderbook", params={"category": "spot", "symbol": "BTCUSDT"})
        assert resp.status_code == 503 and resp.json()["retCode"] == 10016
        assert (await api.get(path, params=params)).status_code == 200

        emu.pause(market="spot", venue="binance")  # the book stands still from now on
        _, _, true_id = emu.true_book("binance", "spot", "BTCUSDT")
        resp = await api.get("/control/stale_snapshots", params={"updates": "25", "market": "spot"})
        assert resp.json() == {"affected": 1}
        stale = (await api.get(path, params=params)).json()
        fresh = (await api.get(path, params=params)).json()
        assert fresh["lastUpdateId"] == true_id and stale["lastUpdateId"] == true_id - 25
        assert (stale["bids"], stale["asks"]) != (fresh["bids"], fresh["asks"])

        # The slow answer is held back while the server goes on answering: a normal request
        # sent after the slow one was taken (its fault consumed) is answered first. The delay
        # only has to outlast one loopback round trip; the test never measures it.
        assert emu.slow_snapshots(2.0, symbol="BTCUSDT", venue="binance") == 1
        slow = asyncio.create_task(api.get(path, params=params))
        await until(
            lambda: not any(f.kind == "slow" for f in emu.rest_faults.pending),
            TIMEOUT,
            "the server to take the slow request",
        )
        normal = await api.get(path, params=params)  # the fault was for one request: this one is not held
        assert not slow.done()
        assert normal.status_code == 200 and normal.json() == fresh
        held = await asyncio.wait_for(slow, TIMEOUT)
        assert held.status_code == 200 and held.json() == fresh


async def test_agg_trades_backfill_what_a_drop_missed(connect: Connect, http: Http) -> None:
    async with emulator(rate=400, **SETUP) as emu:
        url = emu.urls["binance"]["spot"] + "/stream?streams=btcusdt@aggTrade"
        client = await connect(url)
        await eventually(lambda: len(client.data()) >= 30)
        assert emu.drop(market="spot") == 1
        await asyncio.wait_for(client.disconnected.wait(), 5)
        # Nobody listens: the feed goes on (ids advance) but sends nothing; the delivered log
        # below shows none of these trades went out.
        last = ids(client.data(), "a")[-1]
        feed = emu.feeds[("binance", "spot", "BTCUSDT")]
        await until(lambda: feed.next_agg_id > last + 51, TIMEOUT, "more than 50 trades while nobody listens")
        again = await connect(url)
        await eventually(lambda: len(again.data()) >= 30)
        before, after = ids(client.data(), "a"), ids(again.data(), "a")
        missed = list(range(before[-1] + 1, after[0]))
        assert len(missed) > 50
        api = http(emu)
        rows = (
            await api.get(
                "/binance/spot/api/v3/aggTrades", params={"symbol": "BTCUSDT", "fromId": before[-1] + 1, "limit": 1000}
            )
        ).json()
        got = ids(rows, "a")
        assert got[: len(missed)] == missed
        assert got == list(range(got[0], got[0] + len(got)))
        by_id = {a["a"]: a for a in again.data()}
        assert all(rows[i] == {k: v for k, v in by_id[a].items() if k not in ("e", "E", "s")}
                   for i, a in enumerate(got) if a in by_id)  # fmt: skip
        delivered = set(emu.delivered("btcusdt@aggTrade", "spot"))
        assert not delivered & set(missed)
        repeat = (
            await api.get(
                "/binance/spot/api/v3/aggTrades", params={"symbol": "BTCUSDT", "fromId": missed[0], "limit": 10}
            )
        ).json()
        assert repeat == rows[:10]  # regenerated trades are stable
