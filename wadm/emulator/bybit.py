"""Bybit v5 public WebSocket (spot and linear), as the emulator serves it.

Paths: ``/bybit/v5/public/spot`` and ``/bybit/v5/public/linear`` (a client's base
URL is ``ws://HOST:PORT/bybit``). There are no URL subscriptions; clients send
``{"req_id":..,"op":"subscribe","args":[topics]}`` (PROTOCOLS.md §3.1):

- acks: spot ``{"success":true,"ret_msg":"subscribe","conn_id":..,"op":..}`` (``req_id``
  only when given), linear ``{"success":true,"ret_msg":"","conn_id":..,"req_id":"",..}``;
- spot refuses more than 10 args in one request (``args size >10``, nothing subscribed);
- an unknown symbol, a retired depth (``orderbook.500``) or a topic made to fail
  (`BybitVenue.failing`) answers ``error:handler not found,topic:<t>`` (several
  joined with ``;``) while the other topics of the request subscribe;
- ``{"op":"ping"}`` gets the category's pong (spot without ``req_id``, linear
  with it, ``""`` when absent); a connection without a client message for
  ``idle_timeout`` seconds is closed.

Topics: ``publicTrade.{symbol}`` (`BybitTradeSink`: every batch as frames of up
to 1024 trades; linear ids are UUIDs, spot ids numeric strings; ``L`` only on
linear), ``orderbook.{1,50,200,1000}.{symbol}`` and ``kline.{interval}.{symbol}``
(`wadm.emulator.bybit_streams`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from wadm.emulator.bybit_streams import bybit_publisher, is_timed_topic
from wadm.emulator.connection import Connection, ConnectionPolicy
from wadm.emulator.frames import HEADER_CACHE_SIZE, TEXT_HEADERS, text_header
from wadm.emulator.hub import Channel, Hub
from wadm.emulator.market import Instrument, SyntheticFeed, TradeBatch
from wadm.emulator.model import SEQ_BASE
from wadm.emulator.streams import Publisher, StreamTiming

__all__ = [
    "BYBIT_POLICY",
    "MARKETS",
    "VENUE",
    "BybitConnection",
    "BybitTradeSink",
    "BybitVenue",
    "bybit_instrument",
    "trade_id_text",
    "trade_seq",
]

VENUE = "bybit"
MARKETS = ("spot", "linear")
BYBIT_POLICY = ConnectionPolicy(
    max_messages_per_s=100,
    ping_interval=0.0,
    pong_timeout=0.0,
    max_lifetime=0.0,
    idle_timeout=600.0,
)
"""No server pings, no fixed lifetime; closed after 10 min without a client message."""

MAX_SPOT_ARGS = 10
MAX_TRADES_PER_FRAME = 1024
_SPOT_ID_BASE = 2_280_000_000_000_000_000
_UUID_MUL = 0x9E3779B97F4A7C15F39CC0605CEDC9  # odd: a bijection modulo 2**120
_MASK_120 = (1 << 120) - 1
_CONN_ALPHABET = "0123456789abcdefghijklmnopqrstuv"


def trade_id_text(market: str, trade_id: int) -> str:
    """The venue form of a trade id: a UUID on linear, a numeric string on spot.

    Linear UUIDs are a bijective mix of the id (version 5 layout), so they are
    unique and stable.
    """
    if market == "spot":
        return str(_SPOT_ID_BASE + trade_id)
    h = "%030x" % ((trade_id * _UUID_MUL + 0x5BD1E995) & _MASK_120)
    return f"{h[:8]}-{h[8:12]}-5{h[12:15]}-a{h[15:18]}-{h[18:]}"


def trade_seq(trade_id: int) -> int:
    """Cross sequence of a trade (monotonic, not contiguous)."""
    return SEQ_BASE + 3 * trade_id


_DEFAULT_PRICES = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0, "XRP": 0.6}


def bybit_instrument(market: str, symbol: str, start_price: float | None = None) -> Instrument:
    """A plausible grid: linear ``"65114.20"``/``"0.004"``, spot without trailing zeros."""
    base = next((v for k, v in _DEFAULT_PRICES.items() if symbol.upper().startswith(k)), 100.0)
    price = start_price if start_price is not None else base
    if market == "spot":
        tick = 2 if price >= 10 else 4
        return Instrument(
            tick_decimals=tick,
            price_decimals=tick,
            lot_decimals=6,
            qty_decimals=6,
            start_price=price,
            strip=True,
        )
    tick = 1 if price >= 10_000 else (2 if price >= 10 else 4)
    return Instrument(
        tick_decimals=tick,
        price_decimals=max(2, tick),
        lot_decimals=3,
        qty_decimals=3,
        start_price=price,
    )


def _symbol_of(topic: str) -> str:
    return topic.rpartition(".")[2]


class BybitConnection(Connection):
    """One Bybit public connection and its ``op`` messages."""

    def __init__(self, hub: Hub, *, bybit: BybitVenue, **kwargs: Any) -> None:
        """Create the connection.

        Args:
            hub: Channel registry.
            bybit: The venue (topic validation, failing topics).
            **kwargs: Passed to `Connection`.
        """
        super().__init__(hub, **kwargs)
        self.bybit_venue = bybit
        rng = random.Random(self.conn_id)
        self.bybit_conn_id = (
            "".join(rng.choice(_CONN_ALPHABET) for _ in range(20))
            + "-"
            + "".join(rng.choice(_CONN_ALPHABET) for _ in range(5))
        )

    def on_text(self, payload: bytes) -> None:
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._ack("", None, False, "error:invalid json")
            return
        if not isinstance(msg, dict):
            self._ack("", None, False, "error:invalid request")
            return
        op = msg.get("op")
        req_id = msg.get("req_id")
        if op == "ping":
            # NOTE: the documented spot pong carries no req_id; linear echoes it (or "").
            self._ack("ping", req_id if self.market == "linear" else None, True, "pong", linear_msg="pong")
        elif op in ("subscribe", "unsubscribe"):
            args = msg.get("args")
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                self._ack(op, req_id, False, "error:args invalid")
                return
            self._subscription(op, req_id, list(dict.fromkeys(args)))
        else:
            self._ack(str(op) if op is not None else "", req_id, False, f"error:invalid op:{op}")

    def _subscription(self, op: str, req_id: Any, topics: list[str]) -> None:
        if self.market == "spot" and len(topics) > MAX_SPOT_ARGS:
            self._ack(op, req_id, False, f"args size >{MAX_SPOT_ARGS}")
            return
        venue = self.bybit_venue
        errors: list[str] = []
        good: list[str] = []
        for topic in topics:
            if not venue.accepts(self.market, topic):
                errors.append(f"error:handler not found,topic:{topic}")
            elif op == "subscribe" and topic in self.subscriptions:
                errors.append(f"error:already subscribed,topic:{topic}")
            else:
                good.append(topic)
        self._ack(op, req_id, not errors, ";".join(errors) if errors else op)
        for topic in good:
            if op == "subscribe":
                self.hub.subscribe(self, topic, True)
            else:
                self.hub.unsubscribe(self, topic)

    def _ack(self, op: str, req_id: Any, success: bool, msg: str, *, linear_msg: str = "") -> None:
        body: dict[str, Any] = {"success": success}
        linear = self.market == "linear"
        body["ret_msg"] = (linear_msg if linear else msg) if success else msg
        body["conn_id"] = self.bybit_conn_id
        if linear:
            body["req_id"] = req_id if req_id is not None else ""
        elif req_id is not None:
            body["req_id"] = req_id
        body["op"] = op
        self.send_text(orjson.dumps(body))


class BybitTradeSink:
    """Encodes synthetic batches as ``publicTrade`` frames and publishes them."""

    def __init__(self, hub: Hub, market: str, symbol: str) -> None:
        """Bind the sink to the symbol's trade topic.

        Args:
            hub: Channel registry.
            market: ``spot`` or ``linear``.
            symbol: Upper-case symbol.
        """
        self.hub = hub
        self.market = market
        self.channel = hub.channel(VENUE, market, f"publicTrade.{symbol}")
        self._linear = market == "linear"
        sym = symbol.encode()
        if self._linear:
            self._head = b'{"topic":"publicTrade.' + sym + b'","type":"snapshot","ts":%d,"data":['
            self._item = (
                b'{"T":%d,"s":"'
                + sym
                + b'","S":"%s","v":"%s","p":"%s","L":"%s","i":"%s","BT":false,"RPI":false,"seq":%d}'
            )
        else:
            self._head = b'{"topic":"publicTrade.' + sym + b'","ts":%d,"type":"snapshot","data":['
            self._item = (
                b'{"i":"%s","T":%d,"p":"%s","v":"%s","S":"%s","seq":%d,"s":"' + sym + b'","BT":false,"RPI":false}'
            )
        self._last_price: bytes | None = None
        self._direction = b"ZeroPlusTick"

    def listening(self) -> bool:
        """Whether any connection may receive the topic right now."""
        now = time.monotonic()
        ch = self.channel
        return any(ch.receives(conn, now) for conn in ch.subscribers)

    def backlogged(self) -> bool:
        """Whether some receiver has too much unsent data (the feed holds back)."""
        now = time.monotonic()
        return any(conn.backlogged(now) for conn in list(self.channel.subscribers))

    def __call__(self, batch: TradeBatch) -> None:
        """Publish one batch (as frames of at most 1024 trades) and flush."""
        ch = self.channel
        combined, raw = ch.targets(time.monotonic())
        targets = combined + raw
        frames = self.encode(batch) if targets else []
        ch.deliver(
            [], b"", targets, b"".join(frames), max(1, len(frames)), batch.first_id, batch.first_id + batch.count - 1
        )
        self.hub.flush()

    def encode(self, batch: TradeBatch) -> list[bytes]:
        """Encode a batch as complete WebSocket frames."""
        frames = []
        for payload in self.payloads(batch):
            size = len(payload)
            frames.append((TEXT_HEADERS[size] if size < HEADER_CACHE_SIZE else text_header(size)) + payload)
        return frames

    def payloads(self, batch: TradeBatch) -> list[bytes]:
        """Encode a batch as frame payloads of at most 1024 trades."""
        items = self._items(batch)
        head = self._head % (batch.ts_ms,)
        return [
            head + b",".join(items[start : start + MAX_TRADES_PER_FRAME]) + b"]}"
            for start in range(0, len(items), MAX_TRADES_PER_FRAME)
        ]

    def _items(self, batch: TradeBatch) -> list[bytes]:
        ts = batch.ts_ms
        tid = batch.first_id
        tpl = self._item
        items: list[bytes] = []
        if self._linear:
            last = self._last_price
            direction = self._direction
            for p, q, m in zip(batch.prices, batch.qtys, batch.makers, strict=True):
                if last is not None and p != last:
                    up = (len(p), p) > (len(last), last)
                    direction = b"PlusTick" if up else b"MinusTick"
                elif direction in (b"PlusTick", b"MinusTick"):
                    direction = b"ZeroPlusTick" if direction == b"PlusTick" else b"ZeroMinusTick"
                last = p
                uid = trade_id_text("linear", tid).encode()
                items.append(tpl % (ts, b"Sell" if m else b"Buy", q, p, direction, uid, trade_seq(tid)))
                tid += 1
            self._last_price = last
            self._direction = direction
        else:
            for p, q, m in zip(batch.prices, batch.qtys, batch.makers, strict=True):
                items.append(tpl % (b"%d" % (_SPOT_ID_BASE + tid), ts, p, q, b"Sell" if m else b"Buy", trade_seq(tid)))
                tid += 1
        return items


class BybitVenue:
    """Routes ``/bybit/v5/public/...`` requests and builds Bybit-specific frames."""

    name = VENUE
    markets: tuple[str, ...] = MARKETS
    prefix = "/bybit/"

    def __init__(
        self,
        hub: Hub,
        *,
        policies: Mapping[str, ConnectionPolicy],
        listed: Callable[[str, str], bool],
        timing: StreamTiming,
    ) -> None:
        """Create the venue.

        Args:
            hub: Channel registry.
            policies: Connection limits per market (``spot``, ``linear``).
            listed: Whether ``(market, symbol)`` is a listed symbol (has a feed).
            timing: Push intervals of the timed topics.
        """
        self.hub = hub
        self.policies = dict(policies)
        self.listed = listed
        self.timing = timing
        self.failing: dict[tuple[str | None, str], int | None] = {}
        """Topics answering ``handler not found``: ``(market or None, topic)`` ->
        remaining subscribe attempts (None: until cleared)."""

    def urls(self, base: str) -> dict[str, str]:
        """Return the URL of each category, e.g. ``ws://h:p/bybit/v5/public/spot``."""
        return {market: f"{base}/bybit/v5/public/{market}" for market in MARKETS}

    def connect(self, path: str) -> BybitConnection | None:
        """Create a connection for ``/bybit/v5/public/<category>``, or None."""
        segs = urlsplit(path).path.rstrip("/").split("/")
        if len(segs) != 5 or segs[2:4] != ["v5", "public"] or segs[4] not in MARKETS:
            return None
        return BybitConnection(
            self.hub,
            bybit=self,
            venue=VENUE,
            market=segs[4],
            path=path,
            route="",
            combined=False,
            policy=self.policies[segs[4]],
        )

    def accepts(self, market: str, topic: str) -> bool:
        """Whether a subscription to ``topic`` succeeds (consumes a failure count)."""
        parts = topic.split(".")
        if parts[0] == "publicTrade" and len(parts) == 2:
            pass
        elif not is_timed_topic(topic):
            return False
        if not self.listed(market, parts[-1]):
            return False
        for key in ((market, topic), (None, topic)):
            if key in self.failing:
                left = self.failing[key]
                if left is not None:
                    if left <= 1:
                        del self.failing[key]
                    else:
                        self.failing[key] = left - 1
                return False
        return True

    def default_instrument(self, market: str, symbol: str, start_price: float | None) -> Instrument:
        """Return the default grid of a symbol (see `bybit_instrument`)."""
        return bybit_instrument(market, symbol, start_price)

    def trade_sink(self, market: str, symbol: str) -> BybitTradeSink:
        """Return the publisher of a synthetic feed's batches."""
        return BybitTradeSink(self.hub, market, symbol)

    def timed_stream(self, stream: str) -> bool:
        """Whether a topic is an order-book or kline topic."""
        return is_timed_topic(stream)

    def publisher(self, channel: Channel, feed: SyntheticFeed) -> Publisher | None:
        """Return the publisher of an order-book or kline topic."""
        return bybit_publisher(channel, feed, self.timing)

    def stream_symbol(self, stream: str) -> str:
        """The symbol of a topic (its last dotted part)."""
        return _symbol_of(stream)

    def trade_ids(self, channel: Channel) -> list[Any]:
        """Delivered trade ids of a ``publicTrade`` topic, as the ``i`` strings."""
        return [trade_id_text(channel.market, tid) for tid in channel.delivered]

    def shutdown_event(self, combined: bool) -> bytes:
        """Bybit has no shutdown notice: an empty payload (nothing is sent)."""
        return b""

    def pick_stream(self, conn: Connection) -> str | None:
        """Choose the topic a fault frame pretends to belong to (a trade topic)."""
        deliverable = [s for s, ch in conn.subscriptions.items() if conn in ch.subscribers]
        for stream in deliverable:
            if stream.startswith("publicTrade."):
                return stream
        return deliverable[0] if deliverable else None

    def malformed(self, kind: str, channel: Channel, feed: SyntheticFeed | None) -> tuple[bytes, bytes]:
        """Build one malformed ``publicTrade`` frame as ``(raw, raw)`` payloads.

        ``zero_price`` consumes a fresh trade id from the feed; the other kinds
        reuse the last one.

        Raises:
            ValueError: For an unknown kind.
        """
        symbol = _symbol_of(channel.stream)
        market = channel.market
        ts = feed.clock() if feed is not None else time.time_ns() // 1_000_000
        if kind == "unknown_event":
            raw = b'{"topic":"mystery.%s","type":"snapshot","ts":%d,"data":{"x":1}}' % (symbol.encode(), ts)
            return raw, raw
        if kind not in ("zero_price", "missing_field", "invalid_json"):
            raise ValueError(f"unknown malformed kind {kind!r}")
        last = channel.last_id if channel.last_id is not None else 0
        if kind == "zero_price":
            tid = feed.take_trade_id() if feed is not None else last + 1
            price = qty = b"0"
        else:
            tid = last
            price = feed.current_price() if feed is not None else b"1"
            qty = b"1"
        sink = BybitTradeSink(self.hub, market, symbol)
        raw = sink.payloads(TradeBatch(ts, tid, [price], [qty], [False], 0))[0]
        if kind == "missing_field":
            raw = raw.replace(b',"p":"' + price + b'"', b"", 1).replace(b'"p":"' + price + b'",', b"", 1)
        if kind == "invalid_json":
            raw = raw[: len(raw) // 2]
        return raw, raw
