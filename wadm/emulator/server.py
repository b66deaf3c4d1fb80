"""The emulator process: one picows server, venues routed by path prefix.

`Emulator` binds one port and serves:

- ``/binance/...``: Binance WebSocket market streams (`wadm.emulator.binance`);
- ``/control/...``: plain HTTP GET endpoints for stats, the delivered log and
  fault injection (`wadm.emulator.control`);
- anything else: 404.

It owns the synthetic feeds and replays, and exposes every fault as a method,
so tests can drive it in-process or over HTTP from another process.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

from picows import (
    WSCloseCode,
    WSListener,
    WSUpgradeRequest,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from wadm.emulator.binance import SPOT_POLICY, USDM_POLICY, BinanceVenue
from wadm.emulator.connection import Connection, ConnectionPolicy
from wadm.emulator.control import ControlApi, json_response
from wadm.emulator.hub import Hub
from wadm.emulator.market import SyntheticFeed, SyntheticSpec
from wadm.emulator.replay import ReplayHandle, ReplaySpec
from wadm.emulator.venue import Venue

__all__ = ["MALFORMED_KINDS", "Emulator"]


MALFORMED_KINDS = ("invalid_json", "unknown_event", "zero_price", "missing_field")


class Emulator:
    """A loopback exchange emulator (Binance spot and USD-M for now).

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
        synthetic: Iterable[SyntheticSpec] = (),
        replays: Iterable[ReplaySpec] = (),
        seed: int | None = None,
        shutdown_grace: float = 5.0,
        batch_interval: float = 0.005,
        max_send_buffer: int = 64 << 20,
        slow_consumer_timeout: float = 5.0,
    ) -> None:
        """Configure the emulator; nothing runs before `start`.

        Args:
            host: Interface to bind.
            port: TCP port; 0 picks a free one (see `port` after `start`).
            spot_policy: Binance spot connection limits (rate, ping, lifetime).
            usdm_policy: Binance USD-M connection limits.
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
        """
        self.host = host
        self.requested_port = port
        self.shutdown_grace = shutdown_grace
        self.batch_interval = batch_interval
        self.hub = Hub(max_send_buffer=max_send_buffer, slow_consumer_timeout=slow_consumer_timeout)
        self.binance = BinanceVenue(self.hub, policies={"spot": spot_policy, "usdm": usdm_policy})
        self.venues: dict[str, Venue] = {self.binance.name: self.binance}
        self.control = ControlApi(self)
        self._rng = random.Random(seed)
        self.feeds: dict[tuple[str, str, str], SyntheticFeed] = {}
        self.replays: list[ReplayHandle] = []
        self._pending_replays = list(replays)
        self._server: asyncio.Server | None = None
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
        """Base HTTP URL of the control endpoints, ``http://HOST:PORT``."""
        return f"http://{self.host}:{self._port}"

    @property
    def urls(self) -> dict[str, dict[str, str]]:
        """Client base URL per venue and market."""
        return {name: venue.urls(self.url) for name, venue in self.venues.items()}

    async def start(self) -> int:
        """Bind the port and start feeds and replays.

        Returns:
            The bound port.
        """
        if self._server is not None:
            return self._port
        self._server = await ws_create_server(
            self._on_request,
            self.host,
            self.requested_port,
            enable_auto_ping=False,
            enable_auto_pong=False,
            max_frame_size=1 << 20,
            logger_name=logging.getLogger(__name__ + ".ws"),
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._started_at = time.monotonic()
        for feed in self.feeds.values():
            feed.start()
        for spec in self._pending_replays:
            self.add_replay(spec)
        self._pending_replays.clear()
        return self._port

    async def stop(self) -> None:
        """Stop feeds and replays, close every connection and the listening socket."""
        for feed in self.feeds.values():
            feed.stop()
        for replay in self.replays:
            await replay.stop()
        server = self._server
        if server is None:
            return
        self._server = None
        server.close()
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
        )
        self.feeds[key] = feed
        if self._server is not None:
            feed.start()
        return feed

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

    # --------------------------------------------------------------- faults

    def drop(
        self,
        *,
        graceful: bool = False,
        market: str | None = None,
        stream: str | None = None,
        venue: str | None = None,
    ) -> int:
        """Cut matching connections: a TCP reset, or a close frame when graceful.

        Returns:
            Number of connections affected.
        """
        conns = self.hub.select(venue=venue, market=market, stream=stream)
        for conn in conns:
            conn.drop(graceful=graceful)
        return len(conns)

    def silence(
        self,
        seconds: float,
        *,
        market: str | None = None,
        stream: str | None = None,
        venue: str | None = None,
    ) -> int:
        """Withhold data frames from matching connections for ``seconds``.

        The connections stay open, answer pings and control messages; trades
        generated meanwhile are not sent to them.

        Returns:
            Number of connections affected.
        """
        conns = self.hub.select(venue=venue, market=market, stream=stream)
        for conn in conns:
            conn.silence(seconds)
        return len(conns)

    def send_malformed(
        self,
        kind: str,
        count: int = 1,
        *,
        market: str | None = None,
        stream: str | None = None,
        venue: str | None = None,
    ) -> int:
        """Send ``count`` malformed frames to matching connections.

        Each connection gets frames of ``stream`` (or of its first deliverable
        trade stream). ``zero_price`` frames carry a fresh trade id taken from
        the stream's synthetic feed, shared by every receiver and never
        recorded as delivered; other kinds consume no id.

        Args:
            kind: One of `MALFORMED_KINDS`.
            count: Frames per connection.
            market: Market filter.
            stream: Stream filter (and the stream the frames pretend to be).
            venue: Venue filter.

        Returns:
            Number of connections that received frames.

        Raises:
            ValueError: For an unknown kind.
        """
        if kind not in MALFORMED_KINDS:
            raise ValueError(f"unknown malformed kind {kind!r}; expected one of {MALFORMED_KINDS}")
        groups: dict[tuple[str, str, str], list[Connection]] = {}
        for conn in self.hub.select(venue=venue, market=market, stream=stream):
            v = self.venues[conn.venue]
            target = stream if stream is not None else v.pick_stream(conn)
            if target is None or conn not in conn.subscriptions[target].subscribers:
                continue
            groups.setdefault((conn.venue, conn.market, target), []).append(conn)
        for (v_name, mkt, target), conns in groups.items():
            v = self.venues[v_name]
            ch = self.hub.channel(v_name, mkt, target)
            feed = self.feeds.get((v_name, mkt, target.partition("@")[0].upper()))
            for _ in range(count):
                raw, combined = v.malformed(kind, ch, feed)
                for conn in conns:
                    conn.send_text(combined if conn.combined else raw)
        return sum(len(c) for c in groups.values())

    def shutdown(
        self,
        grace: float | None = None,
        *,
        market: str | None = None,
        stream: str | None = None,
        venue: str | None = None,
    ) -> int:
        """Send ``serverShutdown`` to matching connections, close them after ``grace``.

        Data keeps flowing during the grace period, so a client can open its
        replacement connection first (make-before-break).

        Args:
            grace: Seconds until close (default: the constructor's ``shutdown_grace``).
            market: Market filter.
            stream: Stream filter.
            venue: Venue filter.

        Returns:
            Number of connections notified.
        """
        delay = self.shutdown_grace if grace is None else grace
        conns = self.hub.select(venue=venue, market=market, stream=stream)
        for conn in conns:
            conn.send_text(self.venues[conn.venue].shutdown_event(conn.combined))
            conn.shutdown_notified = True
            conn.call_later(delay, conn.close, WSCloseCode.GOING_AWAY, "Server shutdown")
        return len(conns)

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

    def delivered(self, stream: str, market: str | None = None, venue: str = "binance") -> list[int]:
        """Ids of a trade stream written to at least one socket, in order, unique.

        Args:
            stream: ``<symbol>@trade`` (``t`` ids) or ``<symbol>@aggTrade`` (``a`` ids).
            market: Market; may be omitted when only one market has the stream.
            venue: Venue name.

        Raises:
            ValueError: When ``market`` is omitted and ambiguous or unknown.
        """
        mkt = self.resolve_market(stream, market, venue)
        ch = self.hub.find_channel(venue, mkt, stream)
        return list(ch.delivered) if ch is not None else []

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
