"""Test helpers: the emulator the tests run, a recording picows client and waiting utilities."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from tests.helpers import until
from wadm.emulator import Emulator, SyntheticSpec

TIMEOUT = 5.0
"""Generous upper bound for anything the tests wait for."""


def emulator(
    *,
    rate: float,
    seed: int,
    binance: Sequence[str] = ("spot", "usdm"),
    bybit: Sequence[str] = (),
    symbols: Sequence[str] = ("BTCUSDT",),
    book_levels: int | None = None,
    **kwargs: Any,
) -> Emulator:
    """An emulator with one synthetic feed per venue market and symbol, all at ``rate`` trades/s.

    Args:
        rate: Trades per second of every feed.
        seed: Seed of the emulator's random generators.
        binance: Binance markets that get feeds.
        bybit: Bybit markets that get feeds.
        symbols: Symbols of every market.
        book_levels: Levels per side of the synthetic books (None: the emulator's default).
        **kwargs: Further `Emulator` arguments (policies, clock, timing, ...).
    """
    specs = [
        SyntheticSpec(venue=venue, market=market, symbol=symbol, rate=rate)
        for venue, markets in (("binance", binance), ("bybit", bybit))
        for market in markets
        for symbol in symbols
    ]
    if book_levels is not None:
        specs = [replace(spec, book_levels=book_levels) for spec in specs]
    return Emulator(synthetic=specs, seed=seed, **kwargs)


class Client(WSListener):
    """Test WebSocket client that records every frame it receives."""

    def __init__(self, *, auto_pong: bool = True, pong_payload: bytes | None = None) -> None:
        super().__init__()
        self.auto_pong = auto_pong
        self.pong_payload = pong_payload
        self.transport: WSTransport | None = None
        self.texts: list[bytes] = []
        self.pings: list[bytes] = []
        self.close_code: WSCloseCode | None = None
        self.close_reason = ""
        self.disconnected = asyncio.Event()

    # picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.texts.append(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.PING:
            payload = frame.get_payload_as_bytes()
            self.pings.append(payload)
            if self.auto_pong:
                reply = payload if self.pong_payload is None else self.pong_payload
                transport.send_pong(reply)
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            self.close_reason = frame.get_close_reason()
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected.set()

    # helpers
    def send(self, message: Any) -> None:
        assert self.transport is not None
        data = message if isinstance(message, bytes) else orjson.dumps(message)
        self.transport.send(WSMsgType.TEXT, data)

    def messages(self) -> list[Any]:
        """Every text frame parsed as JSON (invalid JSON is skipped)."""
        out = []
        for text in self.texts:
            try:
                out.append(orjson.loads(text))
            except orjson.JSONDecodeError:
                continue
        return out

    def data(self, stream: str | None = None, event: str | None = None) -> list[dict[str, Any]]:
        """Market-data payloads (unwrapped when combined), optionally filtered."""
        out = []
        for msg in self.messages():
            if not isinstance(msg, dict):
                continue
            if "stream" in msg and "data" in msg:
                if stream is not None and msg["stream"] != stream:
                    continue
                payload = msg["data"]
            elif "e" in msg:
                payload = msg
            else:
                continue
            if event is not None and payload.get("e") != event:
                continue
            out.append(payload)
        return out

    def replies(self) -> list[dict[str, Any]]:
        """Control replies and error frames."""
        return [m for m in self.messages() if isinstance(m, dict) and ("result" in m or "code" in m)]

    def acks(self) -> list[dict[str, Any]]:
        """Bybit ``op`` answers (acks and pongs)."""
        return [m for m in self.messages() if isinstance(m, dict) and "success" in m]

    def topic(self, topic: str) -> list[dict[str, Any]]:
        """Bybit data frames of one topic, in arrival order."""
        return [m for m in self.messages() if isinstance(m, dict) and m.get("topic") == topic]

    async def close(self) -> None:
        if self.transport is not None and not self.disconnected.is_set():
            self.transport.disconnect()
            await asyncio.wait_for(self.disconnected.wait(), TIMEOUT)


async def eventually(predicate: Callable[[], bool], within: float = TIMEOUT) -> None:
    """Wait until ``predicate()`` is true; fail after ``within`` seconds (`tests.helpers.until`)."""
    await until(predicate, within, "the condition", every=0.01)


async def caught_up(client: Client, venue: str = "binance") -> None:
    """Wait until every frame the server wrote to ``client`` before this call has arrived.

    Sends a request the server answers at once (Binance ``LIST_SUBSCRIPTIONS``, Bybit
    ``ping``) and waits for the answer: the server writes its queued frames before it,
    on the same socket, so whatever it sent earlier is ahead of the answer. Silences and
    pauses do not hold answers back, which makes this the marker after such a fault.

    Args:
        client: The connection.
        venue: ``binance`` or ``bybit`` (the request each understands).
    """
    if venue == "bybit":
        acks = len(client.acks())
        client.send({"op": "ping"})
        await until(lambda: len(client.acks()) > acks, TIMEOUT, "the pong after the frames already sent")
    else:
        replies = len(client.replies())
        client.send({"method": "LIST_SUBSCRIPTIONS", "id": 424242})
        await until(lambda: len(client.replies()) > replies, TIMEOUT, "the reply after the frames already sent")


def ids(payloads: list[dict[str, Any]], key: str) -> list[int]:
    return [p[key] for p in payloads]


def apply_levels(book: dict[str, str], levels: list[list[str]]) -> None:
    """Apply absolute ``[price, qty]`` updates ("0" removes the level)."""
    for price, qty in levels:
        if float(qty) == 0:
            book.pop(price, None)
        else:
            book[price] = qty


def sorted_side(book: dict[str, str], bids: bool) -> list[tuple[str, str]]:
    """A side as ``(price, qty)`` pairs, best first."""
    return sorted(book.items(), key=lambda kv: float(kv[0]), reverse=bids)
