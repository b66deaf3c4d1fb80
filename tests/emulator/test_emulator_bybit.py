"""Bybit v5 public WebSocket: acks, trades, order book, klines and faults over real sockets."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from picows import WSCloseCode

from tests.helpers import until
from wadm.emulator import BYBIT_POLICY, Emulator, StreamTiming, wall_clock_ms

from .conftest import Connect, Http
from .helpers import TIMEOUT, apply_levels, caught_up, emulator, eventually, sorted_side

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TIMING = StreamTiming(
    bybit_kline=0.2,
    bybit_depth=((1, 0.02), (50, 0.03), (200, 0.05), (1000, 0.1)),
    bybit_depth1_repush=0.3,
)
SETUP: dict[str, Any] = {
    "seed": 5,
    "binance": (),
    "bybit": ("spot", "linear"),
    "symbols": ("BTCUSDT", "ETHUSDT"),
    "book_levels": 80,
    "timing": TIMING,
}
"""Bybit spot/linear feeds of two symbols, with fast book and kline pushes."""


async def test_subscribe_acks_ping_and_errors(connect: Connect) -> None:
    async with emulator(rate=20, **SETUP) as emu:
        spot = await connect(emu.urls["bybit"]["spot"])
        linear = await connect(emu.urls["bybit"]["linear"])
        for client in (spot, linear):
            client.send({"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
            client.send({"req_id": "r1", "op": "subscribe", "args": ["kline.1.BTCUSDT"]})
            client.send({"req_id": "p1", "op": "ping"})
            client.send({"op": "ping"})
            client.send({"req_id": "bad", "op": "subscribe", "args": ["orderbook.500.BTCUSDT", "orderbook.50.BTCUSDT"]})
            client.send({"op": "subscribe", "args": ["publicTrade.NOTASYMBOL"]})
            client.send({"op": "unsubscribe", "args": ["kline.1.BTCUSDT"]})
        await eventually(lambda: len(spot.acks()) == 7 and len(linear.acks()) == 7)
        s, lin = spot.acks(), linear.acks()
        conn_id = s[0]["conn_id"]
        assert re.fullmatch(r"[0-9a-v]{20}-[0-9a-v]{5}", conn_id)
        assert s[0] == {"success": True, "ret_msg": "subscribe", "conn_id": conn_id, "op": "subscribe"}
        assert list(s[1]) == ["success", "ret_msg", "conn_id", "req_id", "op"] and s[1]["req_id"] == "r1"
        assert s[2] == {"success": True, "ret_msg": "pong", "conn_id": conn_id, "op": "ping"}
        assert s[3] == {"success": True, "ret_msg": "pong", "conn_id": conn_id, "op": "ping"}
        assert s[4]["success"] is False
        assert s[4]["ret_msg"] == "error:handler not found,topic:orderbook.500.BTCUSDT"
        assert s[5]["ret_msg"] == "error:handler not found,topic:publicTrade.NOTASYMBOL"
        assert s[6]["success"] is True and s[6]["op"] == "unsubscribe"
        lid = lin[0]["conn_id"]
        assert lin[0] == {"success": True, "ret_msg": "", "conn_id": lid, "req_id": "", "op": "subscribe"}
        assert lin[1]["req_id"] == "r1"
        assert lin[2] == {"success": True, "ret_msg": "pong", "conn_id": lid, "req_id": "p1", "op": "ping"}
        assert lin[3] == {"success": True, "ret_msg": "pong", "conn_id": lid, "req_id": "", "op": "ping"}
        # The good topic of the failed request still subscribed (the snapshot arrives).
        for client in (spot, linear):
            await eventually(lambda c=client: len(c.topic("orderbook.50.BTCUSDT")) >= 1)
            conn = next(c for c in emu.hub.connections.values() if c.market == client_market(emu, client))
            assert list(conn.subscriptions) == ["publicTrade.BTCUSDT", "orderbook.50.BTCUSDT"]


def client_market(emu: Emulator, client: Any) -> str:
    return "spot" if client.acks()[0]["ret_msg"] == "subscribe" else "linear"


async def test_spot_args_limit(connect: Connect) -> None:
    async with emulator(rate=20, **SETUP) as emu:
        client = await connect(emu.urls["bybit"]["spot"])
        topics = [f"kline.{i}.BTCUSDT" for i in (1, 3, 5, 15, 30, 60, 120, 240, 360, 720, "D")]
        client.send({"req_id": "x", "op": "subscribe", "args": topics})
        client.send({"op": "subscribe", "args": topics[:10]})
        await eventually(lambda: len(client.acks()) == 2)
        first, second = client.acks()
        assert first == {
            "success": False,
            "ret_msg": "args size >10",
            "conn_id": first["conn_id"],
            "req_id": "x",
            "op": "subscribe",
        }
        assert second["success"] is True
        linear = await connect(emu.urls["bybit"]["linear"])
        linear.send({"op": "subscribe", "args": topics})  # no args limit on linear
        await eventually(lambda: len(linear.acks()) == 1)
        assert linear.acks()[0]["success"] is True


async def test_trades_arrays_ids_and_delivered_log(connect: Connect, http: Http) -> None:
    async with emulator(rate=400, **SETUP) as emu:
        spot = await connect(emu.urls["bybit"]["spot"])
        linear = await connect(emu.urls["bybit"]["linear"])
        for client in (spot, linear):
            client.send({"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
        await eventually(lambda: sum(len(f["data"]) for f in linear.topic("publicTrade.BTCUSDT")) >= 100)
        await eventually(lambda: sum(len(f["data"]) for f in spot.topic("publicTrade.BTCUSDT")) >= 100)
        emu.pause(venue="bybit")
        for client in (spot, linear):
            await caught_up(client, "bybit")  # every trade frame sent before the pause has arrived
        frames = linear.topic("publicTrade.BTCUSDT")
        assert any(len(f["data"]) > 1 for f in frames)  # a batch per tick
        for frame in frames:
            assert list(frame) == ["topic", "type", "ts", "data"] and frame["type"] == "snapshot"
            for t in frame["data"]:
                assert list(t) == ["T", "s", "S", "v", "p", "L", "i", "BT", "RPI", "seq"]
                assert UUID.fullmatch(t["i"]) and t["S"] in ("Buy", "Sell")
                assert t["L"] in ("PlusTick", "MinusTick", "ZeroPlusTick", "ZeroMinusTick")
                assert re.fullmatch(r"\d+\.\d{2}", t["p"]) and re.fullmatch(r"\d+\.\d{3}", t["v"])
        spot_frames = spot.topic("publicTrade.BTCUSDT")
        assert list(spot_frames[0]) == ["topic", "ts", "type", "data"]
        spot_trades = [t for f in spot_frames for t in f["data"]]
        assert all("L" not in t and t["i"].isdigit() for t in spot_trades)
        assert [int(t["i"]) for t in spot_trades] == sorted(int(t["i"]) for t in spot_trades)
        linear_ids = [t["i"] for f in frames for t in f["data"]]
        assert len(set(linear_ids)) == len(linear_ids)
        assert emu.delivered("publicTrade.BTCUSDT", market="linear", venue="bybit") == linear_ids
        resp = await http(emu).get(
            "/control/delivered", params={"venue": "bybit", "market": "spot", "stream": "publicTrade.BTCUSDT"}
        )
        assert resp.json()["ids"] == [t["i"] for t in spot_trades]


async def test_orderbook_snapshot_deltas_rebuild_the_true_book(connect: Connect) -> None:
    async with emulator(rate=300, **SETUP) as emu:
        client = await connect(emu.urls["bybit"]["linear"])
        client.send({"op": "subscribe", "args": ["orderbook.50.BTCUSDT", "orderbook.1.BTCUSDT"]})
        await eventually(lambda: len(client.topic("orderbook.50.BTCUSDT")) >= 20)
        emu.pause(venue="bybit", market="linear")
        # The book stands still now. Depth 1 is re-pushed while nothing changes, so a push with the
        # current cross sequence comes; depth 50 sends a delta only when its levels changed (the
        # last one may predate the last trades), so it is awaited by the book it rebuilds.
        model = emu.feeds[("bybit", "linear", "BTCUSDT")].model
        assert model is not None
        final_seq = model.cross_seq()
        await until(lambda: client.topic("orderbook.1.BTCUSDT")[-1]["data"]["seq"] == final_seq, TIMEOUT,
                    "an orderbook.1.BTCUSDT push of the paused book")
        true_bids, true_asks, _ = emu.true_book("bybit", "linear", "BTCUSDT", depth=50)

        def rebuilt() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
            bids: dict[str, str] = {}
            asks: dict[str, str] = {}
            for frame in client.topic("orderbook.50.BTCUSDT"):
                apply_levels(bids, frame["data"]["b"])
                apply_levels(asks, frame["data"]["a"])
            return sorted_side(bids, True), sorted_side(asks, False)

        await until(lambda: rebuilt() == (true_bids, true_asks), TIMEOUT, "the orderbook.50 deltas to rebuild the book")
        frames = client.topic("orderbook.50.BTCUSDT")
        assert frames[0]["type"] == "snapshot" and all(f["type"] == "delta" for f in frames[1:])
        assert list(frames[0]) == ["topic", "type", "ts", "data", "cts"]
        assert list(frames[0]["data"]) == ["s", "b", "a", "u", "seq"]
        assert all(f["data"]["seq"] <= final_seq for f in frames)
        us = [f["data"]["u"] for f in frames]
        assert us == list(range(us[0], us[0] + len(us)))  # +1 per delta
        top = client.topic("orderbook.1.BTCUSDT")
        assert all(f["type"] == "snapshot" and len(f["data"]["b"]) == 1 for f in top)
        assert top[-1]["data"]["b"] == [list(true_bids[0])]
        # Depth 1 is re-pushed with the same u while nothing changes.
        count, last_u = len(top), top[-1]["data"]["u"]
        await eventually(lambda: len(client.topic("orderbook.1.BTCUSDT")) >= count + 2, within=2)
        assert {f["data"]["u"] for f in client.topic("orderbook.1.BTCUSDT")[count:]} == {last_u}


async def test_kline_two_candles_at_the_minute_boundary(connect: Connect) -> None:
    now = wall_clock_ms()
    offset = (now // 60_000 + 1) * 60_000 - 700 - now  # emulated time: 0.7 s before a boundary
    async with emulator(rate=200, **SETUP, clock=lambda: wall_clock_ms() + offset) as emu:
        emu.pause()  # every trade of the bar reaches the client
        client = await connect(emu.urls["bybit"]["spot"])
        client.send({"op": "subscribe", "args": ["kline.1.BTCUSDT", "publicTrade.BTCUSDT"]})
        await eventually(lambda: len(client.acks()) == 1)
        emu.resume()

        def two() -> list[dict[str, Any]]:
            return [f for f in client.topic("kline.1.BTCUSDT") if len(f["data"]) == 2]

        await eventually(lambda: bool(two()), within=5)
        frame = two()[0]
        closed, opened = frame["data"]
        assert list(frame) == ["topic", "data", "ts", "type"]
        assert closed["confirm"] is True and opened["confirm"] is False
        assert opened["start"] == closed["end"] + 1 == closed["start"] + 60_000
        assert list(closed) == [
            "start", "end", "interval", "open", "close", "high", "low", "volume", "turnover", "confirm", "timestamp",
        ]  # fmt: skip
        singles = [f for f in client.topic("kline.1.BTCUSDT") if len(f["data"]) == 1]
        assert singles and all(f["data"][0]["confirm"] is False for f in singles)
        trades = [
            t
            for f in client.topic("publicTrade.BTCUSDT")
            for t in f["data"]
            if closed["start"] <= t["T"] <= closed["end"]
        ]
        assert trades
        prices = [Decimal(t["p"]) for t in trades]
        assert Decimal(closed["open"]) == prices[0] and Decimal(closed["close"]) == prices[-1]
        assert Decimal(closed["high"]) == max(prices) and Decimal(closed["low"]) == min(prices)
        assert Decimal(closed["volume"]) == sum(Decimal(t["v"]) for t in trades)


async def test_idle_timeout_closes_silent_connections(connect: Connect) -> None:
    idle = 0.5
    policy = replace(BYBIT_POLICY, idle_timeout=idle)
    async with emulator(rate=20, **SETUP, bybit_policy=policy) as emu:
        silent = await connect(emu.urls["bybit"]["linear"])
        pinging = await connect(emu.urls["bybit"]["linear"])
        pinging.send({"op": "ping"})
        await until(lambda: len(pinging.acks()) == 1, TIMEOUT, "the first pong")
        server_side = next(c for c in emu.hub.select(venue="bybit") if c.frames_received)

        async def ping_until_both_had_their_timeout() -> bool:
            """One ping and its pong; done once the silent connection is closed and the server
            has kept the pinging one open for twice the idle timeout."""
            sent = len(pinging.acks()) + 1
            pinging.send({"op": "ping"})
            await until(lambda: len(pinging.acks()) == sent, TIMEOUT, "the pong")
            held = time.monotonic() - server_side.connected_at
            return silent.disconnected.is_set() and held > 2 * idle

        # NOTE: `every` paces the pings (5 per idle timeout), it is not a wait for anything.
        await until(ping_until_both_had_their_timeout, TIMEOUT, "the silent connection to close", every=idle / 5)
        assert silent.close_code == WSCloseCode.GOING_AWAY and silent.close_reason == "Idle timeout"
        assert not pinging.disconnected.is_set() and not server_side.closing


async def test_book_faults_gap_crossed_restart(connect: Connect, http: Http) -> None:
    async with emulator(rate=300, **SETUP) as emu:
        client = await connect(emu.urls["bybit"]["linear"])
        client.send({"op": "subscribe", "args": ["orderbook.200.BTCUSDT"]})
        topic = "orderbook.200.BTCUSDT"
        await eventually(lambda: len(client.topic(topic)) >= 5)
        api = http(emu)
        assert (await api.get("/control/crossed", params={"stream": topic})).json() == {"affected": 1}
        seen = len(client.topic(topic))
        await eventually(lambda: len(client.topic(topic)) >= seen + 3)
        bids: dict[str, str] = {}
        asks: dict[str, str] = {}
        crossed = []
        for frame in client.topic(topic):
            apply_levels(bids, frame["data"]["b"])
            apply_levels(asks, frame["data"]["a"])
            crossed.append(max(map(Decimal, bids)) >= min(map(Decimal, asks)))
        assert crossed.count(True) == 1 and not crossed[-1]

        resp = await api.get("/control/gap", params={"venue": "bybit", "symbol": "btcusdt", "count": "3"})
        assert resp.json() == {"affected": 1}
        seen = len(client.topic(topic))
        await eventually(lambda: len(client.topic(topic)) >= seen + 3)
        us = [f["data"]["u"] for f in client.topic(topic)]
        jumps = [b - a for a, b in zip(us, us[1:], strict=False) if b != a + 1]
        assert jumps == [4]

        assert (await api.get("/control/restart_book", params={"market": "linear"})).json() == {"affected": 1}
        await eventually(lambda: any(f["data"]["u"] == 1 for f in client.topic(topic)))
        frames = client.topic(topic)
        restart = next(i for i, f in enumerate(frames) if f["data"]["u"] == 1)
        assert frames[restart]["type"] == "snapshot"
        await eventually(lambda: len(client.topic(topic)) > restart + 1)
        assert client.topic(topic)[restart + 1]["data"]["u"] == 2


async def test_subscription_failure_and_connection_faults(connect: Connect, http: Http) -> None:
    async with emulator(rate=200, **SETUP, shutdown_grace=0.3) as emu:
        api = http(emu)
        resp = await api.get("/control/fail_subscribe", params={"topic": "orderbook.50.ETHUSDT", "times": "1"})
        assert resp.json() == {"affected": 1}
        client = await connect(emu.urls["bybit"]["spot"])
        client.send({"op": "subscribe", "args": ["orderbook.50.ETHUSDT", "publicTrade.ETHUSDT"]})
        client.send({"op": "subscribe", "args": ["orderbook.50.ETHUSDT"]})
        await eventually(lambda: len(client.acks()) == 2)
        first, second = client.acks()
        assert first["ret_msg"] == "error:handler not found,topic:orderbook.50.ETHUSDT"
        assert second["success"] is True  # the failure was for one attempt
        await eventually(lambda: len(client.topic("publicTrade.ETHUSDT")) >= 3)

        # One stream goes quiet while the other keeps flowing on the same connection.
        resp = await api.get(
            "/control/silence_stream", params={"venue": "bybit", "stream": "publicTrade.ETHUSDT", "seconds": "1.0"}
        )
        assert resp.json() == {"affected": 1}
        await caught_up(client, "bybit")  # trade frames sent before the silence have arrived
        trades, books = len(client.topic("publicTrade.ETHUSDT")), len(client.topic("orderbook.50.ETHUSDT"))
        feed = emu.feeds[("bybit", "spot", "ETHUSDT")]
        generated = feed.generated
        await until(
            lambda: feed.generated >= generated + 5 and len(client.topic("orderbook.50.ETHUSDT")) > books + 3,
            TIMEOUT,
            "trades generated and book pushes sent while the trade topic is silenced",
        )
        assert len(client.topic("publicTrade.ETHUSDT")) == trades
        await eventually(lambda: len(client.topic("publicTrade.ETHUSDT")) > trades)

        resp = await api.get("/control/malformed", params={"venue": "bybit", "kind": "zero_price", "count": "1"})
        assert resp.json() == {"affected": 1, "count": 1}
        await eventually(lambda: any(t["p"] == "0" for f in client.topic("publicTrade.ETHUSDT") for t in f["data"]))
        assert (await api.get("/control/malformed", params={"venue": "bybit", "kind": "unknown_event"})).json()[
            "affected"
        ] == 1
        await eventually(lambda: bool(client.topic("mystery.ETHUSDT")))

        other = await connect(emu.urls["bybit"]["linear"])
        other.send({"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
        await eventually(lambda: len(other.topic("publicTrade.BTCUSDT")) >= 2)
        assert emu.silence(0.2, venue="bybit", market="linear") == 1
        assert (await api.get("/control/shutdown", params={"venue": "bybit", "market": "spot"})).json()["affected"] == 1
        await asyncio.wait_for(client.disconnected.wait(), 3)
        assert client.close_code == WSCloseCode.GOING_AWAY
        assert emu.drop(venue="bybit") == 1
        await asyncio.wait_for(other.disconnected.wait(), 3)
        assert other.close_code is None
