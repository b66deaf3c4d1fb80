"""The emulator process: one listening port, venues routed by path prefix.

`Emulator` binds one port and serves:

- ``/binance/...``: Binance WebSocket market streams (`wadm.emulator.binance`)
  and REST market data (``/binance/spot/api/v3/...``, ``/binance/usdm/fapi/v1/...``);
- ``/bybit/...``: Bybit v5 public WebSocket (`wadm.emulator.bybit`) and REST
  market data (``/bybit/v5/market/...``);
- ``/control/...``: plain HTTP GET endpoints for stats, the delivered log, the
  true book and fault injection (`wadm.emulator.control`);
- anything else: 404.

It owns the synthetic feeds (each with its market model once needed: book,
klines; see `wadm.emulator.model`), the timed-stream scheduler and replays,
and exposes every fault as a method (`wadm.emulator.faults`), so tests can
drive it in-process or over HTTP from another process.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

from picows import WSCloseCode, WSListener, WSUpgradeRequest, WSUpgradeResponseWithListener

from wadm.emulator import rest_binance, rest_bybit
from wadm.emulator.binance import SPOT_POLICY, USDM_POLICY, BinanceVenue
from wadm.emulator.book import ASK, BID
from wadm.emulator.bybit import BYBIT_POLICY, BybitVenue
from wadm.emulator.connection import Connection, ConnectionPolicy
from wadm.emulator.control import ControlApi, json_response
from wadm.emulator.faults import MALFORMED_KINDS, FaultInjection
from wadm.emulator.gateway import Gateway, ws_protocol_factory
from wadm.emulator.hub import Channel, Hub
from wadm.emulator.market import Clock, SyntheticFeed, SyntheticSpec, wall_clock_ms
from wadm.emulator.model import MarketModel, attach_model
from wadm.emulator.replay import ReplayHandle, ReplaySpec
from wadm.emulator.rest import HttpResponse, RestApi, RestFaults, RestLimits, WeightLimiter
from wadm.emulator.streams import Publisher, Scheduler, StreamTiming
from wadm.emulator.venue import Venue

__all__ = ["MALFORMED_KINDS", "Emulator"]

_UID_JUMPS = {("binance", "usdm"): 40}
"""Largest step between book update ids per venue market (USD-M ids are not contiguous)."""

Book = tuple[list[tuple[str, str]], list[tuple[str, str]], int]


class Emulator(FaultInjection):
    """A loopback exchange emulator: Binance spot/USD-M and Bybit spot/linear.

    Usage::

        spec = SyntheticSpec(market="spot", symbol="BTCUSDT")
        async with Emulator(synthetic=[spec]) as emu:
            url = emu.urls["binance"]["spot"]   # ws://127.0.0.1:PORT/binance/spot
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        spot_policy: ConnectionPolicy = SPOT_POLICY,
        usdm_policy: ConnectionPolicy = USDM_POLICY,
        bybit_policy: ConnectionPolicy = BYBIT_POLICY,
        synthetic: Iterable[SyntheticSpec] = (),
        replays: Iterable[ReplaySpec] = (),
        seed: int | None = None,
        shutdown_grace: float = 5.0,
        batch_interval: float = 0.005,
        max_send_buffer: int = 64 << 20,
        slow_consumer_timeout: float = 5.0,
        clock: Clock = wall_clock_ms,
        timing: StreamTiming | None = None,
        rest_limits: RestLimits | None = None,
    ) -> None:
        """Configure the emulator; nothing runs before `start`.

        Args:
            host: Interface to bind.
            port: TCP port; 0 picks a free one (see `port` after `start`).
            spot_policy: Binance spot connection limits (rate, ping, lifetime).
            usdm_policy: Binance USD-M connection limits.
            bybit_policy: Bybit connection limits (both categories; its
                ``idle_timeout`` closes connections without client messages).
            synthetic: Trade generators to run.
            replays: Recordings to replay from `start` on.
            seed: Seed of the random generators (None: unpredictable).
            shutdown_grace: Default seconds between ``serverShutdown`` and close.
            batch_interval: Shortest interval between two synthetic batches.
            max_send_buffer: Unsent bytes per connection before it is dropped
                as a slow consumer.
            slow_consumer_timeout: Seconds a connection may keep more than
                4 MiB unsent (synthetic feeds hold back meanwhile) before it
                is dropped as a slow consumer.
            clock: Wall clock in ms for every timestamp, bar and weight window
                (tests shift it to reach a minute boundary quickly).
            timing: Push intervals of depth, order-book and kline streams.
            rest_limits: Binance REST weight budgets and ban rules.
        """
        self.host = host
        self.requested_port = port
        self.shutdown_grace = shutdown_grace
        self.batch_interval = batch_interval
        self.clock = clock
        self.timing = timing if timing is not None else StreamTiming()
        self.rest_limits = rest_limits if rest_limits is not None else RestLimits()
        self.hub = Hub(
            on_subscribe=self._on_subscribe,
            max_send_buffer=max_send_buffer,
            slow_consumer_timeout=slow_consumer_timeout,
        )
        self.feeds: dict[tuple[str, str, str], SyntheticFeed] = {}
        self.binance = BinanceVenue(self.hub, policies={"spot": spot_policy, "usdm": usdm_policy}, timing=self.timing)
        self.bybit = BybitVenue(
            self.hub,
            policies={"spot": bybit_policy, "linear": bybit_policy},
            listed=lambda market, symbol: ("bybit", market, symbol) in self.feeds,
            timing=self.timing,
        )
        self.venues: dict[str, Venue] = {self.binance.name: self.binance, self.bybit.name: self.bybit}
        self.scheduler = Scheduler(self.hub, tick=self.timing.tick, clock=clock)
        self.control = ControlApi(self)
        self.rest = RestApi(self, binance=rest_binance.respond, bybit=rest_bybit.respond)
        self.rest_faults = RestFaults()
        self.limiters = {
            "spot": WeightLimiter(self.rest_limits.spot_weight, self.rest_limits, clock),
            "usdm": WeightLimiter(self.rest_limits.usdm_weight, self.rest_limits, clock),
        }
        self._rng = random.Random(seed)
        self.replays: list[ReplayHandle] = []
        self._pending_replays = list(replays)
        self._server: asyncio.Server | None = None
        self._gateways: set[Gateway] = set()
        self._port = 0
        self._started_at = 0.0
        for spec in synthetic:
            self.add_synthetic(spec)

    # ------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The bound port (0 before `start`)."""
        return self._port

    @property
    def url(self) -> str:
        """Base WebSocket URL, ``ws://HOST:PORT``."""
        return f"ws://{self.host}:{self._port}"

    @property
    def http_url(self) -> str:
        """Base HTTP URL of the control and REST endpoints, ``http://HOST:PORT``."""
        return f"http://{self.host}:{self._port}"

    @property
    def urls(self) -> dict[str, dict[str, str]]:
        """WebSocket URL per venue and market.

        Binance: the base a client appends ``/stream?...`` or ``/ws/...`` to.
        Bybit: the full endpoint, ``ws://HOST:PORT/bybit/v5/public/<category>``
        (a client configured with a base URL uses ``ws://HOST:PORT/bybit``).
        """
        return {name: venue.urls(self.url) for name, venue in self.venues.items()}

    @property
    def rest_urls(self) -> dict[str, dict[str, str]]:
        """REST base URL per venue and market (clients append ``/api/v3/...``, ``/v5/market/...``)."""
        base = self.http_url
        return {
            "binance": {"spot": f"{base}/binance/spot", "usdm": f"{base}/binance/usdm"},
            "bybit": {"spot": f"{base}/bybit", "linear": f"{base}/bybit"},
        }

    async def start(self) -> int:
        """Bind the port and start feeds, timed streams and replays.

        Returns:
            The bound port.
        """
        if self._server is not None:
            return self._port
        loop = asyncio.get_running_loop()
        ws_factory = ws_protocol_factory(self._on_request, max_frame_size=1 << 20)
        self._server = await loop.create_server(
            lambda: Gateway(self._http, ws_factory, self._gateways),
            self.host,
            self.requested_port,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._started_at = time.monotonic()
        for feed in self.feeds.values():
            feed.start()
        self.scheduler.start()
        for spec in self._pending_replays:
            self.add_replay(spec)
        self._pending_replays.clear()
        return self._port

    async def stop(self) -> None:
        """Stop feeds and replays, close every connection and the listening socket."""
        for feed in self.feeds.values():
            feed.stop()
        self.scheduler.stop()
        for replay in self.replays:
            await replay.stop()
        server = self._server
        if server is None:
            return
        self._server = None
        server.close()
        for gateway in list(self._gateways):
            gateway.close()
        waits = []
        for conn in list(self.hub.connections.values()):
            transport = conn.transport
            if transport is None:
                continue
            if not conn.closing:
                conn.closing = True
                transport.send_close(WSCloseCode.GOING_AWAY, b"Server stopping")
            transport.disconnect(True)
            waits.append(asyncio.ensure_future(transport.wait_disconnected()))
        if waits:
            await asyncio.wait(waits, timeout=2.0)
            for fut in waits:
                if not fut.done():
                    fut.cancel()
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _on_request(self, request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener | None:
        path = request.path.decode("latin-1")
        if path == "/control" or path.startswith(("/control/", "/control?")):
            return self.control.respond(path)
        for venue in self.venues.values():
            if path.startswith(venue.prefix):
                conn = venue.connect(path)
                if conn is not None:
                    return conn
        return json_response(404, {"error": "not found", "path": path})

    def _http(self, path: str, first: bool) -> HttpResponse | None:
        """Answer a plain HTTP request; None hands a first request to picows."""
        if self.rest.handles(path):
            return self.rest.respond(path)
        if first:
            return None
        if path == "/control" or path.startswith(("/control/", "/control?")):
            answer = self.control.respond(path).response
        else:
            answer = json_response(404, {"error": "not found", "path": path}).response
        return HttpResponse(int(answer.status), answer.body or b"", dict(answer.headers))

    # -------------------------------------------------------------- sources

    def add_synthetic(self, spec: SyntheticSpec) -> SyntheticFeed:
        """Add a trade generator; it starts now if the emulator is running.

        Args:
            spec: Generator configuration.

        Returns:
            The feed (its rate can be changed, it can be paused).

        Raises:
            ValueError: For an unknown venue or market, or a duplicate feed.
        """
        venue = self.venues.get(spec.venue)
        if venue is None or spec.market not in venue.markets:
            raise ValueError(f"unknown venue/market {spec.venue}/{spec.market}")
        key = (spec.venue, spec.market, spec.symbol.upper())
        if key in self.feeds:
            raise ValueError(f"duplicate synthetic feed {key}")
        instrument = spec.instrument or venue.default_instrument(spec.market, spec.symbol, spec.start_price)
        sink = venue.trade_sink(spec.market, spec.symbol.upper())
        feed = SyntheticFeed(
            spec,
            instrument,
            rng=random.Random(self._rng.getrandbits(64)),
            sink=sink,
            listening=sink.listening,
            backlogged=sink.backlogged,
            batch_interval=self.batch_interval,
            clock=self.clock,
        )
        self.feeds[key] = feed
        if spec.book:
            self.engage(feed)
        for (v, m, stream), ch in list(self.hub.channels.items()):
            if v == spec.venue and m == spec.market and venue.stream_symbol(stream) == key[2]:
                self._ensure_publisher(ch)
        if self._server is not None:
            feed.start()
        return feed

    def engage(self, feed: SyntheticFeed) -> MarketModel | None:
        """Attach a market model (book, klines) to a feed unless it has one.

        Returns:
            The feed's model; None for a pure trade feed (``book=False``).
        """
        key = (feed.spec.venue, feed.market)
        return attach_model(feed, seed=self._rng.getrandbits(64), uid_jump=_UID_JUMPS.get(key, 1))

    def _on_subscribe(self, conn: Connection, channel: Channel) -> None:
        publisher = self._ensure_publisher(channel)
        if publisher is not None:
            publisher.on_subscribe(conn)

    def _ensure_publisher(self, channel: Channel) -> Publisher | None:
        pub = self.scheduler.get(channel.venue, channel.market, channel.stream)
        if pub is not None:
            return pub
        venue = self.venues[channel.venue]
        feed = self.feeds.get((channel.venue, channel.market, venue.stream_symbol(channel.stream)))
        if feed is None or not venue.timed_stream(channel.stream) or self.engage(feed) is None:
            return None
        pub = venue.publisher(channel, feed)
        if pub is not None:
            self.scheduler.add(pub)
        return pub

    def true_book(self, venue: str, market: str, symbol: str, depth: int | None = None) -> Book:
        """The emulator's true book of a symbol (attaching a model if needed).

        Args:
            venue: Venue name.
            market: Venue market.
            symbol: Symbol.
            depth: Levels per side (None: all).

        Returns:
            ``(bids, asks, update_id)``: ``[(price, qty), ...]`` best first,
            formatted as the venue prints them; the update id of the last
            change (Binance ``lastUpdateId`` semantics).

        Raises:
            ValueError: For a symbol without a feed, or a pure trade feed.
        """
        feed = self.feeds.get((venue, market, symbol.upper()))
        if feed is None:
            raise ValueError(f"no synthetic feed for {venue}/{market}/{symbol}")
        model = self.engage(feed)
        if model is None:
            raise ValueError(f"{venue}/{market}/{symbol} is a pure trade feed (book=False)")
        book = model.book
        price, qty = feed.price_text, feed.qty_text
        bids = [(price(t).decode(), qty(q).decode()) for t, q in book.top(BID, depth)]
        asks = [(price(t).decode(), qty(q).decode()) for t, q in book.top(ASK, depth)]
        return bids, asks, book.uid

    def add_replay(self, spec: ReplaySpec) -> ReplayHandle:
        """Start replaying a recording (the emulator must be running).

        Args:
            spec: What to replay.

        Returns:
            A handle to wait for or stop the replay.
        """
        if spec.venue not in self.venues:
            raise ValueError(f"unknown venue {spec.venue}")
        handle = ReplayHandle(spec, self.hub)
        self.replays.append(handle)
        handle.start()
        return handle

    def select_feeds(
        self,
        *,
        market: str | None = None,
        symbol: str | None = None,
        venue: str | None = None,
    ) -> list[SyntheticFeed]:
        """Return the feeds matching every given filter."""
        sym = symbol.upper() if symbol else None
        return [
            feed
            for (v, m, s), feed in self.feeds.items()
            if (venue is None or v == venue) and (market is None or m == market) and (sym is None or s == sym)
        ]

    def set_rate(
        self,
        rate: float,
        *,
        market: str | None = None,
        symbol: str | None = None,
        venue: str | None = None,
    ) -> int:
        """Change the rate of matching feeds; create the feed if a symbol has none.

        Args:
            rate: Trades per second.
            market: Market filter.
            symbol: Symbol filter. When no feed matches and a symbol is given,
                a feed is added for it (on ``market``, or on every market).
            venue: Venue filter (default venue for new feeds: ``binance``).

        Returns:
            Number of feeds changed or created.
        """
        feeds = self.select_feeds(market=market, symbol=symbol, venue=venue)
        for feed in feeds:
            feed.set_rate(rate)
        if feeds or not symbol:
            return len(feeds)
        v = self.venues[venue or "binance"]
        for mkt in [market] if market else v.markets:
            self.add_synthetic(SyntheticSpec(venue=v.name, market=mkt, symbol=symbol, rate=rate))
        return 1 if market else len(v.markets)

    def pause(
        self,
        *,
        market: str | None = None,
        symbol: str | None = None,
        venue: str | None = None,
    ) -> int:
        """Pause matching feeds; returns how many."""
        feeds = self.select_feeds(market=market, symbol=symbol, venue=venue)
        for feed in feeds:
            feed.pause()
        return len(feeds)

    def resume(
        self,
        *,
        market: str | None = None,
        symbol: str | None = None,
        venue: str | None = None,
    ) -> int:
        """Resume matching feeds; returns how many."""
        feeds = self.select_feeds(market=market, symbol=symbol, venue=venue)
        for feed in feeds:
            feed.resume()
        return len(feeds)

    # ---------------------------------------------------------- inspection

    def resolve_market(self, stream: str, market: str | None, venue: str = "binance") -> str:
        """Return ``market``, or the only market that has ``stream`` when it is None."""
        if market is not None:
            return market
        found = [m for (v, m, s) in self.hub.channels if v == venue and s == stream]
        if len(found) == 1:
            return found[0]
        raise ValueError(f"market is required for stream {stream!r}" + (" (ambiguous)" if found else ""))

    def delivered(self, stream: str, market: str | None = None, venue: str = "binance") -> list[Any]:
        """Ids of a trade stream written to at least one socket, in order, unique.

        Args:
            stream: Binance ``<symbol>@trade`` (``t`` ids, ints) or
                ``<symbol>@aggTrade`` (``a`` ids); Bybit ``publicTrade.<SYMBOL>``
                (the ``i`` strings: UUIDs on linear, numeric on spot).
            market: Market; may be omitted when only one market has the stream.
            venue: Venue name.

        Raises:
            ValueError: When ``market`` is omitted and ambiguous or unknown.
        """
        mkt = self.resolve_market(stream, market, venue)
        ch = self.hub.find_channel(venue, mkt, stream)
        return self.venues[venue].trade_ids(ch) if ch is not None else []

    def subscribers(self, stream: str, market: str, venue: str = "binance") -> int:
        """Number of open connections that receive a stream (route permitting)."""
        ch = self.hub.find_channel(venue, market, stream)
        if ch is None:
            return 0
        return sum(1 for conn in ch.subscribers if not conn.closing)

    def stats(self) -> dict[str, Any]:
        """Connections, per-stream counters and feeds, as plain JSON-ready data."""
        now = time.monotonic()
        return {
            "uptime": round(now - self._started_at, 3) if self._server else 0.0,
            "port": self._port,
            "connections": [c.info(now) for c in self.hub.connections.values()],
            "streams": [
                {
                    "venue": ch.venue,
                    "market": ch.market,
                    "stream": ch.stream,
                    "subscribers": len(ch.subscribers),
                    "frames_published": ch.frames_published,
                    "frames_sent": ch.frames_sent,
                    "delivered_ids": len(ch.delivered),
                    "last_id": ch.last_id,
                }
                for ch in self.hub.channels.values()
            ],
            "feeds": [
                {
                    "venue": v,
                    "market": m,
                    "symbol": s,
                    "rate": feed.rate,
                    "achieved_rate": round(feed.achieved_rate(), 1),
                    "generated": feed.generated,
                    "paused": feed.paused,
                    "next_trade_id": feed.next_trade_id,
                    "next_agg_id": feed.next_agg_id,
                    "book": feed.model is not None,
                    "book_update_id": feed.model.book.uid if feed.model is not None else None,
                    "history": len(feed.history) if feed.history is not None else 0,
                }
                for (v, m, s), feed in self.feeds.items()
            ],
            "replays": [
                {
                    "path": r.spec.path.name,
                    "market": r.spec.market,
                    "speed": r.spec.speed,
                    "loop": r.spec.loop,
                    "frames_read": r.frames_read,
                    "passes": r.passes,
                    "done": r.done,
                }
                for r in self.replays
            ],
        }
