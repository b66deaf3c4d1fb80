"""Binance spot and USD-M WebSocket market streams, as the emulator serves them.

Paths (below the emulator's ``/binance`` prefix, see PROTOCOLS.md §1.1, §2.1):

- ``/binance/spot/stream?streams=a/b`` (combined), ``/binance/spot/ws/<stream>`` (raw).
- ``/binance/usdm/{public,market}/stream?streams=...`` and ``.../ws/<stream>``. A
  path without a route (``/binance/usdm/ws/...``) is served as ``public``.

USD-M route split: a stream subscribed on the wrong route is acknowledged like
any other and then never delivers a frame, without an error or a close. That
is the real venue's silent failure mode, reproduced on purpose.

Control messages (``SUBSCRIBE``, ``UNSUBSCRIBE``, ``LIST_SUBSCRIPTIONS``,
``SET_PROPERTY``/``GET_PROPERTY`` of ``combined``) and their error frames
follow the spot documentation. Trade payloads use the exact key order of the
real frames; `BinanceTradeSink` encodes synthetic batches from byte templates.
Depth (``@depth...``) and kline (``@kline_<i>``) streams of symbols with a
synthetic feed come from `wadm.emulator.binance_streams`; REST from
`wadm.emulator.rest_binance`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from wadm.emulator.binance_streams import binance_publisher, is_timed_stream, stream_symbol
from wadm.emulator.connection import Connection, ConnectionPolicy
from wadm.emulator.frames import TEXT_HEADERS
from wadm.emulator.hub import Channel, Hub
from wadm.emulator.market import Instrument, SyntheticFeed, TradeBatch, format_decimal
from wadm.emulator.streams import Publisher, StreamTiming

__all__ = [
    "MARKETS",
    "SPOT_POLICY",
    "USDM_POLICY",
    "VENUE",
    "BinanceConnection",
    "BinanceTradeSink",
    "BinanceVenue",
    "default_instrument",
    "trade_id_field",
    "usdm_route",
]

VENUE = "binance"
MARKETS = ("spot", "usdm")

SPOT_POLICY = ConnectionPolicy(max_messages_per_s=5, ping_interval=20.0, pong_timeout=60.0)
"""Spot limits: 5 incoming messages/s, ping every 20 s, pong within 60 s, 24 h."""
USDM_POLICY = ConnectionPolicy(max_messages_per_s=10, ping_interval=180.0, pong_timeout=600.0)
"""USD-M limits: 10 incoming messages/s, ping every 3 min, pong within 10 min, 24 h."""

_USDM_ROUTES = ("public", "market")
_PUBLIC_KINDS = ("depth", "bookTicker", "trade", "rpiDepth")
"""Stream kinds (text after ``@``, prefix match) on the USD-M ``/public`` route."""
_METHODS = "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"
_MAX_ID_LEN = 36

_TRUE = b"true"
_FALSE = b"false"


def usdm_route(stream: str) -> str:
    """Return the USD-M route (``public`` or ``market``) that delivers a stream.

    Args:
        stream: Stream name, e.g. ``btcusdt@aggTrade`` or ``!bookTicker``.
    """
    kind = stream.partition("@")[2] if "@" in stream else stream.lstrip("!")
    return "public" if kind.startswith(_PUBLIC_KINDS) else "market"


def trade_id_field(stream: str) -> str | None:
    """Return the payload key whose ids the delivered log records, if any."""
    if stream.endswith("@trade"):
        return "t"
    if stream.endswith("@aggTrade"):
        return "a"
    return None


_DEFAULT_PRICES = {
    "BTC": 60_000.0,
    "ETH": 3_000.0,
    "BNB": 550.0,
    "SOL": 150.0,
    "XRP": 0.6,
}


def default_instrument(market: str, symbol: str, start_price: float | None = None) -> Instrument:
    """Return a plausible price/quantity grid for a Binance symbol.

    Spot prints 8 decimals for prices and quantities (``"61837.63000000"``);
    USD-M prints at least 2 price decimals (``"61800.30"``) and lot decimals
    (``"0.006"``).

    Args:
        market: ``spot`` or ``usdm``.
        symbol: Symbol such as ``BTCUSDT``.
        start_price: Overrides the default start price.
    """
    base = next((v for k, v in _DEFAULT_PRICES.items() if symbol.upper().startswith(k)), 100.0)
    price = start_price if start_price is not None else base
    if market == "spot":
        tick = 2 if price >= 10 else 4
        return Instrument(
            tick_decimals=tick,
            price_decimals=8,
            lot_decimals=5,
            qty_decimals=8,
            start_price=price,
        )
    tick = 1 if price >= 10_000 else (2 if price >= 10 else 4)
    return Instrument(
        tick_decimals=tick,
        price_decimals=max(2, tick),
        lot_decimals=3,
        qty_decimals=3,
        start_price=price,
    )


# ---------------------------------------------------------------- connection


class BinanceConnection(Connection):
    """One Binance market-stream connection and its control-message handling."""

    def __init__(self, hub: Hub, *, initial_streams: list[str], **kwargs: Any) -> None:
        """Create the connection.

        Args:
            hub: Channel registry.
            initial_streams: Streams named in the URL.
            **kwargs: Passed to `Connection`.
        """
        super().__init__(hub, **kwargs)
        self._initial = initial_streams

    def on_connected(self) -> None:
        for stream in self._initial:
            self.subscribe(stream)

    def subscribe(self, stream: str) -> None:
        """Subscribe to a stream (a no-op when already subscribed)."""
        self.hub.subscribe(self, stream, self.delivers(stream))

    def unsubscribe(self, stream: str) -> None:
        """Drop a subscription (a no-op when not subscribed)."""
        self.hub.unsubscribe(self, stream)

    def delivers(self, stream: str) -> bool:
        """Whether this connection's route delivers the stream's frames."""
        return self.market != "usdm" or usdm_route(stream) == self.route

    def on_text(self, payload: bytes) -> None:
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            self._reply({"code": 3, "msg": f"Invalid JSON: {exc}"})
            return
        if not isinstance(msg, dict):
            self._reply({"code": 2, "msg": "Invalid request: expected a JSON object"})
            return
        if "method" not in msg:
            self._reply({"code": 2, "msg": "Invalid request: missing field `method`"})
            return
        if set(msg) - {"method", "params", "id"}:
            self._reply({"code": 2, "msg": "Invalid request: too many parameters"})
            return
        req_id = msg.get("id")
        if not _valid_id(req_id):
            self._reply(
                {
                    "code": 2,
                    "msg": "Invalid request: request ID must be an unsigned integer",
                }
            )
            return
        method = msg["method"]
        params = msg.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(_valid_stream(s) for s in params):
                self._reply({"code": 2, "msg": "Invalid request: invalid stream name in params"})
                return
            for stream in params:
                if method == "SUBSCRIBE":
                    self.subscribe(stream)
                else:
                    self.unsubscribe(stream)
            self._reply({"result": None, "id": req_id})
        elif method == "LIST_SUBSCRIPTIONS":
            self._reply({"result": list(self.subscriptions), "id": req_id})
        elif method in ("SET_PROPERTY", "GET_PROPERTY"):
            self._property(method, params, req_id)
        else:
            self._reply(
                {
                    "code": 2,
                    "msg": f"Invalid request: unknown variant `{method}`, expected one of {_METHODS}",
                }
            )

    def _property(self, method: str, params: Any, req_id: Any) -> None:
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            self._reply({"code": 2, "msg": "Invalid request: property name must be a string"})
            return
        if params[0] != "combined":
            self._reply({"code": 0, "msg": "Unknown property", "id": req_id})
            return
        if method == "GET_PROPERTY":
            self._reply({"result": self.combined, "id": req_id})
            return
        if len(params) != 2 or not isinstance(params[1], bool):
            self._reply({"code": 1, "msg": "Invalid value type: expected Boolean"})
            return
        self.combined = params[1]
        self._reply({"result": None, "id": req_id})

    def _reply(self, body: Mapping[str, Any]) -> None:
        self.send_text(orjson.dumps(body))


def _valid_id(req_id: Any) -> bool:
    if req_id is None:
        return True
    if isinstance(req_id, bool):
        return False
    if isinstance(req_id, int):
        return -(2**63) <= req_id < 2**63
    return isinstance(req_id, str) and len(req_id) <= _MAX_ID_LEN and req_id.isalnum()


def _valid_stream(stream: Any) -> bool:
    return isinstance(stream, str) and bool(stream) and not any(c.isspace() for c in stream)


# --------------------------------------------------------------- trade sink


def _templates(market: str, symbol: str, stream: str, kind: str) -> tuple[bytes, bytes]:
    sym = symbol.upper().encode()
    if kind == "trade":
        if market == "spot":
            raw = b'{"e":"trade","E":%d,"s":"' + sym + (b'","t":%d,"p":"%s","q":"%s","T":%d,"m":%s,"M":true}')
        else:
            raw = b'{"e":"trade","E":%d,"T":%d,"s":"' + sym + (b'","t":%d,"p":"%s","q":"%s","X":"MARKET","m":%s}')
    else:
        raw = b'{"e":"aggTrade","E":%d,"s":"' + sym + (b'","a":%d,"p":"%s","q":"%s","f":%d,"l":%d,"T":%d,"m":%s')
        raw += b',"M":true}' if market == "spot" else b"}"
    combined = b'{"stream":"' + stream.encode() + b'","data":' + raw + b"}"
    return raw, combined


class BinanceTradeSink:
    """Encodes synthetic batches as ``@trade``/``@aggTrade`` frames; publishes them."""

    def __init__(self, hub: Hub, market: str, symbol: str) -> None:
        """Bind the sink to the symbol's two trade channels.

        Args:
            hub: Channel registry.
            market: ``spot`` or ``usdm``.
            symbol: Upper-case symbol.
        """
        self.hub = hub
        self.market = market
        lower = symbol.lower()
        self.trade_channel = hub.channel(VENUE, market, f"{lower}@trade")
        self.agg_channel = hub.channel(VENUE, market, f"{lower}@aggTrade")
        self._trade_tpl = _templates(market, symbol, self.trade_channel.stream, "trade")
        self._agg_tpl = _templates(market, symbol, self.agg_channel.stream, "aggTrade")
        self._usdm = market == "usdm"

    def listening(self) -> bool:
        """Whether any connection may receive either stream right now."""
        now = time.monotonic()
        for ch in (self.trade_channel, self.agg_channel):
            muted = ch.muted
            for conn in ch.subscribers:
                if not conn.closing and conn.silenced_until <= now and (not muted or muted.get(conn, 0.0) <= now):
                    return True
        return False

    def backlogged(self) -> bool:
        """Whether some receiver has too much unsent data (the feed holds back)."""
        now = time.monotonic()
        return any(
            conn.backlogged(now) for ch in (self.trade_channel, self.agg_channel) for conn in list(ch.subscribers)
        )

    def __call__(self, batch: TradeBatch) -> None:
        """Publish one batch to both channels and flush the sockets."""
        now = time.monotonic()
        ch = self.trade_channel
        combined, raw = ch.targets(now)
        comb_frames = self._encode_trades(self._trade_tpl[1], batch) if combined else b""
        raw_frames = self._encode_trades(self._trade_tpl[0], batch) if raw else b""
        ch.deliver(
            combined,
            comb_frames,
            raw,
            raw_frames,
            batch.count,
            batch.first_id,
            batch.first_id + batch.count - 1,
        )
        ch = self.agg_channel
        combined, raw = ch.targets(now)
        comb_frames = self._encode_aggs(self._agg_tpl[1], batch) if combined else b""
        raw_frames = self._encode_aggs(self._agg_tpl[0], batch) if raw else b""
        n = batch.agg_count
        ch.deliver(
            combined,
            comb_frames,
            raw,
            raw_frames,
            n,
            batch.first_agg_id,
            batch.first_agg_id + n - 1,
        )
        self.hub.flush()

    def _encode_trades(self, tpl: bytes, batch: TradeBatch) -> bytes:
        ts = batch.ts_ms
        tid = batch.first_id
        headers = TEXT_HEADERS
        parts: list[bytes] = []
        append = parts.append
        if self._usdm:
            for p, q, m in zip(batch.prices, batch.qtys, batch.makers, strict=True):
                payload = tpl % (ts, ts, tid, p, q, _TRUE if m else _FALSE)
                tid += 1
                append(headers[len(payload)])
                append(payload)
        else:
            for p, q, m in zip(batch.prices, batch.qtys, batch.makers, strict=True):
                payload = tpl % (ts, tid, p, q, ts, _TRUE if m else _FALSE)
                tid += 1
                append(headers[len(payload)])
                append(payload)
        return b"".join(parts)

    def _encode_aggs(self, tpl: bytes, batch: TradeBatch) -> bytes:
        ts = batch.ts_ms
        aid = batch.first_agg_id
        tid = batch.first_id
        headers = TEXT_HEADERS
        parts: list[bytes] = []
        append = parts.append
        if batch.aggs is None:
            for p, q, m in zip(batch.prices, batch.qtys, batch.makers, strict=True):
                payload = tpl % (ts, aid, p, q, tid, tid, ts, _TRUE if m else _FALSE)
                aid += 1
                tid += 1
                append(headers[len(payload)])
                append(payload)
        else:
            prices = batch.prices
            makers = batch.makers
            for first, last, qty in batch.aggs:
                flag = _TRUE if makers[first] else _FALSE
                payload = tpl % (
                    ts,
                    aid,
                    prices[first],
                    qty,
                    tid + first,
                    tid + last,
                    ts,
                    flag,
                )
                aid += 1
                append(headers[len(payload)])
                append(payload)
        return b"".join(parts)


# --------------------------------------------------------------------- venue


class BinanceVenue:
    """Routes ``/binance/...`` requests and builds Binance-specific frames."""

    name = VENUE
    markets: tuple[str, ...] = MARKETS
    prefix = "/binance/"

    def __init__(
        self,
        hub: Hub,
        *,
        policies: Mapping[str, ConnectionPolicy],
        timing: StreamTiming | None = None,
    ) -> None:
        """Create the venue.

        Args:
            hub: Channel registry.
            policies: Connection limits per market (``spot``, ``usdm``).
            timing: Push intervals of the depth and kline streams.
        """
        self.hub = hub
        self.policies = dict(policies)
        self.timing = timing if timing is not None else StreamTiming()

    def urls(self, base: str) -> dict[str, str]:
        """Return the client base URL of each market, e.g. ``ws://h:p/binance/spot``."""
        return {market: f"{base}/binance/{market}" for market in MARKETS}

    def connect(self, path: str) -> BinanceConnection | None:
        """Create a connection for a request path, or None for an unknown path.

        Args:
            path: Request path with query string, starting with ``/binance/``.
        """
        split = urlsplit(path)
        segs = split.path[len(self.prefix) :].split("/")
        market, rest = segs[0], segs[1:]
        if market not in MARKETS:
            return None
        route = ""
        if market == "usdm":
            route = "public"
            if rest and rest[0] in _USDM_ROUTES:
                route, rest = rest[0], rest[1:]
        if not rest:
            return None
        if rest[0] == "stream" and all(not s for s in rest[1:]):
            combined = True
            query = parse_qs(split.query)
            streams = [s for v in query.get("streams", []) for s in v.split("/") if s]
        elif rest[0] == "ws":
            combined = False
            streams = [s for s in rest[1:] if s]
        else:
            return None
        return BinanceConnection(
            self.hub,
            initial_streams=list(dict.fromkeys(streams)),
            venue=VENUE,
            market=market,
            path=path,
            route=route,
            combined=combined,
            policy=self.policies[market],
        )

    def default_instrument(self, market: str, symbol: str, start_price: float | None) -> Instrument:
        """Return the default grid of a symbol (see `default_instrument`)."""
        return default_instrument(market, symbol, start_price)

    def trade_sink(self, market: str, symbol: str) -> BinanceTradeSink:
        """Return the publisher of a synthetic feed's batches."""
        return BinanceTradeSink(self.hub, market, symbol)

    def timed_stream(self, stream: str) -> bool:
        """Whether a stream is a depth or kline stream."""
        return is_timed_stream(stream)

    def publisher(self, channel: Channel, feed: SyntheticFeed) -> Publisher | None:
        """Return the publisher of a depth or kline stream (None for other streams)."""
        return binance_publisher(channel, feed, self.timing)

    def stream_symbol(self, stream: str) -> str:
        """The symbol of a stream name (``btcusdt@trade`` -> ``BTCUSDT``)."""
        return stream_symbol(stream)

    def trade_ids(self, channel: Channel) -> list[Any]:
        """Delivered ids of a trade stream (``t`` or ``a`` values)."""
        return list(channel.delivered)

    def shutdown_event(self, combined: bool) -> bytes:
        """Return a ``serverShutdown`` event payload in the requested framing."""
        data = b'{"e":"serverShutdown","E":%d}' % (time.time_ns() // 1_000_000)
        return b'{"stream":"!serverShutdown","data":' + data + b"}" if combined else data

    def pick_stream(self, conn: Connection) -> str | None:
        """Choose the stream a fault frame pretends to belong to (a trade stream)."""
        deliverable = [s for s, ch in conn.subscriptions.items() if conn in ch.subscribers]
        for stream in deliverable:
            if trade_id_field(stream) is not None:
                return stream
        return deliverable[0] if deliverable else None

    def malformed(self, kind: str, channel: Channel, feed: SyntheticFeed | None) -> tuple[bytes, bytes]:
        """Build one malformed frame for a stream as ``(raw, combined)`` payloads.

        Args:
            kind: ``invalid_json``, ``unknown_event``, ``zero_price`` or
                ``missing_field``.
            channel: The stream the frame pretends to belong to.
            feed: The stream's synthetic feed; ``zero_price`` consumes a fresh id
                from it (without one, it uses the channel's last id + 1).

        Returns:
            The bare payload and its combined-stream form.

        Raises:
            ValueError: For an unknown kind.
        """
        stream = channel.stream
        symbol = stream.partition("@")[0].upper().encode()
        market = channel.market
        ts = time.time_ns() // 1_000_000
        inst = feed.instrument if feed is not None else default_instrument(market, symbol.decode())
        agg = stream.endswith("@aggTrade")
        tpl = _templates(market, symbol.decode(), stream, "aggTrade" if agg else "trade")[0]
        last = channel.last_id if channel.last_id is not None else 0
        if kind == "unknown_event":
            raw = b'{"e":"mysteryEvent","E":%d,"s":"%s","x":1}' % (ts, symbol)
        elif kind in ("zero_price", "missing_field", "invalid_json"):
            if kind == "zero_price":
                fresh = self._fresh_id(agg, feed, last)
                price = format_decimal(0, inst.tick_decimals, inst.price_decimals)
                qty = format_decimal(0, inst.lot_decimals, inst.qty_decimals)
            else:
                fresh = last
                price = feed.current_price() if feed is not None else b"1.00"
                qty = format_decimal(1, inst.lot_decimals, inst.qty_decimals)
            tid = feed.next_trade_id - 1 if feed is not None else fresh
            if agg:
                raw = tpl % (ts, fresh, price, qty, tid, tid, ts, _FALSE)
            elif market == "usdm":
                raw = tpl % (ts, ts, fresh, price, qty, _FALSE)
            else:
                raw = tpl % (ts, fresh, price, qty, ts, _FALSE)
            if kind == "missing_field":
                raw = raw.replace(b',"p":"' + price + b'"', b"", 1)
        else:
            raise ValueError(f"unknown malformed kind {kind!r}")
        combined = b'{"stream":"' + stream.encode() + b'","data":' + raw + b"}"
        if kind == "invalid_json":
            raw, combined = raw[: len(raw) // 2], combined[: len(combined) // 2]
        return raw, combined

    @staticmethod
    def _fresh_id(agg: bool, feed: SyntheticFeed | None, last: int) -> int:
        if feed is None:
            return last + 1
        return feed.take_agg_id() if agg else feed.take_trade_id()
