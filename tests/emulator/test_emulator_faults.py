"""Fault injection, limits and keepalive rules, over real sockets."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson
import pytest
from picows import WSCloseCode

from tests.helpers import until
from wadm.emulator import SPOT_POLICY, USDM_POLICY

from .conftest import Connect, Http
from .helpers import TIMEOUT, caught_up, emulator, eventually, ids

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

TRADES = "/stream?streams=btcusdt@trade"
SETUP: dict[str, Any] = {"seed": 11}
"""Binance spot/USD-M BTCUSDT feeds."""


async def test_drop_abrupt_and_graceful(connect: Connect, http: Http) -> None:
    async with emulator(rate=300, **SETUP) as emu:
        spot = emu.urls["binance"]["spot"]
        abrupt = await connect(spot + TRADES)
        other = await connect(emu.urls["binance"]["usdm"] + TRADES)
        resp = await http(emu).get("/control/drop", params={"market": "spot"})
        assert resp.json() == {"affected": 1}
        await asyncio.wait_for(abrupt.disconnected.wait(), 5)
        assert abrupt.close_code is None  # no close handshake
        assert not other.disconnected.is_set()

        graceful = await connect(spot + TRADES)
        resp = await http(emu).get("/control/drop", params={"graceful": "1", "stream": "btcusdt@trade"})
        assert resp.json() == {"affected": 2}
        await asyncio.wait_for(graceful.disconnected.wait(), 5)
        assert graceful.close_code == WSCloseCode.GOING_AWAY


async def test_silence_withholds_data_but_keeps_the_connection(connect: Connect, http: Http) -> None:
    policy = replace(SPOT_POLICY, ping_interval=0.05, pong_timeout=1.0, max_messages_per_s=50)
    async with emulator(rate=300, **SETUP, spot_policy=policy) as emu:
        spot = emu.urls["binance"]["spot"]
        steady = await connect(spot + TRADES)
        quiet = await connect(spot + "/stream?streams=btcusdt@trade/btcusdt@aggTrade")
        await eventually(lambda: len(quiet.data("btcusdt@trade")) >= 10)
        resp = await http(emu).get("/control/silence", params={"seconds": "0.8", "stream": "btcusdt@aggTrade"})
        assert resp.json() == {"affected": 1}
        await caught_up(quiet)  # data sent before the silence has arrived (the reply is not withheld)
        received = len(quiet.texts)
        last_quiet = ids(quiet.data("btcusdt@trade"), "t")[-1]
        pings_before = len(quiet.pings)

        def had_the_chance() -> bool:
            """10 trades that quiet would get went to steady, and a ping reached quiet."""
            missed = [t for t in ids(steady.data(), "t") if t > last_quiet]
            return len(missed) >= 10 and len(quiet.pings) > pings_before

        await until(had_the_chance, TIMEOUT, "10 trades on the other connection and a ping while silenced")
        assert len(quiet.texts) == received  # nothing while silenced, though trades went out and pings still flow
        await eventually(lambda: len(quiet.texts) > received + 10)  # resumes
        quiet_ids = ids(quiet.data("btcusdt@trade"), "t")
        steady_ids = ids(steady.data(), "t")
        gap = set(range(quiet_ids[0], quiet_ids[-1] + 1)) - set(quiet_ids)
        assert len(gap) >= 10 and min(gap) == last_quiet + 1  # what steady got meanwhile, at least
        assert gap == set(range(min(gap), max(gap) + 1))  # one window
        assert gap <= set(steady_ids)  # the other connection got them ...
        assert gap <= set(emu.delivered("btcusdt@trade", "spot"))  # ... so they count

        # Silence everybody: those trades reach nobody and are not "delivered".
        delivered = emu.delivered("btcusdt@trade", "spot")
        assert delivered == list(range(delivered[0], delivered[-1] + 1))  # so far every trade reached somebody
        feed = emu.feeds[("binance", "spot", "BTCUSDT")]
        assert emu.silence(0.5, market="spot") == 2
        unheard = feed.next_trade_id  # the first trade generated while nobody may receive it
        await eventually(lambda: max(ids(steady.data(), "t")) > unheard)  # the silence is over
        emu.pause(market="spot")

        def received_any() -> set[int]:
            return set(ids(steady.data(), "t")) | set(ids(quiet.data("btcusdt@trade"), "t"))

        delivered = emu.delivered("btcusdt@trade", "spot")
        await eventually(lambda: received_any() == set(delivered))
        assert delivered == sorted(delivered)
        assert unheard not in delivered and unheard < delivered[-1]


@pytest.mark.parametrize("market", ["spot", "usdm"])
async def test_malformed_frames(connect: Connect, http: Http, market: str) -> None:
    async with emulator(rate=100, **SETUP) as emu:
        client = await connect(emu.urls["binance"][market] + TRADES)
        await eventually(lambda: len(client.data()) >= 3)
        api = http(emu)
        for kind in ("invalid_json", "unknown_event", "zero_price", "missing_field"):
            resp = await api.get(
                "/control/malformed",
                params={"kind": kind, "count": "2", "market": market},
            )
            assert resp.json() == {"affected": 1, "count": 2}
        assert (await api.get("/control/malformed", params={"kind": "x"})).status_code == 400
        await eventually(lambda: len([m for m in client.data() if m.get("p", "1").strip("0.") == ""]) == 2)
        invalid = 0
        for text in client.texts:
            try:
                orjson.loads(text)
            except orjson.JSONDecodeError:
                invalid += 1
        assert invalid == 2
        assert len(client.data(event="mysteryEvent")) == 2
        trades = client.data(event="trade")
        missing = [t for t in trades if "p" not in t]
        assert len(missing) == 2
        zero = [t for t in trades if t.get("p", "1").strip("0.") == ""]
        zero_ids = {t["t"] for t in zero}
        assert len(zero_ids) == 2
        emu.pause(market=market)
        real_ids = {t["t"] for t in trades if "p" in t and t not in zero}
        delivered = set(emu.delivered("btcusdt@trade", market))
        assert not zero_ids & delivered  # zero-price ids are never "delivered"
        assert not zero_ids & real_ids  # and no real trade reuses them
        assert min(zero_ids) > min(real_ids)


async def test_server_shutdown_then_close_after_grace(connect: Connect, http: Http) -> None:
    async with emulator(rate=300, **SETUP, shutdown_grace=5.0) as emu:
        spot = emu.urls["binance"]["spot"]
        combined = await connect(spot + TRADES)
        raw = await connect(spot + "/ws/btcusdt@trade")
        resp = await http(emu).get("/control/shutdown", params={"grace": "1.0"})
        assert resp.json()["affected"] == 2
        await eventually(lambda: any(m.get("stream") == "!serverShutdown" for m in combined.messages()))
        event = next(m for m in combined.messages() if m.get("stream") == "!serverShutdown")
        assert list(event["data"]) == ["e", "E"] and event["data"]["e"] == "serverShutdown"
        await eventually(lambda: any(m.get("e") == "serverShutdown" for m in raw.messages()))
        # Make-before-break: a replacement connection overlaps with the old one.
        replacement = await connect(spot + TRADES)
        await eventually(lambda: len(replacement.data()) >= 5)
        await asyncio.wait_for(combined.disconnected.wait(), 5)
        await asyncio.wait_for(raw.disconnected.wait(), 5)
        assert combined.close_code == WSCloseCode.GOING_AWAY
        old_ids = ids(combined.data("btcusdt@trade"), "t")
        overlap = set(old_ids) & set(ids(replacement.data(), "t"))
        assert overlap
        assert not replacement.disconnected.is_set()


async def test_rate_limit_closes_with_1008(connect: Connect) -> None:
    async with emulator(rate=300, **SETUP) as emu:
        spot = emu.urls["binance"]["spot"] + "/ws"
        within = await connect(spot)
        for i in range(5):
            within.send({"method": "LIST_SUBSCRIPTIONS", "id": i})
        over = await connect(spot)
        for i in range(6):
            over.send({"method": "LIST_SUBSCRIPTIONS", "id": i})
        await asyncio.wait_for(over.disconnected.wait(), 5)
        assert over.close_code == WSCloseCode.POLICY_VIOLATION
        assert over.close_reason == "Too many requests"
        assert len(over.replies()) == 5
        await eventually(lambda: len(within.replies()) == 5)
        assert not within.disconnected.is_set()

        usdm = emu.urls["binance"]["usdm"] + "/ws"
        within = await connect(usdm)
        over = await connect(usdm)
        for client in (within, over):
            assert client.transport is not None
            client.transport.send_ping(b"x")  # pings count too
            client.transport.send_ping(b"y")
            for i in range(8):
                client.send({"method": "LIST_SUBSCRIPTIONS", "id": i})
        over.send({"method": "LIST_SUBSCRIPTIONS", "id": 99})
        await asyncio.wait_for(over.disconnected.wait(), 5)
        assert over.close_code == WSCloseCode.POLICY_VIOLATION
        await eventually(lambda: len(within.replies()) == 8)
        assert not within.disconnected.is_set()


async def test_server_pings_and_pong_timeout(connect: Connect) -> None:
    # Pongs count against the 5 messages/s limit: ping well below 5 times a second.
    policy = replace(SPOT_POLICY, ping_interval=0.3, pong_timeout=0.7)
    async with emulator(rate=300, **SETUP, spot_policy=policy) as emu:
        spot = emu.urls["binance"]["spot"]
        good = await connect(spot + TRADES)
        silent = await connect(spot + TRADES, auto_pong=False)
        wrong = await connect(spot + TRADES, pong_payload=b"unsolicited")
        await asyncio.wait_for(silent.disconnected.wait(), 5)
        await asyncio.wait_for(wrong.disconnected.wait(), 5)
        assert silent.close_code == WSCloseCode.POLICY_VIOLATION
        assert silent.close_reason == "Pong timeout"
        assert wrong.close_code == WSCloseCode.POLICY_VIOLATION
        assert len(silent.pings) >= 2
        await eventually(lambda: len(good.pings) >= 4)
        assert not good.disconnected.is_set()


async def test_max_lifetime_closes_the_connection(connect: Connect) -> None:
    policy = replace(USDM_POLICY, max_lifetime=0.5)
    async with emulator(rate=300, **SETUP, usdm_policy=policy) as emu:
        client = await connect(emu.urls["binance"]["usdm"] + TRADES)
        await asyncio.wait_for(client.disconnected.wait(), 5)
        assert client.close_code == WSCloseCode.GOING_AWAY
        assert client.data()


async def test_rate_pause_resume_and_stats(connect: Connect, http: Http) -> None:
    async with emulator(rate=50, **SETUP) as emu:
        api = http(emu)
        client = await connect(emu.urls["binance"]["spot"] + TRADES)
        await eventually(lambda: len(client.data()) >= 3)
        resp = await api.get("/control/rate", params={"market": "spot", "symbol": "btcusdt", "rate": "0"})
        assert resp.json() == {"affected": 1, "rate": 0.0}
        await caught_up(client)  # trades sent before the rate change have arrived
        count = len(client.texts)
        spot, usdm = emu.feeds[("binance", "spot", "BTCUSDT")], emu.feeds[("binance", "usdm", "BTCUSDT")]
        spot_generated, usdm_generated = spot.generated, usdm.generated
        await until(lambda: usdm.generated >= usdm_generated + 10, TIMEOUT, "10 trades of the other feed")
        assert spot.generated == spot_generated and len(client.texts) == count  # rate 0: nothing meanwhile
        await api.get(
            "/control/rate",
            params={"market": "spot", "symbol": "BTCUSDT", "rate": "400"},
        )
        await eventually(lambda: len(client.texts) >= count + 20)
        assert (await api.get("/control/pause")).json() == {"affected": 2}
        assert (await api.get("/control/resume", params={"symbol": "BTCUSDT"})).json() == {"affected": 2}
        # A new symbol gets a feed on demand.
        resp = await api.get(
            "/control/rate",
            params={"market": "spot", "symbol": "ETHUSDT", "rate": "20"},
        )
        assert resp.json()["affected"] == 1
        eth = await connect(emu.urls["binance"]["spot"] + "/ws/ethusdt@aggTrade")
        await eventually(lambda: len(eth.data()) >= 2)
        assert eth.data()[0]["s"] == "ETHUSDT"
        seen = len(client.data())  # data frames (the caught_up reply is a text too)
        stats = (await api.get("/control/stats")).json()
        conns = {c["path"]: c for c in stats["connections"]}
        assert conns["/binance/spot" + TRADES]["streams"] == ["btcusdt@trade"]
        assert 0 < conns["/binance/spot" + TRADES]["age"] <= stats["uptime"]
        streams = {(s["market"], s["stream"]): s for s in stats["streams"]}
        trade_stats = streams[("spot", "btcusdt@trade")]
        assert trade_stats["frames_sent"] >= seen and trade_stats["subscribers"] == 1
        assert trade_stats["frames_published"] == trade_stats["frames_sent"]  # one subscriber got every frame
        assert {f["symbol"] for f in stats["feeds"]} == {"BTCUSDT", "ETHUSDT"}
        assert (await api.get("/control/rate", params={"rate": "x"})).status_code == 400
