"""Stream routing, payload shapes and control messages, over real sockets."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import orjson
import pytest

from wadm.emulator import SPOT_POLICY

from .conftest import Connect, Http
from .helpers import emulator, eventually, ids

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

SPOT_TRADE_KEYS = ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
SPOT_AGG_KEYS = ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"]
USDM_TRADE_KEYS = ["e", "E", "T", "s", "t", "p", "q", "X", "m"]
USDM_AGG_KEYS = ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m"]
SETUP: dict[str, Any] = {"seed": 7}
"""Binance spot/USD-M BTCUSDT feeds."""


def _contiguous(values: list[int]) -> bool:
    return values == list(range(values[0], values[0] + len(values)))


async def test_spot_combined_stream_shapes(connect: Connect) -> None:
    async with emulator(rate=200, **SETUP) as emu:
        url = emu.urls["binance"]["spot"]
        client = await connect(f"{url}/stream?streams=btcusdt@trade/btcusdt@aggTrade")
        await eventually(lambda: len(client.data("btcusdt@trade")) >= 5 and len(client.data("btcusdt@aggTrade")) >= 5)
        wrapped = client.messages()
        assert {m["stream"] for m in wrapped} == {"btcusdt@trade", "btcusdt@aggTrade"}
        assert all(list(m) == ["stream", "data"] for m in wrapped)
        trades = client.data("btcusdt@trade")
        aggs = client.data("btcusdt@aggTrade")
        for t in trades:
            assert list(t) == SPOT_TRADE_KEYS
            assert t["e"] == "trade" and t["s"] == "BTCUSDT" and t["M"] is True
            assert re.fullmatch(r"\d+\.\d{8}", t["p"]) and re.fullmatch(r"\d+\.\d{8}", t["q"])
            assert isinstance(t["m"], bool) and t["E"] == t["T"]
        for a in aggs:
            assert list(a) == SPOT_AGG_KEYS
            assert a["f"] <= a["l"]
        assert _contiguous(ids(trades, "t"))
        assert _contiguous(ids(aggs, "a"))


async def test_usdm_raw_streams_on_their_routes(connect: Connect) -> None:
    async with emulator(rate=200, **SETUP) as emu:
        url = emu.urls["binance"]["usdm"]
        public = await connect(f"{url}/public/ws/btcusdt@trade")
        market = await connect(f"{url}/market/ws/btcusdt@aggTrade")
        await eventually(lambda: len(public.texts) >= 5 and len(market.texts) >= 5)
        for t in public.messages():
            assert list(t) == USDM_TRADE_KEYS
            assert t["X"] == "MARKET"
            assert re.fullmatch(r"\d+\.\d{2}", t["p"]) and re.fullmatch(r"\d+\.\d{3}", t["q"])
        for a in market.messages():
            assert list(a) == USDM_AGG_KEYS
        assert _contiguous(ids(public.messages(), "t"))


async def test_subscribe_ack_list_and_errors(connect: Connect) -> None:
    policy = replace(SPOT_POLICY, max_messages_per_s=100)
    async with emulator(rate=200, **SETUP, spot_policy=policy) as emu:
        client = await connect(emu.urls["binance"]["spot"] + "/ws")
        client.send({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1})
        client.send({"method": "LIST_SUBSCRIPTIONS", "id": "list1"})
        client.send({"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 2})
        client.send({"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 3})
        client.send({"method": "LIST_SUBSCRIPTIONS", "id": 4})
        client.send(b'{"method": "SUBSCRIBE", "params": [')
        client.send({"method": "FROB", "id": 5})
        client.send({"params": [], "id": 6})
        client.send({"method": "SUBSCRIBE", "params": "btcusdt@trade", "id": 7})
        client.send({"method": "GET_PROPERTY", "params": ["combined"], "id": 8})
        await eventually(lambda: len(client.replies()) >= 10)
        replies = client.replies()
        assert replies[0] == {"result": None, "id": 1}
        assert replies[1] == {"result": ["btcusdt@trade"], "id": "list1"}
        assert replies[2] == {"result": None, "id": 2}
        assert replies[3] == {"result": None, "id": 3}
        assert replies[4] == {"result": ["btcusdt@aggTrade"], "id": 4}
        assert replies[5]["code"] == 3 and replies[5]["msg"].startswith("Invalid JSON: ")
        for err in replies[6:9]:
            assert err["code"] == 2 and err["msg"].startswith("Invalid request: ")
        assert replies[9] == {"result": False, "id": 8}
        # Raw connection: bare payloads; after SET_PROPERTY combined they are wrapped.
        await eventually(lambda: len(client.data(event="aggTrade")) >= 2)
        assert all("stream" not in m for m in client.messages() if "e" in m)
        client.send({"method": "SET_PROPERTY", "params": ["combined", True], "id": 9})
        await eventually(lambda: {"result": None, "id": 9} in client.replies())
        before = len(client.texts)
        await eventually(lambda: len(client.texts) >= before + 2)
        assert orjson.loads(client.texts[-1])["stream"] == "btcusdt@aggTrade"


async def test_usdm_wrong_route_acks_but_stays_silent(connect: Connect) -> None:
    async with emulator(rate=300, **SETUP) as emu:
        url = emu.urls["binance"]["usdm"]
        wrong = await connect(f"{url}/market/stream?streams=btcusdt@trade")
        routeless = await connect(f"{url}/stream?streams=btcusdt@aggTrade")
        right = await connect(f"{url}/public/stream?streams=btcusdt@trade")
        wrong.send({"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 1})
        wrong.send({"method": "LIST_SUBSCRIPTIONS", "id": 2})
        await eventually(lambda: len(right.data()) >= 30 and len(wrong.replies()) >= 2)
        assert wrong.replies() == [
            {"result": None, "id": 1},
            {"result": ["btcusdt@trade", "btcusdt@depth@100ms"], "id": 2},
        ]
        assert wrong.data() == [] and routeless.data() == []
        assert not wrong.disconnected.is_set() and not routeless.disconnected.is_set()
        assert emu.subscribers("btcusdt@trade", "usdm") == 1


async def test_two_connections_receive_identical_trades(connect: Connect) -> None:
    async with emulator(rate=300, **SETUP) as emu:
        url = emu.urls["binance"]["spot"] + "/stream?streams=btcusdt@trade"
        first = await connect(url)
        second = await connect(url)
        await eventually(lambda: len(first.texts) >= 40 and len(second.texts) >= 40)
        by_id_1 = {m["t"]: m for m in first.data()}
        by_id_2 = {m["t"]: m for m in second.data()}
        common = set(by_id_1) & set(by_id_2)
        assert len(common) >= 20
        for tid in common:
            assert by_id_1[tid] == by_id_2[tid]


async def test_delivered_log_matches_what_the_client_received(connect: Connect, http: Http) -> None:
    async with emulator(rate=500, **SETUP) as emu:
        url = emu.urls["binance"]["spot"] + "/stream?streams=btcusdt@aggTrade"
        client = await connect(url)
        await eventually(lambda: len(client.texts) >= 50)
        assert emu.pause(market="spot") == 1
        sent = emu.hub.find_channel("binance", "spot", "btcusdt@aggTrade")
        assert sent is not None
        await eventually(lambda: len(client.texts) == sent.frames_sent)
        received = ids(client.data(), "a")
        resp = await http(emu).get(
            "/control/delivered",
            params={"stream": "btcusdt@aggTrade", "market": "spot"},
        )
        assert resp.status_code == 200
        body = resp.json()
        assert body["stream"] == "btcusdt@aggTrade" and body["market"] == "spot"
        assert body["ids"] == received == emu.delivered("btcusdt@aggTrade", "spot")
        # Nothing subscribed to @trade: its trades were generated but not delivered.
        assert emu.delivered("btcusdt@trade", "spot") == []


async def test_unknown_paths_and_streams(connect: Connect, http: Http) -> None:
    async with emulator(rate=200, **SETUP) as emu:
        api = http(emu)
        assert (await api.get("/nope")).status_code == 404
        assert (await api.get("/binance/coinm/ws/x")).status_code == 404
        assert (await api.get("/control/bogus")).status_code == 404
        assert (await api.get("/control/health")).json()["ok"] is True
        client = await connect(emu.urls["binance"]["spot"] + "/ws/btcusdt@bookTicker")
        client.send({"method": "LIST_SUBSCRIPTIONS", "id": 1})
        await eventually(lambda: len(client.replies()) == 1)
        assert client.replies()[0]["result"] == ["btcusdt@bookTicker"]
        assert client.data() == []
