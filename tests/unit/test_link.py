"""WsLink against the in-process emulator over real loopback sockets.

The watchdog's decisions are driven by an injected clock that only the test moves, while real
frames flow: a step of the clock is followed by a wait for the link's own check at that time,
so every decision is taken on a known clock value and a known message count.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_asyncio

from tests.helpers import FakeClock, TcpProxy, until
from wadm.emulator import Emulator
from wadm.emulator.market import SyntheticSpec
from wadm.records import Market
from wadm.transport.ws import Backoff, WsLink
from wadm.venues import binance, bybit
from wadm.venues.base import (
    Ack,
    ConnectionPlan,
    Event,
    RecoverTrades,
    ServerShutdown,
    TradeStream,
    VenueErrorReply,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

BTC, ETH = "btcusdt@aggTrade", "ethusdt@aggTrade"
STALE = 0.4  # watchdog silence allowance (fake seconds); the link checks every STALE / 4 real seconds
STEP = 0.3  # one clock step: shorter than STALE, so a stream that moved at every step is never stale


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    # ETHUSDT has no feed: its stream is subscribed and stays silent until a test starts one.
    async with Emulator(synthetic=[SyntheticSpec(market="spot", symbol="BTCUSDT", rate=300)], seed=7) as e:
        yield e


class Harness:
    """One link on its own task, with everything it hands its owner recorded."""

    def __init__(self, plan: ConnectionPlan, clock: FakeClock | None = None, *, stale_after: float = STALE) -> None:
        self.plan = plan
        self.clock = clock or FakeClock()
        self.events: list[Event] = []
        self.connected = 0
        self.link = WsLink(
            plan,
            on_events=self.events.extend,
            on_connected=self._on_connected,
            stale_after=stale_after,
            rotate_after=1e9,
            backoff=Backoff(0.05, 0.3, random.Random(1)),
            clock=self.clock,
        )
        self.task: asyncio.Task[None] | None = None

    def _on_connected(self) -> None:
        self.connected += 1

    def stream(self, name: str) -> TradeStream:
        st = self.plan.protocol.streams[name]
        assert isinstance(st, TradeStream)
        return st

    async def __aenter__(self) -> Harness:
        self.task = asyncio.get_running_loop().create_task(self.link.run())
        await until(lambda: self.link.state.connected, 10, "the link to connect")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.link.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)

    async def step(self, flowing: Sequence[str] = ()) -> None:
        """Move the clock one step and wait for the link's check at the new time.

        Streams in ``flowing`` must have moved at that check (the wait lasts until they did).
        """
        now = self.clock.advance(STEP)
        link = self.link
        await until(lambda: link.checked_at == now and all(link.watch[s].progress_at == now for s in flowing),
                    10, f"a watchdog check at {now} with {list(flowing)} moving")


def _binance(emu: Emulator, *symbols: str, url: str | None = None) -> ConnectionPlan:
    return binance.plan_trade_connections(Market.SPOT, symbols, url or emu.urls["binance"]["spot"])[0]


async def _quiet(emu: Emulator, h: Harness, name: str) -> None:
    """Wait until every trade the emulator delivered on ``name`` has reached the protocol."""
    st = h.stream(name)
    await until(lambda: not emu.delivered(name, "spot") or st.last_id == emu.delivered(name, "spot")[-1], 10,
                f"the last {name} trades to arrive")


# ---- the watchdog ---------------------------------------------------------------------------


async def test_a_silent_stream_makes_the_link_reconnect(emu: Emulator) -> None:
    emu.set_rate(300, market="spot", symbol="ETHUSDT")
    async with Harness(_binance(emu, "BTCUSDT", "ETHUSDT")) as h:
        link = h.link
        await until(lambda: h.stream(ETH).messages > 0 and h.stream(BTC).messages > 0, 10, "both streams")
        for _ in range(8):  # 2.4 fake seconds, six times the allowance: streams that move are never stale
            await h.step(flowing=(BTC, ETH))
        assert link.state.stale_reconnects == 0 and link.state.reconnects == 0
        emu.pause(symbol="ETHUSDT")
        for _ in range(10):  # BTC moves at every step; only ETH can be the silent one
            await h.step(flowing=(BTC,))
            if link.state.stale_reconnects:
                break
        assert link.state.stale_reconnects == 1
        await until(lambda: link.state.connected and link.state.reconnects == 1, 10, "the new connection")
        assert h.connected == 2


@pytest.mark.parametrize("watched_again", ["flows_again", "pardoned"])
async def test_an_excused_stream_stays_silent_without_a_reconnect_until_it_is_watched_again(
    emu: Emulator, watched_again: str
) -> None:
    async with Harness(_binance(emu, "BTCUSDT", "ETHUSDT")) as h:
        link = h.link
        link.excuse(ETH, "ETHUSDT is BREAK on binance/spot")
        assert link.excused(ETH) == "ETHUSDT is BREAK on binance/spot" and link.last_message(ETH) is None
        for _ in range(10):  # 3 fake seconds without one ETH message
            await h.step(flowing=(BTC,))
        assert link.state.stale_reconnects == 0 and link.state.reconnects == 0
        assert link.excused(ETH) == "ETHUSDT is BREAK on binance/spot"
        assert link.excused(BTC) is None

        if watched_again == "flows_again":
            emu.set_rate(300, market="spot", symbol="ETHUSDT")
            await until(lambda: link.excused(ETH) is None, 10, "ETH to flow again")  # the excuse lapsed by itself
            await h.step(flowing=(BTC, ETH))
            emu.pause(symbol="ETHUSDT")
            await _quiet(emu, h, ETH)
        else:
            link.pardon(ETH)
            assert link.excused(ETH) is None
        for _ in range(10):
            await h.step(flowing=(BTC,))
            if link.state.stale_reconnects:
                break
        assert link.state.stale_reconnects == 1  # silent and watched: the connection is replaced


async def test_reading_last_message_moves_no_mark(emu: Emulator) -> None:
    async with Harness(_binance(emu, "BTCUSDT")) as h:
        link, st = h.link, h.stream(BTC)
        await h.step(flowing=(BTC,))
        checked = link.checked_at
        assert link.last_message(BTC) == checked  # moved at the check (or since: a tick's precision)
        await until(lambda: st.messages != link.watch[BTC].seen, 10, "messages after the last check")
        marks = (link.watch[BTC].seen, link.watch[BTC].progress_at, link.watch[BTC].last_message_at,
                 link.watch[BTC].excuse, link.checked_at)
        answers = {link.last_message(BTC) for _ in range(10_000)}  # no await: the link cannot run meanwhile
        assert answers == {link.checked_at}  # delivered since the last check: at most a tick ago
        assert (link.watch[BTC].seen, link.watch[BTC].progress_at, link.watch[BTC].last_message_at,
                link.watch[BTC].excuse, link.checked_at) == marks

        emu.pause()
        await _quiet(emu, h, BTC)
        await h.step(flowing=(BTC,))  # the last messages are seen at this check
        last = link.last_message(BTC)
        for _ in range(10):  # health reads it all the time: the silence is still noticed
            for _ in range(1000):
                assert link.last_message(BTC) == last
            await h.step()
            if link.state.stale_reconnects:
                break
        assert link.state.stale_reconnects == 1
        assert last is not None and h.clock.now - last >= STALE


# ---- connections ----------------------------------------------------------------------------


async def test_on_connected_is_called_once_per_new_connection(emu: Emulator) -> None:
    async with Harness(_binance(emu, "BTCUSDT")) as h:
        link = h.link
        await until(lambda: h.stream(BTC).messages > 10, 10, "trades")
        assert h.connected == link.state.connects == 1
        for n in (2, 3):
            emu.drop()
            await until(lambda n=n: link.state.connects == n and link.state.connected, 10, f"connection {n}")
            assert h.connected == n
        await until(lambda: h.stream(BTC).messages > 100, 10, "trades on the last connection")
        assert h.connected == 3 and link.state.reconnects == 2 and link.state.stale_reconnects == 0


@pytest.mark.parametrize(("venue", "kinds"), [
    ("binance", {"invalid_json": "invalid_json", "unknown_event": "unknown_event", "missing_field": "missing_field"}),
    ("bybit", {"invalid_json": "invalid_json", "unknown_event": "unknown_stream", "missing_field": "missing_field"}),
])
async def test_bad_frames_are_counted_by_kind_and_the_link_stays(venue: str, kinds: dict[str, str]) -> None:
    spec = SyntheticSpec(market="spot", symbol="BTCUSDT", rate=300, venue=venue)
    async with Emulator(synthetic=[spec], seed=3) as emu:
        if venue == "binance":
            plan, name = _binance(emu, "BTCUSDT"), BTC
        else:
            plan = bybit.plan_trade_connections(Market.SPOT, ("BTCUSDT",), emu.urls["bybit"]["spot"].rsplit(
                "/v5/", 1)[0])[0]
            name = "publicTrade.BTCUSDT"
        async with Harness(plan) as h:
            st = h.stream(name)
            await until(lambda: st.messages > 0, 10, "trades")
            for i, kind in enumerate(kinds, start=1):
                assert emu.send_malformed(kind, i, venue=venue) == 1
            expected = Counter({kinds[kind]: i for i, kind in enumerate(kinds, start=1)})
            await until(lambda: h.link.state.errors == expected, 10, f"{dict(expected)} counted")
            before = st.messages
            await until(lambda: st.messages > before + 20, 10, "trades after the bad frames")
            assert h.link.state.errors == expected
            assert h.link.state.reconnects == 0 and h.link.state.connected
            assert h.events == []  # bad frames are the link's business, not its owner's


async def test_a_refused_stream_is_forwarded_and_an_unknown_one_only_counted() -> None:
    specs = [SyntheticSpec(market="linear", symbol=s, rate=200, venue="bybit") for s in ("BTCUSDT", "ETHUSDT")]
    async with Emulator(synthetic=specs, seed=4) as emu:
        emu.fail_subscribe("publicTrade.ETHUSDT", market="linear")
        base = emu.urls["bybit"]["linear"].rsplit("/v5/", 1)[0]
        plan = bybit.plan_trade_connections(Market.LINEAR, ("BTCUSDT", "ETHUSDT"), base)[0]
        async with Harness(plan) as h:
            await until(lambda: bool(h.events), 10, "the refusal")
            await until(lambda: h.stream("publicTrade.BTCUSDT").messages > 10, 10, "the other topic to flow")
            assert len(h.events) == 1
            refusal = h.events[0]
            assert isinstance(refusal, VenueErrorReply) and refusal.stream == "publicTrade.ETHUSDT"
            assert "handler not found" in refusal.message
            assert h.link.state.errors["venue_error"] == 1
            # A refusal naming a topic this link does not carry is counted, not forwarded.
            assert h.link.send(bybit.subscribe_frames(["publicTrade.XRPUSDT"]))
            await until(lambda: h.link.state.errors["venue_error"] == 2, 10, "the second refusal")
            assert "XRPUSDT" in (h.link.state.last_error or "")
            assert h.events == [refusal]
            assert not any(isinstance(e, Ack) for e in h.events)


async def test_server_shutdown_hands_over_make_before_break_and_loses_nothing(emu: Emulator) -> None:
    async with Harness(_binance(emu, "BTCUSDT")) as h:
        link, st = h.link, h.stream(BTC)
        await until(lambda: st.messages > 50, 10, "trades")
        old = link.current
        assert old is not None
        assert emu.shutdown(grace=60.0) == 1  # the venue would close it in a minute
        await until(lambda: link.state.rotations == 1, 10, "the hand-over")
        assert link.current is not old and link.state.connected
        # The link closed the old connection itself, long before the venue's cut.
        await until(lambda: old.disconnected.is_set() and emu.subscribers(BTC, "spot") == 1, 10,
                    "the old connection to close")
        before = st.messages
        await until(lambda: st.messages > before + 50, 10, "trades on the new connection")
        emu.pause()
        await _quiet(emu, h, BTC)
        delivered = emu.delivered(BTC, "spot")
        assert [t.id for t in st.items] == delivered  # every trade once, in order
        assert not any(isinstance(e, ServerShutdown | RecoverTrades) for e in h.events)
        assert link.state.reconnects == 1 and link.state.stale_reconnects == 0 and link.state.connect_failures == 0


async def test_a_replacement_that_delivers_nothing_leaves_the_old_connection_in_service(emu: Emulator) -> None:
    async with TcpProxy("127.0.0.1", emu.port) as proxy:
        async with Harness(_binance(emu, "BTCUSDT", url=proxy.url(emu.urls["binance"]["spot"]))) as h:
            link, st = h.link, h.stream(BTC)
            await until(lambda: st.messages > 20, 10, "trades")
            old = link.current
            proxy.mode = "handshake_only"  # every new connection now opens and dies before it delivers anything
            emu.shutdown(grace=60.0)
            await until(lambda: link.state.connect_failures >= 2, 10, "two replacements to fail")
            assert proxy.accepted >= 3
            assert link.state.last_error == "rotation: the replacement connection delivered no data"
            assert link.current is old and link.state.connected and link.state.rotations == 0
            before = st.messages
            await until(lambda: st.messages > before + 50, 10, "trades on the old connection meanwhile")
            proxy.mode = "forward"
            await until(lambda: link.state.rotations == 1, 10, "a replacement that delivers")
            assert link.current is not old
            await until(lambda: old is not None and old.disconnected.is_set(), 10, "the old connection to close")
            emu.pause()
            await _quiet(emu, h, BTC)
            assert [t.id for t in st.items] == emu.delivered(BTC, "spot")
            assert not any(isinstance(e, RecoverTrades) for e in h.events)


@pytest.mark.parametrize("when", ["connect", "rotation"])
async def test_a_server_that_closes_before_the_handshake_is_retried_not_raised(emu: Emulator, when: str) -> None:
    async with TcpProxy("127.0.0.1", emu.port) as proxy:
        h = Harness(_binance(emu, "BTCUSDT", url=proxy.url(emu.urls["binance"]["spot"])))
        link = h.link
        if when == "connect":
            proxy.mode = "refuse"  # accepts TCP, closes it before the upgrade answer (a draining balancer)
            task = asyncio.get_running_loop().create_task(link.run())
        else:
            task = asyncio.get_running_loop().create_task(link.run())
            await until(lambda: h.stream(BTC).messages > 20, 10, "trades")
            proxy.mode = "refuse"
            emu.shutdown(grace=60.0)
        try:
            await until(lambda: link.state.connect_failures >= 2 or task.done(), 10, "two failed attempts")
            assert not task.done(), f"run() ended: {task.exception()!r}"
            if when == "rotation":
                assert link.state.connected and link.state.rotations == 0  # the old connection stays
        finally:
            link.stop()
            await asyncio.wait([task], timeout=10)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: reported above


async def test_a_bybit_replacement_whose_subscription_is_refused_leaves_the_old_connection_in_service() -> None:
    specs = [SyntheticSpec(market="linear", symbol="BTCUSDT", rate=200, venue="bybit")]
    async with Emulator(synthetic=specs, seed=4) as emu:
        base = emu.urls["bybit"]["linear"].rsplit("/v5/", 1)[0]
        plan = bybit.plan_trade_connections(Market.LINEAR, ("BTCUSDT",), base)[0]
        clock = FakeClock()
        h = Harness(plan, clock, stale_after=1000.0)
        h.link.rotate_after = 100.0
        async with h:
            link, st = h.link, h.stream("publicTrade.BTCUSDT")
            await until(lambda: st.messages > 20, 10, "trades")
            old = link.current
            emu.fail_subscribe("publicTrade.BTCUSDT", market="linear")  # new subscriptions are refused
            clock.advance(100.0)  # the connection is due for rotation (Bybit sends no notice)
            # The replacement's refusal gives it up at once: it never takes over, and the refusal
            # is not the current connection's (its stream is not excused).
            await until(lambda: link.state.connect_failures >= 1 or link.state.rotations >= 1, 20,
                        "the rotation attempt")
            assert link.state.rotations == 0 and link.current is old
            assert link.excused("publicTrade.BTCUSDT") is None and "refused" in (link.state.last_error or "")


async def test_fail_marks_the_link_failed_until_it_runs_again(emu: Emulator) -> None:
    h = Harness(_binance(emu, "BTCUSDT"))
    h.link.fail("KeyError: " + "x" * 500)  # what a supervisor does when it will not restart the link
    assert h.link.state.failed == ("KeyError: " + "x" * 500)[:300]
    assert not h.link.state.connected
    async with h:  # running again (a supervisor's restart) clears it
        assert h.link.state.failed is None and h.link.state.connected
        h.link.fail("gave up")
        assert h.link.state.failed == "gave up" and not h.link.state.connected
