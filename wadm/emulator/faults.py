"""Fault injection: the `Emulator` methods that break things on purpose.

Connection faults (any venue): `drop`, `silence`, `silence_stream` (one stream
of a connection while its other streams keep flowing), `send_malformed`,
`shutdown` (Binance ``serverShutdown``; Bybit has no notice and just closes).

Book-stream faults, applied to subscribed depth/order-book streams: `depth_gap`
(Binance ``U``/``pu`` break, Bybit ``u`` jump), `crossed_update` (one update
that crosses the book, repaired by the next), `restart_book` (Bybit ``u=1``
snapshot).

REST faults, for the next N matching requests: `slow_snapshots`,
`stale_snapshots`, `fail_snapshots` (Binance ``depth``, Bybit ``orderbook``)
and `force_rest_status` (any endpoint, e.g. 429 or 418). Subscription faults:
`fail_subscribe` (a Bybit topic answers ``handler not found``).

Every method takes the filters ``venue``, ``market`` and where it makes sense
``symbol`` or ``stream`` (None matches everything) and returns how many
connections, streams or requests it affects.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from picows import WSCloseCode

from wadm.emulator.binance_streams import BinanceDepthPublisher
from wadm.emulator.bybit_streams import BybitBookPublisher
from wadm.emulator.connection import Connection
from wadm.emulator.rest import RestFault, RestFaults

if TYPE_CHECKING:
    from wadm.emulator.bybit import BybitVenue
    from wadm.emulator.hub import Hub
    from wadm.emulator.market import SyntheticFeed
    from wadm.emulator.streams import BookPublisher, Scheduler
    from wadm.emulator.venue import Venue

__all__ = ["MALFORMED_KINDS", "FaultInjection"]


MALFORMED_KINDS = ("invalid_json", "unknown_event", "zero_price", "missing_field")


class FaultInjection:
    """Fault methods of the `Emulator` (a mixin; see the module docstring)."""

    hub: Hub
    venues: dict[str, Venue]
    feeds: dict[tuple[str, str, str], SyntheticFeed]
    scheduler: Scheduler
    bybit: BybitVenue
    rest_faults: RestFaults
    shutdown_grace: float

    # ------------------------------------------------------ connection faults

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
            feed = self.feeds.get((v_name, mkt, v.stream_symbol(target)))
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
            notice = self.venues[conn.venue].shutdown_event(conn.combined)
            if notice:
                conn.send_text(notice)
                conn.shutdown_notified = True
            conn.call_later(delay, conn.close, WSCloseCode.GOING_AWAY, "Server shutdown")
        return len(conns)

    def silence_stream(
        self,
        seconds: float,
        *,
        stream: str,
        market: str | None = None,
        venue: str | None = None,
    ) -> int:
        """Withhold one stream from matching connections for ``seconds``.

        The connections' other streams keep flowing, as in the real "one
        stream stalls, the socket stays healthy" failure.

        Returns:
            Number of connections affected.
        """
        until = time.monotonic() + seconds
        conns = self.hub.select(venue=venue, market=market, stream=stream)
        for conn in conns:
            ch = conn.subscriptions[stream]
            ch.muted[conn] = max(ch.muted.get(conn, 0.0), until)
        return len(conns)

    # ------------------------------------------------------ book-stream faults

    def book_publishers(
        self,
        *,
        venue: str | None = None,
        market: str | None = None,
        symbol: str | None = None,
        stream: str | None = None,
    ) -> list[BookPublisher]:
        """The depth and order-book publishers matching every given filter."""
        sym = symbol.upper() if symbol else None
        out: list[BookPublisher] = []
        for (v, m, s), pub in self.scheduler.publishers.items():
            if not isinstance(pub, BinanceDepthPublisher | BybitBookPublisher):
                continue
            if venue is not None and v != venue:
                continue
            if market is not None and m != market:
                continue
            if stream is not None and s != stream:
                continue
            if sym is not None and pub.feed.symbol.upper() != sym:
                continue
            out.append(pub)
        return out

    def depth_gap(
        self,
        count: int = 1,
        *,
        venue: str | None = None,
        market: str | None = None,
        symbol: str | None = None,
        stream: str | None = None,
    ) -> int:
        """Drop the next ``count`` updates of matching book streams.

        Binance: the next event's ``U`` is past ``prev_u + 1`` (spot) and its
        ``pu`` is not the last ``u`` the client saw (USD-M). Bybit: ``u`` jumps.

        Returns:
            Number of streams affected.
        """
        pubs = self.book_publishers(venue=venue, market=market, symbol=symbol, stream=stream)
        for pub in pubs:
            pub.inject_gap(count)
        return len(pubs)

    def crossed_update(
        self,
        *,
        venue: str | None = None,
        market: str | None = None,
        symbol: str | None = None,
        stream: str | None = None,
    ) -> int:
        """Make the next update of matching book streams put a bid at the best ask.

        The update after it restores that price level; sequencing stays
        valid, and the true book is never crossed.

        Returns:
            Number of streams affected.
        """
        pubs = self.book_publishers(venue=venue, market=market, symbol=symbol, stream=stream)
        for pub in pubs:
            pub.inject_crossed()
        return len(pubs)

    def restart_book(
        self,
        *,
        market: str | None = None,
        symbol: str | None = None,
        stream: str | None = None,
    ) -> int:
        """Send a ``u=1`` snapshot on matching Bybit order-book topics (service restart).

        Returns:
            Number of topics affected.
        """
        pubs = self.book_publishers(venue="bybit", market=market, symbol=symbol, stream=stream)
        return sum(1 for pub in pubs if pub.restart())

    # -------------------------------------------------------------- REST faults

    def slow_snapshots(
        self,
        seconds: float,
        count: int = 1,
        *,
        venue: str | None = None,
        market: str | None = None,
        symbol: str | None = None,
    ) -> int:
        """Delay the next ``count`` matching REST book snapshots by ``seconds``.

        The book is taken when the request arrives, so it is that much older
        than the stream when the client gets it.
        """
        return self._rest_fault("slow", count, seconds, venue=venue, market=market, symbol=symbol)

    def stale_snapshots(
        self,
        updates: int,
        count: int = 1,
        *,
        venue: str | None = None,
        market: str | None = None,
        symbol: str | None = None,
    ) -> int:
        """Serve the next ``count`` matching REST book snapshots ``updates`` changes old.

        The update id (``lastUpdateId``, ``u``) is that of the old book.
        """
        return self._rest_fault("stale", count, updates, venue=venue, market=market, symbol=symbol)

    def fail_snapshots(
        self,
        count: int = 1,
        status: int = 503,
        *,
        venue: str | None = None,
        market: str | None = None,
        symbol: str | None = None,
    ) -> int:
        """Answer the next ``count`` matching REST book snapshots with a 5xx ``status``."""
        return self._rest_fault("fail", count, status, venue=venue, market=market, symbol=symbol)

    def force_rest_status(
        self,
        status: int,
        count: int = 1,
        *,
        retry_after: float = 1.0,
        venue: str | None = None,
        market: str | None = None,
        symbol: str | None = None,
    ) -> int:
        """Answer the next ``count`` matching REST requests (any endpoint) with ``status``.

        429 and 418 carry the venue's body and ``Retry-After: retry_after``.
        """
        if status < 400:
            raise ValueError(f"status must be an error status, got {status}")
        self.rest_faults.add(
            RestFault("status", count, status, retry_after, venue=venue, market=market, symbol=_upper(symbol))
        )
        return count

    def fail_subscribe(self, topic: str, *, market: str | None = None, times: int | None = None) -> int:
        """Make subscriptions to a Bybit topic answer ``handler not found``.

        Args:
            topic: The topic, e.g. ``orderbook.50.BTCUSDT``.
            market: ``spot``/``linear``; None for both.
            times: Number of subscribe attempts that fail; None until cleared;
                0 clears.

        Returns:
            1 when set, 0 when cleared.
        """
        key = (market, topic)
        if times == 0:
            self.bybit.failing.pop(key, None)
            return 0
        self.bybit.failing[key] = times
        return 1

    def clear_faults(self) -> None:
        """Forget pending REST faults, failing topics and pending book-stream faults."""
        self.rest_faults.pending.clear()
        self.bybit.failing.clear()
        for pub in self.book_publishers():
            pub.clear_faults()

    def _rest_fault(
        self,
        kind: str,
        count: int,
        value: float,
        *,
        venue: str | None,
        market: str | None,
        symbol: str | None,
    ) -> int:
        self.rest_faults.add(RestFault(kind, count, value, venue=venue, market=market, symbol=_upper(symbol)))
        return count


def _upper(symbol: str | None) -> str | None:
    return symbol.upper() if symbol else None
